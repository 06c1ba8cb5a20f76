"""How long `make grade` takes for a class: the grading throughput benchmark.

    .venv/bin/python autograde/bench_grading.py                  # 20 students, every workbook, one process per core
    .venv/bin/python autograde/bench_grading.py --students 5 --jobs 1

Builds a class in a temporary copy of the course: student 0 hands in the
model answers, student 1 the blank release, and the others the model answers
with one planted mistake each (solutions/NN_topic/mistakes.py, taken in turn), for
every workbook. Then grades them all with the code behind `make grade`
(autograde, feedback, in parallel, the sandboxed kernel included) and prints
the wall time, the time per submitted notebook (target: at most 10 s on two
cores) and each workbook's mean. Reported, not asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import nbformat

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT)]
from attnlab.instructor import grading, mistakes as planted  # noqa: E402

TARGET_S = 5.0


def submissions(assignment: str, n: int) -> dict:
    release = nbformat.read(ROOT / "course" / assignment / f"{assignment}.ipynb", as_version=4)
    source = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    answers = grading.filled(release, source)
    mistakes = planted.load(assignment)
    out = {}
    for i in range(n):
        if i == 0 or not mistakes:
            out[f"student{i:02d}"] = answers
        elif i == 1:
            out[f"student{i:02d}"] = release
        else:
            m = mistakes[(i - 2) % len(mistakes)]
            out[f"student{i:02d}"] = planted.apply(answers, [m])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=None, help="grading processes (default: one per core)")
    parser.add_argument("--assignments", nargs="*", default=None, help="default: every workbook")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    assignments = args.assignments or sorted(
        p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and p.name[:2].isdigit())
    with tempfile.TemporaryDirectory(prefix="attnlab-bench-") as tmp:
        ws = grading.workspace(pathlib.Path(tmp), assignments)
        api = grading.api(ws)
        for a in assignments:
            if not api.generate_assignment(a)["success"]:
                raise SystemExit(f"generate_assignment {a} failed")
            for student, nb in submissions(a, args.students).items():
                grading.submit(ws, student, a, nb)
        n = args.students * len(assignments)
        jobs = args.jobs or os.cpu_count()
        print(f"grading {args.students} students x {len(assignments)} workbooks = {n} notebooks "
              f"with {jobs} process(es) on {os.cpu_count()} CPU(s)", flush=True)
        t = time.perf_counter()
        results = grading.grade_course(ws, jobs=args.jobs, progress=lambda line: print(line, flush=True))
        wall = time.perf_counter() - t
    failed = [r for r in results if not r["success"]]
    per_workbook = {a: statistics.mean(r["seconds"] for r in results if r["assignment"] == a) for a in assignments}
    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "students": args.students, "workbooks": assignments, "notebooks": n, "jobs": jobs,
        "wall_s": round(wall, 1), "per_notebook_s": round(wall / n, 2), "target_per_notebook_s": TARGET_S,
        "mean_grading_s_per_workbook": {a: round(s, 2) for a, s in per_workbook.items()},
        "not_graded": [f"{r['student']}/{r['assignment']}" for r in failed],
    }
    print()
    print(f"wall time: {wall:.1f} s for {n} notebooks = {wall / n:.2f} s per submitted notebook "
          f"(target {TARGET_S:g} s: {'met' if wall / n <= TARGET_S else 'MISSED'})")
    for a, s in per_workbook.items():
        print(f"  {a}: {s:.1f} s to autograde and write feedback for one notebook, in one process")
    if failed:
        print(f"not graded: {', '.join(figures['not_graded'])}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
