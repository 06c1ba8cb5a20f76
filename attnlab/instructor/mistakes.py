"""Planted mistakes: how the course proves that its tests catch real errors.

Each workbook's mistakes live beside its source, in
``solutions/NN_topic/mistakes.py`` (never released: nbgrader ignores ``*.py``
there). A mistake is a text substitution in one solution cell of the notebook
filled with the model answers. Graded, it must lose the points of the test
cells in ``loses`` and keep every other point. A mistake marked
``hidden_only`` is one the visible tests let through: it must pass them when
the notebook runs as a learner runs it, and lose its points only when graded,
which proves that the hidden tests check something.

Grading a whole notebook per mistake is what made the suite slow, and it is
not needed: the tests hand every exercise correct versions of the earlier ones
(stand-ins), so mistakes in different exercises cannot disturb each other.
:func:`rounds` packs mistakes whose cells and lost test cells are disjoint
into one submission each.
"""
from __future__ import annotations

import copy
import importlib.util
import pathlib
from dataclasses import dataclass

import nbformat

from attnlab import cells

ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mistake:
    name: str
    cell: str  # the grade_id of the solution cell it edits
    old: str
    new: str
    loses: tuple[str, ...]  # the test cells that must score 0
    says: str = ""  # words the failing cell's message must contain
    also: tuple[str, str] | None = None  # a second (old, new) edit in the same cell
    hidden_only: bool = False  # passes the visible tests; only the hidden tests catch it


def load(assignment: str, root: pathlib.Path = ROOT) -> list[Mistake]:
    """The planted mistakes of one workbook ([] if it has none)."""
    path = pathlib.Path(root) / "solutions" / assignment / "mistakes.py"
    if not path.exists():
        return []
    spec = importlib.util.spec_from_file_location(f"_mistakes_{assignment}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.MISTAKES)


def apply(answers: nbformat.NotebookNode, mistakes) -> nbformat.NotebookNode:
    """A copy of the filled notebook ``answers`` with every one of ``mistakes`` made."""
    nb = copy.deepcopy(answers)
    for m in mistakes:
        cells.replace_in_cell(nb, m.cell, m.old, m.new)
        if m.also:
            cells.replace_in_cell(nb, m.cell, *m.also)
    return nb


def rounds(mistakes) -> list[list[Mistake]]:
    """The mistakes packed into as few submissions as can share one: in each
    round no two edit the same cell or lose the same test cell. Hidden-only
    mistakes are packed first, so that few rounds need a visible-tests run."""
    out: list[list[Mistake]] = []
    for m in sorted(mistakes, key=lambda m: not m.hidden_only):
        for r in out:
            if all(m.cell != o.cell and not set(m.loses) & set(o.loses) for o in r):
                r.append(m)
                break
        else:
            out.append([m])
    return out
