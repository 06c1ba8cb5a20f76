"""The checker outside the grading kernel (attnlab/verdict/), piece by piece.

The whole path, nbgrader included, is graded in tests/test_grading.py (model answers, blank release,
every planted mistake under two class secrets) and tests/test_hostile.py (a submission per class of
route around the checks); here: what crosses the wire, what the checker refuses, the class secret,
and a checker driven by a kernel that misbehaves.
"""
from __future__ import annotations

import json
import pathlib
import socket
import struct

import pytest
import torch

from attnlab.checks import cases, draw
from attnlab.verdict import grading, wire
from attnlab.verdict.checker import Checker, hidden_lines


# ------------------------------------------------------------------ the wire

def _round_trip(value):
    buffers: list = []
    data = wire.encode(value, buffers)
    return wire.decode(json.loads(json.dumps(data)), buffers)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
                                   torch.bool])
def test_tensors_cross_exactly(dtype):
    t = (torch.randn(2, 3, 4) * 100).to(dtype)
    got = _round_trip(t.transpose(0, 2))  # not contiguous on the way in
    assert got.dtype == dtype and torch.equal(got, t.transpose(0, 2))


def test_plain_values_cross_as_they_are():
    value = {"a": [1, 2.5, None, True, "x"], "b": (torch.zeros(0, 3), 2**70, float("nan"), torch.float16),
             "c": torch.device("cpu")}
    got = _round_trip(value)
    assert got["a"] == [1, 2.5, None, True, "x"] and got["b"][1] == 2**70 and got["b"][3] is torch.float16
    assert got["b"][0].shape == (0, 3) and got["b"][2] != got["b"][2] and got["c"] == torch.device("cpu")


def test_gradient_flags_cross_and_objects_are_refused_without_a_reference():
    assert _round_trip(torch.ones(2, requires_grad=True)).requires_grad
    with pytest.raises(wire.WireError):
        wire.encode(object(), [])
    with pytest.raises(wire.WireError):
        wire.encode(torch.nn.Linear(2, 2), [])


@pytest.mark.parametrize("data,buffers", [
    ({"$tensor": 0, "dtype": "float32", "shape": [3]}, [b"\0" * 8]),  # bytes that do not fit the shape
    ({"$tensor": 0, "dtype": "object", "shape": [1]}, [b"\0" * 8]),  # no such dtype
    ({"$tensor": 1, "dtype": "float32", "shape": [1]}, [b"\0" * 4]),  # a buffer that was not sent
    ({"$tensor": 0, "dtype": "float32", "shape": [-1]}, [b""]),
    ({"$pickle": "gASV"}, []),  # nothing that would run code
    ({"$tuple": "not a list"}, []),
    ({}, []),
])
def test_what_is_not_a_value_is_refused_with_a_sentence(data, buffers):
    with pytest.raises(wire.WireError):
        wire.decode(data, buffers)


def test_a_value_nested_without_end_is_refused():
    data: list = []
    for _ in range(60):
        data = [data]
    with pytest.raises(wire.WireError):
        wire.decode(data, [])


# ------------------------------------------------------------------ the class secret

def test_hidden_cases_are_fixed_without_a_secret_and_per_student_with_one():
    public = [draw(101).int(1, 10**9) for _ in range(2)]
    assert public[0] == public[1], "without a secret the cases are the public source's"

    def drawn(secret, student, cell="test_attention"):
        with cases.secret(secret, student, cell):
            return [draw(101).int(1, 10**9), draw(202).int(1, 10**9)]

    a = drawn(b"one", "alice")
    assert a == drawn(b"one", "alice"), "the same secret and student must draw the same cases"
    assert a != drawn(b"two", "alice") and a != drawn(b"one", "bob") and a != drawn(b"one", "alice", "test_heads")
    assert a[0] != public[0]
    assert draw(101).int(1, 10**9) == public[0], "the secret is gone after the block"


