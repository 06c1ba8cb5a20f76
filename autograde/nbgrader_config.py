"""nbgrader configuration for the course.

The course root is the repository root: nbgrader reads the sources from
solutions/ and writes the student release to course/. Everything grading
produces (submissions, autograded copies, feedback, the gradebook) lives under
autograde/ and is ignored by git.
"""
import atexit
import importlib.util
import os
import shutil
import tempfile

c = get_config()  # noqa: F821  (nbgrader provides get_config)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

c.CourseDirectory.course_id = "efficient-attention"
c.CourseDirectory.root = ROOT
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "course"
c.CourseDirectory.submitted_directory = "autograde/submitted"
c.CourseDirectory.autograded_directory = "autograde/autograded"
c.CourseDirectory.feedback_directory = "autograde/feedback"
c.CourseDirectory.solution_directory = "autograde/release_solution"
# Several grading processes share the gradebook (make grade): a writer waits
# up to two minutes for SQLite's lock instead of failing at once.
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(HERE, "gradebook.db") + "?timeout=120"
# solutions/NN/NN.py is the text source of NN.ipynb and holds the answers:
# it must never be copied into the release.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.py"]

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
# A cell that runs longer than this is interrupted and the next one runs.
c.Execute.timeout = 120
# A graded notebook's kernel has nothing left to save: stopping it at once instead of asking it
# to shut down saves about 1.1 s per notebook (measured: graceful shutdown of the sandboxed
# kernel, 1.12 s). The kernel dies with its launcher (attnlab/instructor/sandbox.py).
c.Execute.shutdown_kernel = "immediate"
# A test cell a student deleted is put back (and graded) instead of silently
# dropping its points from the total.
c.OverwriteCells.add_missing_cells = True

# Feedback hands a student their grades, not the hidden tests (nbgrader's
# issue #917) nor the grading machine's paths: attnlab/instructor/feedback.py rewrites
# the autograded notebook before it becomes HTML.
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import GetGrades  # noqa: E402

from nbgrader.converters import GenerateFeedback  # noqa: E402

from attnlab.instructor.feedback import SafeFeedback, release_files_only  # noqa: E402

c.GenerateFeedback.preprocessors = [GetGrades, CSSHTMLHeaderPreprocessor, SafeFeedback]
# nbgrader would also copy every other file of the autograded folder, which
# holds whatever the submission wrote while it ran: only the release's go back.
GenerateFeedback.init_assignment = release_files_only

# Student code runs in the course's grading kernel (attnlab/instructor/sandbox.py, kernel
# spec attnlab/jupyter/kernels/attnlab-grading): a read-only root of its own
# holding the system, Python and the course package without the answer key's
# source (no solutions/, gradebook, other submissions, nor the submission file
# itself), no network, its own processes only, an allow-list environment
# (ATTNLAB_KERNEL_ENV names more variables), and limits: ATTNLAB_KERNEL_MEMORY
# (address space, 6G), ATTNLAB_KERNEL_CPU (seconds for a whole notebook, 600),
# ATTNLAB_KERNEL_DISK (written, 512M), ATTNLAB_KERNEL_PROCESSES (processes and
# threads, 256 or 4 per core). Where Linux refuses the namespaces this needs,
# the kernel refuses to run and the notebook is not graded: it never grades
# unsandboxed by accident. `.venv/bin/python -m attnlab.instructor.sandbox --report` says
# what a machine allows. To grade without isolation on purpose, set
# ATTNLAB_SANDBOX=off in the environment; the summary then says so.
_kernels = os.path.join(importlib.util.find_spec("attnlab").submodule_search_locations[0], "jupyter")
if _kernels not in os.environ.get("JUPYTER_PATH", "").split(os.pathsep):
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in [_kernels, os.environ.get("JUPYTER_PATH", "")] if p)
c.Execute.kernel_name = "attnlab-grading"

# The test cells of the workbooks in attnlab.verdict.grading.CHECKED are run by the course's checker, in
# this process, which never runs student code: the kernel runs only a stub that asks for each test cell,
# and the cell's output, which nbgrader scores, is the checker's verdict (attnlab/verdict/). The checker
# takes the tests from solutions/, and draws the hidden tests' cases from the class secret
# (ATTNLAB_CLASS_SECRET, or the git-ignored autograde/class_secret) when the instructor holds one.
from nbconvert.preprocessors import ClearMetadataPreprocessor  # noqa: E402
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, IgnorePattern, LimitOutput,  # noqa: E402
                                    SaveAutoGrades)

# By name: nbgrader imports it (and with it torch) only when it grades, not whenever this file is read.
c.Autograde.autograde_preprocessors = ["attnlab.verdict.grading.CheckedExecute", IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
                                       SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
c.CheckedExecute.source = os.path.join(ROOT, "solutions")
os.environ.setdefault("ATTNLAB_KERNEL_MEMORY", "6G")
os.environ["ATTNLAB_SANDBOX_HIDE"] = os.pathsep.join(
    [os.path.join(ROOT, "solutions"), HERE, os.path.join(ROOT, ".git")])
# The kernel talks to nbgrader over Unix sockets, which reach into its network
# namespace; their folder is this process's own and is removed at exit.
_sockets = tempfile.mkdtemp(prefix="attnlab-kernel-")
atexit.register(shutil.rmtree, _sockets, ignore_errors=True)
c.KernelManager.transport = "ipc"
c.KernelManager.ip = os.path.join(_sockets, "k")
