"""make collect: submissions from a learning-management system's export into nbgrader's folders.

:func:`collect` takes per-student folders or zips and places each student's
newest gradable notebook of each workbook where nbgrader grades it.
:func:`not_a_submission` says why a file cannot be graded as a workbook (the
Gradescope autograder asks it too), from the cell ids of the release
(:func:`release_ids`).
"""
from __future__ import annotations

import datetime
import pathlib
import re

from attnlab import cells

from attnlab.instructor import course

ROOT = course.ROOT
_ASSIGNMENT_IN_NAME = re.compile(r"(\d\d_[a-z_]+?)(?=[^a-z_]|$)")


def _assignment_of(filename: str, assignments: list[str]) -> str | None:
    """'01_mha.ipynb', '01_mha (1).ipynb', 'alice_123_01_mha-Copy1.ipynb' -> '01_mha'."""
    for match in _ASSIGNMENT_IN_NAME.finditer(filename.lower()):
        name = match.group(1).rstrip("_")
        for a in assignments:
            if name == a or name.startswith(a):
                return a
    return None


def release_ids(root: pathlib.Path, assignments: list[str]) -> dict[str, set[str]]:
    """Workbook -> the nbgrader cell ids of its release in course/."""
    out = {}
    for a in assignments:
        path = pathlib.Path(root) / "course" / a / f"{a}.ipynb"
        if path.exists():
            out[a] = cells.grade_ids(cells.from_bytes(path.read_bytes()))
    return out


def not_a_submission(data: bytes, assignment: str, release_ids: dict[str, set[str]]) -> str | None:
    """Why ``data`` cannot be graded as ``assignment``; None when it can."""
    if not data.strip():
        return "an empty file"
    try:
        nb = cells.from_bytes(data)
    except Exception as e:  # noqa: BLE001  (whatever failed, it is not a notebook)
        return f"not a readable notebook: {type(e).__name__}"
    sources = ("".join(c.get("source", "")) for c in nb.get("cells", []))
    if not any(s.strip() for s in sources):
        return "an empty notebook"
    theirs = cells.grade_ids(nb)
    if theirs and assignment in release_ids:
        # Workbooks share a few cell ids ("setup"): the one sharing the most is whose cells these are.
        shared = {a: len(theirs & ids) for a, ids in release_ids.items()}
        best = max(shared, key=shared.get)
        if not shared[best]:
            return "its cells belong to no workbook of this course"
        if shared[best] > shared[assignment]:
            return f"its cells are workbook {best}'s, not {assignment}'s"
    return None


def _utc(when: datetime.datetime) -> str:
    """nbgrader's timestamp.txt format, in UTC (nbgrader stores times in UTC)."""
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def _write_if_changed(path: pathlib.Path, data: bytes) -> bool:
    if path.exists() and path.read_bytes() == data:
        return False
    path.write_bytes(data)
    return True


