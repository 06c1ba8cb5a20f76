"""`make check`: a learner's own notebook, checked with its visible tests, untouched."""
from __future__ import annotations

import nbformat

from attnlab import check, grading
from conftest import ROOT


def test_check_reports_passes_and_failures_without_touching_the_notebook(tmp_path, capsys):
    release = ROOT / "course" / "02_gqa" / "02_gqa.ipynb"
    source = nbformat.read(ROOT / "solutions" / "02_gqa" / "02_gqa.ipynb", as_version=4)
    answers = grading.filled(nbformat.read(release, as_version=4), source)
    broken = grading.edit_cell(answers, "cache_size", "return n_kv_heads / n_heads", "return n_heads / n_kv_heads")
    mine = tmp_path / "02_gqa.ipynb"
    nbformat.write(broken, mine)
    before = mine.read_bytes()

    assert check.main([str(mine)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  test_cache_size" in out and "quarter of the MHA cache" in out
    assert "pass  test_expand" in out and "pass  test_module" in out
    assert mine.read_bytes() == before  # the learner's file is not modified

    blank = tmp_path / "blank.ipynb"
    blank.write_bytes(release.read_bytes())
    results = check.check(blank)
    assert results and all(error and "NotImplementedError" in error for _, _, error in results)
