"""Grading survives bad submissions, and they earn nothing they should not.

One class of workbook 01: the model answers, the blank release and every
submission of tests/hostile_submissions.py, graded together by the code behind
`make grade` (two processes sharing one gradebook), with a 10 s cell limit and
a 3 GiB kernel memory limit so that the loops and the memory bomb end quickly.
Then a part of the class is graded again one after another, and the two
gradebooks must agree.
"""
from __future__ import annotations

import json
import os
import pathlib
import socket

import nbformat
import pytest

from attnlab import grading, sandbox
from conftest import ROOT
from hostile_submissions import ALL_TESTS, ASSIGNMENT as A, HOSTILE

LIMITS = 'c.Execute.timeout = 10\nos.environ["ATTNLAB_KERNEL_MEMORY"] = "3G"'
FULL = {"test_attention": 3, "test_heads": 2, "test_mha": 3, "test_backward": 3, "test_autograd_function": 1,
        "test_kv_cache": 3, "test_cache_size": 2}
SERIAL = ["good", "syntax_error", "os_exit", "corrupt_json", "noisy", "patch_allclose", "deleted_test_cell"]

needs_isolation = pytest.mark.skipif(not sandbox.report()["isolation"].startswith(("root", "user")),
                                     reason="this machine refuses the namespaces the grading sandbox uses")


def _class(answers, release):
    subs = {"good": answers, "blank": release}
    for h in HOSTILE:
        subs[h.name] = h.build(answers)
    return subs


def _place(ws, student, nb, filename=""):
    folder = ws / "autograde" / "submitted" / student / A
    folder.mkdir(parents=True, exist_ok=True)
    if nb is None:
        return
    path = folder / (filename or f"{A}.ipynb")
    path.write_bytes(nb) if isinstance(nb, bytes) else nbformat.write(nb, path)


def _grade(tmp, name, students, subs, jobs):
    ws = grading.workspace(tmp / name, [A], config=LIMITS)
    assert grading.api(ws).generate_assignment(A)["success"]
    files = {h.name: h.filename for h in HOSTILE}
    for s in students:
        _place(ws, s, subs[s], files.get(s, ""))
    return ws, grading.grade_course(ws, jobs=jobs, progress=lambda line: None)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    release = nbformat.read(ROOT / "course" / A / f"{A}.ipynb", as_version=4)
    source = nbformat.read(ROOT / "solutions" / A / f"{A}.ipynb", as_version=4)
    subs = _class(grading.filled(release, source), release)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    saved = dict(os.environ)
    # What the snooping submission tries to reach (kernels inherit the environment).
    os.environ.update(SNOOP_PORT=str(listener.getsockname()[1]),
                      SNOOP_GRADEBOOK=str(tmp / "parallel" / "autograde" / "gradebook.db"),
                      SNOOP_SUBMITTED=str(tmp / "parallel" / "autograde" / "submitted"))
    checks_before = (ROOT / "attnlab" / "checks.py").read_bytes()
    try:
        parallel = _grade(tmp, "parallel", list(subs), subs, jobs=2)
        serial = _grade(tmp, "serial", SERIAL, subs, jobs=1)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        listener.close()
    assert (ROOT / "attnlab" / "checks.py").read_bytes() == checks_before, "a submission changed attnlab/checks.py"
    rows = {r["student"]: r for r in grading.summary(parallel[0])}
    return {"parallel": parallel, "serial": serial, "rows": rows}


def _scores(ws, student):
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{ws / 'autograde' / 'gradebook.db'}", course_id="efficient-attention") as gb:
        try:
            nb = gb.find_submission_notebook(A, A, student)
        except MissingEntry:
            return {}
        return {g.name: (g.score, g.max_score) for g in nb.grades if g.cell.cell_type == "code"}


def test_the_batch_finishes_and_grades_every_submission(graded):
    ws, results = graded["parallel"]
    assert sorted(r["student"] for r in results) == sorted(["good", "blank", *(h.name for h in HOSTILE)])
    not_graded = {r["student"] for r in results if not r["success"]}
    assert not_graded <= {h.name for h in HOSTILE if not h.graded}, f"grading failed for {not_graded}"


