"""The instructor loop on the sample submissions shipped in autograde/samples/."""
from __future__ import annotations

import zipfile

from attnlab import grading
from conftest import ROOT


def test_collect_grade_and_summarise_the_samples(tmp_path):
    ws = grading.workspace(tmp_path / "course", ["01_mha"])
    source = tmp_path / "export"
    source.mkdir()
    (source / "alice").symlink_to(ROOT / "autograde" / "samples" / "alice")
    (source / "bob.zip").write_bytes((ROOT / "autograde" / "samples" / "bob.zip").read_bytes())
    (source / "carol.zip").write_bytes(b"not a zip")
    with zipfile.ZipFile(source / "dave.zip", "w") as z:
        z.writestr("my_notes.ipynb", "{}")

    report = grading.collect(source, ws)
    assert any(line.startswith("alice: 01_mha.ipynb -> autograde/submitted/alice/01_mha/01_mha.ipynb") for line in report)
    assert any(line.startswith("bob: submission/01_mha (1).ipynb -> ") for line in report)
    assert any("carol: skipped carol.zip (not a readable zip file)" in line for line in report)
    assert any("dave: skipped my_notes.ipynb" in line for line in report)
    assert not any("__MACOSX" in line for line in report)
    assert grading.collect(source, ws) == report  # a rerun does the same, nothing more

    api = grading.api(ws)
    assert api.generate_assignment("01_mha")["success"]
    for student in ("alice", "bob"):
        assert api.autograde("01_mha", student)["success"]
    rows = {r["student"]: r for r in grading.summary(ws)}
    assert rows["alice"]["01_mha"] == "17/17" and rows["alice"]["failing"] == ""
    assert rows["bob"]["01_mha"] == "14/17" and rows["bob"]["failing"] == "01_mha:test_attention"
    assert set(rows) == {"alice", "bob"}
