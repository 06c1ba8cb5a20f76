"""The grader's side of the checker: run each test cell through it, and score from its record.

:class:`CheckedCells` is mixed into an nbclient ``NotebookClient``: nbgrader's
``Execute`` (:class:`CheckedExecute`, set in autograde/nbgrader_config.py)
and ``make check``'s client (:mod:`attnlab.learner.selfcheck`). For a workbook
in :data:`CHECKED` it starts a :class:`~attnlab.verdict.checker.Checker` with
the test cells of the course's own source, then, for each test cell, arms the
checker, sends the kernel only a stub that asks the checker to run that cell,
puts the cell's source back, and replaces whatever the cell's outputs are
with the checker's verdict: a pass recorded for that cell in that run scores,
anything else (no record, an error, a kernel that printed "correct" and hid
its error) scores 0. nbgrader's ``SaveAutoGrades`` then reads those outputs.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import secrets
import shutil
import tempfile
from typing import TYPE_CHECKING

import nbformat
from jupyter_core.utils import run_sync
from nbgrader.preprocessors import Execute
from traitlets import Unicode

from attnlab import cells
if TYPE_CHECKING:  # the checker brings torch (2 s): imported where a checker starts, not by make grade's console
    from attnlab.verdict.checker import Checker, Verdict

# The workbooks whose test cells the checker runs; the others still test inside the kernel.
CHECKED = ("01_mha", "02_gqa", "03_rope")
SECRET_ENV = "ATTNLAB_CLASS_SECRET"
SECRET_FILE = "class_secret"  # autograde/class_secret, git-ignored: make grade reads it when the variable is unset


class SecretError(ValueError):
    """A class secret was given but cannot be used: nothing is graded."""


def class_secret(autograde: pathlib.Path | None = None) -> bytes | None:
    """The instructor's class secret: ``ATTNLAB_CLASS_SECRET``, else ``autograde/class_secret``, else None."""
    if SECRET_ENV in os.environ:
        value = os.environ[SECRET_ENV].strip()
        if not value:
            raise SecretError(f"{SECRET_ENV} is set but empty: set it to the class's secret, or unset it to "
                              "grade with the public cases")
        return value.encode()
    path = pathlib.Path(autograde) / SECRET_FILE if autograde else None
    if path is None or not path.exists():
        return None
    try:
        value = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise SecretError(f"{path} cannot be read ({e}): fix it, or remove it to grade with the public cases") \
            from None
    if not value:
        raise SecretError(f"{path} is empty: write the class's secret in it, or remove it")
    return value.encode()


def test_sources(nb: nbformat.NotebookNode) -> dict[str, str]:
    """grade_id -> code of each test cell of ``nb`` (the course's source: hidden tests included)."""
    return {cells.grade_id(c): c.source for c in nb.cells if cells.is_test_cell(c) and cells.grade_id(c)}


def stub(grade_id: str) -> str:
    """What the kernel runs in place of test cell ``grade_id``."""
    return f"import attnlab.verdict.kernel as _checker; _checker.run({grade_id!r})"


def outputs(verdict: Verdict) -> list:
    """The cell's outputs, from the checker's verdict alone."""
    from nbformat.v4 import new_output

    out = [new_output("stream", name="stdout", text=verdict.printed)] if verdict.printed else []
    if verdict.status == "pass":
        return out
    ename = {"todo": "NotImplementedError", "fail": "CheckFailed"}.get(verdict.status, "NotGraded")
    return out + [new_output("error", ename=ename, evalue=verdict.message,
                             traceback=[f"{ename}: {verdict.message}"])]


@contextlib.contextmanager
def checker(tests: dict[str, str], student: str = "", secret: bytes | None = None, folder: str | None = None,
            timeout: float = 150.0, workbook: str = ""):
    """A running :class:`Checker` for ``tests``, its socket in ``folder`` (default: a private one), and
    ``ATTNLAB_CHECKER`` naming it for the kernels started meanwhile."""
    own = folder is None
    folder = tempfile.mkdtemp(prefix="attnlab-checker-") if own else folder
    # A name no kernel can guess: the folder of nbgrader's sockets is the kernel's to write in.
    path = os.path.join(folder, f"checker-{secrets.token_hex(8)}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    from attnlab.verdict.checker import Checker
    from attnlab.verdict.kernel import SOCKET_ENV

    found = Checker(tests, student=student, secret=secret, timeout=timeout, workbook=workbook).start(path)
    saved = os.environ.get(SOCKET_ENV)
    os.environ[SOCKET_ENV] = path
    try:
        yield found
    finally:
        if saved is None:
            os.environ.pop(SOCKET_ENV, None)
        else:
            os.environ[SOCKET_ENV] = saved
        found.close()
        if own:
            shutil.rmtree(folder, ignore_errors=True)


class CheckedCells:
    """nbclient's ``NotebookClient``, with each test cell of ``self.checker`` run and scored by it."""

    checker: Checker | None = None

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        grade_id = cells.grade_id(cell)
        found = self.checker
        if found is not None and not getattr(self, "_absent_noted", False):
            self._absent_noted = True
            found.absent(set(found.cells) - {cells.grade_id(c) for c in self.nb.cells})
        if found is None or not cells.is_test_cell(cell) or grade_id not in found.cells:
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        source = cell.source
        found.arm(grade_id)
        cell.source = stub(grade_id)
        try:
            await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        finally:
            cell.source = source
            verdict = await asyncio.get_running_loop().run_in_executor(None, found.verdict, grade_id)
            cell.outputs = outputs(verdict)
        return cell

    # nbclient binds its blocking execute_cell to its own coroutine: rebind it to this one (nbconvert's
    # ExecutePreprocessor, and so nbgrader's Execute, run each cell through execute_cell).
    execute_cell = run_sync(async_execute_cell)


class CheckedExecute(CheckedCells, Execute):
    """nbgrader's ``Execute``, with the checker for the workbooks in :data:`CHECKED`.

    ``source`` is the course's folder of nbgrader sources (the config sets it): the checker takes each
    test cell's code from there, never from the notebook being graded."""

    source = Unicode("", help="the course's source folder (solutions/)").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        info = (resources or {}).get("nbgrader", {})
        assignment, notebook = info.get("assignment"), info.get("notebook")
        if assignment not in CHECKED or not self.source:
            return super().preprocess(nb, resources, km)
        path = pathlib.Path(self.source) / assignment / f"{notebook}.ipynb"
        tests = test_sources(cells.read(path))
        secret = class_secret(pathlib.Path(self.source).parent / "autograde")
        # The kernel reaches the checker's socket only in the folder of its own (nbgrader's) sockets.
        ip = self.config.get("KernelManager", {}).get("ip", "")
        folder = os.path.dirname(ip) if isinstance(ip, str) and ip.startswith("/") else None
        with checker(tests, student=str(info.get("student", "")), secret=secret, folder=folder,
                     timeout=(self.timeout or 120) + 30, workbook=assignment) as self.checker:
            try:
                return super().preprocess(nb, resources, km)
            finally:
                self.checker = None
