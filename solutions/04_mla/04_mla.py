# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Multi-head latent attention (MLA)
#
# GQA shrinks the cache by giving several query heads one key and value. MLA,
# introduced in DeepSeek-V2 (arXiv 2405.04434, §2.1) and used by DeepSeek-V3,
# R1 and Kimi K2, shrinks it differently: every head keeps its own keys and
# values, but they are all **decompressed from one small latent vector per
# token**, and only that latent is cached. At DeepSeek-V3's size that is 576
# numbers per token and layer, where plain MHA with 128 heads would cache
# 32,768. DeepSeek-V2's Table 9 compares the two on two MoE models: MLA is
# ahead of MHA on 7 of its 8 benchmark-and-size cells (the exception: C-Eval
# on the small model, MHA 51.6 against MLA 50.9).
#
# Making that small cache also *fast* takes two tricks: the up-projections are
# **absorbed** into the query and output sides, so the latent is never
# decompressed at decode time, and RoPE, which workbook 03 showed blocks
# absorption, is moved into a separate, **decoupled** part of each query and key.
#
# **You will build**, following DeepSeek-V2 §2.1 and DeepSeek-V3's configuration:
# 1. RMSNorm;
# 2. the joint KV compression and its up-projections;
# 3. the query compression;
# 4. decoupled RoPE, with **one** RoPE key shared by all heads;
# 5. the naive (training-time) MLA forward;
# 6. the absorbed decode path that caches only the latent and the RoPE key;
# 7. the backward pass through the compression;
# 8. the cache per token, and the 488 GiB → 8.58 GiB arithmetic (56.9×, not 64×).
#
# **You need** workbooks 01 to 03: attention, heads, caches, RoPE. Their answers
# come with the course package.
#
# **Time** about 2 hours.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import math

import matplotlib.pyplot as plt
import torch

import attnlab
from attnlab import answers
from attnlab.checks import exercise, expect_close, expect_shape, number, storage_watch
from attnlab.lesson import cache as cache_math
# Workbooks 01-03's answers and the MLA layer's weights, from the course package.
from attnlab.answers import MLAWeights, attention, merge_heads, rope_interleaved, rope_tables, split_heads
# The released models' dimensions, each with its source, and a tiny MLA of the same structure.
from attnlab.models import MODELS, TINY_MLA

torch.manual_seed(0)
device = attnlab.pick_device()
print(f"torch {torch.__version__}, running on {device}")

# %% [markdown]
# ## The layer, and its configuration
#
# An MLA layer has these weights (DeepSeek-V2 eqs. 9–19; the names in
# DeepSeek-V3's code in brackets):
#
# | weight | shape `(out, in)` | role |
# | --- | --- | --- |
# | `W_dkv` [`wkv_a`] | `(d_c, C)` | compresses $h_t$ into the KV latent $c^{KV}_t$ |
# | `kv_norm` | `(d_c,)` | RMSNorm on that latent |
# | `W_uk`, `W_uv` [`wkv_b`] | `(H·d_nope, d_c)`, `(H·d_v, d_c)` | decompress keys and values per head |
# | `W_dq` [`wq_a`], `q_norm` | `(d'_c, C)`, `(d'_c,)` | compress the query input, then RMSNorm |
# | `W_uq` [`wq_b`] | `(H·d_nope, d'_c)` | decompress the queries |
# | `W_qr` [`wq_b`] | `(H·d_rope, d'_c)` | each head's RoPE query part |
# | `W_kr` [`wkv_a`] | `(d_rope, C)` | **one** RoPE key part, shared by all heads |
# | `W_o` [`wo`] | `(C, H·d_v)` | output projection |
#
# The layer `m` also carries its sizes: `m.cfg.n_heads`, `m.cfg.d_nope`,
# `m.cfg.d_rope`, `m.cfg.d_v`, `m.cfg.d_latent`, `m.cfg.d_q_latent`. Read them
# from `m.cfg` in your functions, never from the global `cfg` below: the tests
# use layers of other sizes.
#
# DeepSeek-V3 (`inference/configs/config_671B.json`): `C` = 7168, 128 heads,
# `d_c` = 512 (`kv_lora_rank`), `d'_c` = 1536 (`q_lora_rank`), `d_nope` = 128,
# `d_rope` = 64, `d_v` = 128, 61 layers. `TINY_MLA` has the same
# structure at a size that runs in milliseconds; the tests use it and others.

# %%
for c in [MODELS[name].mla_config() for name in ("DeepSeek-V2", "DeepSeek-V3", "Kimi K2")] + [TINY_MLA]:
    print(f"{c.name:>12}: C={c.d_model}, heads={c.n_heads}, d_c={c.d_latent}, d'_c={c.d_q_latent}, "
          f"d_nope={c.d_nope}, d_rope={c.d_rope}, d_v={c.d_v}, layers={c.n_layers}, scale=1/sqrt({c.d_nope + c.d_rope})")
cfg = TINY_MLA
m = MLAWeights(cfg).to(device)

# %% [markdown]
# ## 1 · RMSNorm
#
# DeepSeek puts an RMSNorm (Zhang and Sennrich 2019, arXiv 1910.07467) after
# each compressed latent: it divides by the root mean square over the feature
# axis (no mean subtraction, unlike LayerNorm), then scales by a learned weight:
#
# $$\mathrm{RMSNorm}(x) = \frac{x}{\sqrt{\tfrac{1}{d}\sum_i x_i^2 + \epsilon}} \odot w .$$

# %% nbgrader={"grade": false, "grade_id": "rms_norm", "locked": false, "schema_version": 3, "solution": true, "task": false}
def rms_norm(x, weight, eps=1e-6):
    """RMSNorm over the last axis of x (..., d), scaled by weight (d,)."""
    ### BEGIN SOLUTION
    return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps) * weight
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_rms_norm", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
x = torch.tensor([[3.0, 4.0], [1.0, 1.0]], device=device)
w = torch.tensor([1.0, 2.0], device=device)
with exercise("rms_norm"):
    got = rms_norm(x, w)
want = torch.tensor([[3 / 12.5**0.5, 8 / 12.5**0.5], [1.0, 2.0]], device=device)
expect_close(got, want, "rms_norm([[3, 4], [1, 1]], weight=[1, 2])", atol=1e-5,
             suspects={"the weight is not applied": want / w,
                       "the mean is taken over the wrong axis (it must be the last, the features)":
                       x * torch.rsqrt(x.square().mean(0, keepdim=True) + 1e-6) * w,
                       "the mean is subtracted first, as in LayerNorm": torch.nn.functional.layer_norm(x, (2,)) * w})
print("rms_norm: correct")

### BEGIN HIDDEN TESTS
g = torch.Generator().manual_seed(411)
# Any number of leading axes, dtypes other than float32, and an eps other than the default.
for shape, dtype, eps in [((3, 5, 16), torch.float64, None), ((7,), torch.float64, None),
                          ((2, 1, 3, 9), torch.float64, None), ((4, 6, 32), torch.bfloat16, None),
                          ((2, 5, 8), torch.float64, 0.1)]:
    hx = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(device, dtype)
    hw = torch.rand(shape[-1], generator=g, dtype=torch.float64).to(device, dtype)
    case = f"rms_norm of a {shape} {str(dtype).removeprefix('torch.')} input" + (f" with eps={eps:g}" if eps else "")
    with exercise("rms_norm", case=case):
        got = rms_norm(hx, hw) if eps is None else rms_norm(hx, hw, eps=eps)
    expect_close(got, answers.rms_norm(hx, hw, 1e-6 if eps is None else eps), case,
                 hint=f"The eps passed in ({eps:g}) is the one added to the mean square." if eps else
                 "RMSNorm normalises over the last axis (the features), whatever the number of axes before it.")
