"""The benchmark harness and its command line, at the quick CPU size."""
from __future__ import annotations

import copy
import dataclasses
import json
import pathlib

import pytest

from attnlab.lesson import bench, bench_layers

TIMED_ON_CPU = [m for m in bench.MECHANISMS if m != bench.FUSED]  # the fused kernel is timed on a GPU only


@pytest.fixture(scope="module")
def quick_result():
    return bench.run(bench.choose("cpu", quick=True), progress=False)


def tiny(**changes) -> bench.BenchConfig:
    """The quick CPU configuration, smaller: 16 heads, one 64-token context (one page)."""
    return dataclasses.replace(bench.choose("cpu", quick=True), n_heads=16, contexts=[64], prefill_tokens=64,
                               **changes)


def test_choose_says_what_it_picked():
    cfg = bench.choose("cpu")
    assert cfg.dtype == "fp32" and "no GPU" in cfg.why and max(cfg.contexts) >= 4096
    with pytest.raises(ValueError, match="device"):
        bench.choose("tpu")


def test_cache_bytes_match_the_formula_exactly(quick_result):
    rows = quick_result["cache"]
    assert {r["mechanism"] for r in rows} == set(TIMED_ON_CPU)
    for r in rows:
        assert r["measured_bytes"] == r["formula_bytes"], r


def test_every_decode_has_a_timing_and_a_roofline(quick_result):
    cfg = quick_result["config"]
    assert len(quick_result["decode"]) == len(TIMED_ON_CPU) * len(cfg["contexts"])
    for d in quick_result["decode"]:
        assert d["median_s"] > 0 and d["roofline_s"] > 0 and d["efficiency"] == pytest.approx(d["roofline_s"] / d["median_s"])
        assert d["bound"] in ("memory", "compute")
    r = quick_result["roofline"]
    assert r["copy_bytes_per_s"] > 1e8 and r["matmul_flops_per_s"] > 1e8
    assert [p["mechanism"] for p in quick_result["prefill"]] == ["MLA naive", "MLA absorbed"]
    json.dumps(quick_result)  # all of it is JSON


def test_mla_caches_far_less_than_mha(quick_result):
    T = quick_result["config"]["contexts"][0]
    by = {r["mechanism"]: r["measured_bytes"] for r in quick_result["cache"] if r["context"] == T}
    c = quick_result["config"]
    assert by["MHA"] / by["MLA absorbed"] == pytest.approx(
        c["n_heads"] * (c["d_nope"] + c["d_rope"] + c["d_v"]) / (c["d_latent"] + c["d_rope"]))


def test_naive_and_absorbed_mla_steps_agree():
    import torch

    cfg = bench.choose("cpu", quick=True)
    gen = torch.Generator().manual_seed(1)
    naive = bench.Layer("MLA naive", cfg, 64, gen)
    absorbed = bench.Layer("MLA absorbed", cfg, 64, torch.Generator().manual_seed(1))
    torch.testing.assert_close(naive.decode(), absorbed.decode(), atol=1e-4, rtol=1e-4)


