"""The block every graded test runs a learner's code in: :func:`exercise`.

Inside it the course's answers (:mod:`attnlab.guard`) and torch's own answers
(:mod:`attnlab.checks.torch_off`) raise, earlier exercises are replaced by the
course's correct versions, and before and after it nothing the tests rely on
may have been replaced.
"""
from __future__ import annotations

import contextlib
import sys
import traceback
import warnings

import torch

from attnlab import answers
from attnlab.checks import exercises, torch_off
from attnlab.checks.failure import CheckFailed, drop_course_frames
from attnlab.guard import forbidden, trusted


# What the tests rely on, as it was when the course imported it. A notebook
# that replaces any of these (``torch.allclose = lambda *a, **k: True``,
# ``answers.attention = my_attention``) makes every later test fail instead
# of pass: each test checks before and after the learner's code runs. (Code in
# the same process can always undo a check made in that process; the
# instructor's summary also flags such code in the submitted cells: see
# attnlab.instructor.flags.)
_TORCH_RELIED_ON = {  # what test cells compare with or compute expected values with
    torch: ["allclose", "isclose", "equal", "isfinite", "softmax", "matmul", "einsum", "cat", "stack", "randn",
            "no_grad"],
    torch.nn.functional: ["scaled_dot_product_attention", "multi_head_attention_forward", "rms_norm", "softmax",
                          "linear"],
    torch.Tensor: ["__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__sub__", "__rsub__", "__add__",
                   "__mul__", "__truediv__", "__matmul__", "__bool__", "__float__", "__int__", "__index__",
                   "__len__", "abs", "allclose", "equal", "isfinite", "all", "any", "max", "item", "tolist",
                   "detach", "to", "double", "float", "backward", "clone", "sum", "square"],
    torch.testing: ["assert_close"],
    torch.autograd: ["grad", "backward", "gradcheck", "gradgradcheck"],
    torch.nn.Module: ["__call__", "_call_impl", "_wrapped_call_impl"],
    torch.nn.MultiheadAttention: ["forward"],
    torch.nn.Linear: ["forward"],
}


_TOPICS = {f"attnlab.answers.{m}" for m in ("mha", "gqa", "rope", "mla", "mha2mla", "decode")}


def _snapshot() -> dict:
    from attnlab import arguments, guard, models
    from attnlab.lesson import cache

    out = {}
    for owner, names in _TORCH_RELIED_ON.items():
        label = owner.__name__ if isinstance(owner, type(torch)) else f"torch.nn.{owner.__qualname__}"
        label = label.replace("torch.nn.Tensor", "torch.Tensor").replace("torch.nn.functional", "F")
        out.update({(label, n): (owner, getattr(owner, n)) for n in names})
    # The course's own modules and classes, whole: the answer key, the guard, the argument checks.
    owners = {"attnlab.answers": answers, "attnlab.lesson.cache": cache, "attnlab.guard": guard,
              "attnlab.arguments": arguments, "attnlab.models": models,
              "attnlab.models.MLAConfig": models.MLAConfig, "attnlab.models.Model": models.Model}
    topics = {m.__name__: m for m in vars(answers).values() if isinstance(m, type(torch)) and m.__name__ in _TOPICS}
    owners.update(topics)  # a topic's functions call each other through their own module
    owners.update({f"attnlab.answers.{n}": v for n, v in vars(answers).items()
                   if isinstance(v, type) and v.__module__ in topics})
    for label, owner in owners.items():
        out.update({(label, n): (owner, v) for n, v in list(vars(owner).items())
                    if callable(v) or isinstance(v, (list, type))})
    return out


# The checkers' own modules: a notebook that replaces a function in any of them fails like one
# that replaces torch.allclose. Names a test cell imports, checked in the notebook's namespace too.
_CHECKERS = ("attnlab.checks", "attnlab.checks.compare", "attnlab.checks.failure", "attnlab.checks.graded",
             "attnlab.checks.torch_off", "attnlab.checks.exercises", "attnlab.checks.launch")
