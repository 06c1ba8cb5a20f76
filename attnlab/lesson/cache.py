"""KV-cache arithmetic and the real model dimensions behind it.

Elements cached per token, summed over layers (DeepSeek-V2, arXiv 2405.04434,
Table 1):

    MHA  2 * n_h * d_h * l        (a key and a value per head)
    GQA  2 * n_g * d_h * l        (a key and a value per K/V group)
    MQA  2 * d_h * l              (one shared key and value)
    MLA  (d_c + d_h^R) * l        (the latent and the one shared RoPE key)

Bytes are elements times the bytes of the cache's dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnlab import arguments
from attnlab.guard import guarded

GiB = 2**30

_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp8": 1}


def dtype_bytes(dtype) -> int:
    """Bytes per element for a torch dtype or a name: 'fp32', 'bf16', 'fp16', 'fp8'."""
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    if isinstance(dtype, str) and dtype.lower() in _BYTES:
        return _BYTES[dtype.lower()]
    raise ValueError(f"dtype must be a torch.dtype or one of {sorted(_BYTES)}, got {dtype!r}")


@guarded
def mha_elements_per_token(n_layers: int, n_heads: int, d_head: int) -> int:
    """2 * n_heads * d_head * n_layers: a key and a value per head and layer."""
    for name, value in (("n_layers", n_layers), ("n_heads", n_heads), ("d_head", d_head)):
        arguments.positive_int(name, value)
    return 2 * n_heads * d_head * n_layers


@guarded
def gqa_elements_per_token(n_layers: int, n_kv_heads: int, d_head: int) -> int:
    """2 * n_kv_heads * d_head * n_layers: a key and a value per K/V head and layer.

    MHA is the case n_kv_heads = n_heads, MQA the case n_kv_heads = 1.
    """
    for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("d_head", d_head)):
        arguments.positive_int(name, value)
    return 2 * n_kv_heads * d_head * n_layers


@guarded
def mla_elements_per_token(n_layers: int, d_latent: int, d_rope: int) -> int:
    """(d_c + d_h^R) * n_layers: the KV latent and the one shared RoPE key, per layer."""
    for name, value in (("n_layers", n_layers), ("d_latent", d_latent), ("d_rope", d_rope)):
        arguments.positive_int(name, value)
    return (d_latent + d_rope) * n_layers


@guarded
def cache_bytes(elements_per_token: int, seq_len: int, batch: int = 1, dtype="bf16") -> int:
    """Bytes of a cache holding ``seq_len`` tokens for each of ``batch`` sequences."""
    for name, value in (("elements_per_token", elements_per_token), ("seq_len", seq_len), ("batch", batch)):
        arguments.positive_int(name, value)
    return elements_per_token * seq_len * batch * dtype_bytes(dtype)


@dataclass(frozen=True)
class ModelPreset:
    """Attention dimensions of a released model, with where they come from."""

    name: str
    n_layers: int
    n_heads: int
    d_head: int
    n_params: float  # parameters, to compare the cache with the weights
    source: str
    n_kv_heads: int | None = None  # None: as many as query heads (MHA)

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def is_mha(self) -> bool:
        return self.kv_heads == self.n_heads


PRESETS = {
    p.name: p
    for p in [
        ModelPreset("Llama-2-7B", 32, 32, 128, 6.74e9, "Llama 2, arXiv 2307.09288, section 2.2 (LLaMA's architecture, arXiv 2302.13971, Table 2; plain MHA)"),
        ModelPreset("Llama-2-13B", 40, 40, 128, 13.0e9, "Llama 2, arXiv 2307.09288, section 2.2 (LLaMA's architecture, arXiv 2302.13971, Table 2; plain MHA)"),
        ModelPreset(
            "DeepSeek-V3 dims as MHA", 61, 128, 128, 671e9,
            "DeepSeek-V3 inference/configs/config_671B.json: 61 layers, 128 heads; "
            "K and V of 128 dims each, as a plain MHA model would cache them",
        ),
        ModelPreset("Llama-3-8B", 32, 32, 128, 8.03e9, "Llama 3 Herd, arXiv 2407.21783, Table 3", n_kv_heads=8),
        ModelPreset("Llama-3-70B", 80, 64, 128, 70.6e9, "Llama 3 Herd, arXiv 2407.21783, Table 3", n_kv_heads=8),
    ]
}


def format_bytes(n: float) -> str:
    """1536 -> '1.50 KiB'; powers of two, as memory is sold and allocated.
    Past the exbibytes a number stays short: '8.67e+06 EiB', not 22 digits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            if unit == "B":
                return f"{n:.0f} {unit}"
            return f"{n:.2f} {unit}" if abs(n) < 1e4 else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- workbook 05: all four mechanisms


