"""``make grade``: the whole class, on every core, safe under load and faults.

What can go wrong when a class is graded, and what this module does about it:

* **Two processes meet a new student.** nbgrader creates a student (and an
  assignment) in the gradebook the first time it grades them; two grading
  processes doing so at once collide on the table's unique key and one
  notebook is lost. :func:`prepare` writes every student and workbook the
  batch needs before any worker starts, so the workers only ever add rows of
  their own (one submission each).
* **make grade is killed** (SIGKILL, a closed laptop). The workers, their
  kernel launchers and the kernels die with it (``PR_SET_PDEATHSIG``, here and
  in the sandbox). A notebook counts as graded only once its grades are in the
  gradebook *and* its feedback is in place, which this process writes down in
  ``autograde/graded.json`` (the submission's digest beside it); the next
  ``make grade`` grades what is not there, and nothing twice. Feedback is
  written to a staging folder and moved into place whole, so no half-written
  HTML ever reaches a student. SQLite keeps the gradebook whole by itself.
* **Two make grade at once.** A lock on ``autograde/.grading.lock``: the
  second refuses with one sentence.
* **A disk that fills** while feedback is written: that notebook's line says
  so, the batch goes on, and the next ``make grade`` writes its feedback.
* **A gradebook that is not one**, or that another program keeps locked:
  one sentence and nothing graded; the file is not touched.
* **A quiet console.** Each notebook is one line. The workers' own output
  (nbgrader's log, a kernel's complaints, any traceback) goes to
  ``autograde/grading.log``, which a failed notebook's line names.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import pathlib
import re
import shutil
import signal
import sqlite3
import sys
import time

from attnlab.instructor import course

LOCK = pathlib.Path("autograde") / ".grading.lock"
RECORD = pathlib.Path("autograde") / "graded.json"
LOG = pathlib.Path("autograde") / "grading.log"
STAGING = pathlib.Path("autograde") / ".feedback-staging"
# nbgrader's own tables: a gradebook without them is some other database.
GRADEBOOK_TABLES = {"assignment", "notebook", "student", "submitted_assignment", "submitted_notebook", "grade"}
# How long make grade waits for another program's lock on the gradebook (seconds).
WAIT_ENV = "ATTNLAB_GRADEBOOK_WAIT"


class GradingRefused(Exception):
    """Why make grade grades nothing, in one sentence for the console."""


# ------------------------------------------------------------------ before anything is graded

@contextlib.contextmanager
def exclusive(root: pathlib.Path):
    """Hold the course's grading lock for the ``with`` block, or refuse: one make grade at a time."""
    import fcntl

    path = pathlib.Path(root) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            raise GradingRefused(f"another make grade is grading this course ({holder}): let it finish, "
                                 "then run make grade again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, started {datetime.datetime.now():%H:%M:%S}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # the lock goes with the descriptor, also when this process is killed


def check_gradebook(root: pathlib.Path, wait: float | None = None) -> None:
    """Refuse a gradebook that is not nbgrader's, or that another program keeps locked
    for longer than ``wait`` seconds (default 60, or $ATTNLAB_GRADEBOOK_WAIT). Reads only:
    the file is left byte for byte as it was. No gradebook yet is fine: nbgrader makes one."""
    path = pathlib.Path(root) / "autograde" / "gradebook.db"
    if not path.exists():
        return
    wait = float(os.environ.get(WAIT_ENV, 60)) if wait is None else wait
    shown = f"{path.relative_to(root)}"
    locked = GradingRefused(f"{shown} is locked by another program and was still locked after {wait:g} s "
                            "(an open formgrader is fine; a database browser or a stuck process is not): "
                            "close it and run make grade again")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=wait)) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not GRADEBOOK_TABLES <= tables:
            raise GradingRefused(f"{shown} is not an nbgrader gradebook (it has no "
                                 f"{', '.join(sorted(GRADEBOOK_TABLES - tables))} table): move it away and "
                                 "run make grade again, which starts a new one")
        # A writer's lock held elsewhere: wait for it as SQLite would, then give up. Taking the
        # lock and letting it go writes nothing (a read-only connection would not take it at all).
        with contextlib.closing(sqlite3.connect(path, timeout=wait, isolation_level=None)) as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise locked from None
        raise GradingRefused(f"{shown} cannot be read as a gradebook ({e})") from None
    except sqlite3.DatabaseError as e:
        raise GradingRefused(f"{shown} is not an nbgrader gradebook ({e}): move it away and run make grade "
                             "again, which starts a new one") from None


def prepare(root: pathlib.Path, pairs: list[tuple[str, str]], progress=print) -> None:
    """Put every workbook and student of ``pairs`` in the gradebook before the workers start
    (they would otherwise race to create them: see the module docstring)."""
    from attnlab.instructor.grading import api

    with course.gradebook(root) as gb:
        known = {a.name for a in gb.assignments}
        students = {s.id for s in gb.students}
        for s in sorted({s for _, s in pairs} - students):
            gb.add_student(s)
    # nbgrader grades only assignments its gradebook knows, which `make release` records.
    for a in sorted({a for a, _ in pairs} - known):
        progress(f"{a} is not in the gradebook yet: releasing it first (nbgrader generate_assignment)")
        if not api(root).generate_assignment(a)["success"]:
            raise RuntimeError(f"nbgrader generate_assignment {a} failed")


