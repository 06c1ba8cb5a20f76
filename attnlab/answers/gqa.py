"""Workbook 02: grouped-query attention (GQA, arXiv 2305.13245) and MQA.

The course's own answers: see :mod:`attnlab.answers`.
"""
from __future__ import annotations

import math

import torch

from attnlab import arguments
from attnlab.answers.mha import _check_weights, causal_mask, merge_heads, split_heads
from attnlab.guard import guarded


@guarded
def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, G, T, D) -> (B, G * n_rep, T, D); query head h reads K/V head h // n_rep.

    Each K/V head serves ``n_rep`` *consecutive* query heads, as in
    ``repeat_interleave`` (``repeat`` would tile them: the wrong pairing).
    """
    arguments.tensor("x", x, 4, "(B, G, T, D)")
    arguments.positive_int("n_rep", n_rep)
    B, G, T, D = x.shape
    return x[:, :, None].expand(B, G, n_rep, T, D).reshape(B, G * n_rep, T, D)  # (B, H, T, D)


@guarded
def gqa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Grouped-query attention without repeating K and V.

    q (B, H, Tq, D), k (B, G, Tk, D), v (B, G, Tk, Dv), G dividing H -> (B, H, Tq, Dv).
    The n_rep = H // G query heads of a group are stacked along the query axis,
    so each group is one (n_rep * Tq, Tk) attention against its own K/V head.
    """
    arguments.tensor("q", q, 4, "(B, H, Tq, D)")
    arguments.tensor("k", k, 4, "(B, G, Tk, D)")
    arguments.tensor("v", v, 4, "(B, G, Tk, Dv)")
    B, H, Tq, D = q.shape
    G, Tk = k.shape[1], k.shape[2]
    if H % G:
        raise ValueError(f"the number of K/V heads ({G}) must divide the number of query heads ({H})")
    arguments.same("q.shape[-1]", D, "k.shape[-1]", k.shape[-1])
    arguments.same_dtype(q=q, k=k, v=v)
    arguments.flag("causal", causal)
    n_rep = H // G
    qg = q.reshape(B, G, n_rep * Tq, D)  # (B, G, n_rep * Tq, D): a group's heads, stacked
    scores = qg @ k.transpose(-2, -1) / math.sqrt(D)  # (B, G, n_rep * Tq, Tk)
    if causal:
        allowed = causal_mask(Tq, Tk, device=q.device).repeat(n_rep, 1)  # (n_rep * Tq, Tk)
        scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # (B, G, n_rep * Tq, Dv)
    return out.reshape(B, H, Tq, v.shape[-1])  # (B, H, Tq, Dv)


def _gqa_qkv(x, W_q, W_k, W_v, n_heads, n_kv_heads):
    arguments.tensor("x", x, 3, "(B, T, C)")
    _check_weights(x, {"W_q": W_q, "W_k": W_k, "W_v": W_v})
    arguments.positive_int("n_kv_heads", n_kv_heads)
    if n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})")
    q = split_heads(x @ W_q.T, n_heads)  # (B, H, T, D)
    k = split_heads(x @ W_k.T, n_kv_heads)  # (B, G, T, D)
    v = split_heads(x @ W_v.T, n_kv_heads)  # (B, G, T, D)
    return q, k, v


@guarded
def gqa_forward(x, W_q, W_k, W_v, W_o, n_heads: int, n_kv_heads: int, causal: bool = True, cache=None):
    """Grouped-query self-attention: x (B, T, C) -> (B, T, C).

    W_q and W_o are (C, C); W_k and W_v are (G * D, C) with D = C // n_heads.
    With a :class:`KVCache`, the new keys and values are appended first and the
    queries attend to everything cached (prefill, then one-token decode steps).
    """
    q, k, v = _gqa_qkv(x, W_q, W_k, W_v, n_heads, n_kv_heads)
    if cache is not None:
        k, v = cache.update(k, v)  # (B, G, T_cached, D)
    return merge_heads(gqa_attention(q, k, v, causal)) @ W_o.T  # (B, T, C)


@guarded
def mean_pool_heads(W: torch.Tensor, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """(H * D, C) K or V projection -> (G * D, C): each group's heads averaged.

    The starting point of GQA uptraining (Ainslie et al. 2023, arXiv 2305.13245, section 2.1).
    """
    arguments.tensor("W", W, 2, "(H * D, C)")
    arguments.positive_int("n_heads", n_heads)
    arguments.positive_int("n_kv_heads", n_kv_heads)
    if n_heads % n_kv_heads or W.shape[0] % n_heads:
        raise ValueError(
            f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads}), which must divide W.shape[0] ({W.shape[0]})"
        )
    HD, C = W.shape
    D = HD // n_heads
    return W.view(n_kv_heads, n_heads // n_kv_heads, D, C).mean(dim=1).reshape(n_kv_heads * D, C)