@dataclass(frozen=True)
class ExplorerPreset:
    """A model for the cache explorer. d_head is the K/V head width the MHA, GQA and
    MQA comparisons use; d_latent and d_rope the MLA dimensions (for models without
    MLA, DeepSeek-V2's rule d_c = 4 d_h, d_h^R = d_h / 2)."""

    name: str
    ships_with: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_latent: int
    d_rope: int
    n_params: float
    source: str


# The models that ship with MLA have no K/V heads: their n_kv_heads of 8 is an
# assumption (Llama 3's count) for the explorer's GQA line, not a published figure.
EXPLORER_PRESETS = {
    p.name: p
    for p in [
        ExplorerPreset("Llama-3-8B", "GQA", 32, 32, 8, 128, 512, 64, 8.03e9, "Llama 3 Herd, arXiv 2407.21783, Table 3"),
        ExplorerPreset("Llama-3-70B", "GQA", 80, 64, 8, 128, 512, 64, 70.6e9, "Llama 3 Herd, arXiv 2407.21783, Table 3"),
        ExplorerPreset("DeepSeek-V2", "MLA", 60, 128, 8, 128, 512, 64, 236e9, "DeepSeek-V2, arXiv 2405.04434, section 3.1.2"),
        ExplorerPreset("DeepSeek-V3", "MLA", 61, 128, 8, 128, 512, 64, 671e9, "DeepSeek-V3 config_671B.json"),
        ExplorerPreset("Kimi K2", "MLA", 61, 64, 8, 128, 512, 64, 1.04e12, "Kimi K2 technical report, arXiv 2507.20534"),
    ]
}

# What each card reports, in bytes (nvidia-smi's total, MiB): the names are
# round figures. RTX 4090 "24 GB": 24,564 MiB (RLinf/RLinf#255); H100 "80 GB":
# 81,559 MiB (NVIDIA/nccl#1264, modal-labs/modal-client#2797); H200 "141 GB":
# 143,771 MiB (seen on the course's own H200, 2026-10-27).
GPUS = {"24 GB": 24_564 * 2**20, "80 GB": 81_559 * 2**20, "141 GB": 143_771 * 2**20}


@guarded
def mechanism_elements_per_token(mechanism: str, n_layers: int, n_heads: int, n_kv_heads: int, d_head: int,
                                 d_latent: int, d_rope: int) -> int:
    """Cached elements per token over all layers, for 'MHA', 'GQA', 'MQA' or 'MLA'."""
    if mechanism == "MHA":
        return mha_elements_per_token(n_layers, n_heads, d_head)
    if mechanism == "GQA":
        if n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})")
        return gqa_elements_per_token(n_layers, n_kv_heads, d_head)
    if mechanism == "MQA":
        return gqa_elements_per_token(n_layers, 1, d_head)
    if mechanism == "MLA":
        return mla_elements_per_token(n_layers, d_latent, d_rope)
    raise ValueError(f"mechanism must be one of 'MHA', 'GQA', 'MQA', 'MLA', got {mechanism!r}")


@guarded
def longest_context(gpu_bytes: float, weight_bytes: float, bytes_per_token: int, batch: int = 1) -> int:
    """The most tokens per sequence whose cache fits beside the weights (0 if the weights alone do not fit)."""
    arguments.positive_int("bytes_per_token", bytes_per_token)
    arguments.positive_int("batch", batch)
    free = gpu_bytes - weight_bytes
    return max(0, int(free // (bytes_per_token * batch)))
