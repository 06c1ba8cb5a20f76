"""Grading through nbgrader's own API, for the tests and the instructor scripts.

A grading "workspace" is a copy of the course (solutions/, course/ and the
nbgrader config) in a folder of its own, with its own gradebook, so that the
test suite never touches the instructor's autograde/ folder.
"""
from __future__ import annotations

import ast
import copy
import datetime
import json
import os
import pathlib
import re
import shutil
import sys
import warnings

import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[2]
_MARKER = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$")


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
    quiet()
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
        # The feedback a student would receive, for the tests that read it (tests/test_feedback.py).
        if not nbgrader_api.generate_feedback(assignment, student)["success"]:
            raise RuntimeError(f"the feedback for {student} failed")
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
                    "seconds": time.perf_counter() - t, "error": causes[-1][:200] if causes else "",
                    "sandbox": not sandbox_off()})
    return out


def sandbox_off() -> bool:
    """Whether the instructor asked to grade without the sandbox (ATTNLAB_SANDBOX=off);
    the grading kernel refuses to run unsandboxed otherwise."""
    return os.environ.get("ATTNLAB_SANDBOX", "").strip().lower() == "off"


def _record_sandbox(root: pathlib.Path, results: list[dict]) -> None:
    """Keep autograde/unsandboxed.json: the (workbook, student) pairs whose latest
    grading ran without the sandbox, for the summary to flag."""
    pairs = {tuple(p) for p in _load(root, UNSANDBOXED)}
    for r in results:
        (pairs.discard if r["sandbox"] else pairs.add)((r["assignment"], r["student"]))
    _save(root, UNSANDBOXED, sorted(list(p) for p in pairs))


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
    try:
        if jobs == 1:
            _one_thread_per_kernel()
            for p in pairs:
                for r in _grade_pairs(str(root), [p]):
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
    finally:
        _record_sandbox(root, results)  # also for what was graded before an interruption


def _progress_line(i: int, n: int, r: dict) -> str:
    status = "graded" if r["success"] else "NOT GRADED: " + (r["error"] or "see nbgrader's log")
    return f"[{i}/{n}] {r['student']} {r['assignment']}: {status} ({r['seconds']:.1f} s)"


# ------------------------------------------------------------------ flags: code an instructor should read
#
# Code in the grading kernel can always undo a check made in that same process
# (the guard's ledger, the torch modes, the checkers are all Python objects).
# What it cannot hide is its source: these flags read every cell a learner could
# edit and name each construct that only a way around the tests needs.
import builtins  # noqa: E402  (what only the flags use, kept with them)
import functools  # noqa: E402

# Names whose replacement would change what the tests see.
_CHECKERS = {"expect_close", "expect_shape", "expect_tensor", "number", "exercise", "stand_in", "storage_watch",
             "attention_suspects", "trusted", "forbidden", "guarded"}
_MODULES = {"torch", "attnlab", "checks", "guard", "answers", "arguments", "reference", "builtins", "np", "numpy", "math", "F", "nn"}
_DUNDERS = {"__eq__", "__ne__", "__bool__", "__torch_function__", "__torch_dispatch__", "__instancecheck__"}
# Calls, by the name called (bare or as an attribute).
_CALLS = {"setattr": "calls setattr", "delattr": "calls delattr", "_exit": "calls os._exit", "exit": "calls exit",
          "kill": "calls kill", "reload": "reloads a module", "enable_grad": "turns autograd on (enable_grad)",
          "set_grad_enabled": "turns autograd on (set_grad_enabled)", "system": "runs a shell command",
          "Popen": "starts a process", "fork": "forks the process",
          "read_text": "reads a file (read_text)", "read_bytes": "reads a file (read_bytes)",
          "spec_from_file_location": "loads a module from a file (importlib)",
          "module_from_spec": "loads a module from a file (importlib)", "exec_module": "runs a module (importlib)",
          "getsource": "reads source code (inspect.getsource)", "getsourcelines": "reads source code (inspect)",
          "get_referents": "walks objects (gc)", "get_referrers": "walks objects (gc)", "get_objects": "walks objects (gc)",
          "_getframe": "reads the caller's frames (sys._getframe)", "currentframe": "reads frames (inspect.currentframe)",
          "settrace": "installs a tracer (settrace)", "setprofile": "installs a profiler (setprofile)"}
