"""The kernel that runs a student's notebook while it is graded.

nbgrader runs submitted code as it is, with the instructor's rights: it could
read the hidden tests or the answer key, write into the course package that
the next student's tests import, print the grader's secrets into its
feedback, open network connections, fork without end, or take the machine's
memory, CPU and disk. The course's grading kernel (kernel spec
``attnlab/jupyter/kernels/attnlab-grading``, chosen in
``autograde/nbgrader_config.py``) starts ipykernel through this file, which
first shuts the kernel in. On Linux:

* files: the kernel gets a root file system of its own, built from an
  allow-list (:mod:`attnlab.instructor.kernel_root`), all read-only: the
  system's programs and libraries (``/usr``, ``/lib*``, a few files of
  ``/etc``), the Python environment (``sys.prefix``, ``sys.base_prefix``,
  ``sys.path``), the course package, a fresh ``/proc``
  showing only its own processes, ``/dev/null``-like devices, and what
  ``ATTNLAB_SANDBOX_ALLOW`` adds. Nothing else exists in it: not the rest of
  the repository (``solutions/``, ``autograde/`` with the gradebook and the
  other submissions, ``.git``), not ``/root`` or ``/home``. Paths listed in
  ``ATTNLAB_SANDBOX_HIDE`` are covered by empty folders should they lie
  inside an allowed one;
* the answer key: the modules of ``attnlab/answers/`` (the folders in
  ``kernel_root.SOURCELESS``) are replaced by compiled ``.pyc`` files made at kernel
  start, so the tests can still call ``attnlab.answers`` but its source
  cannot be read or shown by ``inspect``;
* the kernel's folder: nbgrader's copy of the submission (``NN.ipynb``) is
  left out of it, so test inputs cannot be read back from the file; the
  other files of the folder are there read-only, and what the kernel writes
  there, in ``/tmp`` or ``/dev/shm`` stays in a private ``tmpfs`` that
  disappears with it;
* limits: address space (``ATTNLAB_KERNEL_MEMORY``, default 6G: a memory bomb
  ends in a ``MemoryError`` in its own cell, and the kernel goes on, see
  :mod:`attnlab.instructor.grading_kernel`), processes and threads
  (``ATTNLAB_KERNEL_PROCESSES``, default 256 or 4 per core: a fork bomb fails
  with ``BlockingIOError`` in its own notebook), CPU time
  (``ATTNLAB_KERNEL_CPU``, default 600 s for the whole notebook, see
  :data:`DEFAULT_CPU`) and disk (``ATTNLAB_KERNEL_DISK``, default 512M: the
  largest file, and all that the kernel writes together);
* processes: a PID namespace of its own, so it sees and signals only its own
  processes, and all of them die with it; it runs as an unprivileged user with
  no capabilities. The process limit counts its processes alone: as root it
  gets a user id of its own (``0x7f000000`` + the launcher's pid), otherwise
  a user namespace of its own, where Linux counts processes per namespace;
* network: a network namespace with no interfaces up, not even the host's
  loopback. The kernel talks to nbgrader over Unix sockets (the config sets
  ``KernelManager.transport = "ipc"``), which cross it;
* environment: an allow-list (:func:`kernel_env`): none of the grader's other
  variables (tokens, paths) reach the kernel;
* output: at most ``ATTNLAB_KERNEL_OUTPUT`` characters (default 1,000,000) of
  printed text per cell reach the grader, so a gigantic print cannot exhaust
  the grader's memory.

The namespaces need Linux and either root or unprivileged user namespaces
(Debian and Ubuntu allow them). The kernel fails closed: where they are
refused, it exits at once with one line on stderr (nbgrader's log) instead of
running student code unsandboxed. An instructor who wants to grade without
isolation says so: ``ATTNLAB_SANDBOX=off`` runs the kernel with the memory,
CPU, disk, output and environment limits only, and says so on stderr. On
macOS and other systems without these namespaces the kernel runs the same
way, with a notice: isolation is absent there, not failed, and refusing would
make grading impossible on an instructor's laptop. ``python -m
attnlab.instructor.sandbox --report`` tries the sandbox here and prints what holds.

This file runs as a script (the kernel spec names it by path), so that the
launcher does not import the package, and with it torch, before ipykernel
does: it imports :mod:`attnlab.instructor.kernel_root`, beside it, without
the package's ``__init__``.
"""
from __future__ import annotations

import fnmatch
import json
import os
import pathlib
import resource
import signal
import sys
import types

if not __package__ and "attnlab" not in sys.modules:
    # Run as a script: the modules beside this file are imported as attnlab.instructor.*, from here,
    # without attnlab/__init__.py, which would load torch into the launcher.
    _package = types.ModuleType("attnlab")
    _package.__path__ = [str(pathlib.Path(__file__).resolve().parent.parent)]
    sys.modules["attnlab"] = _package

