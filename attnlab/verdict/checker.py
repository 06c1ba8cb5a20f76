"""The checker: runs a test cell's code where the learner's code cannot reach it, and records the verdict.

It lives in the grader's process (nbgrader's, or ``make check``'s), which
never runs learner code, and serves one Unix socket. While the grader runs a
test cell it *arms* the checker for that cell; the kernel's stub
(:func:`attnlab.verdict.kernel.run`) connects and asks for the cell; the
checker runs the cell's code, taken from the course's own source (never from
the notebook being graded), with the answer key, the comparisons and the
inputs all on its side. Every name the code takes from the notebook
(``attention``, ``MultiHeadAttention``) is a :class:`Remote`: using it asks
the kernel, which gets copies of the inputs and sends back data. The
expected values are computed from the checker's own copies, after the
learner's code has run, so nothing the kernel does to its copies counts.

The verdict is recorded here, one per armed cell and run; the grader turns
it into the cell's output (:mod:`attnlab.verdict.grading`), so what the kernel
printed or raised, or hid, does not score. A failed hidden check is reported
in words (what was tested, what kind of wrong), never with its expected value.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import io
import math
import os
import socket
import threading
from dataclasses import dataclass

import torch

from attnlab.checks import cases
from attnlab.checks.failure import CheckFailed
from attnlab.verdict import wire
from attnlab.verdict.remote import ANSWERS, Connection, Remote, Watch

BEGIN, END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


@dataclass
class Verdict:
    status: str  # pass, fail (a check failed), todo (not attempted), error (not graded)
    message: str = ""
    printed: str = ""


class Checker:
    """Serves the test cells ``cells`` ({grade_id: source}) of one notebook at a time, on a Unix socket."""

    GRACE = 10.0  # seconds a record may take to arrive once the kernel has finished the cell
    FIRST_MESSAGE = 5.0  # seconds a new connection has to ask for its cell

    MAX_GIVEN = 100_000  # requests from cells that are not tests, in one notebook

    def __init__(self, cells: dict[str, str], student: str = "", secret: bytes | None = None,
                 timeout: float = 150.0, workbook: str = ""):
        from attnlab import answers

        self.cells, self.student, self.secret, self.timeout = dict(cells), student, secret, timeout
        self.workbook = workbook  # whose building blocks the kernel's cells may ask for
        self.given_asked = 0
        # Which cells test each exercise, and which cells the grader is done with: a cell whose exercises use
        # an earlier one runs only once that one's tests have run (a notebook whose test cells were moved
        # could otherwise collect the answers of an exercise before that exercise is tested).
        self.tested_in = tested_in(self.cells)
        self.finished: set[str] = set()
        self.answers = answers
        self.records: dict[str, Verdict] = {}
        self._lock = threading.Lock()
        self._window: str | None = None
        self._running = False
        self._generation = 0  # which arm() a run belongs to
        self._sock = None  # the conversation in progress, if any
        self._finished = threading.Event()
        self._stop = threading.Event()
        self.path = None
        self._server = None
        self._thread = None

    # -- the grader's side
    def start(self, path: str) -> "Checker":
        self.path = path
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        os.chmod(path, 0o666)  # the sandboxed kernel runs as a user of its own
        server.listen(4)
        server.settimeout(0.2)
        self._server = server
        self._thread = threading.Thread(target=self._serve, name="attnlab-checker", daemon=True)
        self._thread.start()
        return self

    def arm(self, grade_id: str) -> None:
        """The grader is about to run test cell ``grade_id``: accept one run of it, and no other."""
        with self._lock:
            self.records.pop(grade_id, None)
            self._window, self._running = grade_id, False
            self._generation += 1
            self._finished = threading.Event()  # a run that outlives its window sets its own, not this one

    def verdict(self, grade_id: str) -> Verdict:
        """The cell has run in the kernel: its verdict, or a failure when the checker never judged it."""
        with self._lock:
            running, sock, finished = self._running, self._sock, self._finished
        # The kernel is done with the cell: the checker has its record, or is about to. Where the cell ended
        # some other way (interrupted, the kernel hung or died), its connection is cut so that it ends too.
        if running and not finished.wait(self.GRACE) and sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            finished.wait(self.GRACE)
        with self._lock:
            self._window = None
            self.finished.add(grade_id)
            found = self.records.get(grade_id)
            if found:
                return found
            if not self._thread or not self._thread.is_alive():
                return Verdict("error", "not graded: the checker stopped")
            if running:
                return Verdict("error", "not graded: the checker was still running this test when the cell ended")
            return Verdict("error", "not graded: this test cell never reached the course's checker (was the cell "
                                    "run as released, all the way?)")

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        if self._server:
            self._server.close()
        if self.path and os.path.exists(self.path):
            os.unlink(self.path)

    def absent(self, grade_ids) -> None:
        """Test cells the notebook does not have (``make check`` runs a notebook as it is): they never run."""
        with self._lock:
            self.finished.update(grade_ids)

    def handed_in(self, grade_id: str) -> tuple[list[str], list[str]]:
        """The earlier exercises the exercises of cell ``grade_id`` use (the tests hand in the course's), and
        those of them whose test cells have not run yet. (Within a cell, every check of an exercise comes
        before the checks of those that use it.)"""
        from attnlab.checks import exercises

        tested = [e for e, cells in self.tested_in.items() if grade_id in cells and e in exercises.EXERCISES]
        uses = sorted({u for e in tested for u in exercises.lookup(e).uses} - set(tested))
        with self._lock:
            early = [u for u in uses if any(g != grade_id and g not in self.finished
                                            for g in self.tested_in.get(u, ()))]
        return uses, early

    # -- the kernel's side
    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with sock:
                sock.settimeout(self.FIRST_MESSAGE)  # a connection that says nothing holds up no one for long
                self._sock = sock
                try:
                    self._conversation(sock)
                except Exception:  # noqa: BLE001  (a bad kernel ends its own conversation, not the checker)
                    pass
                finally:
                    self._sock = None

    def _conversation(self, sock) -> None:
        header, data = wire.receive(sock)
        sock.settimeout(self.timeout)
        if header.get("op") in ANSWERS:  # a building block called from a cell that is not a test: one request
            self.given_asked += 1
            if self.given_asked > self.MAX_GIVEN:
                wire.send(sock, {"op": "refused", "message": f"the notebook asked the course's building blocks "
                                                             f"more than {self.MAX_GIVEN:,} times"})
                return
            Connection(sock, self.answers, self.workbook, test=False).answer(header["op"], header, data)
            return
        grade_id = str(header.get("cell", ""))[:200]
        with self._lock:
            ok = header.get("op") == "run" and grade_id == self._window and not self._running \
                and grade_id in self.cells
            if ok:
                self._running = True
            generation, finished = self._generation, self._finished
        if not ok:
            wire.send(sock, {"op": "refused", "message": f"the checker is not running {grade_id} now"})
            return
        verdict = Verdict("error", "not graded: the kernel stopped answering during the test")
        try:
            verdict = self.run_cell(grade_id, sock)
            wire.send(sock, {"op": "done", "status": verdict.status, "message": verdict.message,
                             "printed": verdict.printed})
        except Exception as e:  # noqa: BLE001  (the checker's own failure: this cell is not graded, and says why)
            if verdict.status == "error":
                verdict = Verdict("error", f"not graded: the checker failed ({type(e).__name__}: {e})"[:300])
            raise
        finally:
            with self._lock:
                if generation == self._generation:  # a run that outlived its window records nothing
                    self.records[grade_id] = verdict
                finished.set()

    def run_cell(self, grade_id: str, sock) -> Verdict:
        """Run test cell ``grade_id``'s code against the kernel on ``sock``; its verdict."""
        source = self.cells[grade_id]
        uses, early = self.handed_in(grade_id)
        if early:
            return Verdict("fail", f"this test hands your code the course's {', '.join(early)}, whose own test has "
                                   "not run yet: the notebook's test cells were moved; restore their order")
        conn = Connection(sock, self.answers, self.workbook)
        out = io.StringIO()
        scope = vocabulary(conn, out)
        # The earlier exercises it hands in are the course's, here as in the kernel's exercise blocks (where
        # a function of the test's that calls them runs when the learner's code calls it back).
        scope.update({name: getattr(self.answers, name) for name in uses})
        tree = ast.parse(source)
        for name in sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}):
            if name not in scope and not hasattr(builtins, name):
                scope[name] = Remote(conn, wire.Name(name), name)
        filename = f"<test cell {grade_id}>"
        hidden = hidden_lines(source)
        with cases.secret(self.secret, self.student, grade_id):
            try:
                exec(compile(tree, filename, "exec"), scope)  # noqa: S102  (the course's own test code)
            except NotImplementedError as e:
                return Verdict("todo", str(e) or "not written yet", out.getvalue())
            except (ConnectionError, socket.timeout) as e:
                return Verdict("error", "not graded: the kernel stopped answering during the test (it ran out of "
                                        f"time, or died: {e})", out.getvalue())
            except wire.WireError as e:
                return Verdict("error", f"not graded: the kernel sent what the checker cannot read ({e})",
                               out.getvalue())
            except BaseException as e:  # noqa: BLE001  (any failure of the test is the learner's verdict)
                line = _failing_line(e, filename)
                return Verdict("fail", _message(e, line in hidden, conn), out.getvalue())
        return Verdict("pass", "", out.getvalue())


