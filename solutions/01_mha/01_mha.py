# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Multi-head attention: forward, backward and the KV cache
#
# Every idea in this course (grouped-query attention, rotary embeddings,
# DeepSeek's multi-head latent attention) is a change to one module: multi-head
# attention (MHA). This workbook builds that module from nothing, takes its
# gradient by hand, and runs it the way a language model runs at inference
# time: one token at a time, reading every earlier token's keys and values from
# a **KV cache**. The size of that cache is the number the rest of the course
# tries to shrink, so we end by computing it.
#
# **You will build**
# 1. scaled dot-product attention with a causal mask;
# 2. the split of a vector into heads and the merge back;
# 3. an MHA module, checked against PyTorch's own;
# 4. the backward pass through the softmax, by hand, as a `torch.autograd.Function`;
# 5. incremental decoding with a KV cache that gives exactly the full forward;
# 6. the cache size of a real model.
#
# **You need** Python, and matrix products in PyTorch (`@`, `transpose`,
# `view`, `softmax`). Nothing from earlier workbooks: this is the first.
#
# **Time** about 90 minutes. Each exercise is a function whose body reads
# `raise NotImplementedError()`; replace it with your code, then run the cell
# below it. The check there tells you what is wrong in words; more checks that
# you cannot see run when the notebook is graded.
#
# **Stuck?** Every workbook's model answers are in the course repository, in
# `solutions/NN_topic/NN_topic.py`, inside each exercise's SOLUTION markers
# (here `solutions/01_mha/01_mha.py`). Try first: the checks' messages name the
# usual mistakes.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

import attnlab
from attnlab import answers
from attnlab.checks import (attention_suspects, draw, exercise, expect, expect_close, expect_number, expect_shape,
                            gradients, number, set_weights)

torch.manual_seed(0)
device = attnlab.pick_device()
print(f"torch {torch.__version__}, running on {device}")

# %% [markdown]
# ## 1 · Scaled dot-product attention
#
# A query asks "which earlier tokens matter to me?"; each key answers with how
# well it matches; the values are what gets mixed. For queries $Q$, keys $K$
# and values $V$ (Vaswani et al. 2017, *Attention Is All You Need*,
# arXiv 1706.03762, eq. 1):
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d_k}}\right) V .$$
#
# - The softmax runs over the **keys** (the last axis of $QK^\top$), so each
#   query's weights sum to one.
# - The $1/\sqrt{d_k}$ keeps the scores' variance near one: a dot product of
#   two vectors with $d_k$ independent zero-mean, unit-variance entries has
#   variance $d_k$ (the paper's footnote 4), and large scores push the softmax into a
#   one-hot corner where its gradient vanishes.
# - A language model must not look ahead. The **causal mask** sets the score
#   of query $i$ against key $j$ to $-\infty$ when key $j$ comes later.
#
# Here the tensors carry a batch and a head axis in front:
# `q` is `(B, H, Tq, D)`, `k` is `(B, H, Tk, D)`, `v` is `(B, H, Tk, Dv)`.
# Usually `Tq == Tk`. With a KV cache (section 5) there are fewer queries than
# keys: the queries are the *last* `Tq` positions, so query `i` sits at
# position `Tk - Tq + i` and may see keys `0 … Tk - Tq + i`. The mask is
# aligned to the bottom-right corner:
#
# ```
# Tq = 2, Tk = 5        keys →  0 1 2 3 4
#   query 0 (position 3)        ■ ■ ■ ■ ·
#   query 1 (position 4)        ■ ■ ■ ■ ■
# ```
#
# PyTorch's `F.scaled_dot_product_attention(..., is_causal=True)` aligns the
# mask to the **top-left** instead (its documentation says so); the two agree
# only when `Tq == Tk`. `torch.tril(..., diagonal=...)` builds either.

# %% nbgrader={"grade": false, "grade_id": "attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def attention(q, k, v, causal=False):
    """Scaled dot-product attention.

    q: (B, H, Tq, D), k: (B, H, Tk, D), v: (B, H, Tk, Dv), with Tq <= Tk.
    causal: if True, query i (at position Tk - Tq + i) sees keys 0 .. Tk - Tq + i.
    Returns (B, H, Tq, Dv).
    """
    ### BEGIN SOLUTION
    Tq, Tk = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if causal:
        allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # (B, H, Tq, Dv)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_attention", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Your attention against PyTorch's, without and with the causal mask.
q, k, v = (torch.randn(2, 3, 5, 8, device=device) for _ in range(3))
for causal in (False, True):
    with exercise("attention"):
        out = attention(q, k, v, causal=causal)
    expect_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                 f"attention(q, k, v, causal={causal})", suspects=attention_suspects(q, k, v, causal))

# Fewer queries than keys, as in decoding: the mask is aligned bottom-right.
q2 = q[:, :, -2:]  # (B, H, 2, D): the queries at positions 3 and 4
with exercise("attention"):
    out = attention(q2, k, v, causal=True)
expect_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True)[:, :, -2:],
             "attention(q, k, v, causal=True) with 2 queries and 5 keys",
             suspects=attention_suspects(q2, k, v, True))

# float64 in, float64 out, to float64 precision (the hidden tests use float64 too).
q64, k64, v64 = (t.double() for t in (q, k, v))
with exercise("attention"):
    out = attention(q64, k64, v64, causal=True)
expect_close(out, F.scaled_dot_product_attention(q64, k64, v64, is_causal=True), "attention in float64",
             hint="Keep the input's dtype throughout: no float32 softmax for float64 inputs.")
