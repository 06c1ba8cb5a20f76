"""The KV-cache benchmark: cache bytes, decode latency, roofline, prefill against decode.

    python -m attnlab.lesson.bench                 # picks CUDA (bf16, long contexts) or the CPU (float32, short)
    python -m attnlab.lesson.bench --quick         # a few seconds, for a smoke test
    python -m attnlab.lesson.bench --out results/  # writes bench.json and bench.png there

One attention layer of each mechanism, at DeepSeek-V3's head dimensions on a
GPU (128 heads, query/key 128 + 64, value 128, latent 512) and a scaled-down
version on a CPU:

- MHA: every head caches K (d_nope + d_rope) and V (d_v);
- GQA: 8 K/V heads on the GPU (16 query heads per group, kept on the CPU);
- MQA: one K/V head;
- MLA naive: caches c_KV and k_R, and re-expands the whole cache through W_UK
  and W_UV at every decode step;
- MLA absorbed: caches c_KV and k_R, scores and sums in the latent space.

For every decode step the roofline time is the larger of (bytes that must
move) / (copy bandwidth) and FLOPs / (matmul throughput), both measured in the
same run; efficiency is roofline time over measured time.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from attnlab.guard import guarded

MECHANISMS = ["MHA", "GQA", "MQA", "MLA naive", "MLA absorbed"]


@guarded
def median_time(fn, clock=time.perf_counter, sync=None, warmup: int = 3, repeats: int = 10):
    """Median and all samples of ``fn()``'s duration in seconds.

    Runs ``fn`` ``warmup`` times untimed (caches, allocator, lazy init), then
    ``repeats`` times, each between two readings of ``clock``. ``sync`` (e.g.
    ``torch.cuda.synchronize``) is called before each reading, because a GPU
    runs asynchronously: without it the clock measures the launch, not the work.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if sync:
            sync()
        start = clock()
        fn()
        if sync:
            sync()
        samples.append(clock() - start)
    return statistics.median(samples), samples


@dataclass
class BenchConfig:
    device: str
    dtype: str
    batch: int
    contexts: list[int]
    prefill_tokens: int
    n_heads: int = 128
    gqa_kv_heads: int = 8
    d_nope: int = 128
    d_rope: int = 64
    d_v: int = 128
    d_latent: int = 512
    warmup: int = 5
    repeats: int = 20
    why: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "fp32": torch.float32}[self.dtype]

    @guarded  # workbook 05's cache_bytes_per_token, per layer: not for graded code
    def elements_per_token(self, mechanism: str) -> int:
        """Cached elements per token for one layer."""
        kv = self.d_nope + self.d_rope + self.d_v  # one head's key and value
        return {
            "MHA": self.n_heads * kv,
            "GQA": self.gqa_kv_heads * kv,
            "MQA": kv,
            "MLA naive": self.d_latent + self.d_rope,
            "MLA absorbed": self.d_latent + self.d_rope,
        }[mechanism]


# The share of a GPU's memory that MHA's cache may take: MLA naive's re-expanded
# keys and values (0.8 of MHA's cache at the same context) must fit beside it
# in the allocator, with room to spare.
GPU_CACHE_SHARE = 0.4


