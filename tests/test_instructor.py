"""The instructor loop as `make collect` and `make grade` run it: the samples in
autograde/samples/ beside bad input, one small class graded once for every assertion."""
from __future__ import annotations

import csv
import datetime
import json
import os
import subprocess
import sys
import zipfile

import nbformat
import pytest

from attnlab.instructor import batch, collect, course, grading, summary
from conftest import ROOT

A = "01_mha"
SAMPLES = ROOT / "autograde" / "samples"
# student -> why make collect skips what they handed in
BAD = {
    "carol": "not a readable zip file: BadZipFile",
    "dave": "no workbook name such as 01_mha in it",
    "erin": "an empty file",
    "frank": "not a notebook: 01_mha is graded from 01_mha.ipynb",
    "gina": "its cells are workbook 02_gqa's, not 01_mha's",
    "hank": "not a readable notebook: NotJSONError",
    "ivan": "an empty notebook",
    "judy": "no notebook in it",
    "eve_01_mha": "not in a per-student folder or zip: whose is it?",
}


def _export(folder):
    """An LMS export: the two samples, and one bad submission of every kind."""
    folder.mkdir()
    (folder / "alice").symlink_to(SAMPLES / "alice")
    (folder / "bob.zip").write_bytes((SAMPLES / "bob.zip").read_bytes())
    (folder / "README.md").write_text("exported from the LMS\n")  # not a submission: ignored
    (folder / "carol.zip").write_bytes(b"not a zip")
    with zipfile.ZipFile(folder / "dave.zip", "w") as z:
        z.writestr("my_notes.ipynb", "{}")
    for student, name, data in [
            ("erin", "01_mha.ipynb", b""),
            ("frank", "01_mha.pdf", b"%PDF-1.4"),
            ("gina", "01_mha.ipynb", (ROOT / "course" / "02_gqa" / "02_gqa.ipynb").read_bytes()),
            ("hank", "01_mha.ipynb", b"hello"),
            ("ivan", "01_mha.ipynb", nbformat.writes(nbformat.v4.new_notebook()).encode()),
            ("judy", "notes.txt", b"I will hand it in tomorrow")]:
        (folder / student).mkdir()
        (folder / student / name).write_bytes(data)
    (folder / "eve_01_mha.ipynb").write_bytes((SAMPLES / "alice" / "01_mha.ipynb").read_bytes())
    return folder


def _run(ws, *args, **env):
    """What `make collect` / `make grade` run, on the course copy ``ws``."""
    return subprocess.run([sys.executable, "-m", "attnlab.instructor.grading", "--root", str(ws), *args], cwd=ws,
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=600)


def _utc(seconds_or_local: datetime.datetime | float) -> datetime.datetime:
    if isinstance(seconds_or_local, float):
        seconds_or_local = datetime.datetime.fromtimestamp(seconds_or_local, datetime.timezone.utc)
    return seconds_or_local.astimezone(datetime.timezone.utc).replace(tzinfo=None)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    from nbgrader.api import Gradebook

    tmp = tmp_path_factory.mktemp("instructor")
    ws = grading.workspace(tmp / "course", [A, "02_gqa"])
    collected = _run(ws, "collect", str(_export(tmp / "export")))
    # Placed by hand, past make collect: a broken notebook and a folder that is no workbook.
    grading.submit(ws, "kim", A, b'{"cells": [')
    (ws / "autograde" / "submitted" / "kim" / "99_extra").mkdir()
    with Gradebook(f"sqlite:///{ws / 'autograde' / 'gradebook.db'}", course_id="efficient-attention") as gb:
        gb.add_student("lee")  # on the class list, handed in nothing
    graded = _run(ws, "grade", "--jobs", "2", ATTNLAB_SANDBOX="off")
    with open(ws / "autograde" / "grades.csv", newline="") as f:
        grades = {(r["student_id"], r["assignment"]): r for r in csv.DictReader(f)}
    return {"ws": ws, "collect": collected, "grade": graded, "grades": grades,
            "rows": {r["student"]: r for r in summary.summary(ws)}}


def test_collect_takes_the_samples_and_skips_bad_input_with_a_reason(graded):
    out = graded["collect"].stdout.splitlines()
    assert "alice: 01_mha.ipynb -> autograde/submitted/alice/01_mha/01_mha.ipynb" in out
    assert "bob: submission/01_mha (1).ipynb -> autograde/submitted/bob/01_mha/01_mha.ipynb" in out
    for student, why in BAD.items():
        assert any(ln.startswith(f"{student}: skipped ") and ln.endswith(f"({why})") for ln in out), (student, out)
    assert not any("README" in ln or "__MACOSX" in ln for ln in out)
    assert out[-1] == f"collected 2 notebooks into autograde/submitted/; SKIPPED {len(BAD)} files " \
                      "(listed above; the summary lists them too)"
    assert graded["collect"].returncode == 1 and graded["collect"].stderr == ""
    submitted = graded["ws"] / "autograde" / "submitted"
    assert sorted(p.name for p in submitted.iterdir()) == ["alice", "bob", "kim"]  # kim was placed by hand


