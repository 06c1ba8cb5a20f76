"""The grading round trip, through nbgrader's API and gradebook.

For every workbook: the model answers score full marks on every autograded
cell, the blank release scores zero on every one, and each planted mistake
(solutions/NN_topic/mistakes.py) loses exactly the points of its own
exercise. Mistakes in different exercises share a graded submission
(attnlab.instructor.mistakes.rounds): the tests give each exercise correct versions of
the earlier ones, so one mistake cannot cost another exercise its points, and
the assertions below would see it if it did.

A mistake marked ``hidden_only`` must also pass the visible tests: the rounds
that hold one are run once more as a learner runs them, without the hidden
tests, and its test cells must pass there. That proves the hidden tests earn
their place.
"""
from __future__ import annotations

import html
import re
import sys

import nbformat
import pytest

from attnlab import cells

from attnlab.instructor import feedback, grading, mistakes
from attnlab.learner import selfcheck
from attnlab.verdict.grading import CHECKED, SECRET_ENV
from conftest import ROOT, assignments

MISTAKES = {a: mistakes.load(a) for a in assignments()}
CASES = [(a, m) for a in assignments() for m in MISTAKES[a]]
HIDDEN = [(a, m) for a, m in CASES if m.hidden_only]
SECRETS = ("class-secret-one", "another-class-secret")


def _round_name(i: int) -> str:
    return f"round{i + 1}"


def _notebooks(assignment):
    release = nbformat.read(ROOT / "course" / assignment / f"{assignment}.ipynb", as_version=4)
    source = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    return release, grading.filled(release, source)


@pytest.fixture(scope="module")
def grader(tmp_path_factory):
    """grade(assignment) -> ({student: (scores, errors)}, {mistake name: student}):
    the solution, the blank release and every round of planted mistakes, graded
    once per assignment on first use (so `pytest -k 02_gqa` grades workbook 02
    alone), on every CPU core."""
    workdir = tmp_path_factory.mktemp("grading")
    done = {}

    def grade(assignment, secret=None):
        # The workbooks the checker judges are graded under a class secret (SECRETS[0]): their hidden tests
        # draw each student's own cases; test_planted_mistakes_hold_under_another_class_secret uses another.
        if secret is None and assignment in CHECKED:
            secret = SECRETS[0]
        if (assignment, secret) not in done:
            release, answers = _notebooks(assignment)
            submissions, where = {} if secret == SECRETS[1] else {"solution": answers, "blank": release}, {}
            for i, r in enumerate(mistakes.rounds(MISTAKES[assignment])):
                submissions[_round_name(i)] = mistakes.apply(answers, r)
                where.update({m.name: _round_name(i) for m in r})
            monkeypatch = pytest.MonkeyPatch()
            if secret:
                monkeypatch.setenv(SECRET_ENV, secret)
            try:
                folder = workdir / (secret or "public")
                done[assignment, secret] = (grading.grade_in_parallel(folder, assignment, submissions), where)
            finally:
                monkeypatch.undo()
        return done[assignment, secret]

    grade.workdir = workdir
    return grade


@pytest.fixture(scope="module")
def visible(tmp_path_factory):
    """visible(assignment) -> {mistake name: {test cell: error or None}}, from running
    each round that holds a hidden-only mistake with the visible tests alone."""
    workdir = tmp_path_factory.mktemp("visible")
    done = {}

    def run(assignment):
        # The heavy demo cells (05's benchmark, 06's training) shrink as under
        # grading; no test cell depends on them.
        monkeypatch = pytest.MonkeyPatch()
        monkeypatch.setenv("NBGRADER_EXECUTION", "visible")
        try:
            return _run(assignment)
        finally:
            monkeypatch.undo()

    def _run(assignment):
        if assignment not in done:
            _, answers = _notebooks(assignment)
            out = {}
            for i, r in enumerate(mistakes.rounds(MISTAKES[assignment])):
                if not any(m.hidden_only for m in r):
                    continue
                path = workdir / f"{assignment}-{_round_name(i)}.ipynb"
                nbformat.write(mistakes.apply(answers, r), path)
                results = {cell: error for cell, _, error in selfcheck.check(path)}
                out.update({m.name: results for m in r})
            done[assignment] = out
        return done[assignment]

    return run


@pytest.mark.parametrize("assignment", assignments())
def test_solution_scores_full_marks(grader, assignment):
    scores, errors = grader(assignment)[0]["solution"]
    assert scores, "no autograded cells found"
    lost = {cell: s for cell, s in scores.items() if s[0] != s[1]}
    assert not lost, f"the model answers lose points: {lost}; errors: {errors}"


@pytest.mark.parametrize("assignment", assignments())
def test_blank_release_scores_zero(grader, assignment):
    scores, _ = grader(assignment)[0]["blank"]
    assert scores and all(max_ > 0 for _, max_ in scores.values())
    scored = {cell: s for cell, s in scores.items() if s[0] != 0}
    assert not scored, f"the blank release scores points: {scored}"


