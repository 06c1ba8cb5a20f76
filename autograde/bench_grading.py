"""How long `make grade` takes for a class, and whether it loses anything under load.

    .venv/bin/python autograde/bench_grading.py                  # 20 students, every workbook, one process per core
    .venv/bin/python autograde/bench_grading.py --students 5 --jobs 1
    .venv/bin/python autograde/bench_grading.py --students 29 --jobs 2 --resubmit 0.33   # the load test: 203 + 68

Builds a class in a temporary copy of the course: student 0 hands in the
model answers, student 1 the blank release, and the others the model answers
with one planted mistake each (solutions/NN_topic/mistakes.py, taken in turn), for
every workbook. Then grades them all with the code behind `make grade`
(autograde, feedback, in parallel, the sandboxed kernel included), from an
empty gradebook. With ``--resubmit F``, a fraction F of the notebooks (spread
over the class) is handed in again as the model answers and `make grade` runs
a second time.

Prints, for each wave: the wall time, the time per submitted notebook (target:
at most 5 s with two processes on two cores) and notebooks per hour, each
workbook's mean, and the peak memory of the grading processes (make grade's
own, its workers and their kernels, sampled every 0.2 s). Then checks what a
class needs: every notebook graded, none twice (each wave grades exactly what
was handed in since the last), nothing lost (every notebook in the gradebook
with its feedback, the first wave's grades of what was not handed in again
unchanged, the resubmissions scored as the model answers, SQLite's integrity
check). Reported, not asserted: the exit status is 1 when a check fails.
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


class PeakMemory:
    """The most memory the grading processes held at once: this process (make grade's own),
    its workers and their kernels, sampled every ``every`` seconds in a thread."""

    def __init__(self, every: float = 0.2):
        self.every, self.total, self.single, self.processes = every, 0, 0, 0

    def _sample(self):
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self.every):
            sizes = []
            for p in [me, *me.children(recursive=True)]:
                try:
                    sizes.append(p.memory_info().rss)
                except psutil.Error:  # ended between the listing and the reading
                    pass
            self.total, self.single = max(self.total, sum(sizes)), max(self.single, max(sizes))
            self.processes = max(self.processes, len(sizes))

    def __enter__(self):
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def wave(ws: pathlib.Path, name: str, expected: set, jobs: int | None) -> dict:
    """Grade what is pending with make grade's code; the figures and what it graded."""
    print(f"\n{name}: {len(expected)} notebooks", flush=True)
    with PeakMemory() as memory:
        t = time.perf_counter()
        results = grading.grade_course(ws, jobs=jobs, progress=lambda line: print(line, flush=True))
        wall = time.perf_counter() - t
    graded = [(r["assignment"], r["student"]) for r in results]
    n = len(expected)
    out = {"notebooks": n, "wall_s": round(wall, 1), "per_notebook_s": round(wall / n, 2),
           "notebooks_per_hour": round(n / wall * 3600), "peak_memory_total_gib": round(memory.total / 2**30, 2),
           "peak_memory_one_process_mib": round(memory.single / 2**20), "most_processes": memory.processes,
           "mean_grading_s_per_workbook": {a: round(statistics.mean(r["seconds"] for r in results
                                                                    if r["assignment"] == a), 2)
                                           for a in sorted({a for a, _ in graded})},
           "not_graded": [f"{r['student']}/{r['assignment']}: {r['error']}" for r in results
                          if not (r["success"] and r["feedback"])],
           "graded_twice": sorted(f"{s}/{a}" for a, s in set(graded) if graded.count((a, s)) > 1),
           "graded_but_not_handed_in": sorted(f"{s}/{a}" for a, s in set(graded) - expected),
           "handed_in_but_not_graded": sorted(f"{s}/{a}" for a, s in expected - set(graded))}
    print(f"{name}: {wall:.1f} s for {n} notebooks = {wall / n:.2f} s per notebook "
          f"(target {TARGET_S:g} s: {'met' if wall / n <= TARGET_S else 'MISSED'}), "
          f"{out['notebooks_per_hour']:,} notebooks per hour")
    print(f"  peak memory: {out['peak_memory_total_gib']} GiB for all grading processes together "
          f"(at most {memory.processes} at once), {out['peak_memory_one_process_mib']} MiB the largest one")
    for a, m in out["mean_grading_s_per_workbook"].items():
        print(f"  {a}: {m:.1f} s to autograde and write feedback for one notebook, in one process")
    return out


def gradebook_state(ws: pathlib.Path) -> dict:
    """(workbook, student) -> (score, max score) for every graded notebook."""
    from attnlab.instructor import course

    with course.gradebook(ws) as gb:
        return {(sub.assignment.name, sub.student.id): (sub.score, sub.max_score)
                for a in gb.assignments for sub in a.submissions}


def main(argv=None) -> int:
    import sqlite3

    from attnlab.instructor import batch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=None, help="grading processes (default: one per core)")
    parser.add_argument("--assignments", nargs="*", default=None, help="default: every workbook")
    parser.add_argument("--resubmit", type=float, default=0.0,
                        help="hand this fraction of the notebooks in again and grade a second wave")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    assignments = args.assignments or sorted(
        p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and p.name[:2].isdigit())
    checks = {}
    with tempfile.TemporaryDirectory(prefix="attnlab-bench-") as tmp:
        ws = grading.workspace(pathlib.Path(tmp), assignments)
        answers = {}
        for a in assignments:
            subs = submissions(a, args.students)
            answers[a] = subs["student00"]
            for student, nb in subs.items():
                grading.submit(ws, student, a, nb)
        everything = {(a, f"student{i:02d}") for a in assignments for i in range(args.students)}
        jobs = args.jobs or os.cpu_count()
        print(f"grading {args.students} students x {len(assignments)} workbooks = {len(everything)} notebooks "
              f"with {jobs} process(es) on {os.cpu_count()} CPU(s), from an empty gradebook", flush=True)
        waves = [wave(ws, "first wave", everything, args.jobs)]
        first = gradebook_state(ws)
        again = set()
        if args.resubmit:
            # Spread over the class, never the model answers again (the same file is not a resubmission).
            candidates = sorted(everything - {(a, "student00") for a in assignments}, key=lambda p: (p[1], p[0]))
            step = max(1, round(1 / args.resubmit))
            again = set(candidates[::step][:round(args.resubmit * len(everything))])
            for a, student in sorted(again):
                grading.submit(ws, student, a, answers[a])
            waves.append(wave(ws, "second wave (resubmissions)", again, args.jobs))
        last = gradebook_state(ws)
        left = batch.pending(ws)
        with sqlite3.connect(ws / "autograde" / "gradebook.db") as con:
            integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        feedback = {(a, s) for a, s in everything
                    if (ws / "autograde" / "feedback" / s / a / f"{a}.html").is_file()}
        checks = {
            "every notebook graded, with its feedback": all(not w["not_graded"] for w in waves)
            and set(last) == everything and feedback == everything and not left,
            "none graded twice": all(not w["graded_twice"] for w in waves),
            "each wave graded exactly what was handed in": all(
                not (w["graded_but_not_handed_in"] or w["handed_in_but_not_graded"]) for w in waves),
            "nothing lost: grades of what was not handed in again unchanged":
                all(last[p] == first[p] for p in everything - again),
            # They lost points the first time (blank, or a planted mistake), and now score as the model answers.
            "resubmissions graded anew (the model answers: full marks)":
                all(first[p][0] < first[p][1] and last[p][0] == last[p][1] for p in again),
            "the gradebook passes SQLite's integrity check": integrity == "ok",
        }
    print()
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    for w in waves:
        for line in w["not_graded"]:
            print(f"not graded: {line}")
    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "students": args.students, "workbooks": assignments, "jobs": jobs, "waves": waves,
        "target_per_notebook_s": TARGET_S, "checks": checks,
    }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
