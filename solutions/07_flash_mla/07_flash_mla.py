# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · A fused MLA decode kernel in Triton
#
# Workbook 05 ended on a number: on an H200, absorbed MLA written in PyTorch
# decodes 32K tokens × batch 8 in 0.34 ms, **31 % of its roofline**. The cache
# is small; the code is what is slow. The scores, the softmax and the weighted
# sum run as separate kernels, and the scores (128 heads × 32K tokens per
# sequence) go out to memory and come back several times. DeepSeek's FlashMLA
# does all of it in one kernel, where the scores never leave the chip, and
# reports up to 3,000 GB/s memory-bound and 660 TFLOPS compute-bound on an
# H800 (its README). This workbook builds that kernel, in Triton, from its two
# ideas up.
#
# **You will build**
# 1. the online softmax: attention over blocks of keys, one block at a time,
#    never holding all the scores;
# 2. the merge of partial results by their log-sum-exp, which lets several
#    programs share one long sequence (flash-decoding);
# 3. a first Triton kernel: programs, blocks, masks and `tl.dot`;
# 4. the fused MLA decode kernel: a block of heads against tiles of the
#    shared latent cache, split across the context, for sequences of
#    different lengths in one batch;
# 5. the same kernel over a **paged** cache: pages of 64 tokens in a pool,
#    found through a block table, as FlashMLA and vLLM store it.
#
# **You need** workbook 04 (the absorbed decode step: one query per head
# against the shared latent rows) and workbook 05 (the roofline).
# No GPU: without one, Triton's **interpreter** runs every kernel on the CPU,
# program by program, in NumPy: far slower than a GPU, but exact, which is what
# a check needs, and quick at this workbook's sizes (the whole notebook runs in
# seconds). With a GPU the same kernels compile for it.
#
# **Time** about 2 hours.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import json
import math
import pathlib

import matplotlib.pyplot as plt
import torch

import attnlab
from attnlab.checks import exercise, expect_close, launch
from attnlab.lesson import pages, triton_env

# Triton, with its interpreter switched on when there is no GPU (it must be set before Triton is imported).
triton, tl = triton_env.load()
from attnlab.answers import absorbed_decode  # workbook 04's absorbed decode, in the kernels' layout

torch.manual_seed(0)
device = attnlab.pick_device()
print(f"torch {torch.__version__}, running on {device}"
      + (", Triton's kernels in its interpreter" if triton_env.interpreted() else ""))
# fp32 is exact in the interpreter; a GPU's tl.dot rounds fp32 inputs to tf32 (10-bit mantissa).
KERNEL_TOL = {"atol": 1e-2, "rtol": 1e-2} if device.type == "cuda" else {"atol": 1e-5, "rtol": 1e-4}

# %% [markdown]
# ## 1 · The online softmax
#
# Attention for one query is $o = \sum_j p_j v_j$ with
# $p_j = e^{s_j} / \sum_k e^{s_k}$. Written that way it needs every score
# before the first weight is known. The **online softmax** (Milakov and
# Gimelshein 2018, arXiv 1805.02867; the core of FlashAttention) keeps three
# running numbers while the keys stream past in blocks:
#
# - $m$, the largest score so far (subtracted before `exp`, so nothing overflows);
# - $\ell = \sum_j e^{s_j - m}$ over the keys so far;
# - $a = \sum_j e^{s_j - m}\, v_j$, the unnormalised output.
#
# A new block of scores $s_{1..n}$ with values $v_{1..n}$ moves the maximum to
# $m' = \max(m, \max_j s_j)$, and everything summed so far shrinks by
# $\alpha = e^{m - m'}$:
#
# $$\ell' = \alpha\, \ell + \sum_j e^{s_j - m'}, \qquad a' = \alpha\, a + \sum_j e^{s_j - m'}\, v_j .$$
#
# After the last block, $o = a / \ell$. Start from $m = -\infty$, $\ell = 0$,
# $a = 0$. Masked keys have score $-\infty$ and weigh nothing, and a row whose
# keys so far are *all* masked keeps $m = -\infty$: there $e^{m - m'}$ is
# $e^{-\infty - (-\infty)}$, which is NaN. Shift by 0 instead of by $m'$ where
# $m'$ is still $-\infty$.
#
# `m` and `l` have shape `(...,)` (one per row: per head, say), `acc` has
# `(..., d_v)`, `scores` `(..., n)` and `v` `(n, d_v)` or `(..., n, d_v)`.

# %% nbgrader={"grade": false, "grade_id": "online_softmax", "locked": false, "schema_version": 3, "solution": true, "task": false}
def online_softmax_update(m, l, acc, scores, v):
    """Fold one block of keys into the running (max, sum, weighted sum); return the new (m, l, acc)."""
    ### BEGIN SOLUTION
    m_new = torch.maximum(m, scores.amax(dim=-1))  # (...,)
    shift = torch.where(m_new == -math.inf, torch.zeros_like(m_new), m_new)  # 0 where every key so far is masked
    alpha = torch.exp(m - shift)  # (...,): how much what was summed so far shrinks
    p = torch.exp(scores - shift[..., None])  # (..., n)
    l_new = l * alpha + p.sum(dim=-1)
    acc_new = acc * alpha[..., None] + torch.einsum("...n,...nd->...d", p, v)  # (..., d_v)
    return m_new, l_new, acc_new
    ### END SOLUTION


# %% [markdown]
# Streaming attention is then a loop over blocks: this is the whole of
# FlashAttention's forward pass, minus the tiling of the queries.

