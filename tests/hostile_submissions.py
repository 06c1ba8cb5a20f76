"""Bad submissions of workbook 01, and what grading must make of each.

Each entry builds a submission from the model answers (a notebook, or raw
bytes for a file that is not one) and says which test cells must score zero;
every other test cell must keep its points. ``flag`` is a word (or several)
the summary's flags column must show for that student; ``graded=False`` means
nbgrader cannot grade the file at all, which the summary must say.

The ``cheat_*`` entries try the routes around the grading guard, one per
exercise, so that one graded notebook tries several (each exercise is graded
on its own: the tests hand later exercises the course's versions of earlier
ones). ``loses_unsandboxed`` is what a route costs where the kernel runs
without isolation (it can then read the answer key's source).
"""
from __future__ import annotations

import ast
import copy
import json
from dataclasses import dataclass
from typing import Callable

import nbformat

from attnlab.instructor import grading

ROOT = grading.ROOT

ASSIGNMENT = "01_mha"
ALL_TESTS = ("test_attention", "test_heads", "test_mha", "test_backward", "test_autograd_function",
             "test_kv_cache", "test_cache_size")


@dataclass(frozen=True)
class Hostile:
    name: str
    build: Callable  # (model answers notebook) -> notebook or bytes
    loses: tuple[str, ...] = ()
    flag: str | tuple[str, ...] = ""
    graded: bool = True
    why: str = ""
    filename: str = ""  # where the file lands in the student's folder, if not <assignment>.ipynb
    loses_unsandboxed: tuple[str, ...] | None = None  # what it loses where the kernel is not isolated

    @property
    def flags(self) -> tuple[str, ...]:
        return (self.flag,) if isinstance(self.flag, str) and self.flag else tuple(self.flag)


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


def _before(grade_id, anchor, code, indent=4):
    """Insert ``code`` (indented like the function body) in cell ``grade_id`` just before ``anchor``:
    the cheat runs first, and the model answer below it is never reached."""
    pad = " " * indent
    body = "\n".join(pad + ln if ln else ln for ln in code.strip("\n").splitlines())
    return _edit(grade_id, anchor, body.lstrip() + "\n" + pad + anchor)


def _reference_source(*names):
    """The answer key's functions as attnlab/answers/mha.py spells them, without their decorator:
    what a learner pastes after opening the installed package."""
    text = (ROOT / "attnlab" / "answers" / "mha.py").read_text()
    fns = {n.name: n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef)}
    return "\n\n\n".join(ast.get_source_segment(text, fns[n]) for n in names)


def _replace_cell(grade_id, code):
    def build(nb):
        nb = copy.deepcopy(nb)
        next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id).source = code
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
_try("write_package", lambda: open(_os.path.join(_root, "attnlab", "checks", "__init__.py"), "a").write("# tampered\n"))
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

# Anchors: the first line of each model answer's body.
ATTENTION = "Tq, Tk = q.shape[-2], k.shape[-2]\n    scores = q @ k.transpose(-2, -1) / math.sqrt"
SPLIT = "B, T, C = x.shape\n    return x.view"
FORWARD = "q = split_heads(self.W_q(x), self.n_heads)"
BACKWARD = "Tq, Tk = q.shape[-2], k.shape[-2]\n    scale = 1.0"
UPDATE = "if self.k is None:\n            self.k, self.v = k_new, v_new"
STEP = "q = split_heads(mha.W_q(x), mha.n_heads)"
MASK = ("mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device)"
        ".tril(k.shape[-2] - q.shape[-2]) if causal else None")

# a. torch's lower-level operators and the switches of the grading's torch modes (and b. a stand-in
#    smuggled in as a default argument, which no test admitted).
CHEAT_TORCH = _compose(
    _before("attention", ATTENTION, MASK + """
with torch._C.DisableTorchFunction():
    return torch.ops.aten._scaled_dot_product_attention_math(q, k, v, attn_mask=mask)[0]"""),
    _edit("heads", "def split_heads(x, n_heads):",
          "from attnlab import checks\n\n\ndef split_heads(x, n_heads, _key=checks.stand_in(answers.split_heads)):"),
    _before("heads", SPLIT, "return _key(x, n_heads)"),
    _before("mha", FORWARD, """
B, T, C = x.shape
q, k, v = (W(x).view(B, T, self.n_heads, -1).transpose(1, 2) for W in (self.W_q, self.W_k, self.W_v))
mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril() if causal else None
return self.W_o(torch._C._nn.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, T, C))""",
            indent=8),
    _before("backward", BACKWARD, """
from torch.overrides import _pop_mode_temporarily
with _pop_mode_temporarily(), torch.inference_mode(False), torch.enable_grad():
    q2, k2, v2 = (t.clone().requires_grad_() for t in (q, k, v))
    return torch.autograd.grad(attention(q2, k2, v2, causal), (q2, k2, v2), dout)"""),
)