### END HIDDEN TESTS

# %% [markdown]
# ## 2 · Joint KV compression
#
# Every token's layer input $h_t$ is compressed into **one** latent shared by
# keys and values of all heads (DeepSeek-V2 eqs. 9–11; the RMSNorm on the
# latent is the one §3.1.2 adds after the compressed latents, `kv_norm` in
# DeepSeek-V3's code):
#
# $$c^{KV}_t = \mathrm{RMSNorm}(W^{DKV} h_t) \in \mathbb{R}^{d_c}, \qquad
# k^{C}_t = W^{UK} c^{KV}_t, \qquad v^{C}_t = W^{UV} c^{KV}_t .$$
#
# $c^{KV}_t$ is what MLA caches: one vector per token, per layer. That is the
# whole point, and the first misconception to drop: **MLA does not cache a
# fixed set of learned latent tokens** (that is a Perceiver-style idea); the
# cache still grows by one latent per token, only a much smaller one.
#
# `compress_kv` returns the normed latent `(B, T, d_c)`; `up_project_kv`
# returns the per-head keys `(B, H, T, d_nope)` and values `(B, H, T, d_v)`
# (use `split_heads`). `m` is the layer (its weights are `nn.Linear`s:
# `m.W_dkv(h)` applies one).

# %% nbgrader={"grade": false, "grade_id": "compress_kv", "locked": false, "schema_version": 3, "solution": true, "task": false}
def compress_kv(m, h):
    """c_KV = RMSNorm(W_DKV h) with weight m.kv_norm: (B, T, C) -> (B, T, d_c)."""
    ### BEGIN SOLUTION
    return rms_norm(m.W_dkv(h), m.kv_norm)
    ### END SOLUTION


def up_project_kv(m, c_kv):
    """k_C = W_UK c_KV, v_C = W_UV c_KV, split into heads: (B, H, T, d_nope), (B, H, T, d_v)."""
    ### BEGIN SOLUTION
    H = m.cfg.n_heads
    return split_heads(m.W_uk(c_kv), H), split_heads(m.W_uv(c_kv), H)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_compress_kv", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
h = torch.randn(2, 6, cfg.d_model, device=device)
with torch.no_grad(), exercise("compress_kv"):
    c_kv = compress_kv(m, h)
with torch.no_grad():
    expect_close(c_kv, answers.compress_kv(m, h), "compress_kv(m, h)", atol=1e-5,
                 suspects={"the latent's RMSNorm is missing": m.W_dkv(h)})
    with exercise("up_project_kv"):
        k_c, v_c = up_project_kv(m, c_kv)
    want_k, want_v = answers.up_project_kv(m, c_kv)
expect_close(k_c, want_k, "k_C from up_project_kv", atol=1e-5, hint="(B, H, T, d_nope): split W_UK's output into heads.")
expect_close(v_c, want_v, "v_C from up_project_kv", atol=1e-5)
print("compress_kv and up_project_kv: correct")

### BEGIN HIDDEN TESTS
g = torch.Generator().manual_seed(422)
# Layers other than the notebook's: other head counts, values narrower or wider than keys; batch and dtype vary.
for c, B, T, dtype in [(answers.MLAConfig("h1", 24, 3, 6, 10, 4, 2, 5, 1), 3, 5, torch.float64),
                       (answers.MLAConfig("h2", 16, 2, 12, 8, 6, 4, 3, 1), 3, 5, torch.float64),
                       (answers.MLAConfig("h2", 16, 2, 12, 8, 6, 4, 3, 1), 1, 1, torch.float32)]:
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    hm = MLAWeights(c).to(device=device, dtype=dtype)
    hh = torch.randn(B, T, c.d_model, generator=g, dtype=dtype).to(device)
    case = (f"a layer with {c.n_heads} heads, keys {c.d_nope} wide, values {c.d_v} wide and a latent of {c.d_latent}, "
            f"on a batch of {B} x {T} tokens in {str(dtype).removeprefix('torch.')}")
    sizes = "This layer is not the notebook's tiny one: take every size from m.cfg."
    with torch.no_grad(), exercise("compress_kv", case=f"compress_kv for {case}"):
        got_c = compress_kv(hm, hh)
    with torch.no_grad():
        want_c = answers.compress_kv(hm, hh)
    expect_close(got_c, want_c, f"compress_kv for {case}", hint=sizes)
    with torch.no_grad(), exercise("up_project_kv", case=f"up_project_kv for {case}"):
        got = up_project_kv(hm, want_c)
    assert isinstance(got, (tuple, list)) and len(got) == 2, f"up_project_kv for {case} must return (k_C, v_C)"
    with torch.no_grad():
        want_k, want_v = answers.up_project_kv(hm, want_c)
    expect_close(got[0], want_k, f"k_C from up_project_kv for {case}", hint=sizes)
    expect_close(got[1], want_v, f"v_C from up_project_kv for {case}", hint=sizes)
### END HIDDEN TESTS

# %% [markdown]
# ## 3 · Query compression
#
# The queries get a low-rank bottleneck too (DeepSeek-V2 eqs. 12–13), with its
# own RMSNorm (§3.1.2; `q_norm` in DeepSeek-V3's code):
#
# $$c^{Q}_t = \mathrm{RMSNorm}(W^{DQ} h_t) \in \mathbb{R}^{d'_c}, \qquad q^{C}_t = W^{UQ} c^{Q}_t .$$
#
# This saves activation memory in training, not cache: queries are never
# cached. And a second misconception: **queries are not compressed "only in
# training"**. DeepSeek-V3's inference code runs `wq_a`, `q_norm` and `wq_b` at
# every step; the compressed query is part of the model, and skipping it at
# inference would compute a different function.

# %% nbgrader={"grade": false, "grade_id": "compress_q", "locked": false, "schema_version": 3, "solution": true, "task": false}
def compress_q(m, h):
    """c_Q = RMSNorm(W_DQ h) with weight m.q_norm (B, T, d'_c), and q_C = W_UQ c_Q in heads (B, H, T, d_nope)."""
    ### BEGIN SOLUTION
    c_q = rms_norm(m.W_dq(h), m.q_norm)
    return c_q, split_heads(m.W_uq(c_q), m.cfg.n_heads)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_compress_q", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
with torch.no_grad():
    with exercise("compress_q"):
        got = compress_q(m, h)
    assert isinstance(got, (tuple, list)) and len(got) == 2, "compress_q must return (c_q, q_c)"
    want_cq, want_qc = answers.compress_q(m, h)
    expect_close(got[0], want_cq, "c_Q from compress_q", atol=1e-5,
                 suspects={"the query latent's RMSNorm is missing": m.W_dq(h)})
    expect_close(got[1], want_qc, "q_C from compress_q", atol=1e-5)
print("compress_q: correct")

