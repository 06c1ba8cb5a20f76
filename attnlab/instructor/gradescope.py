"""Gradescope autograders for the course: one zip per workbook, built from the same sources.

Gradescope runs each submission in a container of its own: ``setup.sh`` builds
the image once, then ``run_autograder`` grades ``$AUTOGRADER_ROOT/submission``
and writes ``$AUTOGRADER_ROOT/results/results.json`` (Gradescope's
"Autograder Specifications": tests[] with name, score, max_score, output,
status, visibility; top-level score, execution_time, output,
stdout_visibility). ``python -m attnlab.instructor.gradescope build`` writes
``autograde/gradescope/<NN_topic>.zip`` with both scripts, the pins, the course
package and that workbook's nbgrader source (hidden tests included: nothing
of the other workbooks but their cell ids). Grading goes through nbgrader with
the course's config, and each test's ``output`` is the verdict of
:mod:`attnlab.instructor.feedback` (never a hidden line, input or grading path).

The student's code runs in the same container as the hidden tests. Where the
container allows namespaces, the course's sandboxed grading kernel runs as in
``make grade``. Where it refuses them, grading falls back to the kernel with
``ATTNLAB_SANDBOX=off`` started as an unprivileged user of its own: the
autograder's folder (sources, gradebook) becomes root-only, the kernel gets a
copy of the package whose answer key is bytecode only, a read-only working
folder and a process limit. Without root either, nothing is graded (score 0,
the reason in ``output``). results.json's ``output`` says which way it went.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
import zipfile

PACKAGE = pathlib.Path(__file__).resolve().parent.parent
ROOT = PACKAGE.parent
OUT = ROOT / "autograde" / "gradescope"
MANIFEST = "gradescope.json"
PINS = ("requirements.txt", "constraints.txt", "pyproject.toml")
STUDENT = "student"
# setup.sh's environment; run_autograder puts its bin/ first on PATH when it exists.
VENV = "/opt/attnlab"

SETUP_SH = r"""#!/usr/bin/env bash
# Gradescope runs this once, as root, in /autograder/source, to build the image.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive
# The pins need Python 3.11 or later (Ubuntu 22.04 ships 3.10; 24.04 ships 3.12).
PY=""
for v in python3.13 python3.12 python3.11; do
  if command -v "$v" >/dev/null; then PY="$v"; break; fi
done
if [ -z "$PY" ]; then
  apt-get update
  apt-get install -y python3.11 python3.11-venv || {
    apt-get install -y software-properties-common
    add-apt-repository -y ppa:deadsnakes/ppa
    apt-get update
    apt-get install -y python3.11 python3.11-venv
  }
  PY=python3.11
fi
# Debian's Pythons make venvs with pip only once their -venv package is there.
"$PY" -m venv __VENV__ || { apt-get update && apt-get install -y "$PY-venv" && "$PY" -m venv --clear __VENV__; }
PIP="__VENV__/bin/python -m pip install --disable-pip-version-check --no-input"
# torch's CPU wheel from PyTorch's own index (PyPI's Linux wheel is the CUDA build), then every pin.
$PIP torch==$(sed -n 's/^torch==//p' requirements.txt) --index-url https://download.pytorch.org/whl/cpu
$PIP -r requirements.txt -c constraints.txt
# jsonschema's IRI grammar costs every nbformat import 2.6 s and checks nothing here (see the Makefile).
__VENV__/bin/python -m pip uninstall --disable-pip-version-check -y rfc3987-syntax
# matplotlib's font cache now: building it inside a graded cell would warn on stderr.
MPLBACKEND=Agg __VENV__/bin/python -c "import matplotlib.pyplot"
# The gradebook and the release, once: run_autograder then only grades.
PYTHONPATH="$PWD" __VENV__/bin/python -m attnlab.instructor.gradescope prepare
""".replace("__VENV__", VENV)

RUN_AUTOGRADER = r"""#!/usr/bin/env bash
# Gradescope runs this for each submission; the work is in attnlab/instructor/gradescope.py.
export AUTOGRADER_ROOT="${AUTOGRADER_ROOT:-/autograder}"
venv="${ATTNLAB_VENV:-__VENV__}"
if [ -x "$venv/bin/python3" ]; then PATH="$venv/bin:$PATH"; fi
export PYTHONPATH="$AUTOGRADER_ROOT/source" MPLBACKEND=Agg
# From the source folder: python3 -m looks there first for the course package.
cd "$AUTOGRADER_ROOT/source" && python3 -m attnlab.instructor.gradescope run --root "$AUTOGRADER_ROOT"
status=$?
# Whatever happened above, Gradescope gets a result, never an empty page.
results="$AUTOGRADER_ROOT/results/results.json"
if [ ! -s "$results" ]; then
  mkdir -p "$AUTOGRADER_ROOT/results"
  echo '{"score": 0, "output": "The autograder could not run; please tell your instructor.", "tests": []}' > "$results"
