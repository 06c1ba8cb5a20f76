"""Every solution notebook runs top to bottom with no error and nothing on stderr."""
from __future__ import annotations

import time

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT, assignments


@pytest.mark.parametrize("assignment", assignments())
def test_solution_runs_clean(tmp_path, assignment):
    nb = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    elapsed = time.perf_counter() - start
    problems = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                problems.append(f"cell {i}: {out.ename}: {out.evalue}")
            elif out.output_type == "stream" and out.name == "stderr":
                problems.append(f"cell {i} wrote to stderr: {out.text[:300]}")
    assert not problems, "\n".join(problems)
    print(f"{assignment}: {elapsed:.1f} s")
