"""The grading kernel's root file system: what it may read, and the mounts that build it.

:mod:`attnlab.instructor.sandbox` starts the kernel in new mount and PID
namespaces, where :func:`enter` builds it a root of its own from
:func:`plan`: read-only binds of the allow-list (:func:`readable_paths`: the
system's programs and libraries, the Python environment, what
``ATTNLAB_SANDBOX_ALLOW`` adds), the course package with the answer key
(:data:`SOURCELESS`) as bytecode only (:func:`sourceless`; where the checker
judges the notebook, no answer key at all, and the modules of
:data:`ANSWER_COPIES` without the answers they copy), empty folders over
what must stay hidden (:func:`secret_paths`), a fresh ``/proc``, a few
devices, the kernel's folder without the submitted notebook, and one private
``tmpfs`` for all that the kernel writes. The module docstring of
:mod:`attnlab.instructor.sandbox` says what the kernel can and cannot do.

Its only imports are the standard library's: the sandbox's launcher imports it
before ipykernel, and must not import torch.
"""
from __future__ import annotations

import ctypes
import glob
import os
import pathlib
import platform
import sys

PACKAGE = pathlib.Path(__file__).resolve().parent.parent
ROOT = PACKAGE.parent

# Folders of the package whose modules reach the kernel as bytecode only: the answer key.
SOURCELESS = ("answers",)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
# statvfs flag -> mount flag: a remount inside a user namespace must keep these.
_KEEP = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME, 2048: MS_NODIRATIME,
         4096: MS_RELATIME}
# pivot_root has no libc wrapper: its system call number.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "loongarch64": 41, "ppc64le": 203, "s390x": 217}

_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "hosts")
_SYS = ("/sys/devices/system/cpu", "/sys/devices/system/node")  # torch reads the CPU topology
_DEVICES = ("null", "zero", "full", "random", "urandom")


# ------------------------------------------------------------------ what the kernel may read

# Installed libraries that answer exercises outright (transformers' repeat_kv, RMSNorm, YaRN, attention):
# only the parity tests and cells that grading skips use them, so the grading kernel does without.
ANSWERING_LIBRARIES = ("transformers",)


def _libraries() -> list[str]:
    import importlib.util

    out = []
    for name in ANSWERING_LIBRARIES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        out += list(spec.submodule_search_locations or []) if spec else []
    return out


def secret_paths() -> list[str]:
    """What the kernel must never see, even where an allowed path holds it."""
    paths = [ROOT / "solutions", ROOT / "autograde", ROOT / ".git", *_libraries()]
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


def font_caches() -> dict[str, bytes]:
    """matplotlib's font list (file name -> bytes), for the kernel's private config folder:
    rebuilding it prints a warning, which nbgrader would count against a test cell."""
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


# Where the course's checker judges the notebook (ATTNLAB_CHECKER names its socket), the kernel gets no
# answer key at all, not even as bytecode: `from attnlab import answers` finds this. The building blocks a
# workbook hands its learners (workbook 01's attention in workbook 02) are stand-ins that ask the checker.
ABSENT_ANSWERS = '''"""The answer key is not in the grading kernel: the course's checker holds it.

What this workbook is given of it (an earlier workbook's attention, its KVCache) is a stand-in that asks
the checker, which answers the exercise under test only with what that exercise is given."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    from attnlab.verdict import kernel

    try:
        found = kernel.given(name)
    except AttributeError:
        raise AttributeError(f"attnlab.answers.{name} is switched off while a notebook is graded: the grading "
                             "kernel holds no answer key (the course's checker, outside it, does)") from None
    globals()[name] = found
    return found
'''
# Modules outside the answer key that hold copies of answers (the cache arithmetic answers workbooks 01, 02
# and 04's last exercises; the benchmark's layers and the character model attend, normalise and rotate):
# a checked kernel gets each without its guarded functions and methods (the answers), as bytecode, and
# without its source.
ANSWER_COPIES = ("lesson/cache", "lesson/bench", "lesson/bench_layers", "lesson/charlm")
_SWITCHED_OFF = '''
def __getattr__(name):
    if name in _ANSWERS:
        raise AttributeError(f"{__name__}.{name} is switched off while a notebook is graded: it answers an exercise")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
'''


