"""The norm family's public ops: RMSNorm over the last dimension, the fused residual + RMSNorm
step, the QK-norm over heads with one shared ``(D,)`` weight, and ExLlamaV2-style ``HeadNorm``
(``(H, D)`` weight, optional ``(H, D)`` bias, RMS or Layer mode), with their PyTorch references.

Semantics (docs/vit5.md): ``y = (x_f32 * rsqrt(mean(x_f32**2) + eps) * w_f32).to(x.dtype)``;
per-head inputs are ``[*, H*D]`` (flat heads) or ``[*, H, D]`` and outputs keep the input's shape
and dtype. FLOPs: :func:`flopkit.formulas.rms_norm`, :func:`~flopkit.formulas.per_head_rms_norm`
and :func:`~flopkit.formulas.head_norm` (the residual add of the fused op is not counted).
Each public op decides its call's route once (``_dispatch.route``) and calls the op's eager entry
or its custom op, both generated (``_opspec.KernelOp``) from the op's one spec in ``_norm_ops.py``
(kernel launch, reference, fake, autograd, FLOP formula); the Triton kernels are in
``_norm_triton.py``, the references in ``_reference.py``.
"""

from __future__ import annotations

import torch

from flopkit.formulas import NORM_MODES

from ._dispatch import KERNEL, REFERENCE, check_dtype, route
from ._reference import (
    _normalize_heads,
    check_heads,
    norm_backward_ref,
    residual_dtype,
    rms_norm_ref,
    rms_norm_residual_ref,
    split_heads,
)

__all__ = [
    "rms_norm",
    "rms_norm_ref",
    "rms_norm_residual",
    "rms_norm_residual_ref",
    "residual_dtype",
    "norm_backward_ref",
    "per_head_rms_norm",
    "per_head_rms_norm_ref",
    "head_norm",
    "head_norm_ref",
    "split_heads",
]


_NORM_OPS = None  # kernels/_norm_ops.py once imported


def _ops():
    """The norm family's op specs (``kernels/_norm_ops.py``), registered on first use (the launchers
    import triton, which ``import flopkit`` must not). The eager path
    reads ``_NORM_OPS`` first (``_NORM_OPS if path is KERNEL and _NORM_OPS else _ops()``); the
    custom-op route, which torch.compile traces, calls this function, whose body is an import
    statement and a store: the first trace then installs no guard on the global (a read of it, None
    then, made the second call recompile)."""
    global _NORM_OPS
    from . import _norm_ops

    _NORM_OPS = _norm_ops
    return _norm_ops


def _check_norm_args(x: torch.Tensor, weight: torch.Tensor | None, op: str) -> None:
    if x.dtype != torch.float64:
        check_dtype(x, "x", op)
    if x.dim() == 0:
        raise ValueError(f"{op}: x must have at least one dimension, got a scalar")
    if weight is not None and tuple(weight.shape) != (x.shape[-1],):
        raise ValueError(
            f"{op}: weight must have shape ({x.shape[-1]},) to match x.shape[-1], got {tuple(weight.shape)}"
        )


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6, *, backend: str = "auto"
) -> torch.Tensor:
    """RMSNorm of ``x`` ``[*, D]`` over its last dim, scaled by ``weight`` ``(D,)`` if given.

    Returns a tensor of ``x``'s shape and dtype. ``backend`` is ``"auto"`` (Triton on CUDA,
    reference elsewhere), ``"triton"`` or ``"torch"``; float64 runs only the reference
    (``"triton"`` with it is a TypeError). FLOPs: ``3 * x.numel()``.
    """
    _check_norm_args(x, weight, "rms_norm")
    path = route(backend, x, "rms_norm")
    if path is REFERENCE:
        return rms_norm_ref(x, weight, eps)
    op = (_NORM_OPS if path is KERNEL and _NORM_OPS else _ops()).RMS_NORM
    return (op.eager if path is KERNEL else op.via_op)(x, weight, eps)


