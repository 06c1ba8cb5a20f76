"""Grading through nbgrader's own API, for the tests and the instructor scripts.

A grading "workspace" is a copy of the course (solutions/, course/ and the
nbgrader config) in a folder of its own, with its own gradebook, so that the
test suite never touches the instructor's autograde/ folder. ``make grade``
(:func:`attnlab.instructor.batch.grade_course`) grades the instructor's own course on every core.

The instructor's command line, as the Makefile calls it::

    python -m attnlab.instructor.grading collect FOLDER  # make collect (attnlab.instructor.collect)
    python -m attnlab.instructor.grading grade           # make grade: grade, write grades.csv and the summary
    python -m attnlab.instructor.grading summary         # make summary (attnlab.instructor.summary)
"""
from __future__ import annotations

import copy
import os
import pathlib
import shutil
import sys
import warnings

import nbformat

from attnlab import cells

from attnlab.instructor import course
from attnlab.instructor.batch import GradingRefused, grade_course, one_thread_per_kernel
from attnlab.instructor.collect import collect
from attnlab.instructor.summary import export_grades, print_summary, shown

ROOT = course.ROOT


def quiet() -> None:
    """Silence the two warnings every grading run would print, and only those.

    nbgrader 0.9.6 builds each submission's rows through SQLAlchemy backrefs
    and adds them to the session only afterwards; SQLAlchemy 2 warns about
    that on every autograde ("Object of type <SubmittedNotebook> not in
    session, add operation along 'Notebook.submissions' will not proceed")
    although nbgrader then adds the rows itself. nbformat warns about notebooks
    saved without cell ids (older Jupyter) and gives them ids as it reads them.
    Neither asks anything of the instructor. Every other warning still shows:
    a blanket PYTHONWARNINGS=ignore would also hide the ones that do."""
    from nbformat.warnings import MissingIDFieldWarning

    warnings.filterwarnings("ignore", message=r"Object of type <\w+> not in session", module=r"nbgrader\.")
    warnings.filterwarnings("ignore", category=MissingIDFieldWarning)


def workspace(dest: pathlib.Path, assignments=None, config: str = "") -> pathlib.Path:
    """Copy the course into ``dest`` (solutions/, course/, autograde config);
    ``config`` is appended to the copy's nbgrader_config.py (e.g. a shorter timeout)."""
    dest = pathlib.Path(dest)
    (dest / "autograde").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "autograde" / "nbgrader_config.py", dest / "autograde")
    if config:
        with open(dest / "autograde" / "nbgrader_config.py", "a") as f:
            f.write("\n# added for this workspace\n" + config + "\n")
    for folder in ("solutions", "course"):
        for src in sorted((ROOT / folder).iterdir()):
            if src.is_dir() and (assignments is None or src.name in assignments):
                shutil.copytree(src, dest / folder / src.name, dirs_exist_ok=True)
    return dest


def api(root: pathlib.Path):
    """An NbGraderAPI on the course copy at ``root``, configured by its own config file."""
    course.nbgrader_on_path()
    quiet()
    return course.nbgrader_api(root, for_grading=True)




