"""Checks that turn a wrong tensor into a sentence a learner can act on.

Visible tests call :func:`expect_close`, which compares shape, dtype and values
and, when the values are wrong, compares them with the results of common
mistakes ("suspects") to name the likely cause. :func:`exercise` is the context
every graded test runs the learner's code in.
"""
from __future__ import annotations

import _thread
import collections
import contextlib
import math
import numbers
import os
import sys
import threading
import traceback
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attnlab import answers
from attnlab.checks import exercises
from attnlab.guard import ReferenceForbidden, forbidden, trusted

if "_GENUINE" in globals():
    # importlib.reload would run this file again in the same namespace and take
    # what the notebook replaced (torch.allclose, say) for the genuine article.
    raise ImportError("attnlab.checks cannot be reloaded: restart the kernel instead")


class CheckFailed(AssertionError):
    """A check of the learner's code failed; the message says which and why.

    In a notebook it shows as that sentence, then the test's own line and,
    when the learner's code raised, the lines of the learner's cells it went
    through: no frames from inside the course package (IPython calls
    ``_render_traceback_`` in place of its own traceback)."""

    def _render_traceback_(self) -> list[str]:
        try:
            return [f"\x1b[31m{type(self).__name__}\x1b[39m: {self}", *_cell_lines(self)]
        except Exception:  # noqa: BLE001  (a failure here must not hide the sentence)
            return [f"{type(self).__name__}: {self}"]


# Frames a learner's traceback has no use for: the checks' own, and torch's dispatch through them.
_COURSE_FILES = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
                 *(os.path.join(os.path.dirname(torch.__file__), *f.split("/")) for f in
                   ("_ops.py", "overrides.py", "utils/_python_dispatch.py")))


def _drop_course_frames(tb) -> None:
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


def _shape(t) -> tuple:
    return tuple(t.shape)


def expect_tensor(got, what: str) -> torch.Tensor:
    """Fail unless ``got`` is a plain tensor (not None, a list, a numpy array...).

    A subclass is refused too: it could redefine comparisons (``__torch_function__``)."""
    if got is None:
        raise CheckFailed(f"{what} is None: is it ever computed, stored or returned?")
    if type(got) is not torch.Tensor:
        if isinstance(got, torch.Tensor):
            raise CheckFailed(f"{what} is a {type(got).__name__}, a subclass of torch.Tensor; return a plain tensor")
        raise CheckFailed(f"{what} is a {type(got).__name__}; expected a torch.Tensor")
    return got


def number(got, what: str):
    """``got`` as a Python int or float, or fail: a count or a size must be a number.

    Tests compare what this returns, never the learner's object itself: an
    object whose ``__eq__`` always answers True would pass any ``==``."""
    if type(got) is torch.Tensor and got.numel() == 1:
        got = got.item()
    elif type(got).__module__ == "numpy" and isinstance(got, numbers.Number):
        got = got.item()
    if type(got) not in (int, float):
        raise CheckFailed(f"{what} is a {type(got).__name__}; expected a number (an int or a float)")
    return got


def expect_shape(got, shape, what: str, hint: str = "") -> None:
    """Fail with both shapes when ``got`` has the wrong shape."""
    expect_tensor(got, what)
    if _shape(got) != tuple(shape):
        msg = f"{what} has shape {_shape(got)}; expected {tuple(shape)}."
        raise CheckFailed(f"{msg} {hint}".strip())


def _close(a, b, atol, rtol) -> bool:
    if _shape(a) != _shape(b):
        return False
    return torch.allclose(a.detach().to(b.dtype), b.detach(), atol=atol, rtol=rtol, equal_nan=True)


