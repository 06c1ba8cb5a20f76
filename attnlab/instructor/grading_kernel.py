"""What the grading kernel sets up in itself before the first cell runs.

:mod:`attnlab.instructor.sandbox` starts ipykernel with ``IPKernelApp.exec_lines`` that
call :func:`setup`. A student's code can undo any of it, as it can anything
in its own process: these guard the grader against accidents (a print in a
loop, a list that fills memory), not against the isolation of the sandbox.
"""
from __future__ import annotations

import resource
import sys
import traceback

# Address space kept back from the student's code: when a cell runs out of
# memory, IPython needs some to report the error and ipykernel to send it.
# Without it the kernel could die in its own machinery at the limit (seen on
# a CI machine, and in 2 of 4 kernels here) and nbgrader would grade nothing.
MEMORY_RESERVE = 256 * 2**20


class _CappedStream:
    """A stream that passes on at most ``limit`` characters per cell."""

    def __init__(self, stream, limit: int):
        self._stream, self._limit, self.used = stream, limit, 0

    def write(self, text):
        room = self._limit - self.used
        self.used += len(text)
        if room > 0:
            self._stream.write(text[:room])
        if room >= 0 and self.used > self._limit:
            self._stream.write(f"\n[output cut: more than {self._limit:,} characters in one cell]\n")
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _keep_reserve() -> None:
    """Let the student's code use all the address space but the reserve."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and hard > 2 * MEMORY_RESERVE:
        resource.setrlimit(resource.RLIMIT_AS, (hard - MEMORY_RESERVE, hard))


def _chain(error: BaseException | None):
    """An error and the errors it chains (``raise ... from``, or raised while handling)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _free_before_reporting(showtraceback):
    """Wrap IPython's ``showtraceback``: report an error with the reserve to spare,
    then drop the locals of the frames it went through (a list that filled memory
    inside a function lives on in them), so that memory is back for the next cell.
    A MemoryError, or torch's RuntimeError for the same, is reported as usual."""

    def show(exc_tuple=None, *args, **kwargs):
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))  # post_run_cell takes the reserve back
        error = (exc_tuple or sys.exc_info())[1]
        try:
            return showtraceback(exc_tuple, *args, **kwargs)
        finally:
            for e in _chain(error):
                traceback.clear_frames(e.__traceback__)

    return show


def setup(output_limit: int) -> None:
    """Cap each cell's printed output at ``output_limit`` characters, keep a
    memory reserve for reporting an error, and free an error's frames once reported."""
    from IPython import get_ipython

    shell = get_ipython()
    streams = [_CappedStream(sys.stdout, output_limit), _CappedStream(sys.stderr, output_limit)]
    sys.stdout, sys.stderr = streams

    def reset(*_):
        for s in streams:
            s.used = 0

    shell.events.register("pre_run_cell", reset)
    _keep_reserve()
    shell.events.register("post_run_cell", lambda *_: _keep_reserve())
    shell.showtraceback = _free_before_reporting(shell.showtraceback)