# ------------------------------------------------------------------ what is graded already

def digest(folder: pathlib.Path) -> str:
    """A fingerprint of a submission folder: every file's name and bytes."""
    h = hashlib.sha256()
    for p in sorted(q for q in pathlib.Path(folder).rglob("*") if q.is_file()):
        h.update(str(p.relative_to(folder)).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _newest_mtime(folder: pathlib.Path) -> float:
    return max((p.stat().st_mtime for p in folder.rglob("*") if p.is_file()), default=0.0)


def _feedback(root: pathlib.Path, assignment: str, student: str) -> pathlib.Path:
    return pathlib.Path(root) / "autograde" / "feedback" / student / assignment / f"{assignment}.html"


def _done(root: pathlib.Path, record: dict, assignment: str, student: str) -> bool:
    """Graded, with its feedback in place, from the submission as it is now."""
    src, html = pathlib.Path(root) / "autograde" / "submitted" / student / assignment, _feedback(root, assignment, student)
    if not html.is_file():
        return False
    entry = record.get(f"{student}/{assignment}")
    if entry is None:  # graded before make grade kept a record: by the times, as it used to
        return html.stat().st_mtime >= _newest_mtime(src)
    return entry["digest"] == digest(src)


def pending(root: pathlib.Path = course.ROOT, student: str | None = None, force: bool = False) -> list[tuple[str, str]]:
    """(assignment, student) pairs under autograde/submitted that need grading: all of them with
    ``force``; otherwise those not graded yet, not finished (killed, failed, feedback not written),
    or handed in again since."""
    root = pathlib.Path(root)
    submitted = root / "autograde" / "submitted"
    assignments = course.workbooks(root)
    record = course.load_record(root, RECORD) or {}
    pairs = []
    for s in sorted(p.name for p in submitted.iterdir() if p.is_dir()) if submitted.is_dir() else []:
        if student and s != student:
            continue
        for a in assignments:
            if (submitted / s / a).is_dir() and (force or not _done(root, record, a, s)):
                pairs.append((a, s))
    return pairs


def _note(root: pathlib.Path, r: dict) -> None:
    """Write down, as each notebook finishes, what is graded and what ran without the sandbox."""
    if r["success"] and r["feedback"]:
        record = course.load_record(root, RECORD) or {}
        record[f"{r['student']}/{r['assignment']}"] = {"digest": r["digest"], "graded": r["graded"]}
        course.save_record(root, RECORD, record)
    _record_sandbox(root, [r])


def sandbox_off() -> bool:
    """Whether the instructor asked to grade without the sandbox (ATTNLAB_SANDBOX=off);
    the grading kernel refuses to run unsandboxed otherwise."""
    return os.environ.get("ATTNLAB_SANDBOX", "").strip().lower() == "off"


def _record_sandbox(root: pathlib.Path, results: list[dict]) -> None:
    """Keep autograde/unsandboxed.json: the (workbook, student) pairs whose latest
    grading ran without the sandbox, for the summary to flag."""
    pairs = {tuple(p) for p in course.load_record(root, course.UNSANDBOXED)}
    for r in results:
        (pairs.discard if r["sandbox"] else pairs.add)((r["assignment"], r["student"]))
    course.save_record(root, course.UNSANDBOXED, sorted(list(p) for p in pairs))


# ------------------------------------------------------------------ a grading process

def one_thread_per_kernel() -> None:
    """Kernels inherit these: with one grading process per core, torch's own thread pool in
    every kernel would oversubscribe the cores (measured on two cores: 121 s for workbook
    01's 21 submissions, 61 s with one thread)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"


def _worker(log: str, parent: int) -> None:
    """Set up a grading process: die with make grade, run torch on one thread in each kernel,
    and send everything it or its kernels print to the log instead of the console."""
    if sys.platform.startswith("linux"):
        from attnlab.instructor import kernel_root

        kernel_root.libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with make grade
    if os.getppid() != parent:  # make grade died before the line above took effect
        os._exit(1)
    one_thread_per_kernel()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _cause(log: str) -> str:
    """The exception's own line in nbgrader's log ("NotJSONError: ...", "DeadKernelError: Kernel died")."""
    causes = re.findall(r"^\s*([\w.]+(?:Error|Exception): .*)$", log or "", re.M)
    return causes[-1].strip()[:200] if causes else ""


def _put_in_place(staged: pathlib.Path, dest: pathlib.Path) -> None:
    """Swap a folder of feedback in: a kill leaves the old feedback, or none, never half."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        os.rename(dest, old)
    os.rename(staged, dest)
    shutil.rmtree(old, ignore_errors=True)


def _tidy(root: pathlib.Path) -> None:
    """Remove what a killed make grade left half-done: staged feedback, feedback swapped out."""
    shutil.rmtree(root / STAGING, ignore_errors=True)
    feedback = root / "autograde" / "feedback"
    for old in feedback.glob("*/.*.old-*") if feedback.is_dir() else []:
        shutil.rmtree(old, ignore_errors=True)


def grade_one(root: str, assignment: str, student: str) -> dict:
    """Autograde one notebook and write its feedback (staged, then moved into place)."""
    from attnlab.instructor.grading import api

    root = pathlib.Path(root)
    t = time.perf_counter()
    src = root / "autograde" / "submitted" / student / assignment
    out = {"assignment": assignment, "student": student, "success": False, "feedback": False, "error": "",
           "digest": digest(src), "graded": datetime.datetime.now().isoformat(timespec="seconds"),
           "sandbox": not sandbox_off()}
    nbgrader_api = api(root)
    result = nbgrader_api.autograde(assignment, student, force=True)
    out["success"] = bool(result["success"])
    if not out["success"]:
        out["error"] = _cause(result.get("log")) or "see the log"
        _log_failure(root, out, result.get("log"))
    else:
        staging = root / STAGING / str(os.getpid())
        nbgrader_api.coursedir.feedback_directory = str(staging.relative_to(root))
        result = nbgrader_api.generate_feedback(assignment, student, force=True)
        staged = staging / student / assignment
        if result["success"] and (staged / f"{assignment}.html").is_file():
            _put_in_place(staged, _feedback(root, assignment, student).parent)
            out["feedback"] = True
        else:
            cause = _cause(result.get("log")) or "see the log"
            if "File too large" in cause or "No space left" in cause or "disk is full" in cause:
                cause += " (the disk is full, or a file-size limit was reached)"
            out["error"] = "its feedback was not written: " + cause
            _log_failure(root, out, result.get("log"))
        shutil.rmtree(staging / student / assignment, ignore_errors=True)
    out["seconds"] = time.perf_counter() - t
    return out


def _log_failure(root: pathlib.Path, r: dict, log: str | None) -> None:
    with contextlib.suppress(OSError), open(pathlib.Path(root) / LOG, "a") as f:  # a full disk: the line still says why
        f.write(f"\n=== {r['student']} {r['assignment']}: {r['error']} "
                f"({datetime.datetime.now():%Y-%m-%d %H:%M:%S}, grading process {os.getpid()})\n{log or ''}\n")


# ------------------------------------------------------------------ the batch

def grade_course(root: pathlib.Path = course.ROOT, jobs: int | None = None, student: str | None = None,
                 force: bool = False, progress=print) -> list[dict]:
    """Autograde everything :func:`pending` in ``jobs`` processes (default: one per core),
    with feedback; raises :class:`GradingRefused` when the batch must not start.

    The processes share the course's gradebook: SQLite serialises their short write
    transactions (the config's ``?timeout=`` makes a writer wait for the lock instead of
    failing), :func:`prepare` has made every shared row, and each (assignment, student) pair
    is graded by exactly one process, so the gradebook is the one serial grading writes
    (tests/test_grading_faults.py compares the two). A notebook that cannot be graded
    (corrupt file, dead kernel) is reported in one line and the batch goes on."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing

    root = pathlib.Path(root)
    with exclusive(root):
        check_gradebook(root)
        _tidy(root)
        pairs = pending(root, student, force)
        if not pairs:
            progress("nothing to grade: every submission is graded (make grade FORCE=1 grades all again)")
            return []
        prepare(root, pairs, progress)
        jobs = max(1, min(jobs or os.cpu_count() or 1, len(pairs)))
        log = root / LOG
        with open(log, "a") as f:
            f.write(f"\n##### make grade: {len(pairs)} notebooks, {jobs} process(es), "
                    f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}\n")
        shown = str(LOG)
        results = []
        # Separate processes even for one job: a worker's stray output cannot reach the console, and
        # spawn, not fork, because this process may have torch (and its thread pools) loaded.
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker, initargs=(str(log), os.getpid())) as pool:
            # One notebook per task, handed out as workers free up: a slow one holds up no other.
            futures = {pool.submit(grade_one, str(root), a, s): (a, s) for a, s in pairs}
            for f in as_completed(futures):
                try:
                    r = f.result()
                except Exception as e:  # noqa: BLE001  (a worker that died: the batch goes on)
                    a, s = futures[f]
                    r = {"assignment": a, "student": s, "success": False, "feedback": False, "seconds": 0.0,
                         "error": f"its grading process died ({type(e).__name__})", "sandbox": not sandbox_off()}
                    _log_failure(root, r, repr(e))
                try:
                    _note(root, r)
                except OSError as e:  # a full disk: the next make grade grades it again
                    r["feedback"], r["error"] = False, f"make grade could not write down that it is graded ({e})"
                results.append(r)
                progress(_progress_line(len(results), len(pairs), r, shown))
        return results


def _progress_line(i: int, n: int, r: dict, log: str) -> str:
    if r["success"] and r["feedback"]:
        status = "graded"
    elif r["success"]:
        status = f"graded, but {r['error']}; the next make grade grades it again (details: {log})"
    else:
        status = f"NOT GRADED: {r['error']} (details: {log})"
    return f"[{i}/{n}] {r['student']} {r['assignment']}: {status} ({r['seconds']:.1f} s)"