def without_answers(module: str) -> bytes:
    """``attnlab/<module>.py`` compiled without the functions it guards (:func:`attnlab.guard.guarded`)."""
    import ast

    path = PACKAGE / f"{module}.py"
    tree = ast.parse(path.read_text())
    guarded = lambda node: any(getattr(d, "id", getattr(d, "attr", None)) == "guarded"  # noqa: E731
                               for d in getattr(node, "decorator_list", ()))
    answers = [n.name for n in tree.body if guarded(n)]
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        answers += [f"{cls.name}.{n.name}" for n in cls.body if guarded(n)]
        cls.body = [n for n in cls.body if not guarded(n)] or [ast.Pass()]
    tree.body = [n for n in tree.body if not guarded(n)] + ast.parse(
        f"_ANSWERS = {tuple(answers)!r}\n" + _SWITCHED_OFF).body
    return _pyc(tree, f"attnlab/{module}.py")


def _pyc(source, filename: str) -> bytes:
    """``source`` (text or a parsed tree) as a sourceless .pyc."""
    import importlib.util
    import marshal

    code = compile(source, filename, "exec", dont_inherit=True)
    return importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code)


def sourceless(checked: bool | None = None) -> dict[str, bytes]:
    """Every module of the SOURCELESS folders, compiled: {'answers/mha': bytes of its .pyc, ...}; where the
    checker judges the notebook (``checked``; by default, whether ``ATTNLAB_CHECKER`` names the checker of
    the kernel being started), only modules that hold nothing: the answer key's, and those of
    :data:`ANSWER_COPIES`, whose sources the kernel then does not see either (:func:`hidden_sources`)."""
    if checked if checked is not None else bool(os.environ.get("ATTNLAB_CHECKER")):
        out = {"answers/__init__": _pyc(ABSENT_ANSWERS, "attnlab/answers/__init__.py")}
        out.update({module: without_answers(module) for module in ANSWER_COPIES})
        return out
    return {f"{folder}/{p.stem}": compiled(f"{folder}/{p.stem}")
            for folder in SOURCELESS for p in sorted((PACKAGE / folder).glob("*.py"))}


def hidden_sources(sources: dict[str, bytes]) -> set[str]:
    """The modules outside the SOURCELESS folders that ``sources`` replaces: their .py must not be seen."""
    return {m for m in sources if m.split("/")[0] not in SOURCELESS}


# ------------------------------------------------------------------ the system calls

libc = ctypes.CDLL(None, use_errno=True)


def check(rc: int, what: str) -> None:
    """Raise OSError, with errno's words, when a libc call (``what``) returned non-zero ``rc``."""
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else str(s).encode()  # noqa: E731
    check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _umount(target) -> None:
    check(libc.umount2(str(target).encode(), MNT_DETACH), f"umount {target}")


def _pivot_root(new: str, old: str) -> None:
    number = _SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(f"pivot_root: unknown system call number on {platform.machine()}")
    check(libc.syscall(ctypes.c_long(number), new.encode(), old.encode()), "pivot_root")


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

def plan(workdir: str, sockets: str | None, connection: str | None) -> list[tuple]:
    """What the kernel's root holds, as (target, kind, source) in mount order (parents first):
    the allow-list, ``workdir`` (the kernel's folder) but its notebooks, the folder of
    nbgrader's ``sockets`` and the ``connection`` file."""
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
    """The course package, with the SOURCELESS folders as bytecode only, and the modules that ``sources``
    replaces elsewhere (:func:`hidden_sources`) without their sources."""
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "size=8m,mode=755")
    hidden = hidden_sources(sources)
    folders = {m.split("/")[0] for m in hidden}
    for entry in os.listdir(source):
        if entry.endswith(".pyc"):
            continue
        src, t = f"{source}/{entry}", f"{target}/{entry}"
        os.mkdir(t) if os.path.isdir(src) else open(t, "a").close()
        if entry in folders:  # file by file, but the hidden sources and the __pycache__
            for name in os.listdir(src):
                if name == "__pycache__" or name.endswith(".pyc") or f"{entry}/{name[:-3]}" in hidden:
                    continue
                inner = f"{t}/{name}"
                os.mkdir(inner) if os.path.isdir(f"{src}/{name}") else open(inner, "a").close()
                _mount(f"{src}/{name}", inner, None, MS_BIND | MS_REC)
        elif entry not in SOURCELESS:
            _mount(src, t, None, MS_BIND | MS_REC)
    for module, data in sources.items():  # neither the sources nor their __pycache__
        pathlib.Path(f"{target}/{module}.pyc").write_bytes(data)


def enter(ops: list[tuple], workdir: str, disk: int, owner: tuple[int, int], files: dict, sources: dict) -> None:
    """In fresh mount and PID namespaces: build the kernel's root from :func:`plan`'s ``ops`` and move
    into it, in ``workdir``. All it may write (at most ``disk`` bytes) is ``owner``'s (uid, gid);
    ``files`` go into its /tmp, ``sources`` (:func:`sourceless`) into the package."""
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
