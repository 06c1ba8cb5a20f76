"""Workbook 07: the course's fused, paged MLA decode kernel, in Triton.

One program per (sequence, block of query heads, split of the context). It
loads its heads' absorbed queries [q_C W_UK | q_R] once, then walks its part of
the sequence's latent cache tile by tile through the block table: scores
against [c_KV | k_R], an online softmax, and the weighted sum of c_KV, all in
registers; the scores never reach memory. Each program writes its split's
normalised output and log-sum-exp, and a second, small kernel combines the
splits as :func:`attnlab.answers.decode.merge_partials` does (flash-decoding).
On a GPU Triton's autotuner picks the tiles per shape (:data:`GPU_TILES`). The
benchmark (workbook 05) times it as its sixth mechanism.

The cache is a pool of pages of ``page_size`` tokens, (n_pages, page_size,
d_c + d_rope); ``block_table[b, i]`` is the page that holds tokens
``i * page_size`` to ``(i + 1) * page_size - 1`` of sequence b (FlashMLA's and
vLLM's layout). A contiguous cache (B, T, D) with T a multiple of the page
size is such a pool already: :func:`pages_of` views it as one.

Needs Triton: import it after :func:`attnlab.lesson.triton_env.load`, which
turns on Triton's interpreter where there is no GPU. Not star-exported by
:mod:`attnlab.answers`, which must import without Triton.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from attnlab.guard import guarded
from attnlab.lesson.pages import check_decode_args

BLOCK_H = 16  # heads per program in the interpreter: tl.dot needs 16 rows at least on a GPU
BLOCK_N = 32  # cached tokens per tile in the interpreter
# On a GPU, Triton times these on the first call of each shape and keeps the fastest. More heads per
# program read each cached row for more heads at once (all 128 of V3's heads share every row), at the
# cost of registers: the accumulator is BLOCK_H x 512 floats.
GPU_TILES = [(16, 32, 4, 2), (32, 32, 4, 2), (64, 32, 8, 2), (64, 64, 8, 2), (64, 16, 4, 3), (128, 16, 8, 2)]


@triton.jit
def _paged_decode_kernel(
    q_ptr, kv_ptr, table_ptr, len_ptr, out_ptr, lse_ptr,
    H, chunk, scale,
    stride_qb, stride_qh, stride_kp, stride_kt, stride_tb, stride_ob, stride_os, stride_oh, stride_lb, stride_ls,
    DC: tl.constexpr, DR: tl.constexpr, PAGE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    b = tl.program_id(0)  # sequence
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)  # (BLOCK_H,)
    split = tl.program_id(2)
    dc, dr = tl.arange(0, DC), tl.arange(0, DR)
    h_ok = heads < H
    q_rows = q_ptr + b * stride_qb + heads[:, None] * stride_qh  # (BLOCK_H, 1)
    q_lat = tl.load(q_rows + dc[None, :], mask=h_ok[:, None], other=0.0)  # (BLOCK_H, DC)
    q_rope = tl.load(q_rows + DC + dr[None, :], mask=h_ok[:, None], other=0.0)  # (BLOCK_H, DR)

    length = tl.load(len_ptr + b)
    start = split * chunk
    end = tl.minimum(start + chunk, length)
    m = tl.full((BLOCK_H,), float("-inf"), tl.float32)  # running max of the scores
    l = tl.zeros((BLOCK_H,), tl.float32)  # running sum of exp(score - m)
    acc = tl.zeros((BLOCK_H, DC), tl.float32)  # running sum of exp(score - m) * c_KV
    for t0 in range(start, end, BLOCK_N):
        t = t0 + tl.arange(0, BLOCK_N)  # (BLOCK_N,) token positions
        t_ok = t < end
        page = tl.load(table_ptr + b * stride_tb + t // PAGE, mask=t_ok, other=0)  # (BLOCK_N,)
        rows = kv_ptr + page.to(tl.int64) * stride_kp + (t % PAGE) * stride_kt  # (BLOCK_N,)
        c = tl.load(rows[:, None] + dc[None, :], mask=t_ok[:, None], other=0.0)  # (BLOCK_N, DC)
        k_r = tl.load(rows[:, None] + DC + dr[None, :], mask=t_ok[:, None], other=0.0)  # (BLOCK_N, DR)
        s = tl.dot(q_lat, tl.trans(c), input_precision=PRECISION)
        s += tl.dot(q_rope, tl.trans(k_r), input_precision=PRECISION)  # (BLOCK_H, BLOCK_N)
        s = tl.where(t_ok[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))  # finite: every tile has a token
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])  # (BLOCK_H, BLOCK_N)
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(c.dtype), c, input_precision=PRECISION)
        m = m_new

    # A split past the sequence's end saw no token: output 0, log-sum-exp -inf, which the merge ignores.
    seen = l > 0
    out = tl.where(seen[:, None], acc / tl.where(seen, l, 1.0)[:, None], 0.0)
    lse = tl.where(seen, m + tl.log(tl.where(seen, l, 1.0)), float("-inf"))
    out_rows = out_ptr + b * stride_ob + split * stride_os + heads[:, None] * stride_oh
    tl.store(out_rows + dc[None, :], out, mask=h_ok[:, None])
    tl.store(lse_ptr + b * stride_lb + split * stride_ls + heads, lse, mask=h_ok)


def default_splits(batch: int, heads: int, longest: int, device: torch.device) -> int:
    """Splits of the context per sequence: enough programs for two waves on the GPU,
    each split at least 256 tokens. One on the CPU, where programs run one after another."""
    if device.type != "cuda":
        return 1
    programs = batch * -(-heads // 64)  # assumes 64 heads per program: unmeasured, GPU_TILES decide
    cores = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(-(-2 * cores // programs), -(-longest // 256)))


_tuned_kernel = None if os.environ.get("TRITON_INTERPRET") == "1" else triton.autotune(
    [triton.Config({"BLOCK_H": h, "BLOCK_N": n}, num_warps=w, num_stages=st) for h, n, w, st in GPU_TILES],
    key=["H", "chunk", "DC", "DR", "PAGE"])(_paged_decode_kernel)


def tiles() -> str:
    """The tiles the last GPU call ran with (Triton's choice), or the interpreter's."""
    if _tuned_kernel is None or _tuned_kernel.best_config is None:
        return f"BLOCK_H {BLOCK_H}, BLOCK_N {BLOCK_N} (interpreter)"
    c = _tuned_kernel.best_config
    return f"BLOCK_H {c.kwargs['BLOCK_H']}, BLOCK_N {c.kwargs['BLOCK_N']}, {c.num_warps} warps, {c.num_stages} stages"


@triton.jit
def _combine_kernel(part_ptr, lse_ptr, o_ptr, S,
                    stride_pb, stride_ps, stride_ph, stride_lb, stride_ls, stride_ob, stride_oh,
                    DC: tl.constexpr, BLOCK_S: tl.constexpr):
    """One (sequence, head): the splits' outputs weighted by exp(lse - max lse) (flash-decoding's combine)."""
    b, h = tl.program_id(0), tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    s_ok = s < S
    lse = tl.load(lse_ptr + b * stride_lb + s * stride_ls + h, mask=s_ok, other=float("-inf"))  # (BLOCK_S,)
    w = tl.exp(lse - tl.max(lse, axis=0))  # finite max: a sequence has a token, so some split saw one
    dc = tl.arange(0, DC)
    parts = tl.load(part_ptr + b * stride_pb + s[:, None] * stride_ps + h * stride_ph + dc[None, :],
                    mask=s_ok[:, None], other=0.0)  # (BLOCK_S, DC)
    o = tl.sum(parts * w[:, None], axis=0) / tl.sum(w, axis=0)  # (DC,)
    tl.store(o_ptr + b * stride_ob + h * stride_oh + dc, o.to(o_ptr.dtype.element_ty))


@guarded
def paged_mla_decode(q: torch.Tensor, kv_pool: torch.Tensor, block_table: torch.Tensor, lengths: torch.Tensor,
                     scale: float, d_c: int = 512, num_splits: int | None = None, longest: int | None = None,
                     check: bool = True) -> torch.Tensor:
    """One decode step of absorbed MLA over a paged latent cache, fused: (B, H, d_c), in q's dtype.

    q (B, H, d_c + d_rope): each head's [q_C W_UK | q_R]; kv_pool (n_pages, page_size,
    d_c + d_rope): [c_KV | k_R] per token; block_table (B, max_pages): the pages of
    each sequence in order; lengths (B,): how many tokens each sequence has cached.
    ``num_splits`` splits each sequence's context (default: :func:`default_splits`).

    A server's decode loop knows ``longest`` (the largest of ``lengths``) and has checked
    its tables once: with both, a step neither reads ``lengths`` back nor checks, so it
    does not wait for the GPU and can be captured in a CUDA graph. Only then is
    ``check=False`` safe: the kernel reads whatever memory a bad table points to.
    """
    if check:
        check_decode_args(q, kv_pool, block_table, lengths, scale, d_c, num_splits)
    B, H, D = q.shape
    longest = int(lengths.max()) if longest is None else longest
    splits = num_splits or default_splits(B, H, longest, q.device)
    chunk = -(-longest // splits)  # tokens per split
    part = torch.empty(B, splits, H, d_c, device=q.device, dtype=torch.float32)  # each split's output
    lse = torch.empty(B, splits, H, device=q.device, dtype=torch.float32)  # and its log-sum-exp
    table = block_table.to(torch.int32)
    lens = lengths.to(torch.int32)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"  # fp32 stays fp32; tf32 is unused for fp16/bf16
    args = (q, kv_pool, table, lens, part, lse, H, chunk, float(scale),
            q.stride(0), q.stride(1), kv_pool.stride(0), kv_pool.stride(1), table.stride(0),
            part.stride(0), part.stride(1), part.stride(2), lse.stride(0), lse.stride(1))
    dims = dict(DC=d_c, DR=D - d_c, PAGE=kv_pool.shape[1], PRECISION=precision)
    if _tuned_kernel is None or q.device.type != "cuda":
        _paged_decode_kernel[(B, triton.cdiv(H, BLOCK_H), splits)](*args, **dims, BLOCK_H=BLOCK_H, BLOCK_N=BLOCK_N)
    else:
        _tuned_kernel[lambda meta: (B, triton.cdiv(H, meta["BLOCK_H"]), splits)](*args, **dims)
    o = torch.empty(B, H, d_c, device=q.device, dtype=q.dtype)
    _combine_kernel[(B, H)](part, lse, o, splits, part.stride(0), part.stride(1), part.stride(2),
                            lse.stride(0), lse.stride(1), o.stride(0), o.stride(1),
                            DC=d_c, BLOCK_S=max(2, triton.next_power_of_2(splits)))
    return o


def pages_of(kv: torch.Tensor, page_size: int = 64):
    """A contiguous cache (B, T, D), T a multiple of ``page_size``, viewed as a pool
    (B * T / page_size, page_size, D) and its block table (B, T / page_size): no copy."""
    B, T, D = kv.shape
    if T % page_size:
        raise ValueError(f"kv has {T} tokens per sequence, not a multiple of the page size {page_size}")
    per = T // page_size
    table = torch.arange(B * per, device=kv.device, dtype=torch.int32).view(B, per)
    return kv.reshape(B * per, page_size, D), table
