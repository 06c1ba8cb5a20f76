"""Workbook 07's answer key: the online softmax, the merge, and the fused paged MLA decode kernel.

On the CPU the kernel runs in Triton's interpreter (attnlab.lesson.triton_env), in
float32 and float16; tests/test_gpu.py runs it compiled, in bfloat16 too.
"""
from __future__ import annotations

import math

import pytest
import torch

from attnlab import answers
from attnlab.lesson import pages, triton_env

triton, tl = triton_env.load()
kernels = pytest.importorskip("attnlab.answers.kernels") if triton_env.available() else None
needs_triton = pytest.mark.skipif(kernels is None, reason="Triton is not installed (Linux only)")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _problem(B, H, d_c, d_r, lens, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, d_c + d_r, generator=g)
    kv = torch.randn(B, max(lens), d_c + d_r, generator=g)
    return q.to(DEVICE, dtype), kv.to(DEVICE, dtype), torch.tensor(lens, device=DEVICE)


def test_online_softmax_over_blocks_is_the_softmax():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 50, generator=g, dtype=torch.float64) * 30
    s[0, 0, :20] = -math.inf  # a row whose first blocks are all masked
    v = torch.randn(50, 4, generator=g, dtype=torch.float64)
    state = (torch.full((2, 3), -math.inf, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64),
             torch.zeros(2, 3, 4, dtype=torch.float64))
    for j in range(0, 50, 10):
        state = answers.online_softmax_update(*state, s[..., j:j + 10], v[j:j + 10])
    torch.testing.assert_close(state[2] / state[1][..., None], torch.softmax(s, -1) @ v)


def test_merge_partials_is_the_whole_softmax_even_with_an_empty_part():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(5, 40, generator=g, dtype=torch.float64) * 500  # exp(lse) would overflow float64
    v = torch.randn(40, 3, generator=g, dtype=torch.float64)
    cuts = [(0, 9), (9, 9), (9, 40)]
    out = torch.stack([torch.softmax(s[:, a:b], -1) @ v[a:b] if b > a else torch.zeros(5, 3, dtype=torch.float64)
                       for a, b in cuts])
    lse = torch.stack([torch.logsumexp(s[:, a:b], -1) if b > a else torch.full((5,), -math.inf, dtype=torch.float64)
                       for a, b in cuts])
    merged, total = answers.merge_partials(out, lse)
    torch.testing.assert_close(merged, torch.softmax(s, -1) @ v)
    torch.testing.assert_close(total, torch.logsumexp(s, -1))


def test_absorbed_decode_is_workbook_04s_absorbed_step():
    """The kernels' reference, in their [c_KV | k_R] layout, is the same function as mla_absorbed_step."""
    from attnlab.models import MLAConfig

    cfg = MLAConfig("t", d_model=48, n_heads=3, d_latent=16, d_q_latent=24, d_nope=8, d_rope=8, d_v=8, n_layers=1)
    torch.manual_seed(0)
    m = answers.MLAWeights(cfg).double()
    h = torch.randn(2, 9, cfg.d_model, dtype=torch.float64)
    cache = answers.LatentCache()
    answers.mla_absorbed_step(m, h[:, :8], cache)
    want = answers.mla_absorbed_step(m, h[:, 8:], cache)
    c_q, q_c = answers.compress_q(m, h[:, 8:])
    q_r, _ = answers.decoupled_rope(m, h[:, 8:], c_q, *answers.rope_tables(torch.arange(8, 9), cfg.d_rope))
    W_uk = m.W_uk.weight.view(3, cfg.d_nope, cfg.d_latent)
    q = torch.cat([torch.einsum("bhtn,hnc->bhtc", q_c, W_uk), q_r], -1)[:, :, 0]  # (B, H, d_c + d_rope)
    o_lat = answers.absorbed_decode(q, torch.cat([cache.c_kv, cache.k_r], -1), torch.tensor([9, 9]),
                                    cfg.softmax_scale, cfg.d_latent)
    o = torch.einsum("bhc,hvc->bhv", o_lat, m.W_uv.weight.view(3, cfg.d_v, cfg.d_latent)).reshape(2, 1, -1)
    torch.testing.assert_close(m.W_o(o), want)


