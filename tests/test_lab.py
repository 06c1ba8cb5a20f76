"""`make lab` starts JupyterLab on course/, and it serves the workbooks."""
from __future__ import annotations

import json

from conftest import assignments
from labserver import make_lab


def test_make_lab_serves_the_course(tmp_path):
    with make_lab(tmp_path) as lab:
        status, page = lab.get(f"/lab?token={lab.token}")
        assert status == 200 and b"JupyterLab" in page
        first = assignments()[0]
        status, body = lab.get(f"/api/contents/{first}/{first}.ipynb")
        nb = json.loads(body)
        assert status == 200 and nb["type"] == "notebook" and nb["content"]["cells"]
        assert lab.proc.poll() is None, "make lab exited while its server was being checked"