def test_a_secret_set_but_unusable_stops_grading_with_a_sentence(tmp_path, monkeypatch):
    monkeypatch.delenv(grading.SECRET_ENV, raising=False)
    assert grading.class_secret(tmp_path) is None
    (tmp_path / grading.SECRET_FILE).write_text("  \n")
    with pytest.raises(grading.SecretError, match="is empty"):
        grading.class_secret(tmp_path)
    (tmp_path / grading.SECRET_FILE).write_text("from the file\n")
    assert grading.class_secret(tmp_path) == b"from the file"
    monkeypatch.setenv(grading.SECRET_ENV, " ")
    with pytest.raises(grading.SecretError, match="set but empty"):
        grading.class_secret(tmp_path)
    monkeypatch.setenv(grading.SECRET_ENV, "s3cret")
    assert grading.class_secret(tmp_path) == b"s3cret"


# ------------------------------------------------------------------ the checker, against a kernel that misbehaves

TESTS = {
    "test_add": "with exercise('attention', case='add on 2 numbers'):\n    got = attention(torch.ones(2), 1)\n"
                "expect_close(got, torch.ones(2) + 1, 'attention(ones, 1)')\nprint('add: correct')\n",
    "test_grad": "x = torch.ones(3, requires_grad=True)\nwith exercise('attention', case='a gradient'):\n"
                 "    got = attention(x)\n    g = gradients(got, [x], torch.ones(3))\n"
                 "expect_close(g[0], torch.full((3,), 2.0), 'the gradient')\n",
    "test_hidden": "x = 1\n### BEGIN HIDDEN TESTS\nwith exercise('attention', case='a hidden case'):\n"
                   "    got = attention(torch.ones(3), 2)\nexpect_close(got, torch.full((3,), 7.0), 'the hidden sum')\n"
                   "### END HIDDEN TESTS\n",
}


