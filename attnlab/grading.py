"""Grading through nbgrader's own API, for the tests and the instructor scripts.

A grading "workspace" is a copy of the course (solutions/, course/ and the
nbgrader config) in a folder of its own, with its own gradebook, so that the
test suite never touches the instructor's autograde/ folder.
"""
from __future__ import annotations

import ast
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


# ------------------------------------------------------------------ make grade: the whole class, on every core

def _newest_mtime(folder: pathlib.Path) -> float:
    return max((p.stat().st_mtime for p in folder.rglob("*") if p.is_file()), default=0.0)


def pending(root: pathlib.Path = ROOT, student: str | None = None, force: bool = False) -> list[tuple[str, str]]:
    """(assignment, student) pairs under autograde/submitted that need grading:
    all of them with ``force``; otherwise those not graded yet or submitted again since."""
    root = pathlib.Path(root)
    submitted, autograded = root / "autograde" / "submitted", root / "autograde" / "autograded"
    assignments = sorted(p.name for p in (root / "solutions").iterdir() if p.is_dir() and p.name[:2].isdigit())
    pairs = []
    for s in sorted(p.name for p in submitted.iterdir() if p.is_dir()) if submitted.is_dir() else []:
        if student and s != student:
            continue
        for a in assignments:
            src, out = submitted / s / a, autograded / s / a
            if src.is_dir() and (force or not out.is_dir() or _newest_mtime(src) > _newest_mtime(out)):
                pairs.append((a, s))
    return pairs


def _grade_pairs(root: str, pairs: list) -> list[dict]:
    """Autograde and write feedback for each (assignment, student) pair, one after another."""
    import time

    nbgrader_api = api(pathlib.Path(root))
    out = []
    for a, s in pairs:
        t = time.perf_counter()
        result = nbgrader_api.autograde(a, s, force=True)
        if result["success"]:
            nbgrader_api.generate_feedback(a, s, force=True)
        # The exception's own line says why ("NotJSONError: ...", "DeadKernelError: Kernel died").
        causes = re.findall(r"^\s*([\w.]+(?:Error|Exception): .*)$", result.get("log") or "", re.M)
        out.append({"assignment": a, "student": s, "success": bool(result["success"]),
                    "seconds": time.perf_counter() - t, "error": causes[-1][:200] if causes else ""})
    return out