### BEGIN HIDDEN TESTS
g = torch.Generator().manual_seed(433)
for c, B, dtype in [(answers.MLAConfig("h1", 24, 3, 6, 10, 4, 2, 5, 1), 2, torch.float64),
                    (answers.MLAConfig("h2", 16, 2, 12, 8, 6, 4, 3, 1), 3, torch.float32)]:
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    hm = MLAWeights(c).to(device=device, dtype=dtype)
    hh = torch.randn(B, 4, c.d_model, generator=g, dtype=dtype).to(device)
    case = (f"compress_q for a layer with {c.n_heads} heads, keys {c.d_nope} wide and a query latent of "
            f"{c.d_q_latent}, on a batch of {B} x 4 tokens in {str(dtype).removeprefix('torch.')}")
    with torch.no_grad(), exercise("compress_q", case=case):
        got = compress_q(hm, hh)
    assert isinstance(got, (tuple, list)) and len(got) == 2, f"{case}: compress_q must return (c_q, q_c)"
    with torch.no_grad():
        want_cq, want_qc = answers.compress_q(hm, hh)
    sizes = "This layer is not the notebook's tiny one: take every size from m.cfg."
    expect_close(got[0], want_cq, f"c_Q from {case}", hint=sizes)
    expect_close(got[1], want_qc, f"q_C from {case}", hint=sizes)
### END HIDDEN TESTS

# %% [markdown]
# ## 4 · Decoupled RoPE
#
# Workbook 03 showed that a rotation between $W^Q$ and $W^{UK}$ stops $W^{UK}$
# from being absorbed. DeepSeek's answer (V2 §2.1.3, eqs. 14–19) is to keep the
# compressed part of every query and key free of RoPE and to add a small
# separate part that carries position:
#
# $$q^{R}_{t,i} = \mathrm{RoPE}(W^{QR}_i c^{Q}_t) \ \text{for each head } i, \qquad
# k^{R}_t = \mathrm{RoPE}(W^{KR} h_t) \ \text{once, for all heads},$$
#
# $$q_{t,i} = [q^{C}_{t,i};\, q^{R}_{t,i}], \qquad k_{t,i} = [k^{C}_{t,i};\, k^{R}_t], \qquad
# \text{scale} = \frac{1}{\sqrt{d_{nope} + d_{rope}}} .$$
#
# Note what comes from where: $q^R$ from the query latent $c^Q$, $k^R$ from
# the layer input $h$ itself, **not** from the KV latent, and **one** $k^R$ of
# `d_rope` numbers per token that every head shares (the misconception "each
# head caches its own RoPE key" would multiply that part of the cache by
# $n_h$). DeepSeek uses the interleaved RoPE layout; use workbook 03's
# `rope_interleaved` with the given tables. Return `k_R` as `(B, 1, T, d_rope)`,
# a head axis of size one that broadcasts over the heads.

# %% nbgrader={"grade": false, "grade_id": "decoupled_rope", "locked": false, "schema_version": 3, "solution": true, "task": false}
def decoupled_rope(m, h, c_q, cos, sin):
    """q_R = RoPE(W_QR c_Q) per head (B, H, T, d_rope); k_R = RoPE(W_KR h), shared (B, 1, T, d_rope).

    h (B, T, C), c_q (B, T, d'_c), cos and sin (T, d_rope / 2).
    """
    ### BEGIN SOLUTION
    q_r = rope_interleaved(split_heads(m.W_qr(c_q), m.cfg.n_heads), cos, sin)  # (B, H, T, d_rope)
    k_r = rope_interleaved(m.W_kr(h)[:, None], cos, sin)  # (B, 1, T, d_rope)
    return q_r, k_r
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_decoupled_rope", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
cos, sin = rope_tables(torch.arange(6, device=device), cfg.d_rope)
with torch.no_grad():
    c_q, _ = answers.compress_q(m, h)
    with exercise("decoupled_rope"):
        q_r, k_r = decoupled_rope(m, h, c_q, cos, sin)
    want_qr, want_kr = answers.decoupled_rope(m, h, c_q, cos, sin)
expect_shape(k_r, (2, 1, 6, cfg.d_rope), "k_R",
             hint="One RoPE key per token, shared by all heads: (B, 1, T, d_rope), not one per head.")
expect_close(k_r, want_kr, "k_R", atol=1e-5,
             suspects={"k_R is not rotated": m.W_kr(h)[:, None].detach()},
             hint="k_R = RoPE(W_KR h): from the layer input h, not from the KV latent.")
expect_close(q_r, want_qr, "q_R", atol=1e-5, hint="q_R = RoPE(W_QR c_Q), per head.")
print("decoupled_rope: correct")

### BEGIN HIDDEN TESTS
g = torch.Generator().manual_seed(444)
# Tokens that do not start at position 0 (a later chunk, a long context), other layers, batches and table dtypes.
for c, B, offset, table_dtype in [(answers.MLAConfig("h1", 24, 3, 6, 10, 4, 2, 5, 1), 2, 9, torch.float32),
                                  (answers.MLAConfig("h2", 16, 2, 12, 8, 6, 8, 3, 1), 3, 0, torch.float32),
                                  (answers.MLAConfig("h2", 16, 2, 12, 8, 6, 8, 3, 1), 1, 100_000, torch.float64)]:
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    hm = MLAWeights(c).to(device).double()
    hh = torch.randn(B, 5, c.d_model, generator=g, dtype=torch.float64).to(device)
    hcos, hsin = answers.rope_tables(torch.arange(offset, offset + 5, device=device), c.d_rope, dtype=table_dtype)
    case = (f"decoupled_rope for {B} sequence(s) of 5 tokens at positions {offset:,} to {offset + 4:,} "
            f"({str(table_dtype).removeprefix('torch.')} tables), a layer with {c.n_heads} heads and d_rope = {c.d_rope}")
    with torch.no_grad():
        hcq, _ = answers.compress_q(hm, hh)
        with exercise("decoupled_rope", case=case):
            got = decoupled_rope(hm, hh, hcq, hcos, hsin)
    assert isinstance(got, (tuple, list)) and len(got) == 2, f"{case}: decoupled_rope must return (q_R, k_R)"
    with torch.no_grad():
        want_qr, want_kr = answers.decoupled_rope(hm, hh, hcq, hcos, hsin)
    tables = "Rotate by the cos and sin passed in: they hold the angles of these tokens' positions."
    expect_close(got[0], want_qr, f"q_R from {case}", hint=tables)
    expect_shape(got[1], (B, 1, 5, c.d_rope), f"k_R from {case}", hint="One k_R per token, shared by all heads.")
    expect_close(got[1], want_kr, f"k_R from {case}", hint=tables)
### END HIDDEN TESTS

# %% [markdown]
# ## 5 · The naive forward
#
# Put it together the way training does: decompress keys and values for every
# head, concatenate the RoPE parts, and run causal attention (workbook 01's
# `attention`, whose scale is $1/\sqrt{\text{last dim}}$, here
# $1/\sqrt{d_{nope} + d_{rope}}$, `192 ** -0.5` at DeepSeek-V3's size). The
# released model multiplies that by YaRN's temperature squared (workbook 03,
# section 7); the layers here run without YaRN, as a model pre-trained at its
# own context would, and the cell after the tests shows what that changes. The
# tokens sit at positions `0 … T − 1`. Then merge heads and apply `W_o`.

