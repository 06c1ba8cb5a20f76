"""The grading kernel where the container refuses namespaces: an unprivileged user of its own.

:mod:`attnlab.instructor.sandbox` shuts the kernel in with namespaces and fails closed
where Linux refuses them, as Docker's default profile does (Gradescope's
containers among others). There :mod:`attnlab.instructor.gradescope` grades as root with
this kernel instead, which is the sandbox's ``ATTNLAB_SANDBOX=off`` mode (its
memory, CPU, file-size, output and environment limits) started as a user id
no other process has, so that Unix permissions keep from it what the
namespaces would have hidden:

* the course (``/autograder/source``: the workbook's source with its hidden
  tests, the answer key's source) and the grading copy (gradebook, restored
  notebook) are made root-only; the kernel imports a copy of the package
  whose answer key is bytecode only (:func:`attnlab.instructor.kernel_root.compiled`);
* its working folder stays root's and read-only to it, and nbgrader's copy of
  the notebook there (hidden tests restored) is made unreadable to it;
* at most ``ATTNLAB_KERNEL_PROCESSES`` processes for that user id; no new
  privileges (setuid programs); whatever it left running is killed after
  grading (:func:`stop`).

What it keeps, unlike the sandbox: the network, a view of the other processes
(not their memory or environment) and read access to the world-readable
system. This file runs as a script (the kernel spec names it by path), so the
launcher imports nothing of the package before it drops root.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import sys
import tempfile

KERNEL = "attnlab-unprivileged"
KERNEL_UID_BASE = 0x7E000000  # a range of its own: the sandbox uses 0x7F000000 + pid
PR_SET_NO_NEW_PRIVS = 38
_made: list[str] = []


def uid() -> int:
    """The kernel's user (and group) id: one per grading process."""
    return KERNEL_UID_BASE + os.getpid()


def prepare(tmp: pathlib.Path, course: pathlib.Path, assignment: str = "") -> str:
    """Set the kernel up for a grading copy under ``tmp`` (made root-only, as ``course`` is) of
    ``assignment``; returns the lines nbgrader's config needs to use it."""
    from attnlab.instructor import kernel_root
    from attnlab.verdict.grading import CHECKED

    package = pathlib.Path(__file__).resolve().parents[1]
    kdir = pathlib.Path(tempfile.mkdtemp(prefix="attnlab-kernel-package-"))
    home = pathlib.Path(tempfile.mkdtemp(prefix="attnlab-kernel-home-"))
    _made.extend([str(kdir), str(home)])
    shutil.copytree(package, kdir / "attnlab", ignore=lambda d, names: [
        n for n in names if n == "__pycache__" or n.endswith(".pyc")
        or os.path.basename(d) in kernel_root.SOURCELESS and n.endswith(".py")])
    sources = kernel_root.sourceless(checked=assignment in CHECKED)
    for module in kernel_root.hidden_sources(sources):  # a source beside its .pyc would be imported instead
        (kdir / "attnlab" / f"{module}.py").unlink()
    for module, data in sources.items():
        (kdir / "attnlab" / f"{module}.pyc").write_bytes(data)
    spec = kdir / "kernels" / KERNEL / "kernel.json"
    spec.parent.mkdir(parents=True)
    spec.write_text(json.dumps({"argv": [sys.executable, "-P", str(kdir / "attnlab" / "instructor" / "unprivileged.py"),
                                         str(uid()), str(home), "-f", "{connection_file}"],
                                "display_name": "Python 3 (attnlab grading, unprivileged)", "language": "python"}))
    for path in [kdir, *kdir.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    # matplotlib's font list: rebuilding it would warn on stderr in a graded cell.
    (home / "matplotlib").mkdir()
    for name, data in kernel_root.font_caches().items():
        (home / "matplotlib" / name).write_bytes(data)
    for path in [home, *home.rglob("*")]:
        os.chown(path, uid(), uid())
    for path in (tmp, course):
        os.chmod(path, 0o700)
    return (f"os.environ['JUPYTER_PATH'] = {str(kdir)!r} + os.pathsep + os.environ.get('JUPYTER_PATH', '')\n"
            f"c.Execute.kernel_name = {KERNEL!r}\n"
            "for _d in ('solutions', 'course', 'autograde'):  # from the kernel's folder, '..' leads here\n"
            "    os.makedirs(os.path.join(ROOT, _d), exist_ok=True)\n"
            "    os.chmod(os.path.join(ROOT, _d), 0o700)")


def stop() -> None:
    """Kill whatever the kernel's user still runs, and remove the kernel's folders."""
    me = str(uid())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = pathlib.Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        ids = [line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")]
        if ids and me in ids[0]:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
    while _made:
        shutil.rmtree(_made.pop(), ignore_errors=True)


def launch(argv: list[str]) -> None:
    """As root, in the kernel's folder: hand the kernel its files, drop to its user, start the sandbox's
    ``ATTNLAB_SANDBOX=off`` kernel from the package copy beside this file. ``argv``: uid home -f file."""
    import ctypes
    import resource

    kernel_uid, home, rest = int(argv[0]), argv[1], list(argv[2:])
    i = rest.index("-f") + 1
    info = json.loads(pathlib.Path(rest[i]).read_text())
    # The connection file lies in root's runtime folder, out of the kernel's reach: a copy of its own.
    mine = os.path.join(home, "connection.json")
    pathlib.Path(mine).write_text(json.dumps(info))
    os.chown(mine, kernel_uid, kernel_uid)
    os.chmod(mine, 0o600)
    rest[i] = mine
    if info.get("transport") == "ipc":  # the kernel creates its sockets there
        os.chown(os.path.dirname(os.path.abspath(info["ip"])), kernel_uid, kernel_uid)
    for entry in os.listdir("."):
        if entry.endswith(".ipynb"):  # nbgrader's copy, hidden tests restored
            os.chmod(entry, 0o600)
    here = os.path.dirname(os.path.abspath(__file__))  # the copy's attnlab/instructor
    processes = int(os.environ.get("ATTNLAB_KERNEL_PROCESSES", max(256, 4 * (os.cpu_count() or 1))))
    os.setgroups([])
    os.setresgid(kernel_uid, kernel_uid, kernel_uid)
    os.setresuid(kernel_uid, kernel_uid, kernel_uid)
    resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):  # no setuid program gives root back
        sys.exit(f"attnlab.instructor.unprivileged: prctl failed ({os.strerror(ctypes.get_errno())})")
    env = dict(os.environ, HOME=home, MPLCONFIGDIR=os.path.join(home, "matplotlib"),
               PYTHONPATH=os.path.dirname(os.path.dirname(here)), ATTNLAB_SANDBOX="off")
    os.execve(sys.executable, [sys.executable, "-P", os.path.join(here, "sandbox.py"), *rest], env)


if __name__ == "__main__":
    launch(sys.argv[1:])
