"""Grading survives bad submissions, and they earn nothing they should not.

One class of workbook 01: the model answers, the blank release and every
submission of tests/hostile_submissions.py, graded together by the code behind
`make grade` (two processes sharing one gradebook), with a 10 s cell limit and
a 3 GiB kernel memory limit so that the loops and the memory bomb end quickly.
Then a part of the class is graded again one after another, and the two
gradebooks must agree.
"""
from __future__ import annotations

import json
import os
import pathlib
import socket

import nbformat
import pytest

from attnlab.instructor import flags, grading, sandbox, summary
from conftest import ROOT
from hostile_submissions import ALL_TESTS, ASSIGNMENT as A, HOSTILE

LIMITS = 'c.Execute.timeout = 10\nos.environ["ATTNLAB_KERNEL_MEMORY"] = "3G"'
FULL = {"test_attention": 3, "test_heads": 2, "test_mha": 3, "test_backward": 3, "test_autograd_function": 1,
        "test_kv_cache": 3, "test_cache_size": 2}
SERIAL = ["good", "syntax_error", "os_exit", "corrupt_json", "noisy", "patch_allclose", "deleted_test_cell"]

ISOLATED = sandbox.report()["isolation"].startswith(("root", "user"))
needs_isolation = pytest.mark.skipif(not ISOLATED, reason="this machine refuses the namespaces the grading sandbox uses")


def _class(answers, release):
    subs = {"good": answers, "blank": release}
    for h in HOSTILE:
        subs[h.name] = h.build(answers)
    return subs


def _place(ws, student, nb, filename=""):
    folder = ws / "autograde" / "submitted" / student / A
    folder.mkdir(parents=True, exist_ok=True)
    if nb is None:
        return
    path = folder / (filename or f"{A}.ipynb")
    path.write_bytes(nb) if isinstance(nb, bytes) else nbformat.write(nb, path)


def _grade(tmp, name, students, subs, jobs):
    ws = grading.workspace(tmp / name, [A], config=LIMITS)
    assert grading.api(ws).generate_assignment(A)["success"]
    files = {h.name: h.filename for h in HOSTILE}
    for s in students:
        _place(ws, s, subs[s], files.get(s, ""))
    return ws, grading.grade_course(ws, jobs=jobs, progress=lambda line: None)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    release = nbformat.read(ROOT / "course" / A / f"{A}.ipynb", as_version=4)
    source = nbformat.read(ROOT / "solutions" / A / f"{A}.ipynb", as_version=4)
    subs = _class(grading.filled(release, source), release)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    saved = dict(os.environ)
    # What the snooping submission tries to reach (kernels inherit the environment).
    # The kernel's environment is an allow-list: name the snoop's variables.
    os.environ.update(ATTNLAB_KERNEL_ENV="SNOOP_*", SNOOP_PORT=str(listener.getsockname()[1]),
                      SNOOP_GRADEBOOK=str(tmp / "parallel" / "autograde" / "gradebook.db"),
                      SNOOP_SUBMITTED=str(tmp / "parallel" / "autograde" / "submitted"))
    checks_before = (ROOT / "attnlab" / "checks" / "__init__.py").read_bytes()
    try:
        parallel = _grade(tmp, "parallel", list(subs), subs, jobs=2)
        serial = _grade(tmp, "serial", SERIAL, subs, jobs=1)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        listener.close()
    assert (ROOT / "attnlab" / "checks" / "__init__.py").read_bytes() == checks_before, "a submission changed attnlab/checks/__init__.py"
    rows = {r["student"]: r for r in summary.summary(parallel[0])}
    return {"parallel": parallel, "serial": serial, "rows": rows}


def _scores(ws, student):
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{ws / 'autograde' / 'gradebook.db'}", course_id="efficient-attention") as gb:
        try:
            nb = gb.find_submission_notebook(A, A, student)
        except MissingEntry:
            return {}
        return {g.name: (g.score, g.max_score) for g in nb.grades if g.cell.cell_type == "code"}


def test_the_batch_finishes_and_grades_every_submission(graded):
    ws, results = graded["parallel"]
    assert sorted(r["student"] for r in results) == sorted(["good", "blank", *(h.name for h in HOSTILE)])
    not_graded = {r["student"] for r in results if not r["success"]}
    assert not_graded <= {h.name for h in HOSTILE if not h.graded}, f"grading failed for {not_graded}"


