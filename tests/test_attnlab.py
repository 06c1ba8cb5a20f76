"""The helper package: reference implementations, bad input, the guard, the checks."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab import cache, checks, guard, reference


def rand(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype)


# ------------------------------------------------------------- reference code
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_torch(causal):
    q, k, v = rand(2, 3, 6, 8), rand(2, 3, 6, 8), rand(2, 3, 6, 5)
    torch.testing.assert_close(reference.attention(q, k, v, causal), F.scaled_dot_product_attention(q, k, v, is_causal=causal))


def test_attention_broadcasts_a_single_kv_head():
    q, k, v = rand(2, 4, 3, 8), rand(2, 1, 5, 8), rand(2, 1, 5, 6)
    want = reference.attention(q, k.expand(2, 4, 5, 8), v.expand(2, 4, 5, 6), True)
    torch.testing.assert_close(reference.attention(q, k, v, True), want)


def test_causal_mask_is_bottom_right_aligned():
    assert reference.causal_mask(2, 5).tolist() == [[True] * 4 + [False], [True] * 5]


def test_heads_round_trip_and_layout():
    x = rand(2, 4, 12)
    h = reference.split_heads(x, 3)
    assert h.shape == (2, 3, 4, 4)
    torch.testing.assert_close(h[:, 1], x[..., 4:8])  # head 1 takes features 4..7
    torch.testing.assert_close(reference.merge_heads(h), x)


def test_attention_backward_matches_autograd():
    q, k, v = (rand(2, 2, 5, 4).requires_grad_() for _ in range(3))
    dout = rand(2, 2, 3, 4)
    qq = q[:, :, -3:].detach().requires_grad_()
    want = torch.autograd.grad(reference.attention(qq, k, v, True), (qq, k, v), dout)
    got = reference.attention_backward(qq.detach(), k.detach(), v.detach(), dout, True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_mha_step_with_cache_equals_full_forward():
    x = rand(2, 7, 12)
    W = [rand(12, 12) for _ in range(4)]
    want = reference.mha_forward(x, *W, n_heads=3)
    c = reference.KVCache()
    outs = [reference.mha_step(x[:, :4], *W, n_heads=3, cache=c)]
    outs += [reference.mha_step(x[:, t:t + 1], *W, n_heads=3, cache=c) for t in range(4, 7)]
    torch.testing.assert_close(torch.cat(outs, dim=1), want)
    assert len(c) == 7


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: reference.attention(rand(5, 8), rand(5, 8), rand(5, 8)), ["at least 3", "(B, H, T, D)"]),
        (lambda: reference.attention(rand(2, 3, 5, 8), rand(3, 5, 8), rand(3, 5, 8)), ["same number of dimensions"]),
        (lambda: reference.attention(rand(1, 2, 3, 8), rand(1, 2, 3, 4), rand(1, 2, 3, 4)), ["q.shape[-1]", "k.shape[-1]"]),
        (lambda: reference.attention(rand(1, 2, 3, 4), rand(1, 3, 3, 4), rand(1, 3, 3, 4)), ["(B, H, ...)", "equal or 1"]),
        (lambda: reference.attention(torch.ones(1, 1, 2, 2, dtype=torch.long), rand(1, 1, 2, 2), rand(1, 1, 2, 2)), ["q", "floating-point"]),
        (lambda: reference.attention([[1.0]], rand(1, 1, 2, 2), rand(1, 1, 2, 2)), ["q", "torch.Tensor", "list"]),
        (lambda: reference.split_heads(rand(2, 3, 10), 4), ["n_heads=4", "divisible"]),
        (lambda: reference.split_heads(rand(2, 3, 8), 0), ["n_heads", "positive int"]),
        (lambda: reference.merge_heads(rand(2, 3, 8)), ["x", "(B, H, T, D)"]),
        (lambda: reference.causal_mask(5, 2), ["Tq", "Tk"]),
        (lambda: reference.mha_forward(rand(1, 2, 8), rand(8, 6), rand(8, 8), rand(8, 8), rand(8, 8), 2), ["W_q.shape[1]"]),
        (lambda: cache.mha_elements_per_token(0, 1, 1), ["n_layers", "positive int"]),
        (lambda: cache.mha_elements_per_token(2, 2.5, 1), ["n_heads"]),
        (lambda: cache.cache_bytes(10, -1), ["seq_len"]),
        (lambda: cache.dtype_bytes("fp64"), ["dtype", "bf16"]),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, words):
    with pytest.raises(ValueError) as info:
        call()
    for word in words:
        assert word in str(info.value)


# ------------------------------------------------------------- cache arithmetic
def test_cache_arithmetic_matches_the_papers():
    assert cache.mha_elements_per_token(32, 32, 128) == 262_144  # Llama-2-7B
    dsv3 = cache.cache_bytes(cache.mha_elements_per_token(61, 128, 128), 131_072, 1, "bf16")
    assert round(dsv3 / cache.GiB, 1) == 488.0
    assert cache.dtype_bytes(torch.bfloat16) == 2 and cache.dtype_bytes("fp8") == 1
    assert cache.format_bytes(1536) == "1.50 KiB" and cache.format_bytes(12) == "12 B"


# ------------------------------------------------------------- the guard
def test_forbidden_reference_raises_and_trusted_gets_through():
    q = rand(1, 1, 2, 2)
    with guard.forbidden():
        with pytest.raises(guard.ReferenceForbidden, match="switched off"):
            reference.attention(q, q, q)
        torch.testing.assert_close(guard.trusted(reference.attention)(q, q, q), F.scaled_dot_product_attention(q, q, q))
    reference.attention(q, q, q)  # allowed again outside


def test_exercise_swaps_stand_ins_and_restores_everything():
    sdpa = F.scaled_dot_product_attention

    def mine(*args):
        return "learner's"

    ns = {"attention": mine}
    with checks.exercise(ns, stand_ins=["attention", "split_heads"]):
        assert ns["attention"] is not mine and "split_heads" in ns
        with pytest.raises(guard.ReferenceForbidden):
            F.scaled_dot_product_attention(rand(1, 1, 2, 2), rand(1, 1, 2, 2), rand(1, 1, 2, 2))
        with pytest.raises(guard.ReferenceForbidden):
            torch.nn.MultiheadAttention(4, 2)(rand(1, 2, 4, dtype=torch.float32), rand(1, 2, 4, dtype=torch.float32), rand(1, 2, 4, dtype=torch.float32))
        with pytest.raises(guard.ReferenceForbidden):  # also through a name bound before the test
            sdpa(rand(1, 1, 2, 2), rand(1, 1, 2, 2), rand(1, 1, 2, 2))
    assert ns == {"attention": mine}
    assert F.scaled_dot_product_attention is sdpa
    sdpa(rand(1, 1, 2, 2), rand(1, 1, 2, 2), rand(1, 1, 2, 2))  # on again


def test_exercise_silences_warnings_and_can_switch_autograd_off(recwarn):
    import warnings

    x = rand(3).requires_grad_()
    with checks.exercise({}, no_autograd=True):
        warnings.warn("a learner's harmless warning")
        with torch.enable_grad():
            with pytest.raises(RuntimeError):
                torch.autograd.grad((x * 2).sum(), x)
    assert not recwarn.list


def test_exercise_restores_after_an_exception():
    sdpa = F.scaled_dot_product_attention
    with pytest.raises(KeyError):
        with checks.exercise({}):
            raise KeyError
    assert F.scaled_dot_product_attention is sdpa
    reference.attention(rand(1, 1, 2, 2), rand(1, 1, 2, 2), rand(1, 1, 2, 2))


# ------------------------------------------------------------- the checks
def test_expect_close_names_the_mistake():
    q, k, v = rand(1, 2, 4, 8), rand(1, 2, 4, 8), rand(1, 2, 4, 8)
    want = reference.attention(q, k, v, True)
    no_scale = torch.softmax((q @ k.transpose(-2, -1)).masked_fill(~reference.causal_mask(4, 4), -math.inf), -1) @ v
    with pytest.raises(AssertionError, match="scale is missing"):
        checks.expect_close(no_scale, want, "out", suspects=checks.attention_suspects(q, k, v, True))


@pytest.mark.parametrize(
    "got, message",
    [
        (None, "is it ever computed, stored or returned?"),
        ([1.0], "is a list"),
        (torch.zeros(2, 3), "has shape (2, 3); expected (2, 4)"),
        (torch.zeros(2, 4, dtype=torch.float32), "dtype torch.float32"),
        (torch.full((2, 4), float("nan"), dtype=torch.float64), "NaN"),
        (torch.ones(2, 4, dtype=torch.float64), "largest difference is 1"),
    ],
)
def test_expect_close_messages(got, message):
    with pytest.raises(AssertionError) as info:
        checks.expect_close(got, torch.zeros(2, 4, dtype=torch.float64), "your output")
    assert message in str(info.value)


def test_forbidden_allows_building_blocks_and_what_they_use():
    q = rand(1, 2, 3, 4)
    with guard.forbidden(allow=["attention"]):
        reference.attention(q, q, q, True)  # uses causal_mask and attention_weights inside
        with pytest.raises(guard.ReferenceForbidden):
            reference.causal_mask(3, 3)
        with pytest.raises(guard.ReferenceForbidden):
            reference.split_heads(rand(1, 3, 4), 2)


def test_repeat_kv_interleaves_heads():
    x = torch.arange(3.0).view(1, 3, 1, 1).expand(2, 3, 4, 5)  # K/V head g holds the value g
    out = reference.repeat_kv(x, 2)
    assert out.shape == (2, 6, 4, 5)
    assert out[0, :, 0, 0].tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("causal", [False, True])
def test_gqa_attention_equals_attention_on_repeated_heads(causal):
    q, k, v = rand(2, 6, 3, 4), rand(2, 2, 5, 4), rand(2, 2, 5, 7)
    want = reference.attention(q, reference.repeat_kv(k, 3), reference.repeat_kv(v, 3), causal)
    torch.testing.assert_close(reference.gqa_attention(q, k, v, causal), want)


def test_gqa_forward_special_cases_and_cache():
    x = rand(2, 6, 16)
    Wq, Wo = rand(16, 16), rand(16, 16)
    Wk, Wv = rand(16, 16), rand(16, 16)
    # n_kv_heads = n_heads is MHA
    torch.testing.assert_close(reference.gqa_forward(x, Wq, Wk, Wv, Wo, 4, 4), reference.mha_forward(x, Wq, Wk, Wv, Wo, 4))
    # mean-pooled projections and a cache: prefill + decode equal the full pass
    Wk2, Wv2 = reference.mean_pool_heads(Wk, 4, 2), reference.mean_pool_heads(Wv, 4, 2)
    assert Wk2.shape == (8, 16)
    torch.testing.assert_close(Wk2[:4], (Wk[:4] + Wk[4:8]) / 2)
    full = reference.gqa_forward(x, Wq, Wk2, Wv2, Wo, 4, 2)
    c = reference.KVCache()
    steps = [reference.gqa_forward(x[:, :3], Wq, Wk2, Wv2, Wo, 4, 2, cache=c)]
    steps += [reference.gqa_forward(x[:, t:t + 1], Wq, Wk2, Wv2, Wo, 4, 2, cache=c) for t in range(3, 6)]
    torch.testing.assert_close(torch.cat(steps, 1), full)
    assert cache.gqa_elements_per_token(32, 8, 128) == 65_536  # Llama-3-8B


def test_storage_watch_sees_copies_not_views():
    from attnlab.checks import storage_watch

    k = rand(1, 2, 64, 8)
    with storage_watch() as w:
        k[:, :, None].expand(1, 2, 4, 64, 8)
    assert w.largest == k.untyped_storage().nbytes()
    with storage_watch() as w:  # a broadcasting matmul copies K inside torch
        rand(1, 2, 4, 1, 8) @ k[:, :, None].transpose(-2, -1)
    assert w.largest >= 4 * k.untyped_storage().nbytes()
    with storage_watch() as w:
        reference.repeat_kv(k, 4)
    assert w.largest == 4 * k.untyped_storage().nbytes()


def test_only_trusted_wrappers_carry_the_mark_exercise_refuses():
    from attnlab import checks

    assert not hasattr(reference.attention, "__attnlab_trusted__")
    assert guard.trusted(reference.attention).__attnlab_trusted__
    assert not hasattr(checks.stand_in(reference.attention), "__attnlab_trusted__")
    ns = {"attention": guard.trusted(reference.attention)}
    with pytest.raises(AssertionError, match="let through with attnlab.guard.trusted"):
        with checks.exercise(ns):
            pass


def test_exercise_refuses_replaced_checkers_and_numbers_must_be_plain():
    from attnlab import checks

    saved = torch.allclose
    torch.allclose = lambda *a, **k: True
    try:
        with pytest.raises(AssertionError, match="torch.allclose"):
            with checks.exercise({}):
                pass
    finally:
        torch.allclose = saved
    with pytest.raises(AssertionError, match="expect_close"):
        with checks.exercise({"expect_close": lambda *a, **k: None}):
            pass

    class Yes(int):
        def __eq__(self, other):
            return True
    with pytest.raises(AssertionError, match="expected a number"):
        checks.number(Yes(1), "bytes")
    assert checks.number(torch.tensor(3), "n") == 3 and type(checks.number(7, "n")) is int


def test_autograd_is_off_in_backward_exercises():
    from attnlab import checks

    x = torch.randn(3, requires_grad=True)
    with pytest.raises(guard.ReferenceForbidden, match="autograd.grad"):
        with checks.exercise({}, no_autograd=True):
            with torch.inference_mode(False), torch.enable_grad():
                torch.autograd.grad((x * x).sum(), x)