fi
exit $status
""".replace("__VENV__", VENV)


# ------------------------------------------------------------------ make gradescope: the zips

def _files(assignment: str) -> list[tuple[str, pathlib.Path]]:
    """(name in the zip, file here) for everything but the two scripts and the manifest."""
    out = [(name, ROOT / name) for name in PINS]
    out.append(("autograde/nbgrader_config.py", ROOT / "autograde" / "nbgrader_config.py"))
    for path in sorted(PACKAGE.rglob("*")):
        rel = path.relative_to(ROOT)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc":
            out.append((rel.as_posix(), path))
    # The workbook's source and release; its .py files (the text source, mistakes.py) stay out.
    for folder in ("solutions", "course"):
        for path in sorted((ROOT / folder / assignment).rglob("*")):
            if path.is_file() and path.suffix != ".py" and ".ipynb_checkpoints" not in path.parts:
                out.append((path.relative_to(ROOT).as_posix(), path))
    return out


def _manifest(assignment: str, ids: dict | None = None) -> dict:
    """The workbook, and every workbook's release cell ids: what tells a wrong workbook apart."""
    from attnlab.instructor import collect, course

    ids = ids or collect.release_ids(ROOT, course.workbooks())
    return {"workbook": assignment, "cells": {a: sorted(c) for a, c in ids.items()}}


def _add(z: zipfile.ZipFile, name: str, data: bytes, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))  # the same sources give the same zip
    info.external_attr = (0o100755 if executable else 0o100644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    z.writestr(info, data)


def build(assignments=None, out: pathlib.Path = OUT) -> list[pathlib.Path]:
    """Write ``out/<NN_topic>.zip`` for each workbook (default: all); returns their paths."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from attnlab.instructor import collect, course

    made, ids = [], collect.release_ids(ROOT, course.workbooks())
    for a in assignments or course.workbooks():
        path = out / f"{a}.zip"
        tmp = path.with_suffix(".zip.tmp")
        with zipfile.ZipFile(tmp, "w") as z:
            _add(z, "setup.sh", SETUP_SH.encode(), executable=True)
            _add(z, "run_autograder", RUN_AUTOGRADER.encode(), executable=True)
            _add(z, MANIFEST, (json.dumps(_manifest(a, ids), indent=1) + "\n").encode())
            for name, src in _files(a):
                _add(z, name, src.read_bytes())
        tmp.replace(path)
        made.append(path)
    return made


def unpack(zip_path: pathlib.Path, source: pathlib.Path) -> pathlib.Path:
    """Extract a zip as Gradescope does, into ``source`` (executable bits kept)."""
    source = pathlib.Path(source)
    with zipfile.ZipFile(zip_path) as z:
        for info in z.infolist():
            z.extract(info, source)
            os.chmod(source / info.filename, (info.external_attr >> 16) & 0o777 or 0o644)
    return source


def prepare(root: pathlib.Path = ROOT) -> None:
    """setup.sh's last step: the workbook in the gradebook (nbgrader generate_assignment)."""
    from attnlab.instructor import grading

    assignment = json.loads((pathlib.Path(root) / MANIFEST).read_text())["workbook"]
    result = grading.api(pathlib.Path(root)).generate_assignment(assignment, force=True)
    if not result["success"]:
        raise RuntimeError(f"nbgrader generate_assignment {assignment} failed:\n{result.get('log')}")


# ------------------------------------------------------------------ run_autograder: one submission

def check_submission(folder: pathlib.Path, assignment: str, release: dict) -> tuple[pathlib.Path | None, str]:
    """(the notebook to grade, '') or (None, why it cannot be graded), without starting a kernel;
    ``release`` is the manifest's cell ids of each workbook's release."""
    from attnlab import cells
    from attnlab.instructor import collect

    folder = pathlib.Path(folder)
    found = sorted(p for p in folder.rglob("*.ipynb") if p.is_file() and not any(
        part.startswith(".") or part == "__MACOSX" for part in p.relative_to(folder).parts)) \
        if folder.is_dir() else []
    want = f"{assignment}.ipynb"
    if not found:
        return None, f"no notebook was submitted; upload {want}"
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:5]) + (", …" if len(found) > 5 else "")
        return None, f"{len(found)} notebooks were submitted ({names}); upload {want} alone"
    path = found[0]
    data = path.read_bytes()
    why = collect.not_a_submission(data, assignment, {a: set(ids) for a, ids in release.items()})
    if why:
        return None, f"{path.name[:80]} cannot be graded ({why})"
    if not cells.grade_ids(cells.from_bytes(data)):
        return None, f"{path.name[:80]} has lost the course's cell metadata; copy your answers into a fresh {want}"
    if path.name != want:
        return None, f"the notebook is named {path.name[:80]!r}; rename it {want} and submit it again"
    return path, ""


