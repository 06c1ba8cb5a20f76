"""Check your own notebooks with their visible tests, without changing them.

    python -m attnlab.learner.selfcheck                      # every notebook in work/ (course/ before make lab)
    python -m attnlab.learner.selfcheck course/01_mha/01_mha.ipynb

Each notebook is run top to bottom on a copy, in a temporary folder; then
every test cell is reported: passed, failed, not attempted yet (the exercise
still raises NotImplementedError), skipped (workbook 07's kernels where Triton
cannot be installed), or edited or deleted. A test cell that is
not the one the course released does not count: its points are not given,
since grading puts the original back. Your notebook is not modified. The
hidden tests used for grading are not in your copy, so passing here is
necessary, not sufficient. The exit status is 0 when nothing you attempted
fails and no test cell was changed.

What a test cell must be is not read from the notebook being checked (its
cells and their metadata are the learner's to edit or delete): the release's
test cells are recorded in attnlab/data/release_test_cells.json with
nbgrader's own checksum (``python -m attnlab.learner.selfcheck --record`` writes it from
course/ after a release), and nbgrader's checksums in course/ take over for a
cell released again since (see :func:`expected_cells`).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import nbformat

from attnlab import cells
from attnlab.learner import start

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The released workbooks, and the default set that `make check` runs.
COURSE = ROOT / "course"
WORK = ROOT / "work"  # the learner's own copies (make lab fills it; attnlab/learner/workspace.py)
DEFAULT = WORK
RELEASE_CELLS = pathlib.Path(__file__).resolve().parents[1] / "data" / "release_test_cells.json"


def _test_cells(nb: nbformat.NotebookNode) -> dict[str, nbformat.NotebookNode]:
    """grade_id -> cell, for the code cells that give points (the test cells); the first of duplicates."""
    out = {}
    for cell in nb.cells:
        if cells.gives_points(cell) and cells.grade_id(cell):
            out.setdefault(cells.grade_id(cell), cell)
    return out


def _checksum(cell: nbformat.NotebookNode) -> str:
    # nbgrader's own checksum (source, cell kind, grade id and points), the one its validator uses.
    from nbgrader.utils import compute_checksum

    return compute_checksum(cell)


def release_test_cells(course: pathlib.Path = COURSE) -> dict[str, dict[str, dict]]:
    """workbook -> grade_id -> {"points", "checksum"} for every test cell of the release in ``course``."""
    out = {}
    for path in sorted(pathlib.Path(course).glob("*/*.ipynb")):
        if path.stem == path.parent.name:
            tests = _test_cells(cells.read(path))
            out[path.stem] = {g: {"points": float(c.metadata.nbgrader["points"]), "checksum": _checksum(c)}
                              for g, c in tests.items()}
    return out


def record(course: pathlib.Path = COURSE, dest: pathlib.Path = RELEASE_CELLS) -> pathlib.Path:
    """Write the release's test cells, so that a learner's edit is noticed later.

    They are kept apart from the notebooks: a learner works in (a copy of) the
    release, so the notebook itself cannot be the reference, and the
    ``checksum`` that nbgrader writes into each cell's metadata travels with
    the cell: whoever edits the cell can edit that too, and a deleted cell
    takes it along."""
    dest.write_text(json.dumps(release_test_cells(course), indent=1) + "\n")
    return dest


def expected_cells(workbook: str, released: dict) -> dict[str, dict]:
    """grade_id -> {"points", "checksum"}: the test cells a notebook of ``workbook`` must hold.

    As recorded at the release, except where course/ was released again since:
    nbgrader's ``checksum`` in a cell's metadata there then differs from the
    record. Editing a cell in Jupyter leaves that checksum as it was, so a
    learner who works in course/ itself does not move the reference (only one
    who rewrites nbgrader's metadata too, on purpose, would)."""
    out = {g: dict(c) for g, c in released.get(workbook, {}).items()}
    release = COURSE / workbook / f"{workbook}.ipynb"
    if release.exists():
        for grade_id, cell in _test_cells(cells.read(release)).items():
            stamp = cell.metadata.nbgrader.get("checksum")
            if stamp and out.get(grade_id, {}).get("checksum") != stamp:
                out[grade_id] = {"points": float(cell.metadata.nbgrader["points"]), "checksum": stamp}
    return out


def _workbook(path: pathlib.Path, nb, released: dict) -> str | None:
    """Which released workbook a notebook is: by its name (01_mha-Copy1.ipynb), else by its test cells."""
    names = set(released) | {p.name for p in COURSE.glob("*") if (p / f"{p.name}.ipynb").exists()}
    for name in sorted(names, key=len, reverse=True):
        if name in path.name:
            return name
    ids = set(_test_cells(nb))
    best = max(released, key=lambda w: len(ids & set(released[w])), default=None)
    return best if best and ids & set(released[best]) else None


def _restore_hint(workbook: str, grade_id: str, path: pathlib.Path, expected: str) -> str:
    release = COURSE / workbook / f"{workbook}.ipynb"
    if release.exists() and release.resolve() != path.resolve():
        cell = _test_cells(cells.read(release)).get(grade_id)
        if cell is not None and _checksum(cell) == expected:
            return f"restore it from {release.relative_to(ROOT)}"
    # The learner's copy is the release itself (or that was changed too): git still has it.
    return f"restore it from the release: git show HEAD:course/{workbook}/{workbook}.ipynb"


def _checked_tests(workbook: str | None) -> dict[str, str]:
    """grade_id -> the release's code of each test cell, where the checker judges ``workbook`` ({} elsewhere)."""
    from attnlab.verdict.grading import CHECKED, test_sources

    release = COURSE / f"{workbook}" / f"{workbook}.ipynb"
    return test_sources(cells.read(release)) if workbook in CHECKED and release.exists() else {}


def check(path: pathlib.Path, timeout: int = 300) -> list[tuple[str, float, str | None]]:
    """[(test cell id, points, None if it passed else why not)] for one notebook."""
    return [(r["grade_id"], r["points"], r["message"] if r["status"] != "pass" else None)
            for r in results(path, timeout)]


def results(path: pathlib.Path, timeout: int = 300, released: dict | None = None) -> list[dict]:
    """Run one notebook on a copy; one dict per test cell of its workbook:
    grade_id, points, status (pass, fail, todo, edited, deleted) and message."""
    import contextlib

    from jupyter_client import AsyncKernelManager
    from jupyter_core.utils import run_sync
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    from attnlab.verdict.grading import CheckedCells, checker

    class CheckedClient(CheckedCells, NotebookClient):
        pass

    path = pathlib.Path(path)
    released = json.loads(RELEASE_CELLS.read_text()) if released is None else released
    nb = cells.read(path)
    workbook = _workbook(path, nb, released)
    expected = expected_cells(workbook, released) if workbook else {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # Unix sockets in the private folder: over TCP the kernel warns on stderr that it is unencrypted.
            # The async manager: with the blocking one, nbclient never notices a kernel that died (a
            # Triton kernel that writes out of bounds, os.abort()) and waits forever.
            km = AsyncKernelManager(kernel_name="python3", transport="ipc", ip=str(pathlib.Path(tmp) / "kernel"))
            # The workbooks the course's checker judges: their visible tests run there, as in grading.
            tests = _checked_tests(workbook)
            with checker(tests, folder=tmp, timeout=timeout + 30, workbook=workbook or "") if tests else \
                    contextlib.nullcontext() as found:
                client = CheckedClient(nb, km=km, timeout=timeout, allow_errors=True, interrupt_on_timeout=True,
                                       resources={"metadata": {"path": tmp}})
                client.checker = found
                try:
                    client.execute()
                finally:  # a kernel manager handed in is the caller's to shut down
                    if km.has_kernel:
                        run_sync(km.shutdown_kernel)(now=True)
        crashed = None
    except DeadKernelError as e:
        crashed = f"the kernel died ({e})".splitlines()[0]
    found = _test_cells(nb)
    out = []
    for grade_id in [*expected, *(g for g in found if g not in expected)]:
        cell = found.get(grade_id)
        points = expected[grade_id]["points"] if grade_id in expected else float(cell.metadata.nbgrader["points"])
        result = {"grade_id": grade_id, "points": points, "status": "pass", "message": ""}
        out.append(result)
        if cell is None:
            hint = _restore_hint(workbook, grade_id, path, expected[grade_id]["checksum"])
            result.update(status="deleted", message=f"test cell {grade_id} was deleted: it scores nothing ({hint})")
            continue
        if grade_id in expected and _checksum(cell) != expected[grade_id]["checksum"]:
            hint = _restore_hint(workbook, grade_id, path, expected[grade_id]["checksum"])
            result.update(status="edited",
                          message=f"test cell {grade_id} was edited: its result does not count ({hint})")
            continue
        for o in cell.get("outputs", []):
            if o.output_type == "error":
                first = (f"{o.ename}: {o.evalue}" if o.evalue else o.ename).splitlines()[0]
                if o.ename == "TritonMissing":  # workbook 07's kernels where Triton cannot be installed
                    result.update(status="skip", message=f"skipped ({first})")
                elif o.ename == "NotImplementedError":
                    result.update(status="todo", message=f"not attempted yet ({first})")
                else:
                    result.update(status="fail", message=first)
                break
            if o.output_type == "stream" and o.name == "stderr":
                result.update(status="fail", message="the cell wrote to stderr (graders give such a cell zero)")
        if crashed and not cell.get("outputs"):
            result.update(status="fail", message=crashed)
    return out


_LABEL = {"pass": "pass", "fail": "FAIL", "todo": "todo", "skip": "skip", "edited": "EDITED", "deleted": "DELETED"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=pathlib.Path,
                        help=f"notebooks to check (default: every workbook in {DEFAULT}/)")
    parser.add_argument("--record", action="store_true",
                        help="record the test cells of course/ (after a release) instead of checking")
    args = parser.parse_args(argv)
    if args.record:
        dest = record()
        print(f"recorded the test cells of {len(json.loads(dest.read_text()))} workbooks in {dest}")
        return 0
    folder = DEFAULT
    if not args.notebooks and not folder.is_dir():
        print(f"{folder} does not exist yet (`make lab` creates it): checking the blank release in {COURSE}")
        folder = COURSE
    paths = args.notebooks or sorted(p for p in folder.glob("*/*.ipynb") if p.stem == p.parent.name)
    missing = [p for p in paths if not p.exists()]
    if missing or not paths:
        print("\n".join(f"{p}: no such notebook" for p in missing) or f"no notebooks in {folder}")
        return 2
    released = json.loads(RELEASE_CELLS.read_text())
    got = total = 0.0
    counts = {status: 0 for status in _LABEL}
    for path in paths:
        checked = results(path, released=released)
        start.remember(path, checked)  # for the start page's table (work/START.ipynb)
        mine = sum(r["points"] for r in checked if r["status"] == "pass")
        theirs = sum(r["points"] for r in checked if r["status"] != "skip")
        if not _workbook(path, cells.read(path), released):
            print(f"{path.name}: not one of the course's workbooks: its test cells are not checked against the release")
        print(f"{path.name}: {mine:g} of {theirs:g} visible-test points")
        for r in checked:
            print(f"  {_LABEL[r['status']]:<7} {r['grade_id']} ({r['points']:g})"
                  + (f": {r['message']}" if r["message"] else ""))
            counts[r["status"]] += 1
        got, total = got + mine, total + theirs
    label = "course" if not args.notebooks else f"{len(paths)} notebooks" if len(paths) > 1 else "total"
    changed = counts["edited"] + counts["deleted"]
    notes = [f"{counts['todo']} not attempted yet" if counts["todo"] else "",
             f"{counts['skip']} skipped: Triton is not installed here" if counts["skip"] else "",
             f"{counts['fail']} failing" if counts["fail"] else "",
             f"{changed} test cell{'s' * (changed != 1)} edited or deleted" if changed else ""]
    notes = [n for n in notes if n]
    print(f"{label}: {got:g} of {total:g} visible-test points" + (f" ({'; '.join(notes)})" if notes else ""))
    return 1 if counts["fail"] or changed else 0


if __name__ == "__main__":
    sys.exit(main())
