# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Rotary position embedding (RoPE)
#
# Attention by itself does not know where a token is: shuffle the keys and
# values together and every output stays the same. Rotary position embedding
# (RoPE; Su et al., *RoFormer*, arXiv 2104.09864) injects position by
# **rotating** each query and key by an angle proportional to its position.
# Because rotations compose, the score of a query at position $m$ with a key at
# position $n$ then depends only on the distance $m - n$. Llama, Mistral, Qwen
# and DeepSeek all use it.
#
# RoPE matters for this course for a second reason: it is what stops the
# simplest version of DeepSeek's latent attention from being fast. The last
# section shows why, in numbers, and workbook 04 shows DeepSeek's fix.
#
# **You will build**
# 1. the rotation frequencies and the cos/sin tables for any positions;
# 2. RoPE in its two layouts: interleaved pairs and rotate-half;
# 3. the weight permutation that makes the two layouts give the same scores;
# 4. a check of the relative-position property, and a test of your check;
# 5. RoPE inside GQA with a KV cache, every token at its true position;
# 6. the weight absorption that works without RoPE, and fails with it;
# 7. YaRN, the frequencies and the softmax scale with which DeepSeek-V3 runs
#    past the 4K context it was pre-trained at.
#
# **You need** workbooks 01 and 02 (attention, heads, the KV cache, GQA). Their
# answers come with the course package.
#
# **Time** about 90 minutes.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import math

import matplotlib.pyplot as plt
import torch

import attnlab
from attnlab import answers
from attnlab.checks import draw, exercise, expect, expect_close, expect_shape, number
# Workbooks 01 and 02's answers, as building blocks for this one.
from attnlab.answers import KVCache, gqa_attention, merge_heads, split_heads

torch.manual_seed(0)
device = attnlab.pick_device()
print(f"torch {torch.__version__}, running on {device}")

# %% [markdown]
# ## 1 · Frequencies and tables
#
# RoPE splits a head's $d$ features into $d/2$ pairs and turns pair $i$ of the
# vector at position $m$ by the angle $m\,\theta_i$, with (RoFormer §3.2)
#
# $$\theta_i = \text{base}^{-2i/d}, \qquad i = 0, 1, \ldots, d/2 - 1, \qquad \text{base} = 10000.$$
#
# Pair 0 turns by one radian per position, a full turn every $2\pi \approx 6.3$
# positions; the last pair turns so slowly that a turn takes tens of thousands
# of positions. Fast pairs resolve nearby positions, slow pairs far ones, like
# the hands of a clock. (Llama 3 uses base 500,000 to stretch the slow hands
# for long contexts.)
#
# A model needs $\cos(m\theta_i)$ and $\sin(m\theta_i)$ for each position $m$
# it processes, as two `(T, d/2)` tables. During decoding the positions do not
# start at 0: the tokens of a step sit at `offset, offset + 1, ...`, so the
# tables take the positions themselves.
#
# Precision matters here: at position 100,000 a float32 angle is off by a few
# thousandths of a radian, so form $\theta_i$ and the angles in float64 (not
# the float32 output of `rope_frequencies`), and return float32 tables on the
# device of `positions`.