def rms_norm_residual(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    scale: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused pre-norm residual step: ``h = residual + x``; returns ``(rms_norm(h, weight), h)``.

    ``x`` (the branch) and ``residual`` are ``[*, D]`` of one shape. With ``scale`` ``(D,)`` (a
    LayerScale ``gamma``), ``h = residual + x * scale``: the block step ``x + ls(branch)`` and the
    next norm in one pass over memory. ``h`` is computed in fp32 and rounded once; ``h`` and the
    output take the dtype PyTorch gives ``residual + x * scale`` (bf16 branch, fp32 residual ->
    fp32). Gradients flow to every input. FLOPs: ``3 * x.numel()`` (the residual add and the scale
    multiply are not counted here: LayerScale's ``T * C`` belong to its module).
    """
    _check_norm_args(x, weight, "rms_norm_residual")
    if residual.shape != x.shape:
        raise ValueError(
            "rms_norm_residual: residual must have x's shape, "
            f"expected {tuple(x.shape)}, got {tuple(residual.shape)}"
        )
    if residual.dtype != torch.float64:
        check_dtype(residual, "residual", "rms_norm_residual")
    if scale is not None:
        if tuple(scale.shape) != (x.shape[-1],):
            raise ValueError(
                f"rms_norm_residual: scale must have shape ({x.shape[-1]},) to match x.shape[-1], "
                f"got {tuple(scale.shape)}"
            )
        if scale.dtype != torch.float64:
            check_dtype(scale, "scale", "rms_norm_residual")
    others = (residual,) if scale is None else (residual, scale)
    if any(t.device != x.device for t in others):
        raise ValueError(f"rms_norm_residual: residual and scale must be on x's device {x.device}")
    # float64 anywhere runs the float64 reference (Triton takes float32, float16 and bfloat16).
    probe = next((t for t in others if t.dtype == torch.float64), x)
    path = route(backend, probe, "rms_norm_residual")
    if path is REFERENCE:
        return rms_norm_residual_ref(x, residual, weight, eps, scale)
    op = (_NORM_OPS if path is KERNEL and _NORM_OPS else _ops()).RMS_NORM_RESIDUAL
    return (op.eager if path is KERNEL else op.via_op)(x, residual, weight, eps, scale)


def per_head_rms_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    num_heads: int,
    eps: float = 1e-6,
    *,
    head_dim: int | None = None,
) -> torch.Tensor:
    """Reference QK-norm: RMSNorm of each head's ``D`` slice of ``x`` with one shared ``(D,)`` weight."""
    D = _shared_head_dim(weight, head_dim, "per_head_rms_norm")
    xh = split_heads(x, num_heads, D, "per_head_rms_norm")
    return _normalize_heads(xh, weight, None, eps, "rms").reshape(x.shape)


def head_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    mode: str = "rms",
    *,
    num_heads: int | None = None,
    head_dim: int | None = None,
) -> torch.Tensor:
    """Reference HeadNorm: per-head RMS (``mode="rms"``) or Layer (``"layer"``) norm.

    ``weight`` and ``bias`` are ``(H, D)`` or None (then ``num_heads`` and ``head_dim`` are needed).
    """
    H, D = _head_shape(weight, bias, num_heads, head_dim)
    xh = split_heads(x, H, D, "head_norm")
    return _normalize_heads(xh, weight, bias, eps, mode).reshape(x.shape)


def per_head_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    num_heads: int,
    eps: float = 1e-6,
    *,
    head_dim: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """QK-norm: RMSNorm over each head's ``D`` slice, one shared ``(D,)`` weight for all heads.

    ``x``: ``[*, H*D]`` or ``[*, H, D]``; ``head_dim`` is needed only when ``weight`` is None.
    Returns ``x``'s shape and dtype. FLOPs: ``3 * N*H*D``.
    """
    D = _shared_head_dim(weight, head_dim, "per_head_rms_norm")
    _check_input(x, "per_head_rms_norm")
    check_heads(x, num_heads, D, "per_head_rms_norm")
    path = route(backend, x, "per_head_rms_norm")
    if path is REFERENCE:
        return per_head_rms_norm_ref(x, weight, num_heads, eps, head_dim=D)
    op = (_NORM_OPS if path is KERNEL and _NORM_OPS else _ops()).PER_HEAD_RMS_NORM
    return (op.eager if path is KERNEL else op.via_op)(x, weight, num_heads, D, eps)


def head_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    mode: str = "rms",
    *,
    num_heads: int | None = None,
    head_dim: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-head RMS or Layer norm with an ``(H, D)`` weight and optional ``(H, D)`` bias.

    ``x``: ``[*, H*D]`` or ``[*, H, D]``; returns ``x``'s shape and dtype.
    FLOPs: ``3 * N*H*D`` (rms) or ``5 * N*H*D`` (layer), ``+ N*H*D`` with bias.
    """
    if mode not in NORM_MODES:
        raise ValueError(f"head_norm: mode must be one of {NORM_MODES}, got {mode!r}")
    H, D = _head_shape(weight, bias, num_heads, head_dim)
    _check_input(x, "head_norm")
    check_heads(x, H, D, "head_norm")
    path = route(backend, x, "head_norm")
    if path is REFERENCE:
        return head_norm_ref(x, weight, bias, eps, mode, num_heads=H, head_dim=D)
    op = (_NORM_OPS if path is KERNEL and _NORM_OPS else _ops()).HEAD_NORM
    return (op.eager if path is KERNEL else op.via_op)(x, weight, bias, H, D, eps, mode)


def _check_input(x: torch.Tensor, op: str) -> None:
    if x.dtype != torch.float64:
        check_dtype(x, "x", op)


def _shared_head_dim(weight: torch.Tensor | None, head_dim: int | None, op: str) -> int:
    if weight is not None:
        if weight.dim() != 1:
            raise ValueError(f"{op}: weight must have shape (head_dim,), got {tuple(weight.shape)}")
        if head_dim is not None and head_dim != weight.shape[0]:
            raise ValueError(f"{op}: head_dim={head_dim} does not match weight shape {tuple(weight.shape)}")
        return int(weight.shape[0])
    if head_dim is None:
        raise ValueError(f"{op}: head_dim must be given when weight is None")
    return head_dim


def _head_shape(
    weight: torch.Tensor | None, bias: torch.Tensor | None, num_heads: int | None, head_dim: int | None
) -> tuple[int, int]:
    shapes = {tuple(t.shape) for t in (weight, bias) if t is not None}
    if len(shapes) > 1:
        raise ValueError(f"head_norm: weight and bias must have the same (H, D) shape, got {sorted(shapes)}")
    if shapes:
        (shape,) = shapes
        if len(shape) != 2:
            raise ValueError(f"head_norm: weight and bias must have shape (H, D), got {shape}")
        if (num_heads, head_dim) != (None, None) and (num_heads, head_dim) != shape:
            raise ValueError(
                f"head_norm: num_heads, head_dim = {num_heads}, {head_dim} do not match weight {shape}"
            )
        return shape
    if num_heads is None or head_dim is None:
        raise ValueError("head_norm: without weight or bias, num_heads and head_dim must be given")
    return num_heads, head_dim