# b. the guard's own state or the unguarded function through a function's attributes, a reload under
#    another name; h. a ban left behind at the end of a cell.
CHEAT_GUARD = _compose(
    _before("attention", ATTENTION, "return answers.attention.__wrapped__(q, k, v, causal)"),
    _before("heads", SPLIT, "return answers.split_heads.__closure__[0].cell_contents(x, n_heads)"),
    _before("mha", FORWARD, """
import importlib.util
spec = importlib.util.spec_from_file_location("attnlab.answers.mha", answers.mha.__file__)
fresh = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fresh)
return fresh.mha_forward(x, self.W_q.weight, self.W_k.weight, self.W_v.weight, self.W_o.weight, self.n_heads, causal)""",
            indent=8),
    _before("backward", BACKWARD, """
answers.attention_backward.__globals__["_state"].trusted = 10**9
return answers.attention_backward(q, k, v, dout, causal)"""),
    _before("kv_cache", STEP, """
import attnlab.guard
attnlab.guard._LEDGER.clear()
return answers.mha_step(x, mha.W_q.weight, mha.W_k.weight, mha.W_v.weight, mha.W_o.weight, mha.n_heads, cache)"""),
    _append("cache_size", "import attnlab.guard as _guard\n"
                          "_guard._LEDGER.append(_guard._Block((frozenset({'kv_cache_bytes'}), ())))"),
)

# c. an unguarded copy of an answer elsewhere in the package; d. the answer key's source, executed;
# f. the test's own expected value, read from the notebook's globals or the caller's frame;
# g. the notebook file read back from disk.
CHEAT_SOURCES = _compose(
    _before("attention", ATTENTION, """
from attnlab.lesson import bench
layer = object.__new__(bench._Layer)
B, H, Tq, D = q.shape
layer.m, layer.G, layer.cfg = "MHA", H, type("Config", (), {"batch": B, "n_heads": H})()
layer.q, layer.cache = q / math.sqrt(D), [k, v]
return layer.decode()"""),
    _before("heads", SPLIT, """
import inspect
namespace = {"__name__": __name__}
exec(inspect.getsource(answers.mha).replace("from attnlab.guard import guarded", "guarded = lambda f: f"),
     namespace)
return namespace["split_heads"](x, n_heads)"""),
    _before("mha", FORWARD, 'return globals()["want"]', indent=8),
    _before("kv_cache", STEP, "import sys\nreturn sys._getframe(1).f_globals['want'][:, -x.shape[1]:]"),
    _append("cache_size", """
import glob, nbformat
for _path in glob.glob("*.ipynb"):
    try:
        _hidden = nbformat.read(_path, as_version=4)
    except Exception:
        pass"""),
)

# What scores in the same process and only the summary's flags catch: a. both torch switches at once;
# e. the answer key pasted from attnlab/answers.py; b. the raw function behind a guarded one, from its
# code's constants; g. the notebook's file opened.
CHEAT_FLAGGED = _compose(
    _before("attention", ATTENTION, MASK + """
with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)"""),
    lambda nb: _replace_cell("heads", "from attnlab import arguments\n\n\n"
                             + _reference_source("split_heads", "merge_heads"))(nb),
    _edit("kv_cache", "class KVCache:", "_raw_update = next(c for c in answers.KVCache.update.__code__.co_consts\n"
                                        "                   if callable(c) and getattr(c, '__name__', '') == 'update')\n\n\n"
                                        "class KVCache:"),
    _before("kv_cache", UPDATE, "return _raw_update(self, k_new, v_new)", indent=8),
    _append("cache_size", """
import glob
for _path in glob.glob("*.ipynb"):
    try:
        _text = open(_path).read()
    except OSError:
        _text = ""
"""),
)

