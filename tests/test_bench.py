"""The benchmark harness and its command line, at the quick CPU size."""
from __future__ import annotations

import json
import pathlib

import pytest

from attnlab.lesson import bench


@pytest.fixture(scope="module")
def quick_result():
    return bench.run(bench.choose("cpu", quick=True), progress=False)


def test_choose_says_what_it_picked():
    cfg = bench.choose("cpu")
    assert cfg.dtype == "fp32" and "no GPU" in cfg.why and max(cfg.contexts) >= 4096
    with pytest.raises(ValueError, match="device"):
        bench.choose("tpu")


def test_cache_bytes_match_the_formula_exactly(quick_result):
    rows = quick_result["cache"]
    assert {r["mechanism"] for r in rows} == set(bench.MECHANISMS)
    for r in rows:
        assert r["measured_bytes"] == r["formula_bytes"], r


def test_every_decode_has_a_timing_and_a_roofline(quick_result):
    cfg = quick_result["config"]
    assert len(quick_result["decode"]) == len(bench.MECHANISMS) * len(cfg["contexts"])
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
    import torch

    real = bench.Layer

    def layer(mech, cfg, T, gen):
        if mech == "MLA naive" and T == max(cfg.contexts):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real(mech, cfg, T, gen)

    monkeypatch.setattr(bench, "Layer", layer)
    monkeypatch.setattr(bench, "_out_of_memory", lambda: (torch.cuda.OutOfMemoryError,))
    cfg = bench.choose("cpu", quick=True)
    result = bench.run(cfg, progress=False)
    assert result["skipped"] == [{"what": "decode", "mechanism": "MLA naive", "context": max(cfg.contexts),
                                  "error": "OutOfMemoryError: CUDA out of memory. Tried to allocate 8.00 GiB"}]
    assert len(result["decode"]) == len(bench.MECHANISMS) * len(cfg.contexts) - 1
    assert len(result["prefill"]) == 2
    assert "skipped: MLA naive decode" in bench.summary(result)
    bench.plot(result)


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
    assert (cfg.dtype, cfg.batch, max(cfg.contexts)) == ("bf16", 8, longest)
    mha_bytes = cfg.elements_per_token("MHA") * longest * cfg.batch * 2
    assert mha_bytes <= bench.GPU_CACHE_SHARE * gib * 2**30
    assert (f"{gib} GiB would not hold" in cfg.why) == (longest < 32768), cfg.why


def test_targets_say_met_missed_or_not_measured(quick_result):
    import copy

    lines = bench.targets(quick_result)
    T = max(quick_result["config"]["contexts"])
    assert lines[0].startswith(f"MHA           at {T}: ") and len(lines) == 5
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
    assert lines[3:] == ["MLA absorbed faster than MHA at every context from 4K: True",
                         f"MLA naive slower than MHA at {8 * T}: True"]