# Builtins, called by their bare name (torch.compile or re.compile are not exec).
_BUILTIN_CALLS = {"exec": "runs code from a string (exec)", "eval": "runs code from a string (eval)",
                  "compile": "compiles code from a string (compile)", "open": "opens a file (open)",
                  "__import__": "imports by name (__import__)", "globals": "reads the notebook's globals()",
                  "breakpoint": "calls breakpoint"}
# Modules and namespaces that only a way around the tests needs, by dotted prefix: imported, or reached as
# attributes (torch._C._nn...). What each one is for goes in the flag.
_NAMESPACES = {
    "torch.ops": "torch's operator namespace (torch.ops)", "torch._ops": "torch's operator internals (torch._ops)",
    "torch._C": "torch's C internals (torch._C)", "torch._VF": "torch's C functions (torch._VF)",
    "torch.overrides": "torch's function-mode switches (torch.overrides)",
    "torch.utils._python_dispatch": "torch's dispatch-mode switches (torch.utils._python_dispatch)",
    "torch._subclasses": "torch's internals (torch._subclasses)", "torch.library": "custom operators (torch.library)",
    "torch._refs": "torch's Python decompositions (torch._refs)", "torch._decomp": "torch's decompositions (torch._decomp)",
    "torch._prims": "torch's primitives (torch._prims)", "torch._dynamo": "torch's compiler internals (torch._dynamo)",
    "attnlab.guard": "attnlab.guard", "attnlab.checks": "the checkers' module (attnlab.checks)",
    "builtins": "builtins", "importlib": "importlib", "inspect": "inspect", "gc": "gc", "ctypes": "ctypes",
    "sys.modules": "sys.modules", "sys._getframe": "sys._getframe", "sys.settrace": "sys.settrace",
    "sys.setprofile": "sys.setprofile", "sys.monitoring": "sys.monitoring", "linecache": "linecache",
    "traceback": "traceback (its frames)", "types": "types (to build functions and code)", "dis": "dis",
    "marshal": "marshal", "pickle": "pickle", "io": "io", "nbformat": "nbformat (reads notebooks)",
    "json.load": "json.load", "pkgutil": "pkgutil", "runpy": "runpy", "zipimport": "zipimport", "codecs": "codecs",
    "threading": "threading", "_thread": "_thread", "multiprocessing": "multiprocessing",
    "torch.multiprocessing": "torch.multiprocessing",
    "concurrent": "concurrent.futures", "signal": "signal", "socket": "socket", "subprocess": "subprocess",
    "urllib": "urllib", "requests": "requests", "__main__": "__main__ (the notebook's namespace)",
    "os.fork": "os.fork",
}
# Attributes that lead into a function, a frame or a module rather than compute anything.
_INTERNALS = {"__wrapped__", "__closure__", "cell_contents", "__globals__", "__code__", "__defaults__",
              "__kwdefaults__", "co_consts", "co_code", "f_locals", "f_globals", "f_back", "f_builtins", "tb_frame",
              "tb_next", "gi_frame", "cr_frame", "__traceback__", "__builtins__", "__subclasses__", "__bases__",
              "__mro__", "__loader__", "__spec__", "__file__"}
# Names IPython binds to the cells already run (their source, their results).
_IPYTHON = {"In", "Out", "_ih", "_oh", "_i", "_ii", "_iii", "_dh", "get_ipython", "__builtins__", "__import__",
            "__loader__", "__spec__"}
# torch's own answers to exercises, which the tests switch off; a solution cell has no use for them.
_TORCH_ANSWERS = {"scaled_dot_product_attention", "multi_head_attention_forward", "rms_norm", "MultiheadAttention",
                  "RMSNorm", "_scaled_dot_product_attention_math", "_native_multi_head_attention",
                  "TransformerEncoderLayer", "TransformerDecoderLayer", "Transformer"}
_SECRETS = ("solutions", "gradebook", "autograde", "hidden", "submitted", ".git")
_COURSE_FILES = ("answers/", ".ipynb", "attnlab/", "guard.py", "checks/")


def _base_name(node) -> str:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else ""


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _namespace(dotted: str) -> str:
    """The flag for a dotted name inside one of _NAMESPACES ('' if none)."""
    for prefix, what in _NAMESPACES.items():
        if dotted == prefix or dotted.startswith(prefix + "."):
            return what
    return ""