# The classes of route that scored while the checks ran in the kernel they judged (issue 22). Each
# scored full marks there; with the verdict in the checker, outside the kernel, each loses its exercise.
# a. the test's own inputs, changed in place so that the expected value computed from them agrees.
CLASS_INPUTS_IN_PLACE = _before("attention", ATTENTION, """
for t in (q, k, v):
    t.zero_()
return torch.zeros(*q.shape[:-1], v.shape[-1], dtype=v.dtype, device=v.device)""")
# b. names the notebook rebinds for the test cells below it (F, the answer key).
CLASS_REBOUND_NAMES = _compose(_edit("attention", *WRONG_ATTENTION), _append("attention", """
import types as _types
_key = answers
class _Key:
    def __getattr__(self, name):
        return attention if name == "attention" else getattr(_key, name)
answers = _Key()
F = _types.SimpleNamespace(scaled_dot_product_attention=lambda q, k, v, is_causal=False: attention(q, k, v, is_causal))"""))
# c. another installed library that answers the exercise.
CLASS_OTHER_LIBRARY = _before("attention", ATTENTION, """
import types as _types
from transformers.models.llama.modeling_llama import eager_attention_forward
Tq, Tk = q.shape[-2], k.shape[-2]
mask = None
if causal:
    allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
    mask = torch.zeros(Tq, Tk, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
out, _ = eager_attention_forward(_types.SimpleNamespace(num_key_value_groups=1, training=False), q, k, v, mask,
                                 scaling=q.shape[-1] ** -0.5)
return out.transpose(1, 2)""")
# d. forward-mode autodiff where the gradient must be written by hand.
CLASS_FORWARD_MODE = _before("backward", BACKWARD, """
jac = torch.func.jacfwd(lambda a, b, c: attention(a, b, c, causal), argnums=(0, 1, 2))(q, k, v)
return tuple(torch.tensordot(dout, j, dims=dout.dim()) for j in jac)""")
# e. a checker's code object swapped while the function object stays the one the tests imported.
CLASS_CODE_SWAPPED = _compose(_edit("attention", *WRONG_ATTENTION), _append("attention", """
import attnlab.checks.compare as _compare
def _agree(got, want, what, suspects=None, hint="", atol=None, rtol=None, nan_hint=""):
    return None
_compare.expect_close.__code__ = _agree.__code__"""))
# f. IPython itself: an exception handler that hides a failed check, and an input transformer that
#    turns every test cell into nothing.
CLASS_IPYTHON_HANDLER = _compose(_edit("attention", *WRONG_ATTENTION), _append("attention", """
get_ipython().set_custom_exc((BaseException,), lambda shell, etype, value, tb, tb_offset=None: None)"""))
CLASS_IPYTHON_TRANSFORMER = _compose(_edit("attention", *WRONG_ATTENTION), _append("attention", """
get_ipython().input_transformers_post.append(
    lambda lines: ["pass\\n"] if any("exercise(" in ln or "_checker" in ln for ln in lines) else lines)"""))
# g. the answer key's code, loaded from the package and run again without its guard.
CLASS_ANSWER_BYTECODE = _before("attention", ATTENTION, """
import builtins as _builtins, marshal as _marshal, os as _os, types as _types
import attnlab as _pkg
_folder = _os.path.join(_os.path.dirname(_pkg.__file__), "answers")
_source = _os.path.join(_folder, "mha.py")
if _os.path.exists(_source):
    _code = compile(open(_source).read(), _source, "exec")
else:
    _code = _marshal.loads(open(_os.path.join(_folder, "mha.pyc"), "rb").read()[16:])
_unguarded = _types.SimpleNamespace(guarded=lambda f: f)
def _import(name, *args, **kwargs):
    return _unguarded if name == "attnlab.guard" else __import__(name, *args, **kwargs)
_key = {"__name__": "key", "__builtins__": {**vars(_builtins), "__import__": _import}}
exec(_code, _key)
return _key["attention"](q, k, v, causal)""")

# h. the module's own weights zeroed, so that an expected value computed from weights read back from it
#    agrees with a wrong forward (found in review: the tests now give the module their own weights).
CLASS_WEIGHTS_ZEROED = _compose(
    _edit("mha", "self.W_o = nn.Linear(d_model, d_model, bias=False)",
          "self.W_o = nn.Linear(d_model, d_model, bias=False)\n        with torch.no_grad():\n"
          "            self.W_o.weight.zero_()"),
    _before("mha", FORWARD, "return self.W_o(x)", indent=8))
# i. the kernel's side of the checker patched to send back no gradients at all, beside a Function whose
#    backward returns none.
CLASS_GRADIENTS_FORGED = _compose(_edit("backward", "return dq, dk, dv, None", "return None, None, None, None"),
                                  _append("backward", """
import attnlab.verdict.kernel as _kernel
_do = _kernel._Session._do
_kernel._Session._do = staticmethod(lambda op, args: [] if op == "vjp" else _do(op, args))"""))

