"""attnlab: what the notebooks of the efficient-attention course share.

- :mod:`attnlab.reference`: the course's reference attention implementations;
- :mod:`attnlab.guard`: switches those off while a learner's code is graded;
- :mod:`attnlab.cache`: KV-cache arithmetic and real model dimensions;
- :mod:`attnlab.checks`: learner-facing checks used by the tests;
- :mod:`attnlab.validate`: argument checks that name the argument;
- :mod:`attnlab.widgets`: the interactive widgets;
- :mod:`attnlab.bench`: the KV-cache benchmark and its command line;
- :mod:`attnlab.beyond`: workbook 06's latent attention and tiny character-level language models;
- :mod:`attnlab.notebooks`: builds the .ipynb notebooks from their text sources;
- :mod:`attnlab.grading`, :mod:`attnlab.check`: grading through nbgrader, for instructors and learners;
- :mod:`attnlab.sandbox`: the kernel that runs a student's notebook while it is graded;
- :mod:`attnlab.grading_kernel`: what that kernel sets up in itself (output cap, memory reserve);
- :mod:`attnlab.feedback`: the feedback a student gets back, without the hidden tests;
- :mod:`attnlab.mistakes`: the planted mistakes that prove the tests catch real errors.
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
