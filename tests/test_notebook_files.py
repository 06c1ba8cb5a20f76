"""The committed notebooks are what their sources build, and carry nothing extra."""
from __future__ import annotations

import json

import pytest

from attnlab.instructor import grading, notebooks
from conftest import ROOT, assignments


@pytest.mark.parametrize("assignment", assignments())
def test_source_notebook_is_built_from_its_text(assignment):
    src = ROOT / "solutions" / assignment / f"{assignment}.py"
    assert src.exists(), f"{src} (the text source) is missing"
    committed = src.with_suffix(".ipynb").read_text()
    assert committed == notebooks.build(src), f"{assignment}.ipynb is stale: run `make release`"


@pytest.mark.parametrize("assignment", assignments())
def test_committed_release_is_what_nbgrader_generates(tmp_path, assignment):
    ws = grading.workspace(tmp_path, [assignment])
    (ws / "course" / assignment / f"{assignment}.ipynb").unlink()
    assert grading.api(ws).generate_assignment(assignment)["success"]
    generated = sorted(p.relative_to(ws / "course") for p in (ws / "course").rglob("*") if p.is_file())
    # JupyterLab's .ipynb_checkpoints/ (a learner opened course/) are no part of the release: nbgrader ignores them.
    committed = sorted(p.relative_to(ROOT / "course") for p in (ROOT / "course" / assignment).rglob("*")
                       if p.is_file() and ".ipynb_checkpoints" not in p.parts)
    assert generated == committed, "course/ holds other files than the release: run `make release`"
    for rel in generated:
        assert (ws / "course" / rel).read_bytes() == (ROOT / "course" / rel).read_bytes(), (
            f"course/{rel} differs from what solutions/ generates: run `make release`")


@pytest.mark.parametrize("folder", ["solutions", "course"])
def test_notebooks_have_no_outputs_or_widget_state(folder):
    for path in (ROOT / folder).rglob("*.ipynb"):
        if ".ipynb_checkpoints" in path.parts:
            continue  # JupyterLab's copies of a notebook someone opened: not committed (.gitignore)
        nb = json.loads(path.read_text())
        assert "widgets" not in nb["metadata"], f"{path} holds widget state"
        for cell in nb["cells"]:
            assert not cell.get("outputs") and not cell.get("execution_count"), f"{path} holds outputs"


@pytest.mark.parametrize("assignment", assignments())
def test_release_holds_no_answers_or_hidden_tests(assignment):
    release = ROOT / "course" / assignment
    text = "".join(p.read_bytes().decode("utf-8", errors="replace") for p in release.rglob("*") if p.is_file())
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text
    assert not list(release.rglob("*.py")), "the text source (with the answers) was released"
    nb = json.loads((release / f"{assignment}.ipynb").read_text())
    for cell in nb["cells"]:
        if cell["metadata"].get("nbgrader", {}).get("solution"):
            assert "raise NotImplementedError()" in "".join(cell["source"])


def test_the_exercise_table_is_what_the_test_cells_check():
    """attnlab/checks/exercises.py lists each workbook's exercises; the test cells name exactly those."""
    import ast

    from attnlab.checks import exercises

    for assignment in assignments():
        named = set()
        for node in ast.walk(ast.parse((ROOT / "solutions" / assignment / f"{assignment}.py").read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "exercise":
                named |= {a.value for a in node.args if isinstance(a, ast.Constant)}
        listed = {n for n, e in exercises.EXERCISES.items() if e.workbook == assignment}
        assert named == listed, (assignment, named ^ listed)


def test_an_unknown_exercise_is_named():
    from attnlab import checks

    with pytest.raises(ValueError, match="no exercise is called 'atention'"):
        checks.exercise("atention")
    with pytest.raises(ValueError, match="exercises of different workbooks"):
        checks.exercise("attention", "rope_tables")
