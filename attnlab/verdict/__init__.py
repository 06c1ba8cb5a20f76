"""Verdicts the learner's code cannot reach: a checker outside the grading kernel.

- :mod:`~attnlab.verdict.checker`: the checker, in the grader's process: it
  runs a test cell's code with the answer key, and records the verdict;
- :mod:`~attnlab.verdict.remote`: the checker's side of one conversation: the
  learner's objects as remote references, stand-ins answered from the answer key;
- :mod:`~attnlab.verdict.kernel`: the kernel's side: a test cell's stub, and
  the calls into the learner's notebook the checker asks for;
- :mod:`~attnlab.verdict.wire`: what crosses between them (data, never code);
- :mod:`~attnlab.verdict.grading`: the grader's side: nbgrader's ``Execute``
  and ``make check``'s client, which arm the checker for each test cell, run
  the stub, and write the cell's output from the checker's record; the class
  secret.

Workbooks judged this way are listed in :data:`attnlab.verdict.grading.CHECKED`;
the others still run their tests inside the kernel (see the README).
"""
