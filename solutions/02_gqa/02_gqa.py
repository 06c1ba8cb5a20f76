# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Grouped-query and multi-query attention
#
# Workbook 01 ended on a number: a plain MHA model caches
# $2 \cdot n_h \cdot d_h \cdot l$ elements for every token it has seen, and at
# long contexts that cache, not the weights, fills the GPU. Decoding is also
# limited by reading that cache from memory at every step, so a smaller cache
# is both more sequences per GPU and faster steps, as long as a step reads the
# cache as it is (workbook 05 times an MLA that decompresses it, and is slower).
#
# The first fix keeps the queries and shares the keys and values.
# **Multi-query attention** (MQA; Shazeer 2019, arXiv 1911.02150) gives all
# query heads one key head and one value head. **Grouped-query attention**
# (GQA; Ainslie et al. 2023, arXiv 2305.13245) sits in between: the $n_h$ query
# heads form $n_g$ groups, and each group shares one K/V head. Llama-3-8B has
# 32 query heads and 8 K/V heads: a quarter of the MHA cache.
#
# **You will build**
# 1. `repeat_kv`, and GQA as plain attention over repeated K/V heads;
# 2. GQA computed group by group, without ever materialising the repeated heads;
# 3. a GQA module with a KV cache, and the checks that it *is* MHA when
#    $n_g = n_h$ and MQA when $n_g = 1$;
# 4. the backward pass of a shared K/V head;
# 5. the conversion of an MHA layer into GQA by mean-pooling heads, and what it costs;
# 6. the cache size of GQA models.
#
# **You need** workbook 01: attention with a bottom-right causal mask, heads,
# the KV cache. Its answers come with the course package (`attnlab.answers`),
# so this workbook stands on its own.
#
# **Time** about 75 minutes.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

import attnlab
from attnlab import answers
from attnlab.checks import (draw, exercise, expect, expect_close, expect_number, expect_shape, gradients, number,
                            set_weights, storage_watch)
from attnlab.models import GPUS, MODELS
# Workbook 01's answers, as building blocks for this one.
from attnlab.answers import KVCache, attention, attention_backward, merge_heads, split_heads

torch.manual_seed(0)
device = attnlab.pick_device()
print(f"torch {torch.__version__}, running on {device}")

# %% [markdown]
# ## 1 · Sharing K/V heads
#
# With $n_h$ query heads and $n_g$ K/V heads, each K/V head serves
# $n_{rep} = n_h / n_g$ **consecutive** query heads: query head $h$ reads
# K/V head $\lfloor h / n_{rep} \rfloor$. For $n_h = 8$, $n_g = 2$:
#
# ```
# query heads   0 1 2 3 | 4 5 6 7
# K/V head         0    |    1
# ```
#
# The simplest implementation copies each K/V head $n_{rep}$ times and then
# runs ordinary attention. Mind the head order. `torch.repeat_interleave(x, n_rep, dim=1)`
# gives heads `0 0 0 0 1 1 1 1` (right); `x.repeat(1, n_rep, 1, 1)` tiles them as
# `0 1 0 1 0 1 0 1` (wrong: query head 1 would read K/V head 1). Both have the
# right shape and both run: only the values tell them apart. Hugging Face's
# Llama code does the right thing with `expand` and `reshape`; any checkpoint
# trained with one order gives garbage when loaded with the other.

# %% nbgrader={"grade": false, "grade_id": "expand", "locked": false, "schema_version": 3, "solution": true, "task": false}
def repeat_kv(x, n_rep):
    """(B, G, T, D) -> (B, G * n_rep, T, D), where head h of the output is head h // n_rep of x."""
    ### BEGIN SOLUTION
    B, G, T, D = x.shape
    return x[:, :, None].expand(B, G, n_rep, T, D).reshape(B, G * n_rep, T, D)  # (B, H, T, D)
    ### END SOLUTION


def gqa_attention_expanded(q, k, v, causal=False):
    """GQA by repeating K/V heads. q (B, H, Tq, D), k (B, G, Tk, D), v (B, G, Tk, Dv) -> (B, H, Tq, Dv)."""
    ### BEGIN SOLUTION
    n_rep = q.shape[1] // k.shape[1]
    return attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), causal=causal)  # (B, H, Tq, Dv)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_expand", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# K/V head g is filled with the number g, so the output shows which head each query head reads.
labelled = torch.arange(2.0, device=device).view(1, 2, 1, 1).expand(1, 2, 3, 4)  # (B=1, G=2, T=3, D=4)
with exercise("repeat_kv"):
    got = repeat_kv(labelled, 4)
expect_shape(got, (1, 8, 3, 4), "repeat_kv of a (1, 2, 3, 4) tensor with n_rep=4",
             hint="The head axis is dim=1; T and D must not change.")
heads_read = got[0, :, 0, 0].tolist()
assert heads_read == [0, 0, 0, 0, 1, 1, 1, 1], (
    f"query heads 0..7 read K/V heads {heads_read}; expected [0, 0, 0, 0, 1, 1, 1, 1]."
    + (" You tiled the heads (repeat); each K/V head must serve n_rep consecutive query heads"
       " (repeat_interleave, or expand then reshape)." if heads_read == [0, 1] * 4 else ""))

q = torch.randn(2, 8, 5, 16, device=device)
k, v = torch.randn(2, 2, 5, 16, device=device), torch.randn(2, 2, 5, 16, device=device)
for causal in (False, True):
    with exercise("gqa_attention_expanded"):
        got = gqa_attention_expanded(q, k, v, causal=causal)
    expect_close(got, answers.gqa_attention(q, k, v, causal), f"gqa_attention_expanded(causal={causal})")
print("repeat_kv and gqa_attention_expanded: correct")

