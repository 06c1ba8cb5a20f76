"""Reference implementations of the attention mechanisms the course teaches.

These are the course's own answers. The benchmark (workbook 05) and later
workbooks build on them, and the hidden tests compare a learner's results with
them. Every public function here is :func:`~attnlab.guard.guarded`: while a
learner's exercise is graded it raises instead of answering, so calling it is
not a way to score.

Conventions: ``B`` batch, ``T`` time (``Tq`` queries, ``Tk`` keys), ``C`` model
width, ``H`` heads, ``D`` head width. Weights are stored as ``nn.Linear``
stores them, ``(out_features, in_features)``, so a projection is ``x @ W.T``.
"""
from __future__ import annotations

import math

import torch

from . import validate
from .guard import guarded

# ---------------------------------------------------------------- workbook 01


@guarded
def causal_mask(Tq: int, Tk: int, device=None) -> torch.Tensor:
    """Boolean (Tq, Tk) mask, True where query i may attend to key j.

    Queries are the *last* Tq positions of the Tk keys (bottom-right aligned),
    which is what decoding with a KV cache needs: query i sits at absolute
    position Tk - Tq + i and sees keys 0 .. Tk - Tq + i. (PyTorch's
    ``scaled_dot_product_attention(is_causal=True)`` aligns top-left instead,
    which is only the same when Tq == Tk.)
    """
    validate.positive_int("Tq", Tq)
    validate.positive_int("Tk", Tk)
    if Tq > Tk:
        raise ValueError(f"Tq ({Tq}) must not exceed Tk ({Tk}) for a causal mask")
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(diagonal=Tk - Tq)


def _check_qkv(q, k, v):
    validate.tensor("q", q, 4, "(B, H, Tq, D)")
    validate.tensor("k", k, 4, "(B, H, Tk, D)")
    validate.tensor("v", v, 4, "(B, H, Tk, Dv)")
    validate.same("q.shape[-1]", q.shape[-1], "k.shape[-1]", k.shape[-1])
    validate.same("k.shape[-2]", k.shape[-2], "v.shape[-2]", v.shape[-2])
    if not (q.shape[:2] == k.shape[:2] == v.shape[:2]):
        raise ValueError(
            "q, k and v must share batch and head sizes (B, H), got "
            f"{tuple(q.shape[:2])}, {tuple(k.shape[:2])} and {tuple(v.shape[:2])}"
        )


@guarded
def attention_weights(q: torch.Tensor, k: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)), shape (B, H, Tq, Tk)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if causal:
        allowed = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1)


@guarded
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Scaled dot-product attention (Vaswani et al. 2017, eq. 1).

    q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv) -> (B, H, Tq, Dv).
    """
    _check_qkv(q, k, v)
    return attention_weights(q, k, causal) @ v  # (B, H, Tq, Dv)


@guarded
def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, C) -> (B, H, T, C // H); head h takes features h*D .. (h+1)*D - 1."""
    validate.tensor("x", x, 3, "(B, T, C)")
    validate.positive_int("n_heads", n_heads)
    B, T, C = x.shape
    if C % n_heads:
        raise ValueError(f"the width C={C} of x must be divisible by n_heads={n_heads}")
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)  # (B, H, T, D)


