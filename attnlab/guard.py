"""Switch the course's own answers off while a learner's code is graded.

The reference implementations in :mod:`attnlab.answers` (and the cache
arithmetic in :mod:`attnlab.lesson.cache`) are public: the benchmark and later
workbooks build on them. A graded exercise must still be the learner's own
work, so the tests run the learner's function inside :func:`forbidden`, where
every guarded function raises instead of answering. The tests themselves hand
the learner's code correct building blocks through :func:`trusted` wrappers
that the block admits (``forbidden(trust=...)``).

Nothing here is a counter a learner could leave at the wrong value:

- A guarded function is not a wrapper around a reachable original. Its code
  holds the original as a constant: no ``__wrapped__``, no closure cell, and
  its ``__globals__`` is a dict of its own with nothing in it.
- "Forbidden" means that a block is active, and a block is recorded twice: in
  this module's ledger and on the torch mode stacks (``attnlab.checks`` puts the
  block on the modes it pushes). Emptying the ledger does not lift the ban.
- "Trusted" is read from the call stack, which no code can leave behind: a
  guarded call is let through when, above it, course code leads back to a
  guarded function that was itself let through, or to a :func:`trusted`
  wrapper the block admitted. A learner's frame in between ends the search.

Code in the same process can still undo all of this (rebuild a function from
``__code__``, rewrite the ledger and the modes); the instructor's summary flags
those constructs (:func:`attnlab.instructor.flags.code_flags`).
"""
from __future__ import annotations

import contextlib
import sys
import warnings

if "_LEDGER" in globals():
    # importlib.reload runs this file again in the same namespace: every guarded
    # function would then read a fresh, empty ledger. Refuse instead.
    raise ImportError("attnlab.guard cannot be reloaded: restart the kernel instead")

# The files of every guarded function: their code, and the helpers beside it, is course code. (Read
# from the functions, not from this file's path: the grading kernel may load the answer key as bytecode.)
_COURSE_FILES: set = set()
_GUARDED = object()  # the first constant of every guarded function's code
_TRUSTED = object()  # the first constant of every trusted wrapper's code


class ReferenceForbidden(RuntimeError):
    """Raised when graded code calls the course's reference answer."""


class _Block(tuple):
    """One active ban: (names allowed, code objects of the admitted trusted wrappers). Immutable."""

    __slots__ = ()

    @property
    def allowed(self) -> frozenset:
        return self[0]

    @property
    def admitted(self) -> tuple:
        return self[1]


# Module-wide, not thread-local: on CUDA, autograd runs backward() on a worker
# thread, and the ban must hold there too.
_LEDGER: list = []


def _mode_blocks() -> list:
    """The blocks on the torch function and dispatch mode stacks (``attnlab_block`` of a mode)."""
    torch = sys.modules.get("torch")
    C = getattr(torch, "_C", None)
    if C is None or not hasattr(C, "_len_torch_function_stack"):
        return []
    modes = [C._get_function_stack_at(i) for i in range(C._len_torch_function_stack())]
    modes += [C._get_dispatch_stack_at(i) for i in range(C._len_torch_dispatch_stack())]
    return [b for b in (getattr(m, "attnlab_block", None) for m in modes) if type(b) is _Block]


def active_blocks() -> list:
    """Every ban now in force, from the ledger and from the torch mode stacks."""
    return [b for b in _LEDGER if type(b) is _Block] + _mode_blocks()


def _is_course_code(code) -> bool:
    return code.co_filename in _COURSE_FILES


def _check(name: str, qualified: str) -> None:
    """Raise ReferenceForbidden unless the guarded function ``name`` may run here."""
    blocks = active_blocks()
    if not blocks:
        return
    if all(name in b.allowed for b in blocks):
        return
    frame = sys._getframe(2)  # the caller of the guarded function (1 is the guarded function itself)
    while frame is not None:
        code = frame.f_code
        consts = code.co_consts
        if consts and consts[0] is _GUARDED:
            return
        # Admitted by every block, by identity: two wrappers of one function have equal code objects.
        if consts and consts[0] is _TRUSTED and all(any(code is c for c in b.admitted) for b in blocks):
            return
        if not _is_course_code(code):
            break
        frame = frame.f_back
    raise ReferenceForbidden(
        f"{qualified} is switched off while your own code is graded: write this part yourself instead of "
        "calling the course's reference answer.")


