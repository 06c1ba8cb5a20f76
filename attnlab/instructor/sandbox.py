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
  allow-list, all read-only: the system's programs and libraries (``/usr``,
  ``/lib*``, a few files of ``/etc``), the Python environment (``sys.prefix``,
  ``sys.base_prefix``, ``sys.path``), the course package, a fresh ``/proc``
  showing only its own processes, ``/dev/null``-like devices, and what
  ``ATTNLAB_SANDBOX_ALLOW`` adds. Nothing else exists in it: not the rest of
  the repository (``solutions/``, ``autograde/`` with the gradebook and the
  other submissions, ``.git``), not ``/root`` or ``/home``. Paths listed in
  ``ATTNLAB_SANDBOX_HIDE`` are covered by empty folders should they lie
  inside an allowed one;
* the answer key: the modules of ``attnlab/answers/`` (the folders in
  ``SOURCELESS``) are replaced by compiled ``.pyc`` files made at kernel
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
does.
"""
from __future__ import annotations

import ctypes
import fnmatch
import glob
import json
import os
import pathlib
import platform
import resource
import signal
import sys

PACKAGE = pathlib.Path(__file__).resolve().parent.parent
ROOT = PACKAGE.parent

# Folders of the package whose modules reach the kernel as bytecode only: the answer key.
SOURCELESS = ("answers",)

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
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
# statvfs flag -> mount flag: a remount inside a user namespace must keep these.
_KEEP = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME, 2048: MS_NODIRATIME,
         4096: MS_RELATIME}
# pivot_root has no libc wrapper: its system call number.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "loongarch64": 41, "ppc64le": 203, "s390x": 217}

_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "hosts")
_SYS = ("/sys/devices/system/cpu", "/sys/devices/system/node")  # torch reads the CPU topology
_DEVICES = ("null", "zero", "full", "random", "urandom")

# The grader's variables that reach the kernel (plus ATTNLAB_KERNEL_ENV's).
_ENV_NAMES = {"LANG", "LANGUAGE", "TZ", "TERM", "NBGRADER_EXECUTION", "NBGRADER_VALIDATING", "MPLBACKEND",
              "PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONDONTWRITEBYTECODE",
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


def secret_paths() -> list[str]:
    """What the kernel must never see, even where an allowed path holds it."""
    paths = [ROOT / "solutions", ROOT / "autograde", ROOT / ".git"]
    extra = [p for p in os.environ.get("ATTNLAB_SANDBOX_HIDE", "").split(os.pathsep) if p]
    return sorted({os.path.realpath(p) for p in [*paths, *extra] if os.path.lexists(p)})


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def readable_paths(workdir: str = "") -> list[str]:
    """The allow-list: what the kernel may read besides its folder and the package."""
    paths = [p for p in _SYSTEM if os.path.isdir(p)]
    paths += [os.path.join("/etc", e) for e in _ETC] + list(_SYS)
    paths += [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path]
    paths += [p for p in os.environ.get("ATTNLAB_SANDBOX_ALLOW", "").split(os.pathsep) if p]
    out = set()
    for p in paths:
        if not p or not os.path.isabs(p) or not os.path.lexists(p):
            continue  # '' on sys.path is the working folder, which has its own mount
        p = os.path.abspath(p)
        # A path that holds the repository or the kernel's folder would show all of it.
        if any(_inside(q, p) for q in (str(ROOT), workdir) if q) or _inside(p, str(PACKAGE)) \
                or any(_inside(p, s) for s in secret_paths()):
            continue
        out.add(p)
    return sorted(out)


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


def _font_caches() -> dict[str, bytes]:
    # matplotlib's font list, copied into the kernel's private config folder:
    # rebuilding it prints a warning, which nbgrader would count against a test cell.
    folder = os.environ.get("MPLCONFIGDIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "matplotlib")
    caches = glob.glob(os.path.join(folder, "fontlist-*.json"))
    return {os.path.basename(f): pathlib.Path(f).read_bytes() for f in caches}


def compiled(module: str) -> bytes:
    """``attnlab/<module>.py`` as a sourceless .pyc: bytecode that imports, no text to read."""
    import importlib.util
    import marshal

    path = PACKAGE / f"{module}.py"
    code = compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
    # magic, flags (0: timestamp-based), mtime and size: a sourceless .pyc is never checked against a source
    return importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code)


def sourceless() -> dict[str, bytes]:
    """Every module of the SOURCELESS folders, compiled: {'answers/mha': bytes of its .pyc, ...}."""
    return {f"{folder}/{p.stem}": compiled(f"{folder}/{p.stem}")
            for folder in SOURCELESS for p in sorted((PACKAGE / folder).glob("*.py"))}


# ------------------------------------------------------------------ the system calls

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else str(s).encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _umount(target) -> None:
    _check(_libc.umount2(str(target).encode(), MNT_DETACH), f"umount {target}")


def _pivot_root(new: str, old: str) -> None:
    number = _SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(f"pivot_root: unknown system call number on {platform.machine()}")
    _check(_libc.syscall(ctypes.c_long(number), new.encode(), old.encode()), "pivot_root")


def _remount_readonly(target: str, extra: int = 0) -> None:
    flags = os.statvfs(target).f_flag
    kept = sum(mflag for sflag, mflag in _KEEP.items() if flags & sflag)
    _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | kept | extra)


def _mount_points() -> list[str]:
    points = []
    for line in pathlib.Path("/proc/self/mountinfo").read_text().splitlines():
        # mountinfo escapes space, tab, newline and backslash as octal
        points.append(line.split()[4].encode().decode("unicode_escape"))
    return points


# ------------------------------------------------------------------ the kernel's root file system

def _plan(workdir: str, sockets: str | None, connection: str | None) -> list[tuple]:
    """What the kernel's root holds, as (target, kind, source) in mount order (parents first)."""
    ops = []
    for p in readable_paths(workdir):
        real = os.path.realpath(p)
        if os.path.islink(p) and p in _SYSTEM:
            ops.append((p, "link", os.readlink(p)))  # /lib -> usr/lib on merged-/usr systems
            continue
        ops.append((p, "ro", real))
        if real != p:
            ops.append((real, "ro", real))
    # Drop what an allowed folder shows already, unless a hidden folder lies between.
    covers = sorted({str(ROOT), *secret_paths()})
    binds = {t for t, kind, _ in ops if kind == "ro"}

    def shown(t):
        return any(_inside(t, b) and b != t and not any(_inside(t, c) and _inside(c, b) for c in covers)
                   for b in binds)
    ops = [op for op in ops if not (op[1] == "ro" and shown(op[0]))]
    ops += [(c, "cover", None) for c in covers]
    ops += [(str(PACKAGE), "package", str(PACKAGE)), ("/proc", "proc", None), ("/tmp", "rw", "tmp"),
            ("/dev/shm", "rw", "shm"), ("/dev/fd", "link", "/proc/self/fd")]
    ops += [(f"/dev/{d}", "dev", f"/dev/{d}") for d in _DEVICES]
    ops += [(f"/dev/{name}", "link", f"/proc/self/fd/{i}") for i, name in enumerate(("stdin", "stdout", "stderr"))]
    ops.append((os.path.expanduser("~"), "dir", None))  # HOME: there, empty and read-only
    ops.append((workdir, "rw", "work"))
    for entry in sorted(os.listdir(workdir)):
        # nbgrader's copy of the submission stays out: test inputs could be read back from it.
        # So do links, which could lead anywhere.
        path = os.path.join(workdir, entry)
        if not entry.endswith(".ipynb") and entry != ".ipynb_checkpoints" and not os.path.islink(path):
            ops.append((path, "ro", path))
    if sockets:
        ops.append((sockets, "sockets", os.path.realpath(sockets)))
    if connection:
        ops.append((connection, "file", pathlib.Path(connection).read_bytes()))
    ops = list({(op[0], op[1]): op for op in ops}.values())
    # Parents first; at one depth, covers last, so that they hide what a bind there would show.
    return sorted(ops, key=lambda op: (op[0].rstrip("/").count("/"), op[1] == "cover"))