### BEGIN HIDDEN TESTS
# Several K/V heads shared by groups, one K/V head for all (MQA), one query head per K/V head (MHA); fewer
# queries than keys, causal and not; values wider than the keys; batches above 1; float64.
d = draw(211)
for G, n_rep, causal in [(d.int(2, 4), d.int(2, 5), True), (1, d.int(2, 6), False), (d.int(2, 5), 1, True)]:
    B, D, Tk = d.int(1, 3), d.int(2, 8), d.int(3, 10)
    Tq = d.int(1, Tk - 1)
    hx = torch.randn(B, G, Tk, D, generator=d.torch, dtype=torch.float64).to(device)
    case = f"repeat_kv of a ({B}, {G}, {Tk}, {D}) float64 tensor with n_rep={n_rep}"
    with exercise("repeat_kv", case=case):
        got = repeat_kv(hx, n_rep)
    expect_close(got, answers.repeat_kv(hx, n_rep), case,
                 hint="Query head h reads K/V head h // n_rep, for any batch, size and dtype.")
    hq = torch.randn(B, G * n_rep, Tq, D, generator=d.torch, dtype=torch.float64).to(device)
    hv = torch.randn(B, G, Tk, D + 1, generator=d.torch, dtype=torch.float64).to(device)  # values wider than keys
    case = (f"gqa_attention_expanded with {G * n_rep} query heads and {G} K/V heads, {Tq} queries against {Tk} "
            f"keys, values {D + 1} wide (keys {D}), batch {B}, float64{', causal' if causal else ''}")
    with exercise("gqa_attention_expanded", case=case):
        got = gqa_attention_expanded(hq, hx, hv, causal=causal)
    expect_close(got, answers.gqa_attention(hq, hx, hv, causal), case)
### END HIDDEN TESTS

# %% [markdown]
# ## 2 · GQA without the copies
#
# Repeating K and V multiplies exactly the memory traffic GQA was meant to
# save: the copy is as large as an MHA cache. Instead, compute one group at a
# time. The $n_{rep}$ query heads of a group all attend to the same keys, so
# stack them along the query axis and the group is one ordinary attention:
#
# ```
# q  (B, H, Tq, D)  --reshape-->  (B, G, n_rep·Tq, D)   a group's query heads, one after another
# k  (B, G, Tk, D)                                       untouched
# scores = q @ kᵀ                 (B, G, n_rep·Tq, Tk)
# ```
#
# The reshape copies neither K nor V, and none of `q` when `q` is contiguous,
# because the heads of a group are already adjacent (that is why the
# interleaved order is the natural one). Row $r \cdot T_q + i$
# of a group's scores belongs to query position $i$, so the causal mask is the
# `(Tq, Tk)` mask of workbook 01 stacked $n_{rep}$ times. Then softmax, multiply
# by the group's values, and reshape back to `(B, H, Tq, Dv)`. Inference kernels
# such as FlashAttention and FlashMLA pack a group's heads into one tile in the
# same way.
#
# The check below watches every tensor your function creates and fails if one
# of them is as large as the repeated keys, including copies that torch makes
# inside a call (a matmul that broadcasts K over the heads of a group copies
# it). Workbook 01's `attention`, given here, broadcasts its leading axes, so
# it also accepts K and V with a head axis of size 1.

