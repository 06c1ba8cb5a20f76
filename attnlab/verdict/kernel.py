"""The grading kernel's side of a checked test cell: ask the checker to run it, and answer its calls.

While a notebook is graded (or checked by ``make check``), each test cell of a
workbook the checker judges runs only ``run("<grade id>")`` in the kernel. The
checker (:mod:`attnlab.verdict.checker`, in the grader's process) runs the
cell's code itself, and whenever that code uses a name of the notebook
(``attention``, ``MultiHeadAttention``) it asks this side to call it, read an
attribute, take a length or a gradient. Arguments come over as copies (the
checker keeps its own); results go back as data, or as a reference to an
object that stays here. Inside a test's ``exercise`` block each call runs
under :func:`attnlab.checks.exercise_in` (torch's answers off, autograd off
for a backward by hand), with the earlier exercises it uses replaced by
stand-ins that ask the checker, which holds the answer key: the kernel
holds none.

The building blocks a workbook hands its learners (workbook 01's ``attention``
and ``KVCache`` in workbook 02, say) are stand-ins too (:func:`given`): the
kernel's ``attnlab.answers`` holds nothing else. Called during a test they ask
through the test's conversation, which the checker answers only for what that
exercise is given; called from any other cell, through a connection of their
own.

Nothing here decides a score: the checker records its verdict on its side.
The cell's printed lines and its failure are shown here only for the learner.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import socket

import torch

from attnlab.verdict import wire

SOCKET_ENV = "ATTNLAB_CHECKER"
# What an error of the answer key (a building block called with the wrong shapes, say) is raised as here.
_ERRORS = {e.__name__: e for e in (ValueError, TypeError, RuntimeError, IndexError, KeyError, AssertionError)}


class CheckerUnavailable(RuntimeError):
    """No checker to run this test cell (it runs only while a notebook is graded or checked)."""


class _Session:
    """One test cell's conversation with the checker."""

    def __init__(self, sock: socket.socket, namespace: dict):
        self.sock, self.ns = sock, namespace
        self.objects: dict[int, object] = {}  # what the checker may refer to, by number (the checker's are < 0)
        self._numbers = itertools.count(1)

    # -- values
    def _keep(self, obj) -> int:
        number = next(self._numbers)
        self.objects[number] = obj
        return number

    def _ref_of(self, value):
        if type(value) in (torch.Tensor, torch.nn.Parameter):
            return value
        if isinstance(value, (wire.Ref, wire.Name, torch.dtype, torch.device)):
            return value
        return wire.Ref(self._keep(value), type(value).__name__)

    def encode(self, value, buffers):
        return wire.encode(value, buffers, self._ref_of, tag=self._keep)

    def _resolve(self, ref):
        if isinstance(ref, wire.Ref) and ref.type_name == wire.CALLBACK:
            return _Callback(self, ref.id)
        if isinstance(ref, wire.Name):
            if ref.name not in self.ns:
                raise NameError(f"name '{ref.name}' is not defined: did you run the cell that defines it?")
            return self.ns[ref.name]
        if ref.id not in self.objects:
            raise KeyError(f"no object number {ref.id}")
        return self.objects[ref.id]

    def decode(self, data, buffers):
        return wire.decode(data, buffers, self._resolve, adopt=lambda t, n: self.objects.__setitem__(n, t))

    # -- messages
    def request(self, header: dict, value=None):
        """Send ``header`` (with ``value`` encoded), answer whatever the checker asks meanwhile, return its reply."""
        buffers: list = []
        wire.send(self.sock, {**header, "value": self.encode(value, buffers)}, buffers)
        return self.serve(until="reply")

    def serve(self, until: str = "done"):
        while True:
            header, buffers = wire.receive(self.sock)
            op = header.get("op")
            if op == until:
                return header if op == "done" else self.decode(header.get("value"), buffers)
            if op == "refused":
                raise CheckerRefused(str(header.get("message", "")))
            if op == "failed":  # the answer key refused the arguments the learner's code gave it
                raise _ERRORS.get(str(header.get("type")), RuntimeError)(str(header.get("message", ""))[:2000])
            self._answer(op, header, buffers)

    def _answer(self, op, header, buffers):
        try:
            args = self.decode(header.get("value"), buffers)
            extra = {}
            with self._context(header):
                if header.get("watch"):  # the test watches what the call allocates (attnlab.checks.storage_watch)
                    from attnlab.checks.torch_off import storage_watch

                    with storage_watch() as watch:
                        result = self._do(op, args)
                    extra["largest"] = int(watch.largest)
                else:
                    result = self._do(op, args)
            out: list = []
            wire.send(self.sock, {"op": "reply", "value": self.encode(result, out), **extra}, out)
        except (KeyboardInterrupt, ConnectionError, wire.WireError):
            raise
        except BaseException as e:  # noqa: BLE001  (anything the learner's code raised goes back as words)
            wire.send(self.sock, {"op": "error", "type": type(e).__name__, "message": str(e)[:2000],
                                  "where": _where(e)})

    @contextlib.contextmanager
    def _context(self, header):
        with torch.set_grad_enabled(bool(header.get("grad", True))):
            ex = header.get("exercise")
            if not ex:
                yield
                return
            from attnlab.checks import exercises
            from attnlab.checks.graded import exercise_in

            spec = exercises.lookup(*ex["names"])
            saved = {name: self.ns.get(name, _MISSING) for name in spec.uses}
            try:
                self.ns.update({name: _StandIn(name, self) for name in spec.uses})
                with exercise_in(self.ns, allow=spec.given, no_autograd=spec.by_hand):
                    yield
            finally:
                for name, value in saved.items():
                    if value is _MISSING:
                        self.ns.pop(name, None)
                    else:
                        self.ns[name] = value

    @staticmethod
    def _do(op, args):
        if op == "get":
            return args["target"]
        if op == "attr":
            return getattr(args["target"], args["name"])
        if op == "call":
            return args["target"](*args["args"], **args["kwargs"])
        if op == "len":
            return len(args["target"])
        if op == "item":
            return args["target"][args["key"]]
        if op == "vjp":
            grads = torch.autograd.grad(args["outputs"], args["inputs"], args["cotangents"], allow_unused=True)
            return list(grads)
        raise ValueError(f"the checker asked for {op!r}, which this kernel does not do")