# %% nbgrader={"grade": false, "grade_id": "tables", "locked": false, "schema_version": 3, "solution": true, "task": false}
def rope_frequencies(d, base=10000.0):
    """theta_i = base ** (-2i / d) for i = 0 .. d/2 - 1: a (d/2,) float32 tensor."""
    ### BEGIN SOLUTION
    i = torch.arange(d // 2, dtype=torch.float64)
    return (base ** (-2 * i / d)).float()
    ### END SOLUTION


def rope_tables(positions, d, base=10000.0):
    """(cos, sin): two (T, d/2) float32 tables of m * theta_i for each m in positions (a 1-D int tensor), on its device."""
    ### BEGIN SOLUTION
    i = torch.arange(d // 2, dtype=torch.float64, device=positions.device)
    angles = positions.double()[:, None] * base ** (-2 * i / d)[None, :]  # (T, d/2), all in float64
    return angles.cos().float(), angles.sin().float()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_tables", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
with exercise("rope_frequencies"):
    theta = rope_frequencies(8)
expect_close(theta, torch.tensor([1.0, 0.1, 0.01, 0.001]), "rope_frequencies(8)",
             suspects={"the exponent is -i/d instead of -2i/d": torch.tensor([1.0, 10**-0.5, 0.1, 10**-1.5])})
with exercise("rope_tables"):
    cos, sin = rope_tables(torch.arange(5, 8, device=device), 8)
angles = torch.arange(5.0, 8.0)[:, None] * torch.tensor([1.0, 0.1, 0.01, 0.001])  # (3, 4)
expect_close(cos.cpu(), angles.cos(), "cos of rope_tables(torch.arange(5, 8), 8)", atol=1e-6,
             suspects={"the positions are ignored (0, 1, 2 instead of 5, 6, 7)":
                       (torch.arange(3.0)[:, None] * torch.tensor([1.0, 0.1, 0.01, 0.001])).cos()})
expect_close(sin.cpu(), angles.sin(), "sin of rope_tables(torch.arange(5, 8), 8)", atol=1e-6)
print("rope_frequencies and rope_tables: correct")

### BEGIN HIDDEN TESTS
# Other widths and bases; positions that are not consecutive; positions of long contexts (100,000 and
# beyond), where float32 angles drift.
dr = draw(301)
start = dr.int(1, 600)
for d, base, positions in [(dr.choice([6, 16, 32]), dr.choice([100.0, 10000.0, 500000.0]),
                            torch.arange(start, start + dr.int(3, 40))),
                           (dr.choice([6, 8, 32]), dr.choice([10000.0, 500000.0]),
                            torch.tensor(sorted(dr.shuffle(range(0, 700, 7))[:5]))),
                           (dr.choice([16, 64]), 10000.0, torch.arange(start + 99_500, start + 99_505)),
                           (128, 500000.0, torch.tensor(sorted(dr.int(131_000, 1_100_000) for _ in range(3))))]:
    call = f"rope_frequencies({d}, base={base:,g})"
    with exercise("rope_frequencies", case=call):
        got_theta = rope_frequencies(d, base)
    expect_close(got_theta, answers.rope_frequencies(d, base), call, atol=1e-7)
    where = ", ".join(f"{m:,}" for m in positions.tolist()) if len(positions) <= 3 else \
        f"{int(positions[0]):,}..{int(positions[-1]):,}"
    case = f"rope_tables at positions {where}, d={d}, base={base:,g}"
    with exercise("rope_tables", case=case):
        got_cos, got_sin = rope_tables(positions.to(device), d, base)
    want_cos, want_sin = answers.rope_tables(positions, d, base)
    for name, got_t, want_t in [("cos", got_cos, want_cos), ("sin", got_sin, want_sin)]:
        expect_shape(got_t, want_t.shape, f"the {name} table of {case}")
        off = (got_t.detach().cpu().double() - want_t.double()).abs().amax(dim=1)  # (T,): the worst pair per position
        worst = int(off.argmax())
        expect(not off[worst] > 1e-4, f"{case}: at position {int(positions[worst]):,} your {name} table is off"
               + ("; far from the start float32 angles drift: form theta and m * theta in float64, then convert "
                  "the tables to float32" if positions[worst] >= 10_000 else ""), f"by {off[worst]:.1g}")
        expect_close(got_t.cpu(), want_t, f"the {name} table of {case}", atol=1e-4)
### END HIDDEN TESTS

# %% [markdown]
# **See it.** Move the position: each arrow is one pair of coordinates of the
# same vector, rotated by RoPE at your `rope_frequencies`. The fast pair spins;
# the slow pairs barely move.

# %%
from attnlab.lesson.widgets import RopeRotation

RopeRotation(d=64, frequencies=rope_frequencies)

# %% [markdown]
# ## 2 · Two layouts of the same idea
#
# *Which* features form a pair is a convention, and two are in use:
#
# - **interleaved pairs**: $(x_0, x_1), (x_2, x_3), \ldots$, as in the RoFormer
#   paper, Meta's Llama code (which views the pairs as complex numbers) and
#   DeepSeek-V3's inference code;
# - **rotate-half**: $(x_0, x_{d/2}), (x_1, x_{d/2+1}), \ldots$, as in Hugging
#   Face's `transformers` (its `rotate_half`) and GPT-NeoX.
#
# Either way, pair $i$ with coordinates $(a, b)$ becomes
#
# $$(a\cos m\theta_i - b\sin m\theta_i,\; a\sin m\theta_i + b\cos m\theta_i).$$
#
# `x` is `(..., T, d)`, with one row of the tables per position `T`; the
# tables broadcast over any leading batch and head axes.

# %% nbgrader={"grade": false, "grade_id": "layouts", "locked": false, "schema_version": 3, "solution": true, "task": false}
def rope_interleaved(x, cos, sin):
    """Rotate the pairs (x[2i], x[2i+1]). x (..., T, d); cos, sin (T, d/2). Returns (..., T, d)."""
    ### BEGIN SOLUTION
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., T, d/2) each
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (..., T, d/2, 2)
    return out.flatten(-2)  # (..., T, d)
    ### END SOLUTION


def rope_half(x, cos, sin):
    """Rotate the pairs (x[i], x[i + d/2]). x (..., T, d); cos, sin (T, d/2). Returns (..., T, d)."""
    ### BEGIN SOLUTION
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]  # (..., T, d/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (..., T, d)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_layouts", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
x = torch.tensor([[1.0, 0.0, 0.0, 1.0]], device=device).expand(3, 4)  # (T=3, d=4): the same vector at 3 positions
cos, sin = answers.rope_tables(torch.arange(3, device=device), 4)
with exercise("rope_interleaved"):
    got = rope_interleaved(x, cos, sin)
# pair 0 = (1, 0) turns by m radians; pair 1 = (0, 1) by m/100 radians
want = torch.stack([torch.cos(torch.arange(3.0)), torch.sin(torch.arange(3.0)),
                    -torch.sin(torch.arange(3.0) / 100), torch.cos(torch.arange(3.0) / 100)], dim=-1).to(device)
expect_close(got, want, "rope_interleaved of (1, 0, 0, 1) at positions 0, 1, 2",
             suspects={"the rotation goes the wrong way (the sign of sin is flipped)":
                       answers.rope_interleaved(x, cos, -sin),
                       "the pairs are (x[i], x[i + d/2]): that is the rotate-half layout":
                       answers.rope_half(x, cos, sin)})
with exercise("rope_half"):
    got = rope_half(x, cos, sin)
expect_close(got, answers.rope_half(x, cos, sin), "rope_half of (1, 0, 0, 1) at positions 0, 1, 2",
             suspects={"the rotation goes the wrong way (the sign of sin is flipped)": answers.rope_half(x, cos, -sin),
                       "the pairs are (x[2i], x[2i+1]): that is the interleaved layout":
                       answers.rope_interleaved(x, cos, sin)})
q = torch.randn(2, 4, 6, 16, device=device)  # (B, H, T, D)
cos, sin = answers.rope_tables(torch.arange(10, 16, device=device), 16)
with exercise("rope_interleaved", "rope_half"):
    got_i, got_h = rope_interleaved(q, cos, sin), rope_half(q, cos, sin)
expect_close(got_i, answers.rope_interleaved(q, cos, sin), "rope_interleaved on a (2, 4, 6, 16) tensor",
             hint="The tables are (T, d/2): they broadcast over the batch and head axes.")
expect_close(got_h, answers.rope_half(q, cos, sin), "rope_half on a (2, 4, 6, 16) tensor")
print("rope_interleaved and rope_half: correct")

### BEGIN HIDDEN TESTS
# Batches and heads in front, no leading axes at all, one token of one pair, positions far from the start;
# float64.
d = draw(311)
for shape, offset in [((d.int(2, 4), d.int(1, 3), d.int(2, 9), 2 * d.int(2, 16)), d.int(1, 1000)),
                      ((d.int(2, 9), 2 * d.int(1, 8)), d.int(0, 2000)), ((1, d.int(1, 4), 1, 2), 0),
                      ((d.int(1, 3), d.int(1, 3), d.int(2, 6), 2 * d.int(4, 16)), d.int(99_000, 101_000))]:
    hx = torch.randn(shape, generator=d.torch, dtype=torch.float64).to(device)
    hc, hs = answers.rope_tables(torch.arange(offset, offset + shape[-2], device=device), shape[-1])
    for name, fn in [("rope_interleaved", rope_interleaved), ("rope_half", rope_half)]:
        case = f"{name} of a {shape} float64 tensor at positions {offset:,}..{offset + shape[-2] - 1:,}"
        with exercise("rope_interleaved", "rope_half", case=case):
            got = fn(hx, hc, hs)
        expect_close(got, getattr(answers, name)(hx, hc, hs), case,
                     hint="The tables broadcast over every leading axis; a float64 x gives a float64 result.")