def _kernel(path, cell, answer):
    """A stand-in kernel: asks for ``cell`` and answers every call with ``answer(header)``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    wire.send(sock, {"op": "run", "cell": cell})
    while True:
        header, buffers = wire.receive(sock)
        if header["op"] in ("done", "refused"):
            sock.close()
            return header
        answer(sock, header, buffers)


def _reply(value):
    def answer(sock, header, buffers):
        out: list = []
        wire.send(sock, {"op": "reply", "value": wire.encode(value, out)}, out)
    return answer


@pytest.fixture
def checker(tmp_path):
    with grading.checker(TESTS, folder=str(tmp_path), timeout=10) as found:
        yield found


def _run(checker, cell, answer):
    checker.arm(cell)
    header = _kernel(checker.path, cell, answer)
    return header, checker.verdict(cell)


def test_a_right_answer_passes_and_what_the_test_printed_comes_back(checker):
    header, verdict = _run(checker, "test_add", _reply(torch.full((2,), 2.0)))
    assert verdict.status == "pass" and header["status"] == "pass" and "add: correct" in verdict.printed


def test_a_wrong_answer_fails_and_a_hidden_failure_shows_no_expected_value(checker):
    _, verdict = _run(checker, "test_add", _reply(torch.zeros(2)))
    assert verdict.status == "fail" and "largest difference" in verdict.message
    _, verdict = _run(checker, "test_hidden", _reply(torch.zeros(3)))
    assert verdict.status == "fail" and "7" not in verdict.message and "hidden" in verdict.message
    assert verdict.message.startswith("the hidden sum is wrong at 3 of 3 values")


@pytest.mark.parametrize("answer,says", [
    (_reply({"not": "a tensor"}), "is a dict; expected a torch.Tensor"),
    (_reply(None), "is None"),
    (lambda sock, h, b: sock.sendall(struct.pack("!Q", 5) + b"{nope"), "not graded"),
    (lambda sock, h, b: sock.sendall(struct.pack("!Q", 2**40)), "not graded"),
    (lambda sock, h, b: wire.send(sock, {"op": "reply", "value": {"$tensor": 0, "dtype": "float32", "shape": [2]}},
                                  [b"\0"]), "not graded"),
    (lambda sock, h, b: wire.send(sock, {"op": "error", "type": "ZeroDivisionError", "message": "boom"}),
     "add on 2 numbers: your code raised ZeroDivisionError: boom"),
    (lambda sock, h, b: wire.send(sock, {"op": "answer", "name": "attention", "value": None}), "switched off"),
])
def test_a_kernel_that_sends_what_is_not_an_answer_fails_its_cell_and_the_checker_goes_on(checker, answer, says):
    _, verdict = _run(checker, "test_add", answer)
    assert verdict.status in ("fail", "error") and says in verdict.message, verdict
    _, verdict = _run(checker, "test_add", _reply(torch.full((2,), 2.0)))
    assert verdict.status == "pass", "the checker must go on after a bad kernel"


def test_a_run_is_refused_outside_its_window_and_only_one_run_counts(checker):
    refused = _kernel(checker.path, "test_add", _reply(torch.full((2,), 2.0)))
    assert refused["op"] == "refused", "a cell the grader is not running now must be refused"
    checker.arm("test_add")
    assert _kernel(checker.path, "test_add", _reply(torch.zeros(2)))["status"] == "fail"
    assert _kernel(checker.path, "test_add", _reply(torch.full((2,), 2.0)))["op"] == "refused"
    assert checker.verdict("test_add").status == "fail", "a second run in the same window must not replace the first"


def test_a_cell_that_never_reaches_the_checker_scores_nothing(checker):
    checker.arm("test_add")
    verdict = checker.verdict("test_add")
    assert verdict.status == "error" and "never reached" in verdict.message
    assert grading.outputs(verdict)[-1]["ename"] == "NotGraded"


def test_a_checker_that_stopped_fails_closed(checker):
    checker.arm("test_add")
    checker.close()
    verdict = checker.verdict("test_add")
    assert verdict.status == "error" and "the checker stopped" in verdict.message


def test_the_hidden_block_is_found_by_line():
    assert hidden_lines(TESTS["test_hidden"]) == {3, 4, 5}
    assert not hidden_lines(TESTS["test_add"])


def test_a_kernel_that_hangs_up_mid_test_leaves_the_checker_serving(checker):
    checker.arm("test_add")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(checker.path)
    wire.send(sock, {"op": "run", "cell": "test_add"})
    wire.receive(sock)  # the checker's first call
    sock.close()
    verdict = checker.verdict("test_add")
    assert verdict.status == "error" and "not graded" in verdict.message
    _, verdict = _run(checker, "test_add", _reply(torch.full((2,), 2.0)))
    assert verdict.status == "pass"


def test_make_grade_refuses_an_empty_secret_with_one_sentence(tmp_path, monkeypatch, capsys):
    from attnlab.instructor import grading as instructor

    monkeypatch.setenv(grading.SECRET_ENV, "")
    assert instructor._main(["--root", str(tmp_path), "grade"]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"not grading: {grading.SECRET_ENV} is set but empty: set it to the class's secret, or unset it "
                   "to grade with the public cases"]
    assert not (tmp_path / "autograde").exists(), "nothing is written when nothing is graded"


def test_a_kernel_that_stops_answering_but_keeps_its_connection_is_cut_off(checker):
    """The cell ended (the kernel was interrupted, say) while the checker waits for an answer: the
    checker's wait ends within its grace, and the cell is not graded."""
    import time

    checker.GRACE = 0.5
    checker.arm("test_add")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(checker.path)
    wire.send(sock, {"op": "run", "cell": "test_add"})
    wire.receive(sock)  # the checker's first call, never answered
    t = time.perf_counter()
    verdict = checker.verdict("test_add")
    assert time.perf_counter() - t < 5 and verdict.status == "error" and "not graded" in verdict.message
    sock.close()
    _, verdict = _run(checker, "test_add", _reply(torch.full((2,), 2.0)))
    assert verdict.status == "pass"


def _gradient_kernel(grads):
    """A kernel that returns a tensor for the call, then ``grads`` for the gradient."""
    def answer(sock, header, buffers):
        value = torch.full((3,), 2.0) if header["op"] == "call" else grads
        out: list = []
        wire.send(sock, {"op": "reply", "value": wire.encode(value, out, tag=lambda t: 7)}, out)
    return answer


@pytest.mark.parametrize("grads,status", [
    ([torch.full((3,), 2.0)], "pass"),
    ([], "fail"),  # no gradient at all: a zip over it would check nothing
    ([torch.full((3,), 2.0), torch.zeros(3)], "fail"),
    ([torch.full((4,), 2.0)], "fail"),
    ([None], "fail"),
    ("not a list", "fail"),
])
def test_gradients_are_taken_only_one_per_input_and_shaped_like_it(checker, grads, status):
    _, verdict = _run(checker, "test_grad", _gradient_kernel(grads))
    assert verdict.status == status, verdict


