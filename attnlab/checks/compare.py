"""Compare a learner's answer with the right one, and name the likely mistake when it differs.

:func:`expect_close` compares shape, dtype and values; when the values are
wrong, it compares them with the results of common mistakes ("suspects") to
say which one the learner probably made.
"""
from __future__ import annotations

import math
import numbers

import torch

from attnlab.checks.failure import CheckFailed

__all__ = ["attention_suspects", "default_tolerance", "expect", "expect_close", "expect_number", "expect_shape",
           "expect_tensor", "number", "set_weights"]


def _shape(t) -> tuple:
    return tuple(t.shape)


def _kind(got) -> str:
    # An object the checker holds a reference to says what it is on the kernel's side.
    return getattr(type(got), "remote_type", None) and got.remote_type or type(got).__name__


def expect_tensor(got, what: str) -> torch.Tensor:
    """Fail unless ``got`` is a plain tensor (not None, a list, a numpy array...).

    A subclass is refused too: it could redefine comparisons (``__torch_function__``)."""
    if got is None:
        raise CheckFailed(f"{what} is None: is it ever computed, stored or returned?")
    if type(got) is not torch.Tensor:
        if isinstance(got, torch.Tensor):
            raise CheckFailed(f"{what} is a {type(got).__name__}, a subclass of torch.Tensor; return a plain tensor")
        raise CheckFailed(f"{what} is a {_kind(got)}; expected a torch.Tensor")
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
        raise CheckFailed(f"{what} is a {_kind(got)}; expected a number (an int or a float)")
    return got


def set_weights(module, weights: dict, what: str) -> None:
    """Give the learner's ``module`` the test's own ``weights`` ({"W_q.weight": tensor, ...}).

    Expected values are computed from the test's copies, never from weights read back from the
    module (a module whose weights are all zero would agree with itself)."""
    result = module.load_state_dict(weights, strict=False)
    unexpected = list(result.unexpected_keys)
    if unexpected:
        raise CheckFailed(f"{what} has no parameter {unexpected[0]}: the exercise names its layers W_q, W_k, W_v "
                          "and W_o (nn.Linear, no bias)")


def expect(condition, what: str, detail: str = "") -> None:
    """Fail with ``what`` (words a hidden check may show) and ``detail`` (what only a visible one shows)."""
    if not condition:
        raise CheckFailed(f"{what}{': ' + detail if detail else ''}", brief=what)


def expect_number(got, want, what: str, hint: str = "") -> None:
    """Fail unless the number ``got`` equals ``want``; a hidden check says only how far off, as a factor."""
    got = number(got, what)
    if got == want:
        return
    how = "wrong"
    if got and want and (got > 0) == (want > 0):
        ratio = want / got if abs(got) < abs(want) else got / want
        size = "too small" if abs(got) < abs(want) else "too large"
        how = f"{size} by a factor of {ratio:.3g}" if abs(ratio - round(ratio)) > 1e-9 else \
            f"{size} by a factor of {round(ratio)}"
    elif got == 0:
        how = "0, which is wrong"
    raise CheckFailed(f"{what}: {want:,} expected; you have {got:,}. {hint}".strip(),
                      brief=f"{what} is {how}")


def expect_shape(got, shape, what: str, hint: str = "") -> None:
    """Fail with both shapes when ``got`` has the wrong shape."""
    expect_tensor(got, what)
    if _shape(got) != tuple(shape):
        msg = f"{what} has shape {_shape(got)}; expected {tuple(shape)}."
        raise CheckFailed(f"{msg} {hint}".strip(), brief=f"{what} has the wrong shape, {_shape(got)}")


def _close(a, b, atol, rtol) -> bool:
    if _shape(a) != _shape(b):
        return False
    return torch.allclose(a.detach().to(b.dtype), b.detach(), atol=atol, rtol=rtol, equal_nan=True)


def default_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) for comparing two reasonable implementations in ``dtype``."""
    # float64 tests allow 1e-6: code that rounds through float32 inside (as Hugging Face's and DeepSeek's
    # kernels do for softmax, RMSNorm and RoPE) is right, and every planted mistake is far larger.
    return {torch.float64: (1e-6, 1e-5), torch.float32: (1e-5, 1e-4)}.get(dtype, (2e-2, 2e-2))


def expect_close(got, want, what: str, suspects: dict | None = None, hint: str = "", atol=None, rtol=None,
                 nan_hint: str = "") -> None:
    """Fail with a useful message unless ``got`` matches ``want``.

    ``suspects`` maps a description of a mistake ("the 1/sqrt(d) scale is
    missing") to what that mistake would have produced; when ``got`` matches
    one of them, the message names it. ``nan_hint`` says where NaN comes from
    when ``got`` has some and ``want`` none (default: a fully masked softmax row).
    """
    expect_shape(got, _shape(want), what, hint)
    if got.dtype != want.dtype:
        raise CheckFailed(f"{what} has dtype {got.dtype}; expected {want.dtype}.",
                          brief=f"{what} has dtype {got.dtype}; expected {want.dtype}")
    d_atol, d_rtol = default_tolerance(want.dtype)
    atol, rtol = atol if atol is not None else d_atol, rtol if rtol is not None else d_rtol
    if _close(got, want, atol, rtol):
        return
    for mistake, wrong in (suspects or {}).items():
        if _close(got, wrong, atol, rtol):
            message = f"{what} is wrong: it matches what you get when {mistake}."
            raise CheckFailed(message, brief=message.rstrip("."))
    if not torch.isfinite(got).all() and torch.isfinite(want).all():
        why = nan_hint or "a softmax over a row that is all -inf gives NaN: can every query see at least one key?"
        raise CheckFailed(f"{what} contains NaN or inf where the expected values are finite ({why}). {hint}".strip(),
                          brief=f"{what} contains NaN or inf where every expected value is finite")
    err = (got.detach().to(want.dtype) - want).abs()
    idx = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    bad = ~torch.isclose(got.detach().to(want.dtype), want.detach(), atol=atol, rtol=rtol, equal_nan=True)
    raise CheckFailed(
        f"{what} is wrong: the largest difference is {err.max().item():.3g} at index {idx} "
        f"(allowed: {atol:g} + {rtol:g} * |expected|). {hint}".strip(),
        brief=f"{what} is wrong at {int(bad.sum())} of {bad.numel()} values"
    )


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
