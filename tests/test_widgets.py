"""The widgets, driven from Python as a test or a script would drive them."""
from __future__ import annotations

import pytest

from attnlab.lesson import cache
from attnlab.lesson.widgets import CacheGrowth


def test_cache_growth_follows_its_controls():
    w = CacheGrowth()
    assert w.preset.value == "Llama-2-7B"
    assert w.bytes_per_token == 262_144 * 2  # bf16
    assert "512.00 KiB" in w.summary.value
    first_png = w.plot.value
    assert first_png[:8] == b"\x89PNG\r\n\x1a\n"

    w.context.value = 2**17
    w.batch.value = 8
    assert w.total_bytes == 262_144 * 2 * 2**17 * 8
    assert "8 × 131,072 tokens" in w.summary.value and cache.format_bytes(w.total_bytes) in w.summary.value
    assert w.plot.value != first_png

    w.preset.value = "DeepSeek-V3 dims as MHA"
    assert (w.n_layers.value, w.n_heads.value, w.d_head.value) == (61, 128, 128)
    w.batch.value = 1
    assert "488.00 GiB" in w.summary.value

    w.n_heads.value = 8  # a hand-made model is no longer the preset
    assert w.preset.value == "custom"
    assert w.bytes_per_token == cache.mha_elements_per_token(61, 8, 128) * 2
    w.dtype.value = "fp32"
    assert w.bytes_per_token == cache.mha_elements_per_token(61, 8, 128) * 4


def test_cache_growth_refuses_an_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        CacheGrowth(preset="GPT-5")


def test_rope_rotation_turns_with_position():
    from attnlab.lesson.widgets import RopeRotation

    w = RopeRotation(d=64)
    assert w.pairs() == [0, 4, 16, 31]
    assert abs(w.angles[0] - 1.0) < 1e-9  # pair 0 turns 1 radian per position
    png = w.plot.value
    w.position.value = 3
    assert abs(w.angles[0] - 3.0) < 1e-9 and w.plot.value != png
    assert "pair 0: 6," in w.summary.value  # a wavelength of 2 pi positions
    w.d.value = 16
    assert w.pairs() == [0, 1, 4, 7]


def test_rope_scores_depend_only_on_distance():
    import numpy as np

    from attnlab.lesson.widgets import RopeScores

    w = RopeScores(d=32, length=24)
    s = w.scores
    assert s.shape == (24, 24)
    for offset in (-5, 0, 7):  # constant along each diagonal
        diag = np.diagonal(s, offset)
        assert np.allclose(diag, diag[0])
    png = w.plot.value
    w.length.value = 40
    assert w.scores.shape == (40, 40) and w.plot.value != png


def test_cache_explorer_numbers_follow_the_formulas():
    from attnlab.lesson.widgets import CacheExplorer

    w = CacheExplorer(preset="DeepSeek-V3", gpu="80 GB")
    n = w.numbers
    assert n["MLA"]["bytes_per_token"] == 576 * 61 * 2
    assert n["MHA"]["bytes_per_token"] == 2 * 128 * 128 * 61 * 2
    assert round(n["MLA"]["ratio_to_mha"], 1) == 56.9
    assert round(n["MHA"]["cache_bytes"] / 2**30, 1) == 488.0  # 131,072 tokens by default
    assert all(n[m]["longest_context"] == 0 for m in w.MECHANISMS)  # 671B parameters do not fit
    assert "do not fit" in w.summary.value
    png = w.plot.value

    w.preset.value = "Llama-3-8B"
    assert (w.n_layers.value, w.n_heads.value, w.n_kv_heads.value) == (32, 32, 8)
    assert w.numbers["GQA"]["bytes_per_token"] == 131_072
    h100 = 81_559 * 2**20  # what an "80 GB" H100 reports
    assert w.numbers["GQA"]["longest_context"] == int((h100 - 2 * 8.03e9) // 131_072) == 529_943
    assert "529,943" in w.summary.value and w.plot.value != png

    w.batch.value = 8
    assert w.numbers["GQA"]["longest_context"] == int((h100 - 2 * 8.03e9) // (131_072 * 8))
    w.gpu.value = "141 GB"
    assert w.numbers["GQA"]["longest_context"] == int((143_771 * 2**20 - 2 * 8.03e9) // (131_072 * 8))
    w.context.value = 2**20
    assert w.numbers["MQA"]["cache_bytes"] == 2 * 128 * 32 * 2 * 2**20 * 8
    w.dtype.value = "fp8"
    assert w.numbers["MLA"]["bytes_per_token"] == 576 * 32

    w.n_kv_heads.value = 4  # a hand-made model
    assert w.preset.value == "custom" and w.numbers["GQA"]["bytes_per_token"] == 2 * 4 * 128 * 32


def test_cache_explorer_refuses_unknown_choices():
    from attnlab.lesson.widgets import CacheExplorer

    with pytest.raises(ValueError, match="preset"):
        CacheExplorer(preset="GPT-5")
    with pytest.raises(ValueError, match="gpu"):
        CacheExplorer(gpu="40 GB")
