"""CheckFailed: a failed check, shown to a learner as one sentence and their own lines.

IPython calls an exception's ``_render_traceback_`` in place of its own
traceback: a failed check shows the sentence, then the test cell's line and
the lines of the learner's cells the error went through, and no frames from
inside the course package or from torch's dispatch through the checks.
"""
from __future__ import annotations

import os

import torch


class CheckFailed(AssertionError):
    """A check of the learner's code failed; the message says which and why.

    In a notebook it shows as that sentence, then the test's own line and,
    when the learner's code raised, the lines of the learner's cells it went
    through: no frames from inside the course package (IPython calls
    ``_render_traceback_`` in place of its own traceback).

    ``brief`` is the same failure in words that give away no expected value
    (what was tested and what kind of wrong): what a failed hidden check shows."""

    def __init__(self, message: str = "", brief: str | None = None):
        super().__init__(message)
        self.brief = brief

    def _render_traceback_(self) -> list[str]:
        try:
            return [f"\x1b[31m{type(self).__name__}\x1b[39m: {self}", *_cell_lines(self)]
        except Exception:  # noqa: BLE001  (a failure here must not hide the sentence)
            return [f"{type(self).__name__}: {self}"]


# Frames a learner's traceback has no use for: the checks' own, and torch's dispatch through them.
_COURSE_FILES = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
                 *(os.path.join(os.path.dirname(torch.__file__), *f.split("/")) for f in
                   ("_ops.py", "overrides.py", "utils/_python_dispatch.py")))


def drop_course_frames(tb) -> None:
    """Unlink from the traceback ``tb`` the frames of the course's checks and of torch's dispatch to them.

    In place: contextlib puts the original traceback object back on the error, so a new chain would be lost.
    The first entry, the test cell's own frame, stays."""
    while tb is not None and tb.tb_next is not None:
        if tb.tb_next.tb_frame.f_code.co_filename.startswith(_COURSE_FILES):
            tb.tb_next = tb.tb_next.tb_next
        else:
            tb = tb.tb_next


def _cell_lines(error: BaseException) -> list[str]:
    """'Cell In[7], line 3' and the line itself, for each notebook cell the error went through."""
    import linecache

    try:
        from IPython import get_ipython

        names = get_ipython().compile._filename_map
    except (ImportError, AttributeError):
        return []
    lines, seen, shown = [], set(), set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        tb = error.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            if code.co_filename in names and (code.co_filename, tb.tb_lineno) not in shown:
                shown.add((code.co_filename, tb.tb_lineno))
                where = "" if code.co_name == "<module>" else f", in {code.co_name}"
                text = linecache.getline(code.co_filename, tb.tb_lineno).strip()
                lines.append(f"Cell In[{names[code.co_filename]}], line {tb.tb_lineno}{where}\n----> {text}")
            tb = tb.tb_next
        error = error.__cause__
    return lines