def choose(device: str | None = None, quick: bool = False, gpu_memory: int | None = None) -> BenchConfig:
    """The benchmark's sizes for this machine, and why.

    On a GPU, contexts up to 32K tokens, fewer where the card's memory
    (``gpu_memory`` bytes, default: what torch reports) would not hold MHA's
    cache at 32K.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        if gpu_memory is None:
            if not torch.cuda.is_available():
                raise ValueError("device='cuda' was asked for, but torch sees no GPU")
            gpu_memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        cfg = BenchConfig("cuda", "bf16", batch=8, contexts=[1024, 2048, 4096, 8192, 16384, 32768],
                          prefill_tokens=4096, why="CUDA found: bf16, DeepSeek-V3's head dimensions, batch 8, "
                          "contexts up to 32K")
        mha_bytes = {T: cfg.elements_per_token("MHA") * T * cfg.batch * cfg.torch_dtype.itemsize for T in cfg.contexts}
        fits = [T for T in cfg.contexts if mha_bytes[T] <= GPU_CACHE_SHARE * gpu_memory]
        if len(fits) < len(cfg.contexts):
            cfg.contexts = fits or cfg.contexts[:1]
            cfg.why = (f"CUDA found: bf16, DeepSeek-V3's head dimensions, batch 8, contexts up to "
                       f"{max(cfg.contexts) // 1024}K, since this GPU's {gpu_memory / 2**30:.0f} GiB would not hold "
                       f"MHA's cache at 32K ({mha_bytes[32768] / 2**30:.0f} GiB) "
                       f"beside MLA naive's expanded keys and values")
    else:
        cfg = BenchConfig("cpu", "fp32", batch=2, contexts=[512, 1024, 2048, 4096, 8192, 16384], prefill_tokens=1024,
                          n_heads=32, gqa_kv_heads=2, d_nope=32, d_rope=16, d_v=32, d_latent=128, warmup=2, repeats=7,
                          why="no GPU: float32 on the CPU, dimensions a quarter of DeepSeek-V3's (32 heads, "
                          "query/key 32 + 16, value 32, latent 128), batch 2, contexts up to 16K, so that it "
                          "finishes in well under a minute")
    if quick:
        cfg.contexts, cfg.prefill_tokens, cfg.warmup, cfg.repeats = cfg.contexts[:2], 256, 1, 3
        cfg.why += " (quick run: two contexts, three repeats)"
    return cfg


# ------------------------------------------------------------------ layers


class _Layer:
    """One mechanism's cache at context T, and its decode (and prefill) step."""

    def __init__(self, mechanism: str, cfg: BenchConfig, T: int, gen: torch.Generator):
        self.m, self.cfg, self.T = mechanism, cfg, T
        dev, dt = cfg.device, cfg.torch_dtype
        B, H = cfg.batch, cfg.n_heads
        dk = cfg.d_nope + cfg.d_rope
        if gen.device.type != dev:
            raise ValueError(f"the generator is on {gen.device.type}, the benchmark on {dev}: "
                             f"make it with torch.Generator(device={dev!r})")

        def rand(*shape):
            # Drawn on the device, in its dtype: a CPU generator would spend minutes on
            # the 32K-token caches of a GPU run, and a float32 draw would double the memory.
            return torch.randn(*shape, generator=gen, device=dev, dtype=dt)

        before = _allocator_bytes() if dev == "cuda" else None
        if mechanism in ("MHA", "GQA", "MQA"):
            G = {"MHA": H, "GQA": cfg.gqa_kv_heads, "MQA": 1}[mechanism]
            self.G = G
            self.cache = [rand(B, G, T, dk), rand(B, G, T, cfg.d_v)]  # K, V
        else:
            # c_KV and k_R side by side in one (B, T, d_c + d_rope) tensor, as
            # DeepSeek's kernels keep them: one row of 576 numbers per token.
            self.cache = [rand(B, T, cfg.d_latent + cfg.d_rope)]
        # What the cache occupies: the CUDA allocator's count of the bytes its
        # tensors asked for (its blocks, rounded up to 512 B or 2 MiB, are
        # reported beside it), or the tensors' storage on a CPU.
        self.tensor_bytes = sum(t.untyped_storage().nbytes() for t in self.cache)
        if dev == "cuda":
            after = _allocator_bytes()
            self.cache_bytes, self.block_bytes = after[0] - before[0], after[1] - before[1]
        else:
            self.cache_bytes = self.block_bytes = self.tensor_bytes
        # The queries, with the 1/sqrt(d_nope + d_rope) score scale folded in as
        # a model folds it into W_Q: no extra pass over the scores at decode.
        self.q = rand(B, H, 1, dk) * (1.0 / math.sqrt(dk))
        if mechanism.startswith("MLA"):
            self.W_uk = rand(H, cfg.d_nope, cfg.d_latent) / math.sqrt(cfg.d_latent)
            self.W_uv = rand(H, cfg.d_v, cfg.d_latent) / math.sqrt(cfg.d_latent)

    def _latents(self):
        kv = self.cache[0]  # (B, T, d_c + d_rope)
        return kv, kv[..., :self.cfg.d_latent], kv[..., self.cfg.d_latent:]  # all, c_KV (B, T, d_c), k_R (B, T, d_rope)

    # The decode step: one new query per sequence against the whole cache.
    # Every product below is a plain batched matmul on the tensors as they lie
    # in memory (no hidden copies of the cache), and softmax reads the scores
    # in the cache's dtype (it accumulates in float32 inside).
    @guarded  # attention over a cache: not for graded code
    def decode(self):
        cfg, B, H, T = self.cfg, self.cfg.batch, self.cfg.n_heads, self.T
        if self.m in ("MHA", "GQA", "MQA"):
            K, V = self.cache
            q = self.q.view(B, self.G, H // self.G, -1)  # (B, G, heads per group, dk)
            p = torch.softmax(q @ K.transpose(-2, -1), dim=-1)  # (B, G, r, T)
            return p @ V  # (B, G, r, d_v)
        kv, c, k_r = self._latents()
        n, C = cfg.d_nope, cfg.d_latent
        q_c, q_r = self.q[:, :, 0, :n], self.q[:, :, 0, n:]  # (B, H, d_nope), (B, H, d_rope)
        if self.m == "MLA naive":  # re-expand every cached latent into per-head keys and values
            c_t = c.transpose(1, 2)  # (B, d_c, T)
            k_t = torch.bmm(self.W_uk.reshape(1, H * n, C).expand(B, -1, -1), c_t).view(B, H, n, T)  # keys, transposed
            v_t = torch.bmm(self.W_uv.reshape(1, H * cfg.d_v, C).expand(B, -1, -1), c_t).view(B, H, cfg.d_v, T)
            s = torch.baddbmm((q_c[:, :, None] @ k_t).view(B, H, T), q_r, k_r.transpose(1, 2))  # (B, H, T)
            p = torch.softmax(s, dim=-1)
            return (p[:, :, None] @ v_t.transpose(-2, -1)).view(B, H, cfg.d_v)
        q_lat = torch.einsum("bhn,hnc->bhc", q_c, self.W_uk)  # (B, H, d_c): W_UK absorbed into the query
        q_abs = torch.cat([q_lat, q_r], dim=-1)  # (B, H, d_c + d_rope): MQA with one 576-wide key per token
        p = torch.softmax(q_abs @ kv.transpose(1, 2), dim=-1)  # (B, H, T)
        return torch.einsum("bhc,hvc->bhv", p @ c, self.W_uv)  # (B, H, d_v): W_UV after the sum

    def decode_cost(self) -> tuple[int, int]:
        """(bytes that must move, FLOPs) of one decode step: the cache read once, plus weights."""
        cfg, B, H, T = self.cfg, self.cfg.batch, self.cfg.n_heads, self.T
        es = torch.empty((), dtype=cfg.torch_dtype).element_size()
        dk = cfg.d_nope + cfg.d_rope
        cache = self.tensor_bytes
        if self.m in ("MHA", "GQA", "MQA"):
            return cache, 2 * B * H * T * (dk + cfg.d_v)
        if self.m == "MLA naive":  # read the latents and weights, write and read back the expanded K and V
            expanded = B * H * T * (cfg.d_nope + cfg.d_v) * es
            weights = H * (cfg.d_nope + cfg.d_v) * cfg.d_latent * es
            flops = 2 * B * T * cfg.d_latent * H * (cfg.d_nope + cfg.d_v) + 2 * B * H * T * (dk + cfg.d_v)
            return cache + weights + 2 * expanded, flops
        weights = H * (cfg.d_nope + cfg.d_v) * cfg.d_latent * es
        return cache + weights, 2 * B * H * T * (cfg.d_latent + cfg.d_rope) + 2 * B * H * T * cfg.d_latent

    @guarded
    def prefill(self, heads_at_once: int = 8):
        """Causal attention with all T cached tokens as queries, naive or absorbed.

        Both forms run the same plain code (scores, masked softmax, weighted
        sum) and differ only in what they attend with: the naive form
        decompresses the latents once into 192-dim keys and 128-dim values per
        head; the absorbed form scores 576-dim latents and sums 512-dim ones.
        ``heads_at_once`` heads at a time: the (B, heads, T, T) scores of all
        128 heads at 4K tokens would take 34 GB in bf16.
        """
        cfg, B, H, T = self.cfg, self.cfg.batch, self.cfg.n_heads, self.T
        kv, c, k_r = self._latents()
        n = cfg.d_nope
        q = self.q.expand(B, H, T, -1)  # (B, H, T, dk): T queries (their values do not matter for timing)
        mask = torch.ones(T, T, dtype=torch.bool, device=kv.device).tril()  # (T, T): query t sees keys up to t
        out = []
        for h0 in range(0, H, heads_at_once):
            h = slice(h0, min(H, h0 + heads_at_once))
            q_h = q[:, h]  # (B, h, T, dk)
            if self.m == "MLA naive":  # decompress once, then attention with 192-dim keys
                k_c = torch.einsum("btc,hnc->bhtn", c, self.W_uk[h])  # (B, h, T, d_nope)
                v = torch.einsum("btc,hvc->bhtv", c, self.W_uv[h])  # (B, h, T, d_v)
                k = torch.cat([k_c, k_r[:, None].expand(-1, k_c.shape[1], -1, -1)], dim=-1)  # (B, h, T, dk)
                s = (q_h @ k.transpose(-2, -1)).masked_fill_(~mask, float("-inf"))  # (B, h, T, T)
                out.append(torch.softmax(s, dim=-1) @ v)  # (B, h, T, d_v)
            else:  # every query-key pair scored in the latent space
                q_lat = torch.einsum("bhtn,hnc->bhtc", q_h[..., :n], self.W_uk[h])  # (B, h, T, d_c)
                q_abs = torch.cat([q_lat, q_h[..., n:]], dim=-1)  # (B, h, T, d_c + d_rope)
                hh = q_abs.shape[1]
                s = (q_abs.reshape(B, hh * T, -1) @ kv.transpose(1, 2)).view(B, hh, T, T)  # heads folded into rows
                s.masked_fill_(~mask, float("-inf"))
                o = (torch.softmax(s, dim=-1).view(B, hh * T, T) @ c).view(B, hh, T, -1)  # (B, h, T, d_c)
                out.append(torch.einsum("bhtc,hvc->bhtv", o, self.W_uv[h]))  # (B, h, T, d_v)
        return torch.cat(out, dim=1)  # (B, H, T, d_v)


def _allocator_bytes() -> tuple[int, int]:
    """(bytes requested by live tensors, bytes in the allocator's blocks) on the current GPU."""
    stats = torch.cuda.memory_stats()
    blocks = stats["allocated_bytes.all.current"]
    return stats.get("requested_bytes.all.current", blocks), blocks


# ------------------------------------------------------------------ the run


def _sync_for(device: str):
    return torch.cuda.synchronize if device == "cuda" else None


def roofline(cfg: BenchConfig) -> dict:
    """Copy bandwidth (bytes/s) and matmul throughput (FLOP/s) of this device, measured now."""
    dev, dt, sync = cfg.device, cfg.torch_dtype, _sync_for(cfg.device)
    n_bytes = (1 << 30) if dev == "cuda" else (128 << 20)
    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=dev).fill_(1)
    dst = torch.empty_like(src)
    t_copy, _ = _measure(cfg, lambda: dst.copy_(src), sync, warmup=3, repeats=10)
    N = 16384 if dev == "cuda" else 1024  # 2 x 16384^3 = 8.8 TFLOP: about 10 ms on a big GPU, near its peak
    a = torch.randn(N, N, device=dev).to(dt)
    b = torch.randn(N, N, device=dev).to(dt)
    t_mm, _ = _measure(cfg, lambda: a @ b, sync, warmup=3, repeats=10)
    del src, dst, a, b
    return {"copy_bytes_per_s": 2 * n_bytes / t_copy, "matmul_flops_per_s": 2 * N**3 / t_mm,
            "copy_buffer_bytes": n_bytes, "matmul_n": N}


