"""The kernel that runs a student's notebook while it is graded.

nbgrader runs submitted code as it is, with the instructor's rights: it could
read the hidden tests, write into the course package that the next student's
tests import, open network connections or take the machine's memory. The
course's grading kernel (``autograde/jupyter/kernels/attnlab-grading``) starts
ipykernel through this module, which first shuts the kernel in:

* memory: ``RLIMIT_AS`` caps the kernel's address space (``ATTNLAB_KERNEL_MEMORY``,
  default 6G), so a memory bomb ends in a ``MemoryError`` in its own cell;
* files: in a private mount namespace the course's answers and grading records
  (``solutions/``, ``autograde/`` with the gradebook and every other
  submission, ``.git``, and whatever ``ATTNLAB_SANDBOX_HIDE`` lists) are
  replaced by empty folders, every file system is read-only, and only the
  kernel's own working folder and a private ``/tmp`` can be written;
* network: a network namespace of its own with no interfaces up, not even the
  host's loopback. The kernel talks to nbgrader over Unix sockets (the
  config sets ``KernelManager.transport = "ipc"``), which cross it;
* output: at most ``ATTNLAB_KERNEL_OUTPUT`` characters (default 1,000,000) of
  printed text per cell reach the grader, so a gigantic print cannot exhaust
  the grader's memory.

The namespaces need Linux and either root or unprivileged user namespaces
(Debian and Ubuntu allow them). Where they are refused, the kernel still runs,
with the memory and output limits only, and says so on its stderr (nbgrader's
log). ``python -m attnlab.sandbox --report`` prints what this machine allows.
"""
from __future__ import annotations

import ctypes
import glob
import json
import os
import pathlib
import resource
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
# statvfs flag -> mount flag: a remount inside a user namespace must keep these.
_KEEP = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME, 2048: MS_NODIRATIME,
         4096: MS_RELATIME}
_SYSTEM = ("/proc", "/sys", "/dev")


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


def secret_paths() -> list[str]:
    """What the kernel must not see: the answers and the grading records."""
    paths = [ROOT / "solutions", ROOT / "autograde", ROOT / ".git"]
    extra = [p for p in os.environ.get("ATTNLAB_SANDBOX_HIDE", "").split(os.pathsep) if p]
    return sorted({str(pathlib.Path(p).resolve()) for p in [*paths, *extra] if os.path.lexists(p)})


_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else str(s).encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _unshare() -> str:
    """Enter new mount and network namespaces; returns how."""
    if _libc.unshare(CLONE_NEWNS | CLONE_NEWNET) == 0:
        return "root"
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET), "unshare")
    pathlib.Path("/proc/self/setgroups").write_text("deny")
    pathlib.Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    pathlib.Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    return "user namespace"


def _mount_points() -> list[str]:
    points = []
    for line in pathlib.Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        # mountinfo escapes space, tab, newline and backslash as octal
        points.append(point.encode().decode("unicode_escape"))
    return points


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def isolate(workdir: str, writable: list[str], hide: list[str], files=(), readable=()) -> str:
    """Shut this process in (see the module docstring); returns how, or raises OSError.

    ``files`` are put back with their contents if the new mounts hide them (the
    kernel's connection file, which nbclient writes to /tmp); ``readable``
    folders are put back read-only (Python and the course package, should they
    live under /tmp, as in a fresh clone there)."""
    files = {p: pathlib.Path(p).read_bytes() for p in files or ()}
    how = _unshare()
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Keep handles on the folders the kernel keeps (its own, the sockets', Python's): the mounts below hide their paths.
    keep = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in dict.fromkeys([workdir, *writable, *readable])}
    for path in hide:
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
        else:
            _mount("/dev/null", path, None, MS_BIND)
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1g,mode=1777")
    for path, fd in keep.items():
        os.makedirs(path, exist_ok=True)  # inside an empty folder that now hides it
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND)
        os.close(fd)
    for path, data in files.items():
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pathlib.Path(path).write_bytes(data)
    rw = {"/tmp", workdir, *writable}
    for point in _mount_points():
        if point in rw or any(_inside(point, s) for s in _SYSTEM):
            continue
        try:
            flags = os.statvfs(point).f_flag
            kept = sum(mflag for sflag, mflag in _KEEP.items() if flags & sflag)
            _mount(None, point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | kept)
        except OSError:
            pass  # hidden below another mount: not reachable anyway
    # Re-enter the working folder through its new mount: from the old handle,
    # '..' would still lead to the hidden folders.
    os.chdir(workdir)
    return how


