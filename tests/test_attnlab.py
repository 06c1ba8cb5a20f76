"""The helper package: reference implementations, bad input, the guard, the checks."""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from attnlab import answers, checks, guard
from attnlab.lesson import cache


def rand(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype)


# ------------------------------------------------------------- reference code
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_torch(causal):
    q, k, v = rand(2, 3, 6, 8), rand(2, 3, 6, 8), rand(2, 3, 6, 5)
    torch.testing.assert_close(answers.attention(q, k, v, causal), F.scaled_dot_product_attention(q, k, v, is_causal=causal))


def test_attention_broadcasts_a_single_kv_head():
    q, k, v = rand(2, 4, 3, 8), rand(2, 1, 5, 8), rand(2, 1, 5, 6)
    want = answers.attention(q, k.expand(2, 4, 5, 8), v.expand(2, 4, 5, 6), True)
    torch.testing.assert_close(answers.attention(q, k, v, True), want)


def test_causal_mask_is_bottom_right_aligned():
    assert answers.causal_mask(2, 5).tolist() == [[True] * 4 + [False], [True] * 5]


def test_heads_round_trip_and_layout():
    x = rand(2, 4, 12)
    h = answers.split_heads(x, 3)
    assert h.shape == (2, 3, 4, 4)
    torch.testing.assert_close(h[:, 1], x[..., 4:8])  # head 1 takes features 4..7
    torch.testing.assert_close(answers.merge_heads(h), x)


def test_attention_backward_matches_autograd():
    q, k, v = (rand(2, 2, 5, 4).requires_grad_() for _ in range(3))
    dout = rand(2, 2, 3, 4)
    qq = q[:, :, -3:].detach().requires_grad_()
    want = torch.autograd.grad(answers.attention(qq, k, v, True), (qq, k, v), dout)
    got = answers.attention_backward(qq.detach(), k.detach(), v.detach(), dout, True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_mha_step_with_cache_equals_full_forward():
    x = rand(2, 7, 12)
    W = [rand(12, 12) for _ in range(4)]
    want = answers.mha_forward(x, *W, n_heads=3)
    c = answers.KVCache()
    outs = [answers.mha_step(x[:, :4], *W, n_heads=3, cache=c)]
    outs += [answers.mha_step(x[:, t:t + 1], *W, n_heads=3, cache=c) for t in range(4, 7)]
    torch.testing.assert_close(torch.cat(outs, dim=1), want)
    assert len(c) == 7


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: answers.attention(rand(5, 8), rand(5, 8), rand(5, 8)), ["at least 3", "(B, H, T, D)"]),
        (lambda: answers.attention(rand(2, 3, 5, 8), rand(3, 5, 8), rand(3, 5, 8)), ["same number of dimensions"]),
        (lambda: answers.attention(rand(1, 2, 3, 8), rand(1, 2, 3, 4), rand(1, 2, 3, 4)), ["q.shape[-1]", "k.shape[-1]"]),
        (lambda: answers.attention(rand(1, 2, 3, 4), rand(1, 3, 3, 4), rand(1, 3, 3, 4)), ["(B, H, ...)", "equal or 1"]),
        (lambda: answers.attention(torch.ones(1, 1, 2, 2, dtype=torch.long), rand(1, 1, 2, 2), rand(1, 1, 2, 2)), ["q", "floating-point"]),
        (lambda: answers.attention([[1.0]], rand(1, 1, 2, 2), rand(1, 1, 2, 2)), ["q", "torch.Tensor", "list"]),
        (lambda: answers.split_heads(rand(2, 3, 10), 4), ["n_heads=4", "divisible"]),
        (lambda: answers.split_heads(rand(2, 3, 8), 0), ["n_heads", "positive int"]),
        (lambda: answers.merge_heads(rand(2, 3, 8)), ["x", "(B, H, T, D)"]),
        (lambda: answers.causal_mask(5, 2), ["Tq", "Tk"]),
        (lambda: answers.mha_forward(rand(1, 2, 8), rand(8, 6), rand(8, 8), rand(8, 8), rand(8, 8), 2), ["W_q.shape[1]"]),
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
def test_forbidden_reference_raises_and_admitted_trusted_gets_through():
    q = rand(1, 1, 2, 2)
    admitted, other = guard.trusted(answers.attention), guard.trusted(answers.attention)
    with guard.forbidden(trust=[admitted]):
        with pytest.raises(guard.ReferenceForbidden, match="switched off"):
            answers.attention(q, q, q)
        torch.testing.assert_close(admitted(q, q, q), F.scaled_dot_product_attention(q, q, q))
        with pytest.raises(guard.ReferenceForbidden):  # a wrapper the block did not admit, as a learner would make
            other(q, q, q)
        with pytest.raises(guard.ReferenceForbidden):
            guard.trusted(answers.attention)(q, q, q)
    answers.attention(q, q, q)  # allowed again outside


