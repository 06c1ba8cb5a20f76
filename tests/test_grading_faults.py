"""make grade under load and faults: nothing is lost, nothing is graded twice.

A class that is new to the gradebook (8 students x every workbook) is graded by
`make grade` with two processes, killed (SIGKILL) part-way, and graded again;
meanwhile a second make grade is started and the formgrader changes a score.
The gradebook must then hold every notebook once, as serial grading writes it.

What is at stake here is nbgrader's bookkeeping (the gradebook, the autograded
copies, the feedback), not the kernels: so that the class costs seconds, not
minutes, its workspace grades without executing the notebooks (the config below
drops the execute step; every other step of make grade runs as it does for an
instructor). One test kills a make grade with real kernels running.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import nbformat
import psutil
import pytest

from attnlab.instructor import batch, course, grading, sandbox
from conftest import ROOT

WORKBOOKS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and p.name[:2].isdigit())
STUDENTS = [f"s{i:02d}" for i in range(8)]
CORRUPT = ("s07", "03_rope")  # a notebook that cannot be graded: one line on the console
NO_EXECUTION = """
from nbgrader.preprocessors import AssignLatePenalties, CheckCellMetadata, IgnorePattern, LimitOutput, SaveAutoGrades
c.Autograde.autograde_preprocessors = [IgnorePattern, LimitOutput, SaveAutoGrades, AssignLatePenalties,
                                       CheckCellMetadata]
"""
FULL_DISK = "s06"  # the disk fills while this student's feedback is written
# ... as a file-size limit of 100 kB on that step only (a feedback page is about 200 kB; the
# gradebook and the autograded copy are written before it, without the limit).
FEEDBACK_DISK_FULL = f"""
import resource
from nbgrader.converters import GenerateFeedback as _Feedback
if not getattr(_Feedback, "_disk_full", False):
    _start = _Feedback.start
    def _limited(self):
        if self.coursedir.student_id != "{FULL_DISK}":
            return _start(self)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
        try:
            return _start(self)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    _Feedback.start, _Feedback._disk_full = _limited, True
"""


def _release(a):
    return nbformat.read(ROOT / "course" / a / f"{a}.ipynb", as_version=4)


def _command(ws, *args):
    """`make grade` (what the Makefile runs) on the course copy ``ws``."""
    return [sys.executable, "-m", "attnlab.instructor.grading", "--root", str(ws), "grade", *args]


def _start(ws, *args, **env):
    """:func:`_command`, in the background."""
    return subprocess.Popen(_command(ws, *args), cwd=ws, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})


def _read_until(proc, lines: list, done, timeout=300):
    """Read ``proc``'s console into ``lines`` until ``done(lines)``."""
    deadline = time.monotonic() + timeout
    while not done(lines):
        assert time.monotonic() < deadline, lines
        line = proc.stdout.readline()
        assert line, f"make grade ended early: {lines} {proc.stderr.read()}"
        lines.append(line.rstrip("\n"))


def _progress(lines):
    return [ln for ln in lines if ln.startswith("[")]


def _alive(procs):
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _kill_and_wait(proc, timeout=20):
    """SIGKILL make grade; returns the processes it had started that are still alive ``timeout`` s later."""
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + timeout
    while _alive(family) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [(p.pid, " ".join(p.cmdline())[:120]) for p in _alive(family)]


def _dump(ws, pairs):
    """(student, notebook, grade) -> (auto score, max score, needs manual grade), for ``pairs``."""
    out = {}
    with course.gradebook(ws) as gb:
        for a, s in pairs:
            nb = gb.find_submission_notebook(a, a, s)
            for g in nb.grades:
                out[(s, a, g.name)] = (g.auto_score, g.max_score, g.needs_manual_grade)
    return out


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    ws = grading.workspace(tmp / "class", WORKBOOKS, config=NO_EXECUTION + FEEDBACK_DISK_FULL)
    for a in WORKBOOKS:
        for s in STUDENTS:
            grading.submit(ws, s, a, b"hello" if (s, a) == CORRUPT else _release(a))
    assert not (ws / "autograde" / "gradebook.db").exists()  # new to the gradebook

    first, lines = _start(ws, "--jobs", "2"), []
    _read_until(first, lines, lambda ln: len(_progress(ln)) >= 1)
    second = subprocess.run(first.args, cwd=ws, capture_output=True, text=True, timeout=120)
    _read_until(first, lines, lambda ln: len(_progress(ln)) >= 12)
    survivors = _kill_and_wait(first)
    after_kill = course.load_record(ws, batch.RECORD)
    pages_after_kill = {str(p.relative_to(ws)): p.read_text().rstrip().endswith("</html>")
                        for p in (ws / "autograde" / "feedback").rglob("*.html")}

    # The formgrader (nbgrader's gradebook API, as its handlers use it) marks a graded notebook down
    # while the second make grade runs.
    edited_student, edited_workbook = sorted(after_kill)[0].split("/")
    again, lines2 = _start(ws, "--jobs", "2"), []
    _read_until(again, lines2, lambda ln: len(_progress(ln)) >= 1)
    with course.gradebook(ws) as gb:
        nb = gb.find_submission_notebook(edited_workbook, edited_workbook, edited_student)
        edited = next(g for g in nb.grades if g.cell.cell_type == "code" and g.max_score > 0)
        edited.manual_score, edited_name, edited_max = 0.0, edited.name, edited.max_score
        next(c for c in nb.comments).manual_comment = "see me"
        gb.db.commit()
    out, err = again.communicate(timeout=600)
    lines2 += out.splitlines()
    after_second = batch.pending(ws)
    full_disk_pages = list((ws / "autograde" / "feedback").rglob(f"{FULL_DISK}/*/*"))
    # Room on the disk again.
    config = ws / "autograde" / "nbgrader_config.py"
    config.write_text(config.read_text().replace(FEEDBACK_DISK_FULL, ""))
    third = subprocess.run(_command(ws), cwd=ws, capture_output=True, text=True, timeout=300)

    serial = grading.workspace(tmp / "serial", WORKBOOKS, config=NO_EXECUTION)
    for a in WORKBOOKS:
        grading.submit(serial, "s00", a, _release(a))
    serial_results = batch.grade_course(serial, jobs=1, progress=lambda line: None)
    return {"ws": ws, "first": lines, "second": second, "survivors": survivors, "after_kill": after_kill,
            "pages_after_kill": pages_after_kill, "again": (again.returncode, lines2, err),
            "after_second": after_second, "full_disk_pages": full_disk_pages, "third": third,
            "edited": (edited_student, edited_workbook, edited_name, edited_max),
            "serial": serial, "serial_results": serial_results}