print("attention: correct")

### BEGIN HIDDEN TESTS
# Every kind of call the visible check leaves out, at sizes drawn for each student (attnlab.checks.draw):
# as many queries as keys, fewer, a single one; values as wide as the keys, wider, narrower; float64,
# float32 and bfloat16; causal or not. One function, called again and again with other arguments.
d = draw(101)
for queries, values, dtype, causal in [
    ("as many", "as wide", torch.float64, True),
    ("fewer", "wider", torch.float64, True),
    ("fewer", "narrower", torch.float32, False),
    ("one", "as wide", torch.float64, True),
    ("as many", "wider", torch.float64, False),
    ("fewer", "as wide", torch.bfloat16, True),
]:
    B, H, Tk, D = d.int(1, 4), d.int(1, 4), d.int(5, 13), d.int(3, 16)
    Tq = {"as many": Tk, "fewer": d.int(2, Tk - 1), "one": 1}[queries]
    Dv = {"as wide": D, "wider": D + d.int(1, 6), "narrower": d.int(1, D - 1)}[values]
    hq, hk = (torch.randn(B, H, T, D, generator=d.torch).to(device, dtype) for T in (Tq, Tk))
    hv = torch.randn(B, H, Tk, Dv, generator=d.torch).to(device, dtype)
    case = (f"attention with {Tq} queries against {Tk} keys {D} wide, values {Dv} wide, batch {B}, {H} heads, "
            f"{str(dtype).removeprefix('torch.')}, {'causal' if causal else 'not causal'}")
    with exercise("attention", case=case):
        got = attention(hq, hk, hv, causal=causal)
    # bfloat16 is compared with the float64 result, so that more careful rounding never costs a point.
    want = answers.attention(hq.double(), hk.double(), hv.double(), causal=causal).to(dtype)
    suspects = attention_suspects(hq, hk, hv, causal)
    if D != Dv:  # scaling q by sqrt(D / Dv) turns the 1/sqrt(D) scale into 1/sqrt(Dv)
        suspects["the scores are scaled by the values' width Dv instead of the keys' width D"] = \
            answers.attention(hq * math.sqrt(D / Dv), hk, hv, causal=causal)
    expect_close(got, want, case, suspects=suspects)
### END HIDDEN TESTS

# %% [markdown]
# **See it.** Your function also hands you the attention weights themselves:
# with the identity matrix as `v`, the output *is* the weight matrix
# ($P\,I = P$). Each row is a query, each column a key; the causal mask leaves
# the upper triangle empty.

# %%
T = 8
q, k = torch.randn(2, 1, 1, T, 16, device=device).unbind(0)  # (1, 1, T, 16) each
identity = torch.eye(T, device=device).expand(1, 1, T, T)  # (1, 1, T, T)
fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
for ax, causal in zip(axes, (False, True)):
    weights = attention(q, k, identity, causal=causal)[0, 0].cpu()  # (T, T)
    ax.imshow(weights, cmap="viridis", vmin=0, vmax=1)
    ax.set(title=f"causal={causal}", xlabel="key position", ylabel="query position")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2 · Heads
#
# One attention over the whole width $C$ can only mix tokens in one way. MHA
# runs $H$ attentions side by side, each on its own slice of $D = C / H$
# features, so that different heads can attend to different things. Head $h$
# takes the features $hD \ldots (h+1)D - 1$ of every token:
#
# ```
# x       (B, T, C)            one row per token, C = H·D features
# view    (B, T, H, D)         cut each row into H pieces of D
# transpose(1, 2) → (B, H, T, D)   heads become a batch axis
# ```
#
# Merging is the exact inverse. The order matters: `x.view(B, H, T, D)`
# straight from `(B, T, C)` also has the right shape, but it cuts the
# *sequence* into pieces and mixes tokens into heads.
# After a `transpose` the tensor is no longer contiguous in memory, so use
# `reshape` (or `.contiguous().view`) on the way back.

# %% nbgrader={"grade": false, "grade_id": "heads", "locked": false, "schema_version": 3, "solution": true, "task": false}
def split_heads(x, n_heads):
    """(B, T, C) -> (B, H, T, C // H); head h takes features h*D .. (h+1)*D - 1."""
    ### BEGIN SOLUTION
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)  # (B, H, T, D)
    ### END SOLUTION


def merge_heads(x):
    """(B, H, T, D) -> (B, T, H * D), the inverse of split_heads."""
    ### BEGIN SOLUTION
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_heads", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
x = torch.arange(2 * 3 * 8, dtype=torch.float32, device=device).view(2, 3, 8)  # (B=2, T=3, C=8)
with exercise("split_heads"):
    heads = split_heads(x, 4)
expect_close(heads, x.view(2, 3, 4, 2).transpose(1, 2), "split_heads(x, 4) of a (2, 3, 8) tensor",
             suspects={"x is viewed as (B, H, T, D) without the transpose: tokens end up mixed into heads":
                       x.view(2, 4, 3, 2),
                       "the features of a head are taken with a stride instead of contiguously":
                       x.view(2, 3, 2, 4).permute(0, 3, 1, 2)})
with exercise("merge_heads"):
    merged = merge_heads(heads.contiguous())
expect_close(merged, x, "merge_heads(split_heads(x, 4))",
             suspects={"the heads are flattened without first moving T in front of H":
                       heads.contiguous().reshape(2, 3, 8)})
print("split_heads and merge_heads: correct")