# ------------------------------------------------------------------ the building blocks a workbook is given

@pytest.fixture
def given(tmp_path, monkeypatch):
    """kernel.given(name) as a cell of workbook 02 (not a test) would call it, against a checker for 02."""
    from attnlab.verdict import kernel

    def start(workbook="02_gqa"):
        found = grading.checker({}, folder=str(tmp_path), timeout=10, workbook=workbook)
        checker = found.__enter__()
        started.append(found)
        monkeypatch.setenv(kernel.SOCKET_ENV, checker.path)
        return kernel.given

    started = []
    yield start
    for found in started:
        found.__exit__(None, None, None)


def test_a_given_function_is_answered_by_the_checker_and_gradients_flow_through_it(given):
    from attnlab import answers

    attention = given()("attention")
    q, k, v = (torch.randn(2, 3, 4, 5, dtype=torch.float64) for _ in range(3))
    assert torch.equal(attention(q, k, v, causal=True), answers.attention(q, k, v, causal=True))
    q.requires_grad_()
    attention(q, k, v).square().sum().backward()
    qq = q.detach().requires_grad_()
    answers.attention(qq, k, v).square().sum().backward()
    torch.testing.assert_close(q.grad, qq.grad)


def test_a_given_class_keeps_its_state_in_the_kernel_and_runs_its_methods_in_the_checker(given):
    KVCache = given()("KVCache")
    cache = KVCache()
    assert len(cache) == 0 and cache.k is None
    k1, v1 = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 5)
    k2, v2 = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 5)
    cache.update(k1, v1)
    k, v = cache.update(k2, v2)
    assert len(cache) == 4 and torch.equal(k, torch.cat([k1, k2], 2)) and torch.equal(cache.v, torch.cat([v1, v2], 2))
    with pytest.raises(RuntimeError, match="carries no gradients"):
        cache.update(k2.requires_grad_(), v2)


def test_only_what_the_workbook_is_given_is_answered(given):
    ask = given("02_gqa")
    assert callable(ask("gqa_forward"))  # given to two exercises: an ungraded cell may call it too
    for name in ("repeat_kv", "gqa_attention", "rope_tables", "_check_qkv", "KVCache.update", "nothing"):
        with pytest.raises(AttributeError, match="only to the test of an exercise that builds on it"):
            ask(name)


def test_workbook_01_is_given_nothing(given):
    with pytest.raises(AttributeError):
        given("01_mha")("attention")


def test_an_error_of_the_answer_key_is_the_callers_and_the_checker_goes_on(given):
    attention = given()("attention")
    with pytest.raises(ValueError, match="q"):
        attention(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="larger than it takes while a notebook is graded"):
        attention(*(torch.zeros(1, 1, 1 << 15, 1),) * 3)
    x = torch.randn(1, 1, 2, 3)
    assert attention(x, x, x).shape == (1, 1, 2, 3)


def test_a_test_sees_only_what_its_kernel_allocated_in_a_storage_watch(tmp_path):
    tests = {"test_watch": "with storage_watch() as w:\n    got = make(3)\nprint(w.largest)\n"
                           "expect(w.largest == 96, 'the largest storage')\n"}
    with grading.checker(tests, folder=str(tmp_path), timeout=10) as checker:
        def answer(sock, header, buffers):
            assert header.get("watch") is True
            out: list = []
            wire.send(sock, {"op": "reply", "value": wire.encode(torch.zeros(3), out), "largest": 96}, out)
        _, verdict = _run(checker, "test_watch", answer)
        assert verdict.status == "pass", verdict.message
        _, verdict = _run(checker, "test_watch", _reply(torch.zeros(3)))  # a kernel that says nothing of it
        assert verdict.status == "error" and "cannot read" in verdict.message


# ------------------------------------------------------------------ a real test cell against the kernel's code

