"""The grading kernel (attnlab/instructor/sandbox.py) shuts student code in, or refuses to run.

Kernels start as nbgrader starts them: jupyter_client with the course's
config (autograde/nbgrader_config.py: the attnlab-grading kernel spec, Unix
sockets). Whether this machine allows namespaces is probed here, apart from
the sandbox's code: where it does, a kernel that is not isolated fails the
suite instead of skipping.
"""
from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
from jupyter_client import KernelManager
from traitlets.config.loader import PyFileConfigLoader

from conftest import ROOT

SANDBOX = ROOT / "attnlab" / "instructor" / "sandbox.py"
SECRETS = {"ATTNLAB_TEST_SECRET": "grader-only-7319", "GITHUB_TOKEN": "ghp_not_for_students"}


def _namespaces_allowed() -> bool:
    """Can a child process enter new mount, network and PID namespaces (with a user namespace when not root)?"""
    code = ("import ctypes, os\n"
            "flags = 0x00020000 | 0x40000000 | 0x20000000\n"
            "flags |= 0 if os.geteuid() == 0 else 0x10000000\n"
            "os._exit(0 if ctypes.CDLL(None, use_errno=True).unshare(flags) == 0 else 1)")
    return sys.platform.startswith("linux") and subprocess.run([sys.executable, "-c", code]).returncode == 0


NAMESPACES = _namespaces_allowed()
needs_namespaces = pytest.mark.skipif(
    not NAMESPACES, reason="this machine refuses namespaces: the grading kernel refuses to run "
                           "(test_the_kernel_is_isolated_wherever_the_machine_allows_it checks that)")


def _config():
    return PyFileConfigLoader("nbgrader_config.py", path=str(ROOT / "autograde")).load_config()