def tested_in(cells: dict[str, str]) -> dict[str, list[str]]:
    """exercise -> the test cells (grade ids) whose code checks it in an ``exercise(...)`` block."""
    out: dict[str, list[str]] = {}
    for grade_id, source in cells.items():
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "exercise":
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        out.setdefault(arg.value, [])
                        if grade_id not in out[arg.value]:
                            out[arg.value].append(grade_id)
    return out


def hidden_lines(source: str) -> set[int]:
    """The line numbers (from 1) inside the cell's hidden-test block."""
    inside, out = False, set()
    for i, line in enumerate(source.split("\n"), 1):
        if BEGIN in line:
            inside = True
        elif END in line:
            inside = False
        elif inside:
            out.add(i)
    return out


def _failing_line(error: BaseException, filename: str) -> int:
    line, tb = 0, error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _message(error: BaseException, hidden: bool, conn: Connection) -> str:
    """What the learner reads: the whole message for a visible check, words without values for a hidden one."""
    if hidden:
        brief = getattr(error, "brief", None)
        if brief:
            return f"{brief} (a hidden check)"
        case = (conn.exercise or {}).get("case") or conn.last_case
        return f"{case + ': ' if case else ''}a hidden check failed (its cases and expected values are not shown)"
    text = str(error) if isinstance(error, AssertionError) else f"{type(error).__name__}: {error}"
    where = getattr(error, "where", "")
    return f"{text}\n{where}".strip()


