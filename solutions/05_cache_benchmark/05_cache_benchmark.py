# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · The KV-cache benchmark
#
# Four workbooks of formulas say MLA's cache is 56.9× smaller than MHA's at
# DeepSeek-V3's size (71.1× against an MHA with DeepSeek-V3's own 192-dim
# keys, which the benchmark uses). This one checks that on real memory, and asks the
# question that matters in production: **is a decode step faster?** A decode
# step reads the whole cache to produce one token per sequence, so it is
# limited by memory bandwidth, and a smaller cache should mean a faster step.
# But only if the step does not undo the compression: an MLA that decompresses
# its whole cache at every step is *slower* than MHA, and the benchmark shows it.
#
# **You will build**
# 1. the cache bytes of each mechanism from a model's configuration;
# 2. the longest context that fits on a GPU beside the model's weights;
# 3. an honest timer: warm-up, synchronisation, median;
#
# and then run the course's benchmark, read its roofline, and explore real
# models' caches with the interactive explorer.
#
# **You need** workbooks 01, 02 and 04 (the cache formulas and the absorbed
# MLA step). **Time** about 45 minutes, plus under a minute for the benchmark on a CPU.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import json
import pathlib
import statistics
import time

import torch
from IPython.display import Image, display

import attnlab
from attnlab.checks import exercise, number
from attnlab.lesson import bench
from attnlab.lesson import cache as cache_math

torch.manual_seed(0)
device = attnlab.pick_device()
print(f"torch {torch.__version__}, running on {device}")

# %% [markdown]
# ## 1 · Bytes per token, for every mechanism
#
# Per token and over all $l$ layers (DeepSeek-V2, arXiv 2405.04434, Table 1):
#
# | mechanism | elements cached per token |
# | --- | --- |
# | MHA | $2\, n_h d_h\, l$ |
# | GQA | $2\, n_g d_h\, l$ |
# | MQA | $2\, d_h\, l$ (one K/V head) |
# | MLA | $(d_c + d_h^R)\, l$ (the latent and the shared RoPE key) |
#
# and bytes are elements times the bytes of the cache's dtype: 4 for fp32, 2
# for bf16 and fp16, 1 for fp8. `dtype` is one of `"fp32"`, `"bf16"`, `"fp8"`.

# %% nbgrader={"grade": false, "grade_id": "bytes_per_token", "locked": false, "schema_version": 3, "solution": true, "task": false}
def cache_bytes_per_token(mechanism, n_layers, n_heads, n_kv_heads, d_head, d_latent, d_rope, dtype="bf16"):
    """Bytes cached per token over all layers, for mechanism 'MHA', 'GQA', 'MQA' or 'MLA'."""
    ### BEGIN SOLUTION
    bytes_per_element = {"fp32": 4, "bf16": 2, "fp8": 1}[dtype]
    elements = {
        "MHA": 2 * n_heads * d_head,
        "GQA": 2 * n_kv_heads * d_head,
        "MQA": 2 * d_head,
        "MLA": d_latent + d_rope,
    }[mechanism]
    return elements * n_layers * bytes_per_element
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_bytes_per_token", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
v3 = dict(n_layers=61, n_heads=128, n_kv_heads=8, d_head=128, d_latent=512, d_rope=64)
with exercise("cache_bytes_per_token"):
    got = {m: number(cache_bytes_per_token(m, **v3), "cache_bytes_per_token") for m in ("MHA", "GQA", "MQA", "MLA")}
    fp32 = number(cache_bytes_per_token("MLA", **v3, dtype="fp32"), "cache_bytes_per_token")
want = {"MHA": 2 * 128 * 128 * 61 * 2, "GQA": 2 * 8 * 128 * 61 * 2, "MQA": 2 * 128 * 61 * 2, "MLA": 576 * 61 * 2}
for m in want:
    hint = ""
    if m == "MLA" and got[m] == 512 * 61 * 2:
        hint = " The 64-dim RoPE key is missing: every token caches it beside the latent."
    if got[m] == 2 * want[m]:
        hint = " That is twice the answer: bf16 takes 2 bytes per element, not 4."
    if m == "MQA" and got[m] == want["GQA"]:
        hint = " MQA has one K/V head, whatever n_kv_heads says."
    assert got[m] == want[m], f"{m} at DeepSeek-V3's size, bf16: {want[m]:,} bytes per token expected, you have {got[m]:,}.{hint}"
