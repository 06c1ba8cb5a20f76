"""The KV-cache benchmark: cache bytes, decode latency, roofline, prefill against decode.

    python -m attnlab.lesson.bench                 # picks CUDA (bf16, long contexts) or the CPU (float32, short)
    python -m attnlab.lesson.bench --quick         # a few seconds, for a smoke test
    python -m attnlab.lesson.bench --out results/  # writes bench.json and bench.png there
    python -m attnlab.lesson.bench --device cpu --time-interpreter  # the fused kernel too, interpreted (slow)

One attention layer of each mechanism, at DeepSeek-V3's head dimensions on a
GPU (128 heads, query/key 128 + 64, value 128, latent 512) and a scaled-down
version on a CPU:

- MHA: every head caches K (d_nope + d_rope) and V (d_v);
- GQA: 8 K/V heads on the GPU (16 query heads per group, kept on the CPU);
- MQA: one K/V head;
- MLA naive: caches c_KV and k_R, and re-expands the whole cache through W_UK
  and W_UV at every decode step;
- MLA absorbed: caches c_KV and k_R, scores and sums in the latent space;
- MLA fused (Triton): MLA absorbed with its scores, softmax and sum in one
  kernel (workbook 07's paged_mla_decode) over the same cache in 64-token
  pages. Timed on a GPU; on the CPU Triton's interpreter runs it correctly but
  far too slowly to time, so the CPU run lists it as skipped.

On a GPU the decode steps run at batch 8 and batch 64; a size whose tensors
would not fit the GPU's memory is skipped with the bytes it needed.

For every decode step the roofline time is the larger of (bytes that must
move) / (copy bandwidth) and FLOPs / (matmul throughput), both measured in the
same run; efficiency is roofline time over measured time.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import platform
import statistics
import sys
from dataclasses import asdict, dataclass, field

import torch
import torch.utils.benchmark as benchmark
from tqdm import tqdm

from attnlab.guard import guarded
from attnlab.lesson import cache
from attnlab.lesson.bench_layers import FUSED, MECHANISMS, Layer, fused_skip_reason
from attnlab.lesson.bench_report import plot, plot_png, summary, targets, write  # noqa: F401  (the run's report)
from attnlab.models import MODELS



V3 = MODELS["DeepSeek-V3"]  # the head dimensions the benchmark measures at on a GPU


@dataclass
class BenchConfig:
    device: str
    dtype: str
    batch: int
    contexts: list[int]
    prefill_tokens: int
    n_heads: int = V3.n_heads
    gqa_kv_heads: int = 8  # Llama 3's count: DeepSeek-V3 has no K/V heads of its own
    d_nope: int = V3.d_head
    d_rope: int = V3.d_rope
    d_v: int = V3.d_v
    d_latent: int = V3.d_latent
    warmup: int = 5
    max_run_s: float = 2.0  # the most time spent timing one step (torch.utils.benchmark's adaptive_autorange)
    why: str = ""
    batches: list[int] = field(default_factory=list)  # the decode sweep's batches; [batch] when empty
    gpu_memory: int = 0  # bytes of the GPU's memory (0 on the CPU): what a size must fit in
    time_interpreter: bool = False  # on the CPU, time the fused kernel through Triton's interpreter (slow)

    def __post_init__(self):
        self.batches = list(self.batches) or [self.batch]
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batches):
            raise ValueError(f"batches must be positive ints, got {self.batches!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "fp32": torch.float32}[self.dtype]

    @guarded  # workbook 05's cache_bytes_per_token, per layer: not for graded code
    def elements_per_token(self, mechanism: str) -> int:
        """Cached elements per token for one layer."""
        return cache.mechanism_elements_per_token(mechanism.split()[0], 1, self.n_heads, self.gqa_kv_heads,
                                                  self.d_nope + self.d_rope, self.d_latent, self.d_rope, d_v=self.d_v)


# The share of a GPU's memory that MHA's cache may take: MLA naive's re-expanded
# keys and values (0.8 of MHA's cache at the same context) must fit beside it
# in the allocator, with room to spare.
GPU_CACHE_SHARE = 0.4
# The share that one step's tensors (cache, expanded keys and values, scores) may
# take at any batch: sizes past it are skipped before anything is allocated.
GPU_STEP_SHARE = 0.8
GPU_BATCHES = [8, 64]  # the two decode batches: one user's few sequences, and a serving batch


def choose(device: str | None = None, quick: bool = False, gpu_memory: int | None = None) -> BenchConfig:
    """The benchmark's sizes for this machine, and why.

    On a GPU, batches 8 and 64 and contexts up to 32K tokens, fewer contexts
    where the card's memory (``gpu_memory`` bytes, default: what torch reports)
    would not hold MHA's cache at 32K and batch 8; at batch 64 the sizes that
    would not fit are skipped by the run.
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
                          prefill_tokens=4096, batches=GPU_BATCHES, gpu_memory=gpu_memory,
                          why="CUDA found: bf16, DeepSeek-V3's head dimensions, batches 8 and 64 (prefill at 8), "
                          "contexts up to 32K")
        mha_bytes = {T: cfg.elements_per_token("MHA") * T * cfg.batch * cfg.torch_dtype.itemsize for T in cfg.contexts}
        fits = [T for T in cfg.contexts if mha_bytes[T] <= GPU_CACHE_SHARE * gpu_memory]
        if len(fits) < len(cfg.contexts):
            cfg.contexts = fits or cfg.contexts[:1]
            cfg.why = (f"CUDA found: bf16, DeepSeek-V3's head dimensions, batches 8 and 64 (prefill at 8), "
                       f"contexts up to {max(cfg.contexts) // 1024}K, since this GPU's {gpu_memory / 2**30:.0f} GiB "
                       f"would not hold "
                       f"MHA's cache at 32K and batch 8 ({mha_bytes[32768] / 2**30:.0f} GiB) "
                       f"beside MLA naive's expanded keys and values")
    else:
        cfg = BenchConfig("cpu", "fp32", batch=2, contexts=[512, 1024, 2048, 4096, 8192, 16384], prefill_tokens=1024,
                          n_heads=32, gqa_kv_heads=2, d_nope=32, d_rope=16, d_v=32, d_latent=128, warmup=2, max_run_s=0.5,
                          why="no GPU: float32 on the CPU, dimensions a quarter of DeepSeek-V3's (32 heads, "
                          "query/key 32 + 16, value 32, latent 128), batch 2, contexts up to 16K, so that it "
                          "finishes in well under a minute")
    if quick:
        cfg.contexts, cfg.prefill_tokens, cfg.warmup, cfg.max_run_s = cfg.contexts[:2], 256, 1, 0.1
        cfg.why += " (quick run: two contexts, 0.1 s of timing per step)"
    return cfg


