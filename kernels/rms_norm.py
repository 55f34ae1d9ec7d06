"""RMSNorm over the last dimension, and the fused residual + RMSNorm step.

Semantics (DESIGN.md §2): ``y = (x_f32 * rsqrt(mean(x_f32**2) + eps) * w_f32).to(x.dtype)``.
FLOPs (DESIGN.md §3): 3 per normalised element; the residual add of the fused op is not
counted (residual adds never are).
"""

from __future__ import annotations

import torch

from ._dispatch import check_dtype, register_norm_ops, select_backend

__all__ = [
    "rms_norm",
    "rms_norm_ref",
    "rms_norm_residual",
    "rms_norm_residual_ref",
    "rms_norm_flops",
    "norm_backward_ref",
]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp32 accumulation for every I/O dtype; a float64 input (tests' references) stays float64.
    return torch.promote_types(dtype, torch.float32)


def rms_norm_flops(num_rows: int, dim: int) -> int:
    """FLOPs of RMSNorm on ``num_rows`` rows of ``dim`` elements: ``3 * num_rows * dim``."""
    return 3 * num_rows * dim


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """PyTorch reference RMSNorm over the last dim of ``x`` ``[*, D]``; ``weight`` ``(D,)`` or None."""
    acc = _acc_dtype(x.dtype)
    xf = x.to(acc)
    y = xf * torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(acc)
    return y.to(x.dtype)


def rms_norm_residual_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference fused step: ``h = x + residual`` (in ``x.dtype``), returns ``(rms_norm(h), h)``."""
    h = x + residual
    return rms_norm_ref(h, weight, eps), h


def norm_backward_ref(
    dy: torch.Tensor,
    dres: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    has_bias: bool,
    num_heads: int,
    head_dim: int,
    eps: float,
    layer: bool,
    per_head_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference gradients of every norm op (the backward ops' CPU path), in fp32 closed form (``xhat = (x - mean?) * r``):
    ``dx = r * (g - mean(g)? - xhat * mean(g * xhat))`` with ``g = dy * w``;
    ``dw = sum(dy * xhat)``, ``db = sum(dy)`` over rows (and heads, for a shared weight)."""
    acc = torch.promote_types(x.dtype, torch.float32)
    wshape = (num_heads, head_dim) if per_head_weight else (head_dim,)
    rows = (-1, *wshape)  # a (H, D) weight needs the heads as their own dim
    xf, g_out = x.to(acc).reshape(rows), dy.to(acc).reshape(rows)
    if layer:
        xf = xf - xf.mean(-1, keepdim=True)
    r = torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    xhat = xf * r
    g = g_out * weight.to(acc) if weight is not None else g_out
    inner = g - g.mean(-1, keepdim=True) if layer else g
    dx = (r * (inner - xhat * (g * xhat).mean(-1, keepdim=True))).reshape(x.shape)
    if dres is not None:
        dx = dx + dres.to(acc)
    empty = x.new_empty((0,), dtype=acc)
    dw = (g_out * xhat).sum(0) if weight is not None else empty
    db = g_out.sum(0) if has_bias else empty.clone()
    return dx.to(x.dtype), dw, db


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
    if select_backend(backend, x, "rms_norm") == "torch":
        return rms_norm_ref(x, weight, eps)
    # kernels/_norm_ops.py launches the kernel: through its custom op, or directly when eager.
    return register_norm_ops().rms_norm(x, weight, eps)


def rms_norm_residual(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused pre-norm residual step: ``h = x + residual``; returns ``(rms_norm(h, weight), h)``.

    ``x`` and ``residual`` are ``[*, D]`` of one shape and dtype. Gradients flow to both
    inputs and the weight. FLOPs: ``3 * x.numel()`` (the residual add is not counted).
    """
    _check_norm_args(x, weight, "rms_norm_residual")
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(
            "rms_norm_residual: residual must match x in shape and dtype, "
            f"expected {tuple(x.shape)} {x.dtype}, got {tuple(residual.shape)} {residual.dtype}"
        )
    if select_backend(backend, x, "rms_norm_residual") == "torch":
        return rms_norm_residual_ref(x, residual, weight, eps)
    return register_norm_ops().rms_norm_residual(x, residual, weight, eps)