def _bound_names(tree) -> set[str]:
    """Every name the code binds anywhere (assignments, arguments, loops, imports, definitions)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.id)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            out.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            out.update(node.names)
    return out


def _normalized(node) -> tuple[str, ...]:
    """A function's code, whitespace and comments aside: ast.unparse, line by line, decorators dropped."""
    node = copy.copy(node)
    node.decorator_list = []
    return tuple(ln.strip() for ln in ast.unparse(node).splitlines() if ln.strip())


def _body(node) -> tuple[str, ...]:
    """A function's body alone, its docstring and argument checks (validate.*, _check*) dropped."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    keep = [st for st in body if not (isinstance(st, ast.Expr) and isinstance(st.value, ast.Call)
                                      and ast.unparse(st.value.func).startswith(("validate.", "_check")))]
    return tuple(ln.strip() for st in keep for ln in ast.unparse(st).splitlines() if ln.strip())


def _functions(tree):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _parse(source: str):
    # IPython magics and shell escapes are not Python: drop those lines.
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    return ast.parse("\n".join(lines))


@functools.lru_cache(maxsize=None)
def _course_answers() -> tuple[dict, dict, dict]:
    """What a pasted answer would match, line for line:

    - ``whole``: every function of attnlab/answers/ and every model answer's function, signature,
      docstring and body (normalized) -> 'attnlab.answers.rms_norm' or '04_mla:rms_norm';
    - ``bodies``: the bodies of the answers' functions that no model answer shares (pasting one into
      the release's function is a copy of the answer key; a body equal to a model answer is the
      right answer, which the flags cannot tell from honest work);
    - ``cells``: (workbook, grade_id) -> the normalized functions of that model answer, which are not
      compared with the same cell (the model answers must raise no flags).
    """
    whole, bodies, cells = {}, {}, {}
    model_bodies = set()
    for nb_path in sorted((ROOT / "solutions").glob("[0-9][0-9]_*/[0-9][0-9]_*.ipynb")):
        for grade_id, src in solution_cells(nbformat.read(nb_path, as_version=4)).items():
            try:
                fns = _functions(_parse(src))
            except SyntaxError:
                continue
            key = (nb_path.stem, grade_id)
            cells[key] = {_normalized(f) for f in fns}
            for f in fns:
                model_bodies.add(_body(f))
                whole.setdefault(_normalized(f), f"the model answer {nb_path.stem}:{grade_id}")
    for topic in sorted((ROOT / "attnlab" / "answers").glob("[a-z]*.py")):
        for f in _functions(ast.parse(topic.read_text())):
            whole[_normalized(f)] = f"attnlab.answers.{f.name}"
            body = _body(f)
            if len(body) >= 2 and body not in model_bodies:
                bodies[body] = f"attnlab.answers.{f.name}"
    return whole, bodies, cells


@functools.lru_cache(maxsize=None)
def _workbook(assignment: str) -> tuple[frozenset, frozenset]:
    """From the workbook's source: the names that only its test cells bind (expected values, hidden
    inputs; a solution cell that reads one reads what the tests compare it with), and the code of its
    other cells that are not solutions (the course's own demo cells, as released)."""
    path = ROOT / "solutions" / assignment / f"{assignment}.ipynb"
    if not assignment or not path.exists():
        return frozenset(), frozenset()
    tests, others, given = set(), set(), set()
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        meta = cell.metadata.get("nbgrader", {})
        if not meta.get("solution"):
            given.add(_squeezed(cell.source))
        try:
            names = _bound_names(_parse(cell.source))
        except SyntaxError:
            continue
        (tests if meta.get("grade") and not meta.get("solution") else others).update(names)
    return frozenset(tests - others - set(dir(builtins)) - set(_CHECKERS)), frozenset(given)


def _squeezed(source: str) -> str:
    return "\n".join(ln.rstrip() for ln in source.strip().splitlines())


def _copies(tree, workbook: str, grade_id: str) -> list[str]:
    whole, bodies, cells = _course_answers()
    own = cells.get((workbook, grade_id), set())
    found = []
    for f in _functions(tree):
        norm = _normalized(f)
        if norm in whole and norm not in own:
            found.append(f"{f.name} is {whole[norm]} line for line")
        elif _body(f) in bodies:
            found.append(f"the body of {f.name} is {bodies[_body(f)]} line for line")
    return found


def code_flags(source: str, test_names=frozenset(), workbook: str = "", grade_id: str = "") -> list[str]:
    """What in one solution cell an instructor should read: anything that replaces torch or the course's
    checkers, redefines comparisons, turns autograd on, reaches torch's lower-level operators or the
    switches of the grading's torch modes, function or frame internals, reloads and importlib, exec and
    eval, reading files, builtins, gc, inspect, sys.modules, threads and processes, torch's own answers,
    names that only the test cells bind (``test_names``), paths to the grading files, and a function
    that is a course answer line for line (``workbook`` and ``grade_id`` name the cell's own model answer,
    which is not compared)."""
    try:
        tree = _parse(source)
    except SyntaxError:
        return ["does not parse"]
    found = []
    # What each imported name stands for: `import torch._C as C` -> {'C': 'torch._C'}.
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    modules = set(_MODULES) | {n for n, full in aliases.items()
                               if full.split(".")[0] in ("torch", "attnlab", "numpy", "builtins", "sys")}

    def full(dotted: str) -> str:
        head, _, rest = dotted.partition(".")
        return aliases.get(head, head) + ("." + rest if rest else "")

    bound = _bound_names(tree)
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
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                names = [f"{node.module or ''}.{a.name}" for a in node.names] + [node.module or ""]
            for name in names:
                if _namespace(name):
                    found.append(f"imports {_namespace(name)}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("attnlab"):
                found += [f"imports {a.name} from {node.module}" for a in node.names if a.name in _CHECKERS]
            found += [f"redefines {a.asname}" for a in node.names if a.asname in _CHECKERS]
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", "")
            if _CALLS.get(name):
                found.append(_CALLS[name])
            if isinstance(node.func, ast.Name) and node.func.id in _BUILTIN_CALLS and node.func.id not in bound:
                found.append(_BUILTIN_CALLS[node.func.id])
            if name == "inference_mode" and node.args and isinstance(node.args[0], ast.Constant) \
                    and node.args[0].value is False:
                found.append("turns autograd on (inference_mode(False))")
            if name in ("getattr", "setattr", "hasattr", "delattr", "vars") and node.args:
                target = full(_dotted(node.args[0]))
                if name == "vars" and _base_name(node.args[0]) in modules | set(aliases):
                    found.append(f"reads a module's namespace (vars({_dotted(node.args[0])}))")
                elif len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                    attr = str(node.args[1].value)
                    if attr in _INTERNALS or _namespace(f"{target}.{attr}"):
                        found.append(f"reaches {attr} through {name}")
                elif len(node.args) > 1 and _base_name(node.args[0]) in modules | set(aliases):
                    found.append(f"gets an attribute of {_dotted(node.args[0])} by a computed name")
            if name in ("load", "loads") and full(_dotted(node.func)).split(".")[0] in ("json", "pickle", "torch",
                                                                                       "np", "numpy", "marshal"):
                found.append(f"loads data from a file or bytes ({_dotted(node.func)})")
        elif isinstance(node, ast.Attribute):
            dotted = full(_dotted(node))
            if node.attr in _INTERNALS:
                found.append(f"reaches {node.attr}")
            elif node.attr == "__dict__" and _base_name(node) in modules | set(aliases):
                found.append(f"reads a module's __dict__ ({_dotted(node)})")
            elif _namespace(dotted):
                found.append(f"uses {_namespace(dotted)}")
            if node.attr in _TORCH_ANSWERS and dotted.split(".")[0] in ("torch", "F", "nn"):
                found.append(f"calls torch's own answer ({node.attr}), which the tests switch off")
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id in _IPYTHON and node.id not in bound:
                found.append(f"reaches {node.id}" if node.id.startswith("__") else
                             f"reads IPython's {node.id} (the cells already run)")
            elif node.id in test_names and node.id not in bound:
                found.append(f"reads {node.id}, a name only the test cells bind")
            elif node.id in aliases and _namespace(aliases[node.id]):
                pass  # flagged at its import
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and isinstance(node.slice.value, str):
            key = node.slice.value
            if key in test_names:
                found.append(f"looks up {key!r}, a name only the test cells bind")
            elif key in _INTERNALS or key in _IPYTHON:
                found.append(f"looks up {key!r}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if any(s in node.value for s in _SECRETS) and ("/" in node.value or node.value in _SECRETS):
                found.append(f"names a grading path ({node.value[:40]!r})")
            elif any(s in node.value for s in _COURSE_FILES):
                found.append(f"names a course file ({node.value[:40]!r})")
    if workbook or grade_id:
        found += _copies(tree, workbook, grade_id)
    # One flag per namespace: "uses torch._C" adds nothing to "imports torch._C".
    found = [f for f in found if not (f.startswith("uses ") and "imports " + f[5:] in found)]
    return list(dict.fromkeys(found))


def flags(path: pathlib.Path, assignment: str | None = None) -> list[str]:
    """Flags for one submitted notebook file: unreadable, nbgrader metadata
    missing, and :func:`code_flags` of each cell a learner could edit, as 'cell: flag'.
    ``assignment`` (by default the file's name, ``01_mha.ipynb``) names the workbook whose
    source gives the names its test cells bind and its model answers."""
    path = pathlib.Path(path)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # noqa: BLE001  (any unreadable file is one flag)
        return [f"not a readable notebook ({type(e).__name__})"]
    if not any("nbgrader" in c.get("metadata", {}) for c in nb.cells):
        return ["nbgrader metadata missing: tests were not recognised"]
    assignment = assignment or path.stem
    test_names, given = _workbook(assignment)
    # Editable cells the learner left as the course gave them are the course's code, not theirs.
    cells = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and not c.get("metadata", {}).get("nbgrader", {}).get("locked") and _squeezed(c.source) not in given]
    # A name the learner binds in a cell of their own is theirs, even where a test cell binds it too.
    for _, cell in cells:
        try:
            test_names = test_names - _bound_names(_parse(cell.source))
        except SyntaxError:
            pass
    found = []
    for i, cell in cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
        found += [f"{grade_id or f'cell {i + 1}'}: {f}" for f in code_flags(cell.source, test_names, assignment, grade_id)]
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


# Records beside the gradebook (git-ignored, removed by make clean-grading): what
# make collect could not take, and what make grade graded without the sandbox.
SKIPPED = pathlib.Path("autograde") / "skipped.json"
UNSANDBOXED = pathlib.Path("autograde") / "unsandboxed.json"


def _load(root: pathlib.Path, record: pathlib.Path) -> list:
    path = pathlib.Path(root) / record
    return json.loads(path.read_text()) if path.exists() else []


def _save(root: pathlib.Path, record: pathlib.Path, entries: list) -> None:
    path = pathlib.Path(root) / record
    if entries:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entries, indent=1) + "\n")
    elif path.exists():
        path.unlink()


