"""What a graded block switches off in torch: the functions that would answer an exercise outright.

Also :func:`storage_watch`, which a test uses to see whether code materialised
a large tensor: it is a dispatch mode like the ones here.
"""
from __future__ import annotations

import _thread
import collections
import contextlib
import threading

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attnlab.checks.failure import CheckFailed
from attnlab.guard import ReferenceForbidden


# ------------------------------------------------------------------ what a graded block switches off
#
# Torch functions and ATen operators that would answer an exercise outright,
# by name. Like the course's own reference, they are switched off while a
# learner's function is graded, on two levels that watch each other:
#
# - a TorchFunctionMode sees every route by which Python reaches them
#   (torch.nn.functional, torch.*, torch._C._nn, torch._C._VariableFunctions,
#   torch.ops.aten.* and their overloads), also through a name bound early with
#   `from torch.nn.functional import scaled_dot_product_attention`;
# - a TorchDispatchMode sees the ATen operators torch runs underneath
#   (scaled_dot_product_attention runs _scaled_dot_product_flash_attention_for_cpu
#   or, in its math form, _safe_softmax), whatever switched the Python level off.
#
# rms_norm and multi_head_attention_forward decompose into ordinary operators
# before the dispatch level (outside inference mode), so for them the dispatch
# mode checks instead that the function mode is still on: each mode refuses
# to go on when it finds the other one popped or disabled.
_SDPA = "torch.nn.functional.scaled_dot_product_attention"
_MHA = "torch.nn.MultiheadAttention"
_RMS = "torch.nn.functional.rms_norm (and nn.RMSNorm)"
_TORCH_ANSWERS = {
    **dict.fromkeys([
        "scaled_dot_product_attention", "_scaled_dot_product_attention_math",
        "_scaled_dot_product_attention_math_for_mps", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_fused_attention_overrideable",
        "_flash_attention_forward", "_flash_attention_forward_no_dropout_inplace", "_efficient_attention_forward",
        "_cudnn_attention_forward", "_triton_scaled_dot_attention", "_fused_sdp_choice",
        "_safe_softmax",  # only the math form of scaled_dot_product_attention runs it
    ], _SDPA),
    **dict.fromkeys(["multi_head_attention_forward", "_native_multi_head_attention", "_triton_multi_head_attention",
                     "_transformer_encoder_layer_fwd"], _MHA),
    **dict.fromkeys(["rms_norm", "_fused_rms_norm"], _RMS),
}
# Backward kernels, switched off where a backward pass must be written by hand.
_BACKWARD_ANSWERS = {
    **dict.fromkeys([
        "_scaled_dot_product_flash_attention_backward", "_scaled_dot_product_flash_attention_for_cpu_backward",
        "_scaled_dot_product_efficient_attention_backward", "_scaled_dot_product_cudnn_attention_backward",
        "_scaled_dot_product_fused_attention_overrideable_backward", "_flash_attention_backward",
        "_efficient_attention_backward", "_cudnn_attention_backward",
    ], f"the backward of {_SDPA}"),
    "_softmax_backward_data": "autograd's softmax backward (_softmax_backward_data)",
    "_fused_rms_norm_backward": f"the backward of {_RMS}",
    # Forward-mode autodiff (torch.func.jvp, jacfwd, torch.autograd.forward_ad) makes and reads dual tensors.
    **dict.fromkeys(["_make_dual", "_unpack_dual", "_new_zeros_with_same_feature_meta", "_has_same_storage_numel"],
                    "forward-mode autodiff (torch.func.jvp, jacfwd, torch.autograd.forward_ad)"),
}
# Autograd itself, by identity (torch.func and torch.autograd.functional end in torch.autograd.grad).
_AUTOGRAD = {
    torch.Tensor.backward: "Tensor.backward",
    torch.autograd.grad: "torch.autograd.grad",
    torch.autograd.backward: "torch.autograd.backward",
}


_BANNED = {False: _TORCH_ANSWERS, True: {**_TORCH_ANSWERS, **_BACKWARD_ANSWERS}}
_NOTHING: dict = {}


def _aten_name(func) -> str:
    """'rms_norm' for torch.ops.aten.rms_norm and torch.ops.aten.rms_norm.default; '' for other namespaces."""
    qualified = getattr(func, "_qualified_op_name", None)  # an OpOverloadPacket
    if qualified is None:
        schema = getattr(func, "_schema", None)  # an OpOverload
        qualified = getattr(schema, "name", "")
    return qualified[len("aten::"):] if qualified.startswith("aten::") else ""