class Kernel:
    """A grading kernel started the way nbgrader starts it, in ``cwd``."""

    def __init__(self, cwd, kernel_name=None, stderr=None):
        config = _config()
        self.km = KernelManager(kernel_name=kernel_name or config.Execute.kernel_name, config=config)
        self.km.start_kernel(cwd=str(cwd), stderr=stderr)
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=60)
        except RuntimeError:
            self.stop()
            raise

    def run(self, code: str, timeout: float = 60) -> str:
        """What the cell printed; an error in the cell fails the test with its message."""
        out, errors = [], []

        def hook(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                errors.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")
        self.kc.execute_interactive(code, output_hook=hook, timeout=timeout)
        assert not errors, errors
        return "".join(out)

    def facts(self, code: str) -> dict:
        """``code`` sets ``facts``, a dict; the kernel sends it back as JSON."""
        return json.loads(self.run(code + "\nimport json as _json\nprint(_json.dumps(facts))").splitlines()[-1])

    def stop(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The kernel's working folder as nbgrader leaves it: the submission beside a data file."""
    folder = tmp_path_factory.mktemp("autograded")
    (folder / "01_mha.ipynb").write_text('{"cells": [{"source": "hidden_input = 544945"}]}')
    (folder / "data.txt").write_text("shipped with the workbook\n")
    return folder


@pytest.fixture(scope="module")
def kernel(folder):
    if not NAMESPACES:
        pytest.skip("this machine refuses namespaces: the grading kernel refuses to run")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in SECRETS.items():
            mp.setenv(name, value)
        mp.setenv("ATTNLAB_KERNEL_DISK", "16M")
        mp.setenv("ATTNLAB_KERNEL_CPU", "500")
        mp.setenv("ATTNLAB_KERNEL_ENV", "ATTNLAB_TEST_PASSED")
        mp.setenv("ATTNLAB_TEST_PASSED", "yes")
        k = Kernel(folder)
    yield k
    k.stop()


def test_the_kernel_is_isolated_wherever_the_machine_allows_it(request, tmp_path):
    if not NAMESPACES:  # fails closed: it must not run unsandboxed
        with pytest.raises(RuntimeError):
            Kernel(tmp_path)
        return
    k = request.getfixturevalue("kernel")
    facts = k.facts(f"""
import os, socket
def refused(fn):
    try:
        fn()
        return False
    except OSError:
        return True
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
facts = {{"uid": os.getuid(), "caps": int(status["CapEff"], 16), "repo": sorted(os.listdir({str(ROOT)!r})),
          "processes": sum(p.isdigit() for p in os.listdir("/proc")), "home": os.listdir(os.path.expanduser("~")),
          "network": refused(lambda: socket.create_connection(("127.0.0.1", 22), timeout=2).close()),
          "write": refused(lambda: open({str(ROOT / "attnlab" / "checks" / "__init__.py")!r}, "a"))}}
""")
    assert facts["uid"] != 0 and facts["caps"] == 0, facts
    assert "solutions" not in facts["repo"] and "autograde" not in facts["repo"] and ".git" not in facts["repo"], facts
    assert set(facts["repo"]) <= {"attnlab", ".venv"}, f"the kernel sees more of the repository: {facts['repo']}"
    assert facts["processes"] <= 3, f"the kernel sees the machine's processes: {facts}"
    assert facts["network"] and facts["write"], facts


def test_the_report_says_what_holds():
    r = subprocess.run([sys.executable, "-P", str(SANDBOX), "--report"], capture_output=True, text=True, check=True)
    report = json.loads(r.stdout)
    assert report["isolation"].startswith(("root", "user") if NAMESPACES else "refused"), report["isolation"]
    for word in ("memory", "cpu", "disk", "processes", "output"):
        assert word in report["limits"], report["limits"]


REFUSED = """
import ctypes, importlib.util, sys
spec = importlib.util.spec_from_file_location("sandbox", {path!r})
sandbox = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sandbox)
def unshare(flags):  # as in a container without the privilege
    ctypes.set_errno(1)
    return -1
sandbox.kernel_root.libc.unshare = unshare
sandbox.main(sys.argv[1:])
"""


@pytest.fixture
def refused_spec(tmp_path, monkeypatch):
    """A kernel spec: the grading kernel on a machine that refuses the namespaces."""
    spec = tmp_path / "spec" / "kernels" / "attnlab-refused"
    spec.mkdir(parents=True)
    argv = ["python", "-P", "-c", REFUSED.format(path=str(SANDBOX)), "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "refused", "language": "python"}))
    _config()  # puts the course's kernels on JUPYTER_PATH
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([str(tmp_path / "spec"), os.environ["JUPYTER_PATH"]]))
    return "attnlab-refused"


def test_a_kernel_that_cannot_isolate_itself_refuses_to_run(tmp_path, refused_spec, monkeypatch):
    monkeypatch.delenv("ATTNLAB_SANDBOX", raising=False)
    with open(tmp_path / "stderr", "w") as err, pytest.raises(RuntimeError):
        Kernel(tmp_path, refused_spec, stderr=err)
    lines = (tmp_path / "stderr").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnlab.instructor.sandbox: refusing to run the grading kernel"), lines
    assert "ATTNLAB_SANDBOX=off" in lines[0]


def test_without_isolation_only_when_asked(tmp_path, refused_spec, monkeypatch):
    monkeypatch.setenv("ATTNLAB_SANDBOX", "off")
    monkeypatch.setenv("ATTNLAB_TEST_SECRET", SECRETS["ATTNLAB_TEST_SECRET"])
    with open(tmp_path / "stderr", "w") as err:
        k = Kernel(tmp_path, refused_spec, stderr=err)
    try:
        facts = k.facts(f"import os\nfacts = {{'solutions': os.path.isdir({str(ROOT / 'solutions')!r}), "
                        "'secret': 'ATTNLAB_TEST_SECRET' in os.environ}")
    finally:
        k.stop()
    assert facts == {"solutions": True, "secret": False}, facts
    lines = [ln for ln in (tmp_path / "stderr").read_text().splitlines() if ln.startswith("attnlab.instructor.sandbox")]
    assert len(lines) == 1 and "no isolation (ATTNLAB_SANDBOX=off)" in lines[0], lines


def test_the_kernel_gets_an_allow_list_environment(kernel):
    env = kernel.facts("import os\nfacts = dict(os.environ)")
    for name in SECRETS:
        assert name not in env, f"{name} reached the kernel"
    assert not any(value in SECRETS.values() for value in env.values())
    assert "ATTNLAB_SANDBOX_HIDE" not in env, "the grader's paths reached the kernel"
    assert env["ATTNLAB_TEST_PASSED"] == "yes", "ATTNLAB_KERNEL_ENV should let a named variable through"


@needs_namespaces
def test_the_answer_key_imports_but_its_source_cannot_be_read(kernel):
    sources = [p.read_text() for p in sorted((ROOT / "attnlab" / "answers").glob("*.py"))]
    # Statements, not docstrings or messages: bytecode holds those as text, never the code.
    code_lines = [ast.get_source_segment(source, node) for source in sources for node in ast.walk(ast.parse(source))
                  if isinstance(node, (ast.Assign, ast.Return)) and node.lineno == node.end_lineno]
    code_lines = [ln for ln in code_lines if len(ln) > 25 and not any(q in ln for q in "\"'")]
    assert len(code_lines) > 10
    facts = kernel.facts("""
import inspect, os, torch, attnlab.answers as answers
q, k, v = (torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
topics = [answers, answers.mha, answers.gqa, answers.rope, answers.mla, answers.mha2mla]
facts = {"works": torch.allclose(answers.attention(q, k, v, causal=True), want, atol=1e-5),
         "py_exists": [m.__name__ for m in topics if os.path.exists(m.__file__[:-1])], "shown": []}
def shown(fn):
    try:
        facts["shown"].append(fn())
    except Exception as e:  # OSError, TypeError, UnicodeDecodeError: nothing shown
        pass
for module in topics:
    shown(lambda: inspect.getsource(module))
    for obj in vars(module).values():
        if callable(obj):
            shown(lambda: inspect.getsource(obj))
            shown(lambda: inspect.getsource(inspect.unwrap(obj)))
    shown(lambda: open(module.__file__, errors="replace").read())
    shown(lambda: open(module.__file__[:-1]).read())
    shown(lambda: os.listdir(os.path.dirname(module.__file__)))
""")
    assert facts["works"], "attnlab.answers.attention no longer works in the kernel"
    assert not facts["py_exists"], f"the source of {facts['py_exists']} is in the kernel's package"
    leaked = [ln for ln in code_lines if any(ln in text for text in facts["shown"])]
    assert not leaked, f"the kernel can read the answer key's source: {leaked[:3]}"


@needs_namespaces
def test_a_checked_kernel_holds_no_answer_and_no_copy_of_one(tmp_path, monkeypatch):
    """Where the checker judges the notebook: no answer key at all, and the modules that copy answers
    (attnlab.lesson.cache's formulas) without those answers and without their source."""
    monkeypatch.setenv("ATTNLAB_CHECKER", str(tmp_path / "no-checker-here"))
    k = Kernel(tmp_path)
    try:
        facts = k.facts("""
import inspect, os, attnlab.answers as answers
from attnlab.lesson import cache, pages
def attempt(fn):
    try:
        return fn()
    except Exception as e:
        return type(e).__name__ + ": " + str(e)
facts = {"answers": sorted(os.listdir(os.path.dirname(answers.__file__))),
         "lesson": sorted(n for n in os.listdir(os.path.dirname(cache.__file__)) if n.startswith(("cache", "pages"))),
         "formula": attempt(lambda: cache.gqa_elements_per_token(32, 8, 128)),
         "helper": cache.format_bytes(3 * 2**30), "source": attempt(lambda: inspect.getsource(cache)),
         "pages": len(inspect.getsource(pages)) > 100}
""")
    finally:
        k.stop()
    assert facts["answers"] == ["__init__.pyc"], facts
    assert facts["lesson"] == ["cache.pyc", "pages.py"], facts
    assert facts["formula"].startswith("AttributeError") and "switched off" in facts["formula"], facts
    assert facts["helper"] == "3.00 GiB" and facts["source"].startswith(("OSError", "TypeError")), facts
    assert facts["pages"], facts


@needs_namespaces
def test_the_submission_file_is_not_in_the_kernels_folder(kernel, folder):
    facts = kernel.facts("""
import os
def attempt(fn):
    try:
        return fn()
    except OSError as e:
        return "refused: " + type(e).__name__
facts = {"listing": sorted(os.listdir(".")), "notebook": attempt(lambda: open("01_mha.ipynb").read()),
         "data": open("data.txt").read(), "edit_data": attempt(lambda: open("data.txt", "a").write("x")),
         "new_file": attempt(lambda: open("scratch.txt", "w").write("kept in the kernel"))}
""")
    assert facts["listing"] == ["data.txt"], facts
    assert facts["notebook"].startswith("refused"), facts
    assert facts["data"] == "shipped with the workbook\n" and facts["edit_data"].startswith("refused"), facts
    assert facts["new_file"] == len("kept in the kernel"), facts  # the kernel may write in its own folder...
    assert sorted(p.name for p in folder.iterdir()) == ["01_mha.ipynb", "data.txt"]  # ...which is private


@needs_namespaces
def test_the_disk_limit(kernel):
    facts = kernel.facts("""
import errno, os, resource
facts = {}
for where in ("/tmp/big", "big", "/dev/shm/big"):
    try:
        with open(where, "wb") as f:
            for _ in range(24):
                f.write(bytes(1 << 20))
        facts[where] = "written"
    except OSError as e:
        facts[where] = errno.errorcode[e.errno]
    finally:
        if os.path.exists(where):
            os.remove(where)
facts["fsize"] = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
facts["cpu"] = resource.getrlimit(resource.RLIMIT_CPU)[0]
""")
    for where in ("/tmp/big", "big", "/dev/shm/big"):
        assert facts[where] in ("EFBIG", "ENOSPC"), f"24 MiB written to {where} under a 16M limit: {facts}"
    assert facts["fsize"] == 16 << 20 and facts["cpu"] == 500, facts


BOMB = """
import os, time
def bomb():
    while True:
        try:
            os.fork()  # parent and child both go round again: 2, 4, 8, ... processes
        except BlockingIOError:
            os.execv("/bin/sleep", ["sleep", "3599.25"])  # hold the place, visibly, until the kernel ends
if os.fork() == 0:
    bomb()
time.sleep(3)
try:
    os.fork() or os._exit(0)
    refused = False
except BlockingIOError:
    refused = True
facts = {"refused": refused, "processes": sum(p.isdigit() for p in os.listdir("/proc"))}
"""


def _sleepers() -> int:
    found = 0
    for p in pathlib.Path("/proc").iterdir():
        try:
            found += (p / "cmdline").read_bytes() == b"sleep\x003599.25\x00"
        except OSError:
            pass
    return found


@needs_namespaces
def test_a_fork_bomb_loses_only_its_own_notebook(tmp_path, monkeypatch, kernel):
    monkeypatch.setenv("ATTNLAB_KERNEL_PROCESSES", "48")
    k = Kernel(tmp_path)
    try:
        facts = k.facts(BOMB)
        assert facts["refused"], f"the fork bomb was not stopped: {facts}"
        assert facts["processes"] <= 48, facts
        assert _sleepers() > 0, "the bomb's processes should be alive while its kernel runs"
        # Another student's kernel (another process count) still starts threads and processes.
        assert kernel.run("import subprocess\nprint(subprocess.run(['echo', '42'], capture_output=True, "
                          "text=True).stdout)").strip() == "42"
    finally:
        k.stop()
    for _ in range(50):  # they all end with the kernel (its PID namespace)
        if not _sleepers():
            break
        time.sleep(0.1)
    assert not _sleepers(), "the fork bomb's processes outlived the kernel"


MEMORY_BOMBS = {
    "a list in a function": "def fill():\n    hog = []\n    while True:\n        hog.append(bytearray(10**8))\nfill()",
    "a list in a check": ("from attnlab.checks import exercise\ndef fill():\n    hog = []\n    while True:\n"
                          "        hog.append(bytearray(10**7))\nwith exercise('attention', case='a case'):\n    fill()"),
    "tensors in a function": ("import torch\ndef fill():\n    hog = []\n    while True:\n"
                              "        hog.append(torch.ones(10**7))\nfill()"),
    "one huge tensor": "import torch\nx = torch.empty(2**40, dtype=torch.uint8)",
}


def test_a_memory_bomb_loses_its_cell_and_the_kernel_goes_on(tmp_path, monkeypatch):
    """At the address-space limit the cell fails with a MemoryError and its memory comes back,
    again and again: the kernel keeps a reserve to report the error (attnlab.instructor.grading_kernel),
    without which it died in its own machinery in some runs and nbgrader graded nothing."""
    monkeypatch.setenv("ATTNLAB_KERNEL_MEMORY", "3G")  # torch takes 1.4 GiB of it
    if not NAMESPACES:
        monkeypatch.setenv("ATTNLAB_SANDBOX", "off")
    k = Kernel(tmp_path)
    try:
        for _ in range(2):
            for name, code in MEMORY_BOMBS.items():
                errors = []

                def hook(msg):
                    if msg["msg_type"] == "error":
                        errors.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")
                reply = k.kc.execute_interactive(code, output_hook=hook, timeout=60)
                assert reply["content"]["status"] == "error", name
                assert len(errors) == 1 and ("MemoryError" in errors[0] or "can't allocate memory" in errors[0]), \
                    (name, errors)
                # The memory is back: 1 GiB more, written to.
                assert k.run("b = bytearray(2**30); b[::4096] = bytes(len(b[::4096])); del b\nprint('ok')") == "ok\n"
    finally:
        k.stop()
