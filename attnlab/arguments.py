"""Argument checks that fail with a message naming the argument.

A learner who passes a (B, T, C) tensor where (B, H, T, D) was expected should
read that sentence, not a broadcasting error from deep inside torch.
"""
from __future__ import annotations

import torch


def tensor(name: str, x, ndim: int | None = None, layout: str | None = None) -> torch.Tensor:
    """Check that ``x`` is a floating-point tensor with ``ndim`` dimensions."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        shape = f" {layout}" if layout else ""
        raise ValueError(
            f"{name} must have {ndim} dimensions{shape}, got shape {tuple(x.shape)}"
        )
    return x


def positive_int(name: str, value) -> int:
    """Check that ``value`` is an int >= 1 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def same(name_a: str, a: int, name_b: str, b: int) -> None:
    """Check that two sizes agree."""
    if a != b:
        raise ValueError(f"{name_a} ({a}) must equal {name_b} ({b})")


def flag(name: str, value) -> bool:
    """Check that ``value`` is a bool: ``causal="no"`` would otherwise count as True."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def same_dtype(**tensors: torch.Tensor) -> None:
    """Check that the tensors share one dtype: mixed float32 and float64 inputs
    would be promoted or refused somewhere deep inside torch."""
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name} is {dtype}" for name, dtype in dtypes.items())
        raise ValueError(f"{', '.join(dtypes)} must share one dtype: {listed}")


def non_negative(name: str, value) -> float:
    """Check that ``value`` is a real number >= 0 (an eps, say)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return value


def int_in_range(name: str, value, low: int, high: int, step: int = 1) -> int:
    """Check that ``value`` is an int in [low, high] on the grid low, low + step, ...
    (a widget's slider would otherwise clamp it silently)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high or (value - low) % step:
        grid = f" in steps of {step}" if step > 1 else ""
        raise ValueError(f"{name} must be an int from {low} to {high}{grid}, got {value!r}")
    return value