### BEGIN HIDDEN TESTS
# Other batches, lengths, head counts and head widths, in float64 and bfloat16.
d = draw(202)
for dtype, T in [(torch.float64, None), (torch.bfloat16, None), (torch.float64, 1)]:
    B, H, D, T = d.int(1, 4), d.choice([2, 3, 5, 6]), d.int(2, 9), T or d.int(2, 7)  # not the visible 4 heads
    kind = str(dtype).removeprefix("torch.")
    hx = torch.randn(B, T, H * D, generator=d.torch).to(device, dtype)
    case = f"split_heads(x, {H}) of a ({B}, {T}, {H * D}) {kind} tensor, {H} heads of {D} features"
    with exercise("split_heads", case=case):
        got = split_heads(hx, H)
    expect_close(got, answers.split_heads(hx, H), case,
                 hint="The number of heads is the argument n_heads, and each head is C // n_heads features wide.")
    hh = torch.randn(B, H, T, D, generator=d.torch).to(device, dtype)
    case = f"merge_heads of a ({B}, {H}, {T}, {D}) {kind} tensor"
    with exercise("merge_heads", case=case):
        got = merge_heads(hh)
    expect_close(got, answers.merge_heads(hh), case)
    case = f"merge_heads of a ({B}, {H}, {T}, {D}) {kind} tensor that is not contiguous in memory"
    with exercise("merge_heads", case=case):
        got = merge_heads(hh.transpose(1, 2).contiguous().transpose(1, 2))
    expect_close(got, answers.merge_heads(hh), case)
### END HIDDEN TESTS

# %% [markdown]
# ## 3 · The multi-head attention module
#
# Each head projects the tokens with its own $W_i^Q, W_i^K, W_i^V$; the heads'
# outputs are concatenated and mixed by $W^O$ (Vaswani et al. 2017, §3.2.2):
#
# $$\mathrm{MultiHead}(X) = \mathrm{Concat}(\mathrm{head}_1, \ldots, \mathrm{head}_H)\,W^O,\qquad
# \mathrm{head}_i = \mathrm{Attention}(XW_i^Q, XW_i^K, XW_i^V).$$
#
# All heads' $W_i^Q$ side by side form one $C \times C$ matrix, so one
# `nn.Linear(C, C)` projects every head at once, and `split_heads` hands each
# head its slice. The constructor is written for you; write `forward` with your
# `attention`, `split_heads` and `merge_heads`.
#
# ```mermaid
# flowchart LR
#   x["x (B, T, C)"] --> Wq[W_q] --> sq[split_heads] --> A["attention (B, H, T, D)"]
#   x --> Wk[W_k] --> sk[split_heads] --> A
#   x --> Wv[W_v] --> sv[split_heads] --> A
#   A --> m[merge_heads] --> Wo[W_o] --> y["y (B, T, C)"]
# ```