def test_the_model_answers_keep_full_marks_beside_hostile_classmates(graded):
    ws, _ = graded["parallel"]
    assert {c: s for c, (s, _) in _scores(ws, "good").items()} == FULL
    assert graded["rows"]["good"]["flags"] == "" and graded["rows"]["good"]["failing"] == ""
    assert all(s == 0 for s, _ in _scores(ws, "blank").values())


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.name for h in HOSTILE])
def test_hostile_submission(graded, hostile):
    ws, _ = graded["parallel"]
    scores = _scores(ws, hostile.name)
    row = graded["rows"][hostile.name]
    if not hostile.graded:
        assert all(s == 0 for s, _ in scores.values()), f"{hostile.name} scored points: {scores}"
        assert row[A] == "not graded", row
    else:
        assert set(scores) == set(ALL_TESTS), f"{hostile.name}: test cells missing from the gradebook: {scores}"
        loses = hostile.loses if ISOLATED or hostile.loses_unsandboxed is None else hostile.loses_unsandboxed
        for cell, (score, max_score) in scores.items():
            want = 0 if cell in loses else max_score
            assert score == want, f"{hostile.name}: {cell} scored {score}/{max_score}, expected {want} ({hostile.why})"
    for flag in hostile.flags:
        assert flag in row["flags"], f"{hostile.name}: the summary should flag {flag!r}: {row['flags']!r}"


