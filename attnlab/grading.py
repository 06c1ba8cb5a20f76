"""Grading through nbgrader's own API, for the tests and the instructor scripts.

A grading "workspace" is a copy of the course (solutions/, course/ and the
nbgrader config) in a folder of its own, with its own gradebook, so that the
test suite never touches the instructor's autograde/ folder.
"""
from __future__ import annotations

import copy
import os
import pathlib
import re
import shutil
import sys

import nbformat

ROOT = pathlib.Path(__file__).resolve().parent.parent
_MARKER = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$")


def _nbgrader_on_path() -> None:
    # nbgrader runs alembic as a command: it must be found beside this Python.
    bindir = str(pathlib.Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def workspace(dest: pathlib.Path, assignments=None) -> pathlib.Path:
    """Copy the course into ``dest`` (solutions/, course/, autograde config)."""
    dest = pathlib.Path(dest)
    (dest / "autograde").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "autograde" / "nbgrader_config.py", dest / "autograde")
    for folder in ("solutions", "course"):
        for src in sorted((ROOT / folder).iterdir()):
            if src.is_dir() and (assignments is None or src.name in assignments):
                shutil.copytree(src, dest / folder / src.name, dirs_exist_ok=True)
    return dest


def api(root: pathlib.Path):
    """An NbGraderAPI on the course copy at ``root``, configured by its own config file."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    _nbgrader_on_path()
    config = PyFileConfigLoader("nbgrader_config.py", path=str(pathlib.Path(root) / "autograde")).load_config()
    coursedir = CourseDirectory(config=config)
    return NbGraderAPI(coursedir=coursedir, config=config)


def solution_cells(source: nbformat.NotebookNode) -> dict[str, str]:
    """grade_id -> the source cell's code with the solution markers removed."""
    out = {}
    for cell in source.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            out[meta["grade_id"]] = "\n".join(line for line in cell.source.splitlines() if not _MARKER.match(line))
    return out