@pytest.mark.parametrize("assignment,mistake", CASES, ids=[f"{a}-{m.name}" for a, m in CASES])
def test_planted_mistake_loses_exactly_its_exercise(grader, assignment, mistake):
    _loses_exactly_its_exercise(grader(assignment), assignment, mistake)


@pytest.mark.parametrize("assignment", [a for a in assignments() if a in CHECKED])
def test_planted_mistakes_hold_under_another_class_secret(grader, assignment):
    """Graded again under a second secret, hence other hidden cases: each mistake, hidden-only ones
    included, still loses exactly its exercise."""
    graded = grader(assignment, SECRETS[1])
    for mistake in MISTAKES[assignment]:
        _loses_exactly_its_exercise(graded, assignment, mistake)


def _loses_exactly_its_exercise(graded_where, assignment, mistake):
    graded, where = graded_where
    round_ = [m for m in MISTAKES[assignment] if where[m.name] == where[mistake.name]]
    lost_in_round = {cell for m in round_ for cell in m.loses}
    scores, errors = graded[where[mistake.name]]
    for cell in mistake.loses:
        assert scores[cell][0] == 0, f"{mistake.name}: {cell} should score 0, scored {scores[cell]}"
    for cell, (score, max_score) in scores.items():
        if cell not in lost_in_round:
            assert score == max_score, \
                f"{mistake.name} (graded with {[m.name for m in round_]}): {cell} should keep {max_score}, " \
                f"scored {score}: {errors.get(cell)}"
    if mistake.says:
        said = " ".join(errors.get(cell, "") for cell in mistake.loses)
        assert mistake.says in said, f"{mistake.name}: expected the message to say {mistake.says!r}; it said {said!r}"


@pytest.mark.parametrize("assignment,mistake", HIDDEN, ids=[f"{a}-{m.name}" for a, m in HIDDEN])
def test_hidden_only_mistake_passes_the_visible_tests(visible, assignment, mistake):
    results = visible(assignment)[mistake.name]
    for cell in mistake.loses:
        assert results[cell] is None, \
            f"{mistake.name} is marked hidden_only but fails the visible test {cell}: {results[cell]}"


def _secrets(assignment) -> set[str]:
    source = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    release = nbformat.read(ROOT / "course" / assignment / f"{assignment}.ipynb", as_version=4)
    return feedback.workbook_secrets(source, release, cells.solution_cells(source).values())


@pytest.mark.parametrize("assignment", assignments())
def test_feedback_reveals_no_hidden_test_and_no_grading_path(grader, assignment):
    """Every file handed back to every student graded above (the model answers,
    the blank release, each round of mistakes) holds no line of a hidden test
    and no path of the grading machine, and says for each test cell whether it
    passed or why not."""
    graded, _ = grader(assignment)
    workdir = grader.workdir / (SECRETS[0] if assignment in CHECKED else "public")
    secrets = _secrets(assignment)
    assert secrets, "no hidden tests found"
    paths = [str(grader.workdir), str(ROOT), sys.prefix]
    release = ROOT / "course" / assignment
    folders = {p.parent.name: p for p in workdir.glob(f"{assignment}-*/autograde/feedback/*/{assignment}")}
    assert set(folders) == set(graded), "a student has no feedback"
    for student, folder in folders.items():
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        # Besides the page, nbgrader hands back the release's own files (05's GPU results): nothing else.
        for path in files:
            if path.suffix != ".html":
                public = release / path.relative_to(folder)
                assert public.is_file() and public.read_bytes() == path.read_bytes(), \
                    f"{path.relative_to(folder)} handed back to {student} is not a file of the release"
        page = folder / f"{assignment}.html"
        assert feedback.WRAP_CSS in page.read_text(), "a check's sentence would run off the page"
        text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))
        leaked = sorted(s for s in secrets if s in text)
        assert not leaked, f"{student}'s feedback shows hidden-test lines: {leaked[:5]}"
        assert not [p for p in paths if p in text], f"{student}'s feedback names a grading path"
        assert "BEGIN HIDDEN TESTS" not in text and feedback.HIDDEN_NOTE in text
        scores, _ = graded[student]
        if all(s == m for s, m in scores.values()):
            assert "a check in this cell failed" not in text
        else:
            assert "a check in this cell failed" in text or "not attempted" in text


# What each workbook's issue asks for; 8 where it does not say.
MINIMUM_MISTAKES = {"04_mla": 10, "05_cache_benchmark": 6, "06_beyond": 6}


def test_every_workbook_has_enough_planted_mistakes():
    for assignment in assignments():
        need = MINIMUM_MISTAKES.get(assignment, 8)
        assert len(MISTAKES[assignment]) >= need, f"{assignment} needs at least {need} planted mistakes"