# %%
def streaming_attention(q, k, v, block=16):
    """softmax(q k^T / sqrt(d)) v for q (..., d) and keys k (T, d), values v (T, d_v), `block` keys at a time."""
    m = torch.full(q.shape[:-1], -math.inf, dtype=q.dtype, device=q.device)
    l = torch.zeros_like(m)
    acc = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
    for j in range(0, k.shape[0], block):
        scores = q @ k[j:j + block].T / math.sqrt(q.shape[-1])  # (..., block): only this block's scores
        m, l, acc = online_softmax_update(m, l, acc, scores, v[j:j + block])
    return acc / l[..., None]


q, k, v = torch.randn(4, 32, dtype=torch.float64), torch.randn(100, 32, dtype=torch.float64), torch.randn(100, 8, dtype=torch.float64)
full = torch.softmax(q @ k.T / math.sqrt(32), dim=-1) @ v
print("streaming - full softmax, largest difference:", (streaming_attention(q, k, v) - full).abs().max().item())

# %% nbgrader={"grade": true, "grade_id": "test_online_softmax", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
g = torch.Generator().manual_seed(1)
scores = torch.randn(3, 17, generator=g, dtype=torch.float64) * 2
values = torch.randn(17, 5, generator=g, dtype=torch.float64)
m, l, acc = torch.full((3,), -math.inf, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), torch.zeros(3, 5, dtype=torch.float64)
with exercise("online_softmax_update"):
    state = online_softmax_update(m, l, acc, scores[:, :6], values[:6])
    first = tuple(t.clone() for t in state)  # as it was after one block (an update may work in place)
    for j in (6, 13):
        state = online_softmax_update(*state, scores[:, j:j + 7], values[j:j + 7])
m1, l1, acc1 = first
expect_close(m1, scores[:, :6].amax(-1), "m after the first block (the largest score so far)")
expect_close(l1, torch.exp(scores[:, :6] - scores[:, :6].amax(-1, keepdim=True)).sum(-1),
             "l after the first block (the sum of exp(score - m))")
expect_close(state[2] / state[1][:, None], torch.softmax(scores, -1) @ values, "acc / l after three blocks",
             hint="It must equal the softmax-weighted sum over all 17 keys: did the old l and acc shrink by alpha?")
print("online_softmax_update: correct, three blocks give the full softmax")

### BEGIN HIDDEN TESTS
# Sharp scores (a block whose largest score is far below the running max), rows whose first block is all
# masked, batched state (..., H), float32, and values given per row.
for case, sharp, masked, dtype in [("sharp scores", 300.0, False, torch.float64),
                                    ("a first block all masked", 1.0, True, torch.float64),
                                    ("float32, sharp, masked", 200.0, True, torch.float32)]:
    s = torch.randn(2, 3, 40, generator=g, dtype=torch.float64) * sharp
    s[..., :10] += 5 * sharp  # the first block holds the largest scores: later blocks must not overflow
    if masked:
        s[0, 1, :10] = -math.inf  # this row sees no key in its first block
        s[1, :, 25:] = -math.inf
    vals = torch.randn(2, 3, 40, 6, generator=g, dtype=torch.float64)
    s, vals = s.to(dtype), vals.to(dtype)
    state = (torch.full((2, 3), -math.inf, dtype=dtype), torch.zeros(2, 3, dtype=dtype), torch.zeros(2, 3, 6, dtype=dtype))
    with exercise("online_softmax_update", case=f"online_softmax_update with {case}"):
        for j in range(0, 40, 10):
            state = online_softmax_update(*state, s[..., j:j + 10], vals[..., j:j + 10, :])
    want = (torch.softmax(s.double(), -1)[..., None, :] @ vals.double())[..., 0, :].to(dtype)
    expect_close(state[2] / state[1][..., None], want, f"online_softmax_update with {case}: acc / l",
                 nan_hint="exp(-inf - -inf) is NaN, and exp of a large positive number is inf",
                 hint="A row can have no unmasked key yet, and a later block's largest score can be far below m.")
### END HIDDEN TESTS

# %% [markdown]
# ## 2 · Merging partial results
#
# One program per sequence leaves a GPU idle at decode time: batch 8 × 8 head
# blocks is 64 programs for 132 multiprocessors. **Flash-decoding** (Dao et al.
# 2023) splits each sequence's context into $S$ parts, lets a program attend
# over each part, and merges. Each part $i$ returns its normalised output
# $o_i$ and the log-sum-exp of its scores, $L_i = \log \sum_{j \in i} e^{s_j}$.
# The whole softmax gives part $i$ the weight $e^{L_i} / \sum_k e^{L_k}$, so
#
# $$o = \frac{\sum_i e^{L_i - M} o_i}{\sum_i e^{L_i - M}}, \qquad L = M + \log \sum_i e^{L_i - M},$$
#
# with $M = \max_i L_i$ subtracted for the same reason as $m$ above. A part
# with no keys (a short sequence split as finely as a long one) has
# $L_i = -\infty$ and $o_i = 0$, and weighs nothing. `out` is `(S, ..., d_v)`,
# `lse` is `(S, ...)`; return the merged `(..., d_v)` output and its `(...,)`
# log-sum-exp.

# %% nbgrader={"grade": false, "grade_id": "merge", "locked": false, "schema_version": 3, "solution": true, "task": false}
def merge_partials(out, lse):
    """Merge S parts' outputs (S, ..., d_v) by their log-sum-exps (S, ...): (merged (..., d_v), lse (...,))."""
    ### BEGIN SOLUTION
    top = lse.amax(dim=0)  # (...,)
    top = torch.where(top == -math.inf, torch.zeros_like(top), top)
    w = torch.exp(lse - top)  # (S, ...): each part's share, before normalising
    total = w.sum(dim=0)  # (...,)
    merged = (w[..., None] * out).sum(dim=0) / total[..., None]  # (..., d_v)
    return merged, top + torch.log(total)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_merge", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
