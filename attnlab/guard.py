"""Switch the course's own answers off while a learner's code is graded.

The reference implementations in :mod:`attnlab.reference` (and the cache
arithmetic in :mod:`attnlab.cache`) are public: the benchmark and later
workbooks build on them. A graded exercise must still be the learner's own
work, so the tests run the learner's function inside :func:`forbidden`, where
every guarded function raises instead of answering. The tests themselves get
correct building blocks through :func:`trusted`, which lifts the ban for the
duration of one call.
"""
from __future__ import annotations

import contextlib
import functools
import types

# Module-wide, not thread-local: on CUDA, autograd runs backward() on a worker
# thread, and the ban must hold there too.
_state = types.SimpleNamespace(forbidden=0, trusted=0, allowed=frozenset())


class ReferenceForbidden(RuntimeError):
    """Raised when graded code calls the course's reference answer."""


def _forbidden(name: str) -> bool:
    if _state.forbidden == 0 or _state.trusted > 0:
        return False
    return name not in _state.allowed


def guarded(fn):
    """Mark ``fn`` as a reference answer that graded code may not call."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _forbidden(fn.__qualname__):
            raise ReferenceForbidden(
                f"{fn.__module__}.{fn.__qualname__} is switched off while your own "
                "code is graded: write this part yourself instead of calling the "
                "course's reference answer."
            )
        # An allowed reference function may use the others it is built from.
        _state.trusted += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _state.trusted -= 1

    return wrapper


@contextlib.contextmanager
def forbidden(allow=()):
    """Inside this block, guarded reference functions raise ReferenceForbidden.

    ``allow`` names (by ``__qualname__``, e.g. ``"split_heads"`` or
    ``"KVCache.update"``) the answers of *earlier* workbooks that a later
    workbook hands its learners as building blocks.
    """
    saved = _state.allowed
    _state.forbidden += 1
    _state.allowed = frozenset(allow)
    try:
        yield
    finally:
        _state.forbidden -= 1
        _state.allowed = saved


def trusted(fn):
    """Wrap ``fn`` so that it may call reference code even inside :func:`forbidden`.

    The tests use this to hand a learner's later exercise correct versions of
    the earlier ones, so that one mistake costs the points of one exercise.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _state.trusted += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _state.trusted -= 1

    # checks.exercise refuses a learner's namespace that holds one of these:
    # it would be the course's answer let through under the learner's name.
    wrapper.__attnlab_trusted__ = True
    return wrapper