from attnlab.instructor import kernel_root  # noqa: E402  (after the lines above)

DEFAULT_MEMORY = "6G"
# CPU seconds for the whole notebook. The kernel of a model answer uses 4 s
# (workbook 01) to 12 s (06, the heaviest) of CPU with torch on one thread; the
# per-cell limit (Execute.timeout, 120 s) already stops any one cell, so this
# only ends a kernel that keeps burning CPU past it (threads, child processes,
# many slow cells): five cells' worth of timeouts, fifty times the heaviest
# model answer, room for torch on many threads. At the limit the kernel is
# killed and the notebook is "not graded" (and flagged), not silently cut.
DEFAULT_CPU = 600
DEFAULT_DISK = "512M"
DEFAULT_OUTPUT = 1_000_000
# Threads count as processes for RLIMIT_NPROC: ipykernel has about 10 and
# torch one per core (two pools), so leave room on machines with many cores.
DEFAULT_PROCESSES = max(256, 4 * (os.cpu_count() or 1))
# As root, the kernel gets a user id of its own (this + the launcher's pid).
KERNEL_UID_BASE = 0x7F000000

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38

# The grader's variables that reach the kernel (plus ATTNLAB_KERNEL_ENV's).
_ENV_NAMES = {"ATTNLAB_CHECKER", "LANG", "LANGUAGE", "TZ", "TERM", "NBGRADER_EXECUTION", "NBGRADER_VALIDATING",
              "MPLBACKEND", "PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONDONTWRITEBYTECODE",
              "PYTHONUNBUFFERED", "PYTHONPATH", "JUPYTER_PLATFORM_DIRS", "CUDA_VISIBLE_DEVICES"}
_ENV_PREFIXES = ("LC_", "JPY_", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "TORCH_", "TRITON_")


def parse_size(text: str) -> int:
    """'6G' -> 6 * 2**30 bytes; '512M', '1048576' likewise."""
    text = str(text).strip().upper()
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (write e.g. 6G or 512M)") from None


def limits() -> dict:
    """The kernel's limits, from the ATTNLAB_KERNEL_* variables (ValueError names a bad one)."""
    env = os.environ.get

    def number(name, default):
        try:
            value = int(env(name, default))
        except ValueError:
            raise ValueError(f"{name} must be a whole number, not {env(name)!r}") from None
        if value <= 0:
            raise ValueError(f"{name} must be positive, not {value}")
        return value

    return {"memory": parse_size(env("ATTNLAB_KERNEL_MEMORY", DEFAULT_MEMORY)),
            "cpu": number("ATTNLAB_KERNEL_CPU", DEFAULT_CPU),
            "disk": parse_size(env("ATTNLAB_KERNEL_DISK", DEFAULT_DISK)),
            "processes": number("ATTNLAB_KERNEL_PROCESSES", DEFAULT_PROCESSES),
            "output": number("ATTNLAB_KERNEL_OUTPUT", DEFAULT_OUTPUT)}


