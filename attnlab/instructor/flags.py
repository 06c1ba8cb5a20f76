"""Flags: the code in a submission that an instructor should read.

Code in the grading kernel can always undo a check made in that same process
(the guard's ledger, the torch modes, the checkers are all Python objects).
What it cannot hide is its source: these flags read every cell a learner could
edit and name each construct that only a way around the tests needs
(:func:`code_flags`, :func:`flags`), and what went wrong at run time
(:func:`runtime_flags`). The summary of ``make grade`` lists them per student;
the Gradescope autograder prints them in its log.
"""
from __future__ import annotations

import ast
import builtins
import functools
import pathlib

import nbformat

from attnlab import cells

from attnlab.instructor import copies, course

ROOT = course.ROOT

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
          "settrace": "installs a tracer (settrace)", "setprofile": "installs a profiler (setprofile)",
          "__setattr__": "calls __setattr__", "__delattr__": "calls __delattr__",
          "set_custom_exc": "installs an IPython exception handler"}
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
    "os.fork": "os.fork", "os.sys": "sys (through os.sys)", "os.open": "opens a file (os.open)",
    "os.read": "reads a file descriptor (os.read)", "os.fdopen": "opens a file (os.fdopen)",
    "attnlab.verdict": "the checker's wire (attnlab.verdict)",
}
# Attributes that lead into a function, a frame or a module rather than compute anything.
_INTERNALS = {"__wrapped__", "__closure__", "cell_contents", "__globals__", "__code__", "__defaults__",
              "__kwdefaults__", "co_consts", "co_code", "f_locals", "f_globals", "f_back", "f_builtins", "tb_frame",
              "tb_next", "gi_frame", "cr_frame", "__traceback__", "__builtins__", "__subclasses__", "__bases__",
              "__mro__", "__loader__", "__spec__", "__file__",
              "input_transformers_post", "input_transformers_cleanup", "ast_transformers", "events"}
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


class _Scope:
    """What the names of one cell stand for: ``aliases`` (what each imported name is:
    ``import torch._C as C`` -> {'C': 'torch._C'}), ``modules`` (the names that stand for
    a module whose replacement would change what the tests see) and ``bound`` (every
    name the cell binds)."""

    def __init__(self, tree):
        self.aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        self.modules = set(_MODULES) | {n for n, full in self.aliases.items()
                                        if full.split(".")[0] in ("torch", "attnlab", "numpy", "builtins", "sys")}
        self.bound = _bound_names(tree)

    def full(self, dotted: str) -> str:
        """``dotted`` with its first name replaced by what it was imported as."""
        head, _, rest = dotted.partition(".")
        return self.aliases.get(head, head) + ("." + rest if rest else "")


def _assignment_flags(node, scope: _Scope) -> list[str]:
    """Replacing a module's attribute, writing into globals(), rebinding a checker."""
    found = []
    targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
    for t in targets:
        if isinstance(t, (ast.Attribute, ast.Subscript)) and _base_name(t) in scope.modules:
            found.append(f"replaces {_dotted(t) or _base_name(t)}")
        elif isinstance(t, ast.Subscript) and isinstance(t.value, ast.Call) and \
                getattr(t.value.func, "id", "") in ("globals", "vars"):
            found.append("writes into globals()")
        elif isinstance(t, ast.Name) and t.id in _CHECKERS:
            found.append(f"redefines {t.id}")
    return found


def _definition_flags(node) -> list[str]:
    """A function or class that redefines a comparison or a checker."""
    if node.name in _DUNDERS:
        return [f"defines {node.name}"]
    if node.name in _CHECKERS:
        return [f"redefines {node.name}"]
    return []


def _import_flags(node) -> list[str]:
    """Importing one of _NAMESPACES, a checker, or anything as a checker's name."""
    found = []
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
    return found


