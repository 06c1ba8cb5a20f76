"""The released models and the GPUs the course computes with: one table, each row with its source.

Every model dimension, parameter count and GPU memory size in the workbooks,
the widgets and the benchmark comes from here. What a row cannot say (a
hypothetical MLA version of Llama 3, say) is assumed where it is used, and
said there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class YaRN:
    """A model's YaRN context extension, as its config's ``rope_scaling`` gives it (arXiv 2309.00071)."""

    factor: float  # how many times the original context
    original_len: int  # original_max_position_embeddings: the context the model was pre-trained at
    beta_fast: float  # pairs turning more often than this over original_len keep their frequency
    beta_slow: float  # pairs turning less often than this are interpolated by factor
    mscale: float  # YaRN's attention temperature, 0.1 * mscale * ln(factor) + 1, on the tables
    mscale_all_dim: float  # the same on the softmax scale, squared (DeepSeek); mscale / mscale_all_dim on the tables


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
    rope_base: float = 10000.0  # rope_theta
    yarn: YaRN | None = None  # the context extension, as released (None: plain RoPE)

    @property
    def softmax_scale(self) -> float:
        """1/sqrt(d_nope + d_rope); with YaRN, times its temperature squared (workbook 03, section 7)."""
        if self.yarn is None:
            return 1.0 / math.sqrt(self.d_nope + self.d_rope)
        from attnlab.answers import yarn_softmax_scale

        return yarn_softmax_scale(self.d_nope + self.d_rope, self.yarn.factor, self.yarn.mscale_all_dim)


@dataclass(frozen=True)
class Model:
    """A released model's attention dimensions and size.

    ``d_head`` is a key's (and a value's) width per head; for MLA models it is
    the compressed part of a query/key head (``qk_nope_head_dim``), and the MLA
    fields hold the rest."""

    name: str
    attention: str  # what it ships with: "MHA", "GQA" or "MLA"
    n_layers: int
    n_heads: int
    d_head: int
    n_params: float  # parameters, to compare the cache with the weights
    source: str
    n_kv_heads: int | None = None  # GQA's K/V heads; None: as many as query heads
    d_model: int | None = None  # MLA only, from here on
    d_latent: int | None = None  # kv_lora_rank
    d_q_latent: int | None = None  # q_lora_rank
    d_rope: int | None = None  # qk_rope_head_dim
    d_v: int | None = None  # v_head_dim
    rope_theta: float = 10000.0  # RoPE's base
    yarn: YaRN | None = None  # the context extension the released model runs with

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def is_mha(self) -> bool:
        return self.attention == "MHA"

    @property
    def softmax_scale(self) -> float:
        """The released model's softmax scale: 1/sqrt(query/key width), times YaRN's temperature squared."""
        from attnlab.answers import yarn_softmax_scale

        d_qk = self.d_head + (self.d_rope or 0)
        return yarn_softmax_scale(d_qk, self.yarn.factor, self.yarn.mscale_all_dim) if self.yarn else d_qk ** -0.5

    def mla_config(self) -> MLAConfig:
        """One MLA layer of this model (with its layer count)."""
        if self.attention != "MLA":
            raise ValueError(f"{self.name} ships with {self.attention}, not MLA")
        return MLAConfig(self.name, self.d_model, self.n_heads, self.d_latent, self.d_q_latent, self.d_head,
                         self.d_rope, self.d_v, self.n_layers, self.rope_theta, self.yarn)


_LLAMA2 = "Llama 2, arXiv 2307.09288, section 2.2 (LLaMA's architecture, arXiv 2302.13971, Table 2; plain MHA)"
_LLAMA3 = "Llama 3 Herd, arXiv 2407.21783, Table 3"

# DeepSeek-V2 and V3 extend a 4K pre-training context by YaRN; their released
# configs (and DeepSeek-V3's inference code, whose max_seq_len of 16384 exceeds
# original_seq_len) always run with it on.
_V2_YARN = YaRN(40, 4096, 32, 1, 0.707, 0.707)  # deepseek-ai/DeepSeek-V2 config.json, rope_scaling
_V3_YARN = YaRN(40, 4096, 32, 1, 1.0, 1.0)  # DeepSeek-V3 inference/model.py ModelArgs: rope_factor, mscale
_K2_YARN = YaRN(64, 4096, 1, 1, 1.0, 1.0)  # moonshotai/Kimi-K2-Instruct-0905 config.json, rope_scaling

MODELS = {
    m.name: m
    for m in [
        Model("Llama-2-7B", "MHA", 32, 32, 128, 6.74e9, _LLAMA2),
        Model("Llama-2-13B", "MHA", 40, 40, 128, 13.0e9, _LLAMA2),
        Model("Llama-3-8B", "GQA", 32, 32, 128, 8.03e9, _LLAMA3, n_kv_heads=8, rope_theta=500_000.0),
        Model("Llama-3-70B", "GQA", 80, 64, 128, 70.6e9, _LLAMA3, n_kv_heads=8, rope_theta=500_000.0),
        Model("DeepSeek-V2", "MLA", 60, 128, 128, 236e9, "DeepSeek-V2, arXiv 2405.04434, section 3.1.2",
              d_model=5120, d_latent=512, d_q_latent=1536, d_rope=64, d_v=128, yarn=_V2_YARN),
        Model("DeepSeek-V3", "MLA", 61, 128, 128, 671e9, "DeepSeek-V3 inference/configs/config_671B.json",
              d_model=7168, d_latent=512, d_q_latent=1536, d_rope=64, d_v=128, yarn=_V3_YARN),
        Model("Kimi K2", "MLA", 61, 64, 128, 1.04e12, "Kimi K2 technical report, arXiv 2507.20534; "
              "moonshotai/Kimi-K2-Instruct-0905 config.json", d_model=7168, d_latent=512, d_q_latent=1536,
              d_rope=64, d_v=128, rope_theta=50_000.0, yarn=_K2_YARN),
    ]
}

# The same structure as DeepSeek's MLA, small enough for a CPU in seconds.
TINY_MLA = MLAConfig("tiny", 64, 4, 16, 24, 8, 4, 8, 2)

# What each card reports, in bytes (nvidia-smi's total, MiB): the names are
# round figures. RTX 4090 "24 GB": 24,564 MiB (RLinf/RLinf#255); H100 "80 GB":
# 81,559 MiB (NVIDIA/nccl#1264, modal-labs/modal-client#2797); H200 "141 GB":
# 143,771 MiB (seen on the course's own H200, 2026-10-27).
GPUS = {"24 GB": 24_564 * 2**20, "80 GB": 81_559 * 2**20, "141 GB": 143_771 * 2**20}