# %% nbgrader={"grade": false, "grade_id": "grouped", "locked": false, "schema_version": 3, "solution": true, "task": false}
def gqa_attention(q, k, v, causal=False):
    """GQA without repeating K or V. q (B, H, Tq, D), k (B, G, Tk, D), v (B, G, Tk, Dv) -> (B, H, Tq, Dv)."""
    ### BEGIN SOLUTION
    B, H, Tq, D = q.shape
    G, Tk = k.shape[1], k.shape[2]
    n_rep = H // G
    qg = q.reshape(B, G, n_rep * Tq, D)  # (B, G, n_rep * Tq, D)
    scores = qg @ k.transpose(-2, -1) / math.sqrt(D)  # (B, G, n_rep * Tq, Tk)
    if causal:
        allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)  # (Tq, Tk)
        scores = scores.masked_fill(~allowed.repeat(n_rep, 1), float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # (B, G, n_rep * Tq, Dv)
    return out.reshape(B, H, Tq, v.shape[-1])  # (B, H, Tq, Dv)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_grouped", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
q = torch.randn(2, 8, 1, 32, device=device)  # one decode step
k, v = torch.randn(2, 2, 64, 32, device=device), torch.randn(2, 2, 64, 32, device=device)
repeated_bytes = 4 * k.untyped_storage().nbytes()  # what repeat_kv(k, 4) would allocate
for causal in (False, True):
    with exercise("gqa_attention"), storage_watch() as watch:
        got = gqa_attention(q, k, v, causal=causal)
    expect_close(got, answers.gqa_attention(q, k, v, causal), f"gqa_attention(causal={causal})",
                 suspects={"query heads are grouped with a stride (q.view(B, n_rep, G, ...)) instead of "
                           "consecutively": answers.attention(q, k.repeat(1, 4, 1, 1), v.repeat(1, 4, 1, 1), causal)})
    assert watch.largest < repeated_bytes, (
        f"gqa_attention created a tensor of {watch.largest:,} bytes, as large as the keys repeated for every "
        f"query head ({repeated_bytes:,} bytes): compute group by group instead of repeating K and V.")
q = torch.randn(2, 8, 3, 32, device=device)  # three new tokens against 64 keys
with exercise("gqa_attention"):
    got = gqa_attention(q, k, v, causal=True)
expect_close(got, answers.gqa_attention(q, k, v, True), "gqa_attention with 3 queries and 64 keys, causal",
             hint="Row r * Tq + i of a group belongs to query i: is the (Tq, Tk) mask stacked n_rep times "
                  "and aligned bottom-right?")
print("gqa_attention: correct, and no repeated K/V")

### BEGIN HIDDEN TESTS
# Values narrower and wider than the keys; a decode step against a long cache (where a copy of the keys for
# every query head would show); as many queries as keys, not causal; one query head per K/V head;
# batches above 1; float64.
d = draw(222)
for G, n_rep, Tq, Tk, causal in [(d.int(2, 3), d.int(2, 4), d.int(2, 5), d.int(6, 12), True),
                                 (d.int(2, 4), d.int(2, 4), 1, d.int(33, 48), True),
                                 (1, d.int(3, 6), None, None, False), (d.int(2, 3), 1, d.int(1, 3), d.int(4, 8), True)]:
    if Tq is None:
        Tq = Tk = d.int(2, 6)
    B, D, Dv = d.int(1, 3), d.int(3, 9), d.int(2, 9)
    hq = torch.randn(B, G * n_rep, Tq, D, generator=d.torch, dtype=torch.float64).to(device)
    hk = torch.randn(B, G, Tk, D, generator=d.torch, dtype=torch.float64).to(device)
    hv = torch.randn(B, G, Tk, Dv, generator=d.torch, dtype=torch.float64).to(device)
    case = (f"gqa_attention with {G * n_rep} query heads and {G} K/V heads, {Tq} queries against {Tk} keys, "
            f"values {Dv} wide (keys {D}), batch {B}, float64{', causal' if causal else ''}")
    with exercise("gqa_attention", case=case), storage_watch() as watch:
        got = gqa_attention(hq, hk, hv, causal=causal)
    expect_close(got, answers.gqa_attention(hq, hk, hv, causal), case,
                 hint="The output is (B, H, Tq, Dv): its width is the values' width, not the keys'.")
    if n_rep > 1 and Tk > 8 * Tq:
        repeated = n_rep * hk.untyped_storage().nbytes()
        expect(watch.largest < repeated, f"{case}: your code created a tensor as large as the keys repeated for "
               "every query head; compute group by group instead of repeating K and V",
               f"{watch.largest:,} bytes, the repeated keys {repeated:,}")
### END HIDDEN TESTS

# %% [markdown]
# ## 3 · The GQA module, and what it is a generalisation of
#
# The module differs from workbook 01's MHA in two shapes only: $W_K$ and $W_V$
# map the width $C$ to $n_g \cdot D$ instead of $n_h \cdot D$, and the cache
# holds $n_g$ heads. Write `forward` so that it handles both cases:
#
# - without a cache: causal self-attention over `x`;
# - with a `KVCache` (workbook 01's, from the course package): append the new
#   tokens' keys and values, then attend to everything cached. A prefill is a
#   call with the whole prompt; a decode step a call with one token.
#
# Two special cases are worth checking, and the test does: with $n_g = n_h$
# every query head has its own K/V head and GQA **is** MHA (same weights, same
# output); with $n_g = 1$ one K/V head serves all of them and GQA **is** MQA.

# %% nbgrader={"grade": false, "grade_id": "module", "locked": false, "schema_version": 3, "solution": true, "task": false}
class GroupedQueryAttention(nn.Module):
    """Causal grouped-query self-attention: (B, T, C) -> (B, T, C)."""

    def __init__(self, d_model, n_heads, n_kv_heads):
        super().__init__()
        assert d_model % n_heads == 0 and n_heads % n_kv_heads == 0
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        d_head = d_model // n_heads
        self.W_q = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.W_k = nn.Linear(d_model, n_kv_heads * d_head, bias=False)
        self.W_v = nn.Linear(d_model, n_kv_heads * d_head, bias=False)
        self.W_o = nn.Linear(n_heads * d_head, d_model, bias=False)

    def forward(self, x, cache=None):
        ### BEGIN SOLUTION
        q = split_heads(self.W_q(x), self.n_heads)  # (B, H, T, D)
        k = split_heads(self.W_k(x), self.n_kv_heads)  # (B, G, T, D)
        v = split_heads(self.W_v(x), self.n_kv_heads)  # (B, G, T, D)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, G, T_cached, D)
        return self.W_o(merge_heads(gqa_attention(q, k, v, causal=True)))  # (B, T, C)
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_module", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Your module holds the test's weights; the expected values come from the test's own copies.
# (Your module runs with the course's gqa_attention and repeat_kv here, so that a
# mistake in sections 1-2 costs points there, not again here.)
def gqa_weights(C, H, G, dtype=torch.float32, generator=None):
    """The test's W_q, W_k, W_v, W_o for GroupedQueryAttention(C, H, G)."""
    D = C // H
    return [torch.randn(rows, C, generator=generator, dtype=dtype).to(device) / C**0.5
            for rows in (H * D, G * D, G * D, C)]


def holding(module, W, what):
    set_weights(module, dict(zip(["W_q.weight", "W_k.weight", "W_v.weight", "W_o.weight"], W)), what)
    return module


x = torch.randn(2, 7, 32, device=device)
with torch.no_grad():
    for n_kv in (4, 2, 8, 1):
        W = gqa_weights(32, 8, n_kv)
        gqa = holding(GroupedQueryAttention(32, 8, n_kv).to(device), W, f"GroupedQueryAttention(32, 8, {n_kv})")
        with exercise("GroupedQueryAttention"):
            got = gqa(x)
        want = answers.gqa_forward(x, *W, n_heads=8, n_kv_heads=n_kv)
        expect_close(got, want, f"GroupedQueryAttention(32, 8, {n_kv})(x)",
                     hint="Are K and V split into n_kv_heads heads? Is the mask causal?")
        if n_kv == 8:  # as many K/V heads as query heads: this is workbook 01's MHA
            expect_close(got, answers.mha_forward(x, *W, n_heads=8), "GQA with n_kv_heads = n_heads vs MHA")
        if n_kv == 1:  # one K/V head for all: MQA, every query head attends to the same keys
            q = answers.split_heads(x @ W[0].T, 8)
            k, v = (x @ W[1].T)[:, None], (x @ W[2].T)[:, None]  # (B, 1, T, D): broadcast over the heads
            mqa = answers.merge_heads(torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(4)).masked_fill(
                ~answers.causal_mask(7, 7, device), float("-inf")), -1) @ v) @ W[3].T
            expect_close(got, mqa, "GQA with n_kv_heads = 1 vs MQA")

    # Prefill 4 tokens, then decode 3 one at a time, with a cache of 2 K/V heads.
    W = gqa_weights(32, 8, 2)
    gqa = holding(GroupedQueryAttention(32, 8, 2).to(device), W, "GroupedQueryAttention(32, 8, 2)")
    kv = KVCache()
    with exercise("GroupedQueryAttention"):
        steps = [gqa(x[:, :4], cache=kv)] + [gqa(x[:, t:t + 1], cache=kv) for t in range(4, 7)]
    want = answers.gqa_forward(x, *W, n_heads=8, n_kv_heads=2)
    expect_shape(kv.k, (2, 2, 7, 4), "the cache's keys after 7 tokens",
                 hint="The cache holds n_kv_heads heads. (An empty KVCache has length 0, so `if cache:` is "
                      "False: test `if cache is not None:`.)")
    for t, step in zip([slice(0, 4), slice(4, 5), slice(5, 6), slice(6, 7)], steps):
        expect_close(step, want[:, t], f"the cached step for positions {t.start}..{t.stop - 1}",
                     hint="Every step through the cache is causal, a step of several tokens too: the mask is "
                          "aligned bottom-right, so each new token sees every cached one and the new ones before it.")