# %% nbgrader={"grade": false, "grade_id": "mla_forward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def mla_forward(m, h):
    """Naive causal MLA: (B, T, C) -> (B, T, C), with keys and values decompressed for every head."""
    ### BEGIN SOLUTION
    B, T, _ = h.shape
    cfg = m.cfg
    cos, sin = rope_tables(torch.arange(T, device=h.device), cfg.d_rope)
    c_q, q_c = compress_q(m, h)  # (B, T, d'_c), (B, H, T, d_nope)
    k_c, v_c = up_project_kv(m, compress_kv(m, h))  # (B, H, T, d_nope), (B, H, T, d_v)
    q_r, k_r = decoupled_rope(m, h, c_q, cos, sin)  # (B, H, T, d_rope), (B, 1, T, d_rope)
    q = torch.cat([q_c, q_r], dim=-1)  # (B, H, T, d_nope + d_rope)
    k = torch.cat([k_c, k_r.expand(B, cfg.n_heads, T, cfg.d_rope)], dim=-1)  # (B, H, T, d_nope + d_rope)
    return m.W_o(merge_heads(attention(q, k, v_c, causal=True)))  # (B, T, C)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_mla_forward", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# (Sections 1-4 run with the course's versions here: a mistake there costs points there.)
with torch.no_grad():
    with exercise("mla_forward"):
        y = mla_forward(m, h)
    want = answers.mla_forward(m, h)
expect_close(y, want, "mla_forward(m, h)", atol=1e-5,
             hint="Check: scale 1/sqrt(d_nope + d_rope); RoPE only on the decoupled parts; a causal mask.")
print("mla_forward: correct")

### BEGIN HIDDEN TESTS
g = torch.Generator().manual_seed(455)
# Layers other than the notebook's (values narrower or wider than keys), other batches, float64; and the
# gradients, since training runs this form.
for c, B in [(answers.MLAConfig("h1", 24, 3, 6, 10, 4, 2, 5, 1), 2), (answers.MLAConfig("h2", 16, 2, 12, 8, 6, 4, 3, 1), 3)]:
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    hm = MLAWeights(c).to(device).double()
    hh = torch.randn(B, 7, c.d_model, generator=g, dtype=torch.float64).to(device).requires_grad_()
    case = (f"mla_forward for a layer with {c.n_heads} heads, keys {c.d_nope} + {c.d_rope} wide and values {c.d_v} wide, "
            f"on a batch of {B} x 7 tokens in float64")
    with exercise("mla_forward", case=case):
        got = mla_forward(hm, hh)
    want = answers.mla_forward(hm, hh)
    expect_close(got, want.detach(), case, hint="This layer is not the notebook's tiny one: take every size from m.cfg.")
    assert got.requires_grad, f"{case}: your output carries no gradient (is it computed under no_grad, or detached?)"
    inputs = {"the input h": hh, **{f"the weight {n}": p for n, p in hm.named_parameters()}}
    got_grads = torch.autograd.grad(got.square().sum(), list(inputs.values()), allow_unused=True)
    want_grads = torch.autograd.grad(want.square().sum(), list(inputs.values()))
    for name, gg, wg in zip(inputs, got_grads, want_grads):
        gg = torch.zeros_like(wg) if gg is None else gg  # (an input the output does not depend on)
        expect_close(gg, wg, f"the gradient of a loss with respect to {name} through {case}",
                     hint="Is anything detached or rebuilt outside autograd?")
### END HIDDEN TESTS

# %% [markdown]
# **The released scale.** DeepSeek-V3 as released runs with YaRN on (its
# inference code turns it on whenever `max_seq_len`, 16,384 by default, exceeds
# the 4,096 it was pre-trained at): its softmax scale is $192^{-1/2}$ times
# $(0.1 \ln 40 + 1)^2 = 1.874$, **0.1352**, and its slow RoPE pairs turn 40×
# more slowly. Leave YaRN out and every score is 1.874× too small: the same
# weights attend more evenly than the model was trained to. Below, the
# attention weights of one query over 4,096 keys at both scales, for random
# queries and keys of unit variance per feature (an illustration, not a
# trained model's activations), with DeepSeek-V2's, DeepSeek-V3's and Kimi
# K2's released scales from the course's model table. (The course's own MLA,
# `attnlab.answers.mla_forward` and `mla_absorbed_step`, runs with YaRN's
# frequencies and scale whenever its config carries them, as
# `MODELS["DeepSeek-V3"].mla_config()` does: `tests/test_parity.py` checks it
# against `transformers` at positions past 4K.)

# %%
from attnlab.models import MODELS


def yarn_demo(d_qk=192, n_keys=4096, seed=4):
    g = torch.Generator().manual_seed(seed)
    q_demo = torch.randn(1, d_qk, generator=g, dtype=torch.float64)
    k_demo = torch.randn(n_keys, d_qk, generator=g, dtype=torch.float64)
    for model in ("DeepSeek-V2", "DeepSeek-V3", "Kimi K2"):
        for label, scale in (("without YaRN", d_qk ** -0.5), ("as released", MODELS[model].softmax_scale)):
            w = torch.softmax(q_demo @ k_demo.T * scale, dim=-1)
            entropy = -(w * w.log()).sum().item()
            print(f"{model:<12} {label:<13} scale {scale:.4f}: largest weight {w.max().item():.4f}, "
                  f"entropy {entropy:.2f} nats (uniform: {math.log(n_keys):.2f})")


yarn_demo()

# %% [markdown]
# **Your MLA is the one in `transformers`.** Hugging Face's `DeepseekV3Attention`
# is an implementation nobody on this course wrote. Below, a tiny one with
# random weights is copied into an `MLAWeights` (through the checkpoint loader
# of `attnlab.lesson.checkpoints`, which reads the released checkpoints' names and
# layouts, fp8 included) and run against your `mla_forward`. It needs
# `transformers`, which `make lab` installs, and is skipped while grading.

# %%
def against_transformers():
    try:
        from transformers.models.deepseek_v3 import modeling_deepseek_v3 as v3
        from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
    except ImportError:
        return print("transformers is not installed: pip install -r requirements.txt -c constraints.txt")
    from attnlab.lesson import checkpoints

    c = answers.MLAConfig("hf", 32, 4, 12, 10, 6, 4, 5, 1)
    hf_cfg = DeepseekV3Config(hidden_size=c.d_model, num_attention_heads=c.n_heads, num_key_value_heads=c.n_heads,
                              q_lora_rank=c.d_q_latent, kv_lora_rank=c.d_latent, qk_nope_head_dim=c.d_nope,
                              qk_rope_head_dim=c.d_rope, v_head_dim=c.d_v, vocab_size=16, num_hidden_layers=1,
                              attn_implementation="eager")
    torch.manual_seed(0)
    hf = v3.DeepseekV3Attention(hf_cfg, 0).double().eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        x = torch.randn(2, 7, c.d_model, dtype=torch.float64)
        cos_sin = v3.DeepseekV3RotaryEmbedding(hf_cfg)(x, torch.arange(7)[None].expand(2, -1))
        mask = torch.full((7, 7), float("-inf"), dtype=torch.float64).triu(1)[None, None]
        want = hf(x, cos_sin, mask)[0]
        try:
            got = mla_forward(checkpoints.load(MLAWeights(c).double(), hf.state_dict()), x)
        except NotImplementedError:
            return print("write mla_forward (section 5) first")
    err = ((got - want).norm() / want.norm()).item()
    print(f"your mla_forward against transformers' DeepseekV3Attention: relative difference {err:.1e} "
          "(transformers runs its RMSNorm and RoPE angles in float32)")


if attnlab.is_grading():
    print("skipped while grading")
else:
    against_transformers()

