"""One MLA layer's weights as the released checkpoints store them: load, save, and dequantise fp8.

Two namings of the same seven tensors:

==========================  =========  ===============================================
Hugging Face                DeepSeek   shape, and what it holds
==========================  =========  ===============================================
q_a_proj                    wq_a       (d'_c, C): W_DQ
q_a_layernorm               q_norm     (d'_c,): the query latent's RMSNorm weight
q_b_proj                    wq_b       (H (d_nope + d_rope), d'_c): per head, W_UQ's
                                       d_nope rows, then W_QR's d_rope rows
kv_a_proj_with_mqa          wkv_a      (d_c + d_rope, C): W_DKV's rows, then W_KR's
kv_a_layernorm              kv_norm    (d_c,): the KV latent's RMSNorm weight
kv_b_proj                   wkv_b      (H (d_nope + d_v), d_c): per head, W_UK's d_nope
                                       rows, then W_UV's d_v rows
o_proj                      wo         (C, H d_v): W_O
==========================  =========  ===============================================

(``transformers``' DeepseekV3Attention and DeepseekV2Attention; DeepSeek-V3's
``inference/model.py``.) The released checkpoints lay RoPE out in interleaved
pairs, as :class:`~attnlab.answers.MLAWeights` does; a checkpoint converted
to the rotate-half layout has its RoPE rows permuted per head (workbook 03),
which ``layout="rotate_half"`` undoes on load and redoes on save. DeepSeek-V3
ships its projections in ``float8_e4m3fn`` with one float32 scale per 128×128
block (``<name>.weight_scale_inv``, DeepSeek's converter: ``<name>.scale``):
the weight is the fp8 value times its block's scale.
"""
from __future__ import annotations

import math

import torch

from attnlab.answers import MLAWeights

HF_TO_DEEPSEEK = {"q_a_proj": "wq_a", "q_a_layernorm": "q_norm", "q_b_proj": "wq_b",
                  "kv_a_proj_with_mqa": "wkv_a", "kv_a_layernorm": "kv_norm", "kv_b_proj": "wkv_b", "o_proj": "wo"}
NAMINGS = ("hf", "deepseek")
LAYOUTS = ("interleaved", "rotate_half")
BLOCK = 128  # DeepSeek-V3's fp8 scales: one per 128 x 128 block of a weight


def expected_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """The seven tensors of an MLA layer with ``cfg``'s dimensions, by their Hugging Face names."""
    C, H, dq, dc = cfg.d_model, cfg.n_heads, cfg.d_q_latent, cfg.d_latent
    return {"q_a_proj.weight": (dq, C), "q_a_layernorm.weight": (dq,),
            "q_b_proj.weight": (H * (cfg.d_nope + cfg.d_rope), dq),
            "kv_a_proj_with_mqa.weight": (dc + cfg.d_rope, C), "kv_a_layernorm.weight": (dc,),
            "kv_b_proj.weight": (H * (cfg.d_nope + cfg.d_v), dc), "o_proj.weight": (C, H * cfg.d_v)}


def _named(hf_name: str, naming: str) -> str:
    module, leaf = hf_name.split(".")
    return f"{HF_TO_DEEPSEEK[module]}.{leaf}" if naming == "deepseek" else hf_name


def _scale_name(name: str, naming: str) -> str:
    return name.replace(".weight", ".scale") if naming == "deepseek" else name + "_scale_inv"


def dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """An fp8 weight (out, in) times its per-block float32 scales (ceil(out/block), ceil(in/block)): float32."""
    rows, cols = weight.shape
    want = (math.ceil(rows / block), math.ceil(cols / block))
    if tuple(scale_inv.shape) != want:
        raise ValueError(f"the scales of a {rows} x {cols} weight must have shape {want} "
                         f"(one per {block} x {block} block), got {tuple(scale_inv.shape)}")
    scales = scale_inv.float().repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    return weight.float() * scales


def _naming_of(state_dict: dict) -> str:
    if "q_a_proj.weight" in state_dict:
        return "hf"
    if "wq_a.weight" in state_dict:
        return "deepseek"
    first = next(iter(state_dict), "(nothing)")
    raise ValueError(f"{first} does not fit an MLA layer: expected Hugging Face's names (q_a_proj.weight, "
                     f"kv_a_proj_with_mqa.weight, ...) or DeepSeek's (wq_a.weight, wkv_a.weight, ...)")


