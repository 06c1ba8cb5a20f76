"""Workbook 04: multi-head latent attention (DeepSeek-V2, arXiv 2405.04434), naive and absorbed.

The course's own answers: see :mod:`attnlab.answers`.
"""
from __future__ import annotations

import math

import torch

from attnlab import arguments
from attnlab.answers.mha import attention, causal_mask, merge_heads, split_heads
from attnlab.answers.rope import rope_interleaved, rope_tables, yarn_frequencies, yarn_temperature
from attnlab.guard import guarded
from attnlab.models import MLAConfig


def _tables(cfg: MLAConfig, positions: torch.Tensor):
    """cos and sin for the decoupled RoPE: plain RoPE, or YaRN's frequencies when the config has them.

    With YaRN the tables are also scaled by t(mscale) / t(mscale_all_dim) (transformers'
    attention_factor; 1 for DeepSeek's released configs, where the two are equal)."""
    if cfg.yarn is None:
        return rope_tables(positions, cfg.d_rope, cfg.rope_base)
    y = cfg.yarn
    freqs = yarn_frequencies(cfg.d_rope, cfg.rope_base, y.factor, y.original_len, y.beta_fast, y.beta_slow)
    angles = positions.double()[:, None] * freqs.to(positions.device).double()[None, :]  # (T, d_rope/2)
    factor = yarn_temperature(y.factor, y.mscale) / yarn_temperature(y.factor, y.mscale_all_dim)
    return (angles.cos() * factor).float(), (angles.sin() * factor).float()


# Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434, section 2.1;
# DeepSeek-V3's inference/model.py). Names follow the paper: W_DKV compresses
# h into the KV latent c_KV, W_UK and W_UV decompress it, W_DQ / W_UQ do the
# same for queries, W_QR and W_KR make the decoupled RoPE parts.


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
    arguments.tensor("x", x)
    arguments.tensor("weight", weight, 1, "(d,)")
    arguments.same("weight.shape[0]", weight.shape[0], "x.shape[-1]", x.shape[-1])
    arguments.same_dtype(x=x, weight=weight)
    arguments.non_negative("eps", eps)
    return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps) * weight


@guarded
def compress_kv(m: MLAWeights, h: torch.Tensor) -> torch.Tensor:
    """c_KV = RMSNorm(W_DKV h): (B, T, C) -> (B, T, d_c). This is what MLA caches."""
    arguments.tensor("h", h, 3, "(B, T, C)")
    return rms_norm(m.W_dkv(h), m.kv_norm)


@guarded
def up_project_kv(m: MLAWeights, c_kv: torch.Tensor):
    """k_C = W_UK c_KV and v_C = W_UV c_KV, per head: (B, H, T, d_nope) and (B, H, T, d_v)."""
    arguments.tensor("c_kv", c_kv, 3, "(B, T, d_c)")
    H = m.cfg.n_heads
    return split_heads(m.W_uk(c_kv), H), split_heads(m.W_uv(c_kv), H)


@guarded
def compress_q(m: MLAWeights, h: torch.Tensor):
    """c_Q = RMSNorm(W_DQ h) (B, T, d'_c) and q_C = W_UQ c_Q per head (B, H, T, d_nope)."""
    arguments.tensor("h", h, 3, "(B, T, C)")
    c_q = rms_norm(m.W_dq(h), m.q_norm)
    return c_q, split_heads(m.W_uq(c_q), m.cfg.n_heads)


@guarded
def decoupled_rope(m: MLAWeights, h: torch.Tensor, c_q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q_R = RoPE(W_QR c_Q) per head (B, H, T, d_rope); k_R = RoPE(W_KR h), one for all heads (B, 1, T, d_rope)."""
    arguments.tensor("h", h, 3, "(B, T, C)")
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
    cos, sin = _tables(cfg, torch.arange(T, device=h.device))
    c_q, q_c = compress_q(m, h)  # (B, T, d'_c), (B, H, T, d_nope)
    k_c, v_c = up_project_kv(m, compress_kv(m, h))  # (B, H, T, d_nope), (B, H, T, d_v)
    q_r, k_r = decoupled_rope(m, h, c_q, cos, sin)  # (B, H, T, d_rope), (B, 1, T, d_rope)
    q = torch.cat([q_c, q_r], dim=-1)  # (B, H, T, d_nope + d_rope)
    k = torch.cat([k_c, k_r.expand(B, cfg.n_heads, T, cfg.d_rope)], dim=-1)  # (B, H, T, d_nope + d_rope)
    if cfg.yarn is not None:  # attention scales by 1/sqrt(d_nope + d_rope): YaRN's temperature goes on q
        q = q * (cfg.softmax_scale * math.sqrt(cfg.d_nope + cfg.d_rope))
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
        arguments.tensor("c_kv", c_kv, 3, "(B, T_new, d_c)")
        arguments.tensor("k_r", k_r, 3, "(B, T_new, d_rope)")
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
    cos, sin = _tables(cfg, torch.arange(start, start + T, device=h.device))
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


