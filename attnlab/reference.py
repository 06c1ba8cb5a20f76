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
from dataclasses import dataclass

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
    validate.tensor("q", q, layout="(B, H, Tq, D)")
    validate.tensor("k", k, layout="(B, H, Tk, D)")
    validate.tensor("v", v, layout="(B, H, Tk, Dv)")
    if not (q.ndim == k.ndim == v.ndim >= 3):
        raise ValueError(
            "q, k and v must have the same number of dimensions, at least 3, as in (B, H, T, D); "
            f"got shapes {tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}"
        )
    validate.same_dtype(q=q, k=k, v=v)
    validate.same("q.shape[-1]", q.shape[-1], "k.shape[-1]", k.shape[-1])
    validate.same("k.shape[-2]", k.shape[-2], "v.shape[-2]", v.shape[-2])
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
    validate.flag("causal", causal)
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
    validate.same_dtype(q=q, k=k, v=v)
    validate.flag("causal", causal)
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


# ---------------------------------------------------------------- workbook 03


@guarded
def rope_frequencies(d: int, base: float = 10000.0) -> torch.Tensor:
    """theta_i = base ** (-2i / d) for i = 0 .. d/2 - 1 (RoFormer, arXiv 2104.09864, section 3.2), float32."""
    validate.positive_int("d", d)
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


def _check_rope(x, cos, sin):
    validate.tensor("x", x)
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
    validate.tensor("W", W, 2, "(H * D, C)")
    validate.positive_int("n_heads", n_heads)
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


# ---------------------------------------------------------------- workbook 04
# Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434, section 2.1;
# DeepSeek-V3's inference/model.py). Names follow the paper: W_DKV compresses
# h into the KV latent c_KV, W_UK and W_UV decompress it, W_DQ / W_UQ do the
# same for queries, W_QR and W_KR make the decoupled RoPE parts.


@dataclass(frozen=True)
class MLAConfig:
    """The dimensions of one MLA layer (and the number of layers, for cache sizes)."""

    name: str
    d_model: int  # C
    n_heads: int  # H
    d_latent: int  # d_c, kv_lora_rank: the cached KV latent
    d_q_latent: int  # d'_c, q_lora_rank: the query latent
    d_nope: int  # d_h, qk_nope_head_dim: the compressed part of a query/key head
    d_rope: int  # d_h^R, qk_rope_head_dim: the decoupled RoPE part
    d_v: int  # v_head_dim
    n_layers: int

    @property
    def softmax_scale(self) -> float:
        return 1.0 / math.sqrt(self.d_nope + self.d_rope)


MLA_PRESETS = {
    c.name: c
    for c in [
        # DeepSeek-V3 inference/configs/config_671B.json
        MLAConfig("DeepSeek-V3", 7168, 128, 512, 1536, 128, 64, 128, 61),
        # DeepSeek-V2, arXiv 2405.04434, section 3.1.2
        MLAConfig("DeepSeek-V2", 5120, 128, 512, 1536, 128, 64, 128, 60),
        # The same structure, small enough for a CPU in seconds.
        MLAConfig("tiny", 64, 4, 16, 24, 8, 4, 8, 2),
    ]
}


