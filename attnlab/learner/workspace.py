"""The learner's workspace: work/, a copy of course/ that nothing overwrites.

``make lab`` runs ``python -m attnlab.learner.workspace course work`` before it opens
JupyterLab on work/. Each workbook folder of course/ that work/ does not have
yet is copied in whole; a workbook already in work/ is never touched, so
neither ``make release`` (which rewrites course/), ``git pull`` nor ``make
test`` can reach what a learner wrote. To take an updated release of a
workbook already started, rename its folder in work/ (``mv work/01_mha
work/01_mha-mine``) and run ``make lab`` again: the new release is copied in
beside the old work.

Each notebook copied in carries the ``language_info`` this environment's
kernel reports: JupyterLab writes it into a notebook when its kernel starts,
and a notebook that lacks it opens already marked as changed.
"""
from __future__ import annotations

import pathlib
import shutil
import sys

SKIP = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__")


def workbooks(folder: pathlib.Path) -> list[pathlib.Path]:
    """The workbook folders of ``folder``: NN_topic/NN_topic.ipynb."""
    return sorted(p for p in pathlib.Path(folder).iterdir() if (p / f"{p.name}.ipynb").is_file())


def _stamp(folder: pathlib.Path) -> None:
    """Give the notebooks in ``folder`` the language_info of this environment's kernel."""
    import nbformat
    from ipykernel.ipkernel import IPythonKernel

    for path in [folder] if folder.suffix == ".ipynb" else folder.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nb.metadata["language_info"] = dict(IPythonKernel.language_info)
        nbformat.write(nb, path)


def fill(course: pathlib.Path, work: pathlib.Path) -> list[str]:
    """Copy into ``work`` every workbook of ``course`` that it lacks, and the start page; returns their names."""
    course, work = pathlib.Path(course), pathlib.Path(work)
    if not course.is_dir():
        raise ValueError(f"course must be the release folder, got {course} (no such folder)")
    work.mkdir(exist_ok=True)
    added = []
    if (course / "START.ipynb").is_file() and not (work / "START.ipynb").exists():
        shutil.copy2(course / "START.ipynb", work / "START.ipynb")
        _stamp(work / "START.ipynb")
        added.append("START.ipynb")
    for src in workbooks(course):
        if not (work / src.name).exists():
            shutil.copytree(src, work / src.name, ignore=SKIP)
            _stamp(work / src.name)
            added.append(src.name)
    return added


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    course, work = (pathlib.Path(a) for a in (argv or ["course", "work"]))
    added = fill(course, work)
    if added:
        print(f"copied into {work}/: {', '.join(added)} (your own copies: nothing overwrites them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