g = torch.Generator().manual_seed(2)
scores = torch.randn(4, 30, generator=g, dtype=torch.float64)
values = torch.randn(30, 6, generator=g, dtype=torch.float64)
bounds = [(0, 7), (7, 20), (20, 30)]
parts = torch.stack([torch.softmax(scores[:, a:b], -1) @ values[a:b] for a, b in bounds])  # (3, 4, 6)
lses = torch.stack([torch.logsumexp(scores[:, a:b], -1) for a, b in bounds])  # (3, 4)
with exercise("merge_partials"):
    merged, lse = merge_partials(parts, lses)
expect_close(merged, torch.softmax(scores, -1) @ values, "the merged output",
             suspects={"the parts are averaged without their weights": parts.mean(0)})
expect_close(lse, torch.logsumexp(scores, -1), "the merged log-sum-exp",
             suspects={"it is the largest part's log-sum-exp, not the log of the summed exponentials": lses.amax(0)})
print("merge_partials: correct, three parts give the whole softmax")

### BEGIN HIDDEN TESTS
# Scores large enough that exp(lse) overflows, an empty part, more parts, batched rows and float32.
for case, scale, dtype in [("log-sum-exps near 1000", 400.0, torch.float64), ("float32, log-sum-exps near 150", 60.0, torch.float32)]:
    s = torch.randn(2, 3, 64, generator=g, dtype=torch.float64) * scale
    vals = torch.randn(64, 5, generator=g, dtype=torch.float64)
    cuts = [(0, 5), (5, 5), (5, 33), (33, 40), (40, 64)]  # the second part is empty
    outs = torch.stack([torch.softmax(s[..., a:b], -1) @ vals[a:b] if b > a else torch.zeros(2, 3, 5, dtype=torch.float64)
                        for a, b in cuts])
    lse_in = torch.stack([torch.logsumexp(s[..., a:b], -1) if b > a else torch.full((2, 3), -math.inf, dtype=torch.float64)
                          for a, b in cuts])
    with exercise("merge_partials", case=f"merge_partials with {case} and an empty part"):
        merged, lse = merge_partials(outs.to(dtype), lse_in.to(dtype))
    expect_close(merged, (torch.softmax(s, -1) @ vals).to(dtype), f"merge_partials with {case}: the output",
                 nan_hint="exp(lse) overflows past 88 in float32 and 709 in float64: subtract the largest first")
    expect_close(lse, torch.logsumexp(s, -1).to(dtype), f"merge_partials with {case}: the log-sum-exp")
### END HIDDEN TESTS

# %% [markdown]
# ## 3 · A first Triton kernel
#
# A Triton kernel is a Python function that runs once per **program**, in
# parallel, over a grid you choose at launch (`kernel[grid](...)`). Inside,
# `tl.program_id(0)` says which program this is, and values are **blocks**:
# `tl.arange(0, 16)` is a block of 16 offsets, `tl.load(ptr + offsets)` reads a
# block of memory, `tl.dot(a, b)` multiplies two 2-D blocks (on the tensor
# cores of a GPU), `tl.store` writes one. Block sizes are compile-time
# constants (`tl.constexpr`), powers of two, and 16 or more for `tl.dot`. When
# the data does not fill the last block, `mask=` says which lanes are real:
# masked loads give `other`, masked stores write nothing. A pointer to row `i`
# of a matrix is `base + i * stride`; the stride is `x.stride(0)`, which is not
# always the row's width (a slice of wider rows, like `c_KV` inside the
# cache's `[c_KV | k_R]`, has the wider stride).
#
# Write `scores_kernel`: program `p` computes `scale * q @ k.T` for all `M`
# query rows (one block of `BLOCK_M` rows, masked) against keys
# `p * BLOCK_N` to `p * BLOCK_N + BLOCK_N - 1` (masked at `N`), and stores
# that `(BLOCK_M, BLOCK_N)` tile of the `(M, N)` output `s`.

# %% nbgrader={"grade": false, "grade_id": "scores", "locked": false, "schema_version": 3, "solution": true, "task": false}
@triton.jit
def scores_kernel(q_ptr, k_ptr, s_ptr, M, N, scale, stride_q, stride_k, stride_s,
                  D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    ### BEGIN SOLUTION
    rows = tl.arange(0, BLOCK_M)  # (BLOCK_M,) query rows
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) this program's keys
    d = tl.arange(0, D)
    q = tl.load(q_ptr + rows[:, None] * stride_q + d[None, :], mask=rows[:, None] < M, other=0.0)  # (BLOCK_M, D)
    k = tl.load(k_ptr + cols[:, None] * stride_k + d[None, :], mask=cols[:, None] < N, other=0.0)  # (BLOCK_N, D)
    s = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_M, BLOCK_N)
    tl.store(s_ptr + rows[:, None] * stride_s + cols[None, :], s, mask=(rows[:, None] < M) & (cols[None, :] < N))
    ### END SOLUTION


# %% [markdown]
# `block_scores` launches it: one program per block of `block_n` keys, on an
# output filled with NaN, so that a tile no program writes shows. (The tests
# launch your kernel the same way, with the course's copy of this code.)

# %% nbgrader={"grade": false, "grade_id": "launch_scores", "locked": true, "schema_version": 3, "solution": false, "task": false}
def block_scores(q, k, scale, block_n=16):
    """scale * q @ k.T for q (M, D) and k (N, D), as float32, one program per block of keys."""
    M, D = q.shape
    N = k.shape[0]
    s = torch.full((M, N), math.nan, device=q.device)
    grid = (triton.cdiv(N, block_n),)
    scores_kernel[grid](q, k, s, M, N, scale, q.stride(0), k.stride(0), s.stride(0),
                        D=D, BLOCK_M=max(16, triton.next_power_of_2(M)), BLOCK_N=block_n)
    return s


