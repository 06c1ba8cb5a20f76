"""Build the nbgrader source notebooks from their text sources.

Each ``solutions/NN_topic/NN_topic.py`` (jupytext percent format, with the
nbgrader metadata in the cell headers) is the file people edit and review;
``NN_topic.ipynb`` beside it is built from it, deterministically, with no
outputs and no jupytext bookkeeping, and nbgrader releases that. The start
page, ``course/START.ipynb``, is built from the workbooks' introductions
(:mod:`attnlab.learner.start`).

    python -m attnlab.instructor.notebooks          # rebuild every .ipynb
    python -m attnlab.instructor.notebooks --check  # exit 1 if any .ipynb is stale
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import jupytext
import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOLUTIONS = ROOT / "solutions"
START = ROOT / "course" / "START.ipynb"


def sources(root: pathlib.Path = SOLUTIONS) -> list[pathlib.Path]:
    """The text sources: solutions/NN_topic/NN_topic.py."""
    return sorted(p for p in root.glob("*/*.py") if p.stem == p.parent.name)


def build(source: pathlib.Path) -> str:
    """The .ipynb text for one percent-format source."""
    nb = jupytext.read(source)
    nb.metadata.pop("jupytext", None)
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell.metadata.pop("lines_to_next_cell", None)
        # Stable ids keep the build byte-identical from one run to the next.
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        cell["id"] = grade_id or f"cell-{i:03d}"
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale notebooks")
    args = parser.parse_args(argv)
    from attnlab.learner import start

    stale = []
    built = [(src.with_suffix(".ipynb"), build(src)) for src in sources()]
    built.append((START, nbformat.writes(start.page(sources())) + "\n"))
    for target, text in built:
        if target.exists() and target.read_text() == text:
            continue
        stale.append(target)
        if not args.check:
            target.write_text(text)
            print(f"built {target.relative_to(ROOT)}")
    if args.check and stale:
        print("stale (run `make notebooks`): " + ", ".join(str(p.relative_to(ROOT)) for p in stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