def _call_flags(node, scope: _Scope) -> list[str]:
    """Calls of _CALLS and _BUILTIN_CALLS, autograd turned on, attributes by name, data loaded."""
    found = []
    name = getattr(node.func, "attr", None) or getattr(node.func, "id", "")
    if _CALLS.get(name):
        found.append(_CALLS[name])
    if isinstance(node.func, ast.Name) and node.func.id in _BUILTIN_CALLS and node.func.id not in scope.bound:
        found.append(_BUILTIN_CALLS[node.func.id])
    if name == "inference_mode" and node.args and isinstance(node.args[0], ast.Constant) \
            and node.args[0].value is False:
        found.append("turns autograd on (inference_mode(False))")
    if name in ("getattr", "setattr", "hasattr", "delattr", "vars") and node.args:
        found += _by_name_flags(name, node.args, scope)
    if name in ("load", "loads") and scope.full(_dotted(node.func)).split(".")[0] in ("json", "pickle", "torch",
                                                                                     "np", "numpy", "marshal"):
        found.append(f"loads data from a file or bytes ({_dotted(node.func)})")
    return found


def _by_name_flags(name: str, args: list, scope: _Scope) -> list[str]:
    """``getattr``, ``setattr``, ``hasattr``, ``delattr`` or ``vars`` (``name``) called with ``args``."""
    target = scope.full(_dotted(args[0]))
    if name == "vars" and _base_name(args[0]) in scope.modules | set(scope.aliases):
        return [f"reads a module's namespace (vars({_dotted(args[0])}))"]
    if len(args) > 1 and isinstance(args[1], ast.Constant):
        attr = str(args[1].value)
        return [f"reaches {attr} through {name}"] if attr in _INTERNALS or _namespace(f"{target}.{attr}") else []
    if len(args) > 1 and _base_name(args[0]) in scope.modules | set(scope.aliases):
        return [f"gets an attribute of {_dotted(args[0])} by a computed name"]
    if len(args) > 1 and name in ("setattr", "delattr"):
        return [f"{name} with an attribute name computed at run time"]
    return []


def _attribute_flags(node, scope: _Scope) -> list[str]:
    """Function and frame internals, a module's __dict__, _NAMESPACES, torch's own answers."""
    found = []
    dotted = scope.full(_dotted(node))
    if node.attr in _INTERNALS:
        found.append(f"reaches {node.attr}")
    elif node.attr == "__dict__" and _base_name(node) in scope.modules | set(scope.aliases):
        found.append(f"reads a module's __dict__ ({_dotted(node)})")
    elif _namespace(dotted):
        found.append(f"uses {_namespace(dotted)}")
    if node.attr in _TORCH_ANSWERS and dotted.split(".")[0] in ("torch", "F", "nn"):
        found.append(f"calls torch's own answer ({node.attr}), which the tests switch off")
    return found


def _name_flags(node, scope: _Scope, test_names) -> list[str]:
    """A name read but not bound in the cell: IPython's history, or one that only the test cells bind."""
    if node.id in _IPYTHON and node.id not in scope.bound:
        return [f"reaches {node.id}" if node.id.startswith("__") else
                f"reads IPython's {node.id} (the cells already run)"]
    if node.id in test_names and node.id not in scope.bound:
        return [f"reads {node.id}, a name only the test cells bind"]
    return []  # a name imported from one of _NAMESPACES is flagged at its import


def _lookup_flags(key: str, test_names) -> list[str]:
    """``something['key']``: a name only the test cells bind, an internal, IPython's history."""
    if key in test_names:
        return [f"looks up {key!r}, a name only the test cells bind"]
    if key in _INTERNALS or key in _IPYTHON:
        return [f"looks up {key!r}"]
    return []


def _string_flags(text: str) -> list[str]:
    """A string that names a grading path or a course file."""
    if any(s in text for s in _SECRETS) and ("/" in text or text in _SECRETS):
        return [f"names a grading path ({text[:40]!r})"]
    if any(s in text for s in _COURSE_FILES):
        return [f"names a course file ({text[:40]!r})"]
    return []


def _node_flags(node, scope: _Scope, test_names) -> list[str]:
    """The flags of one node of a cell's syntax tree, by the kind of node."""
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
        return _assignment_flags(node, scope)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return _definition_flags(node)
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return _import_flags(node)
    if isinstance(node, ast.Call):
        return _call_flags(node, scope)
    if isinstance(node, ast.Attribute):
        return _attribute_flags(node, scope)
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
        return _name_flags(node, scope, test_names)
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
            and isinstance(node.slice.value, str):
        return _lookup_flags(node.slice.value, test_names)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _string_flags(node.value)
    return []


