"""Workbook 07: the pieces of a fused MLA decode kernel that are plain PyTorch.

The online softmax (Milakov and Gimelshein 2018, arXiv 1805.02867; the heart of
FlashAttention), the merge of partial results by their log-sum-exp
(flash-decoding's combine across splits of the context), and the absorbed
decode step in the layout the kernels read: one row of ``d_c + d_rope`` numbers
per cached token, ``[c_KV | k_R]``, and one query row per head,
``[q_C W_UK | q_R]`` (FlashMLA's layout: 512 + 64 = 576 for DeepSeek-V3).

The course's answers: see :mod:`attnlab.answers`. The Triton kernels are in
:mod:`attnlab.answers.kernels`, which needs Triton and is imported on its own.
"""
from __future__ import annotations

import torch

from attnlab import arguments
from attnlab.guard import guarded

NEG_INF = float("-inf")


@guarded
def online_softmax_update(m: torch.Tensor, l: torch.Tensor, acc: torch.Tensor, scores: torch.Tensor,
                          v: torch.Tensor):
    """One block of keys into the running state of a streaming softmax-weighted sum.

    m (...,) is the largest score seen so far (-inf before any), l (...,) the sum
    of exp(score - m) so far, acc (..., d_v) the sum of exp(score - m) * value so
    far; scores (..., n) are the new block's scores (-inf where a key is masked)
    and v (n, d_v) or (..., n, d_v) its values. Returns the new (m, l, acc); the
    attention output is acc / l once every block is in.
    """
    arguments.tensor("scores", scores)
    arguments.tensor("v", v)
    m_new = torch.maximum(m, scores.amax(dim=-1))  # (...,)
    # A row whose keys so far are all masked keeps m = -inf: shift by 0 there, not by -inf
    # (exp(-inf - -inf) is NaN).
    shift = torch.where(m_new == NEG_INF, torch.zeros_like(m_new), m_new)  # (...,)
    alpha = torch.exp(m - shift)  # (...,): how much the old state shrinks
    p = torch.exp(scores - shift[..., None])  # (..., n)
    l_new = l * alpha + p.sum(dim=-1)
    acc_new = acc * alpha[..., None] + torch.einsum("...n,...nd->...d", p, v)  # (..., d_v)
    return m_new, l_new, acc_new


@guarded
def merge_partials(out: torch.Tensor, lse: torch.Tensor):
    """Merge S partial attention results, each over its own part of the keys.

    out (S, ..., d_v) holds each part's normalised output, lse (S, ...) the
    log-sum-exp of its scores (-inf for a part with no keys, whose out is 0).
    Returns the output over all the keys (..., d_v) and its log-sum-exp (...,).
    """
    arguments.tensor("out", out)
    arguments.tensor("lse", lse)
    top = lse.amax(dim=0)  # (...,): subtract it before exp, or large scores overflow
    top = torch.where(top == NEG_INF, torch.zeros_like(top), top)
    w = torch.exp(lse - top)  # (S, ...): each part's share, unnormalised
    total = w.sum(dim=0)  # (...,)
    merged = (w[..., None] * out).sum(dim=0) / total[..., None]  # (..., d_v)
    return merged, top + torch.log(total)


@guarded
def absorbed_decode(q: torch.Tensor, kv: torch.Tensor, lengths: torch.Tensor, scale: float, d_c: int):
    """Workbook 04's absorbed decode step in the kernels' layout, for one new token per sequence.

    q (B, H, d_c + d_rope) is each head's query [q_C W_UK | q_R]; kv (B, T, d_c + d_rope)
    the cache [c_KV | k_R], of which sequence b uses its first lengths[b] rows.
    Returns the latent output (B, H, d_c): softmax(scale * q . kv) . c_KV, in q's dtype;
    W_UV and W_O come after it.
    """
    arguments.tensor("q", q, 3, "(B, H, d_c + d_rope)")
    arguments.tensor("kv", kv, 3, "(B, T, d_c + d_rope)")
    B, T, D = kv.shape
    scores = (q @ kv.transpose(1, 2)) * scale  # (B, H, T): every head against the same rows
    keep = torch.arange(T, device=kv.device)[None, :] < lengths.to(kv.device)[:, None]  # (B, T)
    weights = torch.softmax(scores.masked_fill(~keep[:, None, :], NEG_INF), dim=-1)  # (B, H, T)
    return weights @ kv[..., :d_c]  # (B, H, d_c)