# ------------------------------------------------------------------ the run


def roofline(cfg: BenchConfig) -> dict:
    """Copy bandwidth (bytes/s) and matmul throughput (FLOP/s) of this device, measured now."""
    dev, dt = cfg.device, cfg.torch_dtype
    n_bytes = (1 << 30) if dev == "cuda" else (128 << 20)
    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=dev).fill_(1)
    dst = torch.empty_like(src)
    t_copy, _ = measure(lambda: dst.copy_(src), warmup=3, max_run_s=cfg.max_run_s)
    N = 16384 if dev == "cuda" else 1024  # 2 x 16384^3 = 8.8 TFLOP: about 10 ms on a big GPU, near its peak
    a = torch.randn(N, N, device=dev).to(dt)
    b = torch.randn(N, N, device=dev).to(dt)
    t_mm, _ = measure(lambda: a @ b, warmup=3, max_run_s=cfg.max_run_s)
    del src, dst, a, b
    return {"copy_bytes_per_s": 2 * n_bytes / t_copy, "matmul_flops_per_s": 2 * N**3 / t_mm,
            "copy_buffer_bytes": n_bytes, "matmul_n": N}


def measure(fn, warmup: int, max_run_s: float) -> tuple[float, list[float]]:
    """Median and samples of one call of ``fn``, in seconds, timed by ``torch.utils.benchmark``.

    What workbook 05's ``median_time`` does (warm-up calls, a synchronised GPU
    before each reading of the clock, the median), and one thing more: each
    sample times a block of calls back to back, as many as make the block long
    enough, since a GPU decode step of a few microseconds would otherwise time
    the launch and the synchronisation, not the step (a model launches its steps
    back to back too). Samples are taken until their spread is within 10 % of the
    median, or ``max_run_s`` is spent."""
    for _ in range(warmup):
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.adaptive_autorange(threshold=0.1, max_run_time=max_run_s)
    return m.median, list(m.times)