def filled(release: nbformat.NotebookNode, source: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The release notebook as a learner who wrote the model answers hands it in."""
    answers = cells.solution_cells(source)
    nb = copy.deepcopy(release)
    for cell in nb.cells:
        grade_id = cells.grade_id(cell)
        if grade_id in answers:
            cell.source = answers[grade_id]
    return nb


def edit_cell(nb: nbformat.NotebookNode, grade_id: str, old: str, new: str) -> nbformat.NotebookNode:
    """A copy of ``nb`` with ``old`` replaced by ``new`` in the cell ``grade_id``."""
    nb = copy.deepcopy(nb)
    cells.replace_in_cell(nb, grade_id, old, new)
    return nb


def submit(root: pathlib.Path, student: str, assignment: str, nb) -> pathlib.Path:
    """Place ``nb`` where nbgrader expects ``student``'s submission (a notebook,
    or raw bytes for a file that may not be one)."""
    path = pathlib.Path(root) / "autograde" / "submitted" / student / assignment / f"{assignment}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(nb, bytes):
        path.write_bytes(nb)
    else:
        nbformat.write(nb, path)
    return path


def scores(root: pathlib.Path, assignment: str, student: str) -> dict[str, tuple[float, float]]:
    """grade_id -> (score, max_score) for every autograded cell, from the gradebook."""
    with course.gradebook(root) as gb:
        nb = gb.find_submission_notebook(assignment, assignment, student)
        return {g.name: (g.score, g.max_score) for g in nb.grades if g.cell.cell_type == "code"}


def autograded_errors(root: pathlib.Path, assignment: str, student: str) -> dict[str, str]:
    """grade_id -> the error a graded cell printed in the autograded notebook."""
    path = pathlib.Path(root) / "autograde" / "autograded" / student / assignment / f"{assignment}.ipynb"
    out = {}
    for cell in nbformat.read(path, as_version=4).cells:
        grade_id = cells.grade_id(cell)
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
        # The feedback a student would receive, for the tests that read it (tests/test_feedback.py).
        if not nbgrader_api.generate_feedback(assignment, student)["success"]:
            raise RuntimeError(f"the feedback for {student} failed")
        out[student] = (scores(ws, assignment, student), autograded_errors(ws, assignment, student))
    return out


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
                             initializer=one_thread_per_kernel) as pool:
        for part in pool.map(grade_submissions, roots, [assignment] * jobs, chunks):
            out.update(part)
    return out


# ------------------------------------------------------------------ the command line

def _main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Instructor tools: collect, grade, summarise.")
    parser.add_argument("--root", type=pathlib.Path, default=ROOT, help="the course (default: this repository)")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="copy per-student folders or zips into autograde/submitted/")
    c.add_argument("source", type=pathlib.Path)
    g = sub.add_parser("grade", help="autograde what was submitted (in parallel), write feedback, "
                                     "grades.csv and the summary")
    g.add_argument("--jobs", type=int, default=None, help="grading processes (default: one per core)")
    g.add_argument("--student", default=None, help="grade this student only")
    g.add_argument("--force", action="store_true", help="grade again what is already graded")
    s = sub.add_parser("summary", help="students x workbooks, with failing test cells; also writes a CSV")
    s.add_argument("--csv", type=pathlib.Path, default=None, help="default: autograde/summary.csv")
    args = parser.parse_args(argv)
    quiet()
    root = args.root
    if args.command == "collect":
        if not args.source.is_dir():
            print(f"{args.source} is not a folder of per-student folders or zips")
            return 2
        report = collect(args.source, root)
        print("\n".join(report))
        skipped = sum(line.split(": ", 1)[1].startswith("skipped ") for line in report)
        placed = len(report) - skipped
        print(f"collected {placed} notebook{'s' * (placed != 1)} into autograde/submitted/"
              + (f"; SKIPPED {skipped} file{'s' * (skipped != 1)} (listed above; the summary lists them too)"
                 if skipped else ""))
        return 1 if skipped or not report else 0
    if args.command == "grade":
        from attnlab.verdict.grading import CHECKED, SecretError, class_secret

        try:
            secret = class_secret(root / "autograde")
        except SecretError as e:
            print(f"not grading: {e}")
            return 2
        print(f"hidden tests of {', '.join(CHECKED)}: "
              + ("cases drawn per student from the class secret" if secret else
                 "the public source's cases (no class secret: set ATTNLAB_CLASS_SECRET or write "
                 "autograde/class_secret to draw each student's own)"))
        try:
            results = grade_course(root, jobs=args.jobs, student=args.student, force=args.force)
        except GradingRefused as e:
            print(f"not grading: {e}")
            return 2
        bad = [r for r in results if not r["success"]]
        if results:
            print(f"graded {len(results) - len(bad)} of {len(results)} submitted notebooks"
                  + (f"; {len(bad)} could not be graded (the summary flags them)" if bad else ""))
        bare = sum(not r["sandbox"] for r in results)
        if bare:
            print(f"{bare} notebook{'s were' if bare != 1 else ' was'} graded WITHOUT the sandbox "
                  "(ATTNLAB_SANDBOX=off): the summary flags them")
        print(f"grades: {shown(export_grades(root))}; feedback: {shown(root / 'autograde' / 'feedback')}/")
        return print_summary(root)
    return print_summary(root, args.csv)


if __name__ == "__main__":
    sys.exit(_main())