_PUBLIC = ("expect_tensor", "expect_shape", "expect_close", "number", "exercise", "exercise_in", "default_tolerance",
           "stand_in")
_WATCHED_MODULES = ("attnlab.answers", "attnlab.guard", *_CHECKERS)


def seal() -> None:
    """Take the snapshot of what the tests rely on; ``attnlab.checks`` calls this once, when its names are bound.

    A second call (``importlib.reload``, which runs a module again in the same namespace) is refused: it
    would take what the notebook replaced (``torch.allclose``, say) for the genuine article."""
    global _GENUINE, _GENUINE_PUBLIC, _MODULES
    if "_GENUINE" in globals():
        raise ImportError("attnlab.checks cannot be reloaded: restart the kernel instead")
    genuine = _snapshot()
    for name in _CHECKERS:
        module = sys.modules[name]
        genuine.update({(name, n): (module, v) for n, v in list(vars(module).items())
                        if callable(v) and getattr(v, "__module__", None) in _CHECKERS})
    package = sys.modules["attnlab.checks"]
    _GENUINE_PUBLIC = {n: getattr(package, n) for n in _PUBLIC}
    _MODULES = {name: sys.modules[name] for name in _WATCHED_MODULES}
    _GENUINE = genuine


def _refuse_tampering(namespace: dict) -> None:
    replaced = [f"{label}.{attr}" for (label, attr), (owner, value) in _GENUINE.items()
                if getattr(owner, attr, None) is not value]
    replaced += [f"sys.modules[{name!r}]" for name, module in _MODULES.items() if sys.modules.get(name) is not module]
    # (a plain value under one of these names, `number = 5`, cannot pose as a checker)
    replaced += [n for n in _PUBLIC if callable(namespace.get(n)) and namespace[n] is not _GENUINE_PUBLIC[n]]
    if replaced:
        raise CheckFailed(
            f"{', '.join(replaced[:5])}{' and more' if len(replaced) > 5 else ''} no longer is what the course "
            "imported: the notebook replaced it. The tests refuse to run on a replaced checker or answer key; "
            "remove that code and run the notebook again.")
    for name, value in list(namespace.items()):
        if getattr(value, "__attnlab_trusted__", False):
            raise CheckFailed(
                f"{name} is a course reference function let through with attnlab.guard.trusted: "
                "a graded exercise must be your own code.")


def _refuse_leftovers() -> None:
    """Fail (once) when the previous cells left the guard or torch's modes in a state no test leaves."""
    from attnlab import guard

    found = guard.anomalies()
    C = torch._C
    if not C._is_torch_function_enabled():
        found.append("torch functions are disabled (torch._C.DisableTorchFunction left on)")
    if C._dispatch_tls_is_dispatch_key_excluded(C.DispatchKey.Python):
        found.append("torch dispatch is disabled (torch._C._DisableTorchDispatch left on)")
    if found:
        guard.reset()
        torch_off.pop_leftover_modes()
        raise CheckFailed(f"the course's guard was left in a state no test leaves it in ({'; '.join(found)}): "
                          "the notebook changed it. This check fails; restart the kernel and run all cells.")


def exercise(*names: str, case: str = ""):
    """Run the learner's code for the exercises ``names`` (as the workbook names
    its function or class: ``"attention"``, ``"MultiHeadAttention"``) on its own.

    A test cell says only which exercise it checks; :mod:`attnlab.checks.exercises`
    knows what that exercise builds on and is given, and the test cell's
    notebook is the namespace (see :func:`exercise_in`)."""
    spec = exercises.lookup(*names)
    namespace = sys._getframe(1).f_globals  # the notebook's: the test cell runs in it
    return exercise_in(namespace, stand_ins=spec.uses, allow=spec.given, no_autograd=spec.by_hand, case=case)


