"""On a CUDA GPU: the benchmark's GPU path, and MLA's two forms in bf16.

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

from attnlab import pick_device
from attnlab.lesson import bench  # noqa: E402


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
    assert (cfg.device, cfg.dtype, cfg.batch) == ("cuda", "bf16", 8) and max(cfg.contexts) >= 32768
    assert (cfg.n_heads, cfg.d_nope, cfg.d_rope, cfg.d_v, cfg.d_latent) == (128, 128, 64, 128, 512)


def test_the_allocator_counts_what_the_formula_says(quick):
    assert quick["skipped"] == [] and quick["cache"]
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
