"""Feedback that hands a student their grades and nothing the course must keep.

nbgrader renders feedback from the autograded notebook as it is (its issue
#917): the hidden tests, restored into every test cell for grading, are
printed in full, and tracebacks name the grading machine's files. A class
that reuses the course would have no hidden tests left. :class:`SafeFeedback`
runs in ``nbgrader generate_feedback`` (see autograde/nbgrader_config.py)
after the grades are read, and rewrites the notebook before it becomes HTML:

* a test cell shows its visible code only, and one line where the hidden tests
  ran; its outputs are replaced by a verdict: "passed every check" or the
  failed check's own message, which names the case in words (the tests pass
  ``case=`` to :func:`attnlab.checks.exercise`);
* every other cell keeps only its errors, so that no print of the learner's
  (``print(In[-2])`` prints the last test cell's source, hidden tests and
  all; ``print(hq)`` prints a hidden input) reaches the feedback;
* an error keeps its message and the frames in the learner's own cells: the
  frames in test cells and in files of the grading machine are dropped;
* paths of the grading machine are cut to their last part, and any output
  line that quotes a line of a hidden test is removed;
* the only other files handed back are the release's own
  (:func:`release_files_only`), not what the submission wrote while graded.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile

from nbconvert.preprocessors import Preprocessor
from traitlets import default

from attnlab import cells

BEGIN, END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
HIDDEN_NOTE = "# (hidden tests ran here: their code is not shown)"
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colours, as IPython's tracebacks carry them
_CELL_FRAME = re.compile(r"^Cell In\s*\[(\d+)\]")
# The longest error message the feedback repeats: a message is a sentence,
# not a channel for whatever a submission wants to carry out.
MAX_MESSAGE = 600


def split_hidden(source: str) -> tuple[str, list[str]]:
    """(the source without its hidden-test block, the block's lines)."""
    shown, hidden, inside = [], [], False
    for line in source.split("\n"):
        if BEGIN in line:
            inside = True
            shown.append(line[: line.index(BEGIN)] + HIDDEN_NOTE)
        elif END in line:
            inside = False
        elif inside:
            hidden.append(line)
        else:
            shown.append(line)
    return "\n".join(shown), hidden


def secret_lines(nb) -> set[str]:
    """Every line of every hidden-test block long enough to recognise."""
    out = set()
    for cell in nb.cells:
        if cells.is_test_cell(cell):
            out |= {ln.strip() for ln in split_hidden(cell.source)[1] if len(ln.strip()) >= 12}
    return out


def workbook_secrets(source, release, answers=()) -> set[str]:
    """The lines of a workbook's hidden tests (in the nbgrader ``source``
    notebook) that neither the ``release`` nor a model answer (``answers``,
    the solution cells' code) also shows: `with exercise("attention"):` is in
    both. No feedback may hold one of them; the tests scan for each."""
    public = "\n".join([c.source for c in release.cells] + list(answers))
    return {ln.strip() for c in source.cells if cells.is_test_cell(c)
            for ln in split_hidden(c.source)[1] if len(ln.strip()) >= 8 and ln.strip() not in public}


def _machine_paths(extra=()) -> list[str]:
    paths = {sys.prefix, sys.base_prefix, os.path.expanduser("~"), tempfile.gettempdir(),
             os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), *extra}
    # Longest first, so that a folder inside another is cut as a whole.
    return sorted((p.rstrip("/") for p in paths if p and p != "/"), key=len, reverse=True)


class Scrubber:
    """Cuts machine paths and hidden-test lines out of text."""

    def __init__(self, secrets: set[str], paths: list[str]):
        self.secrets = secrets
        self.path = re.compile("(" + "|".join(re.escape(p) for p in paths) + r")(/[^\s'\":,)]*)?") if paths else None

    def __call__(self, text: str) -> str:
        if self.path is not None:
            text = self.path.sub(lambda m: "…/" + (m.group(2) or "/").rstrip("/").rsplit("/", 1)[-1], text)
        if self.secrets:
            lines = text.split("\n")
            kept = [ln for ln in lines if not any(s in ln for s in self.secrets)]
            if len(kept) != len(lines):
                kept.append("[a line quoting a hidden test was removed]")
            text = "\n".join(kept)
        return text


