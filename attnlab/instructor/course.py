"""The course folder as the instructor's tools see it: its workbooks, its
gradebook, and the records that ``make collect`` and ``make grade`` keep beside it."""
from __future__ import annotations

import json
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
COURSE_ID = "efficient-attention"

# Records beside the gradebook (git-ignored, removed by make clean-grading): what
# make collect could not take, and what make grade graded without the sandbox.
SKIPPED = pathlib.Path("autograde") / "skipped.json"
UNSANDBOXED = pathlib.Path("autograde") / "unsandboxed.json"


def config(root: pathlib.Path = ROOT, for_grading: bool = False):
    """nbgrader's configuration of the course at ``root``: its autograde/nbgrader_config.py.

    The file also sets up the grading kernel in this process's environment (JUPYTER_PATH, the
    sandbox's variables); unless ``for_grading``, the environment is put back as it was, so that
    listing the workbooks or reading the gradebook changes nothing else in the process."""
    from traitlets.config.loader import PyFileConfigLoader

    saved = dict(os.environ)
    try:
        return PyFileConfigLoader("nbgrader_config.py", path=str(pathlib.Path(root) / "autograde")).load_config()
    finally:
        if not for_grading:
            os.environ.clear()
            os.environ.update(saved)


def nbgrader_api(root: pathlib.Path = ROOT, for_grading: bool = False):
    """An NbGraderAPI on the course at ``root``, configured by its own config file (see :func:`config`)."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    cfg = config(root, for_grading)
    return NbGraderAPI(coursedir=CourseDirectory(config=cfg), config=cfg)


def workbooks(root: pathlib.Path = ROOT) -> list[str]:
    """The workbooks' names (``01_mha``, ...), as nbgrader finds them in the course's source folder."""
    return sorted(nbgrader_api(root).get_source_assignments())


def nbgrader_on_path() -> None:
    """nbgrader runs alembic as a command (to open or make a gradebook): it must be found beside this Python."""
    import sys

    bindir = str(pathlib.Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def gradebook(root: pathlib.Path = ROOT):
    """nbgrader's gradebook of the course at ``root``, at the URL its config gives, to use in a ``with``."""
    from nbgrader.api import Gradebook

    nbgrader_on_path()

    return Gradebook(nbgrader_api(root).coursedir.db_url, course_id=COURSE_ID)


def load_record(root: pathlib.Path, record: pathlib.Path) -> list:
    """The entries of ``record`` (:data:`SKIPPED` or :data:`UNSANDBOXED`); [] when there is none."""
    path = pathlib.Path(root) / record
    return json.loads(path.read_text()) if path.exists() else []


def save_record(root: pathlib.Path, record: pathlib.Path, entries) -> None:
    """Write ``record``'s entries (a list or a dict) whole: a kill leaves the old file or the
    new one, never half of one. With none, remove the file."""
    path = pathlib.Path(root) / record
    if entries:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    elif path.exists():
        path.unlink()
