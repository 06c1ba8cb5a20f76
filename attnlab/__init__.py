"""attnlab: what the workbooks of the efficient-attention course share, by who uses it.

- what teaches:
  :mod:`attnlab.answers` (the course's answers, one module per workbook; switched
  off while a learner's code is graded), :mod:`attnlab.models` (the released
  models and GPUs, each with its source), :mod:`attnlab.lesson` (cache
  arithmetic, widgets, the KV-cache benchmark, the released checkpoints'
  formats, workbook 06's character LM and retrofit experiments, workbook 07's
  Triton set-up and paged cache);
- what test cells import: :mod:`attnlab.checks` (``exercise``, ``expect_close``
  and the exercise table; :mod:`attnlab.checks.suspects`, what tests compare with;
  ``draw``, the hidden tests' cases);
- where the verdict is made: :mod:`attnlab.verdict` (the checker outside the
  grading kernel, the kernel's side of it, what crosses between them, and the
  grader's side: each test cell run and scored by the checker);
- what learners run: :mod:`attnlab.learner` (the workspace in ``work/``, the
  start page, ``make check``);
- what only instructors run: :mod:`attnlab.instructor` (notebook building,
  grading through nbgrader, the sandboxed grading kernel, feedback, flags,
  Gradescope, the planted mistakes);
- shared by all: :mod:`attnlab.guard` (switches the answers off) and
  :mod:`attnlab.arguments` (argument checks that name the argument).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__version__ = "0.1.0"


def pick_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU."""
    import torch  # here, not above: the instructor's tools import attnlab and need no torch (2 s)

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_grading() -> bool:
    """True while nbgrader executes the notebook (heavy cells shrink then)."""
    return "NBGRADER_EXECUTION" in os.environ