# %% [markdown]
# ## 6 · Decoding with absorbed weights
#
# At inference, cache per token only $c^{KV}_t$ (`d_c` numbers) and $k^R_t$
# (`d_rope` numbers), and never decompress them. For head $i$, query $t$ and
# cached token $s$ the score splits into two dot products:
#
# $$q_{t,i}^\top k_{s,i} = (q^{C}_{t,i})^\top W^{UK}_i c^{KV}_s + (q^{R}_{t,i})^\top k^{R}_s
# = \underbrace{\big((W^{UK}_i)^\top q^{C}_{t,i}\big)}_{\text{absorbed query, } d_c}{}^\top c^{KV}_s + (q^{R}_{t,i})^\top k^{R}_s .$$
#
# The first term is workbook 03's absorption, now legal because no rotation
# sits in the compressed part. The values absorb the same way: the weighted sum
# of $v^C_s = W^{UV}_i c^{KV}_s$ is $W^{UV}_i$ times the weighted sum of the
# latents, so **sum the latents first and apply $W^{UV}$ once, after the
# softmax weights**:
#
# $$o_{t,i} = \sum_s p_{t,s,i}\, W^{UV}_i c^{KV}_s = W^{UV}_i \Big(\sum_s p_{t,s,i}\, c^{KV}_s\Big).$$
#
# DeepSeek-V3's `inference/model.py` does exactly this in its `absorb` mode.
# `W_uk.weight` is `(H·d_nope, d_c)`: view it as `(H, d_nope, d_c)` and
# contract the `d_nope` axis with `q_C` (an `einsum` says it best). Mask
# causally, bottom-right aligned (the new tokens are the last ones), and
# remember the RoPE positions continue from `len(cache)`.
#
# Look at what the absorbed step has become: every head attends to the *same*
# keys $[c^{KV}_s; k^R_s]$ (576 dims at V3's size) and sums the *same* values
# $c^{KV}_s$ (512 dims). Absorbed MLA **is multi-query attention** with one
# wide shared head, which is why FlashMLA speaks of "576/512 head dims". So
# compute it like workbook 02's grouped attention: fold the heads into the
# query rows, `(B, H·T, d_c) @ (B, d_c, Tk)`, and the cache is read once and
# never copied per head. (An `einsum` that broadcasts the cache over the heads
# may copy it `H` times inside torch.) The test checks that no decode step
# creates a tensor as large as the decompressed keys of every head.
#
# First complete `LatentCache.update`: it appends along the time axis (`dim=1`
# of its `(B, T, ·)` tensors).

# %% nbgrader={"grade": false, "grade_id": "absorbed", "locked": false, "schema_version": 3, "solution": true, "task": false}
class LatentCache:
    """MLA's cache: the normed KV latents (B, T, d_c) and the shared RoPE keys (B, T, d_rope)."""

    def __init__(self):
        self.c_kv = None
        self.k_r = None

    def __len__(self):
        return 0 if self.c_kv is None else self.c_kv.shape[1]

    def update(self, c_kv, k_r):
        """Append (B, T_new, d_c) latents and (B, T_new, d_rope) RoPE keys; return all cached ones."""
        ### BEGIN SOLUTION
        if self.c_kv is None:
            self.c_kv, self.k_r = c_kv, k_r
        else:
            self.c_kv = torch.cat([self.c_kv, c_kv], dim=1)  # (B, T + T_new, d_c)
            self.k_r = torch.cat([self.k_r, k_r], dim=1)  # (B, T + T_new, d_rope)
        return self.c_kv, self.k_r
        ### END SOLUTION


def mla_absorbed_step(m, h, cache):
    """MLA for new tokens h (B, T_new, C) with W_UK and W_UV absorbed, caching only c_KV and k_R.

    The new tokens sit at positions len(cache) .. len(cache) + T_new - 1. Returns (B, T_new, C).
    """
    ### BEGIN SOLUTION
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
    q_lat = torch.einsum("bhtn,hnc->bhtc", q_c, W_uk)  # (B, H, T, d_c): the absorbed query
    # All heads read the same cache: fold them into the query rows, as for GQA in workbook 02.
    scores = (q_lat.reshape(B, H * T, -1) @ c_kv.transpose(1, 2)
              + q_r.reshape(B, H * T, -1) @ k_r.transpose(1, 2)) / math.sqrt(cfg.d_nope + cfg.d_rope)  # (B, H*T, Tk)
    Tk = c_kv.shape[1]
    allowed = torch.ones(T, Tk, dtype=torch.bool, device=h.device).tril(diagonal=Tk - T).repeat(H, 1)  # (H*T, Tk)
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)  # (B, H*T, Tk)
    o_lat = (weights @ c_kv).view(B, H, T, -1)  # (B, H, T, d_c): a weighted sum of latents
    o = torch.einsum("bhtc,hvc->bhtv", o_lat, W_uv)  # (B, H, T, d_v): W_UV once, after the weights
    return m.W_o(merge_heads(o))  # (B, T, C)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_absorbed", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Prefill 5 tokens, then decode 3: equal to the naive forward over all 8, with a cache of c_KV and k_R only.
x = torch.randn(2, 8, cfg.d_model, device=device)
with torch.no_grad():
    kv = LatentCache()
    with exercise("mla_absorbed_step"):
        steps = [mla_absorbed_step(m, x[:, :5], kv)] + [mla_absorbed_step(m, x[:, t:t + 1], kv) for t in range(5, 8)]
expect_shape(kv.c_kv, (2, 8, cfg.d_latent), "the cached latents after 8 tokens",
             hint="Cache the (B, T, d_c) latent c_KV, appended along the time axis (dim=1).")
expect_shape(kv.k_r, (2, 8, cfg.d_rope), "the cached RoPE keys after 8 tokens",
             hint="One k_R per token, shared by all heads: (B, T, d_rope).")
held = {name: tuple(t.shape) for name, t in vars(kv).items() if isinstance(t, torch.Tensor)}
assert all(shape[-1] in (cfg.d_latent, cfg.d_rope) for shape in held.values()), (
    f"the cache holds {held}: MLA caches the latent (d_c = {cfg.d_latent}) and the RoPE key (d_rope = {cfg.d_rope}) "
    "only, never the decompressed keys or values.")
# A decode step after a longer prompt must not re-expand the cache: no tensor as large as the keys of every
# head. (This layer has wide heads, d_nope = 4 d_c, so that re-expanded keys stand out by their size.)
wide = MLAWeights(answers.MLAConfig("wide heads", 64, 4, 8, 24, 32, 4, 32, 1)).to(device)
long_kv, x_long = LatentCache(), torch.randn(2, 65, 64, device=device)
expanded_bytes = 2 * 4 * 65 * 32 * x_long.element_size()  # (B, H, Tk, d_nope) keys
with torch.no_grad(), exercise("mla_absorbed_step"):
    mla_absorbed_step(wide, x_long[:, :64], long_kv)
    with storage_watch() as watch:
        mla_absorbed_step(wide, x_long[:, 64:], long_kv)
assert watch.largest < expanded_bytes, (
    f"a decode step created a tensor of {watch.largest:,} bytes, as large as every head's keys for the whole "
    f"context ({expanded_bytes:,} bytes): absorb W_UK and W_UV instead of decompressing the cache.")
with torch.no_grad():
    want = answers.mla_forward(m, x)
for (t0, t1), step in zip([(0, 5), (5, 6), (6, 7), (7, 8)], steps):
    expect_close(step, want[:, t0:t1], f"the absorbed step for positions {t0}..{t1 - 1}", atol=1e-4,
                 hint="Is the RoPE position len(cache) + i? The scale 1/sqrt(d_nope + d_rope)? W_UV after the weights?")