def test_prefill_is_causal_attention_and_both_forms_agree():
    """The two prefills, a few heads at a time, equal one unchunked causal
    attention over the decompressed cache, and their last row is a decode step."""
    import torch
    import torch.nn.functional as F

    cfg = bench.choose("cpu", quick=True)
    B, H, T = cfg.batch, cfg.n_heads, 48
    naive = bench.Layer("MLA naive", cfg, T, torch.Generator().manual_seed(2))
    absorbed = bench.Layer("MLA absorbed", cfg, T, torch.Generator().manual_seed(2))
    kv = naive.cache[0]  # (B, T, d_c + d_rope)
    c, k_r = kv[..., :cfg.d_latent], kv[..., cfg.d_latent:]
    k = torch.cat([torch.einsum("btc,hnc->bhtn", c, naive.W_uk), k_r[:, None].expand(B, H, T, -1)], dim=-1)
    v = torch.einsum("btc,hvc->bhtv", c, naive.W_uv)
    want = F.scaled_dot_product_attention(naive.q.expand(B, H, T, -1), k, v, is_causal=True, scale=1.0)
    torch.testing.assert_close(naive.prefill(heads_at_once=5), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(absorbed.prefill(heads_at_once=3), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(naive.decode(), want[:, :, -1], atol=1e-5, rtol=1e-5)


def test_a_generator_on_the_wrong_device_is_named():
    import torch

    cfg = bench.choose("cpu", quick=True)
    cfg.device = "cuda"  # as on a GPU, with the CPU generator of the tests
    with pytest.raises(ValueError, match="generator is on cpu"):
        bench.Layer("MHA", cfg, 16, torch.Generator())


def test_a_size_that_runs_out_of_memory_is_skipped_and_the_run_goes_on(monkeypatch):
    """And a fused kernel that fails (Triton with no C compiler, say) is skipped with its error:
    only that mechanism's error is caught."""
    import torch

    real = bench.Layer

    def layer(mech, cfg, T, gen):
        if mech == "MLA naive" and T == max(cfg.contexts):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        if mech == bench.FUSED:
            raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")
        return real(mech, cfg, T, gen)

    monkeypatch.setattr(bench, "Layer", layer)
    monkeypatch.setattr(bench, "_out_of_memory", lambda: (torch.cuda.OutOfMemoryError,))
    cfg = bench.choose("cpu", quick=True)
    cfg.time_interpreter = True  # so that the fused kernel is tried
    result = bench.run(cfg, progress=False)
    T1, T2 = cfg.contexts
    failed = {"what": "decode", "mechanism": bench.FUSED, "batch": cfg.batch, "error": "the kernel failed: "
              "RuntimeError: Failed to find C compiler. Please specify via CC environment variable."}
    assert result["skipped"] == [dict(failed, context=T1),
                                 {"what": "decode", "mechanism": "MLA naive", "context": T2, "batch": cfg.batch,
                                  "error": "OutOfMemoryError: CUDA out of memory. Tried to allocate 8.00 GiB"},
                                 dict(failed, context=T2)]
    assert len(result["decode"]) == len(TIMED_ON_CPU) * len(cfg.contexts) - 1
    assert len(result["prefill"]) == 2
    assert "skipped: MLA naive decode" in bench.summary(result)
    assert f"fused vs absorbed at batch 2, {T2} tokens: fused not timed (the kernel failed: " in bench.summary(result)
    bench.plot(result)

    def broken(mech, cfg, T, gen):
        raise RuntimeError("a bug in the benchmark")

    monkeypatch.setattr(bench, "Layer", broken)
    with pytest.raises(RuntimeError, match="a bug in the benchmark"):
        bench.run(cfg, progress=False)


def test_short_steps_are_timed_back_to_back():
    """torch.utils.benchmark times a block of calls per sample, so that a step of a few microseconds
    times the work, not the clock; the median and the samples are per call."""
    calls = [0]

    def step():
        calls[0] += 1
        sum(range(200))

    med, samples = bench.measure(step, warmup=2, max_run_s=0.2)
    assert 0 < med < 1e-3 and samples and calls[0] > 10 * len(samples) + 2


def test_command_line_writes_json_and_png(tmp_path, capsys):
    assert bench.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["device_kind"] == "cpu" and data["decode"]
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "roofline" in out and "wrote" in out


def test_the_notebook_shows_committed_gpu_results(tmp_path, monkeypatch, quick_result):
    """Workbook 05's "Measured on a GPU" cell prints and draws every results/<device>/ run."""
    import nbformat

    from conftest import ROOT

    nb = nbformat.read(ROOT / "solutions" / "05_cache_benchmark" / "05_cache_benchmark.ipynb", as_version=4)
    cell = next(c.source for c in nb.cells if c.cell_type == "code" and 'results_dir = pathlib.Path("results")' in c.source)
    shown = []
    namespace = {"bench": bench, "json": json, "pathlib": pathlib, "display": shown.append,
                 "Image": lambda filename: filename}
    monkeypatch.chdir(tmp_path)
    exec(cell, dict(namespace))
    assert shown == []
    bench.write(quick_result, tmp_path / "results" / "some-gpu")
    exec(cell, dict(namespace))
    assert shown == [str(pathlib.Path("results") / "some-gpu" / "bench.png")]


@pytest.mark.parametrize("gib, longest", [(24, 8192), (48, 16384), (80, 32768), (141, 32768)])
def test_a_smaller_gpu_gets_shorter_contexts_and_is_told_why(gib, longest):
    cfg = bench.choose("cuda", gpu_memory=gib * 2**30)
    assert (cfg.dtype, cfg.batch, cfg.batches, max(cfg.contexts)) == ("bf16", 8, [8, 64], longest)
    mha_bytes = cfg.elements_per_token("MHA") * longest * cfg.batch * 2
    assert mha_bytes <= bench.GPU_CACHE_SHARE * gib * 2**30
    assert (f"{gib} GiB would not hold" in cfg.why) == (longest < 32768), cfg.why
    # At batch 8 every size choose() kept fits; at batch 64 the run skips MHA and MLA naive where they would not.
    assert not any(bench._too_big(cfg, m, T) for m in bench.MECHANISMS for T in cfg.contexts)
    wide = dataclasses.replace(cfg, batch=64)
    assert bench._too_big(wide, "MHA", longest) and not bench._too_big(wide, bench.FUSED, longest)
    if gib == 141:
        assert bench._too_big(wide, "MHA", 32768) == ("too large: its tensors would take 161 GiB, "
                                                      "over 80% of the GPU's 141 GiB")
        assert not bench._too_big(wide, "MHA", 16384) and not bench._too_big(wide, "MLA absorbed", 32768)


def test_targets_say_met_missed_or_not_measured(quick_result):
    import copy

    lines = bench.targets(quick_result)
    T = max(quick_result["config"]["contexts"])
    assert lines[0].startswith(f"MHA           at {T}: ") and len(lines) == 6
    assert lines[5] == (f"MLA fused (Triton) at {T}, batch 2: not timed ({bench_layers.INTERPRETED}) -> targets not "
                        "checked (60 % of its roofline, 2.5x MLA absorbed)")
    assert lines[3] == "MLA absorbed faster than MHA at every context from 4K: no context that long in this run"
    fake = copy.deepcopy(quick_result)
    for d in fake["decode"]:
        d["context"] *= 8  # as if at 4K and 8K
        d["efficiency"] = {"MHA": 0.7, "GQA": 0.3}.get(d["mechanism"], d["efficiency"])
        d["median_s"] = {"MHA": 2.0, "MLA absorbed": 1.0, "MLA naive": 9.0}.get(d["mechanism"], d["median_s"])
    fake["decode"] = [d for d in fake["decode"] if not (d["mechanism"] == "MLA absorbed" and d["context"] == 8 * T)]
    lines = bench.targets(fake)
    assert lines[0] == f"MHA           at {8 * T}: 70% of its roofline -> target met (50 %)"
    assert lines[1] == f"GQA           at {8 * T}: 30% of its roofline -> target MISSED (50 %)"
    assert lines[2] == f"MLA absorbed  at {8 * T}: not measured (skipped) -> target MISSED (50 %)"
    assert lines[3:5] == ["MLA absorbed faster than MHA at every context from 4K: True",
                          f"MLA naive slower than MHA at {8 * T}: True"]


# ------------------------------------------------------------------ the fused kernel (MLA fused (Triton))


def test_the_cpu_run_lists_the_fused_kernel_as_not_timed(quick_result):
    assert quick_result["skipped"] == [{"what": "decode", "mechanism": bench.FUSED, "context": None, "batch": None,
                                        "error": bench_layers.INTERPRETED}]
    text = bench.summary(quick_result)
    assert f"skipped: {bench.FUSED} decode at every context ({bench_layers.INTERPRETED})" in text
    assert f"fused vs absorbed at batch 2, {max(quick_result['config']['contexts'])} tokens: fused not timed" in text


def test_the_fused_step_equals_the_absorbed_one():
    """Through Triton's interpreter, in float32: the same weights and cache (same seed), 64-token pages,
    two splits and one; the kernel's output then goes through W_UV as the absorbed step's does."""
    import torch

    cfg = tiny()
    T = 192  # three pages
    fused = bench.Layer(bench.FUSED, cfg, T, torch.Generator().manual_seed(5))
    absorbed = bench.Layer("MLA absorbed", cfg, T, torch.Generator().manual_seed(5))
    assert fused.cache_bytes == absorbed.cache_bytes == cfg.elements_per_token(bench.FUSED) * T * cfg.batch * 4
    assert fused.pool.data_ptr() == fused.cache[0].data_ptr() and fused.splits == 1  # a view; one split on a CPU
    want = absorbed.decode()
    for splits in (1, 2):
        fused.splits = splits
        got = fused.decode()
        assert got.shape == want.shape == (cfg.batch, cfg.n_heads, cfg.d_v)
        assert float((got - want).norm() / want.norm()) < 1e-5, splits
    with pytest.raises(ValueError, match="multiple of 64, got 48"):
        bench.Layer(bench.FUSED, cfg, 48, torch.Generator())
    with pytest.raises(ValueError, match="unknown mechanism"):
        bench.Layer("MLA", cfg, 64, torch.Generator())


def test_the_fused_kernel_can_be_timed_through_the_interpreter_and_batches_are_swept():
    """Opt-in on the CPU (--time-interpreter): a fused row per batch, with its split count, and
    every batch's cache bytes against the formula."""
    result = bench.run(tiny(batches=[1, 2], time_interpreter=True), progress=False)
    assert result["skipped"] == []
    assert sorted((d["batch"], d["mechanism"]) for d in result["decode"]) == sorted(
        (B, m) for B in (1, 2) for m in bench.MECHANISMS)
    for r in result["cache"]:
        assert r["measured_bytes"] == r["formula_bytes"], r
    fused = [d for d in result["decode"] if d["mechanism"] == bench.FUSED]
    assert [d["splits"] for d in fused] == [1, 1] and all(d["median_s"] > 0 for d in fused)
    text = bench.summary(result)
    assert "decode at     64, batch  2: MLA fused (Triton)" in text and "1 split, BLOCK_H 16" in text
    assert "fused vs absorbed at batch 1, 64 tokens: fused " in text and "speedup" in text
    assert len(bench.targets(result)) == 7  # five, then the fused kernel's at batches 1 and 2
    bench.plot(result)


def test_the_report_states_the_fused_kernel_against_its_targets(quick_result):
    """A made-up two-batch GPU run: per batch at the longest context, the fused kernel's share of
    its roofline and its speedup over MLA absorbed, each against the issue's target."""
    fake = copy.deepcopy(quick_result)
    fake["config"]["batches"], fake["skipped"] = [2, 64], []
    T = max(fake["config"]["contexts"])
    absorbed = next(d for d in fake["decode"] if d["mechanism"] == "MLA absorbed" and d["context"] == T)
    absorbed.update(median_s=3e-4, efficiency=0.3)
    fake["decode"].append(dict(absorbed, mechanism=bench.FUSED, median_s=1e-4, efficiency=0.9, splits=5))
    fake["decode"].append(dict(absorbed, batch=64, median_s=2e-3))
    fake["decode"].append(dict(absorbed, mechanism=bench.FUSED, batch=64, median_s=1e-3, efficiency=0.5, splits=1))
    text = bench.summary(fake)
    assert (f"fused vs absorbed at batch 2, {T} tokens: fused 0.100 ms, 90% of roofline (target 60 %: met); "
            f"absorbed 0.300 ms, 30% of roofline; speedup 3.00x (target 2.5x: met)") in text
    assert (f"fused vs absorbed at batch 64, {T} tokens: fused 1.000 ms, 50% of roofline (target 60 %: MISSED); "
            f"absorbed 2.000 ms, 30% of roofline; speedup 2.00x (target 2.5x: MISSED)") in text
    assert bench.targets(fake)[5:] == [
        f"MLA fused (Triton) at {T}, batch 2: 90% of its roofline -> target met (60 %); "
        "3.00x MLA absorbed -> target met (2.5x)",
        f"MLA fused (Triton) at {T}, batch 64: 50% of its roofline -> target MISSED (60 %); "
        "2.00x MLA absorbed -> target MISSED (2.5x)"]
    bench.plot(fake)


def test_a_run_from_before_the_fused_kernel_still_reads(quick_result):
    """bench.json files committed before batches and the fused kernel: no "batch" in their rows."""
    old = copy.deepcopy(quick_result)
    del old["config"]["batches"]
    for row in old["decode"] + old["cache"]:
        del row["batch"]
    old["skipped"] = []
    assert "fused not timed (not in this run)" in bench.summary(old)
    assert bench.targets(old)[:5] == bench.targets(quick_result)[:5]
    bench.plot(old)


def test_bad_batches_are_named():
    with pytest.raises(ValueError, match="batches must be positive ints"):
        dataclasses.replace(bench.choose("cpu"), batches=[8, 0])