class _Progress:
    """A one-line progress bar on stdout (stderr would zero a notebook cell under nbgrader)."""

    def __init__(self, total: int, stream=sys.stdout):
        self.total, self.done, self.stream, self.start = total, 0, stream, time.perf_counter()

    def step(self, label: str):
        self.done += 1
        bar = "#" * (20 * self.done // self.total)
        self.stream.write(f"\r[{bar:<20}] {self.done}/{self.total} {label:<32} {time.perf_counter() - self.start:5.1f} s")
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def _repeated(fn, sync, at_least_s: float):
    """``fn`` called k times in a row, and k, chosen so that one call of the
    result lasts ``at_least_s``: a GPU decode step of a few microseconds would
    otherwise time the launch overhead and the synchronisation, not the step
    (a model launches its steps back to back too)."""
    sync()
    start = time.perf_counter()
    calls = 0
    while time.perf_counter() - start < at_least_s or calls < 3:  # also warms the clocks up
        fn()
        calls += 1
        sync()
    k = max(1, math.ceil(at_least_s * calls / (time.perf_counter() - start)))
    if k == 1:
        return fn, 1

    def many():
        for _ in range(k):
            fn()
    return many, k


def _measure(cfg: BenchConfig, fn, sync, warmup: int, repeats: int) -> tuple[float, list[float]]:
    """Median and samples of one call of ``fn``, in seconds (see ``_repeated`` for a GPU)."""
    k = 1
    if cfg.device == "cuda":
        fn, k = _repeated(fn, sync, at_least_s=2e-3)
    med, samples = median_time(fn, sync=sync, warmup=warmup, repeats=repeats)
    return med / k, [x / k for x in samples]


def _out_of_memory():
    return (torch.cuda.OutOfMemoryError,) if torch.cuda.is_available() else ()


def run(cfg: BenchConfig, progress: bool = True) -> dict:
    """Measure everything; return a JSON-ready dict.

    A size that does not fit the GPU's memory is listed under "skipped" and
    the run goes on with the next one.
    """
    gen = torch.Generator(device=cfg.device).manual_seed(0)
    sync = _sync_for(cfg.device)
    result = {
        "device": torch.cuda.get_device_name() if cfg.device == "cuda" else platform.processor() or platform.machine(),
        "device_kind": cfg.device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "config": asdict(cfg),
        "roofline": roofline(cfg),
        "cache": [],
        "decode": [],
        "prefill": [],
        "skipped": [],
    }
    bw, peak = result["roofline"]["copy_bytes_per_s"], result["roofline"]["matmul_flops_per_s"]
    bar = _Progress(len(cfg.contexts) * len(MECHANISMS) + 4) if progress else None
    es = torch.empty((), dtype=cfg.torch_dtype).element_size()

    def skip(what: str, mech: str, T: int, err: Exception):
        result["skipped"].append({"what": what, "mechanism": mech, "context": T,
                                  "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"})
        if cfg.device == "cuda":
            torch.cuda.empty_cache()

    with torch.inference_mode():
        for T in cfg.contexts:
            for mech in MECHANISMS:
                layer = None
                try:
                    layer = _Layer(mech, cfg, T, gen)
                    formula = cfg.elements_per_token(mech) * T * cfg.batch * es
                    result["cache"].append({"mechanism": mech, "context": T, "measured_bytes": layer.cache_bytes,
                                            "formula_bytes": formula, "allocator_block_bytes": layer.block_bytes})
                    med, samples = _measure(cfg, layer.decode, sync, cfg.warmup, cfg.repeats)
                    moved, flops = layer.decode_cost()
                    ideal = max(moved / bw, flops / peak)
                    q1, _, q3 = statistics.quantiles(samples, n=4) if len(samples) > 1 else (med, med, med)
                    result["decode"].append({"mechanism": mech, "context": T, "median_s": med, "iqr_s": q3 - q1,
                                             "bytes": moved, "flops": flops, "roofline_s": ideal,
                                             "bound": "memory" if moved / bw >= flops / peak else "compute",
                                             "efficiency": ideal / med})
                except _out_of_memory() as err:
                    skip("decode", mech, T, err)
                del layer
                if bar:
                    bar.step(f"{mech} decode at {T}")
            if cfg.device == "cuda":
                torch.cuda.empty_cache()
        P = cfg.prefill_tokens
        for mech in ("MLA naive", "MLA absorbed"):
            layer, steps = None, [f"{mech} prefill of {P}", f"{mech} decode at {P}"]
            try:
                layer = _Layer(mech, cfg, P, gen)
                t_pre, _ = _measure(cfg, layer.prefill, sync, warmup=1, repeats=max(3, cfg.repeats // 4))
                if bar:
                    bar.step(steps.pop(0))
                t_dec, _ = _measure(cfg, layer.decode, sync, cfg.warmup, cfg.repeats)
                result["prefill"].append({"mechanism": mech, "tokens": P, "prefill_s": t_pre, "decode_step_s": t_dec})
            except _out_of_memory() as err:
                skip("prefill", mech, P, err)
            del layer
            for label in steps if bar else ():
                bar.step(label)
    return result


def summary(result: dict) -> str:
    """The figures in a few lines of text."""
    r = result["roofline"]
    lines = [f"{result['device']} ({result['device_kind']}), torch {result['torch']}: {result['config']['why']}",
             f"roofline: copy {r['copy_bytes_per_s'] / 1e9:.1f} GB/s, matmul {r['matmul_flops_per_s'] / 1e12:.2f} TFLOP/s"]
    exact = all(c["measured_bytes"] == c["formula_bytes"] for c in result["cache"])
    lines.append(f"cache bytes: measured {'equal' if exact else 'NOT equal'} to the formula for every mechanism and context")
    for s in result.get("skipped", []):
        lines.append(f"  skipped: {s['mechanism']} {s['what']} at {s['context']} ({s['error']})")
    if not result["decode"]:
        return "\n".join(lines)
    T = max(d["context"] for d in result["decode"])
    for d in (d for d in result["decode"] if d["context"] == T):
        lines.append(f"  decode at {T:>6}: {d['mechanism']:<13} {d['median_s'] * 1e3:8.3f} ms, "
                     f"{d['efficiency']:5.0%} of roofline ({d['bound']}-bound)")
    for p in result["prefill"]:
        lines.append(f"  {p['mechanism']:<13} prefill of {p['tokens']}: {p['prefill_s'] * 1e3:8.2f} ms; "
                     f"decode step at {p['tokens']}: {p['decode_step_s'] * 1e3:7.3f} ms")
    return "\n".join(lines)


def targets(result: dict) -> list[str]:
    """The benchmark's targets, each a line saying whether this run met it."""
    by = {(d["mechanism"], d["context"]): d for d in result["decode"]}
    contexts = sorted({d["context"] for d in result["decode"]})
    if not contexts:
        return ["no decode step was measured"]
    T = contexts[-1]
    lines = []
    for mech in ("MHA", "GQA", "MLA absorbed"):
        d = by.get((mech, T))
        verdict = (f"{d['efficiency']:.0%} of its roofline -> {'target met' if d['efficiency'] >= 0.5 else 'target MISSED'}"
                   if d else "not measured (skipped) -> target MISSED")
        lines.append(f"{mech:<13} at {T}: {verdict} (50 %)")
    pairs = [(by[("MLA absorbed", t)], by[("MHA", t)]) for t in contexts
             if t >= 4096 and ("MLA absorbed", t) in by and ("MHA", t) in by]
    lines.append("MLA absorbed faster than MHA at every context from 4K: "
                 + (str(all(a["median_s"] < m["median_s"] for a, m in pairs)) if pairs
                    else "no context that long in this run"))
    naive, mha = by.get(("MLA naive", T)), by.get(("MHA", T))
    lines.append(f"MLA naive slower than MHA at {T}: "
                 + (str(naive["median_s"] > mha["median_s"]) if naive and mha else "not measured"))
    return lines


def plot(result: dict):
    """A matplotlib Figure: decode latency and roofline efficiency against context, and prefill vs decode."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for i, mech in enumerate(MECHANISMS):
        rows = [d for d in result["decode"] if d["mechanism"] == mech]
        ctx = [d["context"] for d in rows]
        ax1.plot(ctx, [d["median_s"] * 1e3 for d in rows], "o-", color=f"C{i}", label=mech)
        ax2.plot(ctx, [d["efficiency"] * 100 for d in rows], "o-", color=f"C{i}", label=mech)
    contexts = result["config"]["contexts"]
    labels = [f"{c // 1024}K" if c >= 1024 else str(c) for c in contexts]
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks(contexts, labels)
        ax.minorticks_off()
        ax.set_xlabel("context (tokens)")
    ax1.set(yscale="log", ylabel="ms per decode step", title="decode step, one layer")
    ax2.set(ylabel="% of roofline", title="efficiency against the roofline")
    ax2.axhline(50, color="0.6", linestyle=":")
    ax1.legend(fontsize=7)
    names = [p["mechanism"] for p in result["prefill"]]
    x = range(len(names))
    ax3.bar([i - 0.2 for i in x], [p["prefill_s"] * 1e3 for p in result["prefill"]], 0.4, label="prefill")
    ax3.bar([i + 0.2 for i in x], [p["decode_step_s"] * 1e3 for p in result["prefill"]], 0.4, label="one decode step")
    ax3.set(xticks=list(x), xticklabels=names, yscale="log", ylabel="ms",
            title=f"MLA at {result['prefill'][0]['tokens']} tokens" if result["prefill"] else "")
    tallest = max([p["prefill_s"] * 1e3 for p in result["prefill"]], default=1.0)
    ax3.set_ylim(top=tallest * 30)  # room above the bars for the legend
    ax3.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{result['device']} · {result['config']['dtype']} · batch {result['config']['batch']}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_png(result: dict, dpi: int = 100) -> bytes:
    """The plot as PNG bytes (for IPython.display.Image, or a file)."""
    import io

    buf = io.BytesIO()
    plot(result).savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def write(result: dict, out: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    js, png = out / "bench.json", out / "bench.png"
    js.write_text(json.dumps(result, indent=1) + "\n")
    png.write_bytes(plot_png(result, dpi=110))
    return js, png


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="The KV-cache benchmark of the efficient-attention course.")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if there is a GPU")
    parser.add_argument("--quick", action="store_true", help="two contexts, three repeats")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench-results"), help="folder for bench.json and bench.png")
    args = parser.parse_args(argv)
    cfg = choose(args.device, args.quick)
    print(cfg.why, flush=True)
    result = run(cfg)
    js, png = write(result, args.out)
    print(summary(result))
    print(f"wrote {js} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