def vocabulary(conn: Connection, out: io.StringIO) -> dict:
    """What a test cell's code finds on the checker's side: torch, the answer key, the checks."""
    from attnlab.checks import compare

    def printer(*args, sep=" ", end="\n", file=None, flush=False):
        out.write(sep.join(str(a) for a in args) + end)

    @contextlib.contextmanager
    def exercise(*names: str, case: str = ""):
        from attnlab.checks import exercises

        exercises.lookup(*names)  # an unknown name is the test's own mistake: say so now
        saved = conn.exercise
        conn.exercise = {"names": list(names), "case": case}
        conn.last_case = case
        try:
            yield
        finally:
            conn.exercise = saved

    @contextlib.contextmanager
    def storage_watch():
        """``with storage_watch() as w:`` the kernel watches what the learner's calls allocate; ``w.largest``."""
        saved, conn.watch = conn.watch, Watch()
        try:
            yield conn.watch
        finally:
            conn.watch = saved

    def gradients(outputs, inputs, cotangents):
        """The kernel's gradients of ``outputs`` (which its code computed) with respect to ``inputs``."""
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        for o in outputs:
            if not (isinstance(o, torch.Tensor) and id(o) in conn.from_kernel):
                raise CheckFailed("a gradient was asked of a tensor your code did not return")
        cotangents = list(cotangents) if isinstance(cotangents, (list, tuple)) else [cotangents]
        inputs = list(inputs)
        got = conn.op("vjp", {"outputs": outputs, "inputs": inputs, "cotangents": cotangents})
        if type(got) is not list or len(got) != len(inputs) or not all(
                g is None or (type(g) is torch.Tensor and g.shape == i.shape) for g, i in zip(got, inputs)):
            raise CheckFailed("the gradients your kernel sent back are not one per input, each shaped like it")
        return got

    return {"__name__": "__checker__", "__builtins__": builtins, "print": printer,
            "torch": torch, "nn": torch.nn, "F": torch.nn.functional, "math": math,
            "device": torch.device("cpu"), "answers": conn.answers, "exercise": exercise, "gradients": gradients,
            "storage_watch": storage_watch,
            "draw": cases.draw, "CheckFailed": CheckFailed,
            **{n: getattr(compare, n) for n in compare.__all__}}
