"""The start page: START.ipynb, the path through the workbooks and where you stand.

``make notebooks`` writes ``course/START.ipynb`` from the workbooks' own
introductions (title, what each needs, how long it takes); ``make lab`` copies
it into ``work/`` and opens it. Its one code cell, :func:`progress`, reads your
notebooks in ``work/`` (how many exercises you have written) and what your
last ``make check`` found (``work/.progress.json``, written by
:mod:`attnlab.learner.selfcheck`).
"""
from __future__ import annotations

import datetime
import json
import pathlib
import re

import nbformat

from attnlab.cells import is_solution

PROGRESS = ".progress.json"  # beside the workbook folders; make check writes it


def _intro(source: pathlib.Path) -> dict:
    """Title, needs and time of one workbook, from the markdown at the top of its source."""
    text = " ".join(ln[1:].strip() for ln in source.read_text().splitlines()[:60] if ln.startswith("#"))
    title = re.search(r"# (\d\d) · (.+?)  ", text + "  ")
    needs = re.search(r"\*\*You need\*\* (.+?)(?= \*\*|\. )", text)
    time = re.search(r"\*\*Time\*\* (about [^.;,]+)", text)
    return {"name": source.stem, "number": title.group(1), "title": title.group(2).strip(),
            "needs": needs.group(1).strip().rstrip(".") if needs else "", "time": time.group(1) if time else ""}


def page(sources: list[pathlib.Path]) -> nbformat.NotebookNode:
    """The start notebook for these workbook sources (solutions/NN_topic/NN_topic.py)."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    rows = "\n".join(f"| {w['number']} | [{w['title']}]({w['name']}/{w['name']}.ipynb) | {w['needs']} | {w['time']} |"
                     for w in map(_intro, sources))
    words = {6: "Six", 7: "Seven", 8: "Eight"}
    count = words.get(len(sources), str(len(sources)))
    cells = [
        new_markdown_cell(
            "# Efficient attention: from multi-head to latent attention\n\n"
            f"{count} workbooks, in order. Each opens with what you will build and ends with what to remember "
            "and a link to the next. Work in the copies here: nothing (`make release`, `git pull`, "
            "`make test`) overwrites them.\n\n"
            "| | Workbook | You need | Time |\n|---|---|---|---|\n" + rows),
        new_markdown_cell(
            "## Where you stand\n\n"
            "Run the cell below. *Exercises written* counts those whose body no longer raises "
            "`NotImplementedError`; *test cells passing* is what your last `make check` (in a terminal, at the "
            "course's root) found with the visible tests, for every test cell at once (JupyterLab's Run All "
            "stops at the first that fails). Graded, more checks run that you cannot see."),
        new_code_cell("from attnlab.learner.start import progress\n\nprogress()"),
        new_markdown_cell(
            "## How to work\n\n"
            "- Replace each `raise NotImplementedError()` with your code and run the test cell below it: "
            "its message says what is wrong, in words.\n"
            "- `make check` runs the visible tests of every workbook here, on copies, and records the "
            "result for the table above.\n"
            "- Stuck? The model answers are in the course repository, in `solutions/NN_topic/NN_topic.py`, "
            "inside each exercise's solution markers.\n"
            "- To take an updated release of a workbook you started, rename its folder "
            "(`mv work/01_mha work/01_mha-mine`) and run `make lab` again."),
    ]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"display_name": "Python 3 (ipykernel)",
                                                            "language": "python", "name": "python3"},
                                             "language_info": {"name": "python"}})
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"start-{i}"  # stable, so that the build is byte-identical from run to run
    return nb


def _written(notebook: pathlib.Path) -> tuple[int, int]:
    """(exercises written, exercises) of one notebook: its solution cells, and those that no longer raise
    NotImplementedError."""
    try:
        nb = nbformat.read(notebook, as_version=4)
    except Exception:  # noqa: BLE001  (a notebook that does not open counts as nothing written)
        return 0, 0
    answers = [c for c in nb.cells if is_solution(c)]
    return sum("NotImplementedError" not in c.source for c in answers), len(answers)


def rows(folder: pathlib.Path | str = ".") -> list[dict]:
    """One row per workbook in ``folder``: written, exercises, and the last make check's result."""
    folder = pathlib.Path(folder)
    try:
        checked = json.loads((folder / PROGRESS).read_text())
    except (OSError, ValueError):
        checked = {}
    out = []
    for nb in sorted(folder.glob("[0-9][0-9]_*/[0-9][0-9]_*.ipynb")):
        if nb.stem != nb.parent.name:
            continue
        written, total = _written(nb)
        last = checked.get(nb.stem, {})
        cells = last.get("cells", {})
        out.append({"workbook": nb.stem, "written": written, "exercises": total,
                    "passed": sum(s == "pass" for s in cells.values()), "tests": len(cells),
                    "checked": last.get("checked", "")})
    return out


def progress(folder: pathlib.Path | str = ".") -> None:
    """Print where you stand in each workbook of ``folder`` (the start page's folder: work/)."""
    table = rows(folder)
    if not table:
        print(f"no workbooks in {pathlib.Path(folder).resolve()}: run `make lab` at the course's root")
        return
    print(f"{'workbook':<22} {'exercises written':<19} test cells passing at your last make check")
    for r in table:
        check = (f"{r['passed']} of {r['tests']} ({r['checked']})" if r["checked"]
                 else "not checked yet: run make check")
        print(f"{r['workbook']:<22} {r['written']:>3} of {r['exercises']:<13} {check}")


def remember(notebook: pathlib.Path, results: list[dict]) -> None:
    """Record one notebook's make check results where the start page reads them (best effort): in
    the folder that holds its workbook folder (work/ for work/01_mha/01_mha.ipynb)."""
    notebook = pathlib.Path(notebook).resolve()
    if notebook.parent.name != notebook.stem:
        return  # not in a workbook folder: no start page to tell
    path = notebook.parent.parent / PROGRESS
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
        data[pathlib.Path(notebook).stem] = {
            "checked": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "cells": {r["grade_id"]: r["status"] for r in results}}
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    except (OSError, ValueError):
        pass  # a read-only folder: the start page says "not checked yet"