def _read(data: bytes) -> nbformat.NotebookNode:
    """A notebook from a file's bytes, as version 4. Unlike nbformat.reads it
    neither logs a schema dump nor warns for a notebook that is merely untidy:
    here a submission is only looked at, and nbgrader copes with those."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nbformat.convert(nbformat.reader.reads(data.decode("utf-8")), 4)


def _grade_ids(nb) -> set[str]:
    return {c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb.get("cells", [])} - {None}


def _release_ids(root: pathlib.Path, assignments: list[str]) -> dict[str, set[str]]:
    """Workbook -> the nbgrader cell ids of its release in course/."""
    out = {}
    for a in assignments:
        path = pathlib.Path(root) / "course" / a / f"{a}.ipynb"
        if path.exists():
            out[a] = _grade_ids(_read(path.read_bytes()))
    return out


def _not_a_submission(data: bytes, assignment: str, release_ids: dict[str, set[str]]) -> str | None:
    """Why ``data`` cannot be graded as ``assignment``; None when it can."""
    if not data.strip():
        return "an empty file"
    try:
        nb = _read(data)
    except Exception as e:  # noqa: BLE001  (whatever failed, it is not a notebook)
        return f"not a readable notebook: {type(e).__name__}"
    sources = ("".join(c.get("source", "")) for c in nb.get("cells", []))
    if not any(s.strip() for s in sources):
        return "an empty notebook"
    theirs = _grade_ids(nb)
    if theirs and assignment in release_ids:
        # Workbooks share a few cell ids ("setup"): the one sharing the most is whose cells these are.
        shared = {a: len(theirs & ids) for a, ids in release_ids.items()}
        best = max(shared, key=shared.get)
        if not shared[best]:
            return "its cells belong to no workbook of this course"
        if shared[best] > shared[assignment]:
            return f"its cells are workbook {best}'s, not {assignment}'s"
    return None


def _utc(when: datetime.datetime) -> str:
    """nbgrader's timestamp.txt format, in UTC (nbgrader stores times in UTC)."""
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def _write_if_changed(path: pathlib.Path, data: bytes) -> bool:
    if path.exists() and path.read_bytes() == data:
        return False
    path.write_bytes(data)
    return True