# A grading kernel in a process of its own, without Jupyter: attnlab.answers is what a checked kernel gets
# (no answer key; stand-ins for what the workbook is given), the notebook's cells run in a namespace, and
# the kernel's side of the checker (attnlab.verdict.kernel) serves test cell argv[1].
_KERNEL = """
import sys, types
from attnlab.instructor import kernel_root
absent = types.ModuleType("attnlab.answers")
absent.__path__ = []
sys.modules["attnlab.answers"] = absent
exec(compile(kernel_root.ABSENT_ANSWERS, "attnlab/answers/__init__.py", "exec"), absent.__dict__)
import attnlab
attnlab.answers = absent
import os, socket
from attnlab.verdict import kernel, wire
ns = {}
exec(sys.stdin.read(), ns)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(os.environ[kernel.SOCKET_ENV])
session = kernel._Session(sock, ns)
wire.send(sock, {"op": "run", "cell": sys.argv[1]})
kernel._current = session
try:
    session.serve()
except ConnectionError:
    pass  # the checker hung up on a test that failed: its verdict is recorded
"""


@pytest.mark.parametrize("forward,status,says", [
    (None, "pass", ""),
    # The layer as a call of the course's gqa_forward: given to the conversion exercises, not to this one.
    ("        return answers.gqa_forward(x, self.W_q.weight, self.W_k.weight, self.W_v.weight, self.W_o.weight,\n"
     "                                   n_heads=self.n_heads, n_kv_heads=self.n_kv_heads)\n",
     "fail", "is switched off while this exercise is graded"),
    ("        return answers.mha_forward(x, self.W_q.weight, self.W_k.weight, self.W_v.weight, self.W_o.weight,\n"
     "                                   n_heads=self.n_heads)\n",
     "fail", "is switched off while this exercise is graded"),
])
def test_a_checked_exercise_gets_only_the_building_blocks_it_is_given(tmp_path, forward, status, says):
    """Workbook 02's test of GroupedQueryAttention, run by the checker against a kernel that holds no answer
    key: the model answer passes; a layer that asks the checker for the course's layer scores nothing."""
    import os
    import subprocess
    import sys

    from attnlab import cells
    from attnlab.verdict import kernel

    source = cells.read(pathlib.Path(__file__).resolve().parents[1] / "solutions" / "02_gqa" / "02_gqa.ipynb")
    code = {cells.grade_id(c): c.source for c in source.cells if cells.grade_id(c)}
    module = code["module"]
    if forward:
        module = module[:module.index("        ### BEGIN SOLUTION")] + forward
    notebook = "\n".join([code["setup"].split("torch.manual_seed")[0], code["expand"], code["grouped"], module])
    with grading.checker(grading.test_sources(source), folder=str(tmp_path), timeout=30,
                         workbook="02_gqa") as checker:
        for earlier in ("test_expand", "test_grouped"):  # the cells before it, as the grader passes them
            checker.arm(earlier)
            checker.verdict(earlier)
        checker.arm("test_module")
        subprocess.run([sys.executable, "-c", _KERNEL, "test_module"], input=notebook, text=True, timeout=120,
                       env={**os.environ, kernel.SOCKET_ENV: checker.path, "MPLBACKEND": "Agg"}, check=True)
        verdict = checker.verdict("test_module")
    assert verdict.status == status, verdict.message
    assert says in verdict.message


def test_a_function_the_test_hands_the_learners_code_is_called_back_in_the_checker(tmp_path):
    """A test may hand the learner's code functions of its own (is_relative's encodings, median_time's fake
    GPU): the kernel gets references, and each call runs in the checker; what it raises reaches the caller."""
    import os
    import subprocess
    import sys

    from attnlab.verdict import kernel

    tests = {"test_twice": "calls = []\ndef double(x):\n    calls.append(x)\n    return 2 * x\n"
                           "expect_close(twice(double, torch.ones(2)), torch.full((2,), 4.0), 'twice')\n"
                           "expect(len(calls) == 2, 'double ran here, twice')\n"
                           "def refuse(x):\n    raise ValueError('not that one')\n"
                           "expect(caught(refuse) == 'ValueError: not that one', 'the error came back')\n"}
    notebook = ("def twice(f, x):\n    return f(f(x))\n"
                "def caught(f):\n    try:\n        f(1)\n    except ValueError as e:\n        return f'ValueError: {e}'\n")
    with grading.checker(tests, folder=str(tmp_path), timeout=30) as checker:
        checker.arm("test_twice")
        subprocess.run([sys.executable, "-c", _KERNEL, "test_twice"], input=notebook, text=True, timeout=120,
                       env={**os.environ, kernel.SOCKET_ENV: checker.path}, check=True)
        verdict = checker.verdict("test_twice")
    assert verdict.status == "pass", verdict.message