def _out_of_memory():
    return (torch.cuda.OutOfMemoryError,) if torch.cuda.is_available() else ()


def _environment(cfg: BenchConfig) -> dict:
    return {
        "device": torch.cuda.get_device_name() if cfg.device == "cuda" else platform.processor() or platform.machine(),
        "device_kind": cfg.device, "torch": torch.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "config": asdict(cfg),
    }


def step_bytes(cfg: BenchConfig, mech: str, T: int) -> int:
    """What one decode step's tensors take at ``cfg.batch``: the cache, MLA naive's
    expanded keys and values, and the (B, H, T) scores and probabilities."""
    B, H, es = cfg.batch, cfg.n_heads, cfg.torch_dtype.itemsize
    cache = cfg.elements_per_token(mech) * T * B * es
    expanded = B * H * T * (cfg.d_nope + cfg.d_v) * es if mech == "MLA naive" else 0
    return cache + expanded + 2 * B * H * T * es


def _too_big(cfg: BenchConfig, mech: str, T: int) -> str | None:
    """Why a size would not fit the GPU, or None. Checked before allocating: at batch 64,
    MHA's cache at 32K is 160 GiB, and a near miss would fill the allocator."""
    if cfg.device != "cuda" or not cfg.gpu_memory:
        return None
    need = step_bytes(cfg, mech, T)
    if need <= GPU_STEP_SHARE * cfg.gpu_memory:
        return None
    return (f"too large: its tensors would take {need / 2**30:.0f} GiB, over {GPU_STEP_SHARE:.0%} "
            f"of the GPU's {cfg.gpu_memory / 2**30:.0f} GiB")


