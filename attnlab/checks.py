"""Checks that turn a wrong tensor into a sentence a learner can act on.

Visible tests call :func:`expect_close`, which compares shape, dtype and values
and, when the values are wrong, compares them with the results of common
mistakes ("suspects") to name the likely cause. :func:`exercise` is the context
every graded test runs the learner's code in.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import sys
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import reference
from .guard import ReferenceForbidden, forbidden, trusted


def _shape(t) -> tuple:
    return tuple(t.shape)


def expect_tensor(got, what: str) -> torch.Tensor:
    """Fail unless ``got`` is a plain tensor (not None, a list, a numpy array...).

    A subclass is refused too: it could redefine comparisons (``__torch_function__``)."""
    if got is None:
        raise AssertionError(f"{what} is None: is it ever computed, stored or returned?")
    if type(got) is not torch.Tensor:
        if isinstance(got, torch.Tensor):
            raise AssertionError(f"{what} is a {type(got).__name__}, a subclass of torch.Tensor; return a plain tensor")
        raise AssertionError(f"{what} is a {type(got).__name__}; expected a torch.Tensor")
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
        raise AssertionError(f"{what} is a {type(got).__name__}; expected a number (an int or a float)")
    return got


def expect_shape(got, shape, what: str, hint: str = "") -> None:
    """Fail with both shapes when ``got`` has the wrong shape."""
    expect_tensor(got, what)
    if _shape(got) != tuple(shape):
        msg = f"{what} has shape {_shape(got)}; expected {tuple(shape)}."
        raise AssertionError(f"{msg} {hint}".strip())


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
        raise AssertionError(f"{what} has dtype {got.dtype}; expected {want.dtype}.")
    d_atol, d_rtol = default_tolerance(want.dtype)
    atol, rtol = atol if atol is not None else d_atol, rtol if rtol is not None else d_rtol
    if _close(got, want, atol, rtol):
        return
    for mistake, wrong in (suspects or {}).items():
        if _close(got, wrong, atol, rtol):
            raise AssertionError(f"{what} is wrong: it matches what you get when {mistake}.")
    if not torch.isfinite(got).all() and torch.isfinite(want).all():
        raise AssertionError(
            f"{what} contains NaN or inf where the expected values are finite (a softmax over a row "
            f"that is all -inf gives NaN: can every query see at least one key?). {hint}".strip()
        )
    err = (got.detach().to(want.dtype) - want).abs()
    idx = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    raise AssertionError(
        f"{what} is wrong: the largest difference is {err.max().item():.3g} at index {idx} "
        f"(allowed: {atol:g} + {rtol:g} * |expected|). {hint}".strip()
    )


# Torch functions that would answer an exercise outright. Like the course's
# own reference, they are switched off while a learner's function is graded.
# A TorchFunctionMode sees every call, also through a name bound early with
# `from torch.nn.functional import scaled_dot_product_attention`.
_TORCH_ANSWERS = {
    torch.nn.functional.scaled_dot_product_attention: "torch.nn.functional.scaled_dot_product_attention",
    torch.nn.functional.multi_head_attention_forward: "torch.nn.MultiheadAttention",
    torch.nn.functional.rms_norm: "torch.nn.functional.rms_norm (and nn.RMSNorm)",
}


# Autograd, switched off where a backward pass must be written by hand.
_AUTOGRAD = {
    torch.Tensor.backward: "Tensor.backward",
    torch.autograd.grad: "torch.autograd.grad",
    torch.autograd.backward: "torch.autograd.backward",
}


class _TorchAnswersOff(torch.overrides.TorchFunctionMode):
    def __init__(self, banned: dict):
        super().__init__()
        self.banned = banned

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = self.banned.get(func)
        if name is not None:
            raise ReferenceForbidden(f"{name} is switched off while your own code is graded: write this part yourself.")
        return func(*args, **(kwargs or {}))


# What the tests rely on, as it was when the course imported it. A notebook
# that replaces any of these (``torch.allclose = lambda *a, **k: True``) makes
# every later test fail instead of pass. (Code in the same process can always
# undo a check made in that process; the instructor's summary also flags such
# code in the submitted cells: see attnlab.grading.flags.)
_GENUINE = {
    "torch.allclose": (torch, "allclose", torch.allclose),
    "torch.isclose": (torch, "isclose", torch.isclose),
    "torch.equal": (torch, "equal", torch.equal),
    "torch.isfinite": (torch, "isfinite", torch.isfinite),
    "torch.testing.assert_close": (torch.testing, "assert_close", torch.testing.assert_close),
    "torch.Tensor.__eq__": (torch.Tensor, "__eq__", torch.Tensor.__eq__),
    "torch.Tensor.__sub__": (torch.Tensor, "__sub__", torch.Tensor.__sub__),
    "torch.Tensor.abs": (torch.Tensor, "abs", torch.Tensor.abs),
}
_OWN = ("expect_tensor", "expect_shape", "expect_close", "number", "exercise", "_close", "default_tolerance")


def _refuse_tampering(namespace: dict) -> None:
    module = sys.modules[__name__]
    replaced = [name for name, (owner, attr, obj) in _GENUINE.items() if getattr(owner, attr, None) is not obj]
    replaced += [f"attnlab.checks.{n}" for n in _OWN if getattr(module, n) is not _GENUINE_OWN[n]]
    # (a plain value under one of these names, `number = 5`, cannot pose as a checker)
    replaced += [n for n in _OWN if callable(namespace.get(n)) and namespace[n] is not _GENUINE_OWN[n]]
    if replaced:
        raise AssertionError(
            f"{', '.join(replaced)} no longer is what the course imported: the notebook replaced it. "
            "The tests refuse to run on a replaced checker; remove that code and run the notebook again.")
    for name, value in list(namespace.items()):
        if getattr(value, "__attnlab_trusted__", False):
            raise AssertionError(
                f"{name} is a course reference function let through with attnlab.guard.trusted: "
                "a graded exercise must be your own code.")


@contextlib.contextmanager
def exercise(namespace: dict, stand_ins=(), allow=(), no_autograd=False):
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
    """
    _refuse_tampering(namespace)
    saved = {name: namespace.get(name) for name in stand_ins}
    try:
        for name in stand_ins:
            namespace[name] = stand_in(getattr(reference, name))
        with contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            stack.enter_context(contextlib.redirect_stderr(sys.stdout))
            stack.enter_context(forbidden(allow))
            stack.enter_context(_TorchAnswersOff({**_TORCH_ANSWERS, **(_AUTOGRAD if no_autograd else {})}))
            if no_autograd:
                stack.enter_context(torch.inference_mode())
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                namespace.pop(name, None)
            else:
                namespace[name] = value


def stand_in(fn):
    """``fn`` allowed to call the course's reference code inside :func:`exercise`.

    For the tests, which hand a learner's function correct building blocks. It
    is :func:`guard.trusted` without the mark that makes :func:`exercise` refuse a
    namespace holding it: the test put it there, not the learner (a learner's
    cell that uses it is flagged in the instructor's summary)."""
    wrapper = trusted(fn)
    del wrapper.__attnlab_trusted__
    return wrapper


_GENUINE_OWN = {n: globals()[n] for n in _OWN if n in globals()}


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


class _StorageWatch(TorchDispatchMode):
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