### END HIDDEN TESTS

# %% [markdown]
# ## 3 · One model, two layouts: a permutation of the weights
#
# The layouts differ only in which features are paired. Let $P$ be the
# permutation that lists the even features of a head first and the odd ones
# after: $P x = (x_0, x_2, \ldots, x_{d-2}, x_1, x_3, \ldots, x_{d-1})$. It
# moves pair $(x_{2i}, x_{2i+1})$ to positions $(i, i + d/2)$, so
#
# $$\text{rope\_half}(P x) = P\,\text{rope\_interleaved}(x),$$
#
# and since a permutation does not change a dot product,
# $(P a) \cdot (P b) = a \cdot b$: the attention scores are the same. So a
# checkpoint trained with interleaved RoPE runs under rotate-half code once the
# output rows of $W_Q$ and $W_K$ are permuted **within each head**; $W_V$ and
# $W_O$ stay as they are. Hugging Face's script that converts Meta's Llama
# checkpoints does exactly this. Forget it and the model loads, runs, and
# writes nonsense.
#
# `W` is stored as `nn.Linear` stores it, `(H·D, C)`: rows `h·D … (h+1)·D − 1`
# produce head `h`.

# %% nbgrader={"grade": false, "grade_id": "permutation", "locked": false, "schema_version": 3, "solution": true, "task": false}
def permute_for_rotate_half(W, n_heads):
    """Reorder each head's rows of W (H * D, C): row 2i of a head goes to i, row 2i + 1 to i + D/2."""
    ### BEGIN SOLUTION
    HD, C = W.shape
    D = HD // n_heads
    return W.view(n_heads, D // 2, 2, C).transpose(1, 2).reshape(HD, C)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_permutation", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
W = torch.arange(12.0, device=device)[:, None].expand(12, 3)  # (H*D = 2*6, C = 3): row r is filled with r
with exercise("permute_for_rotate_half"):
    got = permute_for_rotate_half(W, n_heads=2)
rows = [int(r) for r in got[:, 0].tolist()]
assert rows == [0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11], (
    f"the rows come out in the order {rows}; expected [0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11] (per head: evens, then odds)."
    + (" You permuted across heads instead of within each head." if rows[:6] == [0, 2, 4, 6, 8, 10] else "")
    + (" That is the inverse permutation (halves back to pairs)." if rows[:6] == [0, 3, 1, 4, 2, 5] else ""))
# The whole point: interleaved RoPE with W and rotate-half RoPE with the permuted W give the same scores.
H, D, C, T = 4, 8, 32, 6
W_q, W_k = torch.randn(H * D, C, device=device), torch.randn(H * D, C, device=device)
x = torch.randn(1, T, C, device=device)
cos, sin = answers.rope_tables(torch.arange(T, device=device), D)
with exercise("permute_for_rotate_half"):
    W_q2, W_k2 = permute_for_rotate_half(W_q, H), permute_for_rotate_half(W_k, H)


def scores(rope, Wq, Wk):
    q, k = (rope(answers.split_heads(x @ W.T, H), cos, sin) for W in (Wq, Wk))  # (1, H, T, D)
    return q @ k.transpose(-2, -1)


expect_close(scores(answers.rope_half, W_q2, W_k2), scores(answers.rope_interleaved, W_q, W_k),
             "the scores of rotate-half RoPE with your permuted weights", atol=1e-4)
print("permute_for_rotate_half: correct; both layouts give the same scores")

### BEGIN HIDDEN TESTS
# Several heads, one head, heads of one pair; float64.
d = draw(322)
for H, D, C in [(d.int(2, 6), 2 * d.int(2, 6), d.int(1, 9)), (1, 2 * d.int(2, 12), d.int(1, 9)), (d.int(2, 8), 2, d.int(1, 9))]:
    hW = torch.randn(H * D, C, generator=d.torch, dtype=torch.float64).to(device)
    case = f"permute_for_rotate_half of a ({H * D}, {C}) float64 projection with {H} heads of {D} rows"
    with exercise("permute_for_rotate_half", case=case):
        got = permute_for_rotate_half(hW, H)
    expect_close(got, answers.permute_for_rotate_half(hW, H), case,
                 hint="Per head: its even rows first, then its odd rows; the values and dtype of W unchanged.")
### END HIDDEN TESTS

# %% [markdown]
# ## 4 · Only the distance counts
#
# Write $R_m$ for the rotation at position $m$ (block-diagonal, one $2\times2$
# rotation by $m\theta_i$ per pair). Rotations compose, $R_m^\top R_n = R_{n-m}$,
# so
#
# $$(R_m q)^\top (R_n k) = q^\top R_m^\top R_n k = q^\top R_{n-m}\, k:$$
#
# the score depends on $q$, $k$ and the distance, not on where the pair sits in
# the sequence (RoFormer §3 derives it in general). This is RoPE's central
# claim, and you can check it numerically. Write `is_relative(rope_fn, d)`: it
# takes any position encoding `rope_fn(x, positions)` (with `x` a `(T, d)`
# tensor and `positions` a `(T,)` integer tensor) and returns `True` when the
# score of a query at $m$ with a key at $n$ equals the score at $m + s$, $n + s$
# for random $q, k$ and several $m$, $n$ and shifts $s$ (small ones, and shifts
# of hundreds of positions), `False` otherwise.
# The test hands your check real RoPE (both layouts) and encodings that are
# *not* relative; it must tell them apart. Work in float64 and compare with a
# tolerance around `1e-6`.

# %% nbgrader={"grade": false, "grade_id": "relative", "locked": false, "schema_version": 3, "solution": true, "task": false}
def is_relative(rope_fn, d):
    """True if scores under rope_fn(x (T, d), positions (T,) int) depend only on the query-key distance."""
    ### BEGIN SOLUTION
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, d, generator=gen, dtype=torch.float64)

    def score(m, n):
        rq = rope_fn(q[None], torch.tensor([m]))  # (1, d)
        rk = rope_fn(k[None], torch.tensor([n]))  # (1, d)
        return (rq * rk).sum()

    for m, n in [(0, 0), (3, 1), (1, 7), (20, 5)]:
        for s in (1, 9, 250):
            if not torch.isclose(score(m, n), score(m + s, n + s), atol=1e-6, rtol=1e-6):
                return False
    return True
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_relative", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# The encodings below run while your check does, with the course's rope_tables, rope_interleaved and
# rope_half standing in for yours (so that a mistake in those costs points there, not here).
def interleaved_rope(x, positions):  # float64 tables, so that RoPE is relative to float64 precision
    return rope_interleaved(x, *rope_tables(positions, x.shape[-1], dtype=x.dtype))


