"""Hidden tests' cases, drawn from a class secret when an instructor holds one.

A hidden test keeps its form in the public source and draws its sizes, seeds
and values from ``draw(n)``::

    d = draw(101)
    B, H = d.int(1, 4), d.int(1, 4)
    q = torch.randn(B, H, 5, 8, generator=d.torch)

Without a secret (a learner's own kernel, the tests of the course, grading
without ``ATTNLAB_CLASS_SECRET``), ``draw(101)`` is the same every time. While
the checker grades with a secret, each student's draw comes from the secret,
the student's id, the test cell and ``n`` (:func:`secret`): every student
meets other cases, and the public source reveals none of them. A test still
lists the edge cases it exists for; only their sizes and values are drawn.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import random
import threading

import torch

_local = threading.local()  # the checker's thread holds the secret; no kernel ever does


class Draw:
    """One hidden test's source of cases: ``int``, ``choice``, ``shuffle``, a torch ``Generator`` and a seed."""

    def __init__(self, seed: int):
        self.seed = seed
        self.random = random.Random(seed)
        self.torch = torch.Generator().manual_seed(seed % 2**63)

    def int(self, low: int, high: int) -> int:
        """An int from ``low`` to ``high``, both included."""
        return self.random.randint(low, high)

    def choice(self, options):
        return self.random.choice(list(options))

    def shuffle(self, items) -> list:
        items = list(items)
        self.random.shuffle(items)
        return items

    def torch_seed(self) -> int:
        """A seed for ``torch.manual_seed`` (a module's initial weights), drawn like the rest."""
        return self.random.randrange(2**31 - 1)


def draw(n: int) -> Draw:
    """The cases of hidden test ``n``: fixed without a secret, the student's own with one."""
    key = getattr(_local, "key", None)
    if key is None:
        return Draw(int(n))
    digest = hmac.new(key, str(int(n)).encode(), hashlib.sha256).digest()
    return Draw(int.from_bytes(digest[:8], "big"))


@contextlib.contextmanager
def secret(secret: bytes | None, student: str, cell: str):
    """Within the block (on this thread), ``draw`` derives from ``secret``, ``student`` and ``cell``."""
    saved = getattr(_local, "key", None)
    _local.key = None if secret is None else hmac.new(
        secret, f"{student}\x00{cell}".encode(), hashlib.sha256).digest()
    try:
        yield
    finally:
        _local.key = saved
