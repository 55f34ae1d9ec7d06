"""How a call of a ``flopkit.kernels`` op reaches its kernel: the route, decided once per call.

:func:`route` is the one decision of a public op's call (:class:`Route`): the PyTorch reference,
the eager kernel path, or the ``flopkit::`` custom op. ``backend="auto"`` runs the Triton kernel on
CUDA tensors and the PyTorch reference elsewhere; ``"triton"`` forces the kernel (on CPU tensors
only under ``TRITON_INTERPRET=1``); ``"torch"`` forces the reference.

The public ops then call one of the two entries that ``_opspec.KernelOp`` generates from each op's
one spec (``_norm_ops.py``, ``_rope_ops.py``).
"""

from __future__ import annotations

import enum
import functools
import importlib.util
import os

import torch

__all__ = [
    "Route",
    "REFERENCE",
    "KERNEL",
    "CUSTOM_OP",
    "route",
    "runs_reference_in_op",
    "ops_observed",
    "BACKENDS",
    "SUPPORTED_DTYPES",
    "resolve_backend",
    "check_dtype",
    "eager_kernel",
    "triton_available",
    "num_sms",
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


class Route(enum.Enum):
    """Where one call of a public op runs, decided once by :func:`route`."""

    REFERENCE = "reference"
    """The PyTorch reference (``*_ref``): ``backend="torch"``, ``"auto"`` off CUDA, float64."""
    KERNEL = "kernel"
    """The eager hot path: the op's autograd Function (or, with no gradient needed, the launcher
    alone) launches the Triton kernel through ``_launch.launch``, skipping the dispatcher."""
    CUSTOM_OP = "custom_op"
    """Through the op's ``flopkit::`` custom op: under ``torch.compile``, a dispatch mode
    (``FlopCounterMode``, FakeTensor, opcheck), a JIT trace (fvcore), on meta tensors, or on a CPU
    tensor whose op runs the reference inside (:func:`route_through_custom_ops`)."""


REFERENCE, KERNEL, CUSTOM_OP = Route.REFERENCE, Route.KERNEL, Route.CUSTOM_OP


def route(backend: str | Route, x: torch.Tensor, op: str, *, dtypes: bool = True) -> Route:
    """The one decision of a public op's call: where it runs (:class:`Route`), for tensor ``x``.

    ``backend`` is ``"auto"`` (Triton on CUDA tensors, the reference elsewhere), ``"triton"`` (the
    kernel; on CPU tensors only under ``TRITON_INTERPRET=1``), ``"torch"`` (the reference), or a
    :class:`Route` a caller already decided (returned as it is). Inside
    :func:`route_through_custom_ops` ``"auto"`` and ``"triton"`` take the custom op on any device.
    With ``dtypes`` the dtype rule applies too: float32, float16 and bfloat16 take either path;
    float64 runs the reference (``backend="triton"`` with it is a ``TypeError``); any other dtype
    is a ``TypeError``.

    Raises ``ValueError`` for an unknown backend and ``RuntimeError`` when ``backend="triton"``
    cannot run (no triton, or CPU tensors without the interpreter).
    """
    if backend.__class__ is Route:
        return backend
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        kernel = False
    elif _ROUTE_DEPTH > 0:
        kernel = True  # the custom op, which runs the reference on CPU and its fake on meta
    elif backend == "auto":
        kernel = _TRITON_AVAILABLE and x.is_cuda
    else:
        if not _TRITON_AVAILABLE:
            raise RuntimeError(f"{op}: backend='triton' needs the triton package, which is not installed")
        if not (x.is_cuda or (x.device.type == "cpu" and triton_interpret())):
            raise RuntimeError(
                f"{op}: backend='triton' needs CUDA tensors (got device {x.device.type!r}); "
                "CPU tensors run the kernel only under TRITON_INTERPRET=1"
            )
        kernel = True
    if dtypes:
        if x.dtype == torch.float64:
            if backend == "triton":
                raise TypeError(
                    f"{op}: the Triton kernel takes float32, float16 or bfloat16, got float64 "
                    "(backend='torch' or 'auto' runs the float64 reference)"
                )
            return REFERENCE
        if x.dtype not in SUPPORTED_DTYPES:
            check_dtype(x, "x", op)
    if not kernel:
        return REFERENCE
    # The kernel, through its custom op where something must see the op (or trace it), else
    # directly. is_compiling() first: Dynamo folds it to a constant and never traces the calls after
    # it. torch._C._is_tracing() is torch.jit.is_tracing() less its TorchScript check (flopkit's
    # ops are never scripted), and a CUDA tensor skips the device-type checks: the eager hot path.
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0 or torch._C._is_tracing():
        return CUSTOM_OP
    if x.is_cuda:
        return KERNEL
    return CUSTOM_OP if x.device.type == "meta" or runs_reference_in_op(x) else KERNEL


def eager_kernel(backend: str, op: str, tensors: list[tuple[str, torch.Tensor]]) -> bool:
    """Whether a call of an op whose Triton path runs in eager code only (``scale_rows``,
    ``embed_tokens``: everywhere else its reference, which Inductor fuses) takes the kernels:
    :func:`route` on the first of ``tensors`` (``(name, tensor)`` pairs) says :data:`KERNEL`, and
    none is float64. Each tensor must be float32, float16, bfloat16 or float64 (``TypeError``
    naming it otherwise, and for float64 with ``backend="triton"``)."""
    wide = False
    for name, t in tensors:
        if t.dtype != torch.float64:
            check_dtype(t, name, op)
        elif backend == "triton":
            raise TypeError(
                f"{op}: the Triton kernels take float32, float16 or bfloat16, got {name} float64 "
                "(backend='torch' or 'auto' runs the float64 reference)"
            )
        else:
            wide = True
    return not wide and route(backend, tensors[0][1], op, dtypes=False) is KERNEL


def resolve_backend(backend: str, x: torch.Tensor, op: str) -> str:
    """``"triton"`` or ``"torch"``: whether a call on ``x`` runs the kernel (directly or through its
    custom op) or the reference, by :func:`route`'s rules without the dtype rule.

    Raises ``ValueError`` for an unknown backend and ``RuntimeError`` when
    ``backend="triton"`` cannot run (no triton, or CPU tensors without the interpreter).
    """
    return "torch" if route(backend, x, op, dtypes=False) is REFERENCE else "triton"


def check_dtype(x: torch.Tensor, name: str, op: str) -> None:
    """Raise ``TypeError`` unless ``x`` is float32, float16 or bfloat16."""
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{op}: {name} must be float32, float16 or bfloat16, got {x.dtype} "
            "(cast it first, e.g. x.float())"
        )


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


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA ``device`` (persistent grids size themselves by it);
    4 elsewhere, so that the interpreter runs a few programs and exercises the persistent loops."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _arch(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm{major}{minor}"


def device_arch(device: torch.device) -> str:
    """The architecture a launcher's tile tables are keyed by: ``sm90`` for a CUDA device of compute
    capability 9.0 (H100, H200), ``cpu`` elsewhere (the Triton interpreter)."""
    if device.type != "cuda":
        return device.type
    return _arch(device.index if device.index is not None else torch.cuda.current_device())