def test_exercise_swaps_stand_ins_and_restores_everything():
    sdpa = F.scaled_dot_product_attention

    def mine(*args):
        return "learner's"

    ns = {"attention": mine}
    with checks.exercise_in(ns, stand_ins=["attention", "split_heads"]):
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
    with checks.exercise_in({}, no_autograd=True):
        warnings.warn("a learner's harmless warning")
        with torch.enable_grad():
            with pytest.raises(RuntimeError):
                torch.autograd.grad((x * 2).sum(), x)
    assert not recwarn.list


def test_exercise_restores_after_an_exception():
    sdpa = F.scaled_dot_product_attention
    with pytest.raises(KeyError):
        with checks.exercise_in({}):
            raise KeyError
    assert F.scaled_dot_product_attention is sdpa
    answers.attention(rand(1, 1, 2, 2), rand(1, 1, 2, 2), rand(1, 1, 2, 2))


# ------------------------------------------------------------- the checks
def test_expect_close_names_the_mistake():
    q, k, v = rand(1, 2, 4, 8), rand(1, 2, 4, 8), rand(1, 2, 4, 8)
    want = answers.attention(q, k, v, True)
    no_scale = torch.softmax((q @ k.transpose(-2, -1)).masked_fill(~answers.causal_mask(4, 4), -math.inf), -1) @ v
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
        answers.attention(q, q, q, True)  # uses causal_mask and attention_weights inside
        with pytest.raises(guard.ReferenceForbidden):
            answers.causal_mask(3, 3)
        with pytest.raises(guard.ReferenceForbidden):
            answers.split_heads(rand(1, 3, 4), 2)


def test_repeat_kv_interleaves_heads():
    x = torch.arange(3.0).view(1, 3, 1, 1).expand(2, 3, 4, 5)  # K/V head g holds the value g
    out = answers.repeat_kv(x, 2)
    assert out.shape == (2, 6, 4, 5)
    assert out[0, :, 0, 0].tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("causal", [False, True])
def test_gqa_attention_equals_attention_on_repeated_heads(causal):
    q, k, v = rand(2, 6, 3, 4), rand(2, 2, 5, 4), rand(2, 2, 5, 7)
    want = answers.attention(q, answers.repeat_kv(k, 3), answers.repeat_kv(v, 3), causal)
    torch.testing.assert_close(answers.gqa_attention(q, k, v, causal), want)


def test_gqa_forward_special_cases_and_cache():
    x = rand(2, 6, 16)
    Wq, Wo = rand(16, 16), rand(16, 16)
    Wk, Wv = rand(16, 16), rand(16, 16)
    # n_kv_heads = n_heads is MHA
    torch.testing.assert_close(answers.gqa_forward(x, Wq, Wk, Wv, Wo, 4, 4), answers.mha_forward(x, Wq, Wk, Wv, Wo, 4))
    # mean-pooled projections and a cache: prefill + decode equal the full pass
    Wk2, Wv2 = answers.mean_pool_heads(Wk, 4, 2), answers.mean_pool_heads(Wv, 4, 2)
    assert Wk2.shape == (8, 16)
    torch.testing.assert_close(Wk2[:4], (Wk[:4] + Wk[4:8]) / 2)
    full = answers.gqa_forward(x, Wq, Wk2, Wv2, Wo, 4, 2)
    c = answers.KVCache()
    steps = [answers.gqa_forward(x[:, :3], Wq, Wk2, Wv2, Wo, 4, 2, cache=c)]
    steps += [answers.gqa_forward(x[:, t:t + 1], Wq, Wk2, Wv2, Wo, 4, 2, cache=c) for t in range(3, 6)]
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
        answers.repeat_kv(k, 4)
    assert w.largest == 4 * k.untyped_storage().nbytes()