def half_rope(x, positions):
    return rope_half(x, *rope_tables(positions, x.shape[-1], dtype=x.dtype))


def absolute_sinusoid(x, positions):  # the original Transformer's encoding, added instead of rotated
    cos, sin = rope_tables(positions, x.shape[-1])
    return x + torch.cat([sin, cos], dim=-1).to(x.dtype)


def squared_angles(x, positions):  # rotations by m^2 * theta: position-dependent, not relative
    return rope_interleaved(x, *rope_tables(positions**2, x.shape[-1]))


cases = {"interleaved RoPE": interleaved_rope, "rotate-half RoPE": half_rope,
         "an added sinusoidal (absolute) encoding": absolute_sinusoid, "a rotation by m^2 * theta": squared_angles}
verdicts = {}
for name, fn in cases.items():
    with exercise("is_relative", case=f"is_relative on {name}"):
        verdicts[name] = is_relative(fn, 8)
# The right answers, written down only after your check has run.
relative = {"interleaved RoPE": True, "rotate-half RoPE": True,
            "an added sinusoidal (absolute) encoding": False, "a rotation by m^2 * theta": False}
for name, verdict in verdicts.items():
    expect(verdict in (True, False), f"is_relative must return True or False, not {verdict!r}")
    expect(bool(verdict) == relative[name], f"is_relative says {bool(verdict)} for {name}; it should say "
           f"{relative[name]}. " + ("Does your check compare scores at (m, n) with scores at (m + s, n + s) for "
                                    "some s != 0?" if not relative[name] else
                                    "Are you comparing in float64 with a tolerance, rather than with ==?"))
print("is_relative tells relative encodings from absolute ones")

### BEGIN HIDDEN TESTS
def log_angles(x, positions):  # rotations by log(1 + m) * theta
    theta = 10000.0 ** (-2 * torch.arange(x.shape[-1] // 2, dtype=torch.float64) / x.shape[-1])
    a = torch.log1p(positions.double())[:, None] * theta
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * a.cos() - x2 * a.sin(), x1 * a.sin() + x2 * a.cos()], -1).flatten(-2)


def rope_base_500k(x, positions):
    return rope_half(x, *rope_tables(positions, x.shape[-1], 500000.0, dtype=x.dtype))


def rope_short_table(x, positions):  # a table built for 128 positions: later positions reuse its last row
    return rope_interleaved(x, *rope_tables(positions.clamp(max=127), x.shape[-1], dtype=x.dtype))


encodings = {"rotations by log(1 + m) * theta": log_angles, "rotate-half RoPE with base 500,000": rope_base_500k,
             "an added sinusoidal (absolute) encoding": absolute_sinusoid,
             "a RoPE whose table stops at position 127 (later positions reuse its last row)": rope_short_table}
verdicts = {}
dr = draw(377)
for d in (dr.choice([4, 6, 8]), dr.choice([16, 32, 64])):  # a narrow and a wide head
    for name, fn in encodings.items():
        with exercise("is_relative", case=f"is_relative on {name}, d={d}"):
            verdicts[name, d] = is_relative(fn, d)
relative = {"rotate-half RoPE with base 500,000": True}  # the others are not relative
for (name, d), verdict in verdicts.items():
    want = relative.get(name, False)
    expect(verdict in (True, False) and bool(verdict) == want, f"is_relative is wrong for {name}, d={d}"
           + (": an encoding can be relative near the start and not far from it; shift by hundreds of positions "
              "too" if "table stops" in name else ""))
### END HIDDEN TESTS

# %% [markdown]
# **See it.** One query and one key, placed at every pair of positions and
# rotated by your `rope_tables` and `rope_interleaved`: the
# score is constant along each diagonal ($m - n$ fixed). Untick the box to use
# an unrelated key: still constant along the diagonals.

# %%
from attnlab.lesson.widgets import RopeScores

RopeScores(d=64, length=64, tables=rope_tables, rotate=rope_interleaved)

# %% [markdown]
# ## 5 · RoPE with a KV cache
#
# Two rules make RoPE and the cache agree:
#
# 1. **Rotate keys before caching them.** A key's position never changes once
#    it is written, so its rotation is done once; the cache holds rotated keys
#    (values are not rotated at all).
# 2. **Rotate the new tokens at their true positions.** When the cache already
#    holds `len(cache)` tokens, the new tokens sit at positions
#    `len(cache), len(cache) + 1, …`. Rotating each decode step at position 0
#    (the classic bug: the tables are built for `range(T_new)`) makes every new
#    token look as if it stood at the start, and the model forgets word order
#    while still producing fluent-looking text.
#
# Write one GQA step with interleaved RoPE: project, split into heads
# (`split_heads` from workbook 01), rotate `q` and `k` at their positions
# with your `rope_tables` and `rope_interleaved`, update the cache with the
# rotated keys, attend with `gqa_attention` from workbook 02 (causal), merge,
# project with `W_o`. Weights are `nn.Linear`-style `(out, in)` matrices.

# %% nbgrader={"grade": false, "grade_id": "rope_cache", "locked": false, "schema_version": 3, "solution": true, "task": false}
def rope_gqa_step(x, W_q, W_k, W_v, W_o, n_heads, n_kv_heads, cache, base=10000.0):
    """GQA with interleaved RoPE for new tokens x (B, T_new, C); extends cache. Returns (B, T_new, C)."""
    ### BEGIN SOLUTION
    q = split_heads(x @ W_q.T, n_heads)  # (B, H, T_new, D)
    k = split_heads(x @ W_k.T, n_kv_heads)  # (B, G, T_new, D)
    v = split_heads(x @ W_v.T, n_kv_heads)  # (B, G, T_new, D)
    positions = torch.arange(len(cache), len(cache) + x.shape[1], device=x.device)
    cos, sin = rope_tables(positions, q.shape[-1], base)
    k, v = cache.update(rope_interleaved(k, cos, sin), v)  # (B, G, T_cached, D)
    return merge_heads(gqa_attention(rope_interleaved(q, cos, sin), k, v, causal=True)) @ W_o.T  # (B, T_new, C)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_rope_cache", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Prefill 5 tokens, decode 3 one by one: equal to one pass over all 8 tokens.