# %% nbgrader={"grade": false, "grade_id": "mha", "locked": false, "schema_version": 3, "solution": true, "task": false}
class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention without biases: (B, T, C) -> (B, T, C)."""

    def __init__(self, d_model, n_heads):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = n_heads
        self.W_q = nn.Linear(d_model, d_model, bias=False)
        self.W_k = nn.Linear(d_model, d_model, bias=False)
        self.W_v = nn.Linear(d_model, d_model, bias=False)
        self.W_o = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x, causal=True):
        ### BEGIN SOLUTION
        q = split_heads(self.W_q(x), self.n_heads)  # (B, H, T, D)
        k = split_heads(self.W_k(x), self.n_heads)  # (B, H, T, D)
        v = split_heads(self.W_v(x), self.n_heads)  # (B, H, T, D)
        return self.W_o(merge_heads(attention(q, k, v, causal=causal)))  # (B, T, C)
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_mha", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Your module against torch.nn.MultiheadAttention, both holding the test's weights.
# (Tests run your module with the course's attention, split_heads and
# merge_heads, so a mistake in those costs points above, not here.)
W = {name: torch.randn(32, 32, device=device) / 32**0.5 for name in ("W_q", "W_k", "W_v", "W_o")}
mha = MultiHeadAttention(d_model=32, n_heads=4).to(device)
set_weights(mha, {f"{name}.weight": w for name, w in W.items()}, "MultiHeadAttention(32, 4)")
torch_mha = nn.MultiheadAttention(32, 4, bias=False, batch_first=True).to(device)
with torch.no_grad():
    torch_mha.in_proj_weight.copy_(torch.cat([W["W_q"], W["W_k"], W["W_v"]]))
    torch_mha.out_proj.weight.copy_(W["W_o"])
x = torch.randn(2, 6, 32, device=device)
future = torch.ones(6, 6, dtype=torch.bool, device=device).triu(1)  # True = may not attend
for causal in (False, True):
    with torch.no_grad():
        with exercise("MultiHeadAttention"):
            got = mha(x, causal=causal)
        want, _ = torch_mha(x, x, x, attn_mask=future if causal else None, need_weights=False)
    expect_close(got, want, f"MultiHeadAttention(x, causal={causal})",
                 suspects={"W_o is not applied to the merged heads": answers.merge_heads(
                               answers.attention(*(answers.split_heads(x @ W[n].T, 4) for n in ("W_q", "W_k", "W_v")),
                                                 causal=causal))})
print("MultiHeadAttention: correct")

### BEGIN HIDDEN TESTS
# Other widths, head counts, batches and lengths, in float64, with the default causal=True and with
# causal=False; and the gradients, which a module trained with this layer needs.
d = draw(303)
for causal, T in [(True, None), (False, None), (True, 1)]:
    B, H, T = d.int(1, 3), d.int(2, 8), T or d.int(2, 9)
    C = H * d.int(2, 5)
    hm = MultiHeadAttention(C, H).to(device).double()
    own = [torch.randn(C, C, generator=d.torch, dtype=torch.float64).to(device) / C**0.5 for _ in range(4)]
    set_weights(hm, dict(zip(["W_q.weight", "W_k.weight", "W_v.weight", "W_o.weight"], own)),
                f"MultiHeadAttention({C}, {H})")
    own = [w.requires_grad_() for w in own]  # the test's copies: the expected values come from these
    weights = [hm.W_q.weight, hm.W_k.weight, hm.W_v.weight, hm.W_o.weight]  # your module's: its gradients
    hx = torch.randn(B, T, C, generator=d.torch, dtype=torch.float64).to(device).requires_grad_()
    case = (f"MultiHeadAttention({C}, {H}) on {B} sequence(s) of {T} token(s), float64, "
            + ("with the default causal=True" if causal else "causal=False"))
    with exercise("MultiHeadAttention", case=case):
        got = hm(hx) if causal else hm(hx, causal=False)
    want = answers.mha_forward(hx, *own, n_heads=H, causal=causal)
    expect_close(got, want.detach(), case)
    expect(got.requires_grad, f"{case}: your output carries no gradient, so the module cannot be trained",
           "is it computed under torch.no_grad(), or detached?")
    with exercise("MultiHeadAttention", case=case):
        got_grads = gradients(got, [hx] + weights, 2 * got.detach())  # of sum(output ** 2)
    want_grads = torch.autograd.grad(want.square().sum(), [hx] + own)
    for name, gg, wg in zip(["x", "W_q", "W_k", "W_v", "W_o"], got_grads, want_grads):
        what = f"{case}: the gradient of sum(output ** 2) with respect to {name}"
        expect(gg is not None, f"{what} is missing: no gradient reaches {name}",
               ".data, .detach() or torch.no_grad() cuts it off")
        expect_close(gg, wg, what)
### END HIDDEN TESTS

# %% [markdown]
# ## 4 · The backward pass, by hand
#
# Autograd computes gradients for you, but every fast attention kernel used in
# training (FlashAttention among them) writes its backward pass by hand, and so
# will you. Name the steps of the forward pass, with
# $s = 1/\sqrt{D}$:
#
# $$S = s\,QK^\top,\qquad P = \mathrm{softmax}_{\text{row}}(S),\qquad O = PV.$$
#
# Given $dO = \partial L/\partial O$, walk back one step at a time:
#
# - $O = PV$ is a matrix product, so $dV = P^\top dO$ and $dP = dO\,V^\top$.
# - The softmax of one row $p = \mathrm{softmax}(s)$ has the Jacobian
#   $\partial p_i/\partial s_j = p_i(\delta_{ij} - p_j)$. Applied to a row of
#   $dP$ it gives $dS_{ij} = P_{ij}\,\big(dP_{ij} - \sum_k dP_{ik} P_{ik}\big)$.
#   The subtracted sum is one number per query row.
# - $S = s\,QK^\top$ gives $dQ = s\,dS\,K$ and $dK = s\,dS^\top Q$.
#
# Masked entries have $P_{ij} = 0$, so $dS_{ij} = 0$ there: the mask needs no
# extra work in the backward pass. (FlashAttention computes the row sum
# $\sum_k dP_{ik}P_{ik}$ more cheaply as $\sum_k dO_{ik} O_{ik}$; they are equal,
# as you can check.)
#
# Then wrap forward and backward in a `torch.autograd.Function`, the way you
# would plug a hand-written kernel into PyTorch. `forward` saves what
# `backward` needs with `ctx.save_for_backward`; `backward` returns one
# gradient per input of `forward` (`None` for `causal`, which is not a tensor).
# The test runs autograd through your Function and compares its gradients with
# autograd's own through the course's attention, in float64. To check it yourself
# against finite differences, `torch.autograd.gradcheck(AttentionFunction.apply,
# (q, k, v, False))` with float64 tensors that require grad does that.

# %% nbgrader={"grade": false, "grade_id": "backward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def attention_backward(q, k, v, dout, causal=False):
    """Gradients of attention(q, k, v, causal) with respect to q, k and v.

    q: (B, H, Tq, D), k: (B, H, Tk, D), v: (B, H, Tk, Dv), dout: (B, H, Tq, Dv).
    Returns (dq, dk, dv) with the shapes of q, k and v.
    """
    ### BEGIN SOLUTION
    Tq, Tk = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = q @ k.transpose(-2, -1) * scale  # (B, H, Tq, Tk)
    if causal:
        allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
        scores = scores.masked_fill(~allowed, float("-inf"))
    P = torch.softmax(scores, dim=-1)  # (B, H, Tq, Tk)
    dv = P.transpose(-2, -1) @ dout  # (B, H, Tk, Dv)
    dP = dout @ v.transpose(-2, -1)  # (B, H, Tq, Tk)
    dS = P * (dP - (dP * P).sum(dim=-1, keepdim=True))  # (B, H, Tq, Tk)
    dq = dS @ k * scale  # (B, H, Tq, D)
    dk = dS.transpose(-2, -1) @ q * scale  # (B, H, Tk, D)
    return dq, dk, dv
    ### END SOLUTION


class AttentionFunction(torch.autograd.Function):
    """attention(q, k, v, causal) with your hand-written backward."""

    @staticmethod
    def forward(ctx, q, k, v, causal=False):
        ### BEGIN SOLUTION
        ctx.save_for_backward(q, k, v)
        ctx.causal = causal
        return attention(q, k, v, causal=causal)
        ### END SOLUTION

    @staticmethod
    def backward(ctx, dout):
        ### BEGIN SOLUTION
        q, k, v = ctx.saved_tensors
        dq, dk, dv = attention_backward(q, k, v, dout, causal=ctx.causal)
        return dq, dk, dv, None
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_backward", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Your gradients against autograd's, for a weighted sum of the outputs.
q, k, v = (torch.randn(2, 2, 5, 4, device=device, requires_grad=True) for _ in range(3))
dout = torch.randn(2, 2, 5, 4, device=device)
for causal in (False, True):
    with exercise("attention_backward"):  # by hand: autograd is switched off here
        got = attention_backward(q.detach(), k.detach(), v.detach(), dout, causal=causal)
    assert isinstance(got, (tuple, list)) and len(got) == 3, "attention_backward must return (dq, dk, dv)"
    want = torch.autograd.grad(answers.attention(q, k, v, causal=causal), (q, k, v), dout)
    for name, g_, w_ in zip(["dq", "dk", "dv"], got, want):
        unscaled = {} if name == "dv" else {  # dq and dk carry the scores' 1/sqrt(d)
            f"{name} is missing the 1/sqrt(d) scale that the scores carry": w_ * math.sqrt(q.shape[-1])}
        expect_close(g_, w_, f"{name} (causal={causal})", suspects=unscaled)
print("attention_backward: correct")

### BEGIN HIDDEN TESTS
# Other batches and head counts, float64, values wider and narrower than the keys, fewer queries than keys.
d = draw(404)
for queries, values, causal in [("as many", "narrower", True), ("fewer", "wider", True),
                                ("as many", "as wide", False), ("fewer", "wider", False)]:
    B, H, Tk, D = d.int(1, 3), d.int(1, 3), d.int(4, 8), d.int(3, 8)
    Tq = Tk if queries == "as many" else d.int(2, Tk - 1)
    Dv = {"as wide": D, "wider": D + d.int(1, 4), "narrower": d.int(1, D - 1)}[values]
    hq, hk = (torch.randn(B, H, T, D, generator=d.torch, dtype=torch.float64).to(device) for T in (Tq, Tk))
    hv = torch.randn(B, H, Tk, Dv, generator=d.torch, dtype=torch.float64).to(device)
    hd = torch.randn(B, H, Tq, Dv, generator=d.torch, dtype=torch.float64).to(device)
    case = (f"attention_backward with {Tq} queries against {Tk} keys {D} wide, values {Dv} wide, batch {B}, "
            f"{H} heads, float64, {'causal' if causal else 'not causal'}")
    with exercise("attention_backward", case=case):
        got = attention_backward(hq, hk, hv, hd, causal=causal)
    expect(isinstance(got, (tuple, list)) and len(got) == 3, f"{case}: attention_backward must return (dq, dk, dv)")
    qkv = [t.clone().requires_grad_() for t in (hq, hk, hv)]
    want = torch.autograd.grad(answers.attention(*qkv, causal=causal), qkv, hd)
    for name, g_, w_ in zip(["dq", "dk", "dv"], got, want):
        expect_close(g_, w_, f"{case}: {name}",
                     hint="The queries are the last Tq positions: the mask is aligned bottom-right, as in attention."
                     if causal and Tq < Tk else "")
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "test_autograd_function", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# Your Function's forward value and the gradients autograd gets through it, against autograd's
# gradients of the course's attention, in float64. Your Function runs with the course's attention
# and attention_backward here, so that a mistake in those costs points there, not again here:
# this checks the wiring (what ctx saves, what backward returns).
q, k, v = (torch.randn(1, 2, 4, 3, dtype=torch.float64, device=device, requires_grad=True) for _ in range(3))
dout = torch.randn(1, 2, 4, 3, dtype=torch.float64, device=device)
for causal in (False, True):
    with exercise("AttentionFunction"):
        out = AttentionFunction.apply(q, k, v, causal)
        got = gradients(out, [q, k, v], dout)
    want = answers.attention(q, k, v, causal=causal)
    expect_close(out.detach(), want.detach(), f"AttentionFunction.apply(q, k, v, {causal}), the forward value")
    for name, g_, w_ in zip("qkv", got, torch.autograd.grad(want, (q, k, v), dout)):
        what = f"the gradient of AttentionFunction.apply(q, k, v, {causal}) with respect to {name}"
        expect(g_ is not None, f"{what} is missing",
               "does backward return one gradient per input of forward, in order (None for causal)?")
        expect_close(g_, w_, what)
print("AttentionFunction: its gradients are autograd's")

### BEGIN HIDDEN TESTS
# Fewer queries than keys and values narrower or wider than the keys, with and without the mask.
d = draw(505)
for queries, values, causal in [("fewer", "narrower", True), ("as many", "wider", False)]:
    B, H, Tk, D = d.int(1, 2), d.int(1, 2), d.int(4, 7), d.int(3, 6)
    Tq = Tk if queries == "as many" else d.int(2, Tk - 1)
    Dv = D + d.int(1, 3) if values == "wider" else d.int(1, D - 1)
    hq, hk = (torch.randn(B, H, T, D, generator=d.torch, dtype=torch.float64).to(device).requires_grad_()
              for T in (Tq, Tk))
    hv = torch.randn(B, H, Tk, Dv, generator=d.torch, dtype=torch.float64).to(device).requires_grad_()
    hd = torch.randn(B, H, Tq, Dv, generator=d.torch, dtype=torch.float64).to(device)
    case = (f"AttentionFunction with {Tq} queries against {Tk} keys {D} wide, values {Dv} wide, batch {B}, "
            f"{H} head(s), float64, {'causal' if causal else 'not causal'}")
    with exercise("AttentionFunction", case=case):
        got = gradients(AttentionFunction.apply(hq, hk, hv, causal), [hq, hk, hv], hd)
    want = torch.autograd.grad(answers.attention(hq, hk, hv, causal=causal), (hq, hk, hv), hd)
    for name, g_, w_ in zip("qkv", got, want):
        expect(g_ is not None, f"{case}: the gradient with respect to {name} is missing")
        expect_close(g_, w_, f"{case}: the gradient with respect to {name}")
### END HIDDEN TESTS

# %% [markdown]
# ## 5 · Decoding with a KV cache
#
# A language model writes one token at a time. Token $t$'s query must meet
# the keys and values of tokens $0 \ldots t$, and with a causal mask those
# never change once computed: token 3's key is the same at step 10 as at
# step 4. So we keep them, in a **KV cache**, and each step computes the key
# and value of the one new token only:
#
# 1. **prefill**: run the whole prompt at once, store its keys and values;
# 2. **decode**: for each new token, project it, append its key and value to
#    the cache, and attend from its one query to every cached key.
#
# The result must be *exactly* the full causal forward pass over the whole
# sequence; that equality is the test. The cache tensors are `(B, H, T, D)`,
# so the time axis along which they grow is `dim=2`, and the single new query
# sits at the last position: your bottom-right causal mask from section 1 is
# what makes a multi-token step (or the prefill of a prompt that follows
# earlier context) correct.

# %% nbgrader={"grade": false, "grade_id": "kv_cache", "locked": false, "schema_version": 3, "solution": true, "task": false}
class KVCache:
    """The keys and values of every token seen so far, (B, H, T, D) each."""

    def __init__(self):
        self.k = None
        self.v = None

    def __len__(self):
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k_new, v_new):
        """Append k_new, v_new (B, H, T_new, D) to the cache; return all keys and values."""
        ### BEGIN SOLUTION
        if self.k is None:
            self.k, self.v = k_new, v_new
        else:
            self.k = torch.cat([self.k, k_new], dim=2)  # (B, H, T + T_new, D)
            self.v = torch.cat([self.v, v_new], dim=2)  # (B, H, T + T_new, D)
        return self.k, self.v
        ### END SOLUTION


def mha_step(mha, x, cache):
    """Causal attention of mha for the new tokens x (B, T_new, C), using and extending cache.

    A prefill is one call with the whole prompt; a decode step is a call with T_new = 1.
    Returns (B, T_new, C), equal to the last T_new positions of mha's full forward pass.
    """
    ### BEGIN SOLUTION
    q = split_heads(mha.W_q(x), mha.n_heads)  # (B, H, T_new, D)
    k, v = cache.update(split_heads(mha.W_k(x), mha.n_heads), split_heads(mha.W_v(x), mha.n_heads))
    return mha.W_o(merge_heads(attention(q, k, v, causal=True)))  # (B, T_new, C)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_kv_cache", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Prefill 5 tokens, then decode 3 one at a time: the outputs must equal the full forward.
weights = [torch.randn(32, 32, device=device) / 32**0.5 for _ in range(4)]
mha = MultiHeadAttention(d_model=32, n_heads=4).to(device)
set_weights(mha, dict(zip(["W_q.weight", "W_k.weight", "W_v.weight", "W_o.weight"], weights)),
            "MultiHeadAttention(32, 4)")
x = torch.randn(2, 8, 32, device=device)
with torch.no_grad():
    cache = KVCache()
    with exercise("mha_step"):
        outs = [mha_step(mha, x[:, :5], cache)] + [mha_step(mha, x[:, t:t + 1], cache) for t in range(5, 8)]
    want = answers.mha_forward(x, *weights, n_heads=4, causal=True)  # (2, 8, 32)
expect_shape(cache.k, (2, 4, 8, 8), "cache.k after 8 tokens",
             hint="The cache is (B, H, T, D): did you concatenate along the time axis, dim=2?")
expect_close(outs[0], want[:, :5], "the prefill output",
             hint="A step of several tokens through the cache (here the prompt) needs the causal mask too.")
for t, out in zip(range(5, 8), outs[1:]):
    expect_close(out, want[:, t:t + 1], f"the decode step at position {t}",
                 hint="Does the new token attend to every cached key, including its own?")
print("KV-cache decoding equals the full forward")

### BEGIN HIDDEN TESTS
# Other batches, widths and head counts in float64; steps of several tokens after a filled cache.
d = draw(606)
for first, later in [("several", "mixed"), ("one", "one"), ("several", "several")]:
    B, H = d.int(1, 3), d.int(2, 6)
    C = H * d.int(2, 8)
    sizes = {"one": [1], "several": [2, 3, 4, 7], "mixed": [1, 1, 3]}
    chunks = [d.choice(sizes[first])] + [d.choice(sizes[later]) for _ in range(d.int(2, 4))]
    hm = MultiHeadAttention(C, H).to(device).double()
    hw = [torch.randn(C, C, generator=d.torch, dtype=torch.float64).to(device) / C**0.5 for _ in range(4)]
    set_weights(hm, dict(zip(["W_q.weight", "W_k.weight", "W_v.weight", "W_o.weight"], hw)),
                f"MultiHeadAttention({C}, {H})")
    T = sum(chunks)
    hx = torch.randn(B, T, C, generator=d.torch, dtype=torch.float64).to(device)
    layer = f"batch {B}, {H} heads of {C // H} dims, float64"
    with torch.no_grad():
        cache, start, steps = KVCache(), 0, []
        for n in chunks:
            case = f"mha_step of {n} new token(s) after {start} cached ones ({layer})"
            with exercise("mha_step", case=case):
                steps.append((case, start, n, mha_step(hm, hx[:, start:start + n], cache)))
            start += n
        want = answers.mha_forward(hx, *hw, n_heads=H, causal=True)
    for case, start, n, got in steps:
        expect_close(got, want[:, start:start + n], case,
                     hint="Every step is causal: a new token sees the cache and the new tokens up to itself.")
    what = f"the cache after {len(chunks)} steps of {T} tokens in all ({layer})"
    expect_number(len(cache), T, f"the number of tokens {what} holds (len)")
    expect_shape(cache.v, (B, H, T, C // H), f"cache.v in {what}")

# Two caches filled in turn keep their own tokens (nothing is shared between them), with values
# wider than the keys.
caches, seen = (KVCache(), KVCache()), ([], [])
for step, n in enumerate([3, 2, 1, 1]):
    for i, cache in enumerate(caches):
        kv = tuple(torch.randn(2, 3, n, w, generator=d.torch, dtype=torch.float64).to(device) for w in (4, 7))
        seen[i].append(kv)
        case = (f"KVCache.update of cache {i + 1} of two filled in turn, step {step + 1} "
                f"({n} token(s), keys 4 wide, values 7 wide)")
        with exercise("KVCache", case=case):
            got = cache.update(*kv)
        expect(isinstance(got, (tuple, list)) and len(got) == 2, f"{case}: update must return (keys, values)")
        for name, j, g_ in zip(["keys", "values"], (0, 1), got):
            expect_close(g_, torch.cat([s[j] for s in seen[i]], dim=2), f"{case}: the {name} returned")
### END HIDDEN TESTS

# %% [markdown]
# ## 6 · How big is the cache?
#
# Every layer caches, for every token, one key and one value for each head:
#
# $$\text{elements per token} = 2 \cdot n_h \cdot d_h \cdot l$$
#
# for $n_h$ heads of width $d_h$ and $l$ layers (DeepSeek-V2, arXiv 2405.04434,
# Table 1). Multiply by the tokens in the context, the sequences in the batch
# and the bytes per element (2 for bf16 or fp16, 4 for fp32) to get bytes.
#
# Llama-2-7B is plain MHA with 32 layers of 32 heads of 128 dims (the shape of
# LLaMA-7B, Touvron et al. 2023, arXiv 2302.13971, Table 2, which Llama 2 keeps):
# $2 \cdot 32 \cdot 128 \cdot 32 = 262{,}144$ elements, 512 KiB per token in
# fp16, **2 GiB for one 4,096-token sequence** (Llama 2's context length),
# beside 13.5 GB (12.6 GiB) of weights: 6.7 billion parameters in fp16. Give DeepSeek-V3's 61
# layers and 128 heads of 128 dims the same plain MHA cache and one sequence of
# 131,072 tokens in bf16 needs **488.0 GiB**: GiB, 2³⁰ bytes, so 524 GB in
# powers of ten, a difference worth knowing when a figure is quoted in "GB". Workbooks 02 and 04
# are about shrinking that number.

# %% nbgrader={"grade": false, "grade_id": "cache_size", "locked": false, "schema_version": 3, "solution": true, "task": false}
def kv_cache_elements_per_token(n_layers, n_heads, d_head):
    """Elements an MHA model caches for each token, over all its layers."""
    ### BEGIN SOLUTION
    return 2 * n_heads * d_head * n_layers
    ### END SOLUTION


def kv_cache_bytes(n_layers, n_heads, d_head, seq_len, batch=1, bytes_per_element=2):
    """Bytes of an MHA model's cache for `batch` sequences of `seq_len` tokens."""
    ### BEGIN SOLUTION
    return kv_cache_elements_per_token(n_layers, n_heads, d_head) * seq_len * batch * bytes_per_element
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_cache_size", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
with exercise("kv_cache_elements_per_token", "kv_cache_bytes"):
    per_token = number(kv_cache_elements_per_token(n_layers=32, n_heads=32, d_head=128), "kv_cache_elements_per_token")
    llama_4k = number(kv_cache_bytes(32, 32, 128, seq_len=4096), "kv_cache_bytes")
    dsv3_128k = number(kv_cache_bytes(61, 128, 128, seq_len=131_072, batch=1, bytes_per_element=2), "kv_cache_bytes")
