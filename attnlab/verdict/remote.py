"""The checker's side of a conversation with the grading kernel: the learner's objects as :class:`Remote`
references, and one test cell's connection (:class:`Connection`), which sends the kernel its requests,
answers its stand-ins from the answer key (only for the exercise that builds on them, on inputs no larger
than the test sent) and turns what the kernel's code raised into the test's failure."""
from __future__ import annotations

import socket
import types

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map_only

from attnlab.checks.failure import CheckFailed
from attnlab.verdict import wire


class Remote:
    """Something of the learner's notebook: a name, or an object a call returned. Using it asks the kernel."""

    __slots__ = ("_conn", "_target", "remote_type")

    def __init__(self, conn, target, remote_type: str):
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "remote_type", remote_type)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._conn.op("attr", {"target": self, "name": name})

    def __call__(self, *args, **kwargs):
        return self._conn.op("call", {"target": self, "args": list(args), "kwargs": kwargs})

    def __len__(self):
        n = self._conn.op("len", {"target": self})
        if type(n) is not int or n < 0:
            raise CheckFailed(f"len() of your {self.remote_type} is not a count")
        return n

    def __getitem__(self, key):
        return self._conn.op("item", {"target": self, "key": key})

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __bool__(self):
        return True

    def __repr__(self):
        return f"<your {self.remote_type}>"


class Watch:
    """What a test's ``storage_watch`` block saw the kernel allocate: ``largest``, in bytes."""

    def __init__(self):
        self.largest = 0