def _points(assignment: str, root: pathlib.Path = ROOT) -> list[tuple[str, float]]:
    """(grade_id, points) of every autograded cell, in the notebook's order."""
    import nbformat

    from attnlab import cells

    nb = nbformat.read(pathlib.Path(root) / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    return [(c.metadata["nbgrader"]["grade_id"], float(c.metadata["nbgrader"].get("points", 0)))
            for c in nb.cells if cells.gives_points(c)]


def _results(assignment: str, scores: dict, outputs: dict, summary: str) -> dict:
    """Gradescope's results.json: one test per autograded cell, its verdict as output."""
    tests = []
    for i, (cell, points) in enumerate(_points(assignment), 1):
        score, max_score = scores.get(cell, (0.0, points))
        tests.append({"name": cell, "number": str(i), "score": score, "max_score": max_score,
                      "status": "passed" if score >= max_score else "failed",
                      "output": outputs.get(cell, "not graded"), "output_format": "text", "visibility": "visible"})
    total = sum(t["score"] for t in tests)
    return {"score": total, "output": summary, "stdout_visibility": "hidden", "tests": tests}


def not_graded(assignment: str, why: str) -> dict:
    """Score 0, and one sentence on what was wrong."""
    return _results(assignment, {}, {}, f"Not graded: {why}.")


def verdicts(nb, extra_paths=()) -> dict[str, str]:
    """grade_id -> the learner-facing verdict of each autograded cell, as :mod:`attnlab.instructor.feedback` words it."""
    import copy

    from attnlab import cells

    from attnlab.instructor import feedback

    nb = copy.deepcopy(nb)
    feedback.sanitise(nb, extra_paths)
    out = {}
    for cell in nb.cells:
        if not cells.gives_points(cell):
            continue
        text = "".join(o.get("text", "") if o.get("output_type") == "stream" else "\n".join(o.get("traceback", []))
                       for o in cell.get("outputs", []))
        out[cells.nbgrader(cell)["grade_id"]] = feedback.ANSI.sub("", text).strip() or "no error"
    return out


def isolation() -> str:
    """How this container can run the kernel: 'sandbox' (namespaces), 'unprivileged' (root,
    no namespaces) or '' (neither: nothing is graded). ATTNLAB_GRADESCOPE_KERNEL chooses."""
    from attnlab.instructor import sandbox

    chosen = os.environ.get("ATTNLAB_GRADESCOPE_KERNEL", "").strip().lower()
    if chosen in ("sandbox", "unprivileged"):
        return chosen
    if os.environ.get("ATTNLAB_SANDBOX", "").strip().lower() != "off":
        seen = sandbox.report()["isolation"]
        if seen.startswith(("root", "user")) and "secrets hidden" in seen:
            return "sandbox"
    return "unprivileged" if os.geteuid() == 0 else ""


HOW = {"sandbox": "Graded by the course's grading kernel in its sandbox (namespaces: the hidden tests, "
                  "the network and other files out of its reach).",
       "unprivileged": "Graded without the namespace sandbox, which this container refuses: the kernel ran "
                       "with ATTNLAB_SANDBOX=off as an unprivileged user that cannot read the hidden tests, the "
                       "gradebook or the answer key's source, under the memory, CPU, file-size, process and "
                       "output limits; it could reach the network."}


def _grade(root: pathlib.Path, assignment: str, notebook: pathlib.Path, how: str, tmp: pathlib.Path) -> dict:
    """Autograde ``notebook`` in a private copy of the course under ``tmp``."""
    import nbformat

    from attnlab.instructor import flags, grading, unprivileged

    config = unprivileged.prepare(tmp, ROOT, assignment) if how == "unprivileged" else ""
    try:
        ws = grading.workspace(tmp / "course", [assignment], config=config)
        if (ROOT / "autograde" / "gradebook.db").exists():  # setup.sh made it
            shutil.copy(ROOT / "autograde" / "gradebook.db", ws / "autograde")
        elif not grading.api(ws).generate_assignment(assignment)["success"]:
            raise RuntimeError("no gradebook from setup.sh, and nbgrader generate_assignment failed")
        grading.submit(ws, STUDENT, assignment, notebook.read_bytes())
        result = grading.api(ws).autograde(assignment, STUDENT, force=True)
    finally:
        if how == "unprivileged":
            unprivileged.stop()
    # nbgrader warns "Attribute 'checksum' for cell ... has changed!" for every test cell with hidden tests,
    # edited or not (its gradebook holds the source cell's checksum), and puts each back from the source anyway.
    log = "\n".join(ln for ln in (result.get("log") or "").splitlines() if "Attribute 'checksum' for cell" not in ln)
    print(log[-4000:])
    graded = ws / "autograde" / "autograded" / STUDENT / assignment / f"{assignment}.ipynb"
    if not result["success"] or not graded.exists():
        causes = re.findall(r"^\s*([\w.]+(?:Error|Exception)): ", result.get("log") or "", re.M)
        cause = {"DeadKernelError": "the kernel died (os._exit, a crash, or past the CPU limit)"}.get(
            (causes or [""])[-1].rsplit(".", 1)[-1], "nbgrader could not run it to the end")
        return not_graded(assignment, f"the notebook could not be graded: {cause}")
    outputs = verdicts(nbformat.read(graded, as_version=4), [str(tmp), str(root)])
    out = _results(assignment, grading.scores(ws, assignment, STUDENT), outputs, HOW[how])
    print("flags for the instructor:", "; ".join(flags.flags(notebook, assignment)) or "none")
    return out


def run(root: pathlib.Path) -> dict:
    """Grade ``root``/submission, write ``root``/results/results.json, and return it."""
    start = time.monotonic()
    root = pathlib.Path(root).resolve()
    assignment = json.loads((ROOT / MANIFEST).read_text())["workbook"]
    try:
        cells = json.loads((ROOT / MANIFEST).read_text())["cells"]
        notebook, why = check_submission(root / "submission", assignment, cells)
        how = isolation() if notebook else ""
        if notebook is None:
            out = not_graded(assignment, why)
        elif not how:
            out = not_graded(assignment, "this container allows neither namespaces nor a change of user, so the "
                                         "hidden tests could not be kept from the submission; tell your instructor")
        else:
            with tempfile.TemporaryDirectory(prefix="attnlab-gradescope-") as tmp:
                os.chmod(tmp, 0o700)
                out = _grade(root, assignment, notebook, how, pathlib.Path(tmp))
    except Exception as e:  # noqa: BLE001  (a result, whatever went wrong; the traceback goes to stdout)
        import traceback

        traceback.print_exc(file=sys.stdout)
        out = not_graded(assignment, f"the autograder failed ({type(e).__name__}); tell your instructor")
    out["execution_time"] = round(time.monotonic() - start)
    results = root / "results"
    results.mkdir(parents=True, exist_ok=True)
    tmp_file = results / "results.json.tmp"
    tmp_file.write_text(json.dumps(out, indent=1) + "\n")
    tmp_file.replace(results / "results.json")
    print(f"score {out['score']:g} of {sum(t['max_score'] for t in out['tests']):g}: {out['output']}")
    return out


# ------------------------------------------------------------------ the benchmark and the command line

def bench(assignment: str = "01_mha") -> float:
    """Seconds run_autograder takes for the model answers of ``assignment``, after set-up."""
    import subprocess

    import nbformat

    from attnlab.instructor import grading

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        source = unpack(build([assignment], tmp / "zips")[0], tmp / "ag" / "source")
        env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                   AUTOGRADER_ROOT=str(tmp / "ag"), PYTHONPATH=str(source))
        subprocess.run([sys.executable, "-m", "attnlab.instructor.gradescope", "prepare"], env=env, cwd=source, check=True,
                       stdout=subprocess.DEVNULL)
        release = nbformat.read(source / "course" / assignment / f"{assignment}.ipynb", as_version=4)
        answers = grading.filled(release, nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb",
                                                        as_version=4))
        (tmp / "ag" / "submission").mkdir()
        nbformat.write(answers, tmp / "ag" / "submission" / f"{assignment}.ipynb")
        t = time.perf_counter()
        subprocess.run([str(source / "run_autograder")], env=env, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t
        result = json.loads((tmp / "ag" / "results" / "results.json").read_text())
    print(f"run_autograder, one {assignment} submission (the model answers), after set-up: {seconds:.1f} s; "
          f"score {result['score']:g}; {result['output']}")
    return seconds


def _main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Gradescope autograders for the course.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write autograde/gradescope/<NN_topic>.zip for each workbook")
    b.add_argument("workbooks", nargs="*")
    b.add_argument("--out", type=pathlib.Path, default=OUT)
    sub.add_parser("prepare", help="(setup.sh) record the workbook in the gradebook")
    r = sub.add_parser("run", help="(run_autograder) grade one submission")
    r.add_argument("--root", type=pathlib.Path, default=pathlib.Path(os.environ.get("AUTOGRADER_ROOT", "/autograder")))
    m = sub.add_parser("bench", help="time run_autograder on one submission")
    m.add_argument("workbook", nargs="?", default="01_mha")
    args = parser.parse_args(argv)
    if args.command == "build":
        for path in build(args.workbooks or None, args.out):
            print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
                  f"({path.stat().st_size // 1024} KiB)")
    elif args.command == "prepare":
        prepare()
    elif args.command == "run":
        run(args.root)
    else:
        bench(args.workbook)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