# The code of every guarded function and trusted wrapper: the string constants
# are replaced by the objects they name, so the function holds them as
# constants (no closure cell, no global to rebind).
_SOURCE = '''
def guarded_template(*args, **kwargs):
    "@mark"
    ("@check")("@name", "@qualified")
    return ("@fn")(*args, **kwargs)

def trusted_template(*args, **kwargs):
    "@mark"
    return ("@fn")(*args, **kwargs)
'''
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "'str' object is not callable": these strings are placeholders
    _TEMPLATES: dict = {}
    # Named apart from this file: a traceback through a guarded function shows no unrelated line of it.
    exec(compile(_SOURCE, "<attnlab.guard>", "exec"), {}, _TEMPLATES)


def _build(template: str, fn, consts: dict):
    import types

    code = _TEMPLATES[template].__code__
    code = code.replace(co_consts=tuple(consts.get(c, c) if isinstance(c, str) else c for c in code.co_consts),
                        co_name=fn.__name__, co_qualname=getattr(fn, "__qualname__", fn.__name__))
    # A globals dict of its own: reaching ``__globals__`` leads nowhere.
    out = types.FunctionType(code, {"__name__": fn.__module__, "__builtins__": {}}, fn.__name__)
    out.__qualname__ = getattr(fn, "__qualname__", fn.__name__)
    out.__doc__ = fn.__doc__
    out.__module__ = fn.__module__
    try:
        import inspect

        out.__signature__ = inspect.signature(fn)  # help() and tab completion show the real arguments
    except (TypeError, ValueError):
        pass
    return out


def guarded(fn):
    """Mark ``fn`` as a reference answer that graded code may not call."""
    name = fn.__qualname__
    _COURSE_FILES.add(fn.__code__.co_filename)
    return _build("guarded_template", fn, {"@mark": _GUARDED, "@check": _check, "@name": name,
                                           "@qualified": f"{fn.__module__}.{name}", "@fn": fn})


@contextlib.contextmanager
def forbidden(allow=(), trust=()):
    """Inside this block, guarded reference functions raise ReferenceForbidden.

    ``allow`` names (by ``__qualname__``, e.g. ``"split_heads"`` or
    ``"KVCache.update"``) the answers of *earlier* workbooks that a later
    workbook hands its learners as building blocks. ``trust`` lists the
    :func:`trusted` wrappers that may call reference code inside this block.
    Yields the block, which :mod:`attnlab.checks` also puts on its torch modes.
    """
    block = _Block((frozenset(allow), tuple(_trusted_code(w) for w in trust)))
    _LEDGER.append(block)
    try:
        yield block
    finally:
        for i in range(len(_LEDGER) - 1, -1, -1):
            if _LEDGER[i] is block:
                del _LEDGER[i]
                break


def _trusted_code(wrapper):
    code = getattr(wrapper, "__code__", None)
    if code is None or not code.co_consts or code.co_consts[0] is not _TRUSTED:
        raise TypeError(f"{wrapper!r} is not a wrapper made by attnlab.guard.trusted")
    return code


def trusted(fn):
    """Wrap ``fn`` so that it may call reference code inside a :func:`forbidden` block that admits it.

    The tests use this to hand a learner's later exercise correct versions of
    the earlier ones, so that one mistake costs the points of one exercise.
    A wrapper the block did not admit (say, one a learner made) is not trusted.
    """
    wrapper = _build("trusted_template", fn, {"@mark": _TRUSTED, "@fn": fn})
    # checks.exercise refuses a learner's namespace that holds one of these:
    # it would be the course's answer let through under the learner's name.
    wrapper.__attnlab_trusted__ = True
    return wrapper


def is_guarded(fn) -> bool:
    """True for a function made by :func:`guarded`."""
    code = getattr(fn, "__code__", None)
    return code is not None and bool(code.co_consts) and code.co_consts[0] is _GUARDED


def anomalies() -> list[str]:
    """What is not as it must be between two graded blocks (an empty list when all is well)."""
    found = []
    if _LEDGER:
        found.append(f"{len(_LEDGER)} ban(s) left active")
    if _mode_blocks():
        found.append("a grading mode left on torch's mode stack")
    return found


def reset() -> None:
    """Lift every ban left in the ledger (after :func:`anomalies` reported it)."""
    _LEDGER.clear()