print("mla_absorbed_step equals the naive forward, caching only c_KV and k_R")

### BEGIN HIDDEN TESTS
g = torch.Generator().manual_seed(466)


def decode_in_chunks(hm, hx, chunks, what):
    """Decode hx chunk by chunk with a new cache; each chunk's output is compared with the naive forward only
    after every step has returned."""
    kv, outs, start = LatentCache(), [], 0
    for n in chunks:
        case = f"{what}: the step of {n} new token(s) after {start} cached"
        with torch.no_grad(), exercise("mla_absorbed_step", case=case):
            outs.append((case, start, n, mla_absorbed_step(hm, hx[:, start:start + n], kv)))
        start += n
    return kv, outs


def compare_with_naive(hm, hx, outs, hint):
    with torch.no_grad():
        naive = answers.mla_forward(hm, hx)
    for case, start, n, out in outs:
        where = f"position {start}" if n == 1 else f"positions {start} to {start + n - 1}"
        expect_close(out, naive[:, start:start + n], f"{case} ({where})", hint=hint)


positions = "Is the RoPE position len(cache) + i, counted by this sequence's own cache, not kept between calls?"
# Prefills and decode steps of several tokens (queries fewer than keys), on new caches and other layers.
for c, B, chunks in [(answers.MLAConfig("h1", 24, 3, 6, 10, 4, 2, 5, 1), 3, [3, 1, 1, 2]),
                     (answers.MLAConfig("h2", 16, 2, 12, 8, 6, 4, 3, 1), 1, [1, 1, 1])]:
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    hm = MLAWeights(c).to(device).double()
    hx = torch.randn(B, sum(chunks), c.d_model, generator=g, dtype=torch.float64).to(device)
    what = (f"decoding a new sequence (batch {B}, float64) with a new cache, a layer with {c.n_heads} heads, "
            f"keys {c.d_nope} + {c.d_rope} wide and values {c.d_v} wide")
    kv, outs = decode_in_chunks(hm, hx, chunks, what)
    compare_with_naive(hm, hx, outs, hint=positions + " Is the causal mask aligned bottom-right when several "
                       "new tokens follow cached ones?")
    expect_shape(kv.c_kv, (B, sum(chunks), c.d_latent), f"{what}: the cached latents after {sum(chunks)} tokens")
    expect_shape(kv.k_r, (B, sum(chunks), c.d_rope), f"{what}: the cached RoPE keys after {sum(chunks)} tokens")

# Two sequences decoded in turn, each with its own cache: nothing may carry over from one to the other.
c = answers.MLAConfig("h2", 16, 2, 12, 8, 6, 4, 3, 1)
torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
hm = MLAWeights(c).to(device).double()
xa, xb = (torch.randn(B, 4, c.d_model, generator=g, dtype=torch.float64).to(device) for B in (2, 1))
kv_a, kv_b, outs_a, outs_b = LatentCache(), LatentCache(), [], []
for start, n in [(0, 2), (2, 1), (3, 1)]:
    for name, xs, kv_, outs in [("A", xa, kv_a, outs_a), ("B", xb, kv_b, outs_b)]:
        case = f"two sequences decoded in turn, each with its own cache: sequence {name}'s step after {start} cached tokens"
        with torch.no_grad(), exercise("mla_absorbed_step", case=case):
            outs.append((case, start, n, mla_absorbed_step(hm, xs[:, start:start + n], kv_)))
compare_with_naive(hm, xa, outs_a, hint=positions)
compare_with_naive(hm, xb, outs_b, hint=positions)

# A long context: 100,000 tokens already cached, then a step at positions 100,000 and 100,001. (The cached
# latents and RoPE keys are made up: only the new tokens' rotation and the step's output are compared.)
c, N = answers.MLAConfig("long", 32, 2, 8, 12, 6, 16, 5, 1), 100_000
torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
hm = MLAWeights(c).to(device).double()
past_c = answers.rms_norm(torch.randn(1, N, c.d_latent, generator=g, dtype=torch.float64), hm.kv_norm.detach()).to(device)
past_r = torch.randn(1, N, c.d_rope, generator=g, dtype=torch.float64).to(device)
hx = torch.randn(1, 2, c.d_model, generator=g, dtype=torch.float64).to(device)
case = f"a decode step at positions {N:,} and {N + 1:,}, after {N:,} cached tokens (float64, d_rope = {c.d_rope})"
kv = LatentCache()
kv.c_kv, kv.k_r = past_c.clone(), past_r.clone()
with torch.no_grad(), exercise("mla_absorbed_step", case=case):
    got = mla_absorbed_step(hm, hx, kv)
long_kv = answers.LatentCache()
long_kv.c_kv, long_kv.k_r = past_c, past_r
with torch.no_grad():
    want = answers.mla_absorbed_step(hm, hx, long_kv)
expect_shape(kv.k_r, (1, N + 2, c.d_rope), f"{case}: the cached RoPE keys")
drift = ("Beyond position 100,000 angles formed in float32 are off by thousandths of a radian: form the angles "
         "in float64 (rope_tables does) and only then take their cos and sin.")
expect_close(kv.k_r[:, N:], long_kv.k_r[:, N:], f"{case}: what your step cached as the new tokens' RoPE keys",
             hint=drift)
expect_close(got, want, case, hint=drift)
### END HIDDEN TESTS

# %% [markdown]
# **How equal is equal?** Naive and absorbed compute the same function with the
# products in a different order, so they agree to rounding error. Measured on
# this layer (relative error of the outputs over 16 tokens):

# %%
def absorbed_vs_naive(dtype):
    mm = MLAWeights(cfg).to(device=device, dtype=dtype)
    xx = torch.randn(2, 16, cfg.d_model, device=device, dtype=dtype)
    with torch.no_grad():
        naive = mla_forward(mm, xx)
        kv = LatentCache()
        steps = [mla_absorbed_step(mm, xx[:, :8], kv)] + [mla_absorbed_step(mm, xx[:, t:t + 1], kv) for t in range(8, 16)]
    return ((torch.cat(steps, dim=1) - naive).norm() / naive.norm()).item()


for dtype in (torch.float64, torch.float32, torch.bfloat16):
    print(f"{str(dtype):>15}: relative error {absorbed_vs_naive(dtype):.1e}")

# %% [markdown]
# The tests allow $10^{-6} + 10^{-5}|y|$ in float64 (room for code that rounds
# through float32 inside, as real kernels do) and $10^{-4} + 10^{-4}|y|$ in
# float32 (room for the longer sums of larger layers). bf16, which real deployments
# use, keeps only 8 bits of significand, 2 to 3 significant digits, and the two
# orders of the same products differ at that level, as printed above: compare
# bf16 results with a tolerance of a few $10^{-2}$, never with `==`.