def _error(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"


def _skip(cfg: BenchConfig, result: dict, what: str, mech: str, T: int | None, B: int | None, why: str) -> None:
    """A size left out, and why (context and batch None: all of them)."""
    result["skipped"].append({"what": what, "mechanism": mech, "context": T, "batch": B, "error": why})
    if cfg.device == "cuda":
        torch.cuda.empty_cache()


def _decode(cfg: BenchConfig, mech: str, T: int, gen, result: dict) -> None:
    """One mechanism at context T: its cache against the formula, its decode step against the roofline."""
    bw, peak = result["roofline"]["copy_bytes_per_s"], result["roofline"]["matmul_flops_per_s"]
    layer = Layer(mech, cfg, T, gen)
    formula = cfg.elements_per_token(mech) * T * cfg.batch * cfg.torch_dtype.itemsize
    result["cache"].append({"mechanism": mech, "context": T, "batch": cfg.batch, "measured_bytes": layer.cache_bytes,
                            "formula_bytes": formula, "allocator_block_bytes": layer.block_bytes})
    med, samples = measure(layer.decode, cfg.warmup, cfg.max_run_s)
    moved, flops = layer.decode_cost()
    ideal = max(moved / bw, flops / peak)
    q1, _, q3 = statistics.quantiles(samples, n=4) if len(samples) > 1 else (med, med, med)
    row = {"mechanism": mech, "context": T, "batch": cfg.batch, "median_s": med, "iqr_s": q3 - q1,
           "bytes": moved, "flops": flops, "roofline_s": ideal,
           "bound": "memory" if moved / bw >= flops / peak else "compute", "efficiency": ideal / med}
    if mech == FUSED:
        row["splits"] = layer.splits  # the kernel's splits of each sequence's context (flash-decoding)
        row["tiles"] = layer.kernels.tiles()  # what Triton's autotuner picked for this shape
    result["decode"].append(row)


def _decodes(cfg: BenchConfig, mechs: list[str], gen, result: dict, bar) -> None:
    """Every batch, context and mechanism; a size that does not fit is skipped and the sweep goes on."""
    for B in cfg.batches:
        cfg_b = dataclasses.replace(cfg, batch=B)
        at = f", batch {B}" if len(cfg.batches) > 1 else ""
        for T in cfg.contexts:
            for mech in mechs:
                bar.set_description(f"{mech} decode at {T}{at}")
                why = _too_big(cfg_b, mech, T)
                try:
                    if why:
                        _skip(cfg, result, "decode", mech, T, B, why)
                    else:
                        _decode(cfg_b, mech, T, gen, result)
                except _out_of_memory() as err:
                    _skip(cfg, result, "decode", mech, T, B, _error(err))
                except Exception as err:  # noqa: BLE001
                    # Triton compiling on a machine without a C compiler, or for a GPU it does not
                    # know, should not cost the five PyTorch mechanisms their results.
                    if mech != FUSED:
                        raise
                    _skip(cfg, result, "decode", mech, T, B, "the kernel failed: " + _error(err))
                bar.update()
            if cfg.device == "cuda":
                torch.cuda.empty_cache()


def _prefill(cfg: BenchConfig, mech: str, gen, result: dict, bar) -> None:
    """One MLA form: a prefill of ``cfg.prefill_tokens``, then one decode step at that context."""
    P = cfg.prefill_tokens
    layer = Layer(mech, cfg, P, gen)
    t_pre, _ = measure(layer.prefill, warmup=1, max_run_s=cfg.max_run_s)
    bar.update()
    t_dec, _ = measure(layer.decode, cfg.warmup, cfg.max_run_s)
    bar.update()
    result["prefill"].append({"mechanism": mech, "tokens": P, "prefill_s": t_pre, "decode_step_s": t_dec})


def run(cfg: BenchConfig, progress: bool = True) -> dict:
    """Measure everything; return a JSON-ready dict.

    A size that does not fit the GPU's memory, and the fused kernel where it is
    not timed (the CPU), are listed under "skipped" and the run goes on. The
    progress bar goes to stdout: under nbgrader, anything on stderr would cost
    a notebook cell its points.
    """
    gen = torch.Generator(device=cfg.device).manual_seed(0)
    result = {**_environment(cfg), "roofline": roofline(cfg), "cache": [], "decode": [], "prefill": [], "skipped": []}
    mechs = list(MECHANISMS)
    why = fused_skip_reason(cfg)
    if why:
        mechs.remove(FUSED)
        _skip(cfg, result, "decode", FUSED, None, None, why)
    steps = len(cfg.batches) * len(cfg.contexts) * len(mechs) + 4
    with torch.inference_mode(), tqdm(total=steps, file=sys.stdout, disable=not progress, unit="step",
                                      bar_format="{l_bar}{bar:20}| {n}/{total} {elapsed}") as bar:
        _decodes(cfg, mechs, gen, result, bar)
        for mech in ("MLA naive", "MLA absorbed"):
            bar.set_description(f"{mech} prefill of {cfg.prefill_tokens}")
            done = bar.n
            try:
                _prefill(cfg, mech, gen, result, bar)
            except _out_of_memory() as err:
                _skip(cfg, result, "prefill", mech, cfg.prefill_tokens, cfg.batch, _error(err))
            bar.update(done + 2 - bar.n)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="The KV-cache benchmark of the efficient-attention course.")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if there is a GPU")
    parser.add_argument("--quick", action="store_true", help="two contexts, 0.1 s of timing per step")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench-results"), help="folder for bench.json and bench.png")
    parser.add_argument("--time-interpreter", action="store_true",
                        help="on the CPU, time the fused Triton kernel through Triton's interpreter (slow)")
    args = parser.parse_args(argv)
    cfg = choose(args.device, args.quick)
    cfg.time_interpreter = args.time_interpreter
    print(cfg.why, flush=True)
    result = run(cfg)
    js, png = write(result, args.out)
    print(summary(result))
    print(f"wrote {js} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