print("GroupedQueryAttention: correct; it is MHA with n_kv_heads = n_heads and MQA with n_kv_heads = 1")

### BEGIN HIDDEN TESTS
# Groups of several query heads, one K/V head (MQA) and as many as query heads (MHA); a prompt of several
# tokens then single tokens, single tokens from the start, steps of several tokens after a filled cache;
# the gradients, which training this layer needs; batches above 1; float64.
d = draw(233)
for G, H, sizes in [(d.int(2, 3), None, ([2, 3, 5], [1])), (1, d.int(2, 5), ([1], [1])),
                    (None, d.int(2, 4), ([2, 4], [2, 3]))]:
    G = G or H
    H = H or G * d.int(2, 3)
    B, C = d.int(1, 3), H * d.int(2, 4)
    chunks = [d.choice(sizes[0])] + [d.choice(sizes[1]) for _ in range(d.int(2, 3))]
    hW = gqa_weights(C, H, G, torch.float64, d.torch)
    hm = holding(GroupedQueryAttention(C, H, G).to(device).double(), hW, f"GroupedQueryAttention({C}, {H}, {G})")
    hx = torch.randn(B, sum(chunks), C, generator=d.torch, dtype=torch.float64).to(device).requires_grad_()
    layer = f"GroupedQueryAttention({C}, {H}, {G}) on a batch of {B} sequences of {sum(chunks)} tokens, float64"
    # The same layer with a KV cache, fed the tokens in steps of `chunks` tokens.
    steps, kv, start = [], KVCache(), 0
    with torch.no_grad():
        for n in chunks:
            case = f"{layer}, with a KV cache: the step of {n} token(s) at positions {start}..{start + n - 1}"
            with exercise("GroupedQueryAttention", case=case):
                out = hm(hx[:, start:start + n], cache=kv)
            steps.append((case, start, n, out))
            start += n
    with exercise("GroupedQueryAttention", case=layer):
        got = hm(hx)
    own = [w.requires_grad_() for w in hW]  # the test's copies: the expected values come from these
    want = answers.gqa_forward(hx, *own, n_heads=H, n_kv_heads=G)
    expect_close(got, want.detach(), layer)
    expect(got.requires_grad, f"{layer}: your output carries no gradient, so the layer cannot be trained",
           "is it computed under torch.no_grad(), or detached?")
    weights = [hm.W_q.weight, hm.W_k.weight, hm.W_v.weight, hm.W_o.weight]  # your module's: its gradients
    with exercise("GroupedQueryAttention", case=layer):
        got_grads = gradients(got, [hx] + weights, 2 * got.detach())  # of sum(output ** 2)
    want_grads = torch.autograd.grad(want.square().sum(), [hx] + own)
    for name, gg, wg in zip(["x", "W_q", "W_k", "W_v", "W_o"], got_grads, want_grads):
        what = f"the gradient of sum(output ** 2) with respect to {name} through {layer}"
        expect(gg is not None, f"{what} is missing: no gradient reaches {name}",
               ".data, .detach() or torch.no_grad() cuts it off")
        expect_close(gg, wg, what)
    for case, start, n, step in steps:
        expect_close(step, want[:, start:start + n].detach(), case,
                     hint="Every step of several new tokens needs the causal mask, aligned bottom-right, "
                          "also when the cache already holds tokens.")
### END HIDDEN TESTS