def grade_course(root: pathlib.Path = ROOT, jobs: int | None = None, student: str | None = None,
                 force: bool = False, progress=print) -> list[dict]:
    """Autograde everything :func:`pending` in ``jobs`` processes (default: one per core), then feedback.

    The processes share the course's gradebook: SQLite serialises their short
    write transactions (the config's ``?timeout=`` makes a writer wait for the
    lock instead of failing), and each (assignment, student) pair is graded by
    exactly one process, so the gradebook is the one serial grading writes
    (tests/test_hostile.py compares the two). Each kernel runs torch on one
    thread. A submission that cannot be graded (corrupt file, dead kernel) is
    reported and the batch goes on."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing

    root = pathlib.Path(root)
    pairs = pending(root, student, force)
    if not pairs:
        progress("nothing to grade: every submission is graded (make grade FORCE=1 grades all again)")
        return []
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(pairs)))
    # Create the gradebook and its tables once, before the workers race to.
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{root / 'autograde' / 'gradebook.db'}", course_id="efficient-attention") as gb:
        known = {a.name for a in gb.assignments}
    # nbgrader grades only assignments its gradebook knows, which `make release` records.
    for a in sorted({a for a, _ in pairs} - known):
        progress(f"{a} is not in the gradebook yet: releasing it first (nbgrader generate_assignment)")
        if not api(root).generate_assignment(a)["success"]:
            raise RuntimeError(f"nbgrader generate_assignment {a} failed")
    results = []
    if jobs == 1:
        _one_thread_per_kernel()
        chunks = [[p] for p in pairs]
        for chunk in chunks:
            for r in _grade_pairs(str(root), chunk):
                results.append(r)
                progress(_progress_line(len(results), len(pairs), r))
        return results
    # Small chunks, handed out as workers free up: one slow notebook does not hold up the rest.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_thread_per_kernel) as pool:
        futures = [pool.submit(_grade_pairs, str(root), [p]) for p in pairs]
        for f in as_completed(futures):
            for r in f.result():
                results.append(r)
                progress(_progress_line(len(results), len(pairs), r))
    return results


def _progress_line(i: int, n: int, r: dict) -> str:
    status = "graded" if r["success"] else "NOT GRADED: " + (r["error"] or "see nbgrader's log")
    return f"[{i}/{n}] {r['student']} {r['assignment']}: {status} ({r['seconds']:.1f} s)"


# ------------------------------------------------------------------ flags: code an instructor should read

# Names whose replacement would change what the tests see.
_CHECKERS = {"expect_close", "expect_shape", "expect_tensor", "number", "exercise", "stand_in", "storage_watch",
             "attention_suspects", "trusted", "forbidden", "guarded"}
_MODULES = {"torch", "attnlab", "checks", "guard", "reference", "builtins", "np", "numpy", "math", "F", "nn"}
_DUNDERS = {"__eq__", "__ne__", "__bool__", "__torch_function__", "__torch_dispatch__", "__instancecheck__"}
_CALLS = {"setattr": "calls setattr", "delattr": "calls delattr", "_exit": "calls os._exit", "exit": "calls exit",
          "kill": "calls kill", "reload": "reloads a module", "enable_grad": "turns autograd on (enable_grad)",
          "set_grad_enabled": "turns autograd on (set_grad_enabled)", "system": "runs a shell command",
          "Popen": "starts a process", "run": None, "globals": None}
_IMPORTS = {"attnlab.guard": "imports attnlab.guard", "socket": "imports socket", "subprocess": "imports subprocess",
            "urllib": "imports urllib", "requests": "imports requests", "ctypes": "imports ctypes",
            "gc": "imports gc", "inspect": "imports inspect"}
_SECRETS = ("solutions", "gradebook", "autograde", "hidden", "submitted", ".git")


def _base_name(node) -> str:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def code_flags(source: str) -> list[str]:
    """What in one solution cell an instructor should read: replacing torch or
    the course's checkers, redefining comparisons, autograd switched back on,
    the guard imported, exiting the kernel, paths to the grading files."""
    # IPython magics and shell escapes are not Python: drop those lines.
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return ["does not parse"]
    found = []
    # Modules the cell imports under other names: `import attnlab.checks as c`.
    modules = set(_MODULES)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                full = a.name if isinstance(node, ast.Import) else f"{node.module or ''}.{a.name}"
                if full.split(".")[0] in ("torch", "attnlab", "numpy", "builtins", "sys"):
                    modules.add(a.asname or a.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                if isinstance(t, (ast.Attribute, ast.Subscript)) and _base_name(t) in modules:
                    found.append(f"replaces {_dotted(t) or _base_name(t)}")
                elif isinstance(t, ast.Subscript) and isinstance(t.value, ast.Call) and \
                        getattr(t.value.func, "id", "") in ("globals", "vars"):
                    found.append("writes into globals()")
                elif isinstance(t, ast.Name) and t.id in _CHECKERS:
                    found.append(f"redefines {t.id}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name in _DUNDERS:
                found.append(f"defines {node.name}")
            elif node.name in _CHECKERS:
                found.append(f"redefines {node.name}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                for prefix, why in _IMPORTS.items():
                    if name == prefix or name.startswith(prefix + "."):
                        found.append(why)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("attnlab"):
                found += [f"imports {a.name} from {node.module}" for a in node.names if a.name in _CHECKERS]
            found += [f"redefines {a.asname}" for a in node.names if a.asname in _CHECKERS]
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", "")
            why = _CALLS.get(name)
            if why:
                found.append(why)
            if name == "inference_mode" and node.args and isinstance(node.args[0], ast.Constant) \
                    and node.args[0].value is False:
                found.append("turns autograd on (inference_mode(False))")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if any(s in node.value for s in _SECRETS) and ("/" in node.value or node.value in _SECRETS):
                found.append(f"names a grading path ({node.value[:40]!r})")
    return list(dict.fromkeys(found))


def flags(path: pathlib.Path, assignment: str | None = None) -> list[str]:
    """Flags for one submitted notebook file: unreadable, nbgrader metadata
    missing, and :func:`code_flags` of each solution cell, as 'cell: flag'."""
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # noqa: BLE001  (any unreadable file is one flag)
        return [f"not a readable notebook ({type(e).__name__})"]
    if not any("nbgrader" in c.get("metadata", {}) for c in nb.cells):
        return ["nbgrader metadata missing: tests were not recognised"]
    found = []
    for i, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type != "code" or meta.get("locked"):
            continue  # locked cells are restored from the source before grading
        where = meta.get("grade_id") or f"cell {i + 1}"
        found += [f"{where}: {f}" for f in code_flags(cell.source)]
    return found


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


_RUNTIME = {"CellTimeoutError": "timed out", "MemoryError": "ran out of memory", "DeadKernelError": "kernel died"}


def runtime_flags(path: pathlib.Path) -> list[str]:
    """'cell: timed out' and the like, from an autograded notebook's error outputs."""
    found = []
    for cell in nbformat.read(path, as_version=4).cells:
        where = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") or "a cell"
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error" and o.get("ename") in _RUNTIME:
                found.append(f"{where}: {_RUNTIME[o['ename']]}")
    return found


