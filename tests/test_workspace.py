"""The learner's work/ is theirs: make lab fills it, nothing overwrites it.

Runs the repository's Makefile in a scratch folder whose course/ is a copy of
the release, as tests/labserver.py does for `make lab`, so that the
developer's own work/ is never touched by the suite either.
"""
from __future__ import annotations

import shutil
import subprocess

import nbformat

from attnlab.learner import start, workspace
from conftest import ROOT

A = "01_mha"


def _site(tmp_path):
    site = tmp_path / "site"
    (site / "autograde").mkdir(parents=True)
    for name in (".venv", "requirements.txt", "constraints.txt", "pyproject.toml", "attnlab", "solutions"):
        (site / name).symlink_to(ROOT / name)
    (site / "autograde" / "nbgrader_config.py").symlink_to(ROOT / "autograde" / "nbgrader_config.py")
    shutil.copytree(ROOT / "course" / A, site / "course" / A)
    return site


def test_fill_copies_new_workbooks_and_never_overwrites_a_started_one(tmp_path):
    site = _site(tmp_path)
    shutil.copy(ROOT / "course" / "START.ipynb", site / "course" / "START.ipynb")
    assert workspace.fill(site / "course", site / "work") == ["START.ipynb", A]
    mine = site / "work" / A / f"{A}.ipynb"
    nb = nbformat.read(mine, as_version=4)
    nb.cells[0].source += "\n\nmy own note"
    nbformat.write(nb, mine)
    assert workspace.fill(site / "course", site / "work") == []
    assert "my own note" in mine.read_text()


def test_make_release_leaves_work_alone_and_checkpoints_do_not_disturb(tmp_path):
    site = _site(tmp_path)
    workspace.fill(site / "course", site / "work")
    mine = site / "work" / A / f"{A}.ipynb"
    mine.write_text(mine.read_text().replace("raise NotImplementedError()", "return 42  # my attempt", 1))
    before = mine.read_bytes()
    # What JupyterLab leaves behind when a learner opens notebooks in course/ and work/.
    for folder in (site / "course" / A, site / "work" / A):
        (folder / ".ipynb_checkpoints").mkdir()
        shutil.copy(folder / f"{A}.ipynb", folder / ".ipynb_checkpoints" / f"{A}-checkpoint.ipynb")
    run = subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "-o", ".venv/.installed", "release",
                          f"ASSIGNMENTS={A}"], cwd=site, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert mine.read_bytes() == before, "make release changed the learner's notebook in work/"
    assert (site / "course" / A / f"{A}.ipynb").read_bytes() == (ROOT / "course" / A / f"{A}.ipynb").read_bytes()


def test_a_missing_course_folder_is_named(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="course must be the release folder"):
        workspace.fill(tmp_path / "nowhere", tmp_path / "work")


def test_the_start_page_links_every_workbook_and_says_where_you_stand(tmp_path, capsys):
    page = nbformat.read(ROOT / "course" / "START.ipynb", as_version=4)
    text = "\n".join(c.source for c in page.cells)
    for folder in sorted(p for p in (ROOT / "course").iterdir() if p.is_dir()):
        assert f"]({folder.name}/{folder.name}.ipynb)" in text, f"the start page does not link {folder.name}"
    assert "progress()" in text
    # A learner who wrote one exercise of 01 and checked it.
    site = _site(tmp_path)
    workspace.fill(site / "course", site / "work")
    mine = site / "work" / A / f"{A}.ipynb"
    nb = nbformat.read(mine, as_version=4)
    first = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution"))
    first.source = first.source.replace("raise NotImplementedError()", "return 42  # my attempt")
    nbformat.write(nb, mine)
    start.remember(mine, [{"grade_id": "test_attention", "status": "pass"},
                          {"grade_id": "test_heads", "status": "fail"}])
    start.progress(site / "work")
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:6] == [A, "1", "of", "6", "1", "of"] and lines[1].split()[6] == "2", lines


def test_every_workbook_but_the_last_links_the_next():
    folders = sorted(p.name for p in (ROOT / "course").iterdir() if p.is_dir())
    for here, after in zip(folders, folders[1:] + ["START"]):
        nb = nbformat.read(ROOT / "course" / here / f"{here}.ipynb", as_version=4)
        target = "../START.ipynb" if after == "START" else f"../{after}/{after}.ipynb"
        assert f"]({target})" in nb.cells[-1].source, f"{here}'s last cell does not link {target}"
