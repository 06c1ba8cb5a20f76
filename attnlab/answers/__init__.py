"""The course's answers, one module per workbook.

The benchmark (workbook 05) and later workbooks build on them, and the hidden
tests compare a learner's results with them. Every public function here is
:func:`~attnlab.guard.guarded`: while a learner's exercise is graded it raises
instead of answering, so calling it is not a way to score. In the grading
kernel these modules are bytecode only (:mod:`attnlab.instructor.sandbox`).

Conventions: ``B`` batch, ``T`` time (``Tq`` queries, ``Tk`` keys), ``C`` model
width, ``H`` heads, ``D`` head width. Weights are stored as ``nn.Linear``
stores them, ``(out_features, in_features)``, so a projection is ``x @ W.T``.
"""
from attnlab.answers.mha import *  # noqa: F401,F403  workbook 01
from attnlab.answers.gqa import *  # noqa: F401,F403  workbook 02
from attnlab.answers.rope import *  # noqa: F401,F403  workbook 03
from attnlab.answers.mla import *  # noqa: F401,F403  workbook 04
from attnlab.answers.mha2mla import *  # noqa: F401,F403  workbook 06
from attnlab.answers.decode import *  # noqa: F401,F403  workbook 07 (its Triton kernels: attnlab.answers.kernels)
