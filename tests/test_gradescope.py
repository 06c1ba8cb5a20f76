"""The Gradescope autograders (attnlab/instructor/gradescope.py), built and run as Gradescope runs them.

The zips are built once; workbook 01's is unpacked into a temporary
AUTOGRADER_ROOT and set up as setup.sh's last step does (its installs need
the network: here the python3 on PATH is this environment's), then
run_autograder grades the model answers (full marks), the blank release
(zero), a planted mistake (loses exactly its cell) and a submission that
prints, writes and raises the hidden tests' source, two at a time. Every
results.json must hold Gradescope's documented fields and no hidden-test line,
no grading path. Submissions that cannot be graded (no notebook, several, a
renamed one, a corrupt one, another workbook) need no kernel: score 0, one
sentence why. The fallback for containers that refuse namespaces (a kernel
run as an unprivileged user) grades the model answers with a probe that tries
to reach the secrets; where this Python sits below a folder closed to other
users (/root), that run happens in a private mount namespace whose overlay
opens it.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest

from attnlab import cells

from attnlab.instructor import feedback, gradescope, grading, mistakes
from conftest import ROOT, assignments
import hostile_submissions
from hostile_submissions import HOSTILE

A = "01_mha"
FULL = {"test_attention": 3, "test_heads": 2, "test_mha": 3, "test_backward": 3, "test_autograd_function": 1,
        "test_kv_cache": 3, "test_cache_size": 2}
MISTAKE = next(m for m in mistakes.load(A) if m.name == "no_scale")
EXFILTRATE = next(h for h in HOSTILE if h.name == "exfiltrate")
VISIBILITY = {"hidden", "after_due_date", "after_published", "visible"}
# Gradescope's "Autograder Specifications": the fields results.json may hold.
TOP_FIELDS = {"score", "execution_time", "output", "output_format", "test_output_format", "test_name_format",
              "visibility", "stdout_visibility", "extra_data", "tests", "leaderboard"}
TEST_FIELDS = {"score", "max_score", "status", "name", "name_format", "number", "output", "output_format", "tags",
               "visibility", "extra_data"}


def _notebooks(assignment=A):
    release = nbformat.read(ROOT / "course" / assignment / f"{assignment}.ipynb", as_version=4)
    source = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    return release, source, grading.filled(release, source)


def _env(root: pathlib.Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ATTNLAB_GRADESCOPE_KERNEL")}
    # run_autograder runs the python3 on PATH: this environment's. One torch thread per kernel, two kernels at once.
    env.update(AUTOGRADER_ROOT=str(root), PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ATTNLAB_VENV="/nonexistent", **extra)
    return env


@pytest.fixture(scope="module")
def zips(tmp_path_factory):
    return {p.stem: p for p in gradescope.build(out=tmp_path_factory.mktemp("zips"))}


@pytest.fixture(scope="module")
def source(zips, tmp_path_factory):
    """Workbook 01's autograder, unpacked and set up (setup.sh's `attnlab.instructor.gradescope prepare`)."""
    folder = gradescope.unpack(zips[A], tmp_path_factory.mktemp("setup") / "source")
    env = dict(_env(folder.parent), PYTHONPATH=str(folder))
    subprocess.run([sys.executable, "-m", "attnlab.instructor.gradescope", "prepare"], cwd=folder, env=env, check=True,
                   capture_output=True, timeout=300)
    assert (folder / "autograde" / "gradebook.db").exists()
    return folder


def validate(results: dict) -> None:
    """results.json as Gradescope documents it."""
    assert set(results) <= TOP_FIELDS, set(results) - TOP_FIELDS
    assert isinstance(results["score"], (int, float)) and isinstance(results["output"], str) and results["output"]
    assert isinstance(results["execution_time"], (int, float)) and results["execution_time"] >= 0
    assert results.get("stdout_visibility", "hidden") in VISIBILITY
    assert results["tests"], "no tests"
    for t in results["tests"]:
        assert set(t) <= TEST_FIELDS, set(t) - TEST_FIELDS
        assert isinstance(t["name"], str) and isinstance(t["output"], str) and t["output"]
        assert 0 <= t["score"] <= t["max_score"], t
        assert t.get("status", "passed") in ("passed", "failed") and t.get("visibility", "visible") in VISIBILITY
        assert t["status"] == ("passed" if t["score"] == t["max_score"] else "failed"), t
    assert results["score"] == sum(t["score"] for t in results["tests"])


def autograde(source: pathlib.Path, root: pathlib.Path, files: dict, **env) -> dict:
    """Run run_autograder in a fresh AUTOGRADER_ROOT whose submission holds ``files``."""
    shutil.copytree(source, root / "source", symlinks=True)
    (root / "submission").mkdir(parents=True)
    for name, data in files.items():
        path = root / "submission" / name
        path.write_bytes(data) if isinstance(data, bytes) else nbformat.write(data, path)
    command = [str(root / "source" / "run_autograder")]
    if env.get("ATTNLAB_GRADESCOPE_KERNEL") == "unprivileged":
        command = _opened(command, root / "overlay")
    r = subprocess.run(command, cwd=root, env=_env(root, **env), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((root / "results" / "results.json").read_text())
    validate(results)
    return results


@pytest.fixture(scope="module")
def graded(source, tmp_path_factory):
    """{submission: results.json} for the four workbook-01 submissions, two run_autograders at a time."""
    _, _, answers = _notebooks()
    release = _notebooks()[0]
    subs = {"solution": answers, "blank": release, "mistake": mistakes.apply(answers, [MISTAKE]),
            "hostile": EXFILTRATE.build(answers)}
    tmp = tmp_path_factory.mktemp("roots")
    with ThreadPoolExecutor(2) as pool:
        done = {name: pool.submit(autograde, source, tmp / name, {f"{A}.ipynb": nb}) for name, nb in subs.items()}
        return {name: f.result() for name, f in done.items()}


def _scores(results: dict) -> dict:
    return {t["name"]: t["score"] for t in results["tests"]}


def test_the_model_answers_score_full_marks(graded):
    results = graded["solution"]
    assert _scores(results) == FULL and results["score"] == sum(FULL.values())
    assert {t["max_score"] for t in results["tests"]} == set(FULL.values())
    assert all(t["output"] == "passed every check of this cell, the hidden ones too" for t in results["tests"])
    assert "sandbox" in results["output"]


def test_the_blank_release_scores_zero(graded):
    results = graded["blank"]
    assert results["score"] == 0 and set(_scores(results)) == set(FULL)
    assert all(t["output"].startswith("not attempted") for t in results["tests"]), results["tests"]


def test_a_planted_mistake_loses_exactly_its_cell(graded):
    scores = _scores(graded["mistake"])
    assert scores == {**FULL, **{cell: 0 for cell in MISTAKE.loses}}
    for t in graded["mistake"]["tests"]:
        if t["name"] in MISTAKE.loses:
            assert t["output"].startswith("a check in this cell failed") and MISTAKE.says in t["output"], t


def test_a_submission_that_carries_the_hidden_tests_out_scores_and_leaks_nothing(graded):
    assert _scores(graded["hostile"]) == FULL


def _secrets() -> set[str]:
    release, source, _ = _notebooks()
    return feedback.workbook_secrets(source, release, cells.solution_cells(source).values())


def test_no_results_json_holds_a_hidden_test_or_a_grading_path(graded, source):
    secrets = _secrets()
    assert secrets, "no hidden tests found"
    paths = [str(ROOT), str(source.parent), sys.prefix, tempfile.gettempdir() + "/", "attnlab-gradescope-"]
    for name, results in graded.items():
        text = json.dumps(results, ensure_ascii=False)
        for t in results["tests"]:
            text += "\n" + t["output"]  # as Gradescope shows it, escapes undone
        leaked = sorted(s for s in secrets if s in text)
        assert not leaked, f"{name}'s results.json shows hidden-test lines: {leaked[:3]}"
        assert not [p for p in paths if p in text], f"{name}'s results.json names a grading path"
        assert "BEGIN HIDDEN TESTS" not in text


# ------------------------------------------------------------------ what cannot be graded: no kernel needed

def _bad_cases():
    release, _, answers = _notebooks()
    other = _notebooks("02_gqa")[2]
    data = nbformat.writes(answers).encode()
    return {
        "nothing": ({}, "no notebook was submitted"),
        "several": ({f"{A}.ipynb": data, "scratch.ipynb": data}, "2 notebooks were submitted"),
        "renamed": ({f"{A} (1).ipynb": data}, "rename it 01_mha.ipynb"),
        "corrupt": ({f"{A}.ipynb": data[:5000]}, "not a readable notebook"),
        "empty": ({f"{A}.ipynb": b""}, "an empty file"),
        "other_workbook": ({f"{A}.ipynb": nbformat.writes(other).encode()}, "workbook 02_gqa's, not 01_mha's"),
        "no_metadata": ({f"{A}.ipynb": data.replace(b'"nbgrader"', b'"removed"')}, "lost the course's cell metadata"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_a_submission_that_cannot_be_graded_is_told_why(tmp_path, case):
    files, says = _bad_cases()[case]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    release_ids = gradescope._manifest(A)["cells"]
    notebook, why = gradescope.check_submission(tmp_path, A, release_ids)
    assert notebook is None and says in why, why
    results = gradescope.not_graded(A, why)
    results["execution_time"] = 0
    validate(results)
    assert results["score"] == 0 and results["output"] == f"Not graded: {why}." and "\n" not in why
    assert sum(t["max_score"] for t in results["tests"]) == sum(FULL.values())


def test_the_right_notebook_passes_the_check_even_beside_checkpoints(tmp_path):
    _, _, answers = _notebooks()
    nbformat.write(answers, tmp_path / f"{A}.ipynb")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    nbformat.write(answers, tmp_path / ".ipynb_checkpoints" / f"{A}-checkpoint.ipynb")
    assert gradescope.check_submission(tmp_path, A, gradescope._manifest(A)["cells"]) == (tmp_path / f"{A}.ipynb", "")


def test_run_autograder_writes_results_for_a_bad_submission(source, tmp_path):
    results = autograde(source, tmp_path / "root", {"my notebook.ipynb": b"{\"cells\": ["})
    assert results["score"] == 0 and results["output"].startswith("Not graded: ") and "not a readable" in \
        results["output"]


# ------------------------------------------------------------------ the zips

@pytest.mark.parametrize("assignment", assignments())
def test_each_zip_carries_what_its_scripts_need_and_no_other_answers(zips, assignment):
    with zipfile.ZipFile(zips[assignment]) as z:
        names = {i.filename: i for i in z.infolist()}
        for script in ("setup.sh", "run_autograder"):
            assert stat.S_IMODE(names[script].external_attr >> 16) & 0o111, f"{script} is not executable"
        for pin in ("requirements.txt", "constraints.txt", "pyproject.toml", "autograde/nbgrader_config.py"):
            assert z.read(pin) == (ROOT / pin).read_bytes(), pin
        for module in sorted((ROOT / "attnlab").glob("*.py")):
            assert f"attnlab/{module.name}" in names, module.name
        assert "attnlab/jupyter/kernels/attnlab-grading/kernel.json" in names
        assert z.read(f"solutions/{assignment}/{assignment}.ipynb") == \
            (ROOT / "solutions" / assignment / f"{assignment}.ipynb").read_bytes()
        assert json.loads(z.read("gradescope.json"))["workbook"] == assignment
        assert not [n for n in names if n.startswith(("solutions/", "course/")) and f"/{assignment}/" not in n]
        assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n
                    or n.startswith("tests/") or (n.startswith("solutions/") and n.endswith(".py"))]  # NN.py, mistakes.py


def test_the_scripts_are_valid_shell_and_install_the_pins_with_torchs_cpu_build(zips, tmp_path):
    with zipfile.ZipFile(zips[A]) as z:
        setup, run = z.read("setup.sh").decode(), z.read("run_autograder").decode()
    for name, text in (("setup.sh", setup), ("run_autograder", run)):
        (tmp_path / name).write_text(text)
        r = subprocess.run(["bash", "-n", str(tmp_path / name)], capture_output=True, text=True)
        assert r.returncode == 0, f"{name}: {r.stderr}"
        assert text.startswith("#!/usr/bin/env bash\n")
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text()  # what setup.sh reads the version from
    assert "--index-url https://download.pytorch.org/whl/cpu" in setup
    assert "-r requirements.txt -c constraints.txt" in setup and "attnlab.instructor.gradescope prepare" in setup
    assert 'AUTOGRADER_ROOT="${AUTOGRADER_ROOT:-/autograder}"' in run and "python3 -m attnlab.instructor.gradescope run" in run


def test_the_zips_are_reproducible(tmp_path):
    first, again = (gradescope.build([A], tmp_path / d)[0] for d in ("one", "two"))
    assert again.read_bytes() == first.read_bytes()


def test_make_gradescope_and_the_readme(root):
    assert "gradescope:" in (root / "Makefile").read_text()
    readme = (root / "README.md").read_text()
    assert "### Grading on Gradescope" in readme and "make gradescope" in readme


# ------------------------------------------------------------------ where the container refuses namespaces

NEEDED = (os.path.realpath(sys.executable), sys.base_prefix, sys.prefix, tempfile.gettempdir())
# Folders closed to other users above what the unprivileged kernel must reach (on these machines /root, mode
# 700, above pyenv's Python). The test then runs run_autograder in a private mount namespace in which an
# overlay opens each of them to others; the host's folders stay as they are.
CLOSED = sorted({str(d) for p in NEEDED for d in [*reversed(pathlib.Path(p).resolve().parents), pathlib.Path(p)]
                 if d.is_dir() and not os.stat(d).st_mode & 0o001})


def _opened(command: list[str], scratch: pathlib.Path) -> list[str]:
    """``command`` run where CLOSED is searchable by others (nothing to do when CLOSED is empty)."""
    if not CLOSED:
        return command
    mounts = []
    for i, d in enumerate(CLOSED):
        upper, work = scratch / f"upper{i}", scratch / f"work{i}"
        upper.mkdir(parents=True), work.mkdir(parents=True)
        mounts.append(f"mount -t overlay overlay -o lowerdir={d},upperdir={upper},workdir={work} {d} && "
                      f"chmod o+x {d}")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(mounts) + ' && exec "$@"',
            "opened", *command]


def _can_open() -> bool:
    if not CLOSED:
        return True
    if not shutil.which("unshare"):
        return False
    with tempfile.TemporaryDirectory() as scratch:
        r = subprocess.run(_opened(["true"], pathlib.Path(scratch)), capture_output=True)
        return r.returncode == 0


UNPRIVILEGED = os.geteuid() == 0 and _can_open()

# What the kernel tries when it runs as the unprivileged user; it reports into a folder anyone can write.
PROBE = r'''
import json as _j, os as _o, glob as _g
_seen = {"uid": _o.getuid()}
def _t(name, fn):
    try:
        _seen[name] = repr(fn())[:120]
    except Exception as e:
        _seen[name] = "refused: " + type(e).__name__
_t("notebook_here", lambda: [open(p).read(50) for p in _g.glob("*.ipynb")])
_t("gradebook", lambda: open("../../../gradebook.db", "rb").read(20))
_t("source", lambda: open(SOURCE + "/solutions/01_mha/01_mha.ipynb").read(50))
_t("answer_key", lambda: __import__("inspect").getsource(__import__("attnlab.answers.mha").answers.mha))
_t("write_here", lambda: open("x.txt", "w").write("x"))
open(REPORT, "w").write(_j.dumps(_seen))
'''


def test_the_unprivileged_fallback_prepares_a_kernel_without_the_answer_key(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the fallback changes files' owners: it runs as root")
    from attnlab.instructor import unprivileged

    course, tmp = tmp_path / "course", tmp_path / "grading"
    course.mkdir(), tmp.mkdir()
    config = unprivileged.prepare(tmp, course, "04_mla")
    try:
        kdir = pathlib.Path(config.split("os.environ['JUPYTER_PATH'] = ", 1)[1].split("'")[1])
        assert not (kdir / "attnlab" / "answers" / "mha.py").exists() and (kdir / "attnlab" / "answers" / "mha.pyc").exists()
    finally:
        unprivileged.stop()
    # A workbook the checker judges: no answer key at all, not even bytecode.
    config = unprivileged.prepare(tmp, course, "01_mha")
    try:
        kdir = pathlib.Path(config.split("os.environ['JUPYTER_PATH'] = ", 1)[1].split("'")[1])
        answers = kdir / "attnlab" / "answers"
        assert sorted(p.name for p in answers.iterdir()) == ["__init__.pyc"], sorted(answers.iterdir())
        lesson = kdir / "attnlab" / "lesson"  # the modules that copy answers: bytecode without them
        assert not (lesson / "cache.py").exists() and (lesson / "cache.pyc").exists() and (lesson / "pages.py").exists()
        spec = json.loads((kdir / "kernels" / unprivileged.KERNEL / "kernel.json").read_text())
        assert spec["argv"][2].endswith("attnlab/instructor/unprivileged.py") and spec["argv"][3] == str(unprivileged.uid())
        assert os.stat(spec["argv"][4]).st_uid == unprivileged.uid()
        assert stat.S_IMODE(os.stat(course).st_mode) == 0o700 and stat.S_IMODE(os.stat(tmp).st_mode) == 0o700
        assert f"c.Execute.kernel_name = '{unprivileged.KERNEL}'" in config
    finally:
        unprivileged.stop()
    assert not kdir.exists()


@pytest.mark.skipif(not UNPRIVILEGED, reason="needs root, and this Python reachable by an unprivileged user "
                    "(directly, or through an overlay in a private mount namespace)")
def test_the_unprivileged_fallback_grades_and_keeps_the_secrets_out_of_reach(source, tmp_path):
    _, _, answers = _notebooks()
    report = pathlib.Path(tempfile.mkdtemp())
    os.chmod(report, 0o1777)
    code = f"SOURCE, REPORT = {str(tmp_path / 'root' / 'source')!r}, {str(report / 'seen.json')!r}\n" + PROBE
    nb = hostile_submissions._append("cache_size", code)(answers)
    results = autograde(source, tmp_path / "root", {f"{A}.ipynb": nb}, ATTNLAB_GRADESCOPE_KERNEL="unprivileged")
    seen = json.loads((report / "seen.json").read_text())
    shutil.rmtree(report)
    assert _scores(results) == FULL and "unprivileged user" in results["output"]
    assert seen["uid"] != 0 and all(seen[k].startswith("refused") for k in seen if k != "uid"), seen