def test_a_killed_make_grade_leaves_no_process_behind(resumed):
    assert resumed["survivors"] == []


def test_a_second_make_grade_refuses_in_one_sentence(resumed):
    second = resumed["second"]
    assert second.returncode == 2, second.stdout + second.stderr
    out = second.stdout.splitlines()
    assert len(out) == 2 and out[1].startswith("not grading: another make grade is grading this course (pid "), out
    assert out[1].endswith("let it finish, then run make grade again") and second.stderr == ""


def test_grading_again_grades_what_was_left_and_nothing_twice(resumed):
    ws, after_kill = resumed["ws"], resumed["after_kill"]
    assert 10 <= len(after_kill) <= 14, after_kill  # the first make grade was killed after 12 notebooks
    rc, lines, _ = resumed["again"]
    assert rc == 0, lines
    graded_again = {"/".join(ln.split("] ")[1].split(":")[0].split()) for ln in _progress(lines)}
    assert not graded_again & set(after_kill)
    everything = {f"{s}/{a}" for s in STUDENTS for a in WORKBOOKS}
    assert graded_again | set(after_kill) == everything
    # What has no feedback is not graded yet: the next make grade grades it, and only it.
    left = sorted([(a, FULL_DISK) for a in WORKBOOKS] + [CORRUPT[::-1]], key=lambda p: (p[1], p[0]))
    assert resumed["after_second"] == left
    third = resumed["third"]
    assert third.returncode == 0, third.stdout + third.stderr
    assert sorted(tuple(ln.split("] ")[1].split(":")[0].split()[::-1]) for ln in _progress(third.stdout.splitlines())) \
        == sorted(left)
    assert set(course.load_record(ws, batch.RECORD)) == everything - {"/".join(CORRUPT)}
    assert batch.pending(ws) == [CORRUPT[::-1]]


def test_the_gradebook_is_whole_and_as_serial_grading_writes_it(resumed):
    ws = resumed["ws"]
    with sqlite3.connect(ws / "autograde" / "gradebook.db") as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert [r[0] for r in con.execute("SELECT id FROM student ORDER BY id")] == STUDENTS
        # one submission per (workbook, student), each notebook of it once
        assert con.execute("SELECT COUNT(*) FROM submitted_assignment").fetchone() == (len(STUDENTS) * len(WORKBOOKS),)
        assert con.execute("SELECT COUNT(*) FROM submitted_notebook").fetchone() == (len(STUDENTS) * len(WORKBOOKS),)
    graded = [(a, s) for s in STUDENTS for a in WORKBOOKS if (s, a) != CORRUPT]
    parallel = _dump(ws, graded)
    serial = _dump(resumed["serial"], [(a, "s00") for a in WORKBOOKS])
    assert parallel == {k: serial[("s00",) + k[1:]] for k in parallel}
    assert all(r["success"] for r in resumed["serial_results"])


def test_feedback_is_whole_for_every_graded_notebook_and_no_half_written_page_is_left(resumed):
    ws = resumed["ws"]
    for s in STUDENTS:
        for a in WORKBOOKS:
            page = ws / "autograde" / "feedback" / s / a / f"{a}.html"
            assert page.is_file() == ((s, a) != CORRUPT), page
            if page.is_file():
                assert page.read_text().rstrip().endswith("</html>"), page
    # Killed in the middle: every page that was in place was whole, and only what was recorded had one.
    after_kill = resumed["pages_after_kill"]
    assert all(after_kill.values()) and 0 <= len(after_kill) - len(resumed["after_kill"]) <= 2, after_kill
    assert not (ws / batch.STAGING).exists() or not any((ws / batch.STAGING).rglob("*.html"))
    assert not list((ws / "autograde" / "feedback").rglob(".*old-*"))


