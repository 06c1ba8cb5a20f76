"""The course's attention is the one in Hugging Face transformers: tiny random layers, weights copied across.

Tolerances: the course computes in float64 here; transformers runs its RMSNorm
in float32 whatever the input (``hidden_states.to(torch.float32)``) and forms
its RoPE angles in float32, so outputs agree to about 1e-6 relative, not 1e-12.
Angles in float32 drift with the position (about 1e-7 radians per unit of m),
so the tables are compared at positions below 1,000.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from transformers.cache_utils import DynamicCache
from transformers.models.deepseek_v2 import modeling_deepseek_v2 as v2
from transformers.models.deepseek_v2.configuration_deepseek_v2 import DeepseekV2Config
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as v3
from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
from transformers.models.llama import modeling_llama as llama
from transformers.models.llama.configuration_llama import LlamaConfig

from attnlab import answers
from attnlab.lesson import checkpoints
from attnlab.models import MLAConfig

TOL = dict(atol=1e-6, rtol=1e-5)  # float32 norms and angles inside transformers (see above)
MLA = MLAConfig("parity", 32, 4, 12, 10, 6, 4, 5, 1)  # transformers wants heads to divide the width
YARN = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32.0,
        "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "rope_theta": 10000.0}


def mla_config(cls, **extra):
    c = MLA
    kwargs = dict(hidden_size=c.d_model, num_attention_heads=c.n_heads, num_key_value_heads=c.n_heads,
                  q_lora_rank=c.d_q_latent, kv_lora_rank=c.d_latent, qk_nope_head_dim=c.d_nope,
                  qk_rope_head_dim=c.d_rope, v_head_dim=c.d_v, vocab_size=16, num_hidden_layers=1,
                  attn_implementation="eager")
    return cls(**{**kwargs, **extra})


def causal(T_new: int, T: int) -> torch.Tensor:
    """An additive (1, 1, T_new, T) mask: the new tokens are the last T_new of T."""
    return torch.full((T_new, T), float("-inf"), dtype=torch.float64).triu(T - T_new + 1)[None, None]


def random_layer(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.2) + (1.0 if p.ndim == 1 else 0.0))
    return module.double().eval()


@pytest.mark.parametrize("family", ["v3", "v2"])
def test_the_naive_mla_forward_is_deepseeks_attention_in_transformers(family):
    modeling, config = (v3, DeepseekV3Config) if family == "v3" else (v2, DeepseekV2Config)
    cfg = mla_config(config)
    hf = random_layer(modeling.__dict__[f"Deepseek{family.upper()}Attention"](cfg, 0), seed=1)
    rotary = modeling.__dict__[f"Deepseek{family.upper()}RotaryEmbedding"](cfg)
    m = checkpoints.load(answers.MLAWeights(MLA).double(), hf.state_dict())
    x = torch.randn(2, 7, MLA.d_model, dtype=torch.float64)
    position_embeddings = rotary(x, torch.arange(7)[None].expand(2, -1))
    with torch.no_grad():
        want = hf(hidden_states=x, position_embeddings=position_embeddings, attention_mask=causal(7, 7))[0]
        torch.testing.assert_close(answers.mla_forward(m, x), want, **TOL)


def test_prefill_then_absorbed_decode_steps_match_transformers_and_its_cached_latent():
    cfg = mla_config(DeepseekV3Config)
    hf = random_layer(v3.DeepseekV3Attention(cfg, 0), seed=2)
    rotary = v3.DeepseekV3RotaryEmbedding(cfg)
    m = checkpoints.load(answers.MLAWeights(MLA).double(), hf.state_dict())
    x = torch.randn(2, 9, MLA.d_model, dtype=torch.float64)
    hf_cache, cache = DynamicCache(config=cfg), answers.LatentCache()
    start = 0
    with torch.no_grad():
        for chunk in (5, 1, 1, 2):  # a prompt of 5, then decode steps of 1, 1 and 2 tokens
            h = x[:, start:start + chunk]
            pos = torch.arange(start, start + chunk)[None].expand(2, -1)
            want = hf(h, rotary(h, pos), causal(chunk, start + chunk), cache=hf_cache)[0]
            got = answers.mla_absorbed_step(m, h, cache)
            torch.testing.assert_close(got, want, **TOL)
            start += chunk
        latent, rope_key = hf_cache.layers[0].keys, hf_cache.layers[0].values  # (B, 1, T, d_c), (B, 1, T, d_rope)
        torch.testing.assert_close(cache.c_kv, latent[:, 0], **TOL)
        # transformers rotates the interleaved pairs and writes the result in halves (even features, then odd):
        # the same rotated key, its features in the rotate-half order
        halves = torch.cat([cache.k_r[..., 0::2], cache.k_r[..., 1::2]], dim=-1)
        torch.testing.assert_close(halves, rope_key[:, 0], **TOL)


def test_yarn_tables_and_scale_are_transformers():
    cfg = mla_config(DeepseekV3Config, rope_parameters=YARN, max_position_embeddings=163840)
    rotary = v3.DeepseekV3RotaryEmbedding(cfg)
    torch.testing.assert_close(answers.yarn_frequencies(MLA.d_rope, 10000.0, 40.0, 4096, 32.0, 1.0),
                               rotary.inv_freq.float(), atol=1e-8, rtol=1e-6)
    assert rotary.attention_scaling == 1.0  # mscale == mscale_all_dim: the temperature goes into the softmax scale
    scale = v3.DeepseekV3Attention(cfg, 0).scaling
    assert scale == pytest.approx(answers.yarn_softmax_scale(MLA.d_nope + MLA.d_rope, 40.0, 1.0), rel=1e-12)
    wide = dict(YARN, factor=8.0, rope_theta=500000.0, original_max_position_embeddings=8192)
    rotary = v3.DeepseekV3RotaryEmbedding(mla_config(DeepseekV3Config, rope_parameters=wide,
                                                     qk_rope_head_dim=128, max_position_embeddings=65536))
    torch.testing.assert_close(answers.yarn_frequencies(128, 500000.0, 8.0, 8192, 32.0, 1.0),
                               rotary.inv_freq.float(), atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])  # MHA, GQA, MQA
@pytest.mark.parametrize("rope", [True, False])
def test_gqa_with_and_without_rope_is_llama_attention(n_kv_heads, rope):
    C, H, D, T = 32, 4, 8, 6
    cfg = LlamaConfig(hidden_size=C, num_attention_heads=H, num_key_value_heads=n_kv_heads, head_dim=D,
                      vocab_size=16, num_hidden_layers=1, attn_implementation="eager")
    hf = random_layer(llama.LlamaAttention(cfg, 0), seed=3)
    x = torch.randn(2, T, C, dtype=torch.float64)
    sd = hf.state_dict()
    W_q, W_k, W_v, W_o = (sd[f"{n}_proj.weight"] for n in "qkvo")
    if rope:  # transformers keeps Llama in the rotate-half layout; the course rotates interleaved pairs
        cos, sin = llama.LlamaRotaryEmbedding(cfg)(x, torch.arange(T)[None].expand(2, -1))
        W_q, W_k = checkpoints.rope_rows(W_q, H, "interleaved"), checkpoints.rope_rows(W_k, n_kv_heads, "interleaved")
        got = answers.rope_gqa_step(x, W_q, W_k, W_v, W_o, H, n_kv_heads, answers.KVCache())
    else:  # no rotation: cos 1, sin 0
        cos, sin = torch.ones(2, T, D, dtype=torch.float64), torch.zeros(2, T, D, dtype=torch.float64)
        got = answers.gqa_forward(x, W_q, W_k, W_v, W_o, H, n_kv_heads)
    with torch.no_grad():
        torch.testing.assert_close(got, hf(x, (cos, sin), causal(T, T))[0], **TOL)


def test_rope_tables_in_both_layouts_are_transformers():
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16, vocab_size=16, num_hidden_layers=1)
    positions = torch.tensor([0, 1, 7, 100, 999])
    cos, sin = llama.LlamaRotaryEmbedding(cfg)(torch.zeros(1, dtype=torch.float64), positions[None])
    want_cos, want_sin = answers.rope_tables(positions, 16)
    # transformers' tables are cat(freqs, freqs): the rotate-half layout repeats the interleaved pairs' angles
    torch.testing.assert_close(cos[0].float(), torch.cat([want_cos, want_cos], -1), atol=1e-4, rtol=0)
    torch.testing.assert_close(sin[0].float(), torch.cat([want_sin, want_sin], -1), atol=1e-4, rtol=0)
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    rotated = x * cos + llama.rotate_half(x) * sin  # transformers' apply_rotary_pos_emb on one tensor
    perm = checkpoints.rope_rows(torch.eye(16, dtype=torch.float64), 1, "rotate_half")  # interleaved -> halves
    ours = answers.rope_interleaved(x @ perm, want_cos.double(), want_sin.double()) @ perm.T
    torch.testing.assert_close(ours, rotated, atol=1e-4, rtol=0)


def test_with_yarn_the_mla_forward_and_absorbed_decode_are_deepseek_v3_as_released():
    """The model table's YaRN settings (DeepSeek-V3: factor 40, betas 32 and 1, mscale 1) in both implementations,
    for a prompt and for decode steps at positions past the original 4K context."""
    from attnlab.models import MODELS

    y = MODELS["DeepSeek-V3"].yarn
    yarn_cfg = dataclasses.replace(MLA, yarn=y)
    hf_cfg = mla_config(DeepseekV3Config, max_position_embeddings=163840, rope_parameters={
        "rope_type": "yarn", "factor": y.factor, "original_max_position_embeddings": y.original_len,
        "beta_fast": y.beta_fast, "beta_slow": y.beta_slow, "mscale": y.mscale, "mscale_all_dim": y.mscale_all_dim,
        "rope_theta": 10000.0})
    hf = random_layer(v3.DeepseekV3Attention(hf_cfg, 0), seed=6)
    rotary = v3.DeepseekV3RotaryEmbedding(hf_cfg)
    m = checkpoints.load(answers.MLAWeights(yarn_cfg).double(), hf.state_dict())
    assert yarn_cfg.softmax_scale == pytest.approx(hf.scaling, rel=1e-12)
    x = torch.randn(2, 6, MLA.d_model, dtype=torch.float64)
    with torch.no_grad():
        prompt = hf(hidden_states=x, position_embeddings=rotary(x, torch.arange(6)[None].expand(2, -1)),
                    attention_mask=causal(6, 6))[0]
        torch.testing.assert_close(answers.mla_forward(m, x), prompt, **TOL)
        # 5,000 tokens already cached (the same latents and rotated RoPE keys in both caches), then 2 + 1 new ones
        P = 5000
        c_kv, k_r = torch.randn(2, P, MLA.d_latent, dtype=torch.float64), torch.randn(2, P, MLA.d_rope, dtype=torch.float64)
        cache, hf_cache = answers.LatentCache(), DynamicCache(config=hf_cfg)
        cache.update(c_kv, k_r)
        hf_cache.update(c_kv[:, None], torch.cat([k_r[..., 0::2], k_r[..., 1::2]], -1)[:, None], 0)
        for lo, hi in ((0, 2), (2, 3)):
            h, pos = x[:, lo:hi], torch.arange(P + lo, P + hi)[None].expand(2, -1)
            want = hf(hidden_states=h, position_embeddings=rotary(h, pos), attention_mask=causal(hi - lo, P + hi),
                      cache=hf_cache)[0]
            torch.testing.assert_close(answers.mla_absorbed_step(m, h, cache), want, **TOL)
