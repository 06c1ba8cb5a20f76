"""Workbook 03: rotary position embeddings (RoFormer, arXiv 2104.09864), both layouts.

The course's own answers: see :mod:`attnlab.answers`.
"""
from __future__ import annotations

import math

import torch

from attnlab import arguments
from attnlab.answers.gqa import _gqa_qkv, gqa_attention
from attnlab.answers.mha import KVCache, merge_heads
from attnlab.guard import guarded


@guarded
def rope_frequencies(d: int, base: float = 10000.0) -> torch.Tensor:
    """theta_i = base ** (-2i / d) for i = 0 .. d/2 - 1 (RoFormer, arXiv 2104.09864, section 3.2), float32."""
    arguments.positive_int("d", d)
    if d % 2:
        raise ValueError(f"d must be even (RoPE rotates pairs of features), got {d}")
    if not base > 1:
        raise ValueError(f"base must be greater than 1, got {base!r}")
    i = torch.arange(d // 2, dtype=torch.float64)
    return (base ** (-2 * i / d)).float()


@guarded
def rope_tables(positions: torch.Tensor, d: int, base: float = 10000.0, dtype: torch.dtype = torch.float32):
    """cos and sin of m * theta_i for each position m: two (T, d/2) tables (float32 by default).

    theta and the angles are formed in float64: at position 100,000 a float32
    angle is already off by a few thousandths of a radian.
    """
    if not isinstance(positions, torch.Tensor) or positions.ndim != 1 or positions.is_floating_point():
        raise ValueError("positions must be a 1-D integer tensor, e.g. torch.arange(offset, offset + T)")
    rope_frequencies(d, base)  # validates d and base
    i = torch.arange(d // 2, dtype=torch.float64, device=positions.device)
    angles = positions.double()[:, None] * base ** (-2 * i / d)[None, :]  # (T, d/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _yarn_pair(d: int, base: float, original_len: int, rotations: float) -> float:
    """The (fractional) pair index whose wavelength fits ``rotations`` times into ``original_len`` tokens."""
    return d * math.log(original_len / (rotations * 2 * math.pi)) / (2 * math.log(base))


@guarded
def yarn_frequencies(d: int, base: float = 10000.0, factor: float = 40.0, original_len: int = 4096,
                     beta_fast: float = 32.0, beta_slow: float = 1.0) -> torch.Tensor:
    """YaRN's per-pair frequencies (Peng et al., arXiv 2309.00071; DeepSeek-V3's precompute_freqs_cis), float32 (d/2,).

    Pairs that turn more than ``beta_fast`` times over the original context keep
    theta_i; pairs that turn fewer than ``beta_slow`` times are interpolated,
    theta_i / factor; between the two pair indices, a linear ramp blends them.
    """
    theta = rope_frequencies(d, base).double()  # validates d and base
    if not factor >= 1:
        raise ValueError(f"factor must be at least 1, got {factor!r}")
    arguments.positive_int("original_len", original_len)
    if not beta_fast >= beta_slow > 0:
        raise ValueError(f"beta_fast must be at least beta_slow, both positive; got {beta_fast!r} and {beta_slow!r}")
    low = max(math.floor(_yarn_pair(d, base, original_len, beta_fast)), 0)
    high = min(math.ceil(_yarn_pair(d, base, original_len, beta_slow)), d - 1)
    if low == high:
        high += 0.001  # as DeepSeek's code does: a step, not a division by zero
    ramp = ((torch.arange(d // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)  # 0: keep, 1: interpolate
    return (theta * (1 - ramp) + theta / factor * ramp).float()


@guarded
def yarn_temperature(factor: float, mscale: float) -> float:
    """YaRN's attention temperature, 0.1 * mscale * ln(factor) + 1 (1 without extension)."""
    return 0.1 * mscale * math.log(factor) + 1.0 if factor > 1 else 1.0


@guarded
def yarn_softmax_scale(d_qk: int, factor: float, mscale: float = 1.0) -> float:
    """The attention's softmax scale under YaRN: d_qk ** -0.5 times (0.1 * mscale * ln(factor) + 1) squared.

    DeepSeek scales the scores (not the tables) by YaRN's temperature, once for
    the queries and once for the keys: hence the square. With factor 1, plain 1/sqrt(d_qk)."""
    arguments.positive_int("d_qk", d_qk)
    if not factor >= 1:
        raise ValueError(f"factor must be at least 1, got {factor!r}")
    arguments.non_negative("mscale", mscale)
    temperature = yarn_temperature(factor, mscale)
    return d_qk ** -0.5 * temperature * temperature


def _check_rope(x, cos, sin):
    arguments.tensor("x", x)
    if x.shape[-1] % 2 or cos.shape != (x.shape[-2], x.shape[-1] // 2) or sin.shape != cos.shape:
        raise ValueError(
            f"x (..., T, d) with d even needs cos and sin of shape (T, d/2); got x {tuple(x.shape)}, "
            f"cos {tuple(cos.shape)}, sin {tuple(sin.shape)}"
        )


@guarded
def rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[2i], x[2i+1]) by the angles of the tables. x (..., T, d)."""
    _check_rope(x, cos, sin)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # bf16 in, bf16 out
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., T, d/2) each
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (..., T, d/2, 2)
    return out.flatten(-2)  # (..., T, d)


@guarded
def rope_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[i], x[i + d/2]) by the angles of the tables. x (..., T, d)."""
    _check_rope(x, cos, sin)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]  # (..., T, d/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (..., T, d)


@guarded
def permute_for_rotate_half(W: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's output rows of W (H * D, C) from interleaved pairs to halves.

    Row 2i of a head moves to i, row 2i + 1 to i + D/2, so that rope_half with
    the permuted weights gives the same attention scores as rope_interleaved
    with the original ones.
    """
    arguments.tensor("W", W, 2, "(H * D, C)")
    arguments.positive_int("n_heads", n_heads)
    HD, C = W.shape
    if HD % (2 * n_heads):
        raise ValueError(f"W.shape[0] ({HD}) must be n_heads ({n_heads}) times an even head width")
    D = HD // n_heads
    return W.view(n_heads, D // 2, 2, C).transpose(1, 2).reshape(HD, C)


@guarded
def rope_gqa_step(x, W_q, W_k, W_v, W_o, n_heads: int, n_kv_heads: int, cache: KVCache, base: float = 10000.0,
                  start: int | None = None):
    """Causal GQA with interleaved RoPE for the new tokens x (B, T_new, C).

    The new tokens sit at positions len(cache) .. len(cache) + T_new - 1; their
    queries and keys are rotated there, and the cache keeps rotated keys.
    (``start`` overrides the first position: the tests use it to reproduce the
    classic bug of rotating every decode step at position 0.)
    """
    q, k, v = _gqa_qkv(x, W_q, W_k, W_v, n_heads, n_kv_heads)  # (B, H, T, D), (B, G, T, D) x 2
    first = len(cache) if start is None else start
    positions = torch.arange(first, first + x.shape[1], device=x.device)
    cos, sin = rope_tables(positions, q.shape[-1], base)
    k, v = cache.update(rope_interleaved(k, cos, sin), v)  # (B, G, T_cached, D)
    return merge_heads(gqa_attention(rope_interleaved(q, cos, sin), k, v, causal=True)) @ W_o.T


