"""Start JupyterLab through `make lab`, on a free loopback port with a token,
for the tests that talk to it (test_lab.py over HTTP, test_browser.py through
a real browser)."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import time
import urllib.request

from conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Lab:
    base: str  # http://127.0.0.1:PORT
    token: str
    proc: subprocess.Popen
    log: pathlib.Path

    def get(self, path: str):
        """GET base + path with the token: (status, body)."""
        req = urllib.request.Request(self.base + path, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]


def _scratch_site(site: pathlib.Path, course: pathlib.Path) -> pathlib.Path:
    """A folder whose course/ is ``course`` and whose environment and nbgrader config are the repository's."""
    (site / "autograde").mkdir(parents=True)
    for name in (".venv", "requirements.txt", "constraints.txt", "pyproject.toml", "attnlab"):
        (site / name).symlink_to(ROOT / name)
    (site / "autograde" / "nbgrader_config.py").symlink_to(ROOT / "autograde" / "nbgrader_config.py")
    (site / "course").symlink_to(pathlib.Path(course).resolve())
    return site


def _lab_env(tmp_path: pathlib.Path, env: dict | None) -> dict:
    """This process's environment, JupyterLab's own folders in ``tmp_path``, and ``env`` laid over it."""
    full_env = dict(os.environ, MAKEFLAGS="",
                    JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
                    JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
                    JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "user-settings"))
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    return full_env


@contextlib.contextmanager
def make_lab(tmp_path: pathlib.Path, course: pathlib.Path | None = None, env: dict | None = None,
             timeout: float = 90):
    """Run `make lab` until the block ends; yield a :class:`Lab` once its REST
    API answers.

    It serves the repository's work/ (filled from course/), or, if ``course``
    is given, a work/ filled from that folder. In that case the repository's
    own Makefile runs (``make -f``) in a scratch folder, ``tmp_path/site``,
    whose course/ is ``course`` and whose other entries link to the
    repository's environment and nbgrader config: `make lab` fixes its folder
    (``--ServerApp.root_dir=work``, which a second ``--ServerApp.root_dir`` in
    LAB_ARGS cannot override), so its recipe runs unchanged and fills
    ``tmp_path/site/work``. The gradebook nbgrader may create stays in the
    scratch folder.

    ``env`` is laid over this process's environment (a value of None removes
    the variable). JupyterLab's runtime, workspace and user-settings folders
    are in ``tmp_path``, so nothing of the user's leaks in or out.
    """
    port, token = free_port(), secrets.token_hex(16)
    args = f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} --ServerApp.token={token}"
    command, cwd = ["make", "-s", "lab", f"LAB_ARGS={args}"], ROOT
    if course is not None:
        cwd = _scratch_site(tmp_path / "site", course)
        # -o: this test already runs inside the environment; never rebuild it from the scratch folder.
        command[1:1] = ["-f", str(ROOT / "Makefile"), "-o", ".venv/.installed"]
    full_env = _lab_env(tmp_path, env)
    log_path = tmp_path / "lab.log"
    log = open(log_path, "w+")
    proc = subprocess.Popen(command, cwd=cwd, env=full_env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    lab = Lab(f"http://127.0.0.1:{port}", token, proc, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, _ = lab.get("/api/status")
                break
            except OSError:
                assert proc.poll() is None, "make lab exited: " + lab.log_tail(2000)
                assert time.monotonic() < deadline, f"JupyterLab did not answer in {timeout:.0f} s"
                time.sleep(0.5)
        assert status == 200
        yield lab
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