# Line magics that time or show a Python statement: the statement is read like any other line.
_TIMING_MAGICS = ("%timeit", "%time", "%prun")
_HARMLESS_MAGICS = ("%matplotlib", "%config", "%load_ext autoreload", "%autoreload", "%%time", "%%timeit",
                    "%%capture")


def _magics(source: str) -> tuple[str, list[str]]:
    """``source`` with each timing magic's statement kept as Python; a flag for any other magic or shell line,
    which no other flag can read (``%run``, ``%load``, ``!cat``...)."""
    lines, found = [], []
    for line in source.splitlines():
        stripped = line.lstrip()
        magic = next((m for m in _TIMING_MAGICS if stripped.startswith(m + " ")), None)
        if magic:
            lines.append(line[: len(line) - len(stripped)] + stripped[len(magic):].lstrip().removeprefix("-n 1 "))
        elif stripped.startswith(("%", "!")) and not stripped.startswith(_HARMLESS_MAGICS):
            found.append("runs an IPython magic or a shell line (% or !)")
            lines.append("")
        else:
            lines.append(line)
    return "\n".join(lines), found[:1]


def code_flags(source: str, test_names=frozenset(), workbook: str = "", grade_id: str = "") -> list[str]:
    """What in one solution cell an instructor should read: anything that replaces torch or the course's
    checkers, redefines comparisons, turns autograd on, reaches torch's lower-level operators or the
    switches of the grading's torch modes, function or frame internals, reloads and importlib, exec and
    eval, reading files, builtins, gc, inspect, sys.modules, threads and processes, torch's own answers,
    names that only the test cells bind (``test_names``), paths to the grading files, and a function
    that is a course answer line for line (``workbook`` and ``grade_id`` name the cell's own model answer,
    which is not compared: :func:`attnlab.instructor.copies.answers_copied`)."""
    source, found = _magics(source)
    try:
        tree = cells.parse(source)
    except SyntaxError:
        return ["does not parse"]
    scope = _Scope(tree)
    for node in ast.walk(tree):
        found += _node_flags(node, scope, test_names)
    if workbook or grade_id:
        found += copies.answers_copied(tree, workbook, grade_id)
    # One flag per namespace: "uses torch._C" adds nothing to "imports torch._C".
    found = [f for f in found if not (f.startswith("uses ") and "imports " + f[5:] in found)]
    return list(dict.fromkeys(found))


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
        if not cells.is_solution(cell):
            given.add(_squeezed(cell.source))
        try:
            names = _bound_names(cells.parse(cell.source))
        except SyntaxError:
            continue
        (tests if cells.is_test_cell(cell) else others).update(names)
    return frozenset(tests - others - set(dir(builtins)) - set(_CHECKERS)), frozenset(given)


def _squeezed(source: str) -> str:
    return "\n".join(ln.rstrip() for ln in source.strip().splitlines())


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
    editable = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"
                and not cells.nbgrader(c).get("locked") and _squeezed(c.source) not in given]
    # A name the learner binds in a cell of their own is theirs, even where a test cell binds it too.
    for _, cell in editable:
        try:
            test_names = test_names - _bound_names(cells.parse(cell.source))
        except SyntaxError:
            pass
    found = []
    for i, cell in editable:
        grade_id = cells.nbgrader(cell).get("grade_id", "")
        found += [f"{grade_id or f'cell {i + 1}'}: {f}" for f in code_flags(cell.source, test_names, assignment, grade_id)]
    return found


_RUNTIME = {"CellTimeoutError": "timed out", "MemoryError": "ran out of memory", "DeadKernelError": "kernel died"}


def runtime_flags(path: pathlib.Path) -> list[str]:
    """'cell: timed out' and the like, from an autograded notebook's error outputs."""
    found = []
    for cell in nbformat.read(path, as_version=4).cells:
        where = cells.grade_id(cell) or "a cell"
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error" and o.get("ename") in _RUNTIME:
                found.append(f"{where}: {_RUNTIME[o['ename']]}")
    return found