def test_only_trusted_wrappers_carry_the_mark_exercise_refuses():
    from attnlab import checks

    assert not hasattr(answers.attention, "__attnlab_trusted__")
    assert guard.trusted(answers.attention).__attnlab_trusted__
    assert not hasattr(checks.stand_in(answers.attention), "__attnlab_trusted__")
    ns = {"attention": guard.trusted(answers.attention)}
    with pytest.raises(AssertionError, match="let through with attnlab.guard.trusted"):
        with checks.exercise_in(ns):
            pass


def test_exercise_refuses_replaced_checkers_and_numbers_must_be_plain():
    from attnlab import checks

    saved = torch.allclose
    torch.allclose = lambda *a, **k: True
    try:
        with pytest.raises(AssertionError, match="torch.allclose"):
            with checks.exercise_in({}):
                pass
    finally:
        torch.allclose = saved
    with pytest.raises(AssertionError, match="expect_close"):
        with checks.exercise_in({"expect_close": lambda *a, **k: None}):
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
        with checks.exercise_in({}, no_autograd=True):
            with torch.inference_mode(False), torch.enable_grad():
                torch.autograd.grad((x * x).sum(), x)


# ------------------------------------------------------------- no way around the guard
# Each route a learner's code could take around the guard, tried in this process.
Q = rand(1, 2, 4, 8)
W8 = torch.ones(8, dtype=torch.float64)


def _graded(fn, **kw):
    """Run ``fn`` as a learner's code inside exercise(); return its result."""
    with checks.exercise_in({}, **kw):
        return fn()


def test_a_guarded_function_leads_to_neither_the_original_nor_the_state():
    import inspect

    f = answers.attention
    assert guard.is_guarded(f) and not hasattr(f, "__wrapped__") and f.__closure__ is None
    assert set(f.__globals__) <= {"__name__", "__builtins__"}  # no ledger, no original behind it
    assert str(inspect.signature(f)).startswith("(q: 'torch.Tensor'") and "Scaled dot-product" in f.__doc__
    with pytest.raises(OSError):  # no source to read through the function either
        inspect.getsource(f)


def test_the_guard_and_the_checks_refuse_to_be_reloaded():
    import importlib

    for module in (guard, checks):
        with pytest.raises(ImportError, match="cannot be reloaded"):
            importlib.reload(module)
    q = rand(1, 1, 2, 2)
    with pytest.raises(guard.ReferenceForbidden):  # the one ledger still holds
        _graded(lambda: answers.attention(q, q, q))


def test_emptying_the_ledger_lifts_no_ban_and_fails_the_check():
    def cheat():
        guard._LEDGER.clear()  # the torch modes still carry the ban
        return answers.attention(Q, Q, Q)

    with pytest.raises(guard.ReferenceForbidden):
        _graded(cheat)
    with pytest.raises(checks.CheckFailed, match="changed the course's guard"):
        _graded(lambda: guard._LEDGER.clear())
    _graded(lambda: None)  # and nothing is left behind


def test_a_ban_left_behind_fails_one_check_then_is_cleared():
    guard._LEDGER.append(guard._Block((frozenset({"attention"}), ())))
    with pytest.raises(checks.CheckFailed, match="left in a state no test leaves it in"):
        _graded(lambda: None)
    assert guard.anomalies() == []
    _graded(lambda: None)


