"""How workbook 07's tests launch a learner's Triton kernels: the course's own launchers.

A test that called the notebook's wrapper would grade whatever the wrapper does, and a
wrapper rewritten in PyTorch would pass without a kernel. These launch the learner's
kernel itself, after checking that it is one (a function decorated with ``@triton.jit``),
and return what it wrote, each split's output and log-sum-exp apart, for the test to
check and merge.

A kernel's pointer arithmetic is unchecked: an unmasked load past the end reads whatever
lies there, an unmasked store writes over it, and either can kill the process. So every
tensor a kernel reads is handed over inside a fence of NaN (its gaps, for a strided view,
and PAD elements after it), which turns a read outside it into NaN in the output; every
output is filled with NaN, which shows an element no program wrote, and followed by a
fence of a value no kernel writes, which names a store past the end.
"""
from __future__ import annotations

import math

import torch

from attnlab.checks.failure import CheckFailed
from attnlab.lesson import pages

BLOCK_H = 16  # heads per program, as the workbook's wrappers launch them
PAD = 4096  # elements of NaN after each tensor a kernel gets
SENTINEL = -1.5e38  # what the fence after an output holds


def _fenced(x: torch.Tensor) -> torch.Tensor:
    """x, laid out as it is (the same strides), in a buffer of NaN that also fills its gaps and PAD after it."""
    span = 1 + sum((n - 1) * st for n, st in zip(x.shape, x.stride()))
    y = torch.full((span + PAD,), math.nan, dtype=x.dtype, device=x.device).as_strided(x.shape, x.stride())
    y.copy_(x)
    return y


def _output(*shape, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A float32 output of ``shape`` filled with NaN, and a fence after it that no kernel would write
    (not NaN: a stray store of NaN, read from an input's fence, must show too)."""
    n = math.prod(shape)
    buf = torch.full((n + PAD,), math.nan, device=device)
    buf[n:] = SENTINEL
    return buf[:n].view(shape), buf[n:]


def _check_fence(fence: torch.Tensor, name: str, output: str) -> None:
    if not (fence == SENTINEL).all():
        raise CheckFailed(f"{name} wrote past the end of {output}: mask its stores (tl.store(..., mask=...)) "
                          "to the elements that exist.")


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
    s, fence = _output(M, N, device=q.device)
    q, k = _fenced(q), _fenced(k)
    _kernel(kernel, "scores_kernel")[(_cdiv(N, block_n),)](
        q, k, s, M, N, scale, q.stride(0), k.stride(0), s.stride(0),
        D=D, BLOCK_M=max(16, 1 << (M - 1).bit_length()), BLOCK_N=block_n)
    _check_fence(fence, "scores_kernel", "s")
    return s


def _parts(B: int, splits: int, H: int, d_c: int, device):
    out, out_fence = _output(B, splits, H, d_c, device=device)  # (B, S, H, d_c)
    lse, lse_fence = _output(B, splits, H, device=device)  # (B, S, H)
    return out, lse, out_fence, lse_fence


def _check_parts(fences, name: str) -> None:
    _check_fence(fences[0], name, "out (each split's output)")
    _check_fence(fences[1], name, "lse (each split's log-sum-exp)")


def decode_parts(kernel, q, kv, lengths, scale: float, d_c: int, num_splits: int = 1, block_n: int = 16):
    """Launch ``mla_decode_kernel`` on a contiguous cache kv (B, T, d_c + d_rope): each split's
    output (B, S, H, d_c) and log-sum-exp (B, S, H), as the kernel wrote them."""
    B, H, D = q.shape
    chunk = _cdiv(int(lengths.max()), num_splits)  # tokens per split
    out, lse, *fences = _parts(B, num_splits, H, d_c, q.device)
    q, kv = _fenced(q), _fenced(kv)
    _kernel(kernel, "mla_decode_kernel")[(B, _cdiv(H, BLOCK_H), num_splits)](
        q, kv, lengths.to(torch.int32), out, lse, H, chunk, scale,
        q.stride(0), q.stride(1), kv.stride(0), kv.stride(1),
        out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
        DC=d_c, DR=D - d_c, BLOCK_H=BLOCK_H, BLOCK_N=block_n)
    _check_parts(fences, "mla_decode_kernel")
    return out, lse


def paged_decode_parts(kernel, q, kv_pool, block_table, lengths, scale: float, d_c: int, num_splits: int = 1,
                       block_n: int = 16):
    """Launch ``paged_mla_decode_kernel`` on a pool of pages (n_pages, PAGE, d_c + d_rope) and its block
    table (B, max_pages), after checking every argument: each split's output and log-sum-exp."""
    pages.check_decode_args(q, kv_pool, block_table, lengths, scale, d_c, num_splits)
    B, H, D = q.shape
    chunk = _cdiv(int(lengths.max()), num_splits)
    out, lse, *fences = _parts(B, num_splits, H, d_c, q.device)
    table = block_table.to(torch.int32)
    q, kv_pool = _fenced(q), _fenced(kv_pool)
    _kernel(kernel, "paged_mla_decode_kernel")[(B, _cdiv(H, BLOCK_H), num_splits)](
        q, kv_pool, table, lengths.to(torch.int32), out, lse, H, chunk, scale,
        q.stride(0), q.stride(1), kv_pool.stride(0), kv_pool.stride(1), table.stride(0),
        out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
        DC=d_c, DR=D - d_c, PAGE=kv_pool.shape[1], BLOCK_H=BLOCK_H, BLOCK_N=block_n)
    _check_parts(fences, "paged_mla_decode_kernel")
    return out, lse


def merged(out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """The splits a launcher returned, merged by the course's merge_partials: (B, H, d_c).

    Call it outside the graded block, where the course's answers may run."""
    from attnlab import answers

    return answers.merge_partials(out.transpose(0, 1), lse.transpose(0, 1))[0]  # (S, B, H, .) -> (B, H, d_c)