def summary(root: pathlib.Path = ROOT) -> list[dict]:
    """One row per student: each workbook's score ('-' if not submitted, 'not graded'
    if nbgrader could not grade it), the failing test cells, and flags: code
    the instructor should read (:func:`flags`) and what went wrong at run time."""
    from nbgrader.api import Gradebook, MissingEntry

    root = pathlib.Path(root)
    submitted, autograded = root / "autograde" / "submitted", root / "autograde" / "autograded"
    rows = []
    with Gradebook(f"sqlite:///{root / 'autograde' / 'gradebook.db'}", course_id="efficient-attention") as gb:
        assignments = sorted({a.name for a in gb.assignments}
                             | {p.name for p in (root / "solutions").iterdir() if p.is_dir() and p.name[:2].isdigit()})
        students = {s.id for s in gb.students} | ({p.name for p in submitted.iterdir() if p.is_dir()}
                                                   if submitted.is_dir() else set())
        for student in sorted(students):
            row, failing, found, total = {"student": student}, [], [], 0.0
            for a in assignments:
                folder, graded = submitted / student / a, autograded / student / a / f"{a}.ipynb"
                if not folder.is_dir():
                    row[a] = "-"
                    continue
                notebook = folder / f"{a}.ipynb"
                if not notebook.exists():
                    row[a] = "not graded"
                    found.append(f"{a}: no {a}.ipynb in the submission")
                    continue
                found += [f"{a}:{f}" for f in flags(notebook)]
                try:
                    sub = gb.find_submission(a, student)
                except MissingEntry:
                    sub = None
                if sub is None or not graded.exists():
                    row[a] = "not graded"
                    found.append(f"{a}: could not be graded (see make grade's output)")
                    continue
                row[a] = f"{sub.score:g}/{sub.max_score:g}"
                total += sub.score
                found += [f"{a}:{f}" for f in runtime_flags(graded)]
                for nb in sub.notebooks:
                    failing += [f"{a}:{g.name}" for g in nb.grades if g.max_score and g.score < g.max_score]
            row["total"] = f"{total:g}"
            row["failing"] = " ".join(failing)
            row["flags"] = "; ".join(found)
            rows.append(row)
    return rows


def _main(argv=None) -> int:
    import argparse
    import csv

    parser = argparse.ArgumentParser(description="Instructor tools: collect submissions, summarise grades.")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="copy per-student folders or zips into autograde/submitted/")
    c.add_argument("source", type=pathlib.Path)
    g = sub.add_parser("grade", help="autograde what was submitted (in parallel) and write feedback")
    g.add_argument("--jobs", type=int, default=None, help="grading processes (default: one per core)")
    g.add_argument("--student", default=None, help="grade this student only")
    g.add_argument("--force", action="store_true", help="grade again what is already graded")
    s = sub.add_parser("summary", help="students x workbooks, with failing test cells; also writes a CSV")
    s.add_argument("--csv", type=pathlib.Path, default=ROOT / "autograde" / "summary.csv")
    args = parser.parse_args(argv)
    if args.command == "collect":
        if not args.source.is_dir():
            print(f"{args.source} is not a folder of per-student folders or zips")
            return 2
        print("\n".join(collect(args.source)))
        return 0
    if args.command == "grade":
        results = grade_course(jobs=args.jobs, student=args.student, force=args.force)
        bad = [r for r in results if not r["success"]]
        print(f"graded {len(results) - len(bad)} of {len(results)} submitted notebooks"
              + (f"; {len(bad)} could not be graded (the summary flags them)" if bad else ""))
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