# %% [markdown]
# ## 7 · The backward pass through the compression
#
# Training runs the naive form, and its gradients flow back through the
# up-projections, the latent's RMSNorm and the compression. Given the
# gradients of the keys and values *per head*, as an attention backward
# (workbook 01's `attention_backward`) produces them, compute the weight
# gradients of the KV path. With $c = \mathrm{RMSNorm}(r)$, $r = W^{DKV} h$
# and the heads' gradients flattened to $dK^C$ `(B, T, H·d_nope)`, $dV^C$ `(B, T, H·d_v)`:
#
# - $dW^{UK} = \sum_{b,t} (dK^C_{bt})\, c_{bt}^\top$ and $dW^{UV} = \sum_{b,t} (dV^C_{bt})\, c_{bt}^\top$;
# - both up-projections read $c$, so $dc = dK^C W^{UK} + dV^C W^{UV}$;
# - through RMSNorm, with $\rho = (\tfrac1d \sum_i r_i^2 + \epsilon)^{-1/2}$ and
#   $g = dc \odot w$: $dr = \rho\, g - \rho^3\, r \cdot \tfrac1d \sum_i g_i r_i$;
# - $dW^{DKV} = \sum_{b,t} dr_{bt}\, h_{bt}^\top$.
#
# The RoPE key is shared, so, as for a shared K/V head in workbook 02, its
# gradient is the **sum over the heads** of the per-head gradients. RoPE is a
# rotation, so its backward is the rotation by the opposite angle (the
# transpose): `rope_interleaved(d, cos, -sin)`. Then
# $dW^{KR} = \sum_{b,t} d(W^{KR}h)_{bt}\, h_{bt}^\top$.

# %% nbgrader={"grade": false, "grade_id": "backward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def mla_kv_backward(m, h, dk_c, dv_c, dk_r, cos, sin):
    """(dW_dkv, dW_uk, dW_uv, dW_kr), each shaped like its weight, for the KV path of an MLA layer.

    h (B, T, C): the layer input; dk_c (B, H, T, d_nope), dv_c (B, H, T, d_v), dk_r (B, H, T, d_rope):
    the gradients of k_C, v_C and of the k_R each head used; cos, sin: the RoPE tables of the T positions.
    """
    ### BEGIN SOLUTION
    eps = 1e-6
    raw = m.W_dkv(h)  # (B, T, d_c)
    rho = torch.rsqrt(raw.square().mean(dim=-1, keepdim=True) + eps)  # (B, T, 1)
    c_kv = raw * rho * m.kv_norm  # (B, T, d_c)
    dk_flat, dv_flat = merge_heads(dk_c), merge_heads(dv_c)  # (B, T, H * d_nope), (B, T, H * d_v)
    dW_uk = torch.einsum("bto,btc->oc", dk_flat, c_kv)
    dW_uv = torch.einsum("bto,btc->oc", dv_flat, c_kv)
    g = (dk_flat @ m.W_uk.weight + dv_flat @ m.W_uv.weight) * m.kv_norm  # (B, T, d_c)
    d_raw = rho * g - rho**3 * raw * (g * raw).mean(dim=-1, keepdim=True)  # (B, T, d_c)
    dW_dkv = torch.einsum("btc,bti->ci", d_raw, h)
    d_pre_rope = rope_interleaved(dk_r.sum(dim=1), cos, -sin)  # (B, T, d_rope)
    dW_kr = torch.einsum("btr,bti->ri", d_pre_rope, h)
    return dW_dkv, dW_uk, dW_uv, dW_kr
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_backward", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
from attnlab.checks.suspects import kv_gradients_by_autograd
mm = MLAWeights(cfg).to(device).double()
hh = torch.randn(2, 6, cfg.d_model, device=device, dtype=torch.float64)
inputs = kv_gradients_by_autograd(mm, hh, "heads")
with torch.no_grad(), exercise("mla_kv_backward"):
    got = mla_kv_backward(mm, hh, *inputs)
assert isinstance(got, (tuple, list)) and len(got) == 4, "mla_kv_backward must return (dW_dkv, dW_uk, dW_uv, dW_kr)"
want = kv_gradients_by_autograd(mm, hh, "weights")
for name, g_, w_ in zip(["dW_dkv", "dW_uk", "dW_uv", "dW_kr"], got, want):
    expect_close(g_, w_, name, hint={
        "dW_kr": "k_R is shared: sum the heads' gradients, then undo the rotation with -sin.",
        "dW_dkv": "Through the RMSNorm: rho * g - rho^3 * r * mean(g * r), with g = dc * w.",
    }.get(name, ""))
print("mla_kv_backward matches autograd")

### BEGIN HIDDEN TESTS
g = torch.Generator().manual_seed(477)
# Other layers (values narrower or wider than keys, other latents), batches, and tokens that do not start at
# position 0 (the tables passed in are those of their positions).
for c, B, start in [(answers.MLAConfig("h1", 24, 3, 6, 10, 4, 2, 5, 1), 3, 0),
                    (answers.MLAConfig("h2", 16, 2, 12, 8, 6, 4, 3, 1), 1, 37)]:
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    hm = MLAWeights(c).to(device).double()
    hx = torch.randn(B, 5, c.d_model, generator=g, dtype=torch.float64).to(device)
    case = (f"mla_kv_backward for a layer with {c.n_heads} heads, keys {c.d_nope} + {c.d_rope} wide, values {c.d_v} "
            f"wide and a latent of {c.d_latent}, on a batch of {B} x 5 tokens at positions {start} to {start + 4}, float64")
    h_inputs = kv_gradients_by_autograd(hm, hx, "heads", start)
    with torch.no_grad(), exercise("mla_kv_backward", case=case):
        got = mla_kv_backward(hm, hx, *h_inputs)
    assert isinstance(got, (tuple, list)) and len(got) == 4, f"{case}: must return (dW_dkv, dW_uk, dW_uv, dW_kr)"
    for name, g_, w_ in zip(["dW_dkv", "dW_uk", "dW_uv", "dW_kr"], got, kv_gradients_by_autograd(hm, hx, "weights", start)):
        expect_close(g_, w_, f"{name} from {case}", hint={
            "dW_kr": "Undo the rotation with the cos and sin passed in (those of these positions), and -sin.",
        }.get(name, "This layer is not the notebook's tiny one: take every size from m.cfg or the tensors."))
### END HIDDEN TESTS

# %% [markdown]
# ## 8 · The cache, in bytes
#
# Per token and layer, MLA caches $d_c + d^R_h$ elements: the latent and the
# one RoPE key (DeepSeek-V2 Table 1: $(d_c + d^R_h)\, l \approx \tfrac92 d_h l$
# with $d_c = 4d_h$ and $d^R_h = d_h/2$). At DeepSeek-V3's size, for one
# sequence of 131,072 tokens in bf16:
#
# | cache | elements per token and layer | total |
# | --- | --- | --- |
# | MHA with K = V = 128 dims per head, 128 heads | $2 \cdot 128 \cdot 128 = 32{,}768$ | 488.0 GiB |
# | MLA decompressed, as naive code caches it: K 192 + V 128 per head | $128 \cdot 320 = 40{,}960$ | 610.0 GiB |
# | MLA: latent + RoPE key | $512 + 64 = 576$ | **8.58 GiB** |
#
# That is **56.9×** smaller than the MHA cache (71.1× smaller than the
# decompressed one). Dividing by the latent's 512 alone gives 64×, which
# forgets the 64-dim RoPE key that every token must also cache. (The MHA
# figure is 488 GiB, which is 524 GB: quoted as "488 GB", it mixes the two.) And the
# compression factor is not $C / d_c = 7168/512 = 14$ either, as another
# misconception has it: it is $2 n_h d_h / (d_c + d^R_h)$.

# %% nbgrader={"grade": false, "grade_id": "cache_size", "locked": false, "schema_version": 3, "solution": true, "task": false}
def mla_cache_elements_per_token(n_layers, d_latent, d_rope):
    """Elements an MLA model caches per token, over all layers."""
    ### BEGIN SOLUTION
    return (d_latent + d_rope) * n_layers
    ### END SOLUTION