class Connection:
    """One run of a test cell (or one request from a cell that is not a test: ``test=False``): the socket to
    the kernel, and the objects and tensors the two sides share."""

    MAX_ANSWERS = 10_000  # requests for the answer key in one test cell
    # Outside a test nothing bounds the inputs by what a test sent: these do (a building block's inputs).
    LARGEST_ELEMENTS, LARGEST_DIMENSION = 1 << 22, 1 << 14

    def __init__(self, sock: socket.socket, answers, workbook: str = "", test: bool = True):
        self.sock, self.answers, self.workbook, self.test = sock, answers, workbook, test
        self.exercise: dict | None = None  # the test's exercise block in force, if any
        self.watch: Watch | None = None  # the test's storage_watch block in force, if any
        self.last_case = ""  # the case of the latest exercise block: what a failed hidden check names
        self.from_kernel: dict[int, tuple[int, torch.Tensor]] = {}  # id(tensor) -> (its number there, tensor)
        self.sent: dict[int, tuple[int, torch.Tensor]] = {}  # id(tensor) -> (the kernel copy's number, tensor)
        self.largest = 0  # the largest size (elements, or one dimension) of a tensor this test sent
        self.answers_asked = 0
        self.callbacks: dict[int, object] = {}  # the test's functions handed to the kernel, by number

    # -- values
    def _ref_of(self, value):
        if isinstance(value, Remote):
            return value._target
        if isinstance(value, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
            number = len(self.callbacks) + 1  # a function of the test's: the kernel may call it back
            self.callbacks[number] = value
            return wire.Ref(number, wire.CALLBACK)
        if isinstance(value, torch.Tensor):
            for table in (self.from_kernel, self.sent):
                if id(value) in table and table[id(value)][1] is value:
                    return wire.Ref(table[id(value)][0], "Tensor")
        return value

    def _tag(self, tensor, grow: bool = True):
        number = -(len(self.sent) + 1)
        self.sent[id(tensor)] = (number, tensor)
        if grow:  # what the test sends bounds what the kernel may ask of the answer key
            self.largest = max(self.largest, tensor.numel(), *tensor.shape)
        return number

    def _within_bounds(self, args) -> None:
        """Refuse to run the answer key on inputs larger than any this test sent: the kernel chooses them, and
        a (1, 1, N, 0) query costs nothing to send and N * N to answer."""
        self.answers_asked += 1
        if self.answers_asked > self.MAX_ANSWERS:
            raise CheckFailed(f"your code asked the checker for more than {self.MAX_ANSWERS:,} answers in one test")
        elements, dimension = (8 * max(self.largest, 64),) * 2 if self.test else (
            self.LARGEST_ELEMENTS, self.LARGEST_DIMENSION)
        stack = [args]
        while stack:
            value = stack.pop()
            if isinstance(value, (list, tuple)):
                stack.extend(value)
            elif isinstance(value, dict):
                stack.extend(value.values())
            elif isinstance(value, torch.Tensor) and (value.numel() > elements
                                                      or any(n > dimension for n in value.shape)):
                raise CheckFailed(f"your code handed the course's stand-in a tensor of shape {tuple(value.shape)}, "
                                  + ("larger than anything this test gave it" if self.test else
                                     f"larger than it takes while a notebook is graded ({elements:,} values, "
                                     f"{dimension:,} along any axis)"))

    def _adopt(self, tensor, number):
        self.from_kernel[id(tensor)] = (number, tensor)

    def _resolve(self, ref):
        if not isinstance(ref, wire.Ref):  # a name is the checker's to send, never the kernel's
            raise wire.WireError("the kernel sent a name where a value was due")
        return Remote(self, ref, ref.type_name)

    def encode(self, value, buffers):
        return wire.encode(value, buffers, self._ref_of, self._tag)

    def decode(self, data, buffers):
        return wire.decode(data, buffers, self._resolve, self._adopt)

    # -- requests
    def op(self, op: str, value, exercise: dict | None = None):
        exercise = exercise if exercise is not None else self.exercise
        buffers: list = []
        header = {"op": op, "value": self.encode(value, buffers), "grad": torch.is_grad_enabled(),
                  "exercise": {"names": exercise["names"]} if exercise else None}
        watch = self.watch
        if watch is not None:
            header["watch"] = True
        wire.send(self.sock, header, buffers)
        while True:
            reply, data = wire.receive(self.sock)
            kind = reply.get("op")
            if kind == "reply":
                if watch is not None:
                    largest = reply.get("largest")
                    if type(largest) is not int or largest < 0:
                        raise wire.WireError("the kernel did not say what the watched call allocated")
                    watch.largest = max(watch.largest, largest)
                return self.decode(reply.get("value"), data)
            if kind == "error":
                raise _learner_error(reply, exercise)
            if kind in ANSWERS:
                self.answer(kind, reply, data, exercise)
                continue
            if kind == "callback":
                self.call_back(reply, data)
                continue
            raise wire.WireError(f"the kernel sent {kind!r} where a reply was due")

    def call_back(self, header, data) -> None:
        """The learner's code calls a function the test handed it: run it here, on what the kernel sent; what
        it raises goes back to the learner's code."""
        fn = self.callbacks.get(header.get("id")) if type(header.get("id")) is int else None
        if fn is None:
            raise wire.WireError("the kernel called back a function the test never handed it")
        args = self.decode(header.get("value"), data)
        if type(args) is not dict or type(args.get("args")) is not list or type(args.get("kwargs")) is not dict:
            raise wire.WireError("a call that is not (args, kwargs)")
        self._within_bounds(args)  # bounded like the answer key, and counted with it
        try:
            with budget():
                result = fn(*args["args"], **args["kwargs"])
        except CheckFailed:
            raise
        except Exception as e:  # noqa: BLE001  (the test's function refused the learner's arguments)
            wire.send(self.sock, {"op": "failed", "type": type(e).__name__, "message": str(e)[:2000]})
            return
        buffers: list = []  # what comes back raises no bound: the kernel chose the arguments
        wire.send(self.sock, {"op": "reply", "value": wire.encode(result, buffers, self._ref_of,
                                                                   lambda t: self._tag(t, grow=False))}, buffers)

    @staticmethod
    def _by_hand(exercise) -> bool:
        from attnlab.checks import exercises

        return exercises.lookup(*exercise["names"]).by_hand

    def given(self, exercise) -> tuple[str, ...]:
        """What the kernel may ask the answer key for now: inside an exercise block, the earlier exercises it
        uses and what it is given; in a test, outside one, the workbook's building blocks; in a cell that is
        not a test, also those only some exercises are given."""
        from attnlab.checks import exercises

        if exercise:
            spec = exercises.lookup(*exercise["names"])
            return (*spec.uses, *spec.given)
        return exercises.given_of(self.workbook, everywhere=not self.test) if self.workbook else ()

    def answer(self, kind, header, data, exercise=None):
        """A stand-in in the kernel asks the answer key: given only what the exercise in force builds on or is
        given (:meth:`given`); an error of the answer key (a building block called with the wrong shapes) goes
        back to the learner's code, which raised it."""
        name = str(header.get("name"))[:200]
        allowed = self.given(exercise)
        classes = {g.split(".")[0] for g in allowed if "." in g}
        owner = name.split(".")[0]
        if kind == "describe":  # a name the workbook hands out: a function, or a class with a method given
            ok = "." not in name and (name in allowed or name in classes)
        elif kind == "method":  # a method of a class handed out
            ok = "." in name and owner in classes
        else:  # a function handed out
            ok = "." not in name and name in allowed
        if not ok or name.startswith("_") or not hasattr(self.answers, owner):
            wire.send(self.sock, {"op": "refused", "message": f"the answer key gives {name} only to the test of "
                                                             "an exercise that builds on it"})
            if self.test:
                raise CheckFailed(f"your code called the course's {name}, which is switched off while this "
                                  "exercise is graded: write this part yourself instead of calling the course's "
                                  "answer")
            return
        if kind == "answer_vjp" and exercise and self._by_hand(exercise):
            wire.send(self.sock, {"op": "refused", "message": "no gradients of the course's while autograd is off"})
            raise CheckFailed(f"your code asked the checker for a gradient through the course's {owner} in an "
                              "exercise whose gradients are written by hand")
        args = self.decode(header.get("value"), data)
        try:
            result = self._compute(kind, name, args)
        except wire.WireError:
            raise
        except CheckFailed as e:  # too large, too many: the test's failure; outside a test, the call's
            if self.test:
                raise
            wire.send(self.sock, {"op": "failed", "type": "ValueError", "message": str(e)[:2000]})
            return
        except Exception as e:  # noqa: BLE001  (the learner's arguments, refused by the answer key)
            wire.send(self.sock, {"op": "failed", "type": type(e).__name__, "message": str(e)[:2000]})
            return
        buffers: list = []
        wire.send(self.sock, {"op": "reply", "value": wire.encode(result, buffers)}, buffers)

    @staticmethod
    def _methods(cls) -> list[str]:
        return [m for m, v in vars(cls).items() if callable(v) and (not m.startswith("_") or m == "__len__")]

    def _compute(self, kind, name, args):
        owner, _, method = name.partition(".")
        found = getattr(self.answers, owner)
        if kind == "describe":
            return {"kind": "class", "methods": self._methods(found)} if isinstance(found, type) else {
                "kind": "function"}
        if type(args) is not dict or type(args.get("args")) is not list or type(args.get("kwargs")) is not dict:
            raise wire.WireError("a request for an answer that is not (args, kwargs)")
        if (kind == "method") != isinstance(found, type) or (
                kind == "method" and method not in ("__init__", *self._methods(found))):
            raise wire.WireError(f"a request for {name} that is not one of its functions or methods")
        self._within_bounds(args)
        with budget():
            return self._run(kind, name, method, found, args)

    def _run(self, kind, name, method, found, args):
        if kind == "method":
            cls, state = found, args.get("state")
            if method == "__init__":
                obj, result = cls(*args["args"], **args["kwargs"]), None
            else:
                if type(state) is not dict or not all(type(k) is str for k in state):
                    raise wire.WireError("an object's state that is not a dict of names")
                obj = cls.__new__(cls)
                vars(obj).update(state)
                result = getattr(obj, method)(*args["args"], **args["kwargs"])
            return [result, dict(vars(obj))]
        fn = getattr(self.answers, name)
        if kind == "answer":
            result = fn(*args["args"], **args["kwargs"])
        else:
            inputs = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                      for a in args["args"]]
            tensors = [a for a in inputs if isinstance(a, torch.Tensor)]
            with torch.enable_grad():
                out = fn(*inputs, **args["kwargs"])
                outs = [out] if isinstance(out, torch.Tensor) else list(out)
                cots = args["cotangents"]
                pairs = [(o, c) for o, c in zip(outs, cots) if c is not None and o.requires_grad]
                grads = torch.autograd.grad([o for o, _ in pairs], [t for t in tensors if t.requires_grad],
                                            [c for _, c in pairs], allow_unused=True) if pairs else ()
            it = iter(grads)
            result = [next(it, None) if t.requires_grad else None for t in tensors]
            result = [torch.zeros_like(t) if g is None and t.requires_grad else g for t, g in zip(tensors, result)]
        return result