def test_only_the_stand_ins_the_test_admits_are_trusted():
    smuggled = checks.stand_in(answers.attention)  # made by a learner, e.g. as a default argument
    with pytest.raises(guard.ReferenceForbidden):
        _graded(lambda: smuggled(Q, Q, Q))
    with pytest.raises(guard.ReferenceForbidden):
        _graded(lambda: guard.trusted(answers.split_heads)(rand(1, 2, 4), 2))
    ns = {}
    with checks.exercise_in(ns, stand_ins=["attention"]):
        got = ns["attention"](Q, Q, Q, True)  # the test's own stand-in is admitted
    torch.testing.assert_close(got, F.scaled_dot_product_attention(Q, Q, Q, is_causal=True))


def test_the_original_behind_a_guarded_function_cannot_call_the_others():
    raw = next(c for c in answers.attention.__code__.co_consts if callable(c) and c.__name__ == "attention")
    with pytest.raises(guard.ReferenceForbidden, match="attention_weights"):  # a learner's frame breaks the trust
        _graded(lambda: raw(Q, Q, Q))


ROUTES = {
    "torch.ops.aten math": lambda: torch.ops.aten._scaled_dot_product_attention_math(Q, Q, Q)[0],
    "torch.ops overload": lambda: torch.ops.aten._scaled_dot_product_attention_math.default(Q, Q, Q)[0],
    "torch._C._nn": lambda: torch._C._nn.scaled_dot_product_attention(Q, Q, Q),
    "torch._C._VariableFunctions": lambda: torch._C._VariableFunctions._scaled_dot_product_attention_math(Q, Q, Q),
    "flash kernel": lambda: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(Q.float(), Q.float(), Q.float()),
    "aten.rms_norm": lambda: torch.ops.aten.rms_norm(Q, [8], W8),
    "nn.RMSNorm": lambda: torch.nn.RMSNorm(8, dtype=torch.float64)(Q),
}


def _with(ctx, fn):
    def run():
        with ctx():
            return fn()
    return run


SWITCHES = {
    "DisableTorchFunction + sdpa": _with(torch._C.DisableTorchFunction, lambda: F.scaled_dot_product_attention(Q, Q, Q)),
    "DisableTorchFunction + rms_norm": _with(torch._C.DisableTorchFunction, ROUTES["aten.rms_norm"]),
    "DisableTorchFunction + math": _with(torch._C.DisableTorchFunction, ROUTES["torch.ops.aten math"]),
    "DisableTorchFunctionSubclass": _with(torch._C.DisableTorchFunctionSubclass, ROUTES["nn.RMSNorm"]),
    "_pop_mode_temporarily": _with(torch.overrides._pop_mode_temporarily, ROUTES["aten.rms_norm"]),
    "_DisableTorchDispatch": _with(torch._C._DisableTorchDispatch, ROUTES["aten.rms_norm"]),
    "dispatch mode popped": _with(torch.utils._python_dispatch._pop_mode_temporarily, ROUTES["aten.rms_norm"]),
}


@pytest.mark.parametrize("route", [*ROUTES, *SWITCHES])
def test_torch_answers_are_off_at_every_level_and_the_switches_are_caught(route):
    with pytest.raises((guard.ReferenceForbidden, checks.CheckFailed)):
        _graded({**ROUTES, **SWITCHES}[route])
    _graded(lambda: torch.softmax(Q, -1))  # and the next exercise runs normally


def test_a_torch_mode_popped_and_not_restored_fails_the_check_and_is_repaired():
    with pytest.raises(checks.CheckFailed, match="popped"):
        _graded(lambda: torch.overrides._pop_mode())
    assert torch._C._len_torch_function_stack() == 0 and torch._C._len_torch_dispatch_stack() == 0
    _graded(lambda: None)


@pytest.mark.parametrize("route", ["softmax backward", "torch.func.grad", "torch.func.vjp"])
def test_autograd_in_disguise_is_off_where_backward_is_by_hand(route):
    x = torch.randn(3)
    fn = {"softmax backward": lambda: torch.ops.aten._softmax_backward_data(x, x, 0, torch.float32),
          "torch.func.grad": lambda: torch.func.grad(lambda t: (t * t).sum())(x),
          "torch.func.vjp": lambda: torch.func.vjp(lambda t: t * t, x)[1](x)}[route]
    with pytest.raises(guard.ReferenceForbidden):
        _graded(fn, no_autograd=True)