def filled(release: nbformat.NotebookNode, source: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The release notebook as a learner who wrote the model answers hands it in."""
    answers = solution_cells(source)
    nb = copy.deepcopy(release)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id]
    return nb


def edit_cell(nb: nbformat.NotebookNode, grade_id: str, old: str, new: str) -> nbformat.NotebookNode:
    """A copy of ``nb`` with ``old`` replaced by ``new`` in the cell ``grade_id``."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            if old not in cell.source:
                raise ValueError(f"{old!r} is not in cell {grade_id!r}")
            cell.source = cell.source.replace(old, new)
            return nb
    raise ValueError(f"no cell with grade_id {grade_id!r}")


def submit(root: pathlib.Path, student: str, assignment: str, nb: nbformat.NotebookNode) -> pathlib.Path:
    """Place ``nb`` where nbgrader expects ``student``'s submission."""
    path = pathlib.Path(root) / "autograde" / "submitted" / student / assignment / f"{assignment}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def scores(root: pathlib.Path, assignment: str, student: str) -> dict[str, tuple[float, float]]:
    """grade_id -> (score, max_score) for every autograded cell, from the gradebook."""
    from nbgrader.api import Gradebook

    db = f"sqlite:///{pathlib.Path(root) / 'autograde' / 'gradebook.db'}"
    with Gradebook(db) as gb:
        nb = gb.find_submission_notebook(assignment, assignment, student)
        return {g.name: (g.score, g.max_score) for g in nb.grades if g.cell.cell_type == "code"}


def autograded_errors(root: pathlib.Path, assignment: str, student: str) -> dict[str, str]:
    """grade_id -> the error a graded cell printed in the autograded notebook."""
    path = pathlib.Path(root) / "autograde" / "autograded" / student / assignment / f"{assignment}.ipynb"
    out = {}
    for cell in nbformat.read(path, as_version=4).cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        for o in cell.get("outputs", []):
            if o.output_type == "error":
                out[grade_id] = f"{o.ename}: {o.evalue}"
    return out


def grade_submissions(root: pathlib.Path, assignment: str, submissions: dict) -> dict:
    """Grade ``{student: notebook}`` in a fresh course copy at ``root``.

    Returns ``{student: (scores, errors)}`` with :func:`scores` and
    :func:`autograded_errors` of each. Each call has its own gradebook, so
    several can run at once in separate processes.
    """
    ws = workspace(pathlib.Path(root), [assignment])
    nbgrader_api = api(ws)
    result = nbgrader_api.generate_assignment(assignment)
    if not result["success"]:
        raise RuntimeError(result.get("log"))
    out = {}
    for student, nb in submissions.items():
        submit(ws, student, assignment, nb)
        result = nbgrader_api.autograde(assignment, student)
        if not result["success"]:
            raise RuntimeError(f"autograding {student} failed: {result.get('log')}")
        out[student] = (scores(ws, assignment, student), autograded_errors(ws, assignment, student))
    return out


def _one_thread_per_kernel():
    # Kernels inherit this: with one grading process per core, torch's own
    # thread pool in every kernel would oversubscribe the cores (measured on
    # two cores: 121 s for workbook 01's 21 submissions, 61 s with one thread).
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"


def grade_in_parallel(workdir: pathlib.Path, assignment: str, submissions: dict, jobs: int | None = None) -> dict:
    """:func:`grade_submissions` split over ``jobs`` processes (default: the CPU count), merged;
    each kernel then runs torch on one thread."""
    from concurrent.futures import ProcessPoolExecutor

    jobs = max(1, min(jobs or os.cpu_count() or 1, len(submissions)))
    names = list(submissions)
    chunks = [{n: submissions[n] for n in names[i::jobs]} for i in range(jobs)]
    roots = [pathlib.Path(workdir) / f"{assignment}-{i}" for i in range(jobs)]
    if jobs == 1:
        return grade_submissions(roots[0], assignment, chunks[0])
    out = {}
    import multiprocessing

    # spawn, not fork: the parent has torch (and its thread pools) loaded.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_thread_per_kernel) as pool:
        for part in pool.map(grade_submissions, roots, [assignment] * jobs, chunks):
            out.update(part)
    return out


# ------------------------------------------------------------------ instructor loop: collect and summarise

_ASSIGNMENT_IN_NAME = re.compile(r"(\d\d_[a-z_]+?)(?=[^a-z_]|$)")


def _assignment_of(filename: str, assignments: list[str]) -> str | None:
    """'01_mha.ipynb', '01_mha (1).ipynb', 'alice_123_01_mha-Copy1.ipynb' -> '01_mha'."""
    for match in _ASSIGNMENT_IN_NAME.finditer(filename.lower()):
        name = match.group(1).rstrip("_")
        for a in assignments:
            if name == a or name.startswith(a):
                return a
    return None


def collect(source: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """Copy submissions from ``source`` into ``root``/autograde/submitted/<student>/<NN_topic>/.

    ``source`` holds, per student, either a folder (``alice/01_mha.ipynb``, at any
    depth) or a zip file (``bob.zip``, as learning-management systems export
    them). The student id is the folder or zip name; notebooks are matched to
    workbooks by the ``NN_topic`` in their file name, so renamed copies such as
    ``01_mha (1).ipynb`` are found. Returns one line per notebook, saying where
    it went or why it was skipped. Rerunning replaces a submission with the
    same file; nothing already graded is removed.
    """
    import zipfile

    source, root = pathlib.Path(source), pathlib.Path(root)
    assignments = sorted(p.name for p in (root / "solutions").iterdir() if p.is_dir())
    report = []

    def place(student: str, filename: str, data: bytes):
        assignment = _assignment_of(pathlib.PurePath(filename).name, assignments)
        if assignment is None:
            report.append(f"{student}: skipped {filename} (no workbook name such as 01_mha in it)")
            return
        target = root / "autograde" / "submitted" / student / assignment / f"{assignment}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        report.append(f"{student}: {filename} -> {target.relative_to(root)}")

    for entry in sorted(source.iterdir()):
        student = re.sub(r"[^A-Za-z0-9_.-]", "_", entry.stem if entry.suffix == ".zip" else entry.name)
        if entry.is_dir():
            for nb in sorted(entry.rglob("*.ipynb")):
                if ".ipynb_checkpoints" not in nb.parts:
                    place(student, str(nb.relative_to(entry)), nb.read_bytes())
        elif entry.suffix == ".zip":
            try:
                with zipfile.ZipFile(entry) as z:
                    for info in z.infolist():
                        if info.filename.endswith(".ipynb") and "__MACOSX" not in info.filename \
                                and ".ipynb_checkpoints" not in info.filename:
                            place(student, info.filename, z.read(info))
            except zipfile.BadZipFile:
                report.append(f"{student}: skipped {entry.name} (not a readable zip file)")
    return report


def summary(root: pathlib.Path = ROOT) -> list[dict]:
    """One row per student: each workbook's score ('-' if not submitted) and the failing test cells."""
    from nbgrader.api import Gradebook, MissingEntry

    root = pathlib.Path(root)
    rows = []
    with Gradebook(f"sqlite:///{root / 'autograde' / 'gradebook.db'}") as gb:
        assignments = sorted(a.name for a in gb.assignments)
        for student in sorted(s.id for s in gb.students):
            row, failing, total = {"student": student}, [], 0.0
            for a in assignments:
                try:
                    sub = gb.find_submission(a, student)
                except MissingEntry:
                    row[a] = "-"
                    continue
                row[a] = f"{sub.score:g}/{sub.max_score:g}"
                total += sub.score
                for nb in sub.notebooks:
                    failing += [f"{a}:{g.name}" for g in nb.grades if g.max_score and g.score < g.max_score]
            row["total"] = f"{total:g}"
            row["failing"] = " ".join(failing)
            rows.append(row)
    return rows


def _main(argv=None) -> int:
    import argparse
    import csv

    parser = argparse.ArgumentParser(description="Instructor tools: collect submissions, summarise grades.")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="copy per-student folders or zips into autograde/submitted/")
    c.add_argument("source", type=pathlib.Path)
    s = sub.add_parser("summary", help="students x workbooks, with failing test cells; also writes a CSV")
    s.add_argument("--csv", type=pathlib.Path, default=ROOT / "autograde" / "summary.csv")
    args = parser.parse_args(argv)
    if args.command == "collect":
        if not args.source.is_dir():
            print(f"{args.source} is not a folder of per-student folders or zips")
            return 2
        print("\n".join(collect(args.source)))
        return 0
    rows = summary()
    if not rows:
        print("no graded submissions yet: run `make grade` first")
        return 1
    fields = list(rows[0])
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in fields}
    print("  ".join(k.ljust(widths[k]) for k in fields))
    for r in rows:
        print("  ".join(str(r[k]).ljust(widths[k]) for k in fields))
    print(f"written to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