# %% [markdown]
# ## 4 · The gradient of a shared head
#
# In the expanded form, K/V head $g$ is copied into the $n_{rep}$ query heads
# of its group, and each copy gets a gradient from its own query head. A copy
# is a use of the same variable in several places, and the chain rule adds the
# contributions of every use:
#
# $$\frac{\partial L}{\partial K_g} = \sum_{h \in \text{group } g} \frac{\partial L}{\partial K^{(h)}},$$
#
# where $K^{(h)}$ is the copy read by query head $h$. The backward of
# `repeat_kv` is therefore a sum over each group, not a mean, and not a sum over
# every $n_g$-th head. Write it, then the whole GQA backward from workbook 01's
# `attention_backward` (given), your `repeat_kv` and that sum.

# %% nbgrader={"grade": false, "grade_id": "backward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def sum_over_groups(d_heads, n_kv_heads):
    """Backward of repeat_kv: (B, H, T, D) per-query-head gradients -> (B, G, T, D)."""
    ### BEGIN SOLUTION
    B, H, T, D = d_heads.shape
    return d_heads.view(B, n_kv_heads, H // n_kv_heads, T, D).sum(dim=2)  # (B, G, T, D)
    ### END SOLUTION


def gqa_attention_backward(q, k, v, dout, causal=False):
    """Gradients of gqa_attention(q, k, v, causal): (dq, dk, dv) with the shapes of q, k and v."""
    ### BEGIN SOLUTION
    G, n_rep = k.shape[1], q.shape[1] // k.shape[1]
    dq, dk_heads, dv_heads = attention_backward(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), dout, causal)
    return dq, sum_over_groups(dk_heads, G), sum_over_groups(dv_heads, G)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_backward", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
q = torch.randn(2, 6, 4, 8, device=device, requires_grad=True)
k = torch.randn(2, 2, 4, 8, device=device, requires_grad=True)
v = torch.randn(2, 2, 4, 8, device=device, requires_grad=True)
dout = torch.randn(2, 6, 4, 8, device=device)
for causal in (False, True):
    with exercise("gqa_attention_backward"):
        got = gqa_attention_backward(q.detach(), k.detach(), v.detach(), dout, causal=causal)
    want = torch.autograd.grad(answers.gqa_attention(q, k, v, causal), (q, k, v), dout)
    assert isinstance(got, (tuple, list)) and len(got) == 3, "gqa_attention_backward must return (dq, dk, dv)"
    for name, g_, w_ in zip(["dq", "dk", "dv"], got, want):
        expect_close(g_, w_, f"{name} (causal={causal})",
                     hint="The gradient of a shared head is the sum over the query heads of its group.")
print("gqa_attention_backward: correct")

### BEGIN HIDDEN TESTS
# Fewer queries than keys (causal, bottom-right), as many and not causal, one query against one K/V head
# (MQA); values narrower and wider than the keys; batches above 1; float64.
d = draw(244)
for G, n_rep, Tq, Tk, causal in [(d.int(2, 3), d.int(2, 4), d.int(2, 3), d.int(4, 7), True),
                                 (d.int(2, 3), d.int(2, 3), None, None, False), (1, d.int(2, 4), 1, d.int(3, 7), True)]:
    if Tq is None:
        Tq = Tk = d.int(2, 5)
    B, D, Dv = d.int(1, 3), d.int(3, 7), d.choice([d.int(2, 4), d.int(6, 9)])
    hq = torch.randn(B, G * n_rep, Tq, D, generator=d.torch, dtype=torch.float64).to(device).requires_grad_()
    hk = torch.randn(B, G, Tk, D, generator=d.torch, dtype=torch.float64).to(device).requires_grad_()
    hv = torch.randn(B, G, Tk, Dv, generator=d.torch, dtype=torch.float64).to(device).requires_grad_()
    hd = torch.randn(B, G * n_rep, Tq, Dv, generator=d.torch, dtype=torch.float64).to(device)
    case = (f"gqa_attention_backward with {G * n_rep} query heads and {G} K/V heads, {Tq} queries against {Tk} "
            f"keys, values {Dv} wide (keys {D}), batch {B}, float64{', causal' if causal else ''}")
    with exercise("gqa_attention_backward", case=case):
        got = gqa_attention_backward(hq.detach(), hk.detach(), hv.detach(), hd, causal=causal)
    want = torch.autograd.grad(answers.gqa_attention(hq, hk, hv, causal), (hq, hk, hv), hd)
    expect(isinstance(got, (tuple, list)) and len(got) == 3, f"{case}: your code must return (dq, dk, dv)")
    for name, g_, w_ in zip(["dq", "dk", "dv"], got, want):
        expect_close(g_, w_, f"{name} of {case}", hint="dq has the shape of q, dk of k, dv of v: take each "
                     "shape from its own tensor (Tq and Tk, and the key and value widths, can differ).")
    hh = torch.randn(B, G * n_rep, Tk, Dv, generator=d.torch, dtype=torch.float64).to(device)
    case = f"sum_over_groups of a ({B}, {G * n_rep}, {Tk}, {Dv}) float64 gradient into {G} K/V heads"
    with exercise("sum_over_groups", case=case):
        got = sum_over_groups(hh, G)
    expect_close(got, hh.view(B, G, n_rep, Tk, Dv).sum(2), case)
### END HIDDEN TESTS

# %% [markdown]
# ## 5 · From an MHA checkpoint to GQA
#
# GQA models need not be trained from scratch. Ainslie et al. (2023, §2.1–2.2)
# convert an MHA checkpoint by **mean-pooling** the key and value projections
# of each group's heads into one head, then continue pre-training for about 5 %
# of the original compute ("uptraining"); the result comes close to MHA's
# quality at nearly MQA's speed.
#
# For a projection stored as `nn.Linear` stores it, $W_K$ is `(H·D, C)`: rows
# $hD \ldots (h+1)D - 1$ produce head $h$. Pooling group $g$ averages the row
# blocks of heads $g \cdot n_{rep} \ldots (g+1) \cdot n_{rep} - 1$.
#
# How much does the conversion cost *before* any uptraining? Write
# `conversion_error`: the relative error $\lVert y_{GQA} - y_{MHA}\rVert / \lVert y_{MHA}\rVert$
# of the outputs on some input `x`, where the GQA layer keeps $W_Q$ and $W_O$
# and mean-pools $W_K$ and $W_V$. Use `answers.mha_forward` and
# `answers.gqa_forward` (workbook 01's and this workbook's answers) for the
# two layers.