C, H, G = 32, 8, 2
Ws = [torch.randn(C, C, device=device) / C**0.5, torch.randn(G * C // H, C, device=device) / C**0.5,
      torch.randn(G * C // H, C, device=device) / C**0.5, torch.randn(C, C, device=device) / C**0.5]
x = torch.randn(2, 8, C, device=device)
kv, got = KVCache(), []
with exercise("rope_gqa_step"):
    for t0, t1 in [(0, 5), (5, 6), (6, 7), (7, 8)]:
        got.append(rope_gqa_step(x[:, t0:t1], *Ws, H, G, kv))
want = answers.rope_gqa_step(x, *Ws, H, G, answers.KVCache())  # (2, 8, C): all 8 tokens at once
at_zero, zero_cache = [], answers.KVCache()  # what the position-0 bug produces
for t0, t1 in [(0, 5), (5, 6), (6, 7), (7, 8)]:
    at_zero.append(answers.rope_gqa_step(x[:, t0:t1], *Ws, H, G, zero_cache, start=0))
expect_shape(kv.k, (2, G, 8, C // H), "the cache's keys after 8 tokens")
for (t0, t1), step, bug in zip([(0, 5), (5, 6), (6, 7), (7, 8)], got, at_zero):
    expect_close(step, want[:, t0:t1], f"the step for positions {t0}..{t1 - 1}",
                 suspects={"every step rotates its tokens as if they stood at position 0: the new tokens sit at "
                           "positions len(cache), len(cache) + 1, ...": bug})
print("RoPE with a KV cache: every step at its true position")

### BEGIN HIDDEN TESTS
# Groups of query heads, one K/V head (MQA) and as many as query heads (MHA); a prompt then single tokens,
# single tokens from the start, steps of several tokens after a filled cache; other bases than 10,000
# (500,000 as Llama 3's); batches above 1; float64.
d = draw(333)
for G, n_rep, chunks, base in [(d.int(2, 3), d.int(2, 3), [d.int(2, 6)] + [1] * d.int(2, 3), 10000.0),
                               (1, d.int(2, 5), [1] * d.int(3, 5), 500000.0),
                               (d.int(2, 4), 1, [d.int(2, 6), d.int(2, 4)], d.choice([100.0, 50000.0]))]:
    H = G * n_rep
    B, D = d.int(1, 3), 2 * d.int(1, 4)
    C = H * D
    hW = [torch.randn(n, C, generator=d.torch, dtype=torch.float64).to(device) / C**0.5 for n in (C, G * D, G * D, C)]
    hx = torch.randn(B, sum(chunks), C, generator=d.torch, dtype=torch.float64).to(device)
    layer = f"rope_gqa_step with base={base:,g}, {H} query heads and {G} K/V heads of {D} dims, batch {B}, float64"
    steps, kv, start = [], KVCache(), 0
    for n in chunks:
        case = f"{layer}: the step of {n} token(s) at positions {start}..{start + n - 1}"
        with exercise("rope_gqa_step", case=case):
            steps.append((case, start, n, rope_gqa_step(hx[:, start:start + n], *hW, H, G, kv, base=base)))
        start += n
    want = answers.rope_gqa_step(hx, *hW, H, G, answers.KVCache(), base=base)
    for case, start, n, got in steps:
        expect_close(got, want[:, start:start + n], case,
                     hint="" if base == 10000.0 else f"Are your tables built with the base you are given ({base:,g})?")
# A decode step far into a long context: about 100,000 tokens already cached.
B, C, H, G, T0 = 1, 16, 4, 1, d.int(99_000, 101_000)
D = C // H
hW = [torch.randn(n, C, generator=d.torch, dtype=torch.float64).to(device) / C**0.5 for n in (C, G * D, G * D, C)]
hx = torch.randn(B, 2, C, generator=d.torch, dtype=torch.float64).to(device)
cached = [torch.randn(B, G, T0, D, generator=d.torch, dtype=torch.float64).to(device) for _ in range(2)]  # rotated K, V
kv = KVCache()
kv.update(*cached)  # your cache holds copies: what your code does to them cannot change the expected result
case = f"rope_gqa_step with base=500,000 for 2 new tokens after {T0:,} cached ones (positions {T0:,}..{T0 + 1:,})"
with exercise("rope_gqa_step", case=case):
    got = rope_gqa_step(hx, *hW, H, G, kv, base=500000.0)
ref_cache = answers.KVCache()
ref_cache.k, ref_cache.v = cached
expect_close(got, answers.rope_gqa_step(hx, *hW, H, G, ref_cache, base=500000.0), case)
### END HIDDEN TESTS

# %% [markdown]
# ## 6 · Why RoPE blocks weight absorption
#
# Workbook 04's multi-head latent attention caches, for each token, a small
# latent vector $c$ instead of its keys, and computes a head's key as
# $k = W^{UK} c$. Materialising those keys at every decode step would throw the
# saving away. Without RoPE it is not needed: for a query $q = W^{Q} h$,
#
# $$q^\top k = (W^{Q} h)^\top (W^{UK} c) = h^\top \underbrace{(W^{Q})^\top W^{UK}}_{\text{one fixed matrix}}\, c ,$$
#
# so $W^{UK}$ can be **absorbed** into the query side once, ahead of time, and
# the scores computed straight against the cached latents. Now add RoPE: the
# query is rotated by $R_m$ and the key by $R_n$:
#
# $$(R_m W^{Q} h)^\top (R_n W^{UK} c) = h^\top (W^{Q})^\top R_{n-m}\, W^{UK} c .$$
#
# A rotation that depends on the distance now sits between $W^{Q}$ and
# $W^{UK}$, and matrix products do not commute: there is no single matrix to
# precompute. DeepSeek-V2 (arXiv 2405.04434, §2.1.3) states this as the reason
# for its *decoupled* RoPE.
#
# For one head, with `W_q` of shape `(D, C)`, `W_uk` of shape `(D, d_c)`, query
# inputs `h` `(Tq, C)` and cached latents `c` `(Tk, d_c)`: write `absorb`,
# which returns the fixed `(C, d_c)` matrix, and `absorbed_scores`, which
# computes the `(Tq, Tk)` scores from `h`, `c` and that matrix alone.

# %% nbgrader={"grade": false, "grade_id": "absorb", "locked": false, "schema_version": 3, "solution": true, "task": false}
def absorb(W_q, W_uk):
    """The (C, d_c) matrix W_q^T W_uk, for W_q (D, C) and W_uk (D, d_c)."""
    ### BEGIN SOLUTION
    return W_q.T @ W_uk  # (C, d_c)
    ### END SOLUTION


def absorbed_scores(h, c, W_absorbed):
    """Scores q . k of queries from h (Tq, C) against keys from latents c (Tk, d_c): a (Tq, Tk) tensor."""
    ### BEGIN SOLUTION
    return h @ W_absorbed @ c.T  # (Tq, Tk)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_absorb", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
D, C, d_c, T = 16, 32, 8, 10
W_q, W_uk = torch.randn(D, C, device=device), torch.randn(D, d_c, device=device)
h, c = torch.randn(T, C, device=device), torch.randn(T, d_c, device=device)
with exercise("absorb"):
    W_abs = absorb(W_q, W_uk)
expect_shape(W_abs, (C, d_c), "absorb(W_q, W_uk)", hint="W_q is (D, C) and W_uk is (D, d_c): which one is transposed?")
with exercise("absorbed_scores"):
    got = absorbed_scores(h, c, W_q.T @ W_uk)
naive = (h @ W_q.T) @ (c @ W_uk.T).T  # materialise q (T, D) and k (T, D), then q k^T
expect_close(got, naive, "absorbed_scores", atol=1e-3)
expect_close(W_abs, W_q.T @ W_uk, "absorb(W_q, W_uk)", atol=1e-4)
print("absorb and absorbed_scores: correct (without RoPE)")

### BEGIN HIDDEN TESTS
# Other weights than the visible test's (the first with its shapes and dtype), then fewer queries than
# latents, one query, a latent wider than the model (d_c > C); float64.
d = draw(344)
for hD, hC, hdc, Tq, Tk, dtype in [(16, 32, 8, 10, 10, torch.float32),
                                   (d.int(2, 8), d.int(3, 9), d.int(2, 6), (t := d.int(2, 5)), t + d.int(1, 4),
                                    torch.float64),
                                   (d.int(2, 8), d.int(2, 4), d.int(6, 12), 1, d.int(2, 9), torch.float64)]:
    hWq = torch.randn(hD, hC, generator=d.torch, dtype=dtype).to(device)
    hWuk = torch.randn(hD, hdc, generator=d.torch, dtype=dtype).to(device)
    hh = torch.randn(Tq, hC, generator=d.torch, dtype=dtype).to(device)
    hc = torch.randn(Tk, hdc, generator=d.torch, dtype=dtype).to(device)
    weights = f"W_q ({hD}, {hC}) and W_uk ({hD}, {hdc}), {str(dtype).removeprefix('torch.')}"
    with exercise("absorb", case=f"absorb of new weights {weights}"):
        got_W = absorb(hWq, hWuk)
    loose = dtype == torch.float32  # float32 sums in another order: the tolerances of the visible check
    expect_close(got_W, hWq.T @ hWuk, f"absorb of new weights {weights}", atol=1e-4 if loose else None)
    case = f"absorbed_scores for {Tq} queries against {Tk} latents, with new weights {weights}"
    with exercise("absorbed_scores", case=case):
        got_s = absorbed_scores(hh, hc, hWq.T @ hWuk)
    expect_close(got_s, (hh @ hWq.T) @ (hc @ hWuk.T).T, case, atol=1e-3 if loose else None,
                 hint="absorbed_scores must use its arguments h, c and W_absorbed alone, not the notebook's W_q or W_uk.")
### END HIDDEN TESTS

# %% [markdown]
# **Measure it.** The same head with RoPE applied to its queries and keys:
# the naive scores (materialise $q$ and $k$, rotate them, multiply) against
# the absorbed ones (one fixed matrix, no rotation can be put anywhere), by
# distance $m - n$ (causal attention only has $m \ge n$). The error is zero at
# distance 0, since $R_0 = I$, and grows with the distance until it is as
# large as the scores themselves (the far end is noisy: few pairs are that far
# apart in 32 positions).

# %%
D, C, d_c, T = 16, 32, 8, 32  # one head of 16 dims, a model 32 wide, a latent of 8, 32 positions
gen = torch.Generator().manual_seed(1)
W_q, W_uk = torch.randn(D, C, generator=gen, dtype=torch.float64), torch.randn(D, d_c, generator=gen, dtype=torch.float64)
h, c = torch.randn(T, C, generator=gen, dtype=torch.float64), torch.randn(T, d_c, generator=gen, dtype=torch.float64)
cos, sin = rope_tables(torch.arange(T), D)
plain = (h @ W_q.T) @ (c @ W_uk.T).T  # (T, T)
roped = rope_interleaved(h @ W_q.T, cos, sin) @ rope_interleaved(c @ W_uk.T, cos, sin).T  # (T, T)
absorbed = absorbed_scores(h, c, absorb(W_q, W_uk))  # (T, T)
print(f"relative error without RoPE: {(absorbed - plain).norm() / plain.norm():.1e}")
print(f"relative error with RoPE:    {(absorbed - roped).norm() / roped.norm():.2f}")
distance = torch.arange(T)[:, None] - torch.arange(T)[None, :]  # (T, T): m - n
rms = lambda t: t.square().mean().sqrt().item()  # noqa: E731
err = [rms((absorbed - roped)[distance == s]) / rms(roped) for s in range(T)]  # per distance, in units of a typical score
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(range(T), err, "o-", markersize=3)
ax.set(xlabel="distance m − n", ylabel="RMS error / RMS score", title="absorbed scores against RoPE scores")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 7 · Past the trained context: YaRN
#
# A model pre-trained on 4,096-token sequences has seen the angles $m\theta_i$
# only for $m < 4096$. A fast pair turns thousands of times in that span and
# has seen every angle; a slow pair, whose wavelength $2\pi/\theta_i$ is longer
# than the context, has never finished one turn, and at position 100,000 it
# shows the model angles it never saw. Three fixes, in the order they came:
#
# - **Position interpolation** (Chen et al., arXiv 2306.15595): divide every
#   frequency by the extension factor $s$. The slow pairs stay in range, but
#   the fast pairs, which tell neighbours apart, are squeezed $s$ times too.
# - **NTK-aware scaling** (bloc97, 2023, on Reddit's r/LocalLLaMA): raise the
#   base instead, which changes the slow pairs a lot and the fast ones hardly.
# - **YaRN** (Peng et al., arXiv 2309.00071, §3.2): decide per pair, by how many
#   turns $r_i = L / (2\pi/\theta_i)$ it makes over the original context $L$.
#   A pair with more than $\beta_{fast}$ turns keeps $\theta_i$; one with fewer
#   than $\beta_{slow}$ turns is interpolated, $\theta_i / s$; between the two,
#   a linear ramp over the pair index blends them. The index at which a pair
#   makes $r$ turns is
#
# $$i(r) = \frac{d \,\ln\!\big(L / (2\pi r)\big)}{2 \ln \text{base}},$$
#
#   and DeepSeek-V3's code (`precompute_freqs_cis`) takes
#   $\text{low} = \max(\lfloor i(\beta_{fast}) \rfloor, 0)$,
#   $\text{high} = \min(\lceil i(\beta_{slow}) \rceil, d - 1)$ (nudged up by
#   0.001 when the two are equal), the ramp
#   $\rho_i = \operatorname{clamp}\big((i - \text{low}) / (\text{high} - \text{low}), 0, 1\big)$
#   and $\theta'_i = \theta_i (1 - \rho_i) + (\theta_i / s)\, \rho_i$.
#
# Interpolated positions also make attention flatter, so YaRN sharpens it with
# a temperature $t = 0.1\, \text{mscale} \ln s + 1$. DeepSeek folds it into the
# softmax scale, once for the queries and once for the keys:
#
# $$\text{scale} = \frac{t^2}{\sqrt{d_{qk}}}, \qquad t = 0.1\, \text{mscale} \ln s + 1 \quad (s > 1).$$
#
# This is not an option DeepSeek-V3 turns on for long prompts: its inference
# code switches YaRN on whenever `max_seq_len` (16,384 by default) exceeds
# `original_seq_len` (4,096), with $s = 40$, $\beta_{fast} = 32$,
# $\beta_{slow} = 1$, mscale 1. The released model always runs with it.
#
# Write `yarn_frequencies` (float32, from float64 arithmetic as in section 1)
# and `yarn_softmax_scale` (plain $1/\sqrt{d_{qk}}$ when $s = 1$).

# %% nbgrader={"grade": false, "grade_id": "yarn", "locked": false, "schema_version": 3, "solution": true, "task": false}
def yarn_frequencies(d, base=10000.0, factor=40.0, original_len=4096, beta_fast=32.0, beta_slow=1.0):
    """YaRN's (d/2,) float32 frequencies: theta_i for the fast pairs, theta_i / factor for the slow ones, a ramp between."""
    ### BEGIN SOLUTION
    def pair(turns):  # the pair index whose wavelength fits `turns` times into original_len
        return d * math.log(original_len / (turns * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(pair(beta_fast)), 0)
    high = min(math.ceil(pair(beta_slow)), d - 1)
    if low == high:
        high += 0.001
    i = torch.arange(d // 2, dtype=torch.float64)
    theta = base ** (-2 * i / d)
    ramp = ((i - low) / (high - low)).clamp(0, 1)  # 0: keep theta, 1: theta / factor
    return (theta * (1 - ramp) + theta / factor * ramp).float()
    ### END SOLUTION


def yarn_softmax_scale(d_qk, factor, mscale=1.0):
    """The softmax scale under YaRN: 1/sqrt(d_qk) times (0.1 * mscale * ln(factor) + 1) squared."""
    ### BEGIN SOLUTION
    if factor <= 1:
        return d_qk ** -0.5
    temperature = 0.1 * mscale * math.log(factor) + 1.0
    return d_qk ** -0.5 * temperature * temperature
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_yarn_frequencies", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
with exercise("yarn_frequencies"):
    got = yarn_frequencies(64)  # DeepSeek-V3: 64 RoPE dims, s = 40, L = 4096, beta 32 and 1
theta = answers.rope_frequencies(64)
want = answers.yarn_frequencies(64)
expect_close(got, want, "yarn_frequencies(64) (DeepSeek-V3's settings)",
             suspects={"the factor divides the fast pairs and spares the slow ones (the ramp is reversed)":
                       theta + theta / 40 - want,
                       "every pair is divided by the factor (that is position interpolation)": theta / 40,
                       "no pair changes": theta})
print("yarn_frequencies: correct; pairs kept:", int((got == theta).sum()), "of 32; interpolated:",
      int(torch.isclose(got, theta / 40).sum()))

### BEGIN HIDDEN TESTS
# Other widths, bases, factors and contexts; beta_fast equal to beta_slow (Kimi K2's config); a context so short
# that low and high meet (the ramp becomes a step); a base so small that the slow pairs reach past d/2; and
# factor 1, which changes nothing.
dr = draw(355)
for d, base, s, L, fast, slow in [(dr.choice([64, 128]), dr.choice([50000.0, 500000.0]), dr.choice([4.0, 8.0, 16.0]),
                                   dr.choice([2048, 8192]), 32.0, 1.0),
                                  (dr.choice([32, 64]), dr.choice([10000.0, 50000.0]), dr.choice([32.0, 64.0]),
                                   4096, (b := dr.choice([1.0, 2.0])), b),
                                  (16, 100.0, dr.choice([2.0, 4.0]), 1024, 32.0, 1.0),
                                  (dr.choice([16, 32]), 10000.0, 1.0, 4096, 32.0, 1.0),
                                  (dr.choice([32, 64]), 10000.0, dr.choice([20.0, 40.0]), 4096, 16.0, 2.0),
                                  (8, 10000.0, dr.choice([2.0, 3.0]), 64, 4.0, 1.0), (8, 10000.0, 4.0, 4, 1.0, 1.0)]:
    case = f"yarn_frequencies({d}, base={base:g}, factor={s:g}, original_len={L}, beta_fast={fast:g}, beta_slow={slow:g})"
    with exercise("yarn_frequencies", case=case):
        got = yarn_frequencies(d, base, s, L, fast, slow)
    expect_close(got, answers.yarn_frequencies(d, base, s, L, fast, slow), case, atol=1e-7,
                 suspects={"the factor is applied to every pair": answers.rope_frequencies(d, base) / s})
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "test_yarn_scale", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
with exercise("yarn_softmax_scale"):
    got = number(yarn_softmax_scale(192, 40), "yarn_softmax_scale(192, 40)")
want = answers.yarn_softmax_scale(192, 40)
assert abs(got - want) < 1e-9, (
    f"yarn_softmax_scale(192, 40) is {got:.6g}; DeepSeek-V3's released scale is {want:.6g} = 192 ** -0.5 * "
    f"(0.1 * ln 40 + 1) ** 2."
    + (" You applied the temperature once: DeepSeek squares it." if abs(got - 192 ** -0.5 * (0.1 * math.log(40) + 1)) < 1e-9
       else " Without YaRN it would be 192 ** -0.5." if abs(got - 192 ** -0.5) < 1e-9 else ""))
print(f"yarn_softmax_scale: correct; DeepSeek-V3 runs at {got:.4f}, {got / 192 ** -0.5:.3f}x the plain 1/sqrt(192)")

### BEGIN HIDDEN TESTS
# DeepSeek-V2's mscale of 0.707, Kimi K2's factor of 64, factor 1 (no extension) and other widths.
dr = draw(366)
for d_qk, s, mscale in [(192, 40.0, 0.707), (192, 64.0, 1.0), (dr.choice([64, 128]), 1.0, 1.0),
                        (dr.choice([64, 96, 128]), dr.choice([4.0, 8.0, 16.0]), 1.0),
                        (dr.choice([96, 192]), dr.choice([2.0, 4.0]), dr.choice([0.5, 0.8]))]:
    case = f"yarn_softmax_scale({d_qk}, {s:g}, mscale={mscale:g})"
    with exercise("yarn_softmax_scale", case=case):
        got = number(yarn_softmax_scale(d_qk, s, mscale), case)
    want = answers.yarn_softmax_scale(d_qk, s, mscale)
    expect(abs(got - want) < 1e-9 * want, f"{case} is wrong", f"you have {got:.6g}; expected {want:.6g}")
### END HIDDEN TESTS

# %% [markdown]
# **See it.** DeepSeek-V3's 32 RoPE pairs before and after YaRN (your
# `rope_frequencies` and `yarn_frequencies`), and how many
# turns each makes over the 4K pre-training context: the pairs that turn more
# than 32 times keep their frequency, those that never finish a turn are slowed
# 40×, and the ramp between is what YaRN adds to position interpolation.

# %%
from attnlab.models import MODELS

v3 = MODELS["DeepSeek-V3"]
y = v3.yarn
plain = rope_frequencies(v3.d_rope, v3.rope_theta)
extended = yarn_frequencies(v3.d_rope, v3.rope_theta, y.factor, y.original_len, y.beta_fast, y.beta_slow)
turns = y.original_len * plain / (2 * math.pi)
fig, ax = plt.subplots(figsize=(6.5, 3.2))
ax.semilogy(plain, "o-", ms=3, label=r"$\theta_i$ (trained)")
ax.semilogy(extended, "o-", ms=3, label=f"YaRN, s = {y.factor:g}")
ax.semilogy(plain / y.factor, ":", color="0.5", label="position interpolation")
for b, name in ((y.beta_fast, r"$\beta_{fast}$"), (y.beta_slow, r"$\beta_{slow}$")):
    i = int((turns > b).sum())  # the first pair with fewer turns than b
    ax.axvline(i - 0.5, color="0.7", linestyle="--")
    ax.text(i - 0.4, plain.max().item() / 3, f"{name} = {b:g} turns", fontsize=8)
ax.set(xlabel="pair i", ylabel="radians per position", title="DeepSeek-V3's RoPE frequencies")
ax.legend(fontsize=8, loc="lower left")
fig.tight_layout()
plt.show()
scale = yarn_softmax_scale(v3.d_head + v3.d_rope, y.factor, y.mscale_all_dim)  # queries and keys 128 + 64 wide
print(f"DeepSeek-V3's softmax scale (your yarn_softmax_scale): {scale:.4f} (plain 1/sqrt(192): {192 ** -0.5:.4f})")

# %% [markdown]
# ## Recap
#
# **What to remember**
# - RoPE turns pair $i$ at position $m$ by $m\theta_i$, $\theta_i = \text{base}^{-2i/d}$;
#   build the angles in float64.
# - Interleaved pairs (RoFormer, Meta Llama, DeepSeek) and rotate-half (Hugging
#   Face) are the same model up to a per-head permutation of $W_Q$'s and $W_K$'s
#   output rows.
# - $(R_m q)^\top(R_n k) = q^\top R_{n-m} k$: scores depend on distance only, and
#   you can check that numerically.
# - Cache rotated keys; rotate new tokens at `len(cache) + i`.
# - Without RoPE, $W^{UK}$ folds into the query side; with RoPE, $R_{n-m}$ sits
#   in the middle and nothing can be folded. Hence DeepSeek's decoupled RoPE.
# - Past the trained context, YaRN keeps the fast pairs, slows the slow ones by
#   the factor, ramps between, and scales the softmax by the temperature
#   squared: DeepSeek-V3 always runs with it (scale 0.1352, not 192 ** -0.5).
#
# **What breaks if you get this wrong**
# - Loading interleaved weights into rotate-half code (or the reverse) without
#   the permutation: no error, nonsense output.
# - Decode steps at position 0: the model forgets word order after the prompt.
# - float32 angles at long context: the rotation of far positions drifts by
#   thousandths of a radian.
#
# **Sources**
# - Su et al. 2021, *RoFormer: Enhanced Transformer with Rotary Position Embedding*, arXiv 2104.09864, §3.2, §3.4.
# - DeepSeek-AI 2024, *DeepSeek-V2*, arXiv 2405.04434, §2.1.3 (RoPE and low-rank KV compression).
# - Hugging Face `transformers`: `rotate_half` and the Llama weight-conversion script's permutation.
# - Llama Team 2024, *The Llama 3 Herd of Models*, arXiv 2407.21783, Table 3: RoPE base 500,000.
# - Chen et al. 2023, *Extending Context Window of Large Language Models via Positional Interpolation*, arXiv 2306.15595.
# - Peng et al. 2023, *YaRN: Efficient Context Window Extension of Large Language Models*, arXiv 2309.00071, §3.2–3.4.
# - DeepSeek-V3, `inference/model.py`: `precompute_freqs_cis` and the softmax scale's `mscale` (ModelArgs: rope_factor 40,
#   original_seq_len 4096, beta_fast 32, beta_slow 1, mscale 1, max_seq_len 16384).
#
# **Next:** [workbook 04](../04_mla/04_mla.ipynb) builds multi-head latent attention, with the decoupled
# RoPE that gets around what you just measured.