class CheckerRefused(RuntimeError):
    """The checker would not run this cell now."""


_MISSING = object()


def _where(error: BaseException) -> list[str]:
    """The lines of the learner's cells the error went through, as a failed check shows them."""
    from attnlab.checks.failure import _cell_lines, drop_course_frames

    try:
        drop_course_frames(error.__traceback__)
        return _cell_lines(error)[:8]
    except Exception:  # noqa: BLE001
        return []


class _Callback:
    """A function of the test's (an encoding to judge, a fake GPU's clock), handed to the learner's code:
    calling it asks the checker to run it."""

    def __init__(self, session: "_Session", number: int):
        self.session, self.number = session, number

    def __call__(self, *args, **kwargs):
        return self.session.request({"op": "callback", "id": self.number}, {"args": list(args), "kwargs": kwargs})

    def __repr__(self):
        return "<a function of the test's, run by the course's checker>"


def _channel(session: "_Session | None" = None):
    """Where a stand-in asks: its test's conversation, the one in progress, or a connection of its own."""
    return session or _current or _ONE_SHOT


class _OneShot:
    """A conversation of one request, for a building block called from a cell that is not a test."""

    @staticmethod
    def request(header: dict, value=None):
        path = os.environ.get(SOCKET_ENV)
        if not path:
            raise CheckerUnavailable("the course's building blocks answer only while a notebook is graded or checked")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return _Session(sock, {}).request(header, value)
        finally:
            sock.close()


_ONE_SHOT = _OneShot()
_current: "_Session | None" = None  # the test cell's conversation in progress


def _on_device_of(args, result):
    """What crossed comes as CPU tensors: give the answer the device of the tensors it was asked about."""
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
    if device is None or device.type == "cpu":
        return result
    if isinstance(result, torch.Tensor):
        return result.to(device)
    if isinstance(result, (list, tuple)):
        return type(result)(_on_device_of(args, r) for r in result)
    return result