# %% nbgrader={"grade": false, "grade_id": "mean_pool", "locked": false, "schema_version": 3, "solution": true, "task": false}
def mean_pool_heads(W, n_heads, n_kv_heads):
    """(H * D, C) key or value projection -> (G * D, C), each group's heads averaged."""
    ### BEGIN SOLUTION
    HD, C = W.shape
    D = HD // n_heads
    return W.view(n_kv_heads, n_heads // n_kv_heads, D, C).mean(dim=1).reshape(n_kv_heads * D, C)
    ### END SOLUTION


def conversion_error(W_q, W_k, W_v, W_o, n_heads, n_kv_heads, x):
    """Relative output error of the mean-pooled GQA layer against the MHA layer, on x (B, T, C).

    Both layers are causal: answers.mha_forward(x, W_q, W_k, W_v, W_o, n_heads) and
    answers.gqa_forward(x, W_q, W_k2, W_v2, W_o, n_heads, n_kv_heads) with the pooled W_k2, W_v2.
    Returns a Python float: the Frobenius norm of the difference of the (B, T, C) outputs over
    the norm of the MHA output.
    """
    ### BEGIN SOLUTION
    y_mha = answers.mha_forward(x, W_q, W_k, W_v, W_o, n_heads)
    W_k2, W_v2 = mean_pool_heads(W_k, n_heads, n_kv_heads), mean_pool_heads(W_v, n_heads, n_kv_heads)
    y_gqa = answers.gqa_forward(x, W_q, W_k2, W_v2, W_o, n_heads, n_kv_heads)
    return ((y_gqa - y_mha).norm() / y_mha.norm()).item()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_mean_pool", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
W = torch.arange(8 * 2 * 3, dtype=torch.float32, device=device).view(8 * 2, 3)  # H=8 heads of D=2 rows, C=3
with exercise("mean_pool_heads"):
    pooled = mean_pool_heads(W, 8, 2)
expect_close(pooled, W.view(2, 4, 2, 3).mean(1).reshape(4, 3), "mean_pool_heads(W, 8, 2)",
             suspects={"each group keeps its first head instead of the mean": W.view(2, 4, 2, 3)[:, 0].reshape(4, 3),
                       "the groups take every n_kv_heads-th head instead of consecutive heads":
                       W.view(4, 2, 2, 3).mean(0).reshape(4, 3)})
### BEGIN HIDDEN TESTS
# Groups of several heads, one group of all heads (MQA), heads pooled in pairs; widths other than the heads'.
d = draw(255)
for G, n_rep in [(d.int(2, 4), d.int(2, 3)), (1, d.int(3, 6)), (d.int(3, 6), 2)]:
    H, D, C = G * n_rep, d.int(2, 5), d.int(3, 12)
    hW = torch.randn(H * D, C, generator=d.torch, dtype=torch.float64).to(device)
    case = f"mean_pool_heads of a ({H * D}, {C}) float64 projection, {H} heads of {D} rows into {G} K/V heads"
    with exercise("mean_pool_heads", case=case):
        got = mean_pool_heads(hW, H, G)
    expect_close(got, answers.mean_pool_heads(hW, H, G), case)
### END HIDDEN TESTS

Ws = [torch.randn(32, 32, device=device) / 32**0.5 for _ in range(4)]
x = torch.randn(2, 10, 32, device=device)
with exercise("conversion_error"):
    errors = {n_kv: conversion_error(*Ws, 8, n_kv, x) for n_kv in (8, 2)}
assert isinstance(errors[8], float), f"conversion_error must return a Python float, not {type(errors[8]).__name__}"
assert errors[8] < 1e-5, f"with n_kv_heads = n_heads nothing is pooled, so the error must be 0; you have {errors[8]:.3g}"
W_k2, W_v2 = (answers.mean_pool_heads(w, 8, 2) for w in Ws[1:3])
y = answers.mha_forward(x, *Ws, 8)
expected = ((answers.gqa_forward(x, Ws[0], W_k2, W_v2, Ws[3], 8, 2) - y).norm() / y.norm()).item()
assert abs(errors[2] - expected) < 1e-4, f"conversion_error(..., 8, 2, x) = {errors[2]:.4f}; expected {expected:.4f}"
print("mean_pool_heads and conversion_error: correct")

### BEGIN HIDDEN TESTS
d = draw(256)
# conversion_error again and again, with other weights and inputs each time (the first with the shapes of
# the visible check): nothing may carry over from one call to the next.
for B, T, H, G, D in [(2, 10, 8, 2, 4), (2, 10, 8, 2, 4)] + [(d.int(1, 3), d.int(3, 9), *d.choice(
        [(6, 3), (4, 1), (10, 5), (8, 4), (9, 3)]), d.int(2, 4)) for _ in range(3)]:
    hWs = [torch.randn(H * D, H * D, generator=d.torch, dtype=torch.float64).to(device) / (H * D) ** 0.5
           for _ in range(4)]
    hx = torch.randn(B, T, H * D, generator=d.torch, dtype=torch.float64).to(device)
    case = (f"conversion_error called again with new weights and inputs ({H} heads of {D} dims pooled into {G} "
            f"K/V heads, x of shape ({B}, {T}, {H * D}), float64)")
    with exercise("conversion_error", case=case):
        got = number(conversion_error(*hWs, H, G, hx), case)
    y = answers.mha_forward(hx, *hWs, H)
    pooled = [answers.mean_pool_heads(w, H, G) for w in hWs[1:3]]
    want = ((answers.gqa_forward(hx, hWs[0], *pooled, hWs[3], H, G) - y).norm() / y.norm()).item()
    expect(abs(got - want) < 1e-8, f"{case}: your code's error is wrong. Does it keep something from an earlier "
           "call (a stored output, say)? Compute everything from the arguments of this call",
           f"you have {got:.6g}; expected {want:.6g}")
### END HIDDEN TESTS

# %% [markdown]
# **Measure it.** Two layers with 16 heads of 8 dims: one with independent
# random heads, one whose heads are small variations of a common head (as
# heads that learned similar things would be). For each number of K/V heads,
# the error of the mean-pooled layer:

# %%
def layer_weights(C, n_heads, similarity, seed):
    """W_q, W_k, W_v, W_o of a layer whose K/V heads mix one common head (weight `similarity`) with their own."""
    gen = torch.Generator().manual_seed(seed)
    W_q, W_o = (torch.randn(C, C, generator=gen) / math.sqrt(C) for _ in range(2))

    def kv_projection():
        common = torch.randn(C // n_heads, C, generator=gen).repeat(n_heads, 1)  # (C, C): one head's rows, for all
        own = torch.randn(C, C, generator=gen)  # (C, C): every head's own rows
        return (similarity * common + math.sqrt(1 - similarity**2) * own) / math.sqrt(C)

    return W_q, kv_projection(), kv_projection(), W_o


C, H, groups = 128, 16, [16, 8, 4, 2, 1]
x = torch.randn(4, 32, C, generator=torch.Generator().manual_seed(0))  # (B, T, C)
curves = {label: [conversion_error(*layer_weights(C, H, s, seed=1), H, n_kv, x) for n_kv in groups]
          for label, s in [("independent heads", 0.0), ("similar heads (similarity 0.95)", 0.95)]}
fig, ax = plt.subplots(figsize=(6, 3.2))
for label, errs in curves.items():
    ax.plot(groups, errs, "o-", label=label)
ax.set(xscale="log", xticks=groups, xticklabels=[str(n) for n in groups], xlabel=f"K/V heads (of {H} query heads)",
       ylabel="relative output error", title="Mean-pooling an MHA layer into GQA, before uptraining")
ax.invert_xaxis()
ax.legend()
fig.tight_layout()
plt.show()
for label, errs in curves.items():
    print(f"{label:>31}: " + ", ".join(f"{n} K/V heads {e:.3f}" for n, e in zip(groups, errs)))

# %% [markdown]
# With independent heads, pooling just pairs of heads already costs most of the
# layer's output: the mean of unrelated heads is close to none of them. With
# heads that share most of their weights the error is several times smaller
# and hardly grows as the groups get bigger. Trained heads sit somewhere in
# between, which is why the GQA paper continues training after pooling, and
# why its checkpoint-conversion ablation (run converting T5-Large to MQA,
# one K/V head) found mean-pooling better than keeping the first head or
# starting the K/V head afresh.

# %% [markdown]
# ## 6 · The cache of a GQA model
#
# Each layer now caches one key and one value per **K/V head**:
#
# $$2 \cdot n_g \cdot d_h \cdot l \text{ elements per token}$$
#
# (DeepSeek-V2, arXiv 2405.04434, Table 1), $n_g / n_h$ of MHA's. Llama-3-8B
# has 32 layers, 32 query heads and 8 K/V heads of 128 dims:
# $2 \cdot 8 \cdot 128 \cdot 32 = 65{,}536$ elements, 128 KiB per token in bf16,
# 16 GiB for one sequence of 131,072 tokens; with MHA it would be 64 GiB.
# Llama-3-70B (80 layers, 64 query heads, 8 K/V heads) needs 40 GiB at that length.

# %% nbgrader={"grade": false, "grade_id": "cache_size", "locked": false, "schema_version": 3, "solution": true, "task": false}
def gqa_cache_elements_per_token(n_layers, n_kv_heads, d_head):
    """Elements a GQA model caches for each token, over all its layers."""
    ### BEGIN SOLUTION
    return 2 * n_kv_heads * d_head * n_layers
    ### END SOLUTION


def cache_fraction_of_mha(n_heads, n_kv_heads):
    """The GQA cache as a fraction of the MHA cache of the same model (a float)."""
    ### BEGIN SOLUTION
    return n_kv_heads / n_heads
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_cache_size", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
with exercise("gqa_cache_elements_per_token", "cache_fraction_of_mha"):
    llama8 = number(gqa_cache_elements_per_token(n_layers=32, n_kv_heads=8, d_head=128), "gqa_cache_elements_per_token")
    llama70 = number(gqa_cache_elements_per_token(80, 8, 128), "gqa_cache_elements_per_token")
    fraction = number(cache_fraction_of_mha(32, 8), "cache_fraction_of_mha")
assert llama8 == 65_536, (f"Llama-3-8B caches 2 * 8 * 128 * 32 = 65,536 elements per token; you have {llama8}"
                          + (" (did you count K but not V?)" if llama8 == 32_768 else ""))
assert llama70 * 2 * 131_072 == 40 * 2**30, f"Llama-3-70B needs 40 GiB at 131,072 tokens in bf16; you have {llama70 * 2 * 131_072 / 2**30:.3g}"
assert abs(fraction - 0.25) < 1e-12, f"8 K/V heads for 32 query heads keep a quarter of the MHA cache; you have {fraction}"
print("GQA cache sizes: correct")

### BEGIN HIDDEN TESTS
# Other models than the visible Llamas: every argument takes other values; one K/V head (MQA), as many
# as the query heads (MHA), head widths other than 128, a single layer.
dr = draw(266)
for l, n_kv, d, n_h in [(dr.int(2, 96), 1, dr.choice([64, 96, 192]), dr.choice([16, 64, 128])),
                        (dr.int(2, 96), (k := dr.int(2, 32)), dr.int(1, 256), k),
                        (dr.int(2, 96), (k := dr.int(2, 16)), dr.int(1, 256), k * dr.int(2, 8)),
                        (1, (k := dr.int(1, 8)), dr.int(1, 16), k * dr.int(1, 4))]:
    model = f"a model with {l} layers and {n_kv} K/V heads of {d} dims"
    with exercise("gqa_cache_elements_per_token", case=model):
        got = number(gqa_cache_elements_per_token(l, n_kv, d), "gqa_cache_elements_per_token")
    with exercise("cache_fraction_of_mha", case=f"cache_fraction_of_mha({n_h}, {n_kv})"):
        frac = number(cache_fraction_of_mha(n_h, n_kv), "cache_fraction_of_mha")
    want = 2 * n_kv * d * l
    llamas = " (use the d_head it is given, not Llama's 128)" if got == 2 * n_kv * 128 * l != want else ""
    expect_number(got, want, f"gqa_cache_elements_per_token for {model}{llamas}")
    expect(abs(frac - n_kv / n_h) < 1e-12, f"cache_fraction_of_mha({n_h}, {n_kv}) is wrong: {n_kv} K/V heads for "
           f"{n_h} query heads keep {n_kv}/{n_h} of the MHA cache", f"you have {frac:.6g}")
### END HIDDEN TESTS

# %% [markdown]
# **See it.** Your `gqa_cache_elements_per_token` for Llama-3-8B with every
# possible number of K/V heads, from MQA (1) to MHA (32): the cache of one
# 131,072-token sequence, and the memory a decode of 8 sequences of 32,768
# tokens needs, weights (bf16) included.

# %%
llama = MODELS["Llama-3-8B"]
kv_heads = [1, 2, 4, 8, 16, 32]
per_token = [gqa_cache_elements_per_token(llama.n_layers, g, llama.d_head) for g in kv_heads]
one_long = [e * 131_072 * 2 / 2**30 for e in per_token]  # GiB: 2 bytes per bf16 element
batch_of_8 = [e * 32_768 * 8 * 2 / 2**30 for e in per_token]
weights = llama.n_params * 2 / 2**30

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
bars = ax1.bar([str(g) for g in kv_heads], one_long, color=["C1" if g == llama.kv_heads else "C0" for g in kv_heads])
ax1.bar_label(bars, fmt="%.0f")
ax1.set(xlabel="K/V heads", ylabel="GiB", title="KV cache, 1 × 131,072 tokens")
ax2.bar([str(g) for g in kv_heads], [weights] * len(kv_heads), color="C7", label="weights")
ax2.bar([str(g) for g in kv_heads], batch_of_8, bottom=weights, color="C0", label="KV cache")
ax2.axhline(GPUS["80 GB"] / 2**30, color="C3", linestyle="--", label="\"80 GB\" H100 (79.6 GiB)")
ax2.set(xlabel="K/V heads", ylabel="GiB", title="decode memory, 8 × 32,768 tokens")
ax2.legend(fontsize=8)
fig.suptitle("Llama-3-8B (32 layers, 32 query heads of 128 dims; it ships with 8 K/V heads)", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Recap
#
# **What to remember**
# - GQA shares each K/V head among $n_h / n_g$ *consecutive* query heads:
#   `repeat_interleave`, not `repeat`. MHA is GQA with $n_g = n_h$, MQA is GQA
#   with $n_g = 1$.
# - Compute GQA per group (stack the group's query heads along the query axis);
#   repeating K and V in memory gives back the traffic GQA saves.
# - The gradient of a shared K/V head is the **sum** of its group's per-head
#   gradients.
# - An MHA checkpoint becomes GQA by mean-pooling each group's K/V projections;
#   the pooled layer is a starting point that needs uptraining (about 5 % of
#   the pre-training compute in the GQA paper), not a free conversion.
# - Cache per token: $2 \cdot n_g \cdot d_h \cdot l$; Llama-3-8B: 128 KiB in bf16,
#   16 GiB for a 131,072-token sequence.
#
# **What breaks if you get this wrong**
# - Tiled instead of interleaved heads: a converted or downloaded checkpoint
#   runs without an error and produces nonsense.
# - A mean instead of a sum in the backward: the gradients of $W_K$ and $W_V$
#   come out $n_{rep}$ times too small (plain SGD then learns them that much
#   more slowly; Adam hides a constant scale, but not a wrong direction).
# - Repeating K/V at every decode step: the cache is small, the step is as slow
#   as MHA's.
#
# **Sources**
# - Shazeer 2019, *Fast Transformer Decoding: One Write-Head is All You Need*, arXiv 1911.02150 (MQA).
# - Ainslie et al. 2023, *GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
#   Checkpoints*, arXiv 2305.13245: §2.1 uptraining, §2.2 grouping, and the ablation of conversion methods.
# - DeepSeek-AI 2024, *DeepSeek-V2*, arXiv 2405.04434, Table 1.
# - Llama Team 2024, *The Llama 3 Herd of Models*, arXiv 2407.21783, Table 3: the 8B and 70B
#   dimensions (8 K/V heads).
#
# **Next:** [workbook 03](../03_rope/03_rope.ipynb) adds rotary position embeddings, and shows why they
# get in the way of the trick that makes MLA's cache small *and* fast.
