"""Triton entry points for the per-head norms; the kernels live in ``_rms_norm_triton``.

Both run through their ``torch.library`` custom ops (``kernels/_norm_ops.py``), so that
autograd, ``torch.compile`` and ``FlopCounterMode`` see them. Many rows of small ``D``
(QK-norm: ``D = 64 .. 128`` over millions of tokens x heads) are processed many rows per
program; ``head_norm``'s ``(H, D)`` weight makes heads a tile axis, so ``dw`` and ``db`` are
accumulated per head in registers.
"""

from __future__ import annotations

import torch

from ._rms_norm_triton import norm_backward, norm_forward  # noqa: F401  (re-exported launchers)

__all__ = ["per_head_rms_norm_triton", "head_norm_triton"]


def per_head_rms_norm_triton(
    x: torch.Tensor, weight: torch.Tensor | None, num_heads: int, head_dim: int, eps: float
) -> torch.Tensor:
    """QK-norm of ``x`` ``[*, H*D]`` / ``[*, H, D]`` with a shared ``(D,)`` weight (``flopkit::per_head_rms_norm``)."""
    return torch.ops.flopkit.per_head_rms_norm(x, weight, num_heads, head_dim, eps)


def head_norm_triton(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    num_heads: int,
    head_dim: int,
    eps: float,
    mode: str,
) -> torch.Tensor:
    """HeadNorm with ``(H, D)`` weight/bias, ``mode`` ``"rms"`` or ``"layer"`` (``flopkit::head_norm``)."""
    return torch.ops.flopkit.head_norm(x, weight, bias, num_heads, head_dim, eps, mode)
