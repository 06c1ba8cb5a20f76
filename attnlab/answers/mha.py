"""Workbook 01: attention, multi-head attention, its backward pass, and a KV cache.

The course's own answers: see :mod:`attnlab.answers`.
"""
from __future__ import annotations

import math

import torch

from attnlab import arguments
from attnlab.guard import guarded


@guarded
def causal_mask(Tq: int, Tk: int, device=None) -> torch.Tensor:
    """Boolean (Tq, Tk) mask, True where query i may attend to key j.

    Queries are the *last* Tq positions of the Tk keys (bottom-right aligned),
    which is what decoding with a KV cache needs: query i sits at absolute
    position Tk - Tq + i and sees keys 0 .. Tk - Tq + i. (PyTorch's
    ``scaled_dot_product_attention(is_causal=True)`` aligns top-left instead,
    which is only the same when Tq == Tk.)
    """
    arguments.positive_int("Tq", Tq)
    arguments.positive_int("Tk", Tk)
    if Tq > Tk:
        raise ValueError(f"Tq ({Tq}) must not exceed Tk ({Tk}) for a causal mask")
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(diagonal=Tk - Tq)


def _check_qkv(q, k, v):
    arguments.tensor("q", q, layout="(B, H, Tq, D)")
    arguments.tensor("k", k, layout="(B, H, Tk, D)")
    arguments.tensor("v", v, layout="(B, H, Tk, Dv)")
    if not (q.ndim == k.ndim == v.ndim >= 3):
        raise ValueError(
            "q, k and v must have the same number of dimensions, at least 3, as in (B, H, T, D); "
            f"got shapes {tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}"
        )
    arguments.same_dtype(q=q, k=k, v=v)
    arguments.same("q.shape[-1]", q.shape[-1], "k.shape[-1]", k.shape[-1])
    arguments.same("k.shape[-2]", k.shape[-2], "v.shape[-2]", v.shape[-2])
    try:  # leading axes (batch, heads, ...) may broadcast: a K/V head of size 1 serves every query head
        torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(
            "the leading axes (B, H, ...) of q, k and v must be equal or 1, got "
            f"{tuple(q.shape[:-2])}, {tuple(k.shape[:-2])} and {tuple(v.shape[:-2])}"
        ) from None


@guarded
def attention_weights(q: torch.Tensor, k: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)), shape (B, H, Tq, Tk)."""
    arguments.flag("causal", causal)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if causal:
        allowed = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1)


@guarded
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Scaled dot-product attention (Vaswani et al. 2017, eq. 1).

    q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv) -> (B, H, Tq, Dv).
    The leading axes broadcast, so K/V with one head serve every query head.
    """
    _check_qkv(q, k, v)
    return attention_weights(q, k, causal) @ v  # (B, H, Tq, Dv)


@guarded
def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, C) -> (B, H, T, C // H); head h takes features h*D .. (h+1)*D - 1."""
    arguments.tensor("x", x, 3, "(B, T, C)")
    arguments.positive_int("n_heads", n_heads)
    B, T, C = x.shape
    if C % n_heads:
        raise ValueError(f"the width C={C} of x must be divisible by n_heads={n_heads}")
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)  # (B, H, T, D)


@guarded
def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H * D), the inverse of :func:`split_heads`."""
    arguments.tensor("x", x, 4, "(B, H, T, D)")
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)


def _check_weights(x, weights):
    C = x.shape[-1]
    for name, W in weights.items():
        arguments.tensor(name, W, 2, "(out_features, in_features)")
        arguments.same(f"{name}.shape[1]", W.shape[1], "the width of x", C)


@guarded
def mha_forward(x, W_q, W_k, W_v, W_o, n_heads: int, causal: bool = True) -> torch.Tensor:
    """Multi-head self-attention: x (B, T, C) -> (B, T, C)."""
    arguments.tensor("x", x, 3, "(B, T, C)")
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
    arguments.tensor("dout", dout, 4, "(B, H, Tq, Dv)")
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
        arguments.tensor("k_new", k_new, 4, "(B, H, T_new, D)")
        arguments.tensor("v_new", v_new, 4, "(B, H, T_new, Dv)")
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
    arguments.tensor("x", x, 3, "(B, T_new, C)")
    _check_weights(x, {"W_q": W_q, "W_k": W_k, "W_v": W_v})
    q = split_heads(x @ W_q.T, n_heads)  # (B, H, T_new, D)
    k, v = cache.update(split_heads(x @ W_k.T, n_heads), split_heads(x @ W_v.T, n_heads))
    return merge_heads(attention(q, k, v, causal=True)) @ W_o.T  # (B, T_new, C)


