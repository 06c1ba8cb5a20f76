"""The course folder as the instructor's tools see it: its workbooks, its
gradebook, and the records that ``make collect`` and ``make grade`` keep beside it."""
from __future__ import annotations

import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
COURSE_ID = "efficient-attention"

# Records beside the gradebook (git-ignored, removed by make clean-grading): what
# make collect could not take, and what make grade graded without the sandbox.
SKIPPED = pathlib.Path("autograde") / "skipped.json"
UNSANDBOXED = pathlib.Path("autograde") / "unsandboxed.json"


def workbooks(root: pathlib.Path = ROOT) -> list[str]:
    """The workbooks' names (``01_mha``, ...): the numbered folders of ``root``/solutions."""
    return sorted(p.name for p in (pathlib.Path(root) / "solutions").iterdir() if p.is_dir() and p.name[:2].isdigit())


def gradebook(root: pathlib.Path = ROOT):
    """nbgrader's gradebook of the course at ``root`` (autograde/gradebook.db), to use in a ``with``."""
    from nbgrader.api import Gradebook

    return Gradebook(f"sqlite:///{pathlib.Path(root) / 'autograde' / 'gradebook.db'}", course_id=COURSE_ID)


def load_record(root: pathlib.Path, record: pathlib.Path) -> list:
    """The entries of ``record`` (:data:`SKIPPED` or :data:`UNSANDBOXED`); [] when there is none."""
    path = pathlib.Path(root) / record
    return json.loads(path.read_text()) if path.exists() else []


def save_record(root: pathlib.Path, record: pathlib.Path, entries: list) -> None:
    """Write ``record``'s entries; with none, remove the file."""
    path = pathlib.Path(root) / record
    if entries:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entries, indent=1) + "\n")
    elif path.exists():
        path.unlink()