assert per_token == 262_144, (
    f"Llama-2-7B caches 2 * 32 heads * 128 dims * 32 layers = 262,144 elements per token; you have {per_token}."
    + (" Did you forget that both K and V are cached?" if per_token == 131_072 else ""))
assert llama_4k == 2 * 2**30, f"2 GiB for 4,096 tokens in fp16 expected; you have {llama_4k / 2**30:.3g} GiB"
assert round(dsv3_128k / 2**30, 1) == 488.0, f"488.0 GiB expected; you have {dsv3_128k / 2**30:.1f} GiB"
print("cache sizes: correct")

### BEGIN HIDDEN TESTS
# Every argument at values the visible check holds fixed: batches above 1, 1 and 4 bytes per element,
# passed by position and by name.
dr = draw(707)
for b, nbytes in [(dr.int(2, 9), 2), (1, 4), (dr.int(2, 9), 1), (dr.int(2, 9), 4)]:
    l, h, d, t = dr.int(2, 96), dr.int(1, 128), dr.choice([64, 96, 128, 192]), dr.int(1, 2_000_000)
    case = (f"{l} layers of {h} heads of {d} dims, a batch of {b} sequence(s) of {t:,} tokens, "
            f"{nbytes} byte(s) per element")
    with exercise("kv_cache_elements_per_token", "kv_cache_bytes", case=case):
        got_e = number(kv_cache_elements_per_token(l, h, d), f"{case}: kv_cache_elements_per_token")
        got_pos = number(kv_cache_bytes(l, h, d, t, b, nbytes), f"{case}: kv_cache_bytes")
        got_kw = number(kv_cache_bytes(n_layers=l, n_heads=h, d_head=d, seq_len=t, batch=b, bytes_per_element=nbytes),
                        f"{case}: kv_cache_bytes")
    want_e = 2 * h * d * l
    expect_number(got_e, want_e, f"{case}: the elements per token")
    want_b = want_e * t * b * nbytes
    for how, got_b in [("arguments by position", got_pos), ("arguments by name", got_kw)]:
        expect_number(got_b, want_b, f"{case}: the bytes ({how})",
                      hint="Are seq_len, batch and bytes_per_element all used?")