def cache_gib(elements_per_token, seq_len, batch=1, bytes_per_element=2):
    """The cache in GiB (2**30 bytes)."""
    ### BEGIN SOLUTION
    return elements_per_token * seq_len * batch * bytes_per_element / 2**30
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_cache_size", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
v3 = MODELS["DeepSeek-V3"]
with exercise("mla_cache_elements_per_token", "cache_gib"):
    mla = number(mla_cache_elements_per_token(v3.n_layers, v3.d_latent, v3.d_rope), "mla_cache_elements_per_token")
    mla_gib = number(cache_gib(mla, 131_072), "cache_gib")
    mha_gib = number(cache_gib(2 * 128 * 128 * 61, 131_072), "cache_gib")
assert mla == 576 * 61, (f"DeepSeek-V3 caches (512 + 64) * 61 = 35,136 elements per token; you have {mla}"
                         + (" (the RoPE key is missing: every token caches its 64-dim k_R too)" if mla == 512 * 61 else ""))
assert round(mla_gib, 2) == 8.58, f"8.58 GiB expected for 131,072 tokens in bf16; you have {mla_gib:.3g}"
assert round(mha_gib, 1) == 488.0, f"488.0 GiB expected for the MHA cache; you have {mha_gib:.4g}"
print(f"MLA: {mla_gib:.2f} GiB; MHA: {mha_gib:.1f} GiB; {mha_gib / mla_gib:.1f}x smaller")

### BEGIN HIDDEN TESTS
# Other models than DeepSeek-V3: DeepSeek-V2-Lite (27 layers), DeepSeek-V2 (60) and made-up sizes.
for l, dc, dr in [(27, 512, 64), (60, 512, 64), (7, 96, 24), (1, 1, 1)]:
    case = f"mla_cache_elements_per_token({l}, {dc}, {dr})"
    with exercise("mla_cache_elements_per_token", case=case):
        got_e = number(mla_cache_elements_per_token(l, dc, dr), "mla_cache_elements_per_token")
    assert got_e == (dc + dr) * l, f"{case} should be ({dc} + {dr}) x {l} = {(dc + dr) * l:,}; you have {got_e:,}"
# Every argument of cache_gib, each in turn away from the visible test's values (batch 1, 2 bytes, 131,072 tokens).
for e, t, b, nbytes in [(35_136, 32_768, 3, 2), (35_136, 131_072, 1, 1), (1_000, 10**6, 8, 4), (576, 7, 1, 2)]:
    case = f"cache_gib({e:,}, {t:,}, batch={b}, bytes_per_element={nbytes})"
    with exercise("cache_gib", case=case):
        got_g = number(cache_gib(e, t, batch=b, bytes_per_element=nbytes), "cache_gib")
    want_g = e * t * b * nbytes / 2**30
    if not math.isclose(got_g, want_g, rel_tol=1e-9):
        why = (f": with a batch of {b}, your cache is {b}x too small (every sequence caches its own tokens)"
               if math.isclose(got_g * b, want_g, rel_tol=1e-9) else
               f": with {nbytes} byte(s) per element, your cache is {got_g / want_g:g}x the right size "
               "(use bytes_per_element)" if math.isclose(got_g * nbytes, want_g * 2, rel_tol=1e-9) else "")
        raise AssertionError(f"{case} should be {want_g:.6g} GiB; you have {got_g:.6g}{why}")
### END HIDDEN TESTS

# %% [markdown]
# **See it.** The cache per token of four real models, each with the
# mechanism it ships with, against plain MHA at the same size:

# %%
def shipped(m):  # elements per token as the model ships, and as plain MHA with its heads
    mha = cache_math.mha_elements_per_token(m.n_layers, m.n_heads, m.d_head)
    if m.attention == "GQA":
        return f"{m.name} (GQA, {m.kv_heads} K/V heads)", cache_math.gqa_elements_per_token(m.n_layers, m.kv_heads, m.d_head), mha
    return f"{m.name} (MLA)", mla_cache_elements_per_token(m.n_layers, m.d_latent, m.d_rope), mha


rows = [shipped(MODELS[name]) for name in ("Llama-3-8B", "Llama-3-70B", "DeepSeek-V2", "DeepSeek-V3")]
fig, ax = plt.subplots(figsize=(7, 2.8))
names = [r[0] for r in rows]
ax.barh(names, [r[2] * 2 / 2**20 for r in rows], color="C7", label="as plain MHA")
ax.barh(names, [r[1] * 2 / 2**20 for r in rows], color="C0", label="as shipped")
for i, (_, actual, mha) in enumerate(rows):
    ax.text(mha * 2 / 2**20, i, f"  {mha / actual:.1f}× smaller", va="center", fontsize=8)
ax.set(xlabel="MiB per token, bf16", xlim=(0, 5.5))
ax.invert_yaxis()
ax.legend(loc="upper right", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Recap
#
# **What to remember**
# - MLA caches, per token and layer, one normed latent $c^{KV}$ ($d_c$ = 512)
#   and one RoPE key $k^R$ ($d_h^R$ = 64) shared by all heads: 576 elements at
#   DeepSeek-V3's size, 56.9× less than MHA's 32,768.
# - Keys and values are $W^{UK} c^{KV}$ and $W^{UV} c^{KV}$; queries go through
#   their own compression and RMSNorm, in training and in inference.
# - RoPE lives only in the decoupled parts; the compressed parts carry no
#   rotation, so $W^{UK}$ absorbs into the query and $W^{UV}$ goes after the
#   weighted sum of latents.
# - The scale is $1/\sqrt{d_{nope} + d_{rope}}$ = `192 ** -0.5` at V3's size,
#   times YaRN's temperature squared as released: 0.1352 for DeepSeek-V3.
# - Gradients: a shared $k^R$ sums its heads' gradients; RoPE's backward is the
#   opposite rotation; RMSNorm's backward has the $-\rho^3 r\,\overline{g r}$ term.
#
# **Misconceptions this workbook dispels**
# - "MLA caches a fixed set of learned latent tokens": it caches one latent per token.
# - "Each head caches its own RoPE key": one $k^R$ serves all heads.
# - "Queries are compressed only in training": DeepSeek's inference code compresses them.
# - "The compression factor is $C / d_c$": it is $2 n_h d_h / (d_c + d^R_h)$.
# - "64× smaller": 56.9×, once the RoPE key is counted.
#
# **What breaks if you get this wrong**: forgetting the latent's RMSNorm or the
# query compression gives a model that loads and runs but computes another
# function; RoPE on the compressed key makes absorption wrong; a per-head $k^R$
# multiplies the RoPE part of the cache by 128.
#
# **Sources**
# - DeepSeek-AI 2024, *DeepSeek-V2*, arXiv 2405.04434: §2.1 (eqs. 9–19), Table 1, Table 9, §3.1.2.
# - DeepSeek-AI 2024, *DeepSeek-V3 Technical Report*, arXiv 2412.19437; its `inference/model.py`
#   (`naive` and `absorb` modes) and `inference/configs/config_671B.json`.
# - Zhang and Sennrich 2019, *Root Mean Square Layer Normalization*, arXiv 1910.07467.
#
# **Next:** [workbook 05](../05_cache_benchmark/05_cache_benchmark.ipynb) measures all of this on real hardware: bytes in
# memory, and the time of a decode step for MHA, GQA, MQA, naive and absorbed MLA.
