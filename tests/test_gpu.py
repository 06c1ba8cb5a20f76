"""On a CUDA GPU: the benchmark's GPU path, MLA's two forms in bf16, and the fused
Triton kernel (workbook 07's paged_mla_decode) against the absorbed PyTorch step.

Skipped without a GPU (CI never has one). ``bash tests/gpu/check.sh OUT`` runs
this file, every solution notebook on the GPU, and the benchmark, on a GPU
machine.
"""
from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU: tests/test_gpu.py needs one (tests/gpu/check.sh runs it on a GPU machine)",
                allow_module_level=True)

from attnlab import pick_device  # noqa: E402
from attnlab.lesson import bench, bench_layers  # noqa: E402

kernels = bench_layers.load_kernels()  # None without Triton: the fused kernel's tests are skipped
needs_triton = pytest.mark.skipif(kernels is None, reason=bench_layers.NO_TRITON)


def cuda_gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def quick():
    return bench.run(bench.choose("cuda", quick=True), progress=False)


def test_the_notebooks_pick_the_gpu():
    assert pick_device().type == "cuda"


def test_the_gpu_run_is_bf16_at_deepseek_v3_sizes():
    cfg = bench.choose()
    assert (cfg.device, cfg.dtype, cfg.batch, cfg.batches) == ("cuda", "bf16", 8, [8, 64])
    assert max(cfg.contexts) >= 32768
    assert (cfg.n_heads, cfg.d_nope, cfg.d_rope, cfg.d_v, cfg.d_latent) == (128, 128, 64, 128, 512)


def test_the_allocator_counts_what_the_formula_says(quick):
    untimed = [] if kernels else [{"what": "decode", "mechanism": bench.FUSED, "context": None, "batch": None,
                                   "error": bench_layers.NO_TRITON}]
    assert quick["skipped"] == untimed and quick["cache"]
    for row in quick["cache"]:
        assert row["measured_bytes"] == row["formula_bytes"], row
        assert row["allocator_block_bytes"] >= row["measured_bytes"], row


def test_gpu_timings_and_roofline_are_sane(quick):
    r = quick["roofline"]
    assert r["copy_bytes_per_s"] > 1e11 and r["matmul_flops_per_s"] > 1e13, r  # at least 100 GB/s and 10 TFLOP/s
    for d in quick["decode"]:  # short steps are launch-bound: only the order of magnitude is checked
        assert 0 < d["median_s"] < 1 and d["efficiency"] > 1e-3, d


def test_naive_and_absorbed_mla_agree_in_bf16():
    cfg = bench.choose("cuda", quick=True)
    naive = bench.Layer("MLA naive", cfg, 1024, cuda_gen(3))
    absorbed = bench.Layer("MLA absorbed", cfg, 1024, cuda_gen(3))
    with torch.inference_mode():
        step_n, step_a = naive.decode(), absorbed.decode()
        assert step_n.dtype == torch.bfloat16 and relative(step_n, step_a) < 2e-2
        pre_n, pre_a = naive.prefill(), absorbed.prefill()
    assert relative(pre_n, pre_a) < 2e-2
    assert relative(pre_n[:, :, -1], step_n) < 2e-2  # the prefill's last row is a decode step


def test_the_full_size_prefill_fits_in_memory():
    """Both prefills at the GPU run's size (batch 8, 128 heads, 4K tokens): all
    heads' scores at once would need 34 GB in bf16, a few heads at a time a few GB."""
    cfg = bench.choose("cuda")
    for mech in ("MLA naive", "MLA absorbed"):
        layer = bench.Layer(mech, cfg, cfg.prefill_tokens, cuda_gen(4))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.inference_mode():
            out = layer.prefill()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
        assert out.shape == (cfg.batch, cfg.n_heads, cfg.prefill_tokens, cfg.d_v)
        assert extra < 16 * 2**30, f"{mech} prefill took {extra / 2**30:.1f} GiB beyond its cache"
        del layer, out
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ the fused kernel


