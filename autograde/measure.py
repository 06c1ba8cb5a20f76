"""Measure the course's time targets and print the figures.

    .venv/bin/python autograde/measure.py            # every workbook
    .venv/bin/python autograde/measure.py 01_mha     # one

For each workbook: the time to run the solution notebook top to bottom (the
target is 60 s on two CPU cores; 90 s for 04, 120 s for 05 and for 06, which
trains three small models), and the time to autograde one submission through
nbgrader's API (target 30 s). Targets are reported, not asserted: timings
belong in a benchmark, not in a unit test.
"""
from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time
import warnings

import nbformat
import torch
from nbclient import NotebookClient

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from attnlab.instructor import grading  # noqa: E402

TARGETS = {"04_mla": 90, "05_cache_benchmark": 120, "06_beyond": 120}


def main(argv: list[str]) -> None:
    warnings.filterwarnings("ignore")  # nbgrader's SQLAlchemy chatter
    os.environ["PATH"] = str(pathlib.Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
    names = argv or sorted(p.name for p in (grading.ROOT / "solutions").iterdir() if p.is_dir())
    print(f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        ws = grading.workspace(pathlib.Path(tmp), names)
        api = grading.api(ws)
        for name in names:
            nb = nbformat.read(ws / "solutions" / name / f"{name}.ipynb", as_version=4)
            start = time.perf_counter()
            NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp}}).execute()
            run_s = time.perf_counter() - start

            assert api.generate_assignment(name)["success"]
            release = nbformat.read(ws / "course" / name / f"{name}.ipynb", as_version=4)
            grading.submit(ws, "timing", name, grading.filled(release, nb))
            start = time.perf_counter()
            assert api.autograde(name, "timing")["success"]
            grade_s = time.perf_counter() - start
            got = sum(s for s, _ in grading.scores(ws, name, "timing").values())
            total = sum(m for _, m in grading.scores(ws, name, "timing").values())
            target = TARGETS.get(name, 60)
            print(f"{name}: runs in {run_s:.1f} s (target {target} s); "
                  f"one submission autogrades in {grade_s:.1f} s (target 30 s), scoring {got:g}/{total:g}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