def kernel_env(home: str, tmp: str | None) -> dict:
    """The kernel's environment: an allow-list of the grader's variables, not all of them.

    ``tmp`` is the kernel's private writable folder, where IPython and
    matplotlib keep their files (None when not isolated: they keep their own)."""
    extra = os.environ.get("ATTNLAB_KERNEL_ENV", "").replace(",", " ").split()
    env = {k: v for k, v in os.environ.items()
           if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES) or any(fnmatch.fnmatchcase(k, p) for p in extra)}
    env.update(HOME=home, USER="attnlab", LOGNAME="attnlab",
               PATH=os.pathsep.join([os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"]))
    env.setdefault("LANG", "C.UTF-8")
    if tmp:
        env.update(IPYTHONDIR=f"{tmp}/ipython", MPLCONFIGDIR=f"{tmp}/matplotlib", XDG_CACHE_HOME=f"{tmp}/cache",
                   XDG_CONFIG_HOME=f"{tmp}/config", TRITON_CACHE_DIR=f"{tmp}/triton")
    elif "MPLCONFIGDIR" in os.environ:
        env["MPLCONFIGDIR"] = os.environ["MPLCONFIGDIR"]
    return env


# ------------------------------------------------------------------ shutting the kernel in

def _drop(root: bool, uid: int, gid: int, lim: dict) -> None:
    """Become an unprivileged user with no capabilities, under the limits."""
    refused = _set_limits(lim, processes=True)
    if refused:
        raise OSError(f"the {', '.join(refused)} limit was refused")
    if root:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)  # from root to another user: every capability goes
    kernel_root.check(kernel_root.libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    # If the launcher is killed (nbgrader's SIGKILL), the kernel and with it its namespace go too.
    kernel_root.check(kernel_root.libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")


def _set_limits(lim: dict, processes: bool) -> list[str]:
    """Apply the rlimits; returns what this system refused (macOS does not enforce RLIMIT_AS)."""
    refused = []
    wanted = [("memory", resource.RLIMIT_AS, lim["memory"]), ("CPU time", resource.RLIMIT_CPU, lim["cpu"]),
              ("file size", resource.RLIMIT_FSIZE, lim["disk"]), ("core dumps", resource.RLIMIT_CORE, 0)]
    if processes:
        wanted.append(("processes", resource.RLIMIT_NPROC, lim["processes"]))
    for name, which, value in wanted:
        hard = resource.getrlimit(which)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            refused.append(name)
    return refused


def isolate(cmd: list[str], workdir: str, sockets: str | None, connection: str | None, lim: dict) -> int:
    """Run ``cmd`` shut in (see the module docstring); returns its exit status, or raises OSError
    (before ``cmd`` starts) when the machine refuses any part of the isolation."""
    workdir = os.path.abspath(workdir)
    ops = kernel_root.plan(workdir, sockets, connection)
    files = {f"matplotlib/{name}": data for name, data in kernel_root.font_caches().items()}
    sources = kernel_root.sourceless()
    root = os.geteuid() == 0
    uid, gid = (KERNEL_UID_BASE + os.getpid(),) * 2 if root else (os.getuid(), os.getgid())
    env = kernel_env(os.path.expanduser("~"), "/tmp")
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if root:
        if sockets:  # the kernel creates its sockets there
            os.chown(sockets, uid, gid)
        kernel_root.check(kernel_root.libc.unshare(flags), "unshare")
    else:
        kernel_root.check(kernel_root.libc.unshare(flags | CLONE_NEWUSER), "unshare")
        pathlib.Path("/proc/self/setgroups").write_text("deny")
        pathlib.Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        pathlib.Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    errors_r, errors_w = os.pipe()  # both close on exec: EOF says the kernel started
    pid = os.fork()
    if pid == 0:  # PID 1 of the new namespace
        try:
            os.close(errors_r)
            os.setsid()  # signals reach the kernel through the launcher only
            kernel_root.enter(ops, workdir, lim["disk"], (uid, gid), files, sources)
            _drop(root, uid, gid, lim)
            os.execve(cmd[0], cmd, env)
        except BaseException as e:  # noqa: BLE001  (anything here means: not isolated)
            os.write(errors_w, str(e).encode()[:2000])
        finally:
            os._exit(3)
    os.close(errors_w)
    # nbgrader interrupts and stops the kernel by signalling this launcher.
    signal.signal(signal.SIGINT, lambda *_: os.kill(pid, signal.SIGINT))
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: os.kill(pid, signal.SIGKILL))
    with os.fdopen(errors_r, "rb") as pipe:
        error = pipe.read().decode(errors="replace")
    if error:
        os.waitpid(pid, 0)
        raise OSError(error)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


# ------------------------------------------------------------------ the launcher

def _connection(argv: list[str]) -> tuple[str | None, str | None]:
    """The kernel's connection file and, for Unix-socket transport, the sockets' folder."""
    if "-f" not in argv:
        return None, None
    path = os.path.abspath(argv[argv.index("-f") + 1])
    info = json.loads(pathlib.Path(path).read_text())
    ipc = os.path.dirname(os.path.abspath(info["ip"])) if info.get("transport") == "ipc" else None
    return path, ipc


# What --report runs in the sandbox: one JSON line of what the kernel could do.
_PROBE = r"""
import json, os, socket, sys
root, secrets = sys.argv[1], sys.argv[2:]
def refused(fn):
    try:
        fn()
        return False
    except OSError:
        return True
def connect():
    socket.create_connection(("127.0.0.1", 22), timeout=1).close()
caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
print(json.dumps({"uid": os.getuid(), "capabilities": int(caps, 16),
                  "processes_seen": sum(p.isdigit() for p in os.listdir("/proc")),
                  "repository_listing": sorted(os.listdir(root)) if os.path.isdir(root) else [],
                  "secrets_seen": [p for p in secrets if os.path.isdir(p) and os.listdir(p)],
                  "network_refused": refused(connect),
                  "write_refused": refused(lambda: open(os.path.join(root, "attnlab", "x"), "w"))}))
"""


def _refuse(why: str, hint: str = "to grade without isolation on purpose, set ATTNLAB_SANDBOX=off") -> None:
    """One line on stderr (nbgrader's log) and a non-zero exit: the notebook is not graded."""
    print(f"attnlab.instructor.sandbox: refusing to run the grading kernel: {why}; {hint}", file=sys.stderr)
    sys.exit(3)


def report() -> dict:
    """What this machine allows: the sandbox tried in a child process, and the limits."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as empty:  # the probe's working folder
        r = subprocess.run([sys.executable, "-P", __file__, "--probe"], capture_output=True, text=True, cwd=empty)
        readable = kernel_root.readable_paths(empty)
    lim = limits()
    out = {"isolation": "", "limits": {"memory": f"{lim['memory'] / 2**30:g} GiB (ATTNLAB_KERNEL_MEMORY)",
                                       "cpu": f"{lim['cpu']} s for the whole notebook (ATTNLAB_KERNEL_CPU)",
                                       "disk": f"{lim['disk'] / 2**20:g} MiB written (ATTNLAB_KERNEL_DISK)",
                                       "processes": f"{lim['processes']} processes and threads "
                                                    "(ATTNLAB_KERNEL_PROCESSES)",
                                       "output": f"{lim['output']:,} characters per cell (ATTNLAB_KERNEL_OUTPUT)"},
           "readable": readable + [f"{kernel_root.PACKAGE} ({', '.join(kernel_root.SOURCELESS)}/ as bytecode only)"],
           "hidden": kernel_root.secret_paths(), "environment": sorted(kernel_env(os.path.expanduser("~"), "/tmp"))}
    lines = r.stdout.strip().splitlines()
    seen = json.loads(lines[-1]) if r.returncode == 0 and lines else None
    if seen is None:
        out["isolation"] = "refused: " + (r.stderr.strip().splitlines() or ["no output"])[-1]
    elif os.environ.get("ATTNLAB_SANDBOX", "on").strip().lower() == "off":
        out["isolation"] = "off (ATTNLAB_SANDBOX=off)"
    else:
        how = "root" if os.geteuid() == 0 else "user namespace"
        secrets = "VISIBLE: " + ", ".join(seen["secrets_seen"]) if seen["secrets_seen"] else "hidden"
        out["isolation"] = (f"{how}: uid {seen['uid']}, capabilities {seen['capabilities']:#x}, "
                            f"{seen['processes_seen']} process(es) visible, network "
                            f"{'refused' if seen['network_refused'] else 'REACHABLE'}, secrets {secrets}")
        out["probe"] = seen
    return out


def main(argv: list[str]) -> None:
    if argv == ["--report"]:
        print(json.dumps(report(), indent=1))
        return
    probe = argv == ["--probe"]
    try:
        lim = limits()
    except ValueError as e:
        _refuse(str(e), "see attnlab/instructor/sandbox.py for the limits")
    mode = os.environ.get("ATTNLAB_SANDBOX", "on").strip().lower()
    if mode not in ("on", "off"):
        _refuse(f"ATTNLAB_SANDBOX is {os.environ['ATTNLAB_SANDBOX']!r}", "write on (the default) or off")
    if probe:
        cmd = [sys.executable, "-c", _PROBE, str(kernel_root.ROOT), *kernel_root.secret_paths()]
    else:
        cap = f"import attnlab.instructor.grading_kernel as _k; _k.setup({lim['output']}); del _k"
        cmd = [sys.executable, "-m", "ipykernel_launcher", *argv, f"--IPKernelApp.exec_lines={cap}"]
    linux = sys.platform.startswith("linux")
    if linux and not probe:
        # The grading process that started this launcher dies (make grade killed): the launcher
        # goes too, and with it the kernel (it dies with the launcher, see _drop, or is this
        # process after the exec below). No kernel outlives the batch that wanted it.
        kernel_root.check(kernel_root.libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    if mode == "off" or not linux:
        why = "ATTNLAB_SANDBOX=off" if mode == "off" else "namespaces are Linux's"
        refused = _set_limits(lim, processes=False)
        kept = "memory, " if "memory" not in refused else ""
        print(f"attnlab.instructor.sandbox: no isolation ({why}): the kernel sees the grader's files and network; "
              f"{kept}CPU, file size, output and environment limits only", file=sys.stderr)
        os.execve(cmd[0], cmd, kernel_env(os.path.expanduser("~"), None))
    connection, sockets = _connection(argv)
    try:
        code = isolate(cmd, os.getcwd(), sockets, connection, lim)
    except OSError as e:
        _refuse(f"it cannot isolate itself here ({e.strerror or e})")
    except SyntaxError as e:  # the answer key is compiled at each start
        _refuse(f"{e.filename} does not compile ({e.msg}, line {e.lineno})", "fix it first")
    sys.exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
