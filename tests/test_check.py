"""`make check`: a learner's own notebook, checked with its visible tests, untouched and honestly."""
from __future__ import annotations

import json

import nbformat
from nbgrader.utils import compute_checksum

from attnlab.instructor import grading
from attnlab.learner import selfcheck, start
from conftest import ROOT

GQA = "02_gqa"


def test_the_recorded_test_cells_are_the_release():
    recorded = json.loads(selfcheck.RELEASE_CELLS.read_text())
    assert recorded == selfcheck.release_test_cells(), \
        "course/ changed its test cells: record them with `.venv/bin/python -m attnlab.learner.selfcheck --record`"
    assert set(recorded) == {p.name for p in (ROOT / "course").iterdir() if p.is_dir()}


def _cell(nb, grade_id):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def test_check_scores_attempted_unattempted_and_tampered_cells(tmp_path, capsys):
    release = nbformat.read(ROOT / "course" / GQA / f"{GQA}.ipynb", as_version=4)
    source = nbformat.read(ROOT / "solutions" / GQA / f"{GQA}.ipynb", as_version=4)
    mine = grading.filled(release, source)
    mine = grading.edit_cell(mine, "cache_size", "return n_kv_heads / n_heads", "return n_heads / n_kv_heads")
    _cell(mine, "backward").source = _cell(release, "backward").source  # not attempted yet
    edited = _cell(mine, "test_expand")
    edited.source = "print('all good')"
    edited.metadata.nbgrader["checksum"] = compute_checksum(edited)  # the metadata is no reference
    mine.cells.remove(_cell(mine, "test_grouped"))
    path = tmp_path / f"{GQA}.ipynb"
    nbformat.write(mine, path)
    before = path.read_bytes()

    assert selfcheck.main([str(path)]) == 1  # a failing attempt and changed test cells
    out = capsys.readouterr().out
    assert path.read_bytes() == before  # the learner's file is not modified
    lines = out.splitlines()
    assert f"{GQA}.ipynb: 5 of 14 visible-test points" in lines  # test_module 3 + test_mean_pool 2
    assert "  pass    test_module (3)" in lines and "  pass    test_mean_pool (2)" in lines
    assert any(ln.startswith("  FAIL    test_cache_size (2): ") and "quarter of the MHA cache" in ln for ln in lines)
    assert any(ln.startswith("  todo    test_backward (2): not attempted yet (NotImplementedError") for ln in lines)
    assert f"  EDITED  test_expand (2): test cell test_expand was edited: its result does not count " \
           f"(restore it from course/{GQA}/{GQA}.ipynb)" in lines
    assert f"  DELETED test_grouped (3): test cell test_grouped was deleted: it scores nothing " \
           f"(restore it from course/{GQA}/{GQA}.ipynb)" in lines
    assert lines[-1] == "total: 5 of 14 visible-test points " \
                        "(1 not attempted yet; 1 failing; 2 test cells edited or deleted)"


def test_the_course_total_passes_when_nothing_is_attempted_yet(tmp_path, capsys, monkeypatch):
    # The default set is every workbook of selfcheck.DEFAULT (course/ today); here a blank release of one.
    (tmp_path / GQA).mkdir()
    (tmp_path / GQA / f"{GQA}.ipynb").write_bytes((ROOT / "course" / GQA / f"{GQA}.ipynb").read_bytes())
    monkeypatch.setattr(selfcheck, "DEFAULT", tmp_path)
    assert selfcheck.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "course: 0 of 14 visible-test points (6 not attempted yet)"
    assert sum(ln.startswith("  todo    ") for ln in lines) == 6
    # What the start page (START.ipynb) then shows for this folder.
    [row] = start.rows(tmp_path)
    assert (row["workbook"], row["written"], row["exercises"], row["passed"]) == (GQA, 0, 6, 0)
    assert row["tests"] == 6 and row["checked"]


def test_the_reference_is_the_release_not_the_learners_copy(tmp_path, monkeypatch):
    # A learner who works in course/ itself: the edit is noticed, and the hint names git.
    (tmp_path / GQA).mkdir()
    nb = nbformat.read(ROOT / "course" / GQA / f"{GQA}.ipynb", as_version=4)
    edited = _cell(nb, "test_expand")
    edited.source += "\n# mine"
    nbformat.write(nb, tmp_path / GQA / f"{GQA}.ipynb")
    monkeypatch.setattr(selfcheck, "COURSE", tmp_path)
    recorded = json.loads(selfcheck.RELEASE_CELLS.read_text())
    expected = selfcheck.expected_cells(GQA, recorded)["test_expand"]["checksum"]
    assert expected == edited.metadata.nbgrader["checksum"] != compute_checksum(edited)
    hint = selfcheck._restore_hint(GQA, "test_expand", tmp_path / GQA / f"{GQA}.ipynb", expected)
    assert hint == f"restore it from the release: git show HEAD:course/{GQA}/{GQA}.ipynb"
    # Released again since the cells were recorded: nbgrader's checksums in course/ win, nobody is accused.
    stale = {GQA: {g: {"points": c["points"], "checksum": "0" * 32} for g, c in recorded[GQA].items()}}
    monkeypatch.setattr(selfcheck, "COURSE", ROOT / "course")
    assert selfcheck.expected_cells(GQA, stale) == selfcheck.release_test_cells()[GQA]


FLASH = "07_flash_mla"


def test_a_kernel_that_kills_the_process_is_reported_not_waited_for(tmp_path, capsys):
    """A Triton kernel that writes out of bounds can abort the Jupyter kernel: make check says so and ends."""
    release = nbformat.read(ROOT / "course" / FLASH / f"{FLASH}.ipynb", as_version=4)
    source = nbformat.read(ROOT / "solutions" / FLASH / f"{FLASH}.ipynb", as_version=4)
    mine = grading.edit_cell(grading.filled(release, source), "decode", "    b = tl.program_id(0)",
                             "    import os; os.abort()\n    b = tl.program_id(0)")  # the interpreter runs it
    path = tmp_path / f"{FLASH}.ipynb"
    nbformat.write(mine, path)
    assert selfcheck.main([str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "  pass    test_online_softmax (3)" in lines and "  pass    test_scores (2)" in lines
    assert any(ln.startswith("  FAIL    test_decode (4): the kernel died") for ln in lines), lines
    assert any(ln.startswith("  FAIL    test_paged (4): the kernel died") for ln in lines), lines


def test_without_triton_the_kernel_exercises_are_skipped(tmp_path, capsys):
    """Where Triton cannot be installed, workbook 07's kernel tests are listed as skipped and not counted."""
    release = nbformat.read(ROOT / "course" / FLASH / f"{FLASH}.ipynb", as_version=4)
    source = nbformat.read(ROOT / "solutions" / FLASH / f"{FLASH}.ipynb", as_version=4)
    mine = grading.filled(release, source)
    setup = _cell(mine, "setup")
    setup.source = "import sys; sys.modules['triton'] = None  # what a Mac without Triton sees\n" + setup.source
    path = tmp_path / f"{FLASH}.ipynb"
    nbformat.write(mine, path)
    assert selfcheck.main([str(path)]) == 0  # skipped is not failed
    lines = capsys.readouterr().out.splitlines()
    assert f"{FLASH}.ipynb: 5 of 5 visible-test points" in lines
    assert any(ln.startswith("  skip    test_decode (4): skipped (TritonMissing: Triton is not installed") for ln in lines)
    assert lines[-1] == "total: 5 of 5 visible-test points (3 skipped: Triton is not installed here)"