@needs_triton
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
@pytest.mark.parametrize("page", [16, 64])
def test_paged_kernel_equals_the_absorbed_decode(dtype, tol, page):
    """Shuffled pages, lengths ending mid-page, a head count that does not fill a block, every split count."""
    if DEVICE.type == "cuda" and dtype == torch.float32:
        tol = 1e-4
    q, kv, lengths = _problem(3, 20, 64, 16, [150, 37, 1], dtype)
    pool, table = pages.to_pages(kv, lengths.cpu(), page_size=page, generator=torch.Generator().manual_seed(2))
    want = answers.absorbed_decode(q.double(), kv.double(), lengths, 0.11, 64)
    for splits in (None, 1, 3, 8):
        got = kernels.paged_mla_decode(q, pool, table.to(DEVICE), lengths, 0.11, d_c=64, num_splits=splits)
        assert got.dtype == dtype and got.shape == (3, 20, 64)
        err = ((got.double() - want).norm() / want.norm()).item()
        assert err < tol, (splits, err)


@needs_triton
def test_kernel_at_deepseek_v3s_head_dims_and_on_a_contiguous_cache():
    q, kv, lengths = _problem(2, 16, 512, 64, [96, 70], seed=3)
    kv = torch.cat([kv, torch.randn(2, 32, 576, device=DEVICE)], 1)  # (2, 128, 576): 128 = 2 pages of 64
    pool, table = kernels.pages_of(kv, 64)
    assert pool.data_ptr() == kv.data_ptr()  # a view, not a copy
    got = kernels.paged_mla_decode(q, pool, table, lengths, 192 ** -0.5, num_splits=2)
    want = answers.absorbed_decode(q.double(), kv.double(), lengths, 192 ** -0.5, 512)
    assert ((got.double() - want).norm() / want.norm()).item() < 1e-4


@needs_triton
def test_the_kernel_is_guarded_inside_a_graded_block():
    from attnlab.checks import exercise_in
    from attnlab.guard import ReferenceForbidden

    q, kv, lengths = _problem(1, 16, 16, 16, [16])
    pool, table = kernels.pages_of(kv, 16)
    with pytest.raises(ReferenceForbidden):
        with exercise_in({}):
            kernels.paged_mla_decode(q, pool, table, lengths, 0.1, d_c=16)


def _args():
    q, kv, lengths = _problem(2, 16, 32, 16, [40, 20])
    pool, table = pages.to_pages(kv, lengths.cpu(), page_size=16)
    return dict(q=q, kv_pool=pool, block_table=table.to(DEVICE), lengths=lengths, scale=0.1, d_c=32)


def _bad(**change):
    args = _args()
    for name, value in change.items():
        args[name] = value(args) if callable(value) else value
    return args