def shuffled_pages(kv: torch.Tensor, lengths: torch.Tensor, gen: torch.Generator):
    """kv (B, T, D), T a multiple of 64, as a pool whose pages lie in a random order, and its block
    table; the table's entries past each sequence's length are -1, which the kernel must not read."""
    B, T, D = kv.shape
    P = T // bench_layers.PAGE
    pages = kv.reshape(B * P, bench_layers.PAGE, D)  # (B * P, 64, D): page j is sequence j // P's (j % P)-th
    perm = torch.randperm(B * P, generator=gen, device=kv.device)
    pool = pages[perm].contiguous()  # pool[i] = pages[perm[i]]
    where = torch.empty_like(perm)
    where[perm] = torch.arange(B * P, device=kv.device)  # where[j]: the pool slot of page j
    table = where.view(B, P).to(torch.int32)  # (B, P)
    used = torch.arange(P, device=kv.device)[None, :] * bench_layers.PAGE < lengths[:, None]  # (B, P)
    return pool, table.masked_fill(~used, -1)


@needs_triton
@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 1e-2), (torch.float32, 1e-4)])
def test_the_fused_kernel_matches_the_absorbed_step_at_v3_sizes(dtype, tol):
    """Batch 8, 128 heads, [c_KV | k_R] of 512 + 64, 2048 cached tokens in pages shuffled across the
    pool, sequences ending mid-page (one of a single token), several split counts; against the absorbed
    step in float64 on the same (rounded) inputs."""
    from attnlab.answers.decode import absorbed_decode

    B, H, T, d_c, d_r = 8, 128, 2048, 512, 64
    gen = cuda_gen(6)
    q = torch.randn(B, H, d_c + d_r, generator=gen, device="cuda").to(dtype)
    kv = torch.randn(B, T, d_c + d_r, generator=gen, device="cuda").to(dtype)
    lengths = torch.tensor([T, T - 1, 1, 65, 1000, 1473, 2047 - 64, 777], device="cuda")
    pool, table = shuffled_pages(kv, lengths, gen)
    scale = (128 + 64) ** -0.5
    want = absorbed_decode(q.double(), kv.double(), lengths, scale, d_c)  # (B, H, d_c)
    for splits in (None, 1, 3, 8, 40):
        got = kernels.paged_mla_decode(q, pool, table, lengths, scale, d_c=d_c, num_splits=splits)
        assert got.dtype == dtype and got.shape == (B, H, d_c)
        assert relative(got, want) < tol, (dtype, splits, relative(got, want))


@needs_triton
def test_the_benchmarks_fused_step_matches_its_absorbed_step_in_bf16():
    """The two layers' whole steps (W_UK absorbed, attention, W_UV) on the same weights and cache: both
    round to bf16 (the absorbed one 0.4 % from float64 on a CPU), hence 2e-2, as naive against absorbed."""
    cfg = bench.choose("cuda", quick=True)
    with torch.inference_mode():
        fused = bench.Layer(bench.FUSED, cfg, 1024, cuda_gen(7))
        absorbed = bench.Layer("MLA absorbed", cfg, 1024, cuda_gen(7))
        assert fused.cache_bytes == absorbed.cache_bytes
        assert fused.splits == kernels.default_splits(cfg.batch, cfg.n_heads, 1024, torch.device("cuda"))
        step_f, step_a = fused.decode(), absorbed.decode()
    assert step_f.dtype == torch.bfloat16 and relative(step_f, step_a) < 2e-2


@needs_triton
def test_the_gpu_run_times_the_fused_kernel_at_both_batches(quick):
    """A fused row per batch and context, with the split count it ran with, and the report's
    fused-against-absorbed line for each batch (figures printed, never asserted)."""
    cfg = quick["config"]
    fused = [d for d in quick["decode"] if d["mechanism"] == bench.FUSED]
    assert sorted((d["batch"], d["context"]) for d in fused) == sorted(
        (B, T) for B in cfg["batches"] for T in cfg["contexts"])
    for d in fused:
        assert d["splits"] == kernels.default_splits(d["batch"], cfg["n_heads"], d["context"], torch.device("cuda"))
    text = bench.summary(quick)
    print(text)
    for B in cfg["batches"]:
        assert f"fused vs absorbed at batch {B}, {max(cfg['contexts'])} tokens: fused " in text and "speedup" in text