class _StandIn:
    """An answer of the course (an earlier exercise, a building block), answered by the checker's answer key,
    which gives the exercise under test only what it is given. ``session``: the test's conversation, where a
    test handed it in; else whichever is in progress when it is called.

    Where a gradient must flow through it, it is an autograd Function whose backward asks the checker too."""

    def __init__(self, name: str, session: "_Session | None" = None):
        self.session, self.name = session, name
        self.__name__ = self.__qualname__ = name

    def __call__(self, *args, **kwargs):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return _RemoteAnswer.apply(self, args, kwargs, *tensors)
        out = _channel(self.session).request({"op": "answer", "name": self.name, "grad": False},
                                             {"args": list(args), "kwargs": kwargs})
        return _on_device_of(args, out)

    def __repr__(self):
        return f"<the course's {self.name}, answered by its checker>"


class _RemoteAnswer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, stand_in, args, kwargs, *tensors):
        ctx.stand_in, ctx.args, ctx.kwargs = stand_in, args, kwargs
        out = _channel(stand_in.session).request({"op": "answer", "name": stand_in.name, "grad": False},
                                                 {"args": list(args), "kwargs": kwargs})
        out = _on_device_of(args, out)
        ctx.single = isinstance(out, torch.Tensor)
        return out if ctx.single else tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        s = ctx.stand_in
        plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in ctx.args]
        got = _channel(s.session).request({"op": "answer_vjp", "name": s.name, "grad": False},
                                          {"args": plain, "kwargs": ctx.kwargs, "cotangents": list(grads)})
        return (None, None, None, *_on_device_of(ctx.args, got))


def _given_class(name: str, methods: list[str]) -> type:
    """A class of the course handed to the learner (``KVCache``): its objects keep their state (tensors) here,
    and each method runs in the checker on that state, which comes back with the result."""

    def method(m):
        def call(self, *args, **kwargs):
            if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
                raise RuntimeError(f"the course's {name} carries no gradients while a notebook is graded: "
                                   "call it under torch.no_grad()")
            state = None if m == "__init__" else dict(vars(self))
            result, new = _channel().request({"op": "method", "name": f"{name}.{m}", "grad": False},
                                             {"state": state, "args": list(args), "kwargs": kwargs})
            vars(self).clear()
            vars(self).update({k: _on_device_of(args, v) for k, v in new.items()})
            return _on_device_of(args, result)

        call.__name__ = call.__qualname__ = m
        return call

    body = {m: method(m) for m in ["__init__", *methods]}
    body["__doc__"] = f"The course's {name}, run by its checker while the notebook is graded."
    body["__module__"] = "attnlab.answers"
    return type(name, (), body)


def given(name: str):
    """The course's ``name`` (a function or a class that this workbook hands its learners), as a stand-in;
    AttributeError when the checker gives this workbook no such thing."""
    try:
        kind = _channel().request({"op": "describe", "name": name, "grad": False})
    except CheckerRefused as e:
        raise AttributeError(str(e)) from None
    if type(kind) is not dict or kind.get("kind") not in ("function", "class"):
        raise AttributeError(f"the checker could not describe attnlab.answers.{name}")
    if kind["kind"] == "class":
        return _given_class(name, [str(m) for m in kind.get("methods", [])])
    return _StandIn(name)


def run(grade_id: str) -> None:
    """Run test cell ``grade_id`` through the checker named by ``ATTNLAB_CHECKER``; show what it found."""
    from IPython import get_ipython

    from attnlab.checks.failure import CheckFailed

    path = os.environ.get(SOCKET_ENV)
    if not path:
        raise CheckerUnavailable("this test cell is run by the course's checker, which only grading and "
                                 "`make check` start")
    global _current
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        session = _Session(sock, get_ipython().user_ns)
        wire.send(sock, {"op": "run", "cell": grade_id})
        _current = session  # the building blocks the learner's code calls meanwhile ask through it
        done = session.serve()
    finally:
        _current = None
        sock.close()
    printed = str(done.get("printed", ""))
    if printed:
        print(printed, end="" if printed.endswith("\n") else "\n")
    if done.get("status") == "pass":
        return
    message = str(done.get("message", "the check failed"))
    if done.get("status") == "todo":
        raise NotImplementedError(message) from None
    raise CheckFailed(message) from None