def test_an_earlier_exercise_is_handed_in_only_once_its_own_test_has_run(tmp_path):
    """A notebook whose test cells were moved (nbgrader keeps the submitted order) could collect the answers
    of an exercise through a later exercise's test before that exercise is tested: refused."""
    import os
    import subprocess
    import sys

    from attnlab import cells
    from attnlab.verdict import kernel

    source = cells.read(pathlib.Path(__file__).resolve().parents[1] / "solutions" / "02_gqa" / "02_gqa.ipynb")
    code = {cells.grade_id(c): c.source for c in source.cells if cells.grade_id(c)}
    notebook = "\n".join([code["setup"].split("torch.manual_seed")[0], code["expand"], code["grouped"], code["module"]])
    with grading.checker(grading.test_sources(source), folder=str(tmp_path), timeout=30,
                         workbook="02_gqa") as checker:
        checker.arm("test_module")  # before test_grouped, whose gqa_attention it hands in
        subprocess.run([sys.executable, "-c", _KERNEL, "test_module"], input=notebook, text=True, timeout=120,
                       env={**os.environ, kernel.SOCKET_ENV: checker.path, "MPLBACKEND": "Agg"}, check=True)
        verdict = checker.verdict("test_module")
    assert verdict.status == "fail" and "whose own test has not run yet" in verdict.message, verdict


def test_within_a_test_cell_an_exercise_is_checked_before_those_that_use_it():
    """The rule above, inside one cell: every block of an exercise comes before the blocks of the exercises
    that use it (the checker hands those in; earlier, their answers could be collected for the later blocks)."""
    import ast

    from attnlab import cells
    from attnlab.checks import exercises

    root = pathlib.Path(__file__).resolve().parents[1] / "solutions"
    for workbook in grading.CHECKED:
        for grade_id, source in grading.test_sources(cells.read(root / workbook / f"{workbook}.ipynb")).items():
            blocks = [(node.lineno, [a.value for a in node.args if isinstance(a, ast.Constant)])
                      for node in ast.walk(ast.parse(source))
                      if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "exercise"]
            last = {}
            for line, names in blocks:
                for name in names:
                    last[name] = max(last.get(name, 0), line)
            for line, names in blocks:
                for used in exercises.lookup(*names).uses:
                    assert last.get(used, 0) < line, \
                        f"{workbook} {grade_id}: line {line} hands in {used}, which this cell checks again at " \
                        f"line {last[used]}"


def test_what_the_checker_computes_for_the_kernel_is_bounded_before_it_is_allocated(given):
    attention = given()("attention")
    q, k, v = torch.zeros(1, 16, 4096, 0), torch.zeros(1, 1, 4096, 0), torch.zeros(1, 1, 4096, 1)  # 1 GiB of scores
    with pytest.raises(ValueError, match="GiB"):
        attention(q, k, v)
    x = torch.randn(1, 2, 3, 4)
    assert attention(x, x, x).shape == (1, 2, 3, 4)  # and the checker goes on


def test_no_gradient_through_the_course_is_given_where_gradients_are_written_by_hand(tmp_path):
    """In gqa_attention_backward (by hand: autograd is off in the kernel) a request for a gradient through the
    course's repeat_kv (which is sum_over_groups, tested later in the cell) is refused."""
    tests = {"test_backward": "with exercise('gqa_attention_backward'):\n    got = gqa_attention_backward(1)\n"}
    with grading.checker(tests, folder=str(tmp_path), timeout=10, workbook="02_gqa") as checker:
        def answer(sock, header, buffers):
            out: list = []
            value = {"args": [torch.ones(1, 1, 2, 3)], "kwargs": {}, "cotangents": [torch.ones(1, 2, 2, 3)]}
            wire.send(sock, {"op": "answer_vjp", "name": "repeat_kv", "value": wire.encode(value, out)}, out)
            reply, _ = wire.receive(sock)
            assert reply["op"] == "refused"
        _, verdict = _run(checker, "test_backward", answer)
    assert verdict.status == "fail" and "written by hand" in verdict.message, verdict