def default_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) for comparing two reasonable implementations in ``dtype``."""
    # float64 tests allow 1e-6: code that rounds through float32 inside (as Hugging Face's and DeepSeek's
    # kernels do for softmax, RMSNorm and RoPE) is right, and every planted mistake is far larger.
    return {torch.float64: (1e-6, 1e-5), torch.float32: (1e-5, 1e-4)}.get(dtype, (2e-2, 2e-2))


def expect_close(got, want, what: str, suspects: dict | None = None, hint: str = "", atol=None, rtol=None) -> None:
    """Fail with a useful message unless ``got`` matches ``want``.

    ``suspects`` maps a description of a mistake ("the 1/sqrt(d) scale is
    missing") to what that mistake would have produced; when ``got`` matches
    one of them, the message names it.
    """
    expect_shape(got, _shape(want), what, hint)
    if got.dtype != want.dtype:
        raise CheckFailed(f"{what} has dtype {got.dtype}; expected {want.dtype}.")
    d_atol, d_rtol = default_tolerance(want.dtype)
    atol, rtol = atol if atol is not None else d_atol, rtol if rtol is not None else d_rtol
    if _close(got, want, atol, rtol):
        return
    for mistake, wrong in (suspects or {}).items():
        if _close(got, wrong, atol, rtol):
            raise CheckFailed(f"{what} is wrong: it matches what you get when {mistake}.")
    if not torch.isfinite(got).all() and torch.isfinite(want).all():
        raise CheckFailed(
            f"{what} contains NaN or inf where the expected values are finite (a softmax over a row "
            f"that is all -inf gives NaN: can every query see at least one key?). {hint}".strip()
        )
    err = (got.detach().to(want.dtype) - want).abs()
    idx = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    raise CheckFailed(
        f"{what} is wrong: the largest difference is {err.max().item():.3g} at index {idx} "
        f"(allowed: {atol:g} + {rtol:g} * |expected|). {hint}".strip()
    )


# ------------------------------------------------------------------ what a graded block switches off
#
# Torch functions and ATen operators that would answer an exercise outright,
# by name. Like the course's own reference, they are switched off while a
# learner's function is graded, on two levels that watch each other:
#
# - a TorchFunctionMode sees every route by which Python reaches them
#   (torch.nn.functional, torch.*, torch._C._nn, torch._C._VariableFunctions,
#   torch.ops.aten.* and their overloads), also through a name bound early with
#   `from torch.nn.functional import scaled_dot_product_attention`;
# - a TorchDispatchMode sees the ATen operators torch runs underneath
#   (scaled_dot_product_attention runs _scaled_dot_product_flash_attention_for_cpu
#   or, in its math form, _safe_softmax), whatever switched the Python level off.
#
# rms_norm and multi_head_attention_forward decompose into ordinary operators
# before the dispatch level (outside inference mode), so for them the dispatch
# mode checks instead that the function mode is still on: each mode refuses
# to go on when it finds the other one popped or disabled.
_SDPA = "torch.nn.functional.scaled_dot_product_attention"
_MHA = "torch.nn.MultiheadAttention"
_RMS = "torch.nn.functional.rms_norm (and nn.RMSNorm)"
_TORCH_ANSWERS = {
    **dict.fromkeys([
        "scaled_dot_product_attention", "_scaled_dot_product_attention_math",
        "_scaled_dot_product_attention_math_for_mps", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_fused_attention_overrideable",
        "_flash_attention_forward", "_flash_attention_forward_no_dropout_inplace", "_efficient_attention_forward",
        "_cudnn_attention_forward", "_triton_scaled_dot_attention", "_fused_sdp_choice",
        "_safe_softmax",  # only the math form of scaled_dot_product_attention runs it
    ], _SDPA),
    **dict.fromkeys(["multi_head_attention_forward", "_native_multi_head_attention", "_triton_multi_head_attention",
                     "_transformer_encoder_layer_fwd"], _MHA),
    **dict.fromkeys(["rms_norm", "_fused_rms_norm"], _RMS),
}
# Backward kernels, switched off where a backward pass must be written by hand.
_BACKWARD_ANSWERS = {
    **dict.fromkeys([
        "_scaled_dot_product_flash_attention_backward", "_scaled_dot_product_flash_attention_for_cpu_backward",
        "_scaled_dot_product_efficient_attention_backward", "_scaled_dot_product_cudnn_attention_backward",
        "_scaled_dot_product_fused_attention_overrideable_backward", "_flash_attention_backward",
        "_efficient_attention_backward", "_cudnn_attention_backward",
    ], f"the backward of {_SDPA}"),
    "_softmax_backward_data": "autograd's softmax backward (_softmax_backward_data)",
    "_fused_rms_norm_backward": f"the backward of {_RMS}",
}
# Autograd itself, by identity (torch.func and torch.autograd.functional end in torch.autograd.grad).
_AUTOGRAD = {
    torch.Tensor.backward: "Tensor.backward",
    torch.autograd.grad: "torch.autograd.grad",
    torch.autograd.backward: "torch.autograd.backward",
}


_BANNED = {False: _TORCH_ANSWERS, True: {**_TORCH_ANSWERS, **_BACKWARD_ANSWERS}}
_NOTHING: dict = {}


def _aten_name(func) -> str:
    """'rms_norm' for torch.ops.aten.rms_norm and torch.ops.aten.rms_norm.default; '' for other namespaces."""
    qualified = getattr(func, "_qualified_op_name", None)  # an OpOverloadPacket
    if qualified is None:
        schema = getattr(func, "_schema", None)  # an OpOverload
        qualified = getattr(schema, "name", "")
    return qualified[len("aten::"):] if qualified.startswith("aten::") else ""


def _torch_name(func) -> str:
    """The name under which a torch function can answer an exercise ('' for anything else)."""
    if isinstance(func, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return _aten_name(func)
    module = getattr(func, "__module__", None) or ""
    return getattr(func, "__name__", "") if module.startswith("torch") else ""


def _forbidden_message(name: str, what: str) -> str:
    if not what.split(" ")[0].endswith("." + name.split(".")[-1]):
        what = f"{name} (part of {what})"
    return f"{what} is switched off while your own code is graded: write this part yourself."


_VERDICTS = collections.defaultdict(dict)


class _Watch:
    """What the two modes of one graded block share: each checks that the other is still on."""

    def __init__(self):
        self.function_mode = self.dispatch_mode = None
        self.handling = 0  # > 0 while the function mode's handler runs (the mode is off the stack then)
        self.dispatching = 0  # the same for the dispatch mode
        self.broken = ""

    def function_mode_on(self) -> bool:
        if self.handling:
            return True
        C = torch._C
        return C._is_torch_function_mode_enabled() and any(
            C._get_function_stack_at(i) is self.function_mode for i in range(C._len_torch_function_stack()))

    def dispatch_mode_on(self) -> bool:
        if self.dispatching:
            return True
        C = torch._C
        return not C._dispatch_tls_is_dispatch_key_excluded(C.DispatchKey.Python) and any(
            C._get_dispatch_stack_at(i) is self.dispatch_mode for i in range(C._len_torch_dispatch_stack()))

    def refuse(self, why: str):
        self.broken = self.broken or why
        raise ReferenceForbidden(f"{why}: the tests refuse to go on. Remove that code and run the notebook again.")


class _TorchAnswersOff(torch.overrides.TorchFunctionMode):
    def __init__(self, banned: dict, by_identity: dict, watch: _Watch, block):
        super().__init__()
        self.watch = watch
        self.attnlab_block = block  # attnlab.guard reads the ban from here too
        self.banned, self.by_identity = banned, by_identity
        # func -> the message that refuses it, or None: a cache shared by the blocks with the same bans,
        # since this runs for every torch call.
        self.verdicts = _VERDICTS[("function", id(banned), id(by_identity))]

    def _verdict(self, func):
        name = self.by_identity.get(func)
        if name is not None:
            return f"{name} is switched off while your own code is graded: write this part yourself."
        name = _torch_name(func)
        return _forbidden_message(name, self.banned[name]) if name in self.banned else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        __tracebackhide__ = True  # IPython leaves this frame out of the learner's traceback  # noqa: F841
        try:
            verdict = self.verdicts[func]
        except KeyError:
            verdict = self.verdicts[func] = self._verdict(func)
        except TypeError:  # not hashable
            verdict = self._verdict(func)
        if verdict is not None:
            raise ReferenceForbidden(verdict)
        watch = self.watch
        if not watch.dispatching and not watch.dispatch_mode_on():
            watch.refuse("your code switched off the grading's watch on torch's operators (a dispatch mode "
                         "popped, or torch._C._DisableTorchDispatch)")
        watch.handling += 1
        try:
            return func(*args, **(kwargs or {}))
        finally:
            watch.handling -= 1


class _DispatchMode(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Otherwise torch wraps __torch_dispatch__ to keep torch.compile out of it, which imports
        # torch._dynamo (seconds) on the first operator and adds a call to every one. Nothing compiles here.
        return False


class _AtenAnswersOff(_DispatchMode):
    def __init__(self, banned: dict, watch: _Watch, block):
        super().__init__()
        self.watch = watch
        self.attnlab_block = block
        self.banned = banned
        self.verdicts = _VERDICTS[("dispatch", id(banned))]  # OpOverload -> the message that refuses it, or None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        __tracebackhide__ = True  # IPython leaves this frame out of the learner's traceback  # noqa: F841
        try:
            verdict = self.verdicts[func]
        except KeyError:
            name = _aten_name(func)
            verdict = self.verdicts[func] = (_forbidden_message(f"torch.ops.aten.{name}", self.banned[name])
                                             if name in self.banned else None)
        if verdict is not None:
            raise ReferenceForbidden(verdict)
        watch = self.watch
        if not watch.handling and not watch.function_mode_on():
            watch.refuse("your code switched off the grading's watch on torch functions (a torch function "
                         "mode popped or replaced, or torch._C.DisableTorchFunction)")
        watch.dispatching += 1
        try:
            return func(*args, **(kwargs or {}))
        finally:
            watch.dispatching -= 1


_STACKS = {  # (length, get, pop, push) of torch's function and dispatch mode stacks
    "function": (torch._C._len_torch_function_stack, torch._C._get_function_stack_at,
                 torch._C._pop_torch_function_stack, torch._C._push_on_torch_function_stack),
    "dispatch": (torch._C._len_torch_dispatch_stack, torch._C._get_dispatch_stack_at,
                 lambda: torch._C._pop_torch_dispatch_stack(None), torch._C._push_on_torch_dispatch_stack),
}


def _stack(kind: str) -> list:
    length, at, _, _ = _STACKS[kind]
    return [at(i) for i in range(length())]


def _leave(kind: str, mode, base: int) -> bool:
    """Take ``mode`` off its stack with whatever a learner left above it; False if it was not on top."""
    length, _, pop, push = _STACKS[kind]
    modes = _stack(kind)
    on_top = bool(modes) and modes[-1] is mode
    if any(m is mode for m in modes):
        while _stack(kind)[-1] is not mode:
            pop()
    else:  # popped by the learner's code: put it back so that its own exit restores torch's flags
        while length() > base:
            pop()
        push(mode)
    mode.__exit__(None, None, None)
    return on_top


@contextlib.contextmanager
def _torch_answers_off(block, no_autograd: bool):
    """Push the two modes; on the way out, fail when the learner's code popped, replaced or disabled them."""
    C = torch._C
    banned = _BANNED[no_autograd]
    watch = _Watch()
    watch.function_mode = _TorchAnswersOff(banned, _AUTOGRAD if no_autograd else _NOTHING, watch, block)
    watch.dispatch_mode = _AtenAnswersOff(banned, watch, block)
    base = {kind: len(_stack(kind)) for kind in _STACKS}
    watch.function_mode.__enter__()
    watch.dispatch_mode.__enter__()
    try:
        yield watch
    finally:
        problems = [watch.broken] if watch.broken else []
        if not C._is_torch_function_mode_enabled() or C._dispatch_tls_is_dispatch_key_excluded(C.DispatchKey.Python):
            problems.append("torch functions or dispatch were left disabled")
        if not _leave("dispatch", watch.dispatch_mode, base["dispatch"]):
            problems.append("a torch dispatch mode was popped, or pushed and left")
        if not _leave("function", watch.function_mode, base["function"]):
            problems.append("a torch function mode was popped, or pushed and left")
        if problems:
            raise CheckFailed(f"{'; '.join(dict.fromkeys(problems))}: your code turned the grading's guard off. "
                              "The tests refuse such code; remove it and run the notebook again.")


# What starts a thread, in each Python version: threading.Thread.start and _thread's own functions.
_THREAD_STARTERS = [(threading, "_start_new_thread"), (threading, "_start_joinable_thread"),
                    (_thread, "start_new_thread"), (_thread, "start_new"), (_thread, "start_joinable_thread")]


@contextlib.contextmanager
def _threads_too(block, no_autograd: bool, watch: _Watch):
    """Torch keeps its modes per thread: a thread that the learner's code starts inside the block would
    run without them. Every thread started in the block runs its function under the same bans, and
    what it switched off fails the block."""
    saved = [(owner, name, getattr(owner, name)) for owner, name in _THREAD_STARTERS if hasattr(owner, name)]

    def banned(start):
        def start_banned(function, *args, **kwargs):
            def run(*a, **k):
                try:
                    with _torch_answers_off(block, no_autograd):
                        return function(*a, **k)
                except CheckFailed as e:  # the thread's own failure would go unseen: the block fails instead
                    watch.broken = watch.broken or f"in a thread: {str(e).split(':')[0]}"
            return start(run, *args, **kwargs)
        return start_banned

    for owner, name, start in saved:
        setattr(owner, name, banned(start))
    try:
        yield
    finally:
        for owner, name, start in saved:
            setattr(owner, name, start)


# What the tests rely on, as it was when the course imported it. A notebook
# that replaces any of these (``torch.allclose = lambda *a, **k: True``,
# ``answers.attention = my_attention``) makes every later test fail instead
# of pass: each test checks before and after the learner's code runs. (Code in
# the same process can always undo a check made in that process; the
# instructor's summary also flags such code in the submitted cells: see
# attnlab.instructor.grading.flags.)
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


_TOPICS = {f"attnlab.answers.{m}" for m in ("mha", "gqa", "rope", "mla", "mha2mla")}


def _snapshot() -> dict:
    from attnlab import arguments, guard
    from attnlab.lesson import cache

    out = {}
    for owner, names in _TORCH_RELIED_ON.items():
        label = owner.__name__ if isinstance(owner, type(torch)) else f"torch.nn.{owner.__qualname__}"
        label = label.replace("torch.nn.Tensor", "torch.Tensor").replace("torch.nn.functional", "F")
        out.update({(label, n): (owner, getattr(owner, n)) for n in names})
    # The course's own modules and classes, whole: the answer key, the guard, the argument checks.
    owners = {"attnlab.answers": answers, "attnlab.lesson.cache": cache, "attnlab.guard": guard,
              "attnlab.arguments": arguments}
    topics = {m.__name__: m for m in vars(answers).values() if isinstance(m, type(torch)) and m.__name__ in _TOPICS}
    owners.update(topics)  # a topic's functions call each other through their own module
    owners.update({f"attnlab.answers.{n}": v for n, v in vars(answers).items()
                   if isinstance(v, type) and v.__module__ in topics})
    for label, owner in owners.items():
        out.update({(label, n): (owner, v) for n, v in list(vars(owner).items())
                    if callable(v) or isinstance(v, (list, type))})
    return out


_OWN = ("expect_tensor", "expect_shape", "expect_close", "number", "exercise", "exercise_in", "_close", "default_tolerance",
        "_refuse_tampering", "_refuse_leftovers", "_torch_answers_off", "stand_in")


def _refuse_tampering(namespace: dict) -> None:
    module = sys.modules[__name__]
    replaced = [f"{label}.{attr}" for (label, attr), (owner, value) in _GENUINE.items()
                if getattr(owner, attr, None) is not value]
    replaced += [f"attnlab.checks.{n}" for n in _OWN if getattr(module, n, None) is not _GENUINE_OWN[n]]
    for label, module_name in (("attnlab.answers", "attnlab.answers"), ("attnlab.guard", "attnlab.guard"),
                               ("attnlab.checks", __name__)):
        if sys.modules.get(module_name) is not _MODULES[label]:
            replaced.append(f"sys.modules[{module_name!r}]")
    # (a plain value under one of these names, `number = 5`, cannot pose as a checker)
    replaced += [n for n in _OWN if callable(namespace.get(n)) and namespace[n] is not _GENUINE_OWN[n]]
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
        for kind, (length, at, pop, _) in _STACKS.items():
            while length() and isinstance(at(length() - 1), (_TorchAnswersOff, _AtenAnswersOff)):
                pop()
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
            watch = stack.enter_context(_torch_answers_off(block, no_autograd))
            stack.enter_context(_threads_too(block, no_autograd, watch))
            if no_autograd:
                stack.enter_context(torch.inference_mode())
            try:
                yield
            except (AssertionError, NotImplementedError):
                raise  # a check's own sentence; an exercise not attempted yet (make check counts it apart)
            except Exception as e:  # noqa: BLE001  (any error of the learner's code is reported the same way)
                _drop_course_frames(e.__traceback__)
                if isinstance(e, MemoryError):  # what filled memory lives on in the frames: free it first
                    traceback.clear_frames(e.__traceback__)
                if not case:
                    raise
                raise CheckFailed(f"{case}: your code raised {type(e).__name__}: {e}") from e
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


_GENUINE = _snapshot()
_GENUINE_OWN = {n: globals()[n] for n in _OWN}
_MODULES = {label: sys.modules[name] for label, name in (("attnlab.answers", "attnlab.answers"),
                                                          ("attnlab.guard", "attnlab.guard"),
                                                          ("attnlab.checks", __name__))}


def attention_suspects(q, k, v, causal: bool) -> dict:
    """What common attention mistakes produce for these inputs."""
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1)  # (B, H, Tq, Tk)
    Tq, Tk = scores.shape[-2:]

    def finish(s, mask_diag=None, dim=-1):
        if mask_diag is not None:
            allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(mask_diag)
            s = s.masked_fill(~allowed, float("-inf"))
        return torch.softmax(s, dim=dim) @ v

    diag = Tk - Tq if causal else None
    out = {
        "the 1/sqrt(d) scale is missing": finish(scores, diag),
        "the scores are divided by d instead of sqrt(d)": finish(scores / d, diag),
        "the softmax runs over the query axis (dim=-2) instead of the key axis (dim=-1)": finish(
            scores / math.sqrt(d), diag, dim=-2
        ),
    }
    if causal:
        s = scores / math.sqrt(d)
        out["the causal mask is not applied"] = finish(s)
        out["the causal mask also hides each token from itself (off by one)"] = finish(s, diag - 1)
        out["the causal mask lets each token see one token ahead (off by one)"] = finish(s, diag + 1)
        if Tq != Tk:
            out["the causal mask is aligned top-left (queries are the *last* Tq positions)"] = finish(s, 0)
    else:
        out["a causal mask is applied although causal=False"] = finish(scores / math.sqrt(d), Tk - Tq)
    return out


class _StorageWatch(_DispatchMode):
    """Records the largest storage behind any tensor an ATen operation returns,
    including the copies torch makes inside a call (a broadcasting matmul, say)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


@contextlib.contextmanager
def storage_watch():
    """``with storage_watch() as w: ...``; then ``w.largest`` is the largest
    storage (in bytes) of any tensor produced inside the block. A view such as
    ``expand`` shares its input's storage; a real copy has a storage of its own,
    so this tells whether code materialised a large tensor."""
    watch = _StorageWatch()
    with watch:
        yield watch