@needs_isolation
def test_student_code_cannot_reach_secrets_the_network_or_shared_files(graded):
    ws, _ = graded["parallel"]
    nb = nbformat.read(ws / "autograde" / "autograded" / "snoop" / A / f"{A}.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    seen = json.loads(text.split("SNOOP ", 1)[1].splitlines()[0])
    assert seen["solution_source"].startswith("refused"), seen
    # an empty folder, or nothing at all where the course itself lives under the private /tmp
    assert seen["solutions_listing"] in ("[]", "refused: FileNotFoundError"), seen
    assert "SQLite" not in seen["gradebook"], seen
    assert seen["other_submissions"] in ("[]", "refused: FileNotFoundError"), seen
    assert "good" not in seen["up_from_here"], seen
    assert seen["write_package"].startswith("refused"), seen
    assert seen["write_home"].startswith("refused"), seen
    assert seen["network"].startswith("refused"), seen
    assert not pathlib.Path("~/attnlab-tamper.txt").expanduser().exists()


def test_a_gigantic_print_is_cut(graded):
    ws, _ = graded["parallel"]
    path = ws / "autograde" / "autograded" / "giant_print" / A / f"{A}.ipynb"
    assert path.stat().st_size < 5_000_000
    assert "[output cut: more than 1,000,000 characters in one cell]" in path.read_text()


def _dump(ws, students):
    """Every grade, comment-free, keyed by student and cell; and which notebooks were graded."""
    from nbgrader.api import Gradebook

    out = {}
    with Gradebook(f"sqlite:///{ws / 'autograde' / 'gradebook.db'}", course_id="efficient-attention") as gb:
        for s in students:
            for sub in gb.find_student(s).submissions:
                for nb in sub.notebooks:
                    for g in nb.grades:
                        out[(s, nb.name, g.name)] = (g.auto_score, g.max_score, g.needs_manual_grade)
    graded = {s: (ws / "autograde" / "autograded" / s / A / f"{A}.ipynb").exists() for s in students}
    return out, graded


def test_parallel_grading_writes_the_gradebook_serial_grading_writes(graded):
    parallel, serial = graded["parallel"][0], graded["serial"][0]
    assert _dump(parallel, SERIAL) == _dump(serial, SERIAL)
    assert {r["student"]: r["success"] for r in graded["serial"][1]} == \
        {r["student"]: r["success"] for r in graded["parallel"][1] if r["student"] in SERIAL}


@pytest.mark.parametrize("assignment", sorted(p.name for p in (ROOT / "solutions").iterdir()
                                              if p.is_dir() and p.name[:2].isdigit()))
def test_the_model_answers_raise_no_flags(tmp_path, assignment):
    release = nbformat.read(ROOT / "course" / assignment / f"{assignment}.ipynb", as_version=4)
    source = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    path = tmp_path / f"{assignment}.ipynb"
    nbformat.write(grading.filled(release, source), path)
    assert flags.flags(path) == []


def test_code_flags_name_what_an_instructor_should_read():
    flag = flags.code_flags
    assert flag("torch.allclose = lambda *a, **k: True") == ["replaces torch.allclose"]
    assert "replaces c.expect_close" in flag("import attnlab.checks as c\nc.expect_close = print")
    assert flag("from attnlab.guard import trusted") == ["imports attnlab.guard", "imports trusted from attnlab.guard"]
    assert flag("class A:\n    def __eq__(self, o):\n        return True") == ["defines __eq__"]
    assert flag("with torch.inference_mode(False):\n    pass") == ["turns autograd on (inference_mode(False))"]
    assert any(f.startswith("names a grading path") for f in flag("open('../../solutions/01_mha/01_mha.py')"))
    assert flag("def f(:") == ["does not parse"]
    assert flag("%timeit f()\nx = 1") == []
    assert flag("scores = q @ k.transpose(-2, -1)\nout = torch.softmax(scores, dim=-1)") == []


# Each construct only a way around the guard needs, and a word its flag must hold.
CHEATS = {
    "torch.ops.aten._scaled_dot_product_attention_math(q, k, v)": "torch.ops",
    "import torch._C as C\nC._nn.scaled_dot_product_attention(q, k, v)": "torch._C",
    "from torch import _C\nwith _C.DisableTorchFunction():\n    pass": "torch._C",
    "from torch.overrides import _pop_mode_temporarily": "torch.overrides",
    "import torch.utils._python_dispatch as d\nd._disable_current_modes()": "_python_dispatch",
    "f = torch._VF.einsum": "torch._VF",
    "lib = torch.library.Library('aten', 'IMPL')": "torch.library",
    "out = F.scaled_dot_product_attention(q, k, v)": "torch's own answer",
    "norm = nn.RMSNorm(8)": "torch's own answer",
    "f = answers.attention.__wrapped__": "__wrapped__",
    "f = answers.attention.__closure__[0].cell_contents": "__closure__",
    "s = answers.attention.__globals__": "__globals__",
    "c = answers.split_heads.__code__.co_consts": "__code__",
    "f = getattr(answers.attention, '__globals__')": "__globals__",
    "f = getattr(answers, name)": "computed name",
    "d = vars(answers)": "namespace",
    "d = attnlab.answers.__dict__": "__dict__",
    "import types\nf = types.FunctionType(code, {})": "types",
    "import importlib\nimportlib.reload(attnlab.guard)": "importlib",
    "from importlib import reload\nreload(answers)": "reloads a module",
    "spec = importlib.util.spec_from_file_location('r', path)": "importlib",
    "exec(source)": "exec",
    "eval('1')": "eval",
    "code = compile(source, 'f', 'exec')": "compile",
    "text = open(path).read()": "opens a file",
    "text = pathlib.Path(path).read_text()": "read_text",
    "data = pathlib.Path(path).read_bytes()": "read_bytes",
    "import nbformat": "nbformat",
    "import io": "imports io",
    "import json\nnb = json.load(f)": "json.load",
    "import builtins\nprint(builtins.open)": "builtins",
    "b = __builtins__": "__builtins__",
    "import gc\nobjs = gc.get_objects()": "gc",
    "import inspect\nsrc = inspect.getsource(answers)": "inspect",
    "import sys\nr = sys.modules['attnlab.answers']": "sys.modules",
    "import sys\nf = sys._getframe(1)": "sys._getframe",
    "import sys\nsys.settrace(None)": "settrace",
    "import attnlab.guard as g\ng._LEDGER.clear()": "attnlab.guard",
    "import threading": "threading",
    "import __main__": "__main__",
    "x = In[-1]": "IPython",
    "def attention(q, k, v, causal=False):\n    return globals()['want']": "globals()",
    "def attention(q, k, v, causal=False):\n    return want": "only the test cells bind",
    "w = namespace['want']": "only the test cells bind",
    "frame = tb.tb_frame.f_back.f_locals": "f_locals",
    "p = 'attnlab/answers.py'": "course file",
    # The blind spots issue 22 found.
    "%run other.py": "IPython magic",
    "%time f = answers.attention.__wrapped__": "__wrapped__",
    "!cat ../solutions/01_mha/01_mha.py": "shell line",
    "object.__setattr__(torch, 'allclose', f)": "__setattr__",
    "setattr(module, name, f)": "computed at run time",
    "import os\nm = os.sys.modules": "os.sys",
    "import os\nfd = os.open(path, os.O_RDONLY)\ndata = os.read(fd, 100)": "os.open",
    "get_ipython().set_custom_exc((Exception,), handler)": "exception handler",
    "get_ipython().input_transformers_post.append(f)": "input_transformers_post",
    "get_ipython().events.register('post_run_cell', f)": "events",
    "import attnlab.verdict.kernel as k": "attnlab.verdict",
}


@pytest.mark.parametrize("source", list(CHEATS), ids=[f"cheat{i}" for i in range(len(CHEATS))])
def test_code_flags_catch_each_construct_only_a_cheat_needs(source):
    found = flags.code_flags(source, test_names=frozenset({"want"}))
    assert any(CHEATS[source] in f for f in found), (source, found)


@pytest.mark.parametrize("source", [
    "def attention(q, k, v, causal=False):\n    want = q @ k.transpose(-2, -1)\n    return torch.softmax(want, -1) @ v",
    "def f(x):\n    d = x.shape[-1]\n    return torch.compile  # not exec\n",
    "import re\npattern = re.compile('x')",
    "import math\nscale = 1 / math.sqrt(8)",
    "y = torch.einsum('bhtd,bhsd->bhts', q, k)",
    "def forward(self, x):\n    return self.W_o(x)",
    "n = sum(p.numel() for p in model.parameters())",
])
def test_code_flags_leave_honest_code_alone(source):
    assert flags.code_flags(source, test_names=frozenset({"want"})) == []


def test_flags_find_test_names_copies_of_the_answer_key_and_leave_given_cells_alone(tmp_path):
    release = nbformat.read(ROOT / "course" / A / f"{A}.ipynb", as_version=4)
    source = nbformat.read(ROOT / "solutions" / A / f"{A}.ipynb", as_version=4)
    nb = grading.filled(release, source)
    from hostile_submissions import _reference_source

    nb = grading.edit_cell(nb, "heads", "def split_heads(x, n_heads):",
                           _reference_source("split_heads") + "\n\n\ndef split_heads_mine(x, n_heads):")
    nb = grading.edit_cell(nb, "cache_size", "return 2 * n_heads * d_head * n_layers",
                           "return kv_cache_elements_per_token.__code__ and got")
    path = tmp_path / f"{A}.ipynb"
    nbformat.write(nb, path)
    found = flags.flags(path)
    assert "heads: split_heads is attnlab.answers.split_heads line for line" in found, found
    assert "cache_size: reads got, a name only the test cells bind" in found, found
    assert "cache_size: reaches __code__" in found, found
    assert all(f.split(":")[0] in ("heads", "cache_size") for f in found), found  # the given cells raise none


def test_no_feedback_of_the_class_reveals_a_hidden_test(graded):
    """Every file handed back to every student of the hostile class, the one
    that prints, writes and raises the hidden tests' source included, holds no
    line of a hidden test and no path of the grading machine."""
    import html
    import re
    import sys

    from test_grading import _secrets

    ws, _ = graded["parallel"]
    secrets = _secrets(A)
    pages = sorted((ws / "autograde" / "feedback").glob(f"*/{A}/*"))
    assert {p.parent.parent.name for p in pages} >= {"good", "blank", "exfiltrate", "snoop"}
    for page in pages:
        assert page.name == f"{A}.html", f"{page.parent.parent.name} is handed back {page.name}"
        text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))
        leaked = sorted(s for s in secrets if s in text)
        assert not leaked, f"{page.parent.parent.name}'s feedback shows hidden-test lines: {leaked[:3]}"
        assert not [p for p in (str(ws), str(ROOT), sys.prefix) if p in text], page