def _private_config_dirs() -> None:
    # HOME is read-only now; IPython and matplotlib get private folders on the
    # private /tmp. matplotlib's font cache is copied: rebuilding it prints a
    # warning, which nbgrader would count against a test cell.
    os.environ["IPYTHONDIR"] = "/tmp/ipython"
    old = os.environ.get("MPLCONFIGDIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "matplotlib")
    new = "/tmp/matplotlib"
    os.makedirs(new, exist_ok=True)
    for f in glob.glob(os.path.join(old, "fontlist-*.json")):
        shutil.copy(f, new)
    os.environ["MPLCONFIGDIR"] = new


def _limit_memory(nbytes: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        nbytes = min(nbytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (nbytes, hard if hard != resource.RLIM_INFINITY else nbytes))


class _CappedStream:
    """A stream that passes on at most ``limit`` characters per cell."""

    def __init__(self, stream, limit: int):
        self._stream, self._limit, self.used = stream, limit, 0

    def write(self, text):
        room = self._limit - self.used
        self.used += len(text)
        if room > 0:
            self._stream.write(text[:room])
        if room >= 0 and self.used > self._limit:
            self._stream.write(f"\n[output cut: more than {self._limit:,} characters in one cell]\n")
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def cap_output(limit: int) -> None:
    """Run inside the kernel before the first cell (``IPKernelApp.exec_lines``).

    A student's code can undo this, as it can anything in its own process: it
    guards the grader against accidents, not against the isolation above."""
    from IPython import get_ipython

    streams = [_CappedStream(sys.stdout, limit), _CappedStream(sys.stderr, limit)]
    sys.stdout, sys.stderr = streams

    def reset(*_):
        for s in streams:
            s.used = 0

    get_ipython().events.register("pre_run_cell", reset)


def _connection(argv: list[str]) -> tuple[str | None, str | None]:
    """The kernel's connection file and, for Unix-socket transport, the sockets' folder."""
    if "-f" not in argv:
        return None, None
    path = os.path.abspath(argv[argv.index("-f") + 1])
    info = json.loads(pathlib.Path(path).read_text())
    ipc = os.path.dirname(os.path.abspath(info["ip"])) if info.get("transport") == "ipc" else None
    return path, ipc


def report() -> dict:
    """What isolation this machine allows, tried in a child process."""
    import subprocess

    code = ("import os, attnlab.sandbox as s; how = s.isolate(os.getcwd(), [], s.secret_paths()); "
            "print(how)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return {"isolation": r.stdout.strip() or "refused: " + r.stderr.strip().splitlines()[-1],
            "hidden": secret_paths(), "memory": os.environ.get("ATTNLAB_KERNEL_MEMORY", "6G")}


def main(argv: list[str]) -> None:
    if argv == ["--report"]:
        print(json.dumps(report(), indent=1))
        return
    memory = parse_size(os.environ.get("ATTNLAB_KERNEL_MEMORY", "6G"))
    output = int(os.environ.get("ATTNLAB_KERNEL_OUTPUT", "1000000"))
    connection, ipc = _connection(argv)
    try:
        if not sys.platform.startswith("linux"):
            raise OSError("namespaces are Linux's")
        isolate(os.getcwd(), [ipc] if ipc else [], secret_paths(), [connection] if connection else [],
                readable=[sys.prefix, sys.base_prefix, str(ROOT / "attnlab")])
        _private_config_dirs()
        if os.access(ROOT / "attnlab", os.W_OK):
            print("attnlab.sandbox: the course package is still writable (a read-only remount was refused)",
                  file=sys.stderr)
    except OSError as e:
        print(f"attnlab.sandbox: no file or network isolation here ({e}); memory and output limits only",
              file=sys.stderr)
    try:
        _limit_memory(memory)
    except (ValueError, OSError) as e:  # macOS does not enforce RLIMIT_AS
        print(f"attnlab.sandbox: no memory limit here ({e})", file=sys.stderr)
    cap = f"import attnlab.sandbox as _s; _s.cap_output({output}); del _s"
    os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", *argv,
                              f"--IPKernelApp.exec_lines={cap}"])


if __name__ == "__main__":
    main(sys.argv[1:])