assert fp32 == 576 * 61 * 4, f"in fp32 an element takes 4 bytes: {576 * 61 * 4:,} expected, you have {fp32:,}"
print("cache_bytes_per_token: correct;", ", ".join(f"{m} {cache_math.format_bytes(b)}" for m, b in got.items()))

### BEGIN HIDDEN TESTS
# Sizes the visible test never uses: d_rope unrelated to d_head, d_latent unrelated to 4 * d_head, from one K/V
# head to as many as the heads, and every dtype. Each expected value is formed after the call it checks.
for l, h, kv, d, dc, dr in [(7, 12, 4, 96, 200, 40), (3, 6, 1, 10, 37, 3), (52, 40, 40, 80, 300, 24),
                            (1, 2, 2, 16, 1, 1)]:
    for dtype in ("fp32", "bf16", "fp8"):
        where = f"with {l} layers, {h} heads, {kv} K/V heads, d_head {d}, d_latent {dc}, d_rope {dr}, in {dtype}"
        with exercise("cache_bytes_per_token", case=f"cache_bytes_per_token {where}"):
            got = {m: number(cache_bytes_per_token(m, l, h, kv, d, dc, dr, dtype), "cache_bytes_per_token")
                   for m in ("MHA", "GQA", "MQA", "MLA")}
        size = {"fp32": 4, "bf16": 2, "fp8": 1}[dtype]
        elements = {"MHA": 2 * h * d * l, "GQA": 2 * kv * d * l, "MQA": 2 * d * l, "MLA": (dc + dr) * l}
        for m, n in elements.items():
            hint = ""
            if got[m] in (n, 2 * n, 4 * n):
                k = got[m] // n
                hint = f" That is {k} byte{'s' * (k > 1)} per element; {dtype} takes {size}."
            elif m == "MLA":
                hint = " MLA caches d_latent + d_rope numbers per layer: both are arguments, whatever d_head is."
            assert got[m] == n * size, f"{m} {where}: {n * size:,} bytes per token expected, you have {got[m]:,}.{hint}"
### END HIDDEN TESTS

# %% [markdown]
# ## 2 · How long a context fits?
#
# A GPU holds the model's weights and, in what is left, the caches of every
# sequence in the batch. With $w$ bytes per parameter of the weights
# (`weight_bytes_per_param`: 2 for bf16, the default; 1 for fp8, 4 for fp32),
# the longest context per sequence is
#
# $$T_{max} = \left\lfloor \frac{\text{GPU bytes} - w \cdot \text{parameters}}{\text{bytes per token} \cdot \text{batch}} \right\rfloor,$$
#
# and 0 when the weights alone do not fit. (A real server also needs room for
# activations and fragmentation, so treat this as an upper bound.) The names
# of GPUs are round figures: an "80 GB" H100 reports 81,559 MiB (79.6 GiB,
# $85.5 \cdot 10^9$ bytes) in `nvidia-smi`, a "24 GB" RTX 4090 24,564 MiB. The
# tests below use round decimal sizes such as $80 \cdot 10^9$ bytes; the cache
# explorer further down uses what the cards report.

