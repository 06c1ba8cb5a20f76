"""Triton, on a GPU or, without one, through its interpreter (workbook 07).

Triton compiles kernels for a GPU. Without one, ``TRITON_INTERPRET=1`` runs the
same kernel, program by program, in NumPy on the CPU: slow by design, exact
enough to grade, and the way the course checks a kernel on a laptop. The
variable is read when a kernel is decorated, so it is set here, before Triton
is first imported. The interpreter has no bfloat16: on the CPU the course's
kernels take float32 and float16.

Triton has wheels for Linux only (the course pins the release that torch
2.13's CUDA build requires); elsewhere :func:`load` returns None and the
workbook says so and skips its kernel exercises.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

import torch

MISSING = ("Triton is not installed here (it has wheels for Linux only): the kernel exercises of this "
           "workbook are skipped; the PyTorch ones still count.")


def interpreted() -> bool:
    """True when Triton's kernels run in its interpreter, on the CPU."""
    return os.environ.get("TRITON_INTERPRET") == "1"


class TritonMissing(NotImplementedError):
    """Raised by a kernel where Triton is not installed: ``make check`` counts its test as skipped."""


class _Missing:
    """Stands in for triton and triton.language where Triton is not installed: a kernel can still
    be defined (its annotations read ``tl.constexpr``), and any use raises :class:`TritonMissing`."""

    def __getattr__(self, name):
        if name.startswith("_"):  # not a Triton name: hasattr() and the checks' markers must see nothing
            raise AttributeError(name)
        return self

    def __getitem__(self, item):
        return self

    def __call__(self, *args, **kwargs):
        raise TritonMissing(MISSING)

    def jit(self, fn=None, **kwargs):  # @triton.jit and @triton.jit(...) both define the kernel
        return self if fn is not None else (lambda f: self)


def load():
    """(triton, triton.language), interpreted when torch sees no CUDA GPU.

    Where Triton is not installed, two stand-ins whose kernels raise :class:`TritonMissing`."""
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        return importlib.import_module("triton"), importlib.import_module("triton.language")
    except ImportError:
        print(MISSING)
        return _Missing(), _Missing()


def available() -> bool:
    """True when Triton can be imported here."""
    return importlib.util.find_spec("triton") is not None
