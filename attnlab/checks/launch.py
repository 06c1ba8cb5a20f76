"""How workbook 07's tests launch a learner's Triton kernels: the course's own launchers.

A test that called the notebook's wrapper would grade whatever the wrapper does, and a
wrapper rewritten in PyTorch would pass without a kernel. These launch the learner's
kernel itself, after checking that it is one (a function decorated with ``@triton.jit``),
on outputs filled with NaN, so that an element no program writes shows; and they
return what the kernel wrote, each split's output and log-sum-exp apart, for the test to
check and merge.
"""
from __future__ import annotations

import math

import torch

from attnlab.checks.failure import CheckFailed
from attnlab.lesson import pages

BLOCK_H = 16  # heads per program, as the workbook's wrappers launch them


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _kernel(kernel, name: str):
    """``kernel`` if it is a Triton kernel (or Triton's stand-in where it is not installed); else fail."""
    from attnlab.lesson import triton_env

    if isinstance(kernel, triton_env._Missing):
        return kernel  # launching it raises TritonMissing: the test is skipped
    from triton.runtime.jit import KernelInterface

    if not isinstance(kernel, KernelInterface) or not type(kernel).__module__.startswith("triton."):
        raise CheckFailed(f"{name} must be a Triton kernel (a function decorated with @triton.jit), "
                          f"got {type(kernel).__name__}: the exercise is the kernel.")
    return kernel


def scores(kernel, q: torch.Tensor, k: torch.Tensor, scale: float, block_n: int = 16) -> torch.Tensor:
    """Launch ``scores_kernel`` for q (M, D) and k (N, D): the (M, N) float32 scores it wrote."""
    M, D = q.shape
    N = k.shape[0]
    s = torch.full((M, N), math.nan, device=q.device)
    _kernel(kernel, "scores_kernel")[(_cdiv(N, block_n),)](
        q, k, s, M, N, scale, q.stride(0), k.stride(0), s.stride(0),
        D=D, BLOCK_M=max(16, 1 << (M - 1).bit_length()), BLOCK_N=block_n)
    return s


def _parts(B: int, splits: int, H: int, d_c: int, device):
    out = torch.full((B, splits, H, d_c), math.nan, device=device)  # (B, S, H, d_c)
    lse = torch.full((B, splits, H), math.nan, device=device)  # (B, S, H)
    return out, lse


def decode_parts(kernel, q, kv, lengths, scale: float, d_c: int, num_splits: int = 1, block_n: int = 16):
    """Launch ``mla_decode_kernel`` on a contiguous cache kv (B, T, d_c + d_rope): each split's
    output (B, S, H, d_c) and log-sum-exp (B, S, H), as the kernel wrote them."""
    B, H, D = q.shape
    chunk = _cdiv(int(lengths.max()), num_splits)  # tokens per split
    out, lse = _parts(B, num_splits, H, d_c, q.device)
    _kernel(kernel, "mla_decode_kernel")[(B, _cdiv(H, BLOCK_H), num_splits)](
        q, kv, lengths.to(torch.int32), out, lse, H, chunk, scale,
        q.stride(0), q.stride(1), kv.stride(0), kv.stride(1),
        out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
        DC=d_c, DR=D - d_c, BLOCK_H=BLOCK_H, BLOCK_N=block_n)
    return out, lse


def paged_decode_parts(kernel, q, kv_pool, block_table, lengths, scale: float, d_c: int, num_splits: int = 1,
                       block_n: int = 16):
    """Launch ``paged_mla_decode_kernel`` on a pool of pages (n_pages, PAGE, d_c + d_rope) and its block
    table (B, max_pages), after checking every argument: each split's output and log-sum-exp."""
    pages.check_decode_args(q, kv_pool, block_table, lengths, scale, d_c, num_splits)
    B, H, D = q.shape
    chunk = _cdiv(int(lengths.max()), num_splits)
    out, lse = _parts(B, num_splits, H, d_c, q.device)
    table = block_table.to(torch.int32)
    _kernel(kernel, "paged_mla_decode_kernel")[(B, _cdiv(H, BLOCK_H), num_splits)](
        q, kv_pool, table, lengths.to(torch.int32), out, lse, H, chunk, scale,
        q.stride(0), q.stride(1), kv_pool.stride(0), kv_pool.stride(1), table.stride(0),
        out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
        DC=d_c, DR=D - d_c, PAGE=kv_pool.shape[1], BLOCK_H=BLOCK_H, BLOCK_N=block_n)
    return out, lse


def merged(out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """The splits a launcher returned, merged by the course's merge_partials: (B, H, d_c).

    Call it outside the graded block, where the course's answers may run."""
    from attnlab import answers

    return answers.merge_partials(out.transpose(0, 1), lse.transpose(0, 1))[0]  # (S, B, H, .) -> (B, H, d_c)