# %% nbgrader={"grade": false, "grade_id": "longest_context", "locked": false, "schema_version": 3, "solution": true, "task": false}
def longest_context(gpu_bytes, n_params, bytes_per_token, batch=1, weight_bytes_per_param=2):
    """The most tokens per sequence whose cache fits beside the weights; 0 if the weights alone do not fit."""
    ### BEGIN SOLUTION
    free = gpu_bytes - n_params * weight_bytes_per_param
    return max(0, int(free // (bytes_per_token * batch)))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_longest_context", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
llama8 = 2 * 8 * 128 * 32 * 2  # Llama-3-8B's GQA cache: 131,072 bytes per token in bf16
with exercise("longest_context"):
    one = number(longest_context(80e9, 8.03e9, llama8), "longest_context")
    eight = number(longest_context(80e9, 8.03e9, llama8, batch=8), "longest_context")
    none = number(longest_context(24e9, 70.6e9, llama8), "longest_context")
assert isinstance(one, int), f"longest_context must return an int (a number of tokens), not {type(one).__name__}"
assert one == 487_823, (f"Llama-3-8B on an 80 GB GPU: (80e9 - 2 * 8.03e9) // 131,072 = 487,823 tokens; you have {one:,}"
                        + (" (did you forget the weights?)" if one == int(80e9 // llama8) else ""))
assert eight == 487_823 // 8, f"a batch of 8 shares the memory: {487_823 // 8:,} tokens each; you have {eight:,}"
assert none == 0, f"70.6 billion bf16 parameters do not fit in 24 GB: the answer is 0, not {none:,}"
print(f"longest_context: correct; Llama-3-8B fits {one:,} tokens beside its weights on an 80 GB GPU")

### BEGIN HIDDEN TESTS
# Every argument varies: the batch, and weights of 1 byte a parameter (fp8) or 4 (fp32), not only bf16's 2.
# Each expected value is formed after the call it checks.
for gpu, params, bpt, batch, wbytes in [(141e9, 70.6e9, 327_680, 1, 1),  # Llama-3-70B, fp8 weights, on an H200
                                        (80e9, 8.03e9, 131_072, 3, 4),  # fp32 weights, a batch of 3
                                        (40e9, 12e9, 100_000, 1, 4),  # fits at 2 bytes a parameter, not at 4
                                        (2_012_000, 1_000_000, 1_000, 4, 2),  # exactly 3 tokens per sequence left
                                        (16e9, 20e9, 1_000, 2, 1)]:  # even 1-byte weights do not fit
    case = (f"longest_context with {gpu:,.0f} bytes of GPU memory, {params:,.0f} parameters of "
            f"{wbytes} byte{'s' * (wbytes > 1)} each, {bpt:,} bytes per token and a batch of {batch}")
    with exercise("longest_context", case=case):
        got = number(longest_context(gpu, params, bpt, batch=batch, weight_bytes_per_param=wbytes), "longest_context")
    assert isinstance(got, int), f"{case}: longest_context must return an int (a number of tokens), not {got!r}"
    want = max(0, int((gpu - params * wbytes) // (bpt * batch)))
    hint = ""
    if wbytes != 2 and got == max(0, int((gpu - params * 2) // (bpt * batch))):
        hint = " That is the answer for 2 bytes a parameter: use weight_bytes_per_param, whatever its default."
    elif batch > 1 and got == max(0, int((gpu - params * wbytes) // bpt)):
        hint = f" That is the answer for one sequence: a batch of {batch} shares the memory."
    elif got < 0:
        hint = " When the weights alone do not fit, no token fits: the answer is 0."
    assert got == want, f"{case}: {want:,} tokens expected, you have {got:,}.{hint}"
### END HIDDEN TESTS

# %% [markdown]
# ## 3 · An honest timer
#
# Timing GPU code goes wrong in three classic ways, and the benchmark below
# avoids all three:
#
# 1. **No warm-up.** The first calls pay for kernel selection, allocator
#    growth and lazy initialisation. Run the function a few times untimed.
# 2. **No synchronisation.** CUDA launches work asynchronously: `fn()` returns
#    as soon as the kernels are queued. Reading the clock right after measures
#    the launch, microseconds, not the work. Call `sync()` (for CUDA,
#    `torch.cuda.synchronize`) before *each* reading of the clock.
# 3. **The mean.** One preempted run, a garbage collection, a clock-frequency
#    change, and the mean is off. Report the median, and the spread.
#
# Write `median_time`. It receives the clock and the synchronisation as
# arguments, so that the test can hand it a fake GPU whose work only finishes
# when you synchronise, and whose first call is slow. Return the median and
# the list of the `repeats` timed samples (the warm-up calls are not samples).
# `sync` may be `None` (on a CPU, nothing to wait for).

# %% nbgrader={"grade": false, "grade_id": "timer", "locked": false, "schema_version": 3, "solution": true, "task": false}
def median_time(fn, clock, sync=None, warmup=3, repeats=10):
    """(median seconds, list of the `repeats` timed samples) of fn(), after `warmup` untimed calls."""
    ### BEGIN SOLUTION
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if sync is not None:
            sync()
        start = clock()
        fn()
        if sync is not None:
            sync()
        samples.append(clock() - start)
    return statistics.median(samples), samples
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_timer", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
from attnlab.checks.suspects import FakeGPU
# A slow first call (compilation), then 5 ms steps, one of them preempted (50 ms).
gpu = FakeGPU([0.200] + [0.005] * 6 + [0.050] + [0.005] * 10)
with exercise("median_time"):
    med, samples = median_time(gpu.fn, gpu.clock, gpu.sync, warmup=2, repeats=7)
assert gpu.calls == 9, f"fn was called {gpu.calls} times; expected 2 warm-up calls and 7 timed ones"
assert len(samples) == 7, f"{len(samples)} samples returned; expected the 7 timed calls, not the warm-up ones"
assert max(samples) < 0.1, "a sample includes the slow first call: the warm-up calls must not be timed"
assert abs(med - 0.005001) < 1e-9, (
    f"the median is {med * 1e3:.3f} ms; expected 5.001 ms."
    + (" Your timings measure only the launch: call sync() before reading the clock." if med < 1e-3 else "")
    + (" That is the mean, which the preempted 50 ms call pulls up: use the median." if med > 0.0051 else ""))
med_cpu, _ = median_time(lambda: sum(range(1000)), time.perf_counter, None, 1, 3)
assert med_cpu > 0, "with sync=None, median_time must still time the function"
print("median_time: correct")

### BEGIN HIDDEN TESTS
class FakeCPU:
    """fn() works `durations[i]` seconds before it returns: the clock moves with the work, nothing to sync."""

    def __init__(self, durations):
        self.now, self.calls, self.durations = 0.0, 0, list(durations)

    def clock(self):
        return self.now

    def fn(self):
        self.now += self.durations[min(self.calls, len(self.durations) - 1)]
        self.calls += 1


def in_ms(seconds):
    return "[" + ", ".join(f"{s * 1e3:.4f}" for s in seconds) + "] ms"


# Even and odd sample counts, outliers above and below the middle, one sample, sync=None; a new device for each
# case, so that nothing may carry over from one call to the next. Expected values are formed after each call.
for what, warm, reps, steps, on_gpu in [
        ("4 samples (an even count), one of them slow", 1, 4, [1.0, 0.002, 0.009, 0.004, 0.080], True),
        ("6 samples (an even count), one of them far faster than the others", 2, 6,
         [0.5, 0.5, 0.006, 0.0001, 0.007, 0.005, 0.009, 0.004], True),
        ("5 samples with outliers on both sides", 0, 5, [0.0001, 0.003, 0.2, 0.004, 0.0035], True),
        ("a single sample after 3 warm-up calls", 3, 1, [0.4, 0.4, 0.4, 0.012], True),
        ("8 samples on a CPU (sync=None), with outliers on both sides", 2, 8,
         [0.3, 0.3, 0.02, 0.001, 0.03, 0.025, 0.5, 0.022, 0.028, 0.024], False)]:
    dev = FakeGPU(steps) if on_gpu else FakeCPU(steps)
    case = f"median_time with warmup={warm}, repeats={reps} and {what}"
    with exercise("median_time", case=case):
        got_med, got_samples = median_time(dev.fn, dev.clock, dev.sync if on_gpu else None, warmup=warm, repeats=reps)
        got_med = number(got_med, "the median median_time returns")
        got_samples = [number(t, "a sample median_time returns") for t in got_samples]
    assert dev.calls == warm + reps, (
        f"{case}: fn was called {dev.calls} times; expected {warm} warm-up calls and {reps} timed ones")
    assert len(got_samples) == reps, f"{case}: {len(got_samples)} samples returned; expected {reps}" + (
        ". Are samples kept from an earlier call? Each call must start a new list." if len(got_samples) > reps else "")
    want_samples = [steps[min(i, len(steps) - 1)] + (1e-6 if on_gpu else 0.0) for i in range(warm, warm + reps)]
    assert all(abs(a - b) < 1e-9 for a, b in zip(sorted(got_samples), sorted(want_samples))), (
        f"{case}: your samples are {in_ms(got_samples)}; expected {in_ms(want_samples)}")
    want, hint = statistics.median(want_samples), ""
    if reps % 2 == 0 and min(abs(got_med - statistics.median_low(want_samples)),
                             abs(got_med - statistics.median_high(want_samples))) < 1e-9:
        hint = " With an even number of samples the median is the mean of the two middle ones."
    elif abs(got_med - statistics.mean(want_samples)) < 1e-9:
        hint = " That is the mean, which an outlier pulls: use the median."
    assert abs(got_med - want) < 1e-9, (
        f"{case}: the median is {want * 1e3:.4f} ms; you have {got_med * 1e3:.4f} ms.{hint}")
### END HIDDEN TESTS

# %% [markdown]
# ## 4 · The benchmark
#
# `attnlab.lesson.bench` measures one attention layer of each mechanism. On a GPU it
# uses bf16, DeepSeek-V3's head dimensions (128 heads; query and key 128 + 64,
# value 128; latent 512), batches of 8 and 64 and contexts up to 32K tokens; on a CPU
# it scales everything down, one batch, so that it finishes in seconds, and says so.
# In one run it measures:
#
# 1. **cache bytes**: the tensors each mechanism keeps, counted by the CUDA
#    allocator (or by their storage on a CPU), against the formula;
# 2. **decode-step latency** against context, for MHA, GQA, MQA, MLA naive
#    (re-expanding every cached latent through $W^{UK}$ and $W^{UV}$ at every
#    step), MLA absorbed (workbook 04) and, on a GPU, MLA fused: workbook 07's
#    Triton kernel, the absorbed step with its scores, softmax and weighted sum
#    in one kernel (on a CPU Triton only runs in its interpreter, which is exact
#    but no timing: the run lists it as skipped);
# 3. **the roofline**: the device's copy bandwidth and matmul throughput,
#    measured in the same run. A step's roofline time is the larger of
#    (bytes it must move) / bandwidth and FLOPs / throughput; efficiency is
#    that time over the measured one;
# 4. **prefill against decode** for the two MLA forms.
#
# The same harness runs from a terminal, `python -m attnlab.lesson.bench --out DIR`,
# and writes `bench.json` (every figure, the device, the versions) and
# `bench.png`. While the notebook is graded it runs a quick version.

# %%
config = bench.choose(quick=attnlab.is_grading())
print(config.why)
result = bench.run(config)
print(bench.summary(result))

# %%
Image(bench.plot_png(result))

# %% [markdown]
# **Reading it.** Check the targets against what your machine printed:

# %%
print("\n".join(bench.targets(result)))

# %% [markdown]
# What to look for, and why:
#
# - **Cache bytes** match the formulas exactly: a cache is just tensors.
# - **MHA, GQA and MQA** are memory-bound on a GPU: their time grows with the
#   bytes of cache they read, so GQA with 16 query heads per K/V head is many
#   times faster than MHA, and MQA faster still.
# - **MLA naive** caches as little as MLA absorbed, but at every step it
#   multiplies the *whole* cache by $W^{UK}$ and $W^{UV}$: $2 T d_c n_h (d_{nope} + d_v)$
#   extra FLOPs per sequence, which makes it the slowest of all. A smaller cache
#   is not automatically faster.
# - **MLA absorbed** reads only 576 numbers per cached token but does
#   $n_h (2 d_c + d_h^R)$ multiply-adds on each: about 240 FLOPs per byte in
#   bf16. Which roof that hits depends on the GPU's ridge point (FLOP/s over
#   bytes/s). The H200 of section 5 copied 4.23 TB/s and multiplied 710 bf16
#   TFLOP/s in this harness, a ridge at 168 FLOPs per byte (its datasheet:
#   4.8 TB/s and 989 TFLOPS, 206): absorbed MLA at DeepSeek-V3's size is
#   compute-bound there. An H100 or H800 (datasheet: 3.35 TB/s, 989 TFLOPS,
#   a ridge at 295) puts it near the ridge, a little on the memory side:
#   bound by both. That is why FlashMLA reports
#   both up to 3000 GB/s (memory-bound settings) and up to 660 TFLOPS
#   (compute-bound ones) on an H800. Getting near
#   that roof takes one fused kernel; the benchmark's step is plain PyTorch
#   (section 5 shows what that costs).
# - **Prefill**: for a whole prompt, the naive form decompresses once and then
#   runs ordinary attention with 192-dim keys; the absorbed form works in the
#   576-dim latent space for every query-key pair, more FLOPs per score. So
#   DeepSeek decompresses for prefill and absorbs for decode.
# - **On a CPU** the roofline is rough, and the targets (50 % of the roofline
#   for MHA, GQA and MLA absorbed) are stated for the GPU sizes. A decode step
#   only reads its cache, while the copy that sets the bandwidth reads and
#   writes, and small caches fit in the CPU's own caches: MHA can show 100 %
#   or more. GQA and MQA count as compute-bound here, but their products have
#   only 16 or 32 rows (one query per head of a group), and such skinny
#   products run far below the big square matmul that sets the compute roof.
#   On the two-core CPU the course was built on (two runs of
#   `taskset -c 0,1 python -m attnlab.lesson.bench --device cpu`, 2026-12-01, each
#   step timed by `torch.utils.benchmark`), at 16K tokens MHA reached 73–85 % of
#   its roofline, MLA absorbed 42–48 %, just under the target, and GQA 28–38 %;
#   a step of MLA absorbed took 8.0–8.2 ms against MHA's 14.6–18.7 ms, and MLA
#   naive 239–265 ms. The matmul roof itself moved from 0.15 to 0.17 TFLOP/s
#   between the runs: on a CPU, read these as rough.
#   The lines above say, for your machine, which targets were met.

# %% [markdown]
# ## 5 · Measured on a GPU
#
# Results of `python -m attnlab.lesson.bench` on GPUs the course's maintainers ran it
# on are committed beside this notebook, in `results/<device>/`, and shown
# here, with their targets; the cell says so when there are none yet.

# %%
results_dir = pathlib.Path("results")
runs = sorted(results_dir.glob("*/bench.json")) if results_dir.exists() else []
for path in runs:
    gpu_result = json.loads(path.read_text())
    print(f"--- {path.parent.name} ---")
    print(bench.summary(gpu_result))
    print("\n".join(bench.targets(gpu_result)))
    if (path.parent / "bench.png").exists():
        display(Image(filename=str(path.parent / "bench.png")))
if not runs:
    print("No GPU results are committed yet: run `python -m attnlab.lesson.bench --out results/<your-gpu>` on one.")

# %% [markdown]
# **What the H200 showed** (`results/nvidia-h200/`: one NVIDIA H200, torch
# 2.11.0+cu130, measured on 2026-11-29 by `bash tests/gpu/check.sh`, whose log
# is beside the JSON). The roofline: copy 4.23 TB/s, bf16 matmul 710 TFLOP/s.
# At 32K tokens and a batch of 8, one layer's decode step took:
#
# | | ms | of its roofline |
# |---|---:|---:|
# | MHA | 4.94 | 103 % |
# | GQA, 8 K/V heads | 0.43 | 74 % |
# | MQA | 0.17 | 23 % |
# | MLA naive | 19.5 | 64 % |
# | MLA absorbed | 0.34 | 31 % |
#
# - The cache bytes the CUDA allocator counted equal the formulas exactly, at
#   every context (21,474,836,480 bytes for MHA at 32K; 301,989,888 for MLA).
# - MHA reads its 21.5 GB cache at 4.35 TB/s, a little faster than the copy
#   that sets the roof: a copy reads *and* writes. Over 100 % means "at the
#   memory roof".
# - MLA absorbed is 14.6× faster than MHA at 32K, and faster at every context; MLA
#   naive is 3.9× *slower* than MHA. Same cache, opposite results.
# - **MLA absorbed misses its 50 % target.** Its roofline is 0.103 ms of
#   matmul, but this step is a chain of PyTorch kernels: the scores (a product
#   with only 128 rows per sequence, far from the big square matmul that sets
#   the roof), a softmax that reads and writes all $8 \times 128 \times 32768$
#   scores, and the weighted sum, each one launched and finished before the
#   next, the scores written out and read back in between (67 MB each way).
#   Below 8K the time to launch those kernels from Python sets the pace: about
#   0.11 ms whatever the context. A kernel that fuses the three and never
#   writes the scores out, as FlashMLA does, is what gets near the roof. MQA's
#   23 % has the same cause: its step moves the same 67 MB of scores four
#   times around a cache of only 168 MB.
# - Prefill of 4,096 tokens: naive 141 ms, absorbed 180 ms; one decode step
#   at 4,096: naive 2.31 ms, absorbed 0.106 ms. Decompress for prefill, absorb
#   for decode.
# - This run predates the fused kernel and batch 64: workbook 07 builds the
#   kernel, and the next GPU run of `tests/gpu/check.sh` adds their rows here.

# %% [markdown]
# ## 6 · The cache explorer
#
# Pick a model, a GPU, a context and a batch; change any dimension. The plot
# shows the cache of all four mechanisms against context (dots at your
# context), the dashed line the memory left beside the weights; the table the
# bytes per token, the saving against MHA, and the longest context that fits.
# For models that do not ship with MLA, the MLA line uses DeepSeek-V2's rule
# $d_c = 4 d_h$, $d_h^R = d_h / 2$; for those that do (DeepSeek-V2 and V3,
# Kimi K2), which have no K/V heads, the GQA line assumes 8 of them, as
# Llama 3 has. The GPU sizes are what the cards report (81,559 MiB for an
# "80 GB" H100, 143,771 MiB for a "141 GB" H200).
#
# It opens on Llama-3-8B and a 24 GB card. Try a batch of 8; Llama-3-70B,
# whose bf16 weights (2 bytes × 70.6 billion = 141.2 GB) fit on no 24 or
# 80 GB card and leave a 141 GB H200 (150.8 GB) room for only about 29K
# tokens of GQA cache; DeepSeek-V3, whose 671 billion parameters fit on no
# single GPU; the fp8 cache dtype.

# %%
from attnlab.lesson.widgets import CacheExplorer

CacheExplorer(preset="Llama-3-8B", gpu="24 GB")

# %% [markdown]
# ## Recap
#
# **What to remember**
# - The cache formulas are exact: the bytes in memory are the formula's bytes.
# - Decode is memory-bound for MHA and GQA: latency follows cache bytes.
# - A smaller cache is not automatically faster: MLA that decompresses every
#   step is the slowest mechanism; MLA absorbed is fast because it never
#   decompresses, and at DeepSeek-V3's size it moves from the memory roof
#   towards the compute roof.
# - Prefill decompresses; decode absorbs.
# - Time GPU code with warm-up, synchronisation and the median.
#
# **Sources**
# - DeepSeek-AI 2024, *DeepSeek-V2*, arXiv 2405.04434, Table 1; *DeepSeek-V3*, arXiv 2412.19437.
# - DeepSeek's FlashMLA repository (README): up to 3000 GB/s memory-bound and up to 660 TFLOPS compute-bound on an H800 (bf16, paged cache, block size 64).
# - Williams, Waterman and Patterson 2009, *Roofline: an insightful visual performance model for multicore architectures*, CACM 52(4).
# - Llama 3 Herd, arXiv 2407.21783, Table 3; Kimi K2, arXiv 2507.20534.
#
# **Next:** [workbook 06](../06_beyond/06_beyond.ipynb) turns a trained model's grouped-query
# attention into latent attention after the fact, and asks how much of the cache that saves.
