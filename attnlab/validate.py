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
