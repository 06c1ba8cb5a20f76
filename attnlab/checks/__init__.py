"""What the workbooks' test cells import: checks that turn a wrong answer into a sentence.

- :func:`exercise` (:mod:`~attnlab.checks.graded`): the block every graded
  test runs the learner's code in, with the course's answers and torch's own
  switched off (:mod:`~attnlab.checks.torch_off`);
- :func:`expect_close`, :func:`expect_shape`, :func:`expect_tensor`,
  :func:`number` (:mod:`~attnlab.checks.compare`): a comparison that names the
  likely mistake;
- :class:`CheckFailed` (:mod:`~attnlab.checks.failure`): what every check raises;
- :mod:`~attnlab.checks.exercises`: which workbook asks for what, and what each
  exercise builds on; :mod:`~attnlab.checks.suspects`: what test cells compare with;
  :mod:`~attnlab.checks.launch`: how workbook 07's tests launch a learner's Triton kernel.
"""
from attnlab.checks.compare import (attention_suspects, default_tolerance, expect, expect_close, expect_number,
                                    expect_shape, expect_tensor, number, set_weights)
from attnlab.checks.cases import draw
from attnlab.checks.failure import CheckFailed
from attnlab.checks.graded import exercise, exercise_in, stand_in
from attnlab.checks.torch_off import storage_watch
from attnlab.checks import launch  # noqa: F401  workbook 07's tests launch the learner's kernels through it

# What the tests rely on, as it is now: every later test fails when a notebook replaces any of it.
# (importlib.reload would run a module again and take the notebook's replacements for the genuine article.)
from attnlab.checks import graded as _graded  # noqa: E402

_graded.seal()



def gradients(outputs, inputs, cotangents):
    """The gradients of ``outputs`` with respect to ``inputs`` for ``cotangents`` (None where none flows).

    Test cells ask for gradients through this: run by the course's checker, it asks the
    kernel that computed ``outputs``; here, in your own kernel, it is autograd."""
    import torch

    return list(torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True))


__all__ = ["CheckFailed", "attention_suspects", "default_tolerance", "draw", "exercise", "exercise_in", "expect",
           "expect_close", "expect_number", "expect_shape", "expect_tensor", "gradients", "number", "set_weights",
           "stand_in", "storage_watch"]
