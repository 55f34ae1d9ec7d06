"""Backend selection shared by every op in ``flopkit.kernels``.

``backend="auto"`` runs the Triton kernel on CUDA tensors and the PyTorch reference
elsewhere; ``"triton"`` forces the kernel (on CPU tensors only under
``TRITON_INTERPRET=1``); ``"torch"`` forces the reference.
"""

from __future__ import annotations

import importlib.util
import os

import torch

__all__ = [
    "register_norm_ops",
    "BACKENDS",
    "SUPPORTED_DTYPES",
    "resolve_backend",
    "check_dtype",
    "triton_available",
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


def resolve_backend(backend: str, x: torch.Tensor, op: str) -> str:
    """Return ``"triton"`` or ``"torch"`` for an op on tensor ``x``.

    Raises ``ValueError`` for an unknown backend and ``RuntimeError`` when
    ``backend="triton"`` cannot run (no triton, or CPU tensors without the interpreter).
    """
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    usable = x.is_cuda or (x.device.type == "cpu" and triton_interpret())
    if backend == "auto":
        return "triton" if x.is_cuda and triton_available() else "torch"
    if not triton_available():
        raise RuntimeError(f"{op}: backend='triton' needs the triton package, which is not installed")
    if not usable:
        raise RuntimeError(
            f"{op}: backend='triton' needs CUDA tensors (got device {x.device.type!r}); "
            "CPU tensors run the kernel only under TRITON_INTERPRET=1"
        )
    return "triton"


def check_dtype(x: torch.Tensor, name: str, op: str) -> None:
    """Raise ``TypeError`` unless ``x`` is float32, float16 or bfloat16."""
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{op}: {name} must be float32, float16 or bfloat16, got {x.dtype} "
            "(cast it first, e.g. x.float())"
        )


def register_norm_ops() -> None:
    """Register the ``flopkit::`` norm custom ops (fake impls, autograd, FLOP formulas).

    Deferred to the first Triton call because ``torch.library`` imports triton, which
    ``import flopkit`` must not do.
    """
    from . import _norm_ops  # noqa: F401
