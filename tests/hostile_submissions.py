"""Bad submissions of workbook 01, and what grading must make of each.

Each entry builds a submission from the model answers (a notebook, or raw
bytes for a file that is not one) and says which test cells must score zero;
every other test cell must keep its points. ``flag`` is a word the summary's
flags column must show for that student; ``graded=False`` means nbgrader
cannot grade the file at all, which the summary must say.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Callable

import nbformat

from attnlab import grading

ASSIGNMENT = "01_mha"
ALL_TESTS = ("test_attention", "test_heads", "test_mha", "test_backward", "test_autograd_function",
             "test_kv_cache", "test_cache_size")


@dataclass(frozen=True)
class Hostile:
    name: str
    build: Callable  # (model answers notebook) -> notebook or bytes
    loses: tuple[str, ...] = ()
    flag: str = ""
    graded: bool = True
    why: str = ""
    filename: str = ""  # where the file lands in the student's folder, if not <assignment>.ipynb


def _edit(grade_id, old, new):
    return lambda nb: grading.edit_cell(nb, grade_id, old, new)


def _append(grade_id, code):
    def build(nb):
        nb = copy.deepcopy(nb)
        cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
        cell.source += "\n\n" + code
        return nb
    return build


def _delete(grade_id):
    def build(nb):
        nb = copy.deepcopy(nb)
        nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") != grade_id]
        return nb
    return build


def _replace_test(grade_id, source):
    def build(nb):
        nb = copy.deepcopy(nb)
        for c in nb.cells:
            if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
                c.source = source
        return nb
    return build


def _strip_metadata(nb):
    nb = copy.deepcopy(nb)
    for c in nb.cells:
        c.metadata.pop("nbgrader", None)
    return nb


def _compose(*steps):
    def build(nb):
        for step in steps:
            nb = step(nb)
        return nb
    return build


# What a snooping cell tries; it prints one JSON line that the test reads back.
SNOOP = r'''
import json as _json, os as _os, socket as _socket, attnlab as _attnlab
_root = _os.path.dirname(_os.path.dirname(_attnlab.__file__))
_seen = {}
def _try(name, fn):
    try:
        _seen[name] = repr(fn())[:200]
    except Exception as e:
        _seen[name] = "refused: " + type(e).__name__
_try("solution_source", lambda: open(_os.path.join(_root, "solutions", "01_mha", "01_mha.py")).read())
_try("solutions_listing", lambda: _os.listdir(_os.path.join(_root, "solutions")))
_try("gradebook", lambda: open(_os.environ.get("SNOOP_GRADEBOOK", "/nonexistent"), "rb").read(100))
_try("other_submissions", lambda: _os.listdir(_os.environ.get("SNOOP_SUBMITTED", "/nonexistent")))
_try("up_from_here", lambda: _os.listdir("../.."))
_try("write_package", lambda: open(_os.path.join(_root, "attnlab", "checks.py"), "a").write("# tampered\n"))
_try("write_home", lambda: open(_os.path.expanduser("~/attnlab-tamper.txt"), "w").write("x"))
def _connect():
    s = _socket.create_connection(("127.0.0.1", int(_os.environ.get("SNOOP_PORT", "1"))), timeout=2)
    s.close()
    return "connected"
_try("network", _connect)
print("SNOOP " + _json.dumps(_seen))
'''

WRONG_ATTENTION = ("return torch.softmax(scores, dim=-1) @ v  # (B, H, Tq, Dv)",
                   "return torch.softmax(scores, dim=-2) @ v  # wrong axis")

HOSTILE = [
    Hostile("syntax_error", _append("heads", "def broken(:\n    pass"), ("test_heads",),
            flag="does not parse"),
    Hostile("exception", _edit("cache_size", "return 2 * n_heads * d_head * n_layers",
                               "raise RuntimeError('not today')"), ("test_cache_size",)),
    Hostile("infinite_loop", _edit("heads", "B, H, T, D = x.shape", "while True:\n        pass"),
            ("test_heads",), why="the cell is interrupted at the time limit and the next cell runs"),
    Hostile("infinite_loop_top_level", _append("cache_size", "while True:\n    pass"), (),
            why="an interrupted solution cell keeps what it defined"),
    Hostile("os_exit", _append("cache_size", "import os\nos._exit(3)"), ALL_TESTS, flag="calls os._exit",
            graded=False, why="nbgrader stops at a dead kernel: this student's workbook scores 0, flagged"),
    Hostile("memory_bomb", _edit("heads", "B, H, T, D = x.shape",
                                 "hog = []\n    while True:\n        hog.append(bytearray(10**8))"),
            ("test_heads",), why="MemoryError at the kernel's memory limit"),
    Hostile("noisy", _compose(
        _edit("attention", "Tq, Tk = q.shape[-2], k.shape[-2]",
              "import sys, warnings\n    warnings.warn('slow path')\n"
              "    print('\\r[#####] 100%', file=sys.stderr)\n    Tq, Tk = q.shape[-2], k.shape[-2]"),
        _append("heads", "import sys\nfor i in range(3):\n    print(f'\\rprogress {i}', file=sys.stderr)")),
        (), why="warnings and progress bars cost nothing when the answer is right"),
    Hostile("deleted_test_cell", _delete("test_heads"), (), why="the test cell is put back and graded"),
    Hostile("edited_test_cell", _compose(_edit("attention", *WRONG_ATTENTION),
                                         _replace_test("test_attention", "print('all good')")),
            ("test_attention",), why="the test cell is restored from the source"),
    Hostile("stripped_metadata", _strip_metadata, ALL_TESTS, flag="nbgrader metadata", graded=False,
            why="without metadata nbgrader refuses the notebook: 0, flagged"),
    Hostile("renamed", lambda nb: nb, ALL_TESTS, flag="no 01_mha.ipynb", graded=False,
            filename="my attempt.ipynb", why="make collect finds renamed copies; a file placed by hand is not"),
    Hostile("missing", lambda nb: None, ALL_TESTS, flag="no 01_mha.ipynb", graded=False,
            why="an empty submission folder"),
    Hostile("corrupt_json", lambda nb: json.dumps(nbformat.writes(nb))[: 5000].encode(), ALL_TESTS,
            flag="could not be graded", graded=False),
    Hostile("patch_allclose", _compose(
        _edit("attention", *WRONG_ATTENTION),
        _append("attention", "torch.allclose = lambda *a, **k: True\n"
                             "torch.testing.assert_close = lambda *a, **k: None")),
        ALL_TESTS, flag="torch.allclose"),
    Hostile("patch_checks", _compose(
        _edit("attention", *WRONG_ATTENTION),
        _append("attention", "import attnlab.checks\n"
                             "attnlab.checks.expect_close = lambda *a, **k: None\n"
                             "expect_close = attnlab.checks.expect_close")),
        ALL_TESTS, flag="expect_close"),
    Hostile("always_equal", _edit("cache_size", "return 2 * n_heads * d_head * n_layers",
                                  "class Yes(int):\n        def __eq__(self, other):\n            return True\n"
                                  "        __hash__ = int.__hash__\n    return Yes(1)"),
            ("test_cache_size",), flag="__eq__"),
    Hostile("trusted_reference", _append("attention", "from attnlab.guard import trusted\n"
                                                      "from attnlab import reference\n"
                                                      "attention = trusted(reference.attention)"),
            ALL_TESTS, flag="attnlab.guard", why="every test refuses a namespace holding a trusted reference"),
    Hostile("autograd_in_disguise", _edit(
        "backward", "Tq, Tk = q.shape[-2], k.shape[-2]\n    scale",
        "with torch.inference_mode(False), torch.enable_grad():\n"
        "        q2, k2, v2 = (t.clone().requires_grad_() for t in (q, k, v))\n"
        "        return torch.autograd.grad(attention(q2, k2, v2, causal), (q2, k2, v2), dout)\n"
        "    Tq, Tk = q.shape[-2], k.shape[-2]\n    scale"),
        ("test_backward",), flag="inference_mode(False)"),
    Hostile("snoop", _append("cache_size", SNOOP), (),
            why="reads and writes outside its folder and the network are refused"),
    Hostile("giant_print", _append("cache_size", "print('x' * 50_000_000)"), (),
            why="the output is cut at the kernel's limit"),
]
