"""What crosses between the grading kernel and the checker: data, never code.

A message is a JSON header followed by raw buffers, one per tensor. Values
are ``None``, booleans, ints, floats, strings, lists, tuples and dicts with
string keys, torch dtypes and devices, plain tensors (dtype, shape, whether
they require grad, their bytes) and references to objects that stay on the
other side (:class:`Ref`). Decoding builds only these: nothing that arrives
can make the checker run code (no pickle), whatever the kernel sends.
"""
from __future__ import annotations

import json
import math
import socket
import struct

import torch

MAX_MESSAGE = 1 << 30  # a checker refuses a message over 1 GiB rather than exhaust its memory
_HEADER = struct.Struct("!Q")


class WireError(ValueError):
    """What came over the wire is not a message of this protocol (or is too large)."""


class Name:
    """A name in the learner's notebook, looked up there each time it is used."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = str(name)


# The type name of a Ref to a function of the checker's that a test hands the learner's code (the
# encodings is_relative checks, the fake GPU's clock): the kernel calls it back, never runs it.
CALLBACK = "<the checker's function>"


class Ref:
    """An object that lives on the other side, by its number there (and its type's name, for messages)."""

    __slots__ = ("id", "type_name")

    def __init__(self, id: int, type_name: str = "object"):
        self.id, self.type_name = int(id), str(type_name)

    def __repr__(self):
        return f"Ref({self.id}, {self.type_name!r})"


_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)}
# bytes of a tensor as numpy sees them; the ones numpy lacks travel as same-sized integers
_VIA = {torch.bfloat16: torch.int16}


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    if t.dtype in _VIA:
        t = t.view(_VIA[t.dtype])
    return t.numpy().tobytes()


def _tensor_from(meta: dict, data: bytes) -> torch.Tensor:
    dtype = _DTYPES.get(meta.get("dtype"))
    shape = meta.get("shape")
    if dtype is None or not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        raise WireError(f"a tensor of dtype {meta.get('dtype')!r} and shape {shape!r} is not one this course sends")
    via = _VIA.get(dtype, dtype)
    n = math.prod(shape)
    if len(data) != n * torch.empty((), dtype=via).element_size():
        raise WireError("a tensor's bytes do not match its shape")
    t = torch.frombuffer(bytearray(data), dtype=via) if n else torch.empty(0, dtype=via)
    t = t.view(dtype).reshape(shape).clone()
    if meta.get("grad") and t.is_floating_point():
        t.requires_grad_()
    return t


def encode(value, buffers: list, ref_of=None, tag=None):
    """``value`` as JSON-able data, tensors' bytes appended to ``buffers``.

    ``ref_of(obj)`` may swap any object for what to send instead (a :class:`Ref`, say); without it an
    object that is not plain data is refused. ``tag(tensor)`` gives the number under which the other
    side may refer back to that tensor later (``{"$ref": n}``), or None."""
    if value is None or type(value) in (bool, str):
        return value
    if type(value) is int:
        return value if abs(value) < 2**63 else {"$int": str(value)}
    if type(value) is float:
        return value if math.isfinite(value) else {"$float": repr(value)}
    if type(value) in (list, tuple):
        items = [encode(v, buffers, ref_of, tag) for v in value]
        return items if type(value) is list else {"$tuple": items}
    if type(value) is dict and all(type(k) is str for k in value):
        return {"$dict": {k: encode(v, buffers, ref_of, tag) for k, v in value.items()}}
    if isinstance(value, torch.dtype):
        return {"$dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"$device": str(value)}
    if isinstance(value, Ref):
        return {"$ref": value.id, "type": value.type_name}
    if isinstance(value, Name):
        return {"$name": value.name}
    if ref_of is not None:
        swapped = ref_of(value)
        if swapped is not value:
            return encode(swapped, buffers, None)
    if type(value) in (torch.Tensor, torch.nn.Parameter):
        buffers.append(_tensor_bytes(value))
        meta = {"$tensor": len(buffers) - 1, "dtype": str(value.dtype).removeprefix("torch."),
                "shape": list(value.shape), "grad": bool(value.requires_grad)}
        number = tag(value) if tag is not None else None
        if number is not None:
            meta["id"] = int(number)
        return meta
    raise WireError(f"a {type(value).__name__} cannot be sent")


def decode(data, buffers: list, resolve=None, adopt=None, depth: int = 0):
    """The value :func:`encode` made. ``resolve`` maps a :class:`Ref` or a :class:`Name` to what it stands
    for (default: itself); ``adopt(tensor, number)`` hears of each tensor the sender numbered."""
    if depth > 50:
        raise WireError("a value nested more than 50 deep")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [decode(v, buffers, resolve, adopt, depth + 1) for v in data]
    if type(data) is not dict or len(data) == 0:
        raise WireError(f"{type(data).__name__} is not a value of this protocol")
    if "$tuple" in data:
        return tuple(decode(v, buffers, resolve, adopt, depth + 1) for v in _list(data["$tuple"]))
    if "$dict" in data and type(data["$dict"]) is dict:
        return {str(k): decode(v, buffers, resolve, adopt, depth + 1) for k, v in data["$dict"].items()}
    if "$int" in data or "$float" in data:
        try:
            return int(str(data["$int"])) if "$int" in data else float(str(data["$float"]))
        except ValueError:
            raise WireError("a number that is not one") from None
    if "$dtype" in data:
        if data["$dtype"] not in _DTYPES:
            raise WireError(f"unknown dtype {data['$dtype']!r}")
        return _DTYPES[data["$dtype"]]
    if "$device" in data:
        return torch.device(str(data["$device"]))
    if "$tensor" in data:
        i = data["$tensor"]
        if type(i) is not int or not 0 <= i < len(buffers):
            raise WireError("a tensor refers to a buffer that was not sent")
        t = _tensor_from(data, buffers[i])
        if adopt is not None and type(data.get("id")) is int:
            adopt(t, data["id"])
        return t
    if "$ref" in data and type(data["$ref"]) is int:
        ref = Ref(data["$ref"], str(data.get("type", "object"))[:100])
        return resolve(ref) if resolve else ref
    if "$name" in data and type(data["$name"]) is str:
        name = Name(data["$name"])
        return resolve(name) if resolve else name
    raise WireError("a value of an unknown kind")


def _list(x):
    if type(x) is not list:
        raise WireError("a tuple that is not a list")
    return x


def send(sock: socket.socket, header: dict, buffers=()) -> None:
    """One message: the header as JSON, then each buffer, each with its length."""
    parts = [json.dumps({**header, "$buffers": len(buffers)}).encode(), *buffers]
    sock.sendall(b"".join(_HEADER.pack(len(p)) + p for p in parts))


def _exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("the other side closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _part(sock: socket.socket, budget: list) -> bytes:
    (n,) = _HEADER.unpack(_exactly(sock, _HEADER.size))
    budget[0] -= n
    if budget[0] < 0:
        raise WireError(f"a message over {MAX_MESSAGE:,} bytes")
    return _exactly(sock, n)


def receive(sock: socket.socket) -> tuple[dict, list]:
    """(header, buffers) of the next message."""
    budget = [MAX_MESSAGE]
    try:
        header = json.loads(_part(sock, budget))
    except (UnicodeDecodeError, ValueError) as e:  # JSON that is not, or an int too long to read
        raise WireError(f"a header that is not JSON ({e})") from None
    if type(header) is not dict or type(header.get("$buffers")) is not int or not 0 <= header["$buffers"] < 10_000:
        raise WireError("a header that is not a message of this protocol")
    return header, [_part(sock, budget) for _ in range(header.pop("$buffers"))]
