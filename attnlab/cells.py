"""A notebook's cells as nbgrader marks them, and reading a notebook quietly.

nbgrader's metadata on each cell (``cell.metadata.nbgrader``) says what the
cell is: a solution cell (``solution``) holds a learner's answer; a cell with
``grade`` gives points, and one that gives points without being a solution is
a test cell; ``grade_id`` names it. The grading, the flags, the feedback, the
Gradescope autograder, the planted mistakes, and on the learner's side
``make check`` and the start page (:mod:`attnlab.learner.selfcheck`,
:mod:`attnlab.learner.start`) all ask these questions of a cell: they ask
them here, and read a cell's code (:func:`parse`) and notebooks
(:func:`from_bytes`, :func:`read`) the same way.
"""
from __future__ import annotations

import ast
import pathlib
import re
import warnings

import nbformat
from nbformat.warnings import MissingIDFieldWarning

_MARKER = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$")


def nbgrader(cell) -> dict:
    """The cell's nbgrader metadata ({} for a cell nbgrader does not mark)."""
    return cell.get("metadata", {}).get("nbgrader", {})


def grade_id(cell) -> str | None:
    """The cell's nbgrader name (None for a cell nbgrader does not mark)."""
    return nbgrader(cell).get("grade_id")


def is_solution(cell) -> bool:
    """A code cell where the learner writes an answer."""
    return cell.cell_type == "code" and bool(nbgrader(cell).get("solution"))


def gives_points(cell) -> bool:
    """A code cell that nbgrader grades: a test cell (or an autograded answer, which this course has none of)."""
    return cell.cell_type == "code" and bool(nbgrader(cell).get("grade"))


def is_test_cell(cell) -> bool:
    """A code cell that gives points and is not a solution: the tests, visible and hidden."""
    meta = nbgrader(cell)
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


def grade_ids(nb) -> set[str]:
    """The nbgrader names of every cell of ``nb``."""
    return {grade_id(c) for c in nb.get("cells", [])} - {None}


def solution_cells(source: nbformat.NotebookNode) -> dict[str, str]:
    """grade_id -> the source cell's code with the solution markers removed."""
    out = {}
    for cell in source.cells:
        meta = nbgrader(cell)
        if meta.get("solution"):
            out[meta["grade_id"]] = "\n".join(line for line in cell.source.splitlines() if not _MARKER.match(line))
    return out


def parse(source: str) -> ast.Module:
    """A code cell's source as Python's syntax tree (SyntaxError if it is not Python).
    IPython magics and shell escapes are not Python: their lines are dropped."""
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    return ast.parse("\n".join(lines))


def replace_in_cell(nb: nbformat.NotebookNode, cell_id: str, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in the cell named ``cell_id``, in place (ValueError if either is missing)."""
    for cell in nb.cells:
        if grade_id(cell) == cell_id:
            if old not in cell.source:
                raise ValueError(f"{old!r} is not in cell {cell_id!r}")
            cell.source = cell.source.replace(old, new)
            return
    raise ValueError(f"no cell with grade_id {cell_id!r}")


def from_bytes(data: bytes) -> nbformat.NotebookNode:
    """A notebook from a file's bytes, as version 4. Unlike nbformat.reads it
    neither logs a schema dump nor warns for a notebook that is merely untidy:
    here a submission is only looked at, and nbgrader copes with those."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nbformat.convert(nbformat.reader.reads(data.decode("utf-8")), 4)


def read(path: pathlib.Path) -> nbformat.NotebookNode:
    """``nbformat.read(path, as_version=4)``, without the warning for a notebook saved with no cell ids."""
    with warnings.catch_warnings():
        # Notebooks saved by an older Jupyter have no cell ids; nbformat adds them and warns.
        warnings.simplefilter("ignore", category=MissingIDFieldWarning)
        return nbformat.read(path, as_version=4)