ANSWERS = ("answer", "answer_vjp", "describe", "method")  # what a stand-in in the kernel asks the answer key


class budget(TorchDispatchMode):
    """While the checker computes for the kernel (the answer key, a test's function on the kernel's
    arguments), an operation whose result would be larger than LARGEST bytes is refused before it allocates
    (a (1, 16, 4096, 0) query against 4,096 keys is small to send and 1 GiB of scores to answer). A result
    outgrows its inputs where it combines tensors of different shapes (broadcasting, matmul, cat), copies
    a view (an expanded tensor made contiguous), or is built from sizes (repeat, a factory): those are run
    on meta tensors first, which costs nothing; the others cannot outgrow what was already bounded."""

    LARGEST = 1 << 28
    GROWING = frozenset({"repeat", "repeat_interleave", "new_empty", "new_empty_strided", "new_zeros", "new_ones",
                         "new_full", "expand_copy", "index_select", "gather", "embedding", "take", "index"})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if any(t.numel() * t.element_size() > self.LARGEST for t in tensors):  # a view as large as that
            self._refuse(max(t.numel() * t.element_size() for t in tensors), func)
        if not tensors or len({tuple(t.shape) for t in tensors}) > 1 or \
                func.__name__.split(".")[0] in self.GROWING:
            self._foresee(func, args, kwargs)
        return func(*args, **kwargs)

    def _foresee(self, func, args, kwargs):
        meta = lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")  # noqa: E731
        on_meta = {**tree_map_only(torch.Tensor, meta, kwargs), **({"device": torch.device("meta")}
                                                                    if "device" in kwargs else {})}
        try:
            shapes = func(*tree_map_only(torch.Tensor, meta, args), **on_meta)
        except Exception:  # noqa: BLE001  (an operation without a meta form: nothing to foresee)
            return
        size = sum(t.numel() * t.element_size() for t in tree_flatten(shapes)[0] if isinstance(t, torch.Tensor))
        if size > self.LARGEST:
            self._refuse(size, func)

    def _refuse(self, size, func):
        raise CheckFailed(f"your code asked the checker for a result of {size / 2**30:.1f} GiB "
                          f"({func.__name__}); it answers up to {self.LARGEST / 2**30:.2f} GiB at a time")


def _learner_error(reply: dict, exercise: dict | None) -> BaseException:
    kind, message = str(reply.get("type", "Error"))[:80], str(reply.get("message", ""))[:1000]
    if kind == "NotImplementedError":
        names = " and ".join((exercise or {}).get("names") or ["the exercise"])
        return NotImplementedError(message or f"{names}: not written yet")
    if kind == "CheckFailed":  # the kernel's own second line (a replaced checker); its words, for the learner
        return CheckFailed(message)
    case = (exercise or {}).get("case") or ""
    where = "\n".join(str(w)[:300] for w in (reply.get("where") or [])[:8] if isinstance(w, str))
    error = CheckFailed(f"{case + ': ' if case else ''}your code raised {kind}: {message}",
                        brief=f"{case + ': ' if case else ''}your code raised {kind}")
    error.where = where
    return error
