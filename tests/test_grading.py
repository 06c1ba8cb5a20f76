"""The grading round trip, through nbgrader's API and gradebook.

For every workbook: the model answers score full marks on every autograded
cell, the blank release scores zero on every one, and each planted mistake
loses exactly the points of its own exercise.
"""
from __future__ import annotations

import nbformat
import pytest

from attnlab import grading
from conftest import ROOT, assignments
from planted_mistakes import MISTAKES

CASES = [(a, m) for a in assignments() for m in MISTAKES.get(a, [])]


@pytest.fixture(scope="module")
def grader(tmp_path_factory):
    """grade(assignment) -> {student: (scores, errors)}: the solution, the blank
    release and every planted mistake, graded once per assignment on first use
    (so `pytest -k 02_gqa` grades workbook 02 alone), on every CPU core."""
    workdir = tmp_path_factory.mktemp("grading")
    done = {}

    def grade(assignment):
        if assignment not in done:
            release = nbformat.read(ROOT / "course" / assignment / f"{assignment}.ipynb", as_version=4)
            source = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
            answers = grading.filled(release, source)
            submissions = {"solution": answers, "blank": release}
            for m in MISTAKES.get(assignment, []):
                submissions[m.name] = grading.edit_cell(answers, m.cell, m.old, m.new)
                if m.also:
                    submissions[m.name] = grading.edit_cell(submissions[m.name], m.cell, *m.also)
            done[assignment] = grading.grade_in_parallel(workdir, assignment, submissions)
        return done[assignment]

    return grade


@pytest.mark.parametrize("assignment", assignments())
def test_solution_scores_full_marks(grader, assignment):
    scores, errors = grader(assignment)["solution"]
    assert scores, "no autograded cells found"
    lost = {cell: s for cell, s in scores.items() if s[0] != s[1]}
    assert not lost, f"the model answers lose points: {lost}; errors: {errors}"


@pytest.mark.parametrize("assignment", assignments())
def test_blank_release_scores_zero(grader, assignment):
    scores, _ = grader(assignment)["blank"]
    assert scores and all(max_ > 0 for _, max_ in scores.values())
    scored = {cell: s for cell, s in scores.items() if s[0] != 0}
    assert not scored, f"the blank release scores points: {scored}"


@pytest.mark.parametrize("assignment,mistake", CASES, ids=[f"{a}-{m.name}" for a, m in CASES])
def test_planted_mistake_loses_exactly_its_exercise(grader, assignment, mistake):
    scores, errors = grader(assignment)[mistake.name]
    for cell, (score, max_score) in scores.items():
        if cell in mistake.loses:
            assert score == 0, f"{mistake.name}: {cell} should score 0, scored {score}/{max_score}"
        else:
            assert score == max_score, f"{mistake.name}: {cell} should keep {max_score}, scored {score}: {errors.get(cell)}"
    if mistake.says:
        said = " ".join(errors.get(cell, "") for cell in mistake.loses)
        assert mistake.says in said, f"{mistake.name}: expected the message to say {mistake.says!r}; it said {said!r}"


# What each workbook's issue asks for; 8 where it does not say.
MINIMUM_MISTAKES = {"04_mla": 10, "05_cache_benchmark": 6, "06_beyond": 6}


def test_every_workbook_has_enough_planted_mistakes():
    for assignment in assignments():
        need = MINIMUM_MISTAKES.get(assignment, 8)
        assert len(MISTAKES.get(assignment, [])) >= need, f"{assignment} needs at least {need} planted mistakes"