def _message(output, scrub) -> str:
    text = scrub(f"{output.get('ename', 'Error')}: {output.get('evalue', '')}".strip())
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + " […]"


def _learner_frames(output, learner_counts: set[int], scrub) -> list[str]:
    """The traceback entries that point into the learner's own cells."""
    frames = []
    for entry in output.get("traceback", [])[1:-1]:
        match = _CELL_FRAME.match(ANSI.sub("", entry).lstrip())
        if match and int(match.group(1)) in learner_counts:
            frames.append(scrub(entry))
    return frames


def _error(output, learner_counts, scrub, lead: str = ""):
    from nbformat.v4 import new_output

    message = _message(output, scrub)
    return new_output("error", ename=output.get("ename", "Error"), evalue=scrub(str(output.get("evalue", ""))),
                      traceback=[*([lead] if lead else []), *_learner_frames(output, learner_counts, scrub), message])


def _verdict(cell, learner_counts, scrub) -> list:
    from nbformat.v4 import new_output

    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    if not errors and any(o.get("name") == "stderr" for o in cell.get("outputs", [])):
        # nbgrader gives such a cell no points; its words stay out, as every print does.
        return [new_output("stream", name="stdout", text="the checks passed, but the cell wrote to stderr (a warning "
                           "or a progress bar of your code's), and the grader gives such a cell no points\n")]
    if not errors:
        return [new_output("stream", name="stdout", text="passed every check of this cell, the hidden ones too\n")]
    error = errors[-1]
    if error.get("ename") == "NotImplementedError":
        lead = "not attempted: the exercise above still raises NotImplementedError"
    else:
        lead = "a check in this cell failed:"
    return [_error(error, learner_counts, scrub, lead)]


def sanitise(nb, extra_paths=()) -> None:
    """Rewrite an autograded notebook in place into what a student may see."""
    scrub = Scrubber(secret_lines(nb), _machine_paths(extra_paths))
    learner_counts = {c.get("execution_count") for c in nb.cells
                      if cells.is_solution(c) and c.get("execution_count")}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if cells.is_test_cell(cell):
            cell.source = split_hidden(cell.source)[0]
            cell.outputs = _verdict(cell, learner_counts, scrub)
        else:
            cell.outputs = [_error(o, learner_counts, scrub) for o in cell.get("outputs", [])
                            if o.get("output_type") == "error"]


def release_files_only(converter, assignment_id: str, student_id: str) -> None:
    """``GenerateFeedback.init_assignment`` that hands back the release's own
    files (05's GPU results) instead of every file of the autograded folder:
    that folder also holds whatever the submission wrote while it was graded,
    such as a file with the hidden tests' source copied out of ``In``."""
    import shutil

    from nbgrader.utils import find_all_files

    release = converter.coursedir.format_path(converter.coursedir.release_directory, ".", assignment_id)
    dest = converter._format_dest(assignment_id, student_id)
    for filename in find_all_files(release, converter.coursedir.ignore + ["*.ipynb"]):
        path = os.path.join(dest, os.path.relpath(filename, release))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copy(filename, path)


# A check's sentence is one long line: wrapped, not cut at the page's edge behind a scroll bar.
WRAP_CSS = "div.output_text pre { white-space: pre-wrap; overflow-wrap: anywhere; }"


class SafeFeedback(Preprocessor):
    """nbconvert preprocessor for ``GenerateFeedback``: :func:`sanitise`, and outputs that wrap
    (it runs after ``CSSHTMLHeaderPreprocessor``, which sets the page's inline CSS)."""

    # nbconvert runs only preprocessors that are enabled; this one must always run.
    @default("enabled")
    def _enabled_default(self):
        return True

    def preprocess(self, nb, resources):
        path = resources.get("metadata", {}).get("path")
        sanitise(nb, [os.path.abspath(path)] if path else [])
        resources.setdefault("inlining", {}).setdefault("css", []).append(WRAP_CSS)
        return nb, resources
