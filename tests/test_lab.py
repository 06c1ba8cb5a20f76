"""`make lab` copies the workbooks into work/, starts JupyterLab there on the start page, and serves
them as a learner needs them: no instructor or exchange pages, no grading kernel."""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest

from conftest import ROOT, assignments
from labserver import make_lab


def test_make_lab_serves_the_course(tmp_path):
    # In a scratch folder whose course/ is the release: the developer's own work/ stays as it is. JUPYTER_PATH
    # holds the grading kernel's spec, as it does in a process that has read the nbgrader config.
    with make_lab(tmp_path, course=ROOT / "course", env={"JUPYTER_PATH": str(ROOT / "attnlab" / "jupyter")}) as lab:
        status, page = lab.get(f"/lab?token={lab.token}")
        assert status == 200 and b"JupyterLab" in page
        first = assignments()[0]
        status, body = lab.get(f"/api/contents/{first}/{first}.ipynb")
        nb = json.loads(body)
        assert status == 200 and nb["type"] == "notebook" and nb["content"]["cells"]
        # The address make lab prints opens the start page.
        assert urllib.request.urlopen(f"{lab.base}/?token={lab.token}").geturl().startswith(
            f"{lab.base}/lab/tree/START.ipynb")
        # A learner's JupyterLab: nbgrader's Validate, not its formgrader, Assignment List or Course List
        # (which says "Error fetching courses!" without an exchange), and only the learner's kernel.
        config = json.loads(re.search(rb'<script id="jupyter-config-data" type="application/json">(.*?)</script>',
                                      page, re.S).group(1))
        for plugin in ("menu", "assignment-list", "course-list", "formgrader", "create-assignment"):
            assert f"@jupyter/nbgrader:{plugin}" in config["disabledExtensions"], config["disabledExtensions"]
        assert "@jupyter/nbgrader:validate-assignment" not in config["disabledExtensions"]
        # No "Would you like to get notified about official Jupyter news?": the course works offline.
        assert "@jupyterlab/apputils-extension:announcements" in config["disabledExtensions"]
        for path in ("/formgrader", "/assignments", "/courses"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                lab.get(path)
        status, body = lab.get("/api/kernelspecs")
        assert list(json.loads(body)["kernelspecs"]) == ["python3"], "the grading kernel is offered to a learner"
        assert lab.proc.poll() is None, "make lab exited while its server was being checked"
    assert sorted(p.name for p in (tmp_path / "site" / "work").iterdir()) == sorted(["START.ipynb", *assignments()])
