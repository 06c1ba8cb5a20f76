"""Workbook 06: retrofitting GQA into MLA (TransMLA, arXiv 2502.07864; MHA2MLA, arXiv 2502.14837).

The course's own answers: see :mod:`attnlab.answers`.
"""
from __future__ import annotations

import torch

from attnlab import arguments
from attnlab.answers.rope import _check_rope, rope_interleaved
from attnlab.guard import guarded


# Retrofitting GQA into MLA (TransMLA, arXiv 2502.07864; MHA2MLA, arXiv 2502.14837).


@guarded
def gqa_as_mla(W_k: torch.Tensor, W_v: torch.Tensor, n_heads: int, n_kv_heads: int):
    """A GQA layer's K/V projections (G*D, C) each -> MLA weights (W_dkv, W_uk, W_uv).

    The latent is the concatenation of GQA's keys and values, c = [W_k; W_v] x, so
    W_dkv is (2*G*D, C): the cache is the same size as GQA's. W_uk and W_uv, each
    (H*D, 2*G*D), are 0/1 selection matrices: query head h reads the slice of its
    group g = h // (H // G), the keys from the first half of c and the values from
    the second.
    """
    arguments.tensor("W_k", W_k, 2, "(G * D, C)")
    arguments.tensor("W_v", W_v, 2, "(G * D, C)")
    arguments.positive_int("n_heads", n_heads)
    arguments.positive_int("n_kv_heads", n_kv_heads)
    if n_heads % n_kv_heads or W_k.shape[0] % n_kv_heads:
        raise ValueError(f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads}) and W_k.shape[0] ({W_k.shape[0]})")
    arguments.same("W_k.shape", tuple(W_k.shape), "W_v.shape", tuple(W_v.shape))
    GD = W_k.shape[0]
    D, n_rep = GD // n_kv_heads, n_heads // n_kv_heads
    eye = torch.eye(GD, dtype=W_k.dtype, device=W_k.device).view(n_kv_heads, D, GD)
    select = eye.repeat_interleave(n_rep, dim=0).reshape(n_heads * D, GD)  # (H*D, G*D): head h <- group h // n_rep
    zeros = torch.zeros_like(select)
    W_dkv = torch.cat([W_k, W_v], dim=0)  # (2*G*D, C)
    return W_dkv, torch.cat([select, zeros], dim=1), torch.cat([zeros, select], dim=1)


@guarded
def joint_svd(W_k: torch.Tensor, W_v: torch.Tensor, rank: int):
    """Truncated SVD of the stacked [W_k; W_v] (2*G*D, C), keeping the ``rank`` largest singular values.

    Returns W_down (rank, C) = V_r^T, shared by keys and values, and W_k_up, W_v_up
    (G*D, rank), the two halves of U_r S_r, so that W_k ~ W_k_up @ W_down and
    W_v ~ W_v_up @ W_down, the best rank-``rank`` approximation of the stack
    (Eckart and Young 1936).
    """
    arguments.tensor("W_k", W_k, 2, "(G * D, C)")
    arguments.tensor("W_v", W_v, 2, "(G * D, C)")
    arguments.same("W_k.shape", tuple(W_k.shape), "W_v.shape", tuple(W_v.shape))
    arguments.positive_int("rank", rank)
    stacked = torch.cat([W_k, W_v], dim=0)  # (2*G*D, C)
    if rank > min(stacked.shape):
        raise ValueError(f"rank ({rank}) cannot exceed min(2*G*D, C) = {min(stacked.shape)}")
    U, S, Vh = torch.linalg.svd(stacked, full_matrices=False)  # S in descending order
    up = U[:, :rank] * S[:rank]  # (2*G*D, rank)
    return Vh[:rank], up[: W_k.shape[0]], up[W_k.shape[0]:]


@guarded
def partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Interleaved RoPE on the frequency pairs where ``keep`` is True; the other pairs pass unrotated.

    x (B, H, T, d); cos, sin (T, d/2); keep: bool (d/2,) for every head or (H, d/2) per head.
    """
    _check_rope(x, cos, sin)
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or keep.shape[-1] != x.shape[-1] // 2:
        raise ValueError(f"keep must be a bool tensor (d/2,) or (H, d/2) with d/2 = {x.shape[-1] // 2}")
    rotated = rope_interleaved(x, cos, sin)  # (B, H, T, d)
    mask = keep.repeat_interleave(2, dim=-1)  # (d,) or (H, d): both features of a pair
    if mask.ndim == 2:
        mask = mask[:, None, :]  # (H, 1, d): broadcasts over T
    return torch.where(mask, rotated, x)


@guarded
def pairs_by_norm(q: torch.Tensor, k: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Per head, the ``n_keep`` frequency pairs with the largest 2-norm score, as a bool (H, d/2) mask.

    q, k (B, H, T, d), before RoPE (k expanded to the query heads). The score of
    pair i in head h is mean_{b,t} |q_{bht}^{(i)}| * mean_{b,t} |k_{bht}^{(i)}|, with
    |.| the 2-norm of the pair (x[2i], x[2i+1]): by Cauchy-Schwarz a bound on what
    that pair adds to a score.
    """
    arguments.tensor("q", q, 4, "(B, H, T, d)")
    arguments.tensor("k", k, 4, "(B, H, T, d)")
    B, H, T, d = q.shape
    arguments.positive_int("n_keep", n_keep)
    if n_keep > d // 2:
        raise ValueError(f"n_keep ({n_keep}) cannot exceed the {d // 2} frequency pairs")
    q_norm = q.unflatten(-1, (d // 2, 2)).norm(dim=-1).mean(dim=(0, 2))  # (H, d/2)
    k_norm = k.unflatten(-1, (d // 2, 2)).norm(dim=-1).mean(dim=(0, 2))  # (H, d/2)
    top = (q_norm * k_norm).topk(n_keep, dim=-1).indices  # (H, n_keep)
    return torch.zeros(H, d // 2, dtype=torch.bool, device=q.device).scatter(1, top, True)