class MLAWeights(torch.nn.Module):
    """The weights of one MLA layer, stored as nn.Linear stores them (out, in)."""

    def __init__(self, cfg: MLAConfig):
        super().__init__()
        nn = torch.nn
        C, H = cfg.d_model, cfg.n_heads
        self.cfg = cfg
        self.W_dq = nn.Linear(C, cfg.d_q_latent, bias=False)  # h -> c_Q
        self.q_norm = nn.Parameter(torch.ones(cfg.d_q_latent))  # RMSNorm weight on c_Q
        self.W_uq = nn.Linear(cfg.d_q_latent, H * cfg.d_nope, bias=False)  # c_Q -> q_C
        self.W_qr = nn.Linear(cfg.d_q_latent, H * cfg.d_rope, bias=False)  # c_Q -> q_R (per head)
        self.W_dkv = nn.Linear(C, cfg.d_latent, bias=False)  # h -> c_KV
        self.kv_norm = nn.Parameter(torch.ones(cfg.d_latent))  # RMSNorm weight on c_KV
        self.W_kr = nn.Linear(C, cfg.d_rope, bias=False)  # h -> k_R (one, shared by all heads)
        self.W_uk = nn.Linear(cfg.d_latent, H * cfg.d_nope, bias=False)  # c_KV -> k_C
        self.W_uv = nn.Linear(cfg.d_latent, H * cfg.d_v, bias=False)  # c_KV -> v_C
        self.W_o = nn.Linear(H * cfg.d_v, C, bias=False)
        with torch.no_grad():  # norms that are not all ones, so that forgetting one shows
            self.q_norm.uniform_(0.5, 1.5)
            self.kv_norm.uniform_(0.5, 1.5)