@contextlib.contextmanager
def exercise_in(namespace: dict, stand_ins=(), allow=(), no_autograd=False, case: str = ""):
    """Run a learner's exercise on its own.

    Inside the block the course's reference answers and the torch functions
    that would solve the exercise raise, and every name in ``stand_ins`` (a
    function from an earlier exercise, say ``"attention"``) is replaced in the
    learner's ``namespace`` by the course's correct version, so that a mistake
    in an earlier exercise costs that exercise's points and no others.
    ``allow`` names reference functions of earlier workbooks that this
    workbook gives its learners as building blocks (see :func:`guard.forbidden`).
    ``no_autograd`` runs the block in inference mode, so that a backward pass
    "by hand" cannot be autograd in disguise.

    Warnings raised by the learner's code are silenced and what it writes to
    stderr (a progress bar, say) goes to stdout: nbgrader gives zero to a test
    cell that writes anything to stderr, even for a right answer.

    ``case`` says in the learner's words which check this is ("attention with
    3 queries against 9 keys, float64"). When the learner's code raises (a
    ``KeyError``, a shape error from torch), the failure then reads "<case>:
    your code raised KeyError: 544945", which is what graded feedback shows
    for a hidden check, without its code.

    Before and after the block it checks that nothing the tests rely on was
    replaced and that the guard is as the block left it: a learner's code
    that turned it off fails the check (:class:`CheckFailed`).
    """
    _refuse_tampering(namespace)
    _refuse_leftovers()
    saved = {name: namespace.get(name) for name in stand_ins}
    try:
        wrappers = {name: stand_in(getattr(answers, name)) for name in stand_ins}
        namespace.update(wrappers)
        with contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            stack.enter_context(contextlib.redirect_stderr(sys.stdout))
            block = stack.enter_context(forbidden(allow, trust=wrappers.values()))
            watch = stack.enter_context(torch_off.torch_answers_off(block, no_autograd))
            stack.enter_context(torch_off.threads_too(block, no_autograd, watch))
            if no_autograd:
                stack.enter_context(torch.inference_mode())
            try:
                yield
            except (AssertionError, NotImplementedError):
                raise  # a check's own sentence; an exercise not attempted yet (make check counts it apart)
            except Exception as e:  # noqa: BLE001  (any error of the learner's code is reported the same way)
                _report(e, case)
            if not any(b is block for b in _guard_ledger()):
                raise CheckFailed("your code changed the course's guard (attnlab.guard): "
                                  "the tests refuse such code; remove it and run the notebook again.")
    finally:
        for name, value in saved.items():
            if value is None:
                namespace.pop(name, None)
            else:
                namespace[name] = value
    _refuse_tampering(namespace)  # replaced while the learner's code ran: fail before the test compares


def _report(error: Exception, case: str):
    """Raise ``error`` of the learner's code again, without the course's frames, as "<case>: your code raised..."."""
    # A Triton kernel not attempted yet: the interpreter wraps its NotImplementedError, and a GPU's
    # compiler refuses the raise statement. Either way make check counts it as not attempted.
    if type(error).__name__ == "InterpreterError" and isinstance(error.__cause__, NotImplementedError):
        raise error.__cause__ from None
    if type(error).__name__ == "CompilationError" and "raise NotImplementedError" in str(error):
        raise NotImplementedError("not attempted yet") from None
    drop_course_frames(error.__traceback__)
    if isinstance(error, MemoryError):  # what filled memory lives on in the frames: free it first
        traceback.clear_frames(error.__traceback__)
    if not case:
        raise error
    raise CheckFailed(f"{case}: your code raised {type(error).__name__}: {error}") from error


def _guard_ledger() -> list:
    from attnlab import guard

    return guard._LEDGER if type(guard._LEDGER) is list else []


def stand_in(fn):
    """``fn`` allowed to call the course's reference code inside the :func:`exercise` that admits it.

    For the tests, which hand a learner's function correct building blocks. It
    is :func:`guard.trusted` without the mark that makes :func:`exercise` refuse a
    namespace holding it: the test put it there, not the learner. A stand-in
    that no block admitted (one a learner made) is not trusted."""
    wrapper = trusted(fn)
    del wrapper.__attnlab_trusted__
    return wrapper