@guarded
def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H * D), the inverse of :func:`split_heads`."""
    validate.tensor("x", x, 4, "(B, H, T, D)")
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)


def _check_weights(x, weights):
    C = x.shape[-1]
    for name, W in weights.items():
        validate.tensor(name, W, 2, "(out_features, in_features)")
        validate.same(f"{name}.shape[1]", W.shape[1], "the width of x", C)


@guarded
def mha_forward(x, W_q, W_k, W_v, W_o, n_heads: int, causal: bool = True) -> torch.Tensor:
    """Multi-head self-attention: x (B, T, C) -> (B, T, C)."""
    validate.tensor("x", x, 3, "(B, T, C)")
    _check_weights(x, {"W_q": W_q, "W_k": W_k, "W_v": W_v})
    q = split_heads(x @ W_q.T, n_heads)  # (B, H, T, D)
    k = split_heads(x @ W_k.T, n_heads)  # (B, H, T, D)
    v = split_heads(x @ W_v.T, n_heads)  # (B, H, T, D)
    return merge_heads(attention(q, k, v, causal)) @ W_o.T  # (B, T, C)


@guarded
def attention_backward(q, k, v, dout, causal: bool = False):
    """Gradients of ``attention(q, k, v, causal)`` given dL/d(out).

    With S = q k^T / sqrt(D), P = softmax(S), O = P v:
    dv = P^T dO;  dP = dO v^T;  dS = P * (dP - rowsum(dP * P));
    dq = dS k / sqrt(D);  dk = dS^T q / sqrt(D).
    """
    _check_qkv(q, k, v)
    validate.tensor("dout", dout, 4, "(B, H, Tq, Dv)")
    scale = 1.0 / math.sqrt(q.shape[-1])
    P = attention_weights(q, k, causal)  # (B, H, Tq, Tk)
    dv = P.transpose(-2, -1) @ dout  # (B, H, Tk, Dv)
    dP = dout @ v.transpose(-2, -1)  # (B, H, Tq, Tk)
    dS = P * (dP - (dP * P).sum(dim=-1, keepdim=True))  # (B, H, Tq, Tk)
    dq = dS @ k * scale  # (B, H, Tq, D)
    dk = dS.transpose(-2, -1) @ q * scale  # (B, H, Tk, D)
    return dq, dk, dv


class KVCache:
    """Keys and values of every token seen so far, (B, H, T, D) each."""

    def __init__(self):
        self.k = None
        self.v = None

    @guarded
    def update(self, k_new: torch.Tensor, v_new: torch.Tensor):
        """Append (B, H, T_new, D) keys and values; return all of them."""
        validate.tensor("k_new", k_new, 4, "(B, H, T_new, D)")
        validate.tensor("v_new", v_new, 4, "(B, H, T_new, Dv)")
        if self.k is None:
            self.k, self.v = k_new, v_new
        else:
            self.k = torch.cat([self.k, k_new], dim=2)  # (B, H, T + T_new, D)
            self.v = torch.cat([self.v, v_new], dim=2)  # (B, H, T + T_new, Dv)
        return self.k, self.v

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]


@guarded
def mha_step(x, W_q, W_k, W_v, W_o, n_heads: int, cache: KVCache) -> torch.Tensor:
    """Causal MHA for the new tokens ``x`` (B, T_new, C), attending to the cache.

    Appends the new keys and values to ``cache`` first; returns (B, T_new, C).
    A prefill is one call with the whole prompt; a decode step one with T_new = 1.
    """
    validate.tensor("x", x, 3, "(B, T_new, C)")
    _check_weights(x, {"W_q": W_q, "W_k": W_k, "W_v": W_v})
    q = split_heads(x @ W_q.T, n_heads)  # (B, H, T_new, D)
    k, v = cache.update(split_heads(x @ W_k.T, n_heads), split_heads(x @ W_v.T, n_heads))
    return merge_heads(attention(q, k, v, causal=True)) @ W_o.T  # (B, T_new, C)


# ---------------------------------------------------------------- workbook 02


@guarded
def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, G, T, D) -> (B, G * n_rep, T, D); query head h reads K/V head h // n_rep.

    Each K/V head serves ``n_rep`` *consecutive* query heads, as in
    ``repeat_interleave`` (``repeat`` would tile them: the wrong pairing).
    """
    validate.tensor("x", x, 4, "(B, G, T, D)")
    validate.positive_int("n_rep", n_rep)
    B, G, T, D = x.shape
    return x[:, :, None].expand(B, G, n_rep, T, D).reshape(B, G * n_rep, T, D)  # (B, H, T, D)


@guarded
def gqa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Grouped-query attention without repeating K and V.

    q (B, H, Tq, D), k (B, G, Tk, D), v (B, G, Tk, Dv), G dividing H -> (B, H, Tq, Dv).
    The n_rep = H // G query heads of a group are stacked along the query axis,
    so each group is one (n_rep * Tq, Tk) attention against its own K/V head.
    """
    validate.tensor("q", q, 4, "(B, H, Tq, D)")
    validate.tensor("k", k, 4, "(B, G, Tk, D)")
    validate.tensor("v", v, 4, "(B, G, Tk, Dv)")
    B, H, Tq, D = q.shape
    G, Tk = k.shape[1], k.shape[2]
    if H % G:
        raise ValueError(f"the number of K/V heads ({G}) must divide the number of query heads ({H})")
    validate.same("q.shape[-1]", D, "k.shape[-1]", k.shape[-1])
    n_rep = H // G
    qg = q.reshape(B, G, n_rep * Tq, D)  # (B, G, n_rep * Tq, D): a group's heads, stacked
    scores = qg @ k.transpose(-2, -1) / math.sqrt(D)  # (B, G, n_rep * Tq, Tk)
    if causal:
        allowed = causal_mask(Tq, Tk, device=q.device).repeat(n_rep, 1)  # (n_rep * Tq, Tk)
        scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # (B, G, n_rep * Tq, Dv)
    return out.reshape(B, H, Tq, v.shape[-1])  # (B, H, Tq, Dv)


def _gqa_qkv(x, W_q, W_k, W_v, n_heads, n_kv_heads):
    validate.tensor("x", x, 3, "(B, T, C)")
    _check_weights(x, {"W_q": W_q, "W_k": W_k, "W_v": W_v})
    validate.positive_int("n_kv_heads", n_kv_heads)
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
    validate.tensor("W", W, 2, "(H * D, C)")
    validate.positive_int("n_heads", n_heads)
    validate.positive_int("n_kv_heads", n_kv_heads)
    if n_heads % n_kv_heads or W.shape[0] % n_heads:
        raise ValueError(
            f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads}), which must divide W.shape[0] ({W.shape[0]})"
        )
    HD, C = W.shape
    D = HD // n_heads
    return W.view(n_kv_heads, n_heads // n_kv_heads, D, C).mean(dim=1).reshape(n_kv_heads * D, C)