### END HIDDEN TESTS

# %% [markdown]
# **Measure it.** The formula should agree with what a real cache holds. Here
# is one layer of the small module above after a 40-token prefill and 24
# decode steps: the number of elements your `KVCache` stores, against
# `kv_cache_elements_per_token(1, ...)` times tokens times batch.

# %%
mha = MultiHeadAttention(d_model=64, n_heads=8).to(device)
cache, x = KVCache(), torch.randn(3, 64, 64, device=device)  # (B=3, T=64, C=64)
with torch.no_grad():
    mha_step(mha, x[:, :40], cache)
    for t in range(40, 64):
        mha_step(mha, x[:, t:t + 1], cache)
stored = cache.k.numel() + cache.v.numel()
formula = kv_cache_elements_per_token(1, 8, 8) * len(cache) * 3
print(f"elements stored: {stored:,}; formula: {formula:,}; "
      f"bytes: {stored * cache.k.element_size():,} in {cache.k.dtype}")

# %% [markdown]
# **Play with it.** The widget below draws your `kv_cache_elements_per_token`
# for any model. Pick a preset, move the sliders, and watch how the cache grows with the
# context: it is a straight line, one copy of every head's key and value per
# token and layer. At which context does Llama-2-7B's cache outgrow its own
# 12.6 GiB of weights? And a batch of 8 sequences?

