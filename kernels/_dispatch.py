"""Backend selection shared by every op in ``flopkit.kernels``.

``backend="auto"`` runs the Triton kernel on CUDA tensors and the PyTorch reference
elsewhere; ``"triton"`` forces the kernel (on CPU tensors only under
``TRITON_INTERPRET=1``); ``"torch"`` forces the reference.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "runs_reference_in_op",
    "needs_custom_op",
    "ops_observed",
    "BACKENDS",
    "SUPPORTED_DTYPES",
    "resolve_backend",
    "select_backend",
    "check_dtype",
    "triton_available",
    "num_sms",
    "direct_apply",
]

BACKENDS = ("auto", "triton", "torch")
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def triton_interpret() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Looked up once at import (without importing triton): a plain constant, so that
# torch.compile traces the dispatch without guarding on a cached function.
_TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (checked without importing it)."""
    return _TRITON_AVAILABLE


# How many ``route_through_custom_ops`` contexts (kernels/_routing.py) are open. A plain module
# global (not a ContextVar): torch.compile traces reads of it and guards on it.
_ROUTE_DEPTH = 0
# How many ``replay_cuda_paths`` contexts are open: a meta-device replay of a CUDA step
# (``flopkit.memory``), under which models take the structure they take on CUDA.
_REPLAY_DEPTH = 0


def runs_reference_in_op(x: torch.Tensor) -> bool:
    """True when a ``flopkit::`` custom op called on ``x`` runs the PyTorch reference: a CPU tensor
    inside :func:`route_through_custom_ops` (counting needs the op, not the kernel) or under a
    dispatch mode, or a CPU tensor with no Triton interpreter to run the kernel."""
    if x.device.type != "cpu":
        return False
    # A dispatch mode on a CPU tensor (compile's functional tracing, opcheck, FlopCounterMode):
    # Inductor cannot launch a user Triton kernel on CPU tensors, so the op traces the reference.
    return (
        _ROUTE_DEPTH > 0
        or torch._C._len_torch_dispatch_stack() > 0
        or not (triton_interpret() and triton_available())
    )


def resolve_backend(backend: str, x: torch.Tensor, op: str) -> str:
    """Return ``"triton"`` or ``"torch"`` for an op on tensor ``x``.

    Raises ``ValueError`` for an unknown backend and ``RuntimeError`` when
    ``backend="triton"`` cannot run (no triton, or CPU tensors without the interpreter).
    """
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if _ROUTE_DEPTH > 0:
        return "triton"  # the custom op, which runs the reference on CPU and its fake on meta
    if backend == "auto":
        return "triton" if _TRITON_AVAILABLE and x.is_cuda else "torch"
    usable = x.is_cuda or (x.device.type == "cpu" and triton_interpret())
    if not triton_available():
        raise RuntimeError(f"{op}: backend='triton' needs the triton package, which is not installed")
    if not usable:
        raise RuntimeError(
            f"{op}: backend='triton' needs CUDA tensors (got device {x.device.type!r}); "
            "CPU tensors run the kernel only under TRITON_INTERPRET=1"
        )
    return "triton"


def select_backend(backend: str, x: torch.Tensor, op: str) -> str:
    """:func:`resolve_backend` plus the dtype rule: float32, float16 and bfloat16 take either path;
    float64 (the tests' references) runs only the reference, so ``backend="triton"`` with it is a
    ``TypeError``; any other dtype is a ``TypeError``."""
    path = resolve_backend(backend, x, op)
    if x.dtype == torch.float64:
        if backend == "triton":
            raise TypeError(
                f"{op}: the Triton kernel takes float32, float16 or bfloat16, got float64 "
                "(backend='torch' or 'auto' runs the float64 reference)"
            )
        return "torch"
    check_dtype(x, "x", op)
    return path


def check_dtype(x: torch.Tensor, name: str, op: str) -> None:
    """Raise ``TypeError`` unless ``x`` is float32, float16 or bfloat16."""
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{op}: {name} must be float32, float16 or bfloat16, got {x.dtype} "
            "(cast it first, e.g. x.float())"
        )


def needs_custom_op(x: torch.Tensor) -> bool:
    """Whether a Triton-path call on ``x`` must go through its ``flopkit::`` custom op rather than
    straight to the launcher: under ``torch.compile``, a dispatch mode (``FlopCounterMode``,
    FakeTensor), a JIT trace (fvcore), on meta tensors, or when the op runs the reference.

    A plain eager call skips the dispatcher: its Python round trip costs about as much host time
    as a small kernel runs.
    """
    # is_compiling() first: Dynamo folds it to a constant and never traces the calls after it.
    # torch._C._is_tracing() is torch.jit.is_tracing() less its TorchScript check (flopkit's ops
    # are never scripted), and a CUDA tensor skips the device-type checks: the eager hot path.
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0 or torch._C._is_tracing():
        return True
    return not x.is_cuda and (x.device.type == "meta" or runs_reference_in_op(x))


def ops_observed() -> bool:
    """True when something records the aten ops a model runs: a dispatch mode (``FlopCounterMode``,
    FakeTensor, opcheck), a JIT trace (fvcore) or :func:`route_through_custom_ops`. Models then run
    each module's ops as written instead of folding them algebraically (``ViT5Block`` folds its
    second LayerScale into ``fc2``), so that counters attribute every FLOP to its own module.
    Never true while ``torch.compile`` traces (compiled code runs the folded form) or inside
    :func:`~flopkit.kernels.replay_cuda_paths` (a memory replay must see the CUDA structure)."""
    if torch.compiler.is_compiling() or _REPLAY_DEPTH > 0:
        return False
    return _ROUTE_DEPTH > 0 or torch._C._len_torch_dispatch_stack() > 0 or torch.jit.is_tracing()


def replaying_cuda() -> bool:
    """True inside :func:`~flopkit.kernels.replay_cuda_paths`: meta tensors stand for CUDA tensors,
    and a model takes the path it takes on CUDA (folds included) although a dispatch mode (the
    memory trace) records its ops."""
    return _REPLAY_DEPTH > 0


def direct_apply(function: type[torch.autograd.Function]) -> Callable[..., Any]:
    """``function.apply``, calling its C++ implementation directly in plain eager code: without the
    Python wrapper's default-argument binding and functorch bookkeeping, about 1.5 µs less host
    time a call. While ``torch.compile`` traces (Dynamo knows ``apply``, not its C++ half) or a
    functorch transform is active, the wrapper runs. ``function.forward`` must take no default
    arguments."""
    c_apply = torch._C._FunctionBase.__dict__["apply"].__get__(None, function)

    def apply(*args: Any) -> Any:
        # is_compiling() first: Dynamo folds it to True and traces function.apply.
        if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
            return function.apply(*args)
        return c_apply(*args)

    return apply


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA ``device`` (persistent grids size themselves by it);
    4 elsewhere, so that the interpreter runs a few programs and exercises the persistent loops."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
