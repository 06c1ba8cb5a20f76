"""The paged latent cache of workbook 07, and the checks a decode kernel's entry point makes.

A server does not give each sequence one long tensor: it hands out fixed-size
pages from one pool as sequences grow, and a block table lists each
sequence's pages in order (vLLM's PagedAttention, Kwon et al. 2023,
arXiv 2309.06180; FlashMLA takes pages of 64 tokens). :func:`to_pages` turns a
contiguous cache into such a pool, pages shuffled, as a server's would be.

:func:`check_decode_args` is what the kernels' Python entry points run before
launching anything: a kernel that reads a wrong pointer does not raise, it
reads some other sequence's memory, or crashes the process.
"""
from __future__ import annotations

import math
import os

import torch


def to_pages(kv: torch.Tensor, lengths: torch.Tensor, page_size: int = 64, generator=None, spare_rows: int = 64):
    """A contiguous cache kv (B, T, D) as a pool of pages and a block table, pages in random order.

    Sequence b's first lengths[b] rows are copied into ceil(lengths[b] / page_size)
    pages; the rest of each page, and every page no table entry points to, is
    filled with noise, so that reading past a sequence's end shows. Returns
    (pool (n_pages, page_size, D), block_table (B, max_pages) int32); at least
    ``spare_rows`` rows of unused pages follow the last page in use.
    """
    B, T, D = kv.shape
    per_seq = max(-(-int(n) // page_size) for n in lengths.tolist())
    used = B * per_seq
    n_pages = used + -(-spare_rows // page_size)
    pool = torch.randn(n_pages, page_size, D, generator=generator, dtype=torch.float32).to(kv.device, kv.dtype)
    order = torch.randperm(used, generator=generator).to(kv.device)  # a server's pages are in no order
    table = order.view(B, per_seq).to(torch.int32)  # (B, max_pages)
    for b, n in enumerate(lengths.tolist()):
        for i in range(-(-n // page_size)):
            rows = kv[b, i * page_size:min(n, (i + 1) * page_size)]  # (<= page_size, D)
            pool[table[b, i], :rows.shape[0]] = rows
    return pool, table


def _fail(name: str, why: str):
    raise ValueError(f"{name} {why}")


def _shapes(q, pool, block_table, lengths, d_c):
    for name, x in (("q", q), ("kv_pool", pool), ("block_table", block_table), ("lengths", lengths)):
        if not isinstance(x, torch.Tensor):
            _fail(name, f"must be a torch.Tensor, got {type(x).__name__}")
    for name, x, ndim, layout in (("q", q, 3, "(B, H, d_c + d_rope)"),
                                  ("kv_pool", pool, 3, "(n_pages, page_size, d_c + d_rope)"),
                                  ("block_table", block_table, 2, "(B, pages per sequence)"),
                                  ("lengths", lengths, 1, "(B,)")):
        if x.ndim != ndim:
            _fail(name, f"must be {layout}, got shape {tuple(x.shape)}")
    B, H, D = q.shape
    if pool.shape[2] != D:
        _fail("kv_pool", f"rows have {pool.shape[2]} numbers and q's have {D}: both must be d_c + d_rope")
    for name, x in (("block_table", block_table), ("lengths", lengths)):
        if x.shape[0] != B:
            _fail(name, f"must have one row per sequence of q ({B}), got {x.shape[0]}")
    if isinstance(d_c, bool) or not isinstance(d_c, int) or not 0 < d_c < D:
        _fail("d_c", f"must be an int from 1 to {D - 1} (the rest of each row is the RoPE key), got {d_c!r}")
    for name, size in (("d_c", d_c), ("d_rope (q.shape[2] - d_c)", D - d_c), ("the page size (kv_pool.shape[1])",
                                                                           pool.shape[1])):
        if size < 16 or size & (size - 1):
            _fail(name, f"must be a power of two, 16 or more (the kernel's tiles), got {size}")


def _types(q, pool, block_table, lengths):
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        _fail("q", f"must be float32, float16 or bfloat16, got {q.dtype}")
    if pool.dtype != q.dtype:
        _fail("kv_pool", f"must have q's dtype ({q.dtype}), got {pool.dtype}")
    for name, x in (("block_table", block_table), ("lengths", lengths)):
        if x.dtype not in (torch.int32, torch.int64):
            _fail(name, f"must hold integers (int32), got {x.dtype}")
    for name, x in (("kv_pool", pool), ("block_table", block_table), ("lengths", lengths)):
        if x.device != q.device:
            _fail(name, f"is on {x.device} and q on {q.device}: the kernel reads them all on one device")
    if q.stride(2) != 1 or not pool.is_contiguous():
        _fail("q" if q.stride(2) != 1 else "kv_pool", "must be contiguous in memory (call .contiguous() first)")
    if q.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        _fail("q", "is on the CPU, where Triton runs only in its interpreter: load Triton with "
                   "attnlab.lesson.triton_env.load() before defining or importing kernels")
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        _fail("q", "is bfloat16 on the CPU: Triton's interpreter has no bfloat16 (use float32 or float16)")


def check_decode_args(q, kv_pool, block_table, lengths, scale, d_c, num_splits=None) -> None:
    """Raise ValueError naming the argument unless a paged decode kernel can run on these.

    Shapes, dtypes, devices, contiguity, the page size, and the block table: every
    length within the table, every page a sequence uses inside the pool."""
    _shapes(q, kv_pool, block_table, lengths, d_c)
    _types(q, kv_pool, block_table, lengths)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        _fail("scale", f"must be a positive number, got {scale!r}")
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1):
        _fail("num_splits", f"must be a positive int or None, got {num_splits!r}")
    n_pages, page, _ = kv_pool.shape
    lens = lengths.tolist()
    if any(n < 1 for n in lens):
        _fail("lengths", f"must all be 1 or more (a decoding sequence has at least its new token cached), got {lens}")
    if max(-(-n // page) for n in lens) > block_table.shape[1]:
        _fail("lengths", f"reach {max(lens)} tokens, beyond the block table's {block_table.shape[1]} pages "
                         f"of {page} tokens")
    in_use = torch.arange(block_table.shape[1], device=block_table.device)[None, :] * page \
        < lengths.to(block_table.device)[:, None]  # (B, max_pages): the entries the kernel will read
    pages = block_table[in_use]
    if pages.numel() and (int(pages.min()) < 0 or int(pages.max()) >= n_pages):
        _fail("block_table", f"points outside the pool: it uses pages {int(pages.min())} to {int(pages.max())}, "
                             f"the pool has pages 0 to {n_pages - 1}")