@guarded
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(mean(x^2 over the last axis) + eps) * weight (Zhang and Sennrich 2019)."""
    validate.tensor("x", x)
    validate.tensor("weight", weight, 1, "(d,)")
    validate.same("weight.shape[0]", weight.shape[0], "x.shape[-1]", x.shape[-1])
    validate.same_dtype(x=x, weight=weight)
    validate.non_negative("eps", eps)
    return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps) * weight


@guarded
def compress_kv(m: MLAWeights, h: torch.Tensor) -> torch.Tensor:
    """c_KV = RMSNorm(W_DKV h): (B, T, C) -> (B, T, d_c). This is what MLA caches."""
    validate.tensor("h", h, 3, "(B, T, C)")
    return rms_norm(m.W_dkv(h), m.kv_norm)


@guarded
def up_project_kv(m: MLAWeights, c_kv: torch.Tensor):
    """k_C = W_UK c_KV and v_C = W_UV c_KV, per head: (B, H, T, d_nope) and (B, H, T, d_v)."""
    validate.tensor("c_kv", c_kv, 3, "(B, T, d_c)")
    H = m.cfg.n_heads
    return split_heads(m.W_uk(c_kv), H), split_heads(m.W_uv(c_kv), H)


@guarded
def compress_q(m: MLAWeights, h: torch.Tensor):
    """c_Q = RMSNorm(W_DQ h) (B, T, d'_c) and q_C = W_UQ c_Q per head (B, H, T, d_nope)."""
    validate.tensor("h", h, 3, "(B, T, C)")
    c_q = rms_norm(m.W_dq(h), m.q_norm)
    return c_q, split_heads(m.W_uq(c_q), m.cfg.n_heads)


@guarded
def decoupled_rope(m: MLAWeights, h: torch.Tensor, c_q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q_R = RoPE(W_QR c_Q) per head (B, H, T, d_rope); k_R = RoPE(W_KR h), one for all heads (B, 1, T, d_rope)."""
    validate.tensor("h", h, 3, "(B, T, C)")
    q_r = rope_interleaved(split_heads(m.W_qr(c_q), m.cfg.n_heads), cos, sin)  # (B, H, T, d_rope)
    k_r = rope_interleaved(m.W_kr(h)[:, None], cos, sin)  # (B, 1, T, d_rope)
    return q_r, k_r


@guarded
def mla_forward(m: MLAWeights, h: torch.Tensor) -> torch.Tensor:
    """The naive (training-time) causal MLA forward: (B, T, C) -> (B, T, C).

    Keys and values are decompressed for every head; q = [q_C; q_R], k = [k_C; k_R].
    """
    B, T, _ = h.shape
    cfg = m.cfg
    cos, sin = rope_tables(torch.arange(T, device=h.device), cfg.d_rope)
    c_q, q_c = compress_q(m, h)  # (B, T, d'_c), (B, H, T, d_nope)
    k_c, v_c = up_project_kv(m, compress_kv(m, h))  # (B, H, T, d_nope), (B, H, T, d_v)
    q_r, k_r = decoupled_rope(m, h, c_q, cos, sin)  # (B, H, T, d_rope), (B, 1, T, d_rope)
    q = torch.cat([q_c, q_r], dim=-1)  # (B, H, T, d_nope + d_rope)
    k = torch.cat([k_c, k_r.expand(B, cfg.n_heads, T, cfg.d_rope)], dim=-1)  # (B, H, T, d_nope + d_rope)
    return m.W_o(merge_heads(attention(q, k, v_c, causal=True)))  # scale 1/sqrt(d_nope + d_rope) inside


class LatentCache:
    """What MLA caches: the normed KV latent (B, T, d_c) and the shared RoPE key (B, T, d_rope)."""

    def __init__(self):
        self.c_kv = None
        self.k_r = None

    def __len__(self) -> int:
        return 0 if self.c_kv is None else self.c_kv.shape[1]

    @guarded
    def update(self, c_kv: torch.Tensor, k_r: torch.Tensor):
        """Append (B, T_new, d_c) latents and (B, T_new, d_rope) RoPE keys; return all of them."""
        validate.tensor("c_kv", c_kv, 3, "(B, T_new, d_c)")
        validate.tensor("k_r", k_r, 3, "(B, T_new, d_rope)")
        if self.c_kv is None:
            self.c_kv, self.k_r = c_kv, k_r
        else:
            self.c_kv = torch.cat([self.c_kv, c_kv], dim=1)  # (B, T + T_new, d_c)
            self.k_r = torch.cat([self.k_r, k_r], dim=1)  # (B, T + T_new, d_rope)
        return self.c_kv, self.k_r


@guarded
def mla_absorbed_step(m: MLAWeights, h: torch.Tensor, cache: LatentCache) -> torch.Tensor:
    """MLA for the new tokens h (B, T_new, C) with W_UK and W_UV absorbed; caches only c_KV and k_R.

    scores = (q_C W_UK) . c_KV + q_R . k_R, scaled by 1/sqrt(d_nope + d_rope); the
    weighted sum runs over latents, and W_UV is applied to the result.
    """
    B, T, _ = h.shape
    cfg = m.cfg
    H = cfg.n_heads
    start = len(cache)
    cos, sin = rope_tables(torch.arange(start, start + T, device=h.device), cfg.d_rope)
    c_q, q_c = compress_q(m, h)  # (B, T, d'_c), (B, H, T, d_nope)
    q_r, k_r_new = decoupled_rope(m, h, c_q, cos, sin)  # (B, H, T, d_rope), (B, 1, T, d_rope)
    c_kv, k_r = cache.update(compress_kv(m, h), k_r_new[:, 0])  # (B, Tk, d_c), (B, Tk, d_rope)
    W_uk = m.W_uk.weight.view(H, cfg.d_nope, cfg.d_latent)  # (H, d_nope, d_c)
    W_uv = m.W_uv.weight.view(H, cfg.d_v, cfg.d_latent)  # (H, d_v, d_c)
    q_lat = torch.einsum("bhtn,hnc->bhtc", q_c, W_uk)  # (B, H, T, d_c): W_UK absorbed into the query
    # Every head reads the same cache, so fold the heads into the query rows (as for GQA in workbook 02):
    # one (H*T, d_c) x (d_c, Tk) product per sequence, and the cache is never copied per head.
    scores = (q_lat.reshape(B, H * T, -1) @ c_kv.transpose(1, 2)
              + q_r.reshape(B, H * T, -1) @ k_r.transpose(1, 2)) * cfg.softmax_scale  # (B, H*T, Tk)
    allowed = causal_mask(T, c_kv.shape[1], device=h.device).repeat(H, 1)  # (H*T, Tk)
    o_lat = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ c_kv  # (B, H*T, d_c)
    o = torch.einsum("bhtc,hvc->bhtv", o_lat.view(B, H, T, -1), W_uv)  # (B, H, T, d_v): W_UV after the sum
    return m.W_o(merge_heads(o))  # (B, T, C)



@guarded
def rms_norm_backward(x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """dL/dx for y = rms_norm(x, weight): r * (dy * w) - x * r^3 * mean(dy * w * x)."""
    r = torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps)  # (..., 1)
    gw = dy * weight  # (..., d)
    return r * gw - x * r**3 * (gw * x).mean(dim=-1, keepdim=True)


@guarded
def mla_kv_backward(m: MLAWeights, h, dk_c, dv_c, dk_r, cos, sin):
    """Weight gradients of MLA's key/value path, given the gradients of its keys and values.

    h (B, T, C) is the layer input; dk_c (B, H, T, d_nope), dv_c (B, H, T, d_v)
    and dk_r (B, H, T, d_rope) are dL/dk_C, dL/dv_C and dL/dk_R *per head*, as an
    attention backward produces them; cos, sin are the RoPE tables of the T positions.
    Returns (dW_dkv, dW_uk, dW_uv, dW_kr), each shaped like the weight.
    """
    raw = m.W_dkv(h)  # (B, T, d_c): the latent before its RMSNorm
    c_kv = rms_norm(raw, m.kv_norm)  # (B, T, d_c)
    dk_flat, dv_flat = merge_heads(dk_c), merge_heads(dv_c)  # (B, T, H * d_nope), (B, T, H * d_v)
    dW_uk = torch.einsum("bto,btc->oc", dk_flat, c_kv)
    dW_uv = torch.einsum("bto,btc->oc", dv_flat, c_kv)
    dc = dk_flat @ m.W_uk.weight + dv_flat @ m.W_uv.weight  # (B, T, d_c): both up-projections read c_KV
    dW_dkv = torch.einsum("btc,bti->ci", rms_norm_backward(raw, m.kv_norm, dc), h)
    dk_r_shared = dk_r.sum(dim=1)  # (B, T, d_rope): one k_R serves every head, so its gradient is their sum
    d_pre_rope = rope_interleaved(dk_r_shared, cos, -sin)  # the inverse rotation: R^T = R(-angle)
    dW_kr = torch.einsum("btr,bti->ri", d_pre_rope, h)
    return dW_dkv, dW_uk, dW_uv, dW_kr


# ---------------------------------------------------------------- workbook 06
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
    validate.tensor("W_k", W_k, 2, "(G * D, C)")
    validate.tensor("W_v", W_v, 2, "(G * D, C)")
    validate.positive_int("n_heads", n_heads)
    validate.positive_int("n_kv_heads", n_kv_heads)
    if n_heads % n_kv_heads or W_k.shape[0] % n_kv_heads:
        raise ValueError(f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads}) and W_k.shape[0] ({W_k.shape[0]})")
    validate.same("W_k.shape", tuple(W_k.shape), "W_v.shape", tuple(W_v.shape))
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
    validate.tensor("W_k", W_k, 2, "(G * D, C)")
    validate.tensor("W_v", W_v, 2, "(G * D, C)")
    validate.same("W_k.shape", tuple(W_k.shape), "W_v.shape", tuple(W_v.shape))
    validate.positive_int("rank", rank)
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
    validate.tensor("q", q, 4, "(B, H, T, d)")
    validate.tensor("k", k, 4, "(B, H, T, d)")
    B, H, T, d = q.shape
    validate.positive_int("n_keep", n_keep)
    if n_keep > d // 2:
        raise ValueError(f"n_keep ({n_keep}) cannot exceed the {d // 2} frequency pairs")
    q_norm = q.unflatten(-1, (d // 2, 2)).norm(dim=-1).mean(dim=(0, 2))  # (H, d/2)
    k_norm = k.unflatten(-1, (d // 2, 2)).norm(dim=-1).mean(dim=(0, 2))  # (H, d/2)
    top = (q_norm * k_norm).topk(n_keep, dim=-1).indices  # (H, n_keep)
    return torch.zeros(H, d // 2, dtype=torch.bool, device=q.device).scatter(1, top, True)