# %%
from attnlab.lesson.widgets import CacheGrowth

CacheGrowth(elements_per_token=kv_cache_elements_per_token)

# %% [markdown]
# ## Recap
#
# **What to remember**
# - `softmax(q kᵀ / √D) v`, softmax over the keys; the scale keeps the scores'
#   variance near one.
# - With a cache the queries are the *last* positions: align the causal mask
#   bottom-right. `F.scaled_dot_product_attention(is_causal=True)` aligns it
#   top-left.
# - Heads are a reshape: `(B, T, C) → (B, T, H, D) → (B, H, T, D)`, and back in
#   the same order.
# - Backward through the softmax: `dS = P ⊙ (dP − rowsum(dP ⊙ P))`; masked
#   entries get zero gradient by themselves.
# - Prefill plus one-token decode steps with a KV cache give exactly the full
#   forward pass; the cache grows along the time axis.
# - An MHA cache holds `2 · n_h · d_h · l` elements per token: 512 KiB per token
#   for Llama-2-7B in fp16, 488 GiB for one 128K-token sequence at DeepSeek-V3's
#   size.
#
# **What breaks if you get this wrong**
# - A missing or wrong scale trains, but worse, and silently: the softmax
#   saturates and gradients vanish.
# - A mask off by one either leaks the next token (training loss looks
#   wonderful, generation is garbage) or hides a token from itself.
# - Splitting heads with a bare `view` mixes tokens into heads; the shapes are
#   all right, and in a causal model later tokens' features leak into earlier
#   rows, so training "works" and generation does not.
# - A cache appended on the wrong axis, or a decode step whose mask is aligned
#   top-left, makes generation differ from training: the model you evaluated is
#   not the model you serve.
#
# **Sources**
# - Vaswani et al. 2017, *Attention Is All You Need*, arXiv 1706.03762: eq. 1,
#   §3.2.2 and footnote 4.
# - Dao et al. 2022, *FlashAttention*, arXiv 2205.14135: the recomputing
#   backward pass and the `rowsum(dO ⊙ O)` identity.
# - Touvron et al. 2023, *LLaMA*, arXiv 2302.13971, Table 2: the 7B shape; *Llama 2*,
#   arXiv 2307.09288: 4,096-token context.
# - DeepSeek-AI 2024, *DeepSeek-V2*, arXiv 2405.04434, Table 1: cache per token;
#   DeepSeek-V3's `inference/configs/config_671B.json`: 61 layers, 128 heads.
# - PyTorch documentation of `torch.nn.functional.scaled_dot_product_attention`:
#   the top-left alignment of `is_causal`.
#
# **Next:** [workbook 02](../02_gqa/02_gqa.ipynb) shares each key and value among a group of query heads
# and divides this cache by the group size.
