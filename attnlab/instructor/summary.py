"""make summary: students by workbooks, and the grades nbgrader's gradebook holds.

:func:`summary` is one row per student (each workbook's score, the failing
test cells, and flags for the instructor); :func:`print_summary` prints it and
writes autograde/summary.csv; :func:`export_grades` writes autograde/grades.csv
with the columns of ``nbgrader export``.
"""
from __future__ import annotations

import pathlib

from attnlab.instructor import course, flags

ROOT = course.ROOT


def summary(root: pathlib.Path = ROOT) -> list[dict]:
    """One row per student: each workbook's score ('-' if not submitted, 'not graded'
    if nbgrader could not grade it), the failing test cells, and flags: code
    the instructor should read (:func:`attnlab.instructor.flags.flags`), what went wrong at run time,
    files make collect skipped, folders that are no workbook, and notebooks
    graded without the sandbox."""
    from nbgrader.api import MissingEntry

    root = pathlib.Path(root)
    submitted, autograded = root / "autograde" / "submitted", root / "autograde" / "autograded"
    rows = []
    with course.gradebook(root) as gb:
        assignments = sorted({a.name for a in gb.assignments} | set(course.workbooks(root)))
        skipped = course.load_record(root, course.SKIPPED)
        unsandboxed = {tuple(p) for p in course.load_record(root, course.UNSANDBOXED)}
        students = {s.id for s in gb.students} | {s["student"] for s in skipped} | (
            {p.name for p in submitted.iterdir() if p.is_dir()} if submitted.is_dir() else set())
        for student in sorted(students):
            row, failing, found, total = {"student": student}, [], [], 0.0
            found += [f"not collected: {s['file']} ({s['why']})" for s in skipped if s["student"] == student]
            if (submitted / student).is_dir():
                found += [f"{p.name}: not a workbook of this course, not graded"
                          for p in sorted((submitted / student).iterdir())
                          if p.is_dir() and p.name not in assignments and not p.name.startswith(".")]
            for a in assignments:
                folder, graded = submitted / student / a, autograded / student / a / f"{a}.ipynb"
                if (a, student) in unsandboxed:
                    found.append(f"{a}: graded without the sandbox (ATTNLAB_SANDBOX=off)")
                if not folder.is_dir():
                    row[a] = "-"
                    continue
                notebook = folder / f"{a}.ipynb"
                if not notebook.exists():
                    row[a] = "not graded"
                    found.append(f"{a}: no {a}.ipynb in the submission")
                    continue
                found += [f"{a}:{f}" for f in flags.flags(notebook)]
                try:
                    sub = gb.find_submission(a, student)
                except MissingEntry:
                    sub = None
                if sub is None or not graded.exists():
                    row[a] = "not graded"
                    found.append(f"{a}: could not be graded (see make grade's output and autograde/grading.log)")
                    continue
                row[a] = f"{sub.score:g}/{sub.max_score:g}"
                total += sub.score
                found += [f"{a}:{f}" for f in flags.runtime_flags(graded)]
                for nb in sub.notebooks:
                    failing += [f"{a}:{g.name}" for g in nb.grades if g.max_score and g.score < g.max_score]
            row["total"] = f"{total:g}"
            row["failing"] = " ".join(failing)
            row["flags"] = "; ".join(found)
            rows.append(row)
    return rows


GRADES_COLUMNS = ["assignment", "duedate", "timestamp", "student_id", "last_name", "first_name", "email",
                  "raw_score", "late_submission_penalty", "score", "max_score"]


def export_grades(root: pathlib.Path = ROOT, dest: pathlib.Path | None = None) -> pathlib.Path:
    """Write grades.csv (default autograde/grades.csv) from the gradebook: one row
    per workbook and student, with the columns of ``nbgrader export``.

    Unlike nbgrader's exporter, a workbook the student did not hand in, or that
    could not be graded, has empty scores rather than 0 (nothing was graded;
    the summary says why), and the timestamp is when it was handed in (the
    timestamp.txt that make collect writes; empty when nobody recorded one)."""
    import csv
    from nbgrader.api import MissingEntry

    root = pathlib.Path(root)
    dest = pathlib.Path(dest or root / "autograde" / "grades.csv")
    rows = []
    with course.gradebook(root) as gb:
        for a in sorted(gb.assignments, key=lambda a: a.name):
            for st in sorted(gb.students, key=lambda st: st.id):
                row = {"assignment": a.name, "duedate": a.duedate or "", "student_id": st.id,
                       "last_name": st.last_name or "", "first_name": st.first_name or "",
                       "email": st.email or "", "max_score": a.max_score, "timestamp": "",
                       "raw_score": "", "late_submission_penalty": "", "score": ""}
                try:
                    sub = gb.find_submission(a.name, st.id)
                except MissingEntry:
                    sub = None
                graded = root / "autograde" / "autograded" / st.id / a.name / f"{a.name}.ipynb"
                if sub is not None and graded.exists():
                    penalty = sub.late_submission_penalty or 0.0
                    row.update(timestamp=sub.timestamp or "", raw_score=sub.score, late_submission_penalty=penalty,
                               score=max(0.0, sub.score - penalty))
                rows.append(row)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=GRADES_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return dest


def print_summary(root: pathlib.Path = ROOT, dest: pathlib.Path | None = None) -> int:
    """Print :func:`summary` as a table and write it to ``dest`` (default autograde/summary.csv)."""
    import csv

    rows = summary(root)
    if not rows:
        print("no graded submissions yet: run `make grade` first")
        return 1
    fields = list(rows[0])
    dest = pathlib.Path(dest or pathlib.Path(root) / "autograde" / "summary.csv")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in fields}
    print("  ".join(k.ljust(widths[k]) for k in fields).rstrip())
    for r in rows:
        print("  ".join(str(r[k]).ljust(widths[k]) for k in fields).rstrip())
    print(f"written to {shown(dest)}")
    return 0


def shown(path: pathlib.Path) -> str:
    """``path`` as the instructor would type it: relative to the working folder when it lies inside it."""
    path = pathlib.Path(path).resolve()
    return str(path.relative_to(pathlib.Path.cwd())) if path.is_relative_to(pathlib.Path.cwd()) else str(path)