BAD = {
    "q is 2-D": (dict(q=lambda a: a["q"][0]), "q must be (B, H, d_c + d_rope)"),
    "pool rows of another width": (dict(kv_pool=lambda a: a["kv_pool"][..., :40].contiguous()), "kv_pool rows have 40"),
    "a table row short": (dict(block_table=lambda a: a["block_table"][:1]), "block_table must have one row per sequence"),
    "d_c not a power of two": (dict(d_c=24), "d_c must be a power of two"),
    "d_c the whole row": (dict(d_c=48), "d_c must be an int from 1 to 47"),
    "a page of 24": (dict(kv_pool=lambda a: a["kv_pool"][:, :12].contiguous()), "page size"),
    "an integer query": (dict(q=lambda a: a["q"].long()), "q must be float32, float16 or bfloat16"),
    "a float16 pool for a float32 query": (dict(kv_pool=lambda a: a["kv_pool"].half()), "kv_pool must have q's dtype"),
    "a float table": (dict(block_table=lambda a: a["block_table"].float()), "block_table must hold integers"),
    "a non-contiguous pool": (dict(kv_pool=lambda a: a["kv_pool"].transpose(0, 1).contiguous().transpose(0, 1)),
                              "kv_pool must be contiguous"),
    "a zero scale": (dict(scale=0.0), "scale must be a positive number"),
    "a NaN scale": (dict(scale=math.nan), "scale must be a positive number"),
    "zero splits": (dict(num_splits=0), "num_splits must be a positive int"),
    "an empty sequence": (dict(lengths=lambda a: torch.tensor([40, 0], device=DEVICE)), "lengths must all be 1 or more"),
    "a length beyond the table": (dict(lengths=lambda a: torch.tensor([40, 70], device=DEVICE)),
                                  "lengths reach 70 tokens, beyond the block table's 3 pages"),
    "a page outside the pool": (dict(block_table=lambda a: a["block_table"] + 100), "block_table points outside the pool"),
    "a negative page": (dict(block_table=lambda a: a["block_table"] - 100), "block_table points outside the pool"),
    "a list for lengths": (dict(lengths=[40, 20]), "lengths must be a torch.Tensor"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_named_before_any_launch(case):
    change, words = BAD[case]
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        pages.check_decode_args(**_bad(**change))


@needs_triton
def test_the_entry_point_checks_before_launching():
    args = _bad(block_table=lambda a: a["block_table"] + 100)
    with pytest.raises(ValueError, match="block_table points outside the pool"):
        kernels.paged_mla_decode(**args)
    if DEVICE.type == "cpu":
        with pytest.raises(ValueError, match="no bfloat16"):
            kernels.paged_mla_decode(**_bad(q=lambda a: a["q"].bfloat16(), kv_pool=lambda a: a["kv_pool"].bfloat16()))


def test_unused_table_entries_past_a_sequences_end_are_not_checked():
    """A server's table rows are as long as the longest sequence: what a short one does not use is free."""
    args = _args()
    args["block_table"][1, 2] = 10_000  # sequence 1 has 20 tokens: pages 0 and 1 only
    pages.check_decode_args(**args)


def test_to_pages_puts_every_token_where_the_table_says():
    kv = torch.randn(3, 100, 32)
    lengths = torch.tensor([100, 5, 64])
    pool, table = pages.to_pages(kv, lengths, page_size=16, generator=torch.Generator().manual_seed(0))
    for b, n in enumerate(lengths.tolist()):
        for t in range(n):
            assert torch.equal(pool[table[b, t // 16], t % 16], kv[b, t])
    assert pool.shape[0] * 16 >= table.numel() * 16 + 64  # spare rows after the pages in use


def test_without_triton_kernels_are_skipped_not_failed(monkeypatch):
    """Where Triton cannot be installed (macOS), a kernel raises TritonMissing, a NotImplementedError."""
    import builtins

    real_import = builtins.__import__

    def no_triton(name, *a, **k):
        if name == "triton" or name.startswith("triton."):
            raise ImportError("No module named 'triton'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_triton)
    monkeypatch.setattr("importlib.import_module", lambda name: no_triton(name))
    fake_triton, fake_tl = triton_env.load()

    @fake_triton.jit
    def kernel(x_ptr, N: fake_tl.constexpr):
        pass

    with pytest.raises(triton_env.TritonMissing, match="Triton is not installed"):
        kernel[(fake_triton.cdiv(4, 2),)](torch.zeros(4), 4)
    assert issubclass(triton_env.TritonMissing, NotImplementedError)


@needs_triton
def test_a_servers_step_skips_the_checks_and_the_read_back_and_computes_the_same():
    q, kv, lengths = _problem(2, 16, 32, 16, [64, 30], seed=4)
    pool, table = kernels.pages_of(kv, 16)
    checked = kernels.paged_mla_decode(q, pool, table, lengths, 0.2, d_c=32, num_splits=2)
    fast = kernels.paged_mla_decode(q, pool, table, lengths, 0.2, d_c=32, num_splits=2, longest=64, check=False)
    torch.testing.assert_close(fast, checked, atol=0, rtol=0)
    if DEVICE.type == "cpu":
        assert kernels.tiles() == "BLOCK_H 16, BLOCK_N 32 (interpreter)"
