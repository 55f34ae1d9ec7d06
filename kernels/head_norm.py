"""Per-head norms: the QK-norm with one shared ``(D,)`` weight, and ExLlamaV2-style
``HeadNorm`` with an ``(H, D)`` weight, optional ``(H, D)`` bias, RMS or Layer mode.

Inputs are ``[*, H*D]`` (flat heads) or ``[*, H, D]``; outputs keep the input's shape and dtype.
FLOPs (DESIGN.md §3): rms 3, layer 5, +1 with bias, per normalised element.
"""

from __future__ import annotations

import torch

from ._dispatch import check_dtype, register_norm_ops, select_backend
from .rms_norm import _acc_dtype

__all__ = [
    "HEAD_NORM_MODES",
    "per_head_rms_norm",
    "per_head_rms_norm_ref",
    "head_norm",
    "head_norm_ref",
    "head_norm_flops",
    "split_heads",
]

HEAD_NORM_MODES = ("rms", "layer")


def head_norm_flops(
    num_rows: int, num_heads: int, head_dim: int, mode: str = "rms", bias: bool = False
) -> int:
    """FLOPs of a per-head norm on ``num_rows`` tokens: ``(3 | 5) * N*H*D`` (+ ``N*H*D`` with bias)."""
    per_elem = {"rms": 3, "layer": 5}[mode] + (1 if bias else 0)
    return per_elem * num_rows * num_heads * head_dim


def split_heads(x: torch.Tensor, num_heads: int, head_dim: int, op: str) -> torch.Tensor:
    """View ``x`` (``[*, H*D]`` or ``[*, H, D]``) as ``[*, H, D]``; raise ValueError on any other shape."""
    if x.dim() >= 2 and tuple(x.shape[-2:]) == (num_heads, head_dim):
        return x
    if x.dim() >= 1 and x.shape[-1] == num_heads * head_dim:
        return x.unflatten(-1, (num_heads, head_dim))
    raise ValueError(
        f"{op}: x must end in num_heads*head_dim = {num_heads}*{head_dim} = {num_heads * head_dim} "
        f"or in ({num_heads}, {head_dim}), got shape {tuple(x.shape)}"
    )


def _normalize_heads(
    xh: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    mode: str,
) -> torch.Tensor:
    acc = _acc_dtype(xh.dtype)
    xf = xh.to(acc)
    if mode == "layer":
        xf = xf - xf.mean(dim=-1, keepdim=True)
    y = xf * torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(acc)
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(xh.dtype)


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
    split_heads(x, num_heads, D, "per_head_rms_norm")
    if select_backend(backend, x, "per_head_rms_norm") == "torch":
        return per_head_rms_norm_ref(x, weight, num_heads, eps, head_dim=D)
    return register_norm_ops().per_head_rms_norm(x, weight, num_heads, D, eps)


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
    if mode not in HEAD_NORM_MODES:
        raise ValueError(f"head_norm: mode must be one of {HEAD_NORM_MODES}, got {mode!r}")
    H, D = _head_shape(weight, bias, num_heads, head_dim)
    _check_input(x, "head_norm")
    split_heads(x, H, D, "head_norm")
    if select_backend(backend, x, "head_norm") == "torch":
        return head_norm_ref(x, weight, bias, eps, mode, num_heads=H, head_dim=D)
    return register_norm_ops().head_norm(x, weight, bias, H, D, eps, mode)


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