def test_the_answers_copied_elsewhere_in_the_package_are_guarded_too():
    from attnlab.lesson import bench, charlm

    cfg = bench.choose("cpu", quick=True)
    layer = bench.Layer("MHA", cfg, 4, torch.Generator())
    cos, sin = answers.rope_tables(torch.arange(4), 8)
    for copy_ in (lambda: charlm._rms(Q, W8), lambda: charlm._rope(Q, cos, sin), lambda: layer.decode(),
                  lambda: cfg.elements_per_token("MHA")):
        copy_()  # they work outside a graded block
        with pytest.raises(guard.ReferenceForbidden):
            _graded(copy_)


def test_replacing_the_answer_key_or_a_comparison_during_the_call_fails_before_the_test_compares():
    saved = answers.attention, torch.allclose
    try:
        with pytest.raises(checks.CheckFailed, match="attnlab.answers.attention"):
            _graded(lambda: setattr(answers, "attention", lambda *a, **k: 0))
        answers.attention = saved[0]
        with pytest.raises(checks.CheckFailed, match="torch.allclose"):
            _graded(lambda: setattr(torch, "allclose", lambda *a, **k: True))
    finally:
        answers.attention, torch.allclose = saved
    _graded(lambda: None)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the refusals, in the threads
def test_a_thread_started_in_the_block_runs_under_the_same_bans():
    import threading

    def in_a_thread(fn):
        def run():
            out = []
            t = threading.Thread(target=lambda: out.append(fn()))
            t.start()
            t.join()
            return out
        return run

    assert _graded(in_a_thread(lambda: F.scaled_dot_product_attention(Q, Q, Q))) == []  # refused in the thread
    assert len(_graded(in_a_thread(lambda: torch.softmax(Q, -1)))) == 1  # honest work in a thread is fine
    with pytest.raises(checks.CheckFailed, match="in a thread"):
        _graded(in_a_thread(SWITCHES["DisableTorchFunction + rms_norm"]))
    assert threading._start_new_thread is __import__("_thread").start_new_thread  # put back


def test_public_helpers_refuse_bad_arguments_by_name():
    """What torch would promote, clamp or take for True is refused with the argument's name."""
    from attnlab import answers
    from attnlab.lesson import cache, widgets

    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="q, k, v must share one dtype"):
        answers.attention(q, q.double(), q)
    with pytest.raises(ValueError, match="causal must be True or False"):
        answers.attention(q, q, q, causal="yes")
    with pytest.raises(ValueError, match="causal must be True or False"):
        answers.gqa_attention(q, q, q, causal=1)
    with pytest.raises(ValueError, match="eps must be a number >= 0"):
        answers.rms_norm(q, torch.ones(4), eps=-1e-6)
    with pytest.raises(ValueError, match="x, weight must share one dtype"):
        answers.rms_norm(q.double(), torch.ones(4))
    with pytest.raises(ValueError, match="d must be an int from 8 to 256 in steps of 8, got 7"):
        widgets.RopeRotation(d=7)
    with pytest.raises(ValueError, match="length must be an int from 8 to 256"):
        widgets.RopeScores(length=0)
    with pytest.raises(ValueError, match="mechanism must be one of"):
        cache.mechanism_elements_per_token("mha", 1, 1, 1, 1, 1, 1)
    assert cache.format_bytes(1536) == "1.50 KiB"
    assert cache.format_bytes(2**60 * 3) == "3.00 EiB"
    assert cache.format_bytes(1e30) == "8.67e+11 EiB"


