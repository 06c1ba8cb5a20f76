"""Workbook 06: MLA in its plainest form, and what a trained GQA model keeps when retrofitted.

- :func:`latent_attention`: an MLA layer with no RMSNorm on the latent and no
  decoupled RoPE: ``c = W_dkv x`` is what it caches, keys and values are
  decompressed from ``c``. The workbook writes GQA exactly in this form.
- :func:`with_low_rank_kv`, :func:`sample_qk`, :func:`with_partial_rope`: the
  experiments on a trained :class:`~attnlab.lesson.charlm.CharLM`.

Nothing here is a graded answer: the workbook's answers are in :mod:`attnlab.answers`.
"""
from __future__ import annotations

import copy

import torch

from attnlab import answers, arguments
from attnlab.lesson.charlm import CharLM, _GroupedAttention, _rms


# ------------------------------------------------------------------ latent attention, the plain form


def latent_attention(x, W_q, W_dkv, W_uk, W_uv, W_o, n_heads: int, rope: bool = False, causal: bool = True):
    """MLA with no RMSNorm on the latent and no decoupled RoPE: x (B, T, C) -> (B, T, C).

    c = x W_dkv^T (B, T, d_c) is what this layer caches; k = W_uk c and v = W_uv c
    per head, (B, H, T, D) each; then ordinary attention. With ``rope=True`` the
    queries and the *decompressed* keys are rotated (interleaved layout), as a
    retrofitted GQA model with RoPE must do: correct, but the rotation then sits
    between W_uk and the query, so W_uk can no longer be absorbed (workbook 03).
    """
    arguments.tensor("x", x, 3, "(B, T, C)")
    for name, W in {"W_q": W_q, "W_dkv": W_dkv, "W_uk": W_uk, "W_uv": W_uv, "W_o": W_o}.items():
        arguments.tensor(name, W, 2, "(out_features, in_features)")
    arguments.same("W_uk.shape[1]", W_uk.shape[1], "W_dkv.shape[0] (the latent width d_c)", W_dkv.shape[0])
    arguments.same("W_uv.shape[1]", W_uv.shape[1], "W_dkv.shape[0] (the latent width d_c)", W_dkv.shape[0])
    c = x @ W_dkv.T  # (B, T, d_c): the cache
    q = answers.split_heads(x @ W_q.T, n_heads)  # (B, H, T, D)
    k = answers.split_heads(c @ W_uk.T, n_heads)  # (B, H, T, D)
    v = answers.split_heads(c @ W_uv.T, n_heads)  # (B, H, T, Dv)
    if rope:
        cos, sin = answers.rope_tables(torch.arange(x.shape[1], device=x.device), q.shape[-1])
        q, k = answers.rope_interleaved(q, cos, sin), answers.rope_interleaved(k, cos, sin)
    return answers.merge_heads(answers.attention(q, k, v, causal)) @ W_o.T  # (B, T, C)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| (Frobenius norms)."""
    return ((got - want).norm() / want.norm()).item()



# ------------------------------------------------------------------ experiments on a trained GQA model


@torch.no_grad()
def with_low_rank_kv(model: CharLM, rank: int, svd=None) -> CharLM:
    """A copy of a trained MHA/GQA model whose K and V projections go through a rank-``rank`` latent.

    Each layer's [W_k; W_v] is replaced by its truncated joint SVD (``svd``, by
    default :func:`attnlab.answers.joint_svd`): W_k <- W_k_up W_down and
    W_v <- W_v_up W_down. That is exactly what the retrofitted MLA computes (in the
    naive form, RoPE applied to the decompressed keys), and its cache is the
    ``rank``-wide latent per token and layer.
    """
    svd = svd or answers.joint_svd
    out = copy.deepcopy(model)
    for block in out.blocks:
        attn = block.attn
        if not isinstance(attn, _GroupedAttention):
            raise ValueError("with_low_rank_kv needs an MHA or GQA model")
        down, k_up, v_up = svd(attn.W_k.weight, attn.W_v.weight, rank)
        attn.W_k.weight.copy_(k_up @ down)
        attn.W_v.weight.copy_(v_up @ down)
    return out


@torch.no_grad()
def sample_qk(model: CharLM, x: torch.Tensor, layer: int):
    """The queries and keys (before RoPE, keys repeated to the query heads) of one MHA/GQA layer, (B, H, T, D) each."""
    h = model.embed(x)
    for i, block in enumerate(model.blocks):
        attn = block.attn
        if i == layer:
            B, T, _ = h.shape
            a = _rms(h, block.norm1)
            q = attn.W_q(a).view(B, T, attn.H, attn.D).transpose(1, 2)
            k = attn.W_k(a).view(B, T, attn.G, attn.D).transpose(1, 2).repeat_interleave(attn.H // attn.G, dim=1)
            return q, k
        h = block(h, model.cos[:x.shape[1]], model.sin[:x.shape[1]])
    raise ValueError(f"the model has {len(model.blocks)} layers; layer {layer} does not exist")


def with_partial_rope(model: CharLM, keep_per_layer) -> CharLM:
    """A copy of an MHA/GQA model that rotates only the pairs in ``keep_per_layer[i]`` ((H, D/2) bool) in layer i."""
    out = copy.deepcopy(model)
    for block, keep in zip(out.blocks, keep_per_layer):
        block.attn.keep = keep
    return out
