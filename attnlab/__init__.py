"""attnlab: what the notebooks of the efficient-attention course share.

- :mod:`attnlab.answers`: the course's reference attention implementations;
- :mod:`attnlab.guard`: switches those off while a learner's code is graded;
- :mod:`attnlab.lesson.cache`: KV-cache arithmetic and real model dimensions;
- :mod:`attnlab.checks`: learner-facing checks used by the tests;
- :mod:`attnlab.arguments`: argument checks that name the argument;
- :mod:`attnlab.lesson.widgets`: the interactive widgets;
- :mod:`attnlab.lesson.bench`: the KV-cache benchmark and its command line;
- :mod:`attnlab.lesson.charlm`: workbook 06's latent attention and tiny character-level language models;
- :mod:`attnlab.instructor.notebooks`: builds the .ipynb notebooks from their text sources;
- :mod:`attnlab.instructor.grading`, :mod:`attnlab.learner.selfcheck`: grading through nbgrader, for instructors and learners;
- :mod:`attnlab.instructor.sandbox`: the kernel that runs a student's notebook while it is graded;
- :mod:`attnlab.instructor.grading_kernel`: what that kernel sets up in itself (output cap, memory reserve);
- :mod:`attnlab.instructor.feedback`: the feedback a student gets back, without the hidden tests;
- :mod:`attnlab.instructor.mistakes`: the planted mistakes that prove the tests catch real errors.
"""
from __future__ import annotations

import os

import torch

__version__ = "0.1.0"


def pick_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_grading() -> bool:
    """True while nbgrader executes the notebook (heavy cells shrink then)."""
    return "NBGRADER_EXECUTION" in os.environ