# %% nbgrader={"grade": true, "grade_id": "test_scores", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
g = torch.Generator().manual_seed(3)
qs = torch.randn(5, 32, generator=g).to(device)
ks = torch.randn(48, 32, generator=g).to(device)
with exercise("scores_kernel"):
    got = launch.scores(scores_kernel, qs, ks, 0.25)
want = (qs.double() @ ks.double().T * 0.25).float()
expect_close(got, want, "block_scores(q (5, 32), k (48, 32), 0.25)", **KERNEL_TOL,
             suspects={"the scale is not applied": want / 0.25},
             nan_hint="some element was written by no program, or a load read outside its tensor (the tests surround each one with NaN): check each program's offsets, mask loads past the end with other=0, and use the strides",
             hint="Does each program take its own block of keys?")
print("scores_kernel: correct, three programs of 16 keys each")

### BEGIN HIDDEN TESTS
# Keys that are a slice of wider rows (c_KV inside [c_KV | k_R]: the stride is not D), a partial last
# block, other widths, blocks and float16.
for M, N, D, block, dtype in [(3, 37, 16, 16, torch.float32), (16, 70, 64, 32, torch.float16), (1, 16, 32, 16, torch.float32)]:
    cache = torch.randn(N, D + 16, generator=g).to(device, dtype)
    qq = torch.randn(M, D, generator=g).to(device, dtype)
    kk = cache[:, :D]  # (N, D), rows D + 16 apart
    with exercise("scores_kernel", case=f"block_scores with {M} queries, {N} keys of {D} of {D + 16} columns, {dtype}"):
        got = launch.scores(scores_kernel, qq, kk, 0.5, block_n=block)
    want = (qq.double() @ kk.double().T * 0.5).float()
    tol = KERNEL_TOL if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    expect_close(got, want, f"block_scores with keys a slice of wider rows ({N} x {D} of {D + 16}), {dtype}", **tol,
                 nan_hint="some element was written by no program, or a load read outside its tensor (the tests surround each one with NaN): check each program's offsets, mask loads past the end with other=0, and use the strides", hint="Row i of k starts at k_ptr + i * stride_k: the stride, not D.")
### END HIDDEN TESTS

# %% [markdown]
# ## 4 · The fused MLA decode kernel
#
# Workbook 04's absorbed decode step, for one new token per sequence, is
# multi-query attention with one wide shared head. Each head $i$ has one query
# row $[q^C_i W^{UK}_i \,|\, q^R_i]$ (512 + 64 = 576 numbers at DeepSeek-V3's
# size); every head reads the same cached rows $[c^{KV}_t \,|\, k^R_t]$ (576);
# the output is $\sum_t p_{i,t}\, c^{KV}_t$ (512), and $W^{UV}$ and $W^O$ come
# after. `absorbed_decode(q, kv, lengths, scale, d_c)` is that step in
# PyTorch: it is what your kernel must equal.
#
# The kernel: one program per (sequence `b`, block of `BLOCK_H` heads, split
# `s` of the context). It loads its heads' queries once, then walks its part
# of the context, tokens `s * chunk` up to `min((s + 1) * chunk, lengths[b])`,
# in tiles of `BLOCK_N` cached rows:
#
# 1. load the tile's rows (masked past the end), as `c` (`BLOCK_N, DC`) and `k_r` (`BLOCK_N, DR`);
# 2. scores: `tl.dot(q_lat, tl.trans(c)) + tl.dot(q_rope, tl.trans(k_r))`, times `scale`, and
#    `-inf` where the tile runs past the end;
# 3. the online softmax of section 1, with `tl.max`, `tl.exp`, `tl.sum`; the weighted sum is
#    `tl.dot(p.to(c.dtype), c)` (`tl.dot` wants both sides in one dtype).
#
# The scores live in registers for one tile and are gone: nothing of size
# heads × tokens is ever written. At the end each program stores its part's
# `acc / l` and `m + log(l)` (natural log: the merge takes `exp` of it), the
# inputs of section 2's merge, which the wrapper `mla_decode` calls. A split
# past a short sequence's end sees no token: store 0 and $-\infty$ there, not
# `0 / 0`. Every tensor is contiguous in its last dimension, so the strides
# passed are those of the other dimensions; `lse`'s heads are adjacent.
#
# Write the body; the first lines, which place the program, are given.

# %% nbgrader={"grade": false, "grade_id": "decode", "locked": false, "schema_version": 3, "solution": true, "task": false}
@triton.jit
def mla_decode_kernel(q_ptr, kv_ptr, len_ptr, out_ptr, lse_ptr, H, chunk, scale,
                      stride_qb, stride_qh, stride_kb, stride_kt, stride_ob, stride_os, stride_oh, stride_lb, stride_ls,
                      DC: tl.constexpr, DR: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0)  # the sequence
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)  # (BLOCK_H,) this program's heads
    split = tl.program_id(2)  # which part of the context
    dc, dr = tl.arange(0, DC), tl.arange(0, DR)
    h_ok = heads < H
    ### BEGIN SOLUTION
    q_rows = q_ptr + b * stride_qb + heads[:, None] * stride_qh  # (BLOCK_H, 1)
    q_lat = tl.load(q_rows + dc[None, :], mask=h_ok[:, None], other=0.0)  # (BLOCK_H, DC)
    q_rope = tl.load(q_rows + DC + dr[None, :], mask=h_ok[:, None], other=0.0)  # (BLOCK_H, DR)
    start = split * chunk
    end = tl.minimum(start + chunk, tl.load(len_ptr + b))
    m = tl.full((BLOCK_H,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_H,), tl.float32)
    acc = tl.zeros((BLOCK_H, DC), tl.float32)
    for t0 in range(start, end, BLOCK_N):
        t = t0 + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        t_ok = t < end
        rows = kv_ptr + b * stride_kb + t * stride_kt  # (BLOCK_N,)
        c = tl.load(rows[:, None] + dc[None, :], mask=t_ok[:, None], other=0.0)  # (BLOCK_N, DC)
        k_r = tl.load(rows[:, None] + DC + dr[None, :], mask=t_ok[:, None], other=0.0)  # (BLOCK_N, DR)
        s = tl.dot(q_lat, tl.trans(c))
        s += tl.dot(q_rope, tl.trans(k_r))  # (BLOCK_H, BLOCK_N)
        s = tl.where(t_ok[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))  # finite: a tile holds at least one token
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])  # (BLOCK_H, BLOCK_N)
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(c.dtype), c)
        m = m_new
    seen = l > 0  # False for a split past the sequence's end
    out = tl.where(seen[:, None], acc / tl.where(seen, l, 1.0)[:, None], 0.0)
    lse = tl.where(seen, m + tl.log(tl.where(seen, l, 1.0)), float("-inf"))
    tl.store(out_ptr + b * stride_ob + split * stride_os + heads[:, None] * stride_oh + dc[None, :], out,
             mask=h_ok[:, None])
    tl.store(lse_ptr + b * stride_lb + split * stride_ls + heads, lse, mask=h_ok)
    ### END SOLUTION


