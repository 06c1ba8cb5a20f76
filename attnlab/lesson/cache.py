"""KV-cache arithmetic: elements per token, bytes, and what fits beside the weights.

Elements cached per token, summed over layers (DeepSeek-V2, arXiv 2405.04434,
Table 1):

    MHA  2 * n_h * d_h * l        (a key and a value per head)
    GQA  2 * n_g * d_h * l        (a key and a value per K/V group)
    MQA  2 * d_h * l              (one shared key and value)
    MLA  (d_c + d_h^R) * l        (the latent and the one shared RoPE key)

Bytes are elements times the bytes of the cache's dtype. The models' dimensions
are in :mod:`attnlab.models`.
"""
from __future__ import annotations

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
    return mechanism_elements_per_token("MHA", n_layers, n_heads, n_heads, d_head, 0, 0)


@guarded
def gqa_elements_per_token(n_layers: int, n_kv_heads: int, d_head: int) -> int:
    """2 * n_kv_heads * d_head * n_layers: a key and a value per K/V head and layer.

    MHA is the case n_kv_heads = n_heads, MQA the case n_kv_heads = 1.
    """
    return mechanism_elements_per_token("GQA", n_layers, n_kv_heads, n_kv_heads, d_head, 0, 0)


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


@guarded
def mechanism_elements_per_token(mechanism: str, n_layers: int, n_heads: int, n_kv_heads: int, d_head: int,
                                 d_latent: int, d_rope: int, d_v: int | None = None) -> int:
    """Cached elements per token over all layers, for 'MHA', 'GQA', 'MQA' or 'MLA'.

    Keys are ``d_head`` wide and values ``d_v`` (default: ``d_head``); MLA caches
    the latent and the one shared RoPE key instead."""
    if mechanism not in ("MHA", "GQA", "MQA", "MLA"):
        raise ValueError(f"mechanism must be one of 'MHA', 'GQA', 'MQA', 'MLA', got {mechanism!r}")
    if mechanism == "MLA":
        return mla_elements_per_token(n_layers, d_latent, d_rope)
    kv_heads, name = {"MHA": (n_heads, "n_heads"), "GQA": (n_kv_heads, "n_kv_heads"), "MQA": (1, "")}[mechanism]
    for name, value in (("n_layers", n_layers), (name, kv_heads), ("d_head", d_head)):
        arguments.positive_int(name, value)
    if mechanism == "GQA" and n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})")
    return kv_heads * (d_head + (d_head if d_v is None else d_v)) * n_layers  # a key and a value per K/V head


@guarded
def longest_context(gpu_bytes: float, weight_bytes: float, bytes_per_token: int, batch: int = 1) -> int:
    """The most tokens per sequence whose cache fits beside the weights (0 if the weights alone do not fit)."""
    arguments.positive_int("bytes_per_token", bytes_per_token)
    arguments.positive_int("batch", batch)
    free = gpu_bytes - weight_bytes
    return max(0, int(free // (bytes_per_token * batch)))