def _build(ops: list[tuple], new: str, old: str, rw: str, owner: tuple[int, int], sources: dict) -> list[str]:
    """Carry out ``ops`` under ``new``, reading the host under ``old``; returns the writable targets."""
    writable = []

    def point(target, is_dir):
        t = new + target
        if is_dir:
            os.makedirs(t, exist_ok=True)
        elif not os.path.lexists(t):
            os.makedirs(os.path.dirname(t), exist_ok=True)
            open(t, "a").close()
        return t

    for target, kind, source in ops:
        if kind in ("ro", "dev", "sockets"):
            src = old + source
            if not os.path.lexists(src):
                continue
            t = point(target, os.path.isdir(src))
            _mount(src, t, None, MS_BIND | MS_REC)
            if kind == "ro":
                _remount_readonly(t, MS_NODEV)
            else:
                writable.append(target)
        elif kind == "link":
            if not os.path.lexists(new + target):
                os.makedirs(os.path.dirname(new + target), exist_ok=True)
                os.symlink(source, new + target)
        elif kind == "dir":
            point(target, True)
        elif kind == "cover":  # only where an allowed folder shows it
            if os.path.isdir(new + target):
                _mount("tmpfs", new + target, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
            elif os.path.lexists(new + target):
                _mount(old + "/dev/null", new + target, None, MS_BIND)
        elif kind == "proc":
            _mount("proc", point(target, True), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            writable.append(target)
        elif kind == "rw":
            _mount(f"{rw}/{source}", point(target, True), None, MS_BIND)
            writable.append(target)
        elif kind == "file":
            if not os.path.lexists(new + target):
                t = point(target, False)
                pathlib.Path(t).write_bytes(source)
                os.chmod(t, 0o600)
                os.chown(t, *owner)
        elif kind == "package":
            _package(point(target, True), old + source, sources)
    return writable


def _package(target: str, source: str, sources: dict) -> None:
    """The course package, with the SOURCELESS folders as bytecode only."""
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "size=8m,mode=755")
    for entry in os.listdir(source):
        if entry.endswith(".pyc"):
            continue
        src, t = f"{source}/{entry}", f"{target}/{entry}"
        os.mkdir(t) if os.path.isdir(src) else open(t, "a").close()
        if entry not in SOURCELESS:
            _mount(src, t, None, MS_BIND | MS_REC)
    for module, data in sources.items():  # neither the sources nor their __pycache__
        pathlib.Path(f"{target}/{module}.pyc").write_bytes(data)


def _enter(ops: list[tuple], workdir: str, disk: int, owner: tuple[int, int], files: dict, sources: dict) -> None:
    """In fresh mount and PID namespaces: build the kernel's root and move into it."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # A scratch tmpfs on /tmp becomes the root for a moment; the host is then under /oldroot.
    base = "/tmp"
    _mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=755")
    for d in ("newroot", "oldroot", "rw"):
        os.mkdir(f"{base}/{d}")
    _mount(f"{base}/newroot", f"{base}/newroot", None, MS_BIND)
    os.chdir(base)
    _pivot_root(".", "oldroot")
    # Everything the kernel may write, in one tmpfs: the disk limit holds for all of it.
    _mount("tmpfs", "/rw", "tmpfs", MS_NOSUID | MS_NODEV, f"size={disk},mode=755")
    for d, mode in (("tmp", 0o1777), ("shm", 0o1777), ("work", 0o755)):
        os.mkdir(f"/rw/{d}")
        os.chmod(f"/rw/{d}", mode)
    os.chown("/rw/work", *owner)
    for path, data in files.items():  # matplotlib's font list
        os.makedirs(os.path.dirname(f"/rw/tmp/{path}"), exist_ok=True)
        pathlib.Path(f"/rw/tmp/{path}").write_bytes(data)
    for dirpath, dirnames, filenames in os.walk("/rw/tmp"):
        for name in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), *owner)
    writable = _build(ops, "/newroot", "/oldroot", "/rw", owner, sources)
    _umount("/oldroot")
    os.chdir("/newroot")
    _pivot_root(".", ".")
    _umount(".")
    os.chdir("/")
    # Every mount that is not meant to be written is read-only (the root, the package, the covers).
    for p in _mount_points():
        if p in writable or any(_inside(p, w) for w in ("/proc", "/tmp", "/dev/shm", workdir)):
            continue
        try:
            _remount_readonly(p)
        except OSError:
            if not os.statvfs(p).f_flag & 1:  # hidden beneath another mount is fine; writable is not
                raise
    os.chdir(workdir)


def _drop(root: bool, uid: int, gid: int, lim: dict) -> None:
    """Become an unprivileged user with no capabilities, under the limits."""
    refused = _set_limits(lim, processes=True)
    if refused:
        raise OSError(f"the {', '.join(refused)} limit was refused")
    if root:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)  # from root to another user: every capability goes
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    # If the launcher is killed (nbgrader's SIGKILL), the kernel and with it its namespace go too.
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")


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
    ops = _plan(workdir, sockets, connection)
    files = {f"matplotlib/{name}": data for name, data in _font_caches().items()}
    sources = sourceless()
    root = os.geteuid() == 0
    uid, gid = (KERNEL_UID_BASE + os.getpid(),) * 2 if root else (os.getuid(), os.getgid())
    env = kernel_env(os.path.expanduser("~"), "/tmp")
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if root:
        if sockets:  # the kernel creates its sockets there
            os.chown(sockets, uid, gid)
        _check(_libc.unshare(flags), "unshare")
    else:
        _check(_libc.unshare(flags | CLONE_NEWUSER), "unshare")
        pathlib.Path("/proc/self/setgroups").write_text("deny")
        pathlib.Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        pathlib.Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    errors_r, errors_w = os.pipe()  # both close on exec: EOF says the kernel started
    pid = os.fork()
    if pid == 0:  # PID 1 of the new namespace
        try:
            os.close(errors_r)
            os.setsid()  # signals reach the kernel through the launcher only
            _enter(ops, workdir, lim["disk"], (uid, gid), files, sources)
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
        readable = readable_paths(empty)
    lim = limits()
    out = {"isolation": "", "limits": {"memory": f"{lim['memory'] / 2**30:g} GiB (ATTNLAB_KERNEL_MEMORY)",
                                       "cpu": f"{lim['cpu']} s for the whole notebook (ATTNLAB_KERNEL_CPU)",
                                       "disk": f"{lim['disk'] / 2**20:g} MiB written (ATTNLAB_KERNEL_DISK)",
                                       "processes": f"{lim['processes']} processes and threads "
                                                    "(ATTNLAB_KERNEL_PROCESSES)",
                                       "output": f"{lim['output']:,} characters per cell (ATTNLAB_KERNEL_OUTPUT)"},
           "readable": readable + [str(PACKAGE) + f" ({', '.join(SOURCELESS)}/ as bytecode only)"],
           "hidden": secret_paths(), "environment": sorted(kernel_env(os.path.expanduser("~"), "/tmp"))}
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
        cmd = [sys.executable, "-c", _PROBE, str(ROOT), *secret_paths()]
    else:
        cap = f"import attnlab.instructor.grading_kernel as _k; _k.setup({lim['output']}); del _k"
        cmd = [sys.executable, "-m", "ipykernel_launcher", *argv, f"--IPKernelApp.exec_lines={cap}"]
    linux = sys.platform.startswith("linux")
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
