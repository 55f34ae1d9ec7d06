"""The rope family's public op: fused QK-norm + 2D RoPE on the QKV activation, with the rotation
primitives and references (defined in ``_reference.py``: ``x' = x * cos + rot(x) * sin``, pairing
``"split_half"`` as nvSubquadratic or ``"interleaved"`` as the official ViT-5).

FLOPs: :func:`flopkit.formulas.qk_norm_rope` (RoPE 2 per element of q and of k; the norm 3).
Registration is in ``_rope_ops.py``, the Triton kernels in ``_rope_triton.py``.
"""

from __future__ import annotations

import torch

from ._dispatch import check_dtype, select_backend
from ._reference import ROPE_PAIRINGS, apply_rope_ref, qk_norm_rope_ref, rotate_pairs

__all__ = [
    "ROPE_PAIRINGS",
    "rotate_pairs",
    "apply_rope_ref",
    "qk_norm_rope",
    "qk_norm_rope_ref",
]

_CHECKED: set[tuple] = set()


def _check_qk_args(qkv, cos, sin, num_heads, q_weight, k_weight, pairing) -> None:
    """Validate once per combination of shapes, dtype, heads and pairing (the eager hot path)."""
    if torch.compiler.is_compiling():  # traced once per graph anyway; shapes may be symbolic
        _validate_qk_args(qkv, cos, sin, num_heads, q_weight, k_weight, pairing)
        return
    key = (
        qkv.shape,
        qkv.dtype,
        cos.shape,
        sin.shape,
        q_weight.shape if q_weight is not None else None,
        k_weight.shape if k_weight is not None else None,
        num_heads,
        pairing,
    )
    if key not in _CHECKED:
        _validate_qk_args(qkv, cos, sin, num_heads, q_weight, k_weight, pairing)
        if len(_CHECKED) < 4096:
            _CHECKED.add(key)


def _validate_qk_args(qkv, cos, sin, num_heads, q_weight, k_weight, pairing) -> int:
    op = "qk_norm_rope"
    if qkv.dtype != torch.float64:
        check_dtype(qkv, "qkv", op)
    if qkv.dim() != 3 or qkv.shape[-1] % (3 * num_heads):
        raise ValueError(
            f"{op}: qkv must be [B, T, 3*num_heads*head_dim] with num_heads={num_heads}, got {tuple(qkv.shape)}"
        )
    D = qkv.shape[-1] // (3 * num_heads)
    T = qkv.shape[1]
    for name, t in (("cos", cos), ("sin", sin)):
        if tuple(t.shape) != (T, D):
            raise ValueError(f"{op}: {name} must have shape (T, D) = ({T}, {D}), got {tuple(t.shape)}")
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w is not None and tuple(w.shape) not in ((D,), (num_heads, D)):
            raise ValueError(
                f"{op}: {name} must have shape ({D},) or ({num_heads}, {D}), got {tuple(w.shape)}"
            )
    if pairing not in ROPE_PAIRINGS:
        raise ValueError(f"{op}: pairing must be one of {ROPE_PAIRINGS}, got {pairing!r}")
    if pairing == "split_half" and D % 4 or D % 2:
        raise ValueError(f"{op}: head_dim must be divisible by 4 for split_half (2 for interleaved), got {D}")
    return D


def qk_norm_rope(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_heads: int,
    q_weight: torch.Tensor | None = None,
    k_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    pairing: str = "split_half",
    *,
    norm: bool | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused QK-norm + RoPE + head transpose on the QKV projection output.

    Args:
        qkv: ``[B, T, 3*H*D]`` (any strides), the fused QKV Linear output.
        cos, sin: ``[T, D]`` RoPE tables.
        num_heads: ``H``.
        q_weight, k_weight: ``(D,)`` shared or ``(H, D)`` RMSNorm weights, or None.
        norm: whether to RMS-normalise q and k (default: whether a weight is given).
    Returns:
        ``q, k, v``, each ``[B, H, T, D]``. On the Triton path q and k are new tensors, contiguous
        below 12 heads and token-major views of ``[B, T, H, D]`` buffers from 12 heads up (cuDNN's
        attention output then takes the same layout and needs no transposing copy); v is a view of
        ``qkv``.
    FLOPs: :func:`flopkit.formulas.qk_norm_rope` ``(B, T, H, D, norm)``.
    """
    _check_qk_args(qkv, cos, sin, num_heads, q_weight, k_weight, pairing)
    if norm is None:
        norm = q_weight is not None or k_weight is not None
    if select_backend(backend, qkv, "qk_norm_rope") == "torch":
        return qk_norm_rope_ref(qkv, cos, sin, num_heads, q_weight, k_weight, eps, pairing, norm=norm)
    return _triton_path()(qkv, cos, sin, num_heads, q_weight, k_weight, eps, pairing, norm)


_ROPE_TRITON = None  # kernels/_rope_ops.py's entry point once imported (it imports triton)


def _triton_path():
    global _ROPE_TRITON
    if _ROPE_TRITON is None:
        from ._rope_ops import qk_norm_rope_triton

        _ROPE_TRITON = qk_norm_rope_triton
    return _ROPE_TRITON