def _tensor(state_dict: dict, hf_name: str, naming: str, shape: tuple) -> torch.Tensor:
    name = _named(hf_name, naming)
    if name not in state_dict:
        raise ValueError(f"{name} is missing: expected a tensor of shape {shape}")
    t = state_dict[name]
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; this MLA layer expects {shape}")
    if t.dtype == torch.float8_e4m3fn:
        scale = _scale_name(name, naming)
        if scale not in state_dict:
            raise ValueError(f"{name} is fp8 but {scale} (its per-block scales) is missing")
        return dequantize(t, state_dict[scale])
    return t


def rope_rows(W: torch.Tensor, n_heads: int, to: str) -> torch.Tensor:
    """Each head's d_rope rows between the interleaved and rotate-half orders."""
    D = W.shape[0] // n_heads
    if to == "rotate_half":  # (x0, x1, x2, x3, ...) -> (x0, x2, ..., x1, x3, ...)
        return W.reshape(n_heads, D // 2, 2, -1).transpose(1, 2).reshape(W.shape)
    return W.reshape(n_heads, 2, D // 2, -1).transpose(1, 2).reshape(W.shape)


def _check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


@torch.no_grad()
def load(m: MLAWeights, state_dict: dict, layout: str = "interleaved", prefix: str = "") -> MLAWeights:
    """Copy one attention layer of a checkpoint into ``m`` (in place; returns it). ``prefix`` is stripped
    from the names (``"model.layers.0.self_attn."``); the naming, Hugging Face's or DeepSeek's, is read
    from the names; fp8 weights are dequantised with their block scales."""
    _check_choice("layout", layout, LAYOUTS)
    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    naming, cfg = _naming_of(sd), m.cfg
    H, n, r, dc = cfg.n_heads, cfg.d_nope, cfg.d_rope, cfg.d_latent
    t = {k: _tensor(sd, k, naming, shape) for k, shape in expected_shapes(cfg).items()}
    q_b = t["q_b_proj.weight"].reshape(H, n + r, -1)  # (H, d_nope + d_rope, d'_c)
    kv_a, kv_b = t["kv_a_proj_with_mqa.weight"], t["kv_b_proj.weight"].reshape(H, n + cfg.d_v, dc)
    W_qr, W_kr = q_b[:, n:].reshape(H * r, -1), kv_a[dc:]
    if layout == "rotate_half":
        W_qr, W_kr = rope_rows(W_qr, H, "interleaved"), rope_rows(W_kr, 1, "interleaved")
    for param, value in [(m.W_dq.weight, t["q_a_proj.weight"]), (m.q_norm, t["q_a_layernorm.weight"]),
                         (m.W_uq.weight, q_b[:, :n].reshape(H * n, -1)), (m.W_qr.weight, W_qr),
                         (m.W_dkv.weight, kv_a[:dc]), (m.W_kr.weight, W_kr), (m.kv_norm, t["kv_a_layernorm.weight"]),
                         (m.W_uk.weight, kv_b[:, :n].reshape(H * n, dc)), (m.W_uv.weight, kv_b[:, n:].reshape(-1, dc)),
                         (m.W_o.weight, t["o_proj.weight"])]:
        param.copy_(value)
    return m


@torch.no_grad()
def save(m: MLAWeights, naming: str = "hf", layout: str = "interleaved", prefix: str = "") -> dict:
    """``m`` as a checkpoint's state dict (new tensors, in ``m``'s dtype): :func:`load`'s inverse."""
    _check_choice("naming", naming, NAMINGS)
    _check_choice("layout", layout, LAYOUTS)
    cfg = m.cfg
    H, n, r = cfg.n_heads, cfg.d_nope, cfg.d_rope
    W_qr, W_kr = m.W_qr.weight, m.W_kr.weight
    if layout == "rotate_half":
        W_qr, W_kr = rope_rows(W_qr, H, "rotate_half"), rope_rows(W_kr, 1, "rotate_half")
    q_b = torch.cat([m.W_uq.weight.reshape(H, n, -1), W_qr.reshape(H, r, -1)], dim=1)  # (H, d_nope + d_rope, d'_c)
    kv_b = torch.cat([m.W_uk.weight.reshape(H, n, -1), m.W_uv.weight.reshape(H, cfg.d_v, -1)], dim=1)
    hf = {"q_a_proj.weight": m.W_dq.weight, "q_a_layernorm.weight": m.q_norm, "q_b_proj.weight": q_b.reshape(H * (n + r), -1),
          "kv_a_proj_with_mqa.weight": torch.cat([m.W_dkv.weight, W_kr]), "kv_a_layernorm.weight": m.kv_norm,
          "kv_b_proj.weight": kv_b.reshape(-1, cfg.d_latent), "o_proj.weight": m.W_o.weight}
    return {prefix + _named(k, naming): v.detach().clone() for k, v in hf.items()}
