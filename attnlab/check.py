"""Check your own notebooks with their visible tests, without changing them.

    python -m attnlab.check                      # every notebook in course/
    python -m attnlab.check course/01_mha/01_mha.ipynb

Each notebook is run top to bottom on a copy, in a temporary folder; then
every test cell is reported as passed or failed, with the first line of its
error. Your notebook is not modified. The hidden tests used for grading are
not in your copy, so passing here is necessary, not sufficient.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent


def check(path: pathlib.Path, timeout: int = 300) -> list[tuple[str, float, str | None]]:
    """[(test cell id, points, None if it passed else its error)] for one notebook."""
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": tmp}}).execute()
    out = []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if not meta.get("grade") or cell.cell_type != "code":
            continue
        error = None
        for o in cell.get("outputs", []):
            if o.output_type == "error":
                error = f"{o.ename}: {o.evalue}".splitlines()[0]
            elif o.output_type == "stream" and o.name == "stderr" and error is None:
                error = "the cell wrote to stderr (graders give such a cell zero)"
        out.append((meta["grade_id"], float(meta.get("points", 0)), error))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=pathlib.Path)
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "course").glob("*/*.ipynb"))
    all_passed = True
    for path in paths:
        if not path.exists():
            print(f"{path}: no such notebook")
            return 2
        results = check(path)
        got = sum(points for _, points, error in results if error is None)
        total = sum(points for _, points, _ in results)
        print(f"{path.name}: {got:g} of {total:g} visible-test points")
        for grade_id, points, error in results:
            print(f"  {'pass' if error is None else 'FAIL'}  {grade_id} ({points:g})" + (f": {error}" if error else ""))
        all_passed &= got == total
    return 0 if all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
