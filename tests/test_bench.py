"""The benchmark harness and its command line, at the quick CPU size."""
from __future__ import annotations

import json

import pytest

from attnlab import bench


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
    naive = bench._Layer("MLA naive", cfg, 64, gen)
    absorbed = bench._Layer("MLA absorbed", cfg, 64, torch.Generator().manual_seed(1))
    torch.testing.assert_close(naive.decode(), absorbed.decode(), atol=1e-4, rtol=1e-4)


def test_command_line_writes_json_and_png(tmp_path, capsys):
    assert bench.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["device_kind"] == "cpu" and data["decode"]
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "roofline" in out and "wrote" in out


class FakeGPU:
    def __init__(self, durations):
        self.now, self.pending, self.calls, self.durations = 0.0, 0.0, 0, durations

    def clock(self):
        return self.now

    def fn(self):
        self.pending += self.durations[min(self.calls, len(self.durations) - 1)]
        self.calls += 1

    def sync(self):
        self.now, self.pending = self.now + self.pending, 0.0


def test_median_time_warms_up_synchronises_and_takes_the_median():
    gpu = FakeGPU([1.0, 0.002, 0.002, 0.5, 0.002])
    med, samples = bench.median_time(gpu.fn, gpu.clock, gpu.sync, warmup=1, repeats=4)
    assert med == pytest.approx(0.002) and len(samples) == 4 and gpu.calls == 5
    unsynced = FakeGPU([0.01])
    med, _ = bench.median_time(unsynced.fn, unsynced.clock, None, warmup=0, repeats=3)
    assert med == 0.0  # without sync the clock sees only the launch
    with pytest.raises(ValueError):
        bench.median_time(gpu.fn, gpu.clock, repeats=0)