def test_a_score_changed_in_the_formgrader_during_grading_is_kept(resumed):
    ws = resumed["ws"]
    student, workbook, name, max_score = resumed["edited"]
    with course.gradebook(ws) as gb:
        nb = gb.find_submission_notebook(workbook, workbook, student)
        grade = next(g for g in nb.grades if g.name == name)
        assert (grade.manual_score, grade.score) == (0.0, 0.0)
        assert "see me" in [c.manual_comment for c in nb.comments]
        total = gb.find_submission(workbook, student).score
    import csv

    with open(ws / "autograde" / "grades.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if (r["student_id"], r["assignment"]) == (student, workbook))
    assert float(row["score"]) == total
    with course.gradebook(resumed["serial"]) as gb:
        assert total == gb.find_submission(workbook, "s00").score - max_score


def test_an_error_is_one_line_on_the_console_and_its_traceback_is_in_the_log(resumed):
    rc, lines, err = resumed["again"]
    assert "Traceback" not in "\n".join(lines) + err and err == ""
    bad = [ln for ln in _progress(lines) if "NOT GRADED" in ln]
    assert len(bad) == 1 and bad[0].split("] ")[1].startswith(f"{CORRUPT[0]} {CORRUPT[1]}: NOT GRADED: "), bad
    assert "NotJSONError" in bad[0] and "(details: autograde/grading.log)" in bad[0]
    log = (resumed["ws"] / batch.LOG).read_text()
    assert f"=== {CORRUPT[0]} {CORRUPT[1]}: " in log and "Traceback" in log


def test_a_full_disk_while_feedback_is_written_is_one_line_and_the_batch_goes_on(resumed):
    _, lines, _ = resumed["again"]
    full = [ln for ln in _progress(lines) if ln.split("] ")[1].startswith(FULL_DISK + " ")]
    assert len(full) == len(WORKBOOKS), lines
    for ln in full:
        assert ": graded, but its feedback was not written: OSError: [Errno 27] File too large" in ln, ln
        assert "(the disk is full, or a file-size limit was reached); the next make grade grades it again" in ln
    assert resumed["full_disk_pages"] == []  # no page, rather than half of one
    third = _progress(resumed["third"].stdout.splitlines())  # room again: graded with feedback
    assert sum(ln.split(": ", 1)[1].startswith("graded (") for ln in third) == len(WORKBOOKS), third


# ------------------------------------------------------------------ before grading starts

@pytest.mark.parametrize("kind", ["text", "other-database", "locked"])
def test_a_gradebook_that_is_not_one_or_is_locked_gets_one_sentence_and_is_not_changed(tmp_path, monkeypatch, kind):
    ws = grading.workspace(tmp_path / "course", WORKBOOKS[:1], config=NO_EXECUTION)
    grading.submit(ws, "ann", WORKBOOKS[0], _release(WORKBOOKS[0]))
    db = ws / "autograde" / "gradebook.db"
    holder = None
    if kind == "text":
        db.write_text("grades: ann 17/17\n")
    elif kind == "other-database":
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE marks (student TEXT, score REAL)")
    else:
        with course.gradebook(ws):
            pass  # nbgrader's own, empty
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        monkeypatch.setenv(batch.WAIT_ENV, "1")
    before = db.read_bytes()
    try:
        with pytest.raises(batch.GradingRefused) as refused:
            batch.grade_course(ws, jobs=1, progress=lambda line: None)
    finally:
        if holder:
            holder.rollback()
            holder.close()
    said = str(refused.value)
    assert said.startswith("autograde/gradebook.db is ") and "\n" not in said
    expected = {"text": "is not an nbgrader gradebook (file is not a database)",
                "other-database": "is not an nbgrader gradebook (it has no assignment, grade, notebook",
                "locked": "is locked by another program and was still locked after 1 s"}[kind]
    assert expected in said, said
    assert db.read_bytes() == before
    assert not (ws / "autograde" / "autograded").exists()


ISOLATED = sandbox.report()["isolation"].startswith(("root", "user"))


def test_no_kernel_outlives_a_killed_make_grade(tmp_path):
    """With real kernels: SIGKILL make grade while notebooks are being graded."""
    ws = grading.workspace(tmp_path / "course", [WORKBOOKS[0]])
    release = _release(WORKBOOKS[0])
    answers = grading.filled(release, nbformat.read(ROOT / "solutions" / WORKBOOKS[0] / f"{WORKBOOKS[0]}.ipynb",
                                                    as_version=4))
    for s in ("ann", "ben"):
        grading.submit(ws, s, WORKBOOKS[0], answers)
    proc = _start(ws, "--jobs", "2", **({} if ISOLATED else {"ATTNLAB_SANDBOX": "off"}))
    deadline = time.monotonic() + 120
    while not any("ipykernel_launcher" in " ".join(p.cmdline()) for p in _alive(
            psutil.Process(proc.pid).children(recursive=True))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    assert _kill_and_wait(proc) == []
