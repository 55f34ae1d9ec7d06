"""The rope family's public op: fused QK-norm + 2D RoPE on the QKV activation, with the rotation
primitives and references (defined in ``_reference.py``: ``x' = x * cos + rot(x) * sin``, pairing
``"split_half"`` as nvSubquadratic or ``"interleaved"`` as the official ViT-5).

FLOPs: :func:`flopkit.formulas.qk_norm_rope` (RoPE 2 per element of q and of k; the norm 3).
:func:`qk_norm_rope` decides its call's route once (``_dispatch.route``) and calls the eager entry
or the custom op, both generated (``_opspec.KernelOp``) from the op's one spec in ``_rope_ops.py``;
the Triton kernels are in ``_rope_triton.py``.
"""

from __future__ import annotations

import torch

from ._dispatch import KERNEL, REFERENCE, Route, check_dtype, route
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
    backend: str | Route = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused QK-norm + RoPE + head transpose on the QKV projection output.

    Args:
        qkv: ``[B, T, 3*H*D]`` (any strides), the fused QKV Linear output.
        cos, sin: ``[T, D]`` RoPE tables.
        num_heads: ``H``.
        q_weight, k_weight: ``(D,)`` shared or ``(H, D)`` RMSNorm weights, or None.
        norm: whether to RMS-normalise q and k (default: whether a weight is given).
        backend: ``"auto"``, ``"triton"``, ``"torch"``, or a :class:`~flopkit.kernels.Route` the
            caller already decided with :func:`~flopkit.kernels.route` (``ViT5Attention``).
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
    path = route(backend, qkv, "qk_norm_rope")
    if path is REFERENCE:
        return qk_norm_rope_ref(qkv, cos, sin, num_heads, q_weight, k_weight, eps, pairing, norm=norm)
    op = (_ROPE_OPS if path is KERNEL and _ROPE_OPS else _ops()).QK_NORM_ROPE
    args = (qkv, cos, sin, q_weight, k_weight, num_heads, float(eps), pairing, bool(norm))
    return (op.eager if path is KERNEL else op.via_op)(*args)


_ROPE_OPS = None  # kernels/_rope_ops.py once imported (it imports triton)


def _ops():
    """The rope family's op specs (``kernels/_rope_ops.py``), registered on first use. The eager path
    reads ``_ROPE_OPS`` first (``_ROPE_OPS if path is KERNEL and _ROPE_OPS else _ops()``); the
    custom-op route, which torch.compile traces, calls this function, whose body is an import
    statement and a store: the first trace then installs no guard on the global (a read of it, None
    then, made the second call recompile)."""
    global _ROPE_OPS
    from . import _rope_ops

    _ROPE_OPS = _rope_ops
    return _rope_ops