def collect(source: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """Copy submissions from ``source`` into ``root``/autograde/submitted/<student>/<NN_topic>/.

    ``source`` holds, per student, either a folder (``alice/01_mha.ipynb``, at any
    depth) or a zip file (``bob.zip``, as learning-management systems export
    them). The student id is the folder or zip name; notebooks are matched to
    workbooks by the ``NN_topic`` in their file name, so renamed copies such as
    ``01_mha (1).ipynb`` are found. Beside each notebook goes nbgrader's
    ``timestamp.txt``: when it was handed in (the file's modification time, or
    the zip entry's date), which grades.csv reports.

    Returns one line per file, saying where it went or why it was skipped: a
    file that is empty or not a notebook, a notebook with no workbook name or
    whose cells are another workbook's, an older copy of the same workbook,
    a student with no notebook at all. A skipped file changes nothing that
    was collected before; the skips are kept in autograde/skipped.json for the
    summary. Rerunning with the same files changes nothing, and keeps
    what is graded graded.
    """
    source, root = pathlib.Path(source), pathlib.Path(root)
    run = _Collection(root, course.workbooks(root))
    for entry in sorted(source.iterdir()):
        if not entry.name.startswith("."):
            run.take(entry)
    for (student, assignment), files in sorted(run.offers.items()):
        run.place_newest(student, assignment, files)
    run.keep_skips()
    return [line for _, line in sorted(run.report, key=lambda r: r[0])]


class _Collection:
    """One run of :func:`collect`: its report [(student, line)], the files it skipped, the
    notebooks it placed {(student, workbook, file)}, and the notebooks offered for each
    (student, workbook): [(when, filename, bytes)]."""

    def __init__(self, root: pathlib.Path, assignments: list[str]):
        self.root, self.assignments = root, assignments
        self.release_ids = release_ids(root, assignments)
        self.report, self.skipped, self.placed = [], [], set()
        self.offers = {}

    def skip(self, student: str, filename: str, why: str, assignment: str | None = None):
        self.report.append((student, f"{student}: skipped {filename} ({why})"))
        self.skipped.append({"student": student, "file": filename, "why": why, "workbook": assignment})

    def offer(self, student: str, filename: str, when: datetime.datetime, read) -> bool:
        """Consider one file of a student's; False if it is none of the course's business."""
        path = pathlib.PurePath(filename)
        if path.name.startswith(".") or "__MACOSX" in path.parts or ".ipynb_checkpoints" in path.parts:
            return False  # what operating systems and Jupyter leave behind
        assignment = _assignment_of(path.name, self.assignments)
        if path.suffix != ".ipynb":
            if assignment:  # 01_mha.pdf, 01_mha.py: meant as the workbook, but not a notebook
                self.skip(student, filename, f"not a notebook: {assignment} is graded from {assignment}.ipynb",
                          assignment)
            return bool(assignment)
        if assignment is None:
            self.skip(student, filename, f"no workbook name such as {self.assignments[0]} in it")
        else:
            self.offers.setdefault((student, assignment), []).append((when, filename, read()))
        return True

    def take(self, entry: pathlib.Path) -> None:
        """One entry of the source folder: a student's folder or zip; a notebook beside them is skipped."""
        student = re.sub(r"[^A-Za-z0-9_.-]", "_", entry.name if entry.is_dir() else entry.stem)
        if entry.is_dir():
            found = self._folder(student, entry)
        elif entry.suffix == ".zip":
            try:
                found = self._zip(student, entry)
            except Exception as e:  # noqa: BLE001  (a damaged or encrypted zip is skipped, the batch goes on)
                for key in [k for k in self.offers if k[0] == student]:
                    del self.offers[key]
                self.skip(student, entry.name, f"not a readable zip file: {type(e).__name__}")
                return
        elif entry.suffix == ".ipynb" or _assignment_of(entry.name, self.assignments):
            self.skip(student, entry.name, "not in a per-student folder or zip: whose is it?")
            return
        else:
            return  # a README or an index beside the submissions
        if not found:
            self.skip(student, entry.name, "no notebook in it")

    def _folder(self, student: str, folder: pathlib.Path) -> bool:
        found = False
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            when = datetime.datetime.fromtimestamp(f.stat().st_mtime, datetime.timezone.utc)
            found |= self.offer(student, str(f.relative_to(folder)), when, f.read_bytes)
        return found

    def _zip(self, student: str, path: pathlib.Path) -> bool:
        import zipfile

        found = False
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.is_dir():
                    # A zip stores local time without a zone: read as this machine's.
                    when = datetime.datetime(*info.date_time).astimezone()
                    found |= self.offer(student, info.filename, when, lambda: z.read(info))
        return found

    def place_newest(self, student: str, assignment: str, files: list) -> None:
        """Place the newest gradable one of ``files`` [(when, filename, bytes)]; skip the others."""
        best = None
        for when, filename, data in sorted(files, key=lambda f: f[0], reverse=True):
            why = not_a_submission(data, assignment, self.release_ids)
            if why:
                self.skip(student, filename, why, assignment)
            elif best:
                self.skip(student, filename, f"an older copy of {assignment}: {best[1]} is newer", assignment)
            else:
                best = (when, filename, data)
        if best is None:
            return
        when, filename, data = best
        folder = self.root / "autograde" / "submitted" / student / assignment
        folder.mkdir(parents=True, exist_ok=True)
        changed = _write_if_changed(folder / f"{assignment}.ipynb", data)
        if changed or not (folder / "timestamp.txt").exists():
            # nbgrader reads when it was handed in from here; the same file collected again keeps its time.
            (folder / "timestamp.txt").write_text(_utc(when) + "\n")
        self.report.append((student, f"{student}: {filename} -> "
                                     f"{(folder / f'{assignment}.ipynb').relative_to(self.root)}"
                            + ("" if changed else " (unchanged)")))
        self.placed.add((student, assignment, filename))

    def keep_skips(self) -> None:
        """Record this run's skips in autograde/skipped.json. Earlier skips stay for the
        summary until a file for the same workbook is collected."""
        seen = {(s["student"], s["file"]) for s in self.skipped} | {(s, f) for s, _, f in self.placed}
        kept = [s for s in course.load_record(self.root, course.SKIPPED) if (s["student"], s["file"]) not in seen
                and (s["student"], s.get("workbook")) not in {(st, a) for st, a, _ in self.placed}]
        course.save_record(self.root, course.SKIPPED, kept + self.skipped)