def test_the_model_answers_keep_full_marks_beside_hostile_classmates(graded):
    ws, _ = graded["parallel"]
    assert {c: s for c, (s, _) in _scores(ws, "good").items()} == FULL
    assert graded["rows"]["good"]["flags"] == "" and graded["rows"]["good"]["failing"] == ""
    assert all(s == 0 for s, _ in _scores(ws, "blank").values())


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.name for h in HOSTILE])
def test_hostile_submission(graded, hostile):
    ws, _ = graded["parallel"]
    scores = _scores(ws, hostile.name)
    row = graded["rows"][hostile.name]
    if not hostile.graded:
        assert all(s == 0 for s, _ in scores.values()), f"{hostile.name} scored points: {scores}"
        assert row[A] == "not graded", row
    else:
        assert set(scores) == set(ALL_TESTS), f"{hostile.name}: test cells missing from the gradebook: {scores}"
        for cell, (score, max_score) in scores.items():
            want = 0 if cell in hostile.loses else max_score
            assert score == want, f"{hostile.name}: {cell} scored {score}/{max_score}, expected {want} ({hostile.why})"
    if hostile.flag:
        assert hostile.flag in row["flags"], f"{hostile.name}: the summary should flag {hostile.flag!r}: {row['flags']!r}"


@needs_isolation
def test_student_code_cannot_reach_secrets_the_network_or_shared_files(graded):
    ws, _ = graded["parallel"]
    nb = nbformat.read(ws / "autograde" / "autograded" / "snoop" / A / f"{A}.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    seen = json.loads(text.split("SNOOP ", 1)[1].splitlines()[0])
    assert seen["solution_source"].startswith("refused"), seen
    # an empty folder, or nothing at all where the course itself lives under the private /tmp
    assert seen["solutions_listing"] in ("[]", "refused: FileNotFoundError"), seen
    assert "SQLite" not in seen["gradebook"], seen
    assert seen["other_submissions"] in ("[]", "refused: FileNotFoundError"), seen
    assert "good" not in seen["up_from_here"], seen
    assert seen["write_package"].startswith("refused"), seen
    assert seen["write_home"].startswith("refused"), seen
    assert seen["network"].startswith("refused"), seen
    assert not pathlib.Path("~/attnlab-tamper.txt").expanduser().exists()


def test_a_gigantic_print_is_cut(graded):
    ws, _ = graded["parallel"]
    path = ws / "autograde" / "autograded" / "giant_print" / A / f"{A}.ipynb"
    assert path.stat().st_size < 5_000_000
    assert "[output cut: more than 1,000,000 characters in one cell]" in path.read_text()


def _dump(ws, students):
    """Every grade, comment-free, keyed by student and cell; and which notebooks were graded."""
    from nbgrader.api import Gradebook

    out = {}
    with Gradebook(f"sqlite:///{ws / 'autograde' / 'gradebook.db'}", course_id="efficient-attention") as gb:
        for s in students:
            for sub in gb.find_student(s).submissions:
                for nb in sub.notebooks:
                    for g in nb.grades:
                        out[(s, nb.name, g.name)] = (g.auto_score, g.max_score, g.needs_manual_grade)
    graded = {s: (ws / "autograde" / "autograded" / s / A / f"{A}.ipynb").exists() for s in students}
    return out, graded


def test_parallel_grading_writes_the_gradebook_serial_grading_writes(graded):
    parallel, serial = graded["parallel"][0], graded["serial"][0]
    assert _dump(parallel, SERIAL) == _dump(serial, SERIAL)
    assert {r["student"]: r["success"] for r in graded["serial"][1]} == \
        {r["student"]: r["success"] for r in graded["parallel"][1] if r["student"] in SERIAL}


@pytest.mark.parametrize("assignment", sorted(p.name for p in (ROOT / "solutions").iterdir()
                                              if p.is_dir() and p.name[:2].isdigit()))
def test_the_model_answers_raise_no_flags(tmp_path, assignment):
    release = nbformat.read(ROOT / "course" / assignment / f"{assignment}.ipynb", as_version=4)
    source = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    path = tmp_path / f"{assignment}.ipynb"
    nbformat.write(grading.filled(release, source), path)
    assert grading.flags(path) == []


def test_code_flags_name_what_an_instructor_should_read():
    flag = grading.code_flags
    assert flag("torch.allclose = lambda *a, **k: True") == ["replaces torch.allclose"]
    assert flag("import attnlab.checks as c\nc.expect_close = print") == ["replaces c.expect_close"]
    assert flag("from attnlab.guard import trusted") == ["imports attnlab.guard", "imports trusted from attnlab.guard"]
    assert flag("class A:\n    def __eq__(self, o):\n        return True") == ["defines __eq__"]
    assert flag("with torch.inference_mode(False):\n    pass") == ["turns autograd on (inference_mode(False))"]
    assert flag("open('../../solutions/01_mha/01_mha.py')")[0].startswith("names a grading path")
    assert flag("def f(:") == ["does not parse"]
    assert flag("%timeit f()\nx = 1") == []
    assert flag("scores = q @ k.transpose(-2, -1)\nout = torch.softmax(scores, dim=-1)") == []