def collect(source: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """Copy submissions from ``source`` into ``root``/autograde/submitted/<student>/<NN_topic>/.

    ``source`` holds, per student, either a folder (``alice/01_mha.ipynb``, at any
    depth) or a zip file (``bob.zip``, as learning-management systems export
    them). The student id is the folder or zip name; notebooks are matched to
    workbooks by the ``NN_topic`` in their file name, so renamed copies such as
    ``01_mha (1).ipynb`` are found. Beside each notebook goes nbgrader's
    ``timestamp.txt``: when it was handed in (the file's modification time, or
    the zip entry's date), which grades.csv reports.

    Returns one line per file, saying where it went or why it was skipped: a
    file that is empty or not a notebook, a notebook with no workbook name or
    whose cells are another workbook's, an older copy of the same workbook,
    a student with no notebook at all. A skipped file changes nothing that
    was collected before; the skips are kept in autograde/skipped.json for the
    summary. Rerunning with the same files changes nothing, and keeps
    what is graded graded.
    """
    import zipfile

    source, root = pathlib.Path(source), pathlib.Path(root)
    assignments = sorted(p.name for p in (root / "solutions").iterdir() if p.is_dir() and p.name[:2].isdigit())
    release_ids = _release_ids(root, assignments)
    report, skipped, placed = [], [], set()
    offers = {}  # (student, workbook) -> [(when, filename, bytes)]

    def skip(student: str, filename: str, why: str, assignment: str | None = None):
        report.append((student, f"{student}: skipped {filename} ({why})"))
        skipped.append({"student": student, "file": filename, "why": why, "workbook": assignment})

    def offer(student: str, filename: str, when: datetime.datetime, read) -> bool:
        """Consider one file of a student's; False if it is none of the course's business."""
        path = pathlib.PurePath(filename)
        if path.name.startswith(".") or "__MACOSX" in path.parts or ".ipynb_checkpoints" in path.parts:
            return False  # what operating systems and Jupyter leave behind
        assignment = _assignment_of(path.name, assignments)
        if path.suffix != ".ipynb":
            if assignment:  # 01_mha.pdf, 01_mha.py: meant as the workbook, but not a notebook
                skip(student, filename, f"not a notebook: {assignment} is graded from {assignment}.ipynb", assignment)
            return bool(assignment)
        if assignment is None:
            skip(student, filename, f"no workbook name such as {assignments[0]} in it")
        else:
            offers.setdefault((student, assignment), []).append((when, filename, read()))
        return True

    for entry in sorted(source.iterdir()):
        if entry.name.startswith("."):
            continue
        student = re.sub(r"[^A-Za-z0-9_.-]", "_", entry.name if entry.is_dir() else entry.stem)
        found = False
        if entry.is_dir():
            for f in sorted(p for p in entry.rglob("*") if p.is_file()):
                when = datetime.datetime.fromtimestamp(f.stat().st_mtime, datetime.timezone.utc)
                found |= offer(student, str(f.relative_to(entry)), when, f.read_bytes)
        elif entry.suffix == ".zip":
            try:
                with zipfile.ZipFile(entry) as z:
                    for info in z.infolist():
                        if not info.is_dir():
                            # A zip stores local time without a zone: read as this machine's.
                            when = datetime.datetime(*info.date_time).astimezone()
                            found |= offer(student, info.filename, when, lambda: z.read(info))
            except Exception as e:  # noqa: BLE001  (a damaged or encrypted zip is skipped, the batch goes on)
                for key in [k for k in offers if k[0] == student]:
                    del offers[key]
                skip(student, entry.name, f"not a readable zip file: {type(e).__name__}")
                continue
        elif entry.suffix == ".ipynb" or _assignment_of(entry.name, assignments):
            skip(student, entry.name, "not in a per-student folder or zip: whose is it?")
            continue
        else:
            continue  # a README or an index beside the submissions
        if not found:
            skip(student, entry.name, "no notebook in it")
    for (student, assignment), files in sorted(offers.items()):
        _place_newest(root, student, assignment, files, release_ids, skip, report, placed)
    # Earlier skips stay for the summary until a file for the same workbook is collected.
    seen = {(s["student"], s["file"]) for s in skipped} | {(s, f) for s, _, f in placed}
    kept = [s for s in _load(root, SKIPPED) if (s["student"], s["file"]) not in seen
            and (s["student"], s.get("workbook")) not in {(st, a) for st, a, _ in placed}]
    _save(root, SKIPPED, kept + skipped)
    return [line for _, line in sorted(report, key=lambda r: r[0])]


def _place_newest(root: pathlib.Path, student: str, assignment: str, files: list, release_ids: dict,
                  skip, report: list, placed: set) -> None:
    """Place the newest gradable one of ``files`` [(when, filename, bytes)]; skip the others."""
    best = None
    for when, filename, data in sorted(files, key=lambda f: f[0], reverse=True):
        why = _not_a_submission(data, assignment, release_ids)
        if why:
            skip(student, filename, why, assignment)
        elif best:
            skip(student, filename, f"an older copy of {assignment}: {best[1]} is newer", assignment)
        else:
            best = (when, filename, data)
    if best is None:
        return
    when, filename, data = best
    folder = root / "autograde" / "submitted" / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    changed = _write_if_changed(folder / f"{assignment}.ipynb", data)
    if changed or not (folder / "timestamp.txt").exists():
        # nbgrader reads when it was handed in from here; the same file collected again keeps its time.
        (folder / "timestamp.txt").write_text(_utc(when) + "\n")
    report.append((student, f"{student}: {filename} -> {(folder / f'{assignment}.ipynb').relative_to(root)}"
                   + ("" if changed else " (unchanged)")))
    placed.add((student, assignment, filename))


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
    the instructor should read (:func:`flags`), what went wrong at run time,
    files make collect skipped, folders that are no workbook, and notebooks
    graded without the sandbox."""
    from nbgrader.api import Gradebook, MissingEntry

    root = pathlib.Path(root)
    submitted, autograded = root / "autograde" / "submitted", root / "autograde" / "autograded"
    rows = []
    with Gradebook(f"sqlite:///{root / 'autograde' / 'gradebook.db'}", course_id="efficient-attention") as gb:
        assignments = sorted({a.name for a in gb.assignments}
                             | {p.name for p in (root / "solutions").iterdir() if p.is_dir() and p.name[:2].isdigit()})
        skipped = _load(root, SKIPPED)
        unsandboxed = {tuple(p) for p in _load(root, UNSANDBOXED)}
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
    from nbgrader.api import Gradebook, MissingEntry

    root = pathlib.Path(root)
    dest = pathlib.Path(dest or root / "autograde" / "grades.csv")
    rows = []
    with Gradebook(f"sqlite:///{root / 'autograde' / 'gradebook.db'}", course_id="efficient-attention") as gb:
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
    print(f"written to {_shown(dest)}")
    return 0


def _shown(path: pathlib.Path) -> str:
    path = pathlib.Path(path).resolve()
    return str(path.relative_to(pathlib.Path.cwd())) if path.is_relative_to(pathlib.Path.cwd()) else str(path)


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
        results = grade_course(root, jobs=args.jobs, student=args.student, force=args.force)
        bad = [r for r in results if not r["success"]]
        if results:
            print(f"graded {len(results) - len(bad)} of {len(results)} submitted notebooks"
                  + (f"; {len(bad)} could not be graded (the summary flags them)" if bad else ""))
        bare = sum(not r["sandbox"] for r in results)
        if bare:
            print(f"{bare} notebook{'s were' if bare != 1 else ' was'} graded WITHOUT the sandbox "
                  "(ATTNLAB_SANDBOX=off): the summary flags them")
        print(f"grades: {_shown(export_grades(root))}; feedback: {_shown(root / 'autograde' / 'feedback')}/")
        return print_summary(root)
    return print_summary(root, args.csv)


if __name__ == "__main__":
    sys.exit(_main())