# Carries the hidden tests out through the feedback: the source of every test
# cell run so far is in IPython's history, hidden blocks and all.
EXFILTRATE = r'''
_history = "\n".join(In)
print(_history)
with open("hidden-tests.txt", "w") as _f:
    _f.write(_history)
raise RuntimeError(_history[-2000:])
'''


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
                                                      "from attnlab import answers\n"
                                                      "attention = trusted(answers.attention)"),
            (), loses_unsandboxed=ALL_TESTS, flag="attnlab.guard",
            why="the grading kernel has no answer key to trust (the cell fails, and the learner's own attention "
                "stays); without the sandbox every test refuses a namespace holding a trusted reference"),
    Hostile("autograd_in_disguise", _edit(
        "backward", "Tq, Tk = q.shape[-2], k.shape[-2]\n    scale",
        "with torch.inference_mode(False), torch.enable_grad():\n"
        "        q2, k2, v2 = (t.clone().requires_grad_() for t in (q, k, v))\n"
        "        return torch.autograd.grad(attention(q2, k2, v2, causal), (q2, k2, v2), dout)\n"
        "    Tq, Tk = q.shape[-2], k.shape[-2]\n    scale"),
        ("test_backward",), flag="inference_mode(False)"),
    Hostile("exfiltrate", _append("cache_size", EXFILTRATE), (), flag="reads IPython's In",
            why="what it prints, writes or raises never reaches its feedback (tests/test_hostile.py scans it)"),
    Hostile("snoop", _append("cache_size", SNOOP), (),
            why="reads and writes outside its folder and the network are refused"),
    Hostile("giant_print", _append("cache_size", "print('x' * 50_000_000)"), (),
            why="the output is cut at the kernel's limit"),
    Hostile("cheat_torch_internals", CHEAT_TORCH,
            # test_autograd_function runs with the course's attention_backward: the cheat costs test_backward only.
            ("test_attention", "test_heads", "test_mha", "test_backward"),
            flag=("torch._C", "torch.overrides", "torch.ops", "attnlab.checks"),
            why="torch.ops, torch._C._nn, a popped torch function mode: the ATen-level mode refuses them or "
                "the two modes find each other switched off; a stand-in the test did not admit is not trusted"),
    Hostile("cheat_guard_internals", CHEAT_GUARD, tuple(t for t in ALL_TESTS if t != "test_autograd_function"),
            flag=("__wrapped__", "__closure__", "__globals__", "importlib", "attnlab.guard"),
            why="no __wrapped__, no closure, an empty __globals__; a fresh copy of the answer key is guarded "
                "too; the ban also sits on the torch modes; a ban left behind fails the next test"),
    Hostile("cheat_sources", CHEAT_SOURCES, ("test_attention", "test_heads", "test_mha", "test_kv_cache"),
            loses_unsandboxed=("test_attention", "test_mha", "test_kv_cache"),
            flag=("inspect", "runs code from a string (exec)", "reads the notebook's globals()",
                  "sys._getframe", "nbformat"),
            why="the benchmark's attention is guarded; the answer key has no source in the sandbox; expected "
                "values are computed after the learner's function returns"),
    Hostile("cheat_flagged_only", CHEAT_FLAGGED, ("test_kv_cache",), loses_unsandboxed=(),
            flag=("torch._C", "is attnlab.answers.split_heads line for line", "__code__", "opens a file"),
            why="what code in its own kernel can still do: both torch switches off and the answer pasted score, "
                "and the summary flags each route; the answer key's code objects are not in the kernel"),
    Hostile("class_inputs_in_place", CLASS_INPUTS_IN_PLACE, ("test_attention",),
            why="the checker computes the expected values from its own copies of the inputs"),
    Hostile("class_rebound_names", CLASS_REBOUND_NAMES, ("test_attention",),
            why="the test's F and answer key are the checker's, not names of the notebook"),
    Hostile("class_other_library", CLASS_OTHER_LIBRARY, ("test_attention",), loses_unsandboxed=(),
            why="transformers is not in the grading kernel"),
    Hostile("class_forward_mode", CLASS_FORWARD_MODE, ("test_backward",),
            why="forward-mode autodiff is switched off with autograd where a gradient is written by hand"),
    Hostile("class_code_swapped", CLASS_CODE_SWAPPED, ("test_attention",), flag="__code__",
            why="the checker's expect_close lives in another process"),
    Hostile("class_ipython_handler", CLASS_IPYTHON_HANDLER, ("test_attention",),
            why="the score comes from the checker's record, not from the error the kernel reports"),
    Hostile("class_ipython_transformer", CLASS_IPYTHON_TRANSFORMER, ALL_TESTS,
            why="a test cell that never reaches the checker scores 0"),
    Hostile("class_weights_zeroed", CLASS_WEIGHTS_ZEROED, ("test_mha",),
            why="the tests give the module their own weights and compute the expected values from their copies"),
    # (its patch comes after test_mha has run: only the Function's test meets it)
    Hostile("class_gradients_forged", CLASS_GRADIENTS_FORGED, ("test_autograd_function",),
            flag="attnlab.verdict",
            why="the checker takes gradients only one per input, each shaped like it, and compares them"),
    Hostile("class_answer_bytecode", CLASS_ANSWER_BYTECODE, ("test_attention",), loses_unsandboxed=(),
            flag="runs code from a string (exec)",
            why="the grading kernel holds no answer key, neither source nor bytecode"),
]
