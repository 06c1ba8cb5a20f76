"""Workbook 06's helpers: the retrofit reference answers, latent attention, the tiny language model."""
from __future__ import annotations

import math

import pytest
import torch

from attnlab import answers, guard
from attnlab.lesson import charlm, latent


def weights(C, H, G, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(H * D, C), (G * D, C), (G * D, C), (C, H * D)]
    return [torch.randn(s, generator=g, dtype=torch.float64) / math.sqrt(s[1]) for s in shapes]


@pytest.mark.parametrize("H,G", [(8, 2), (4, 1), (4, 4)])
@pytest.mark.parametrize("rope", [False, True])
def test_gqa_as_mla_reproduces_gqa(H, G, rope):
    C, D = 24, 6
    W_q, W_k, W_v, W_o = weights(C, H, G, D)
    x = torch.randn(2, 5, C, dtype=torch.float64)
    W_dkv, W_uk, W_uv = answers.gqa_as_mla(W_k, W_v, H, G)
    assert W_dkv.shape == (2 * G * D, C)  # the same cache as GQA
    want = (answers.rope_gqa_step(x, W_q, W_k, W_v, W_o, H, G, answers.KVCache()) if rope
            else answers.gqa_forward(x, W_q, W_k, W_v, W_o, H, G))
    torch.testing.assert_close(latent.latent_attention(x, W_q, W_dkv, W_uk, W_uv, W_o, H, rope=rope), want)


def test_joint_svd_is_the_best_low_rank_approximation():
    W_k, W_v = weights(16, 4, 2, 4)[1:3]  # (8, 16) each
    stacked = torch.cat([W_k, W_v])
    S = torch.linalg.svdvals(stacked)
    for r in (1, 5, 16):
        down, k_up, v_up = answers.joint_svd(W_k, W_v, r)
        assert down.shape == (r, 16) and k_up.shape == (8, r) and v_up.shape == (8, r)
        err = (torch.cat([k_up, v_up]) @ down - stacked).norm()
        assert abs(err - S[r:].square().sum().sqrt()) < 1e-10  # Eckart-Young
    with pytest.raises(ValueError, match="rank"):
        answers.joint_svd(W_k, W_v, 17)


def test_partial_rope_extremes_and_relative_positions():
    x = torch.randn(2, 3, 4, 8, dtype=torch.float64)
    cos, sin = answers.rope_tables(torch.arange(4), 8, dtype=torch.float64)
    torch.testing.assert_close(answers.partial_rope(x, cos, sin, torch.ones(4, dtype=torch.bool)),
                               answers.rope_interleaved(x, cos, sin))
    torch.testing.assert_close(answers.partial_rope(x, cos, sin, torch.zeros(3, 4, dtype=torch.bool)), x)
    keep = torch.tensor([True, False, True, False])
    out = answers.partial_rope(x, cos, sin, keep)
    torch.testing.assert_close(out[..., 2:4], x[..., 2:4])  # pair 1 untouched
    with pytest.raises(ValueError, match="keep"):
        answers.partial_rope(x, cos, sin, torch.ones(3))


def test_pairs_by_norm_keeps_n_per_head():
    q = torch.randn(2, 3, 10, 8, dtype=torch.float64) * torch.tensor([5, 5, 1, 1, 1, 1, 0.1, 0.1], dtype=torch.float64)
    k = torch.randn(2, 3, 10, 8, dtype=torch.float64)
    keep = answers.pairs_by_norm(q, k, 1)
    assert keep.dtype == torch.bool and keep.shape == (3, 4)
    assert keep.sum(dim=1).tolist() == [1, 1, 1] and keep[:, 0].all()


def test_workbook_06_answers_are_guarded():
    W_k, W_v = weights(8, 2, 1, 4)[1:3]
    with guard.forbidden(), pytest.raises(guard.ReferenceForbidden):
        answers.joint_svd(W_k, W_v, 2)


def test_corpus_is_shipped_and_split():
    corpus = charlm.Corpus(charlm.load_text())
    assert 60_000 < len(corpus.train) + len(corpus.val) < 70_000
    assert corpus.decode(corpus.train[:14].tolist()) == "First Citizen:"
    x, y = corpus.batch("val", 3, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (3, 16) and torch.equal(x[:, 1:], y[:, :-1])


def test_models_match_parameter_counts_and_cache_formulas():
    counts = {}
    for kind in ("MHA", "GQA", "MLA"):
        cfg = charlm.LMConfig(kind, vocab=59)
        counts[kind] = charlm.count_params(charlm.CharLM(cfg))
    assert max(counts.values()) / min(counts.values()) < 1.001
    assert [charlm.LMConfig(k, 59).cache_elements_per_token() for k in ("MHA", "GQA", "MLA")] == [256, 128, 80]
    with pytest.raises(ValueError, match="kind"):
        charlm.CharLM(charlm.LMConfig("MQA", 59))


def test_training_is_deterministic_and_learns(capsys):
    corpus = charlm.Corpus(charlm.load_text())
    cfg = charlm.LMConfig("MLA", corpus.vocab, context=32)
    tc = charlm.TrainConfig(steps=30, batch=8, eval_every=30, eval_batches=2)
    a, b = charlm.train(cfg, corpus, tc), charlm.train(cfg, corpus, tc, progress=False)
    assert a["train"] == b["train"]
    assert a["train"][-1][1] < a["train"][0][1] - 0.5  # from ~ln(59) = 4.1 down
    out = capsys.readouterr()
    assert "30/30" in out.out and out.err == ""


def test_low_rank_retrofit_at_full_rank_changes_nothing():
    corpus = charlm.Corpus(charlm.load_text())
    model = charlm.CharLM(charlm.LMConfig("GQA", corpus.vocab))
    full = latent.with_low_rank_kv(model, 64)
    x, _ = corpus.batch("val", 2, 64, torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(full(x), model(x), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(latent.with_low_rank_kv(model, 4)(x), model(x), atol=1e-4)
    keep = [torch.ones(4, 8, dtype=torch.bool)] * 2
    with torch.no_grad():
        torch.testing.assert_close(latent.with_partial_rope(model, keep)(x), model(x))
    q, k = latent.sample_qk(model, x, layer=1)
    assert q.shape == k.shape == (2, 4, 64, 16)


def test_torch_threads_are_restored():
    before = torch.get_num_threads()
    with charlm.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