# %% [markdown]
# `mla_decode` launches a grid of (sequences, blocks of 16 heads, splits) on
# partial outputs filled with NaN, then merges the splits with your
# `merge_partials`. The tests launch your kernel the same way and merge with
# the course's.

# %% nbgrader={"grade": false, "grade_id": "launch_decode", "locked": true, "schema_version": 3, "solution": false, "task": false}
def mla_decode(q, kv, lengths, scale, d_c, num_splits=1, block_n=16):
    """Fused absorbed-MLA decode: q (B, H, d_c + d_rope), kv (B, T, d_c + d_rope), lengths (B,) -> (B, H, d_c)."""
    B, H, D = q.shape
    chunk = -(-int(lengths.max()) // num_splits)  # tokens per split
    out = torch.full((B, num_splits, H, d_c), math.nan, device=q.device)  # NaN: an unwritten part shows
    lse = torch.full((B, num_splits, H), math.nan, device=q.device)
    grid = (B, triton.cdiv(H, 16), num_splits)
    mla_decode_kernel[grid](q, kv, lengths.to(torch.int32), out, lse, H, chunk, scale,
                            q.stride(0), q.stride(1), kv.stride(0), kv.stride(1),
                            out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
                            DC=d_c, DR=D - d_c, BLOCK_H=16, BLOCK_N=block_n)
    merged, _ = merge_partials(out.transpose(0, 1), lse.transpose(0, 1))  # (B, H, d_c)
    return merged.to(q.dtype)


# %% nbgrader={"grade": true, "grade_id": "test_decode", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
g = torch.Generator().manual_seed(4)
B, H, DC, DR, T = 3, 16, 64, 16, 80
q = torch.randn(B, H, DC + DR, generator=g).to(device)
kv = torch.randn(B, T, DC + DR, generator=g).to(device)
lengths = torch.tensor([80, 61, 45], device=device)
scale = (DC + DR) ** -0.5
with exercise("mla_decode_kernel"):
    parts = launch.decode_parts(mla_decode_kernel, q, kv, lengths, scale, DC, num_splits=2)
got = launch.merged(*parts)  # the two splits, merged by the course's merge_partials
want = absorbed_decode(q.double(), kv.double(), lengths, scale, DC).float()
expect_close(got, want, f"mla_decode with {B} sequences of lengths {lengths.tolist()}, {H} heads, 2 splits", **KERNEL_TOL,
             suspects={"the scale is not applied": absorbed_decode(q.double(), kv.double(), lengths, 1.0, DC).float(),
                       "the RoPE part of the scores is left out": absorbed_decode(
                           torch.cat([q[..., :DC], 0 * q[..., DC:]], -1).double(), kv.double(), lengths, scale, DC).float()},
             nan_hint="some element was written by no program, or a load read outside its tensor (the tests surround each one with NaN): check each program's offsets, mask loads past the end with other=0, and use the strides",
             hint="Check the split's range (min(start + chunk, length)), -inf (not 0) for a score past its end, "
                  "and that lse is m + log(l) in natural log.")
print("mla_decode: correct, and it equals workbook 04's absorbed decode")

### BEGIN HIDDEN TESTS
# Head counts that do not fill a block, splits past a short sequence's end (empty parts), one split,
# DeepSeek-V3's 512 + 64, float16, other tiles.
for B, H, DC, DR, lens, splits, block, dtype in [
        (2, 5, 32, 16, [150, 3], 4, 16, torch.float32),
        (1, 20, 64, 32, [33], 1, 32, torch.float32),
        (2, 16, 512, 64, [70, 19], 3, 16, torch.float32),
        (3, 16, 64, 16, [90, 1, 40], 5, 16, torch.float16)]:
    T = max(lens) + 7
    q = torch.randn(B, H, DC + DR, generator=g).to(device, dtype)
    kv = torch.randn(B, T, DC + DR, generator=g).to(device, dtype)
    lengths = torch.tensor(lens, device=device)
    where = f"mla_decode with lengths {lens}, {H} heads, d_c {DC} + d_rope {DR}, {splits} splits, {dtype}"
    with exercise("mla_decode_kernel", case=where):
        parts = launch.decode_parts(mla_decode_kernel, q, kv, lengths, 0.1, DC, num_splits=splits, block_n=block)
    got = launch.merged(*parts).to(dtype)
    want = absorbed_decode(q.double(), kv.double(), lengths, 0.1, DC).to(dtype)
    tol = KERNEL_TOL if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    expect_close(got, want, where, **tol, nan_hint="a split past a sequence's end must store 0 and -inf, not 0 / 0; "
                 "or a load read outside q or the cache (the tests surround them with NaN)")
### END HIDDEN TESTS

# %% [markdown]
# ## 5 · The paged cache
#
# A server does not give each sequence one long tensor. Its cache is a
# **pool of pages** of 64 tokens, `(n_pages, 64, 576)`, handed out as
# sequences grow, and a **block table** `(B, max_pages)` lists each
# sequence's pages in order (vLLM's PagedAttention, Kwon et al. 2023; FlashMLA's
# `block_table` with pages of 64). Token `t` of sequence `b` lives in page
# `block_table[b, t // PAGE]`, row `t % PAGE`. `pages.to_pages` builds such a
# pool from a contiguous cache, in shuffled order, as a server's would be:

# %%
kv = torch.randn(2, 150, 80)
pool, table = pages.to_pages(kv, torch.tensor([150, 70]), page_size=64)
print("pool", tuple(pool.shape), "block table", table.tolist())
assert torch.equal(pool[table[0, 2], 5], kv[0, 2 * 64 + 5])  # token 133 of sequence 0

# %% [markdown]
# Write `paged_mla_decode_kernel`: the kernel of section 4, but each tile's
# rows come from the pool through the block table (`tl.load` a block of page
# numbers, one per token; a tile may straddle two pages). `PAGE` is the pool's
# page size, a power of two. Everything else is unchanged, so start from your
# section 4 kernel.

# %% nbgrader={"grade": false, "grade_id": "paged", "locked": false, "schema_version": 3, "solution": true, "task": false}
@triton.jit
def paged_mla_decode_kernel(q_ptr, kv_ptr, table_ptr, len_ptr, out_ptr, lse_ptr, H, chunk, scale,
                            stride_qb, stride_qh, stride_kp, stride_kt, stride_tb,
                            stride_ob, stride_os, stride_oh, stride_lb, stride_ls,
                            DC: tl.constexpr, DR: tl.constexpr, PAGE: tl.constexpr,
                            BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    split = tl.program_id(2)
    dc, dr = tl.arange(0, DC), tl.arange(0, DR)
    h_ok = heads < H
    ### BEGIN SOLUTION
    q_rows = q_ptr + b * stride_qb + heads[:, None] * stride_qh  # (BLOCK_H, 1)
    q_lat = tl.load(q_rows + dc[None, :], mask=h_ok[:, None], other=0.0)  # (BLOCK_H, DC)
    q_rope = tl.load(q_rows + DC + dr[None, :], mask=h_ok[:, None], other=0.0)  # (BLOCK_H, DR)
    start = split * chunk
    end = tl.minimum(start + chunk, tl.load(len_ptr + b))
    m = tl.full((BLOCK_H,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_H,), tl.float32)
    acc = tl.zeros((BLOCK_H, DC), tl.float32)
    for t0 in range(start, end, BLOCK_N):
        t = t0 + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        t_ok = t < end
        page = tl.load(table_ptr + b * stride_tb + t // PAGE, mask=t_ok, other=0)  # (BLOCK_N,) each token's page
        rows = kv_ptr + page * stride_kp + (t % PAGE) * stride_kt  # (BLOCK_N,)
        c = tl.load(rows[:, None] + dc[None, :], mask=t_ok[:, None], other=0.0)  # (BLOCK_N, DC)
        k_r = tl.load(rows[:, None] + DC + dr[None, :], mask=t_ok[:, None], other=0.0)  # (BLOCK_N, DR)
        s = tl.dot(q_lat, tl.trans(c)) + tl.dot(q_rope, tl.trans(k_r))  # (BLOCK_H, BLOCK_N)
        s = tl.where(t_ok[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])  # (BLOCK_H, BLOCK_N)
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(c.dtype), c)
        m = m_new
    seen = l > 0
    out = tl.where(seen[:, None], acc / tl.where(seen, l, 1.0)[:, None], 0.0)
    lse = tl.where(seen, m + tl.log(tl.where(seen, l, 1.0)), float("-inf"))
    tl.store(out_ptr + b * stride_ob + split * stride_os + heads[:, None] * stride_oh + dc[None, :], out,
             mask=h_ok[:, None])
    tl.store(lse_ptr + b * stride_lb + split * stride_ls + heads, lse, mask=h_ok)
    ### END SOLUTION


# %% [markdown]
# `paged_mla_decode` checks its arguments before launching (a kernel that
# reads a wrong page does not raise: it reads another sequence's cache), then
# launches and merges as `mla_decode` does.

# %% nbgrader={"grade": false, "grade_id": "launch_paged", "locked": true, "schema_version": 3, "solution": false, "task": false}
def paged_mla_decode(q, kv_pool, block_table, lengths, scale, d_c, num_splits=1, block_n=16):
    """Fused absorbed-MLA decode over a paged cache: q (B, H, d_c + d_rope), kv_pool (n_pages, PAGE, d_c + d_rope),
    block_table (B, max_pages), lengths (B,) -> (B, H, d_c)."""
    pages.check_decode_args(q, kv_pool, block_table, lengths, scale, d_c, num_splits)  # before any launch
    B, H, D = q.shape
    chunk = -(-int(lengths.max()) // num_splits)
    out = torch.full((B, num_splits, H, d_c), math.nan, device=q.device)
    lse = torch.full((B, num_splits, H), math.nan, device=q.device)
    table = block_table.to(torch.int32)
    grid = (B, triton.cdiv(H, 16), num_splits)
    paged_mla_decode_kernel[grid](q, kv_pool, table, lengths.to(torch.int32), out, lse, H, chunk, scale,
                                  q.stride(0), q.stride(1), kv_pool.stride(0), kv_pool.stride(1), table.stride(0),
                                  out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
                                  DC=d_c, DR=D - d_c, PAGE=kv_pool.shape[1], BLOCK_H=16, BLOCK_N=block_n)
    merged, _ = merge_partials(out.transpose(0, 1), lse.transpose(0, 1))  # (B, H, d_c)
    return merged.to(q.dtype)


# %% nbgrader={"grade": true, "grade_id": "test_paged", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
g = torch.Generator().manual_seed(5)
B, H, DC, DR = 2, 16, 64, 16
lengths = torch.tensor([150, 70])  # both end mid-page
kv = torch.randn(B, 150, DC + DR, generator=g).to(device)
q = torch.randn(B, H, DC + DR, generator=g).to(device)
pool, table = pages.to_pages(kv, lengths, page_size=64, generator=g)  # shuffled pages
with exercise("paged_mla_decode_kernel"):
    parts = launch.paged_decode_parts(paged_mla_decode_kernel, q, pool, table.to(device), lengths.to(device), 0.125, DC,
                                      num_splits=2)
got = launch.merged(*parts)
want = absorbed_decode(q.double(), kv.double(), lengths, 0.125, DC).float()
expect_close(got, want, f"paged_mla_decode with pages of 64 in shuffled order, lengths {lengths.tolist()}", **KERNEL_TOL,
             nan_hint="a split past a sequence's end (sequence 1 has 70 tokens, the second split starts at 75) "
                      "must store 0 and -inf, not 0 / 0; or a load read outside q or the pool (the tests surround "
                      "them with NaN)",
             hint="Token t of sequence b is row t % PAGE of page block_table[b, t // PAGE].")
print("paged_mla_decode: correct, through a shuffled block table")

### BEGIN HIDDEN TESTS
# Other page sizes, one sequence per page, a page boundary inside a tile, many splits, float16, V3's 512 + 64.
for B, H, DC, DR, lens, page, splits, dtype in [
        (3, 7, 32, 16, [100, 17, 64], 16, 3, torch.float32),
        (2, 16, 64, 32, [65, 129], 32, 4, torch.float16),
        (1, 16, 512, 64, [200], 64, 2, torch.float32)]:
    kv = torch.randn(B, max(lens), DC + DR, generator=g)
    q = torch.randn(B, H, DC + DR, generator=g)
    lengths = torch.tensor(lens)
    pool, table = pages.to_pages(kv, lengths, page_size=page, generator=g)
    where = f"paged_mla_decode with pages of {page}, lengths {lens}, {H} heads, {splits} splits, {dtype}"
    with exercise("paged_mla_decode_kernel", case=where):
        parts = launch.paged_decode_parts(paged_mla_decode_kernel, q.to(device, dtype), pool.to(device, dtype),
                                          table.to(device), lengths.to(device), 0.1, DC, num_splits=splits)
    got = launch.merged(*parts).to(dtype)
    want = absorbed_decode(q.double(), kv.double(), lengths, 0.1, DC).to(dtype)
    tol = KERNEL_TOL if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    expect_close(got.cpu(), want, where, **tol, hint="The page size is PAGE, whatever FlashMLA uses.",
                 nan_hint="a split past a sequence's end must store 0 and -inf, not 0 / 0; or a load read outside "
                          "q or the pool (the tests surround them with NaN)")
### END HIDDEN TESTS

# %% [markdown]
# ## 6 · It is workbook 04's layer
#
# Put the kernel inside a real decode step: a small MLA layer (DeepSeek-V3's
# structure, with `d_c` = 64 and `d_rope` = 16 where V3 has 512 and 64), a
# prompt of 40 tokens in the latent cache, then one new token. Absorb $W^{UK}$
# into the query, run your paged kernel over pages of 16 tokens, apply
# $W^{UV}$ and $W^O$, and compare with workbook 04's `mla_absorbed_step`: with
# a right kernel the two agree to about $10^{-7}$, float32's rounding.

# %%
from attnlab.answers import (LatentCache, MLAWeights, compress_q,
                             decoupled_rope, mla_absorbed_step, rope_tables)
from attnlab.models import MLAConfig

layer = MLAWeights(MLAConfig("small", d_model=96, n_heads=6, d_latent=64, d_q_latent=48, d_nope=16, d_rope=16,
                             d_v=16, n_layers=1)).double()
cfg = layer.cfg
h = torch.randn(2, 41, cfg.d_model, dtype=torch.float64)
cache = LatentCache()
mla_absorbed_step(layer, h[:, :40], cache)  # the prompt
want = mla_absorbed_step(layer, h[:, 40:], cache)  # (2, 1, C): the reference decode step

# The same step with the kernel: [q_C W_UK | q_R] per head, [c_KV | k_R] per cached token.
c_q, q_c = compress_q(layer, h[:, 40:])  # (B, 1, d'_c), (B, H, 1, d_nope)
q_r, _ = decoupled_rope(layer, h[:, 40:], c_q, *rope_tables(torch.arange(40, 41), cfg.d_rope))
W_uk = layer.W_uk.weight.view(cfg.n_heads, cfg.d_nope, cfg.d_latent)  # (H, d_nope, d_c)
q_abs = torch.cat([torch.einsum("bhtn,hnc->bhtc", q_c, W_uk), q_r], -1)[:, :, 0]  # (B, H, d_c + d_rope)
kv_rows = torch.cat([cache.c_kv, cache.k_r], -1)  # (B, 41, d_c + d_rope)
pool, table = pages.to_pages(kv_rows, torch.tensor([41, 41]), page_size=16)
o_lat = paged_mla_decode(q_abs.float().to(device), pool.float().to(device), table.to(device),
                         torch.tensor([41, 41], device=device), cfg.softmax_scale, cfg.d_latent, num_splits=2)
W_uv = layer.W_uv.weight.view(cfg.n_heads, cfg.d_v, cfg.d_latent)  # (H, d_v, d_c)
o = torch.einsum("bhc,hvc->bhv", o_lat.double().cpu(), W_uv).reshape(2, 1, -1)  # (B, 1, H * d_v)
print("kernel step vs workbook 04's absorbed step, relative difference:",
      f"{((layer.W_o(o) - want).norm() / want.norm()).item():.1e}")

# %% [markdown]
# ## 7 · On a GPU
#
# The interpreter proves the kernel right; only a GPU can say whether it is
# fast. Workbook 05's benchmark (`python -m attnlab.lesson.bench`) times the
# course's own version of this kernel (the same algorithm, with its tiles
# chosen by Triton's autotuner, a split count per shape and a small kernel for
# the merge) as its sixth mechanism, *MLA fused (Triton)*, beside PyTorch's
# absorbed decode, at DeepSeek-V3's dimensions in bf16, for batches 8 and 64
# and contexts 1K to 32K, against the roofline measured in the same run. The
# course's targets for it: at 32K tokens, **60 % of the roofline or more**
# (PyTorch's absorbed step: 31 % at batch 8) and **2.5× faster** than PyTorch's
# absorbed step. FlashMLA reports up to 3,000 GB/s on an H800, whose memory
# moves 3.35 TB/s: about 90 %.
#
# On the CPU nothing here is timed: the interpreter runs each program one
# after another in NumPy, and its time says nothing about the kernel. At
# DeepSeek-V3's head dimensions (128 heads, 576 and 512), batch 2 and 1,024
# cached tokens, one step took 3.5 to 4.1 s in the interpreter on the course's
# two-core machine, against 7 ms for PyTorch's absorbed step on the same CPU,
# 500 times less (2026-12-01, two runs on an otherwise idle machine); the H200
# of workbook 05 ran a step 128 times larger (batch 8, 32K tokens) in 0.34 ms
# with PyTorch. The
# cell below shows the GPU figures committed with the course, where there are
# some.

# %%
results = sorted(pathlib.Path("../05_cache_benchmark/results").glob("*/bench.json"))  # workbook 05's, per GPU
rows = []
for path in results:
    run = json.loads(path.read_text())
    fused = [r for r in run["decode"] if r["mechanism"] == "MLA fused (Triton)"]
    rows += [(path.parent.name, r) for r in fused]
if not rows:
    print(f"The GPU runs committed with the course ({', '.join(p.parent.name for p in results) or 'none'}) predate "
          "the fused kernel: its rows appear here after the next GPU run of `python -m attnlab.lesson.bench`.")
else:
    fig, ax = plt.subplots(figsize=(6.5, 3))
    for batch in sorted({r["batch"] for _, r in rows}):
        mine = [r for _, r in rows if r["batch"] == batch]
        ax.plot([r["context"] for r in mine], [100 * r["efficiency"] for r in mine], "o-", label=f"batch {batch}")
    ax.axhline(60, color="C3", ls="--", lw=1, label="target, 60 %")
    ax.set(xscale="log", xlabel="context (tokens)", ylabel="% of roofline", title=f"fused kernel on {rows[0][0]}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## Recap
#
# **What to remember**
# - The online softmax keeps $(m, \ell, a)$ and rescales by $e^{m - m'}$ when the
#   maximum moves: attention over any number of keys in fixed memory, exactly.
# - Partial results merge by their log-sum-exps, largest first subtracted: a
#   long context can be split across programs and combined after (flash-decoding).
# - A Triton kernel is one program of a grid working on blocks; masks handle
#   the edges; a row's address is `base + i * stride`, never `i * width` assumed.
# - Fused absorbed-MLA decode: heads share every `[c_KV | k_R]` row, so one
#   program takes a block of heads and reads each cached row once; the scores
#   never reach memory.
# - A paged cache adds one indirection, `block_table[b, t // PAGE]`, and
#   changes nothing else.
#
# **Misconceptions this workbook dispels**
# - "A softmax needs all its inputs first": the online form is exact.
# - "Splitting a sequence's keys across programs approximates attention":
#   merged by log-sum-exp, the result is the same function.
# - "MLA is slow to decode because of the latent": the cache is small; unfused
#   code is what spends the time, moving scores to memory and back.
# - "Triton needs a GPU to be tested": its interpreter runs kernels on a CPU
#   (no bfloat16 there), which is how this workbook is graded.
#
# **What breaks if you get this wrong**: a forgotten rescale or a missing mask
# gives wrong attention that still looks like attention; `0 / 0` in an empty
# split poisons the whole merged row with NaN; a hard-coded stride or page size
# reads another sequence's cache.
#
# **Sources**
# - Milakov and Gimelshein 2018, *Online normalizer calculation for softmax*, arXiv 1805.02867.
# - Dao et al. 2022, *FlashAttention*, arXiv 2205.14135; Dao, Haziza, Massa and Sizov 2023,
#   *Flash-Decoding for long-context inference* (PyTorch blog).
# - Kwon et al. 2023, *Efficient Memory Management for LLM Serving with PagedAttention*, arXiv 2309.06180.
# - DeepSeek-AI, FlashMLA (github.com/deepseek-ai/FlashMLA): pages of 64, 576/512 head dims, its README's figures.
# - Triton's tutorial *Fused Attention* (06-fused-attention), and `TRITON_INTERPRET=1` in Triton's documentation.
#
# **Next:** back to the [start page](../START.ipynb), to see where you stand in each workbook: the course
# is done. Workbook 05's benchmark times your kernel's twin on a GPU.