def test_make_grade_prints_no_warnings_and_says_what_ran_unsandboxed(graded):
    run = graded["grade"]
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout.splitlines()
    for text in (run.stdout, run.stderr):
        assert "Warning" not in text and "warn" not in text.lower(), text
    assert all("sandbox" in ln for ln in run.stderr.splitlines()), run.stderr  # the kernel may say it runs bare
    assert out[0].startswith("hidden tests of 01_mha, ") and "the public source's cases (no class secret" in out[0]
    out = out[1:]
    assert out[0] == "01_mha is not in the gradebook yet: releasing it first (nbgrader generate_assignment)"
    progress = sorted(out[1:4], key=lambda ln: ln.split("] ")[1])  # in the order the workers finish
    assert [ln.split(":")[0].split("] ")[1] for ln in progress] == ["alice 01_mha", "bob 01_mha", "kim 01_mha"]
    assert progress[0].split(": ")[1].startswith("graded (") and progress[1].split(": ")[1].startswith("graded (")
    assert progress[2].split(": ", 1)[1].startswith("NOT GRADED: "), progress[2]
    assert out[4] == "graded 2 of 3 submitted notebooks; 1 could not be graded (the summary flags them)"
    assert out[5] == "3 notebooks were graded WITHOUT the sandbox (ATTNLAB_SANDBOX=off): the summary flags them"
    assert out[6].startswith("grades: ") and out[6].endswith("autograde/grades.csv; feedback: autograde/feedback/")
    assert out[7].split() == ["student", "01_mha", "02_gqa", "total", "failing", "flags"]
    assert out[-1].startswith("written to ") and all(ln == ln.rstrip() for ln in out)


def test_grades_csv_is_empty_where_nothing_was_graded_and_has_the_hand_in_time(graded):
    grades = graded["grades"]
    assert {(s, a) for s, a in grades} == {(s, a) for s in ("alice", "bob", "kim", "lee") for a in (A,)}
    assert (grades["alice", A]["score"], grades["bob", A]["score"]) == ("17.0", "14.0")
    for student in ("kim", "lee"):  # could not be graded; handed in nothing (nbgrader's export says 0.0)
        row = grades[student, A]
        assert (row["raw_score"], row["score"], row["timestamp"]) == ("", "", ""), row
        assert row["max_score"] == "17.0"
    alice = _utc((SAMPLES / "alice" / "01_mha.ipynb").stat().st_mtime)
    with zipfile.ZipFile(SAMPLES / "bob.zip") as z:
        bob = _utc(datetime.datetime(*z.getinfo("submission/01_mha (1).ipynb").date_time).astimezone())
    assert datetime.datetime.fromisoformat(grades["alice", A]["timestamp"]) == alice
    assert datetime.datetime.fromisoformat(grades["bob", A]["timestamp"]) == bob


def test_the_summary_names_every_bad_input_and_what_ran_unsandboxed(graded):
    rows = graded["rows"]
    assert rows["alice"][A] == "17/17" and rows["alice"]["failing"] == ""
    assert rows["bob"][A] == "14/17" and rows["bob"]["failing"] == "01_mha:test_attention"
    for student in ("alice", "bob", "kim"):
        assert "01_mha: graded without the sandbox (ATTNLAB_SANDBOX=off)" in rows[student]["flags"]
    for student, why in BAD.items():
        assert f"({why})" in rows[student]["flags"] and rows[student][A] == "-", rows[student]
    assert rows["kim"][A] == "not graded" and "could not be graded" in rows["kim"]["flags"]
    assert "99_extra: not a workbook of this course, not graded" in rows["kim"]["flags"]
    assert rows["lee"][A] == "-" and rows["lee"]["flags"] == ""


def test_a_later_sandboxed_grading_clears_the_flag(tmp_path):
    batch._record_sandbox(tmp_path, [{"assignment": A, "student": "alice", "sandbox": False},
                                       {"assignment": A, "student": "bob", "sandbox": False}])
    batch._record_sandbox(tmp_path, [{"assignment": A, "student": "bob", "sandbox": True}])
    assert json.loads((tmp_path / course.UNSANDBOXED).read_text()) == [[A, "alice"]]
    batch._record_sandbox(tmp_path, [{"assignment": A, "student": "alice", "sandbox": True}])
    assert not (tmp_path / course.UNSANDBOXED).exists()


def test_collecting_again_changes_nothing_and_a_bad_file_replaces_no_good_one(tmp_path):
    ws = grading.workspace(tmp_path / "course", [A])
    first = tmp_path / "first"
    (first / "alice").mkdir(parents=True)
    (first / "alice" / "01_mha.ipynb").write_bytes((SAMPLES / "alice" / "01_mha.ipynb").read_bytes())
    (first / "alice" / "01_mha (1).ipynb").write_bytes((SAMPLES / "alice" / "01_mha.ipynb").read_bytes())
    os.utime(first / "alice" / "01_mha (1).ipynb", (1e9, 1e9))  # an older copy
    report = collect.collect(first, ws)
    assert report == ["alice: skipped 01_mha (1).ipynb (an older copy of 01_mha: 01_mha.ipynb is newer)",
                      "alice: 01_mha.ipynb -> autograde/submitted/alice/01_mha/01_mha.ipynb"]
    placed = ws / "autograde" / "submitted" / "alice" / A
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in placed.iterdir()}
    assert sorted(before) == ["01_mha.ipynb", "timestamp.txt"]
    assert collect.collect(first, ws)[1].endswith(" (unchanged)")  # and make grade grades nothing again

    later = tmp_path / "later"
    (later / "alice").mkdir(parents=True)
    (later / "alice" / "01_mha.ipynb").write_bytes(b"")
    assert collect.collect(later, ws) == ["alice: skipped 01_mha.ipynb (an empty file)"]
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in placed.iterdir()} == before
    skipped = json.loads((ws / course.SKIPPED).read_text())
    assert {(s["student"], s["file"]) for s in skipped} == {("alice", "01_mha (1).ipynb"), ("alice", "01_mha.ipynb")}

    (later / "alice" / "01_mha.ipynb").write_bytes((SAMPLES / "alice" / "01_mha.ipynb").read_bytes())
    collect.collect(later, ws)  # a good file for the workbook: its earlier skips are settled
    assert not (ws / course.SKIPPED).exists()