def test_a_failed_check_shows_its_sentence_and_the_notebook_lines_not_the_package(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_cell("import torch\nfrom attnlab.checks import exercise, expect_close\n"
                   "def double(x):\n    return x + x + 1")
    shell.run_cell("x = torch.zeros(3)\nwith exercise('attention'):\n    got = double(x)\n"
                   "expect_close(got, 2 * x, 'double(x)')")
    shell.run_cell("def broken(x):\n    return {}['key']")
    shell.run_cell("with exercise('attention', case='broken with 3 zeros'):\n    broken(x)")
    out = capsys.readouterr().out
    assert out.lstrip().startswith("\x1b[31mCheckFailed\x1b[39m: double(x) is wrong"), out
    assert "----> expect_close(got, 2 * x, 'double(x)')" in out
    assert "CheckFailed\x1b[39m: broken with 3 zeros: your code raised KeyError: 'key'" in out
    assert ", in broken\n----> return {}['key']" in out, out
    assert "attnlab" + "/checks/" not in out and "Traceback" not in out, out


def test_an_error_in_the_learners_torch_code_shows_their_lines_only(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_cell("import torch\nimport torch.nn.functional as F\nfrom attnlab.checks import exercise\n"
                   "def merge(x):\n    return x.transpose(1, 2).view(2, -1)\n"
                   "def att(q):\n    return F.scaled_dot_product_attention(q, q, q)")
    shell.run_cell("x = torch.randn(2, 3, 4)\nwith exercise('merge_heads'):\n    merge(x)")
    shell.run_cell("with exercise('attention'):\n    att(x)")
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # IPython's colours
    assert "view size is not compatible" in out and "scaled_dot_product_attention is switched off" in out, out
    assert "in merge(x)" in out and "in att(q)" in out, out
    for inside in ("attnlab/checks/", "torch/_ops.py", "_python_dispatch.py", "torch/overrides.py"):
        assert inside not in out, f"{inside} in the learner's traceback:\n{out}"


def _deepseek_v3_freqs(dim, base, factor, original_len, beta_fast, beta_slow):
    """DeepSeek-V3's inference/model.py precompute_freqs_cis, its frequencies, transcribed (float32 as there)."""
    def correction_dim(rotations):
        return dim * math.log(original_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    smooth = 1 - torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    return freqs / factor * (1 - smooth) + freqs * smooth


@pytest.mark.parametrize("args", [(64, 10000.0, 40.0, 4096, 32.0, 1.0), (64, 50000.0, 64.0, 4096, 1.0, 1.0),
                                  (128, 500000.0, 8.0, 8192, 32.0, 1.0), (8, 10000.0, 4.0, 4, 1.0, 1.0)])
def test_yarn_frequencies_are_deepseeks(args):
    torch.testing.assert_close(answers.yarn_frequencies(*args), _deepseek_v3_freqs(*args), atol=1e-7, rtol=1e-6)


def test_the_released_softmax_scales():
    from attnlab.models import MODELS

    # DeepSeek-V3: 192 ** -0.5 * (0.1 * ln 40 + 1) ** 2; DeepSeek-V2's mscale_all_dim is 0.707.
    assert MODELS["DeepSeek-V3"].softmax_scale == pytest.approx(0.13523, abs=1e-5)
    assert MODELS["DeepSeek-V2"].softmax_scale == pytest.approx(192 ** -0.5 * (0.0707 * math.log(40) + 1) ** 2)
    assert MODELS["Llama-3-8B"].softmax_scale == 128 ** -0.5
    assert answers.yarn_softmax_scale(192, 1.0) == 192 ** -0.5


@pytest.mark.parametrize("call, words", [
    (lambda: answers.yarn_frequencies(64, factor=0.5), "factor"),
    (lambda: answers.yarn_frequencies(64, beta_fast=1.0, beta_slow=32.0), "beta_fast"),
    (lambda: answers.yarn_frequencies(63), "even"),
    (lambda: answers.yarn_softmax_scale(192, 40, mscale=-1), "mscale"),
    (lambda: answers.yarn_softmax_scale(0, 40), "d_qk"),
])
def test_yarn_refuses_bad_input_by_name(call, words):
    with pytest.raises(ValueError, match=words):
        call()