def _torch_name(func) -> str:
    """The name under which a torch function can answer an exercise ('' for anything else)."""
    if isinstance(func, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return _aten_name(func)
    module = getattr(func, "__module__", None) or ""
    return getattr(func, "__name__", "") if module.startswith("torch") else ""


def _forbidden_message(name: str, what: str) -> str:
    if not what.split(" ")[0].endswith("." + name.split(".")[-1]):
        what = f"{name} (part of {what})"
    return f"{what} is switched off while your own code is graded: write this part yourself."


_VERDICTS = collections.defaultdict(dict)


class _Watch:
    """What the two modes of one graded block share: each checks that the other is still on."""

    def __init__(self):
        self.function_mode = self.dispatch_mode = None
        self.handling = 0  # > 0 while the function mode's handler runs (the mode is off the stack then)
        self.dispatching = 0  # the same for the dispatch mode
        self.broken = ""

    def function_mode_on(self) -> bool:
        if self.handling:
            return True
        C = torch._C
        return C._is_torch_function_mode_enabled() and any(
            C._get_function_stack_at(i) is self.function_mode for i in range(C._len_torch_function_stack()))

    def dispatch_mode_on(self) -> bool:
        if self.dispatching:
            return True
        C = torch._C
        return not C._dispatch_tls_is_dispatch_key_excluded(C.DispatchKey.Python) and any(
            C._get_dispatch_stack_at(i) is self.dispatch_mode for i in range(C._len_torch_dispatch_stack()))

    def refuse(self, why: str):
        self.broken = self.broken or why
        raise ReferenceForbidden(f"{why}: the tests refuse to go on. Remove that code and run the notebook again.")


class _TorchAnswersOff(torch.overrides.TorchFunctionMode):
    def __init__(self, banned: dict, by_identity: dict, watch: _Watch, block):
        super().__init__()
        self.watch = watch
        self.attnlab_block = block  # attnlab.guard reads the ban from here too
        self.banned, self.by_identity = banned, by_identity
        # func -> the message that refuses it, or None: a cache shared by the blocks with the same bans,
        # since this runs for every torch call.
        self.verdicts = _VERDICTS[("function", id(banned), id(by_identity))]

    def _verdict(self, func):
        name = self.by_identity.get(func)
        if name is not None:
            return f"{name} is switched off while your own code is graded: write this part yourself."
        name = _torch_name(func)
        return _forbidden_message(name, self.banned[name]) if name in self.banned else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        __tracebackhide__ = True  # IPython leaves this frame out of the learner's traceback  # noqa: F841
        try:
            verdict = self.verdicts[func]
        except KeyError:
            verdict = self.verdicts[func] = self._verdict(func)
        except TypeError:  # not hashable
            verdict = self._verdict(func)
        if verdict is not None:
            raise ReferenceForbidden(verdict)
        watch = self.watch
        if not watch.dispatching and not watch.dispatch_mode_on():
            watch.refuse("your code switched off the grading's watch on torch's operators (a dispatch mode "
                         "popped, or torch._C._DisableTorchDispatch)")
        watch.handling += 1
        try:
            return func(*args, **(kwargs or {}))
        finally:
            watch.handling -= 1


class _DispatchMode(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Otherwise torch wraps __torch_dispatch__ to keep torch.compile out of it, which imports
        # torch._dynamo (seconds) on the first operator and adds a call to every one. Nothing compiles here.
        return False


class _AtenAnswersOff(_DispatchMode):
    def __init__(self, banned: dict, watch: _Watch, block):
        super().__init__()
        self.watch = watch
        self.attnlab_block = block
        self.banned = banned
        self.verdicts = _VERDICTS[("dispatch", id(banned))]  # OpOverload -> the message that refuses it, or None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        __tracebackhide__ = True  # IPython leaves this frame out of the learner's traceback  # noqa: F841
        try:
            verdict = self.verdicts[func]
        except KeyError:
            name = _aten_name(func)
            verdict = self.verdicts[func] = (_forbidden_message(f"torch.ops.aten.{name}", self.banned[name])
                                             if name in self.banned else None)
        if verdict is not None:
            raise ReferenceForbidden(verdict)
        watch = self.watch
        if not watch.handling and not watch.function_mode_on():
            watch.refuse("your code switched off the grading's watch on torch functions (a torch function "
                         "mode popped or replaced, or torch._C.DisableTorchFunction)")
        watch.dispatching += 1
        try:
            return func(*args, **(kwargs or {}))
        finally:
            watch.dispatching -= 1


_STACKS = {  # (length, get, pop, push) of torch's function and dispatch mode stacks
    "function": (torch._C._len_torch_function_stack, torch._C._get_function_stack_at,
                 torch._C._pop_torch_function_stack, torch._C._push_on_torch_function_stack),
    "dispatch": (torch._C._len_torch_dispatch_stack, torch._C._get_dispatch_stack_at,
                 lambda: torch._C._pop_torch_dispatch_stack(None), torch._C._push_on_torch_dispatch_stack),
}


def _stack(kind: str) -> list:
    length, at, _, _ = _STACKS[kind]
    return [at(i) for i in range(length())]


def _leave(kind: str, mode, base: int) -> bool:
    """Take ``mode`` off its stack with whatever a learner left above it; False if it was not on top."""
    length, _, pop, push = _STACKS[kind]
    modes = _stack(kind)
    on_top = bool(modes) and modes[-1] is mode
    if any(m is mode for m in modes):
        while _stack(kind)[-1] is not mode:
            pop()
    else:  # popped by the learner's code: put it back so that its own exit restores torch's flags
        while length() > base:
            pop()
        push(mode)
    mode.__exit__(None, None, None)
    return on_top


@contextlib.contextmanager
def torch_answers_off(block, no_autograd: bool):
    """Push the two modes; on the way out, fail when the learner's code popped, replaced or disabled them."""
    C = torch._C
    banned = _BANNED[no_autograd]
    watch = _Watch()
    watch.function_mode = _TorchAnswersOff(banned, _AUTOGRAD if no_autograd else _NOTHING, watch, block)
    watch.dispatch_mode = _AtenAnswersOff(banned, watch, block)
    base = {kind: len(_stack(kind)) for kind in _STACKS}
    watch.function_mode.__enter__()
    watch.dispatch_mode.__enter__()
    try:
        yield watch
    finally:
        problems = [watch.broken] if watch.broken else []
        if not C._is_torch_function_mode_enabled() or C._dispatch_tls_is_dispatch_key_excluded(C.DispatchKey.Python):
            problems.append("torch functions or dispatch were left disabled")
        if not _leave("dispatch", watch.dispatch_mode, base["dispatch"]):
            problems.append("a torch dispatch mode was popped, or pushed and left")
        if not _leave("function", watch.function_mode, base["function"]):
            problems.append("a torch function mode was popped, or pushed and left")
        if problems:
            raise CheckFailed(f"{'; '.join(dict.fromkeys(problems))}: your code turned the grading's guard off. "
                              "The tests refuse such code; remove it and run the notebook again.")


def pop_leftover_modes() -> None:
    """Take off torch's stacks the course's own modes that a learner's code left on top."""
    for length, at, pop, _ in _STACKS.values():
        while length() and isinstance(at(length() - 1), (_TorchAnswersOff, _AtenAnswersOff)):
            pop()


# What starts a thread, in each Python version: threading.Thread.start and _thread's own functions.
_THREAD_STARTERS = [(threading, "_start_new_thread"), (threading, "_start_joinable_thread"),
                    (_thread, "start_new_thread"), (_thread, "start_new"), (_thread, "start_joinable_thread")]


@contextlib.contextmanager
def threads_too(block, no_autograd: bool, watch: _Watch):
    """Torch keeps its modes per thread: a thread that the learner's code starts inside the block would
    run without them. Every thread started in the block runs its function under the same bans, and
    what it switched off fails the block."""
    saved = [(owner, name, getattr(owner, name)) for owner, name in _THREAD_STARTERS if hasattr(owner, name)]

    def banned(start):
        def start_banned(function, *args, **kwargs):
            def run(*a, **k):
                try:
                    with torch_answers_off(block, no_autograd):
                        return function(*a, **k)
                except CheckFailed as e:  # the thread's own failure would go unseen: the block fails instead
                    watch.broken = watch.broken or f"in a thread: {str(e).split(':')[0]}"
            return start(run, *args, **kwargs)
        return start_banned

    for owner, name, start in saved:
        setattr(owner, name, banned(start))
    try:
        yield
    finally:
        for owner, name, start in saved:
            setattr(owner, name, start)


class _StorageWatch(_DispatchMode):
    """Records the largest storage behind any tensor an ATen operation returns,
    including the copies torch makes inside a call (a broadcasting matmul, say)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


@contextlib.contextmanager
def storage_watch():
    """``with storage_watch() as w: ...``; then ``w.largest`` is the largest
    storage (in bytes) of any tensor produced inside the block. A view such as
    ``expand`` shares its input's storage; a real copy has a storage of its own,
    so this tells whether code materialised a large tensor."""
    watch = _StorageWatch()
    with watch:
        yield watch
