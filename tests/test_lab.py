"""`make lab` copies the workbooks into work/, starts JupyterLab there, and it serves them."""
from __future__ import annotations

import json

from conftest import ROOT, assignments
from labserver import make_lab


def test_make_lab_serves_the_course(tmp_path):
    # In a scratch folder whose course/ is the release: the developer's own work/ stays as it is.
    with make_lab(tmp_path, course=ROOT / "course") as lab:
        status, page = lab.get(f"/lab?token={lab.token}")
        assert status == 200 and b"JupyterLab" in page
        first = assignments()[0]
        status, body = lab.get(f"/api/contents/{first}/{first}.ipynb")
        nb = json.loads(body)
        assert status == 200 and nb["type"] == "notebook" and nb["content"]["cells"]
        assert lab.proc.poll() is None, "make lab exited while its server was being checked"
    assert sorted(p.name for p in (tmp_path / "site" / "work").iterdir()) == assignments()
