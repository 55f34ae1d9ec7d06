"""QK-norm + 2D RoPE on the fused QKV activation, and the rotation primitives.

Rotation (DESIGN.md §2): ``x' = x * cos + rot(x) * sin`` with two pairings:

* ``"split_half"`` (nvSubquadratic, default): with ``q4 = D/4``, ``h = D/2``,
  ``rot(x) = [-x[q4:h], x[:q4], -x[h+q4:], x[h:h+q4]]``. With the interleaved tables
  this pairs channels of different frequencies: it is not an orthogonal rotation.
* ``"interleaved"`` (official ViT-5 / EVA-02): adjacent pairs ``(x0, x1) -> (-x1, x0)``,
  an exact rotation.

FLOPs: :func:`flopkit.formulas.qk_norm_rope` (RoPE 2 per element of q and of k; the norm 3).
Registration is in ``_rope_ops.py``, the Triton kernels in ``_rope_triton.py``.
"""

from __future__ import annotations

import torch

from ._dispatch import check_dtype, select_backend
from .norm import _acc_dtype, _normalize_heads

__all__ = [
    "ROPE_PAIRINGS",
    "rotate_pairs",
    "apply_rope_ref",
    "qk_norm_rope",
    "qk_norm_rope_ref",
]

ROPE_PAIRINGS = ("split_half", "interleaved")


def rotate_pairs(x: torch.Tensor, pairing: str = "split_half") -> torch.Tensor:
    """``rot(x)`` over the last dim ``D`` of ``x`` for the given pairing (see module docstring)."""
    D = x.shape[-1]
    if pairing == "split_half":
        q4, h = D // 4, D // 2
        return torch.cat((-x[..., q4:h], x[..., :q4], -x[..., h + q4 :], x[..., h : h + q4]), dim=-1)
    if pairing == "interleaved":
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((-x1, x0), dim=-1).flatten(-2)
    raise ValueError(f"rope pairing must be one of {ROPE_PAIRINGS}, got {pairing!r}")


def apply_rope_ref(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str = "split_half"
) -> torch.Tensor:
    """``x * cos + rot(x) * sin`` in fp32 (or float64), cast back to ``x.dtype``.

    ``cos``/``sin`` must broadcast against ``x`` (e.g. ``[T, 1, D]`` for ``x`` ``[B, T, H, D]``).
    """
    acc = _acc_dtype(x.dtype)
    xf = x.to(acc)
    return (xf * cos.to(acc) + rotate_pairs(xf, pairing) * sin.to(acc)).to(x.dtype)


def qk_norm_rope_ref(
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference: split ``qkv`` ``[B, T, 3*H*D]``, RMS-normalise q and k per head, rotate, transpose.

    ``q_weight``/``k_weight``: ``(D,)`` shared or ``(H, D)``; ``norm`` defaults to "a weight was given"
    (``norm=True`` with no weights normalises without scaling). Returns ``q, k, v`` as
    ``[B, H, T, D]``: q and k contiguous, v a view of ``qkv``.
    """
    B, T, three_c = qkv.shape
    D = three_c // (3 * num_heads)
    q, k, v = qkv.view(B, T, 3, num_heads, D).unbind(2)
    if norm is None:
        norm = q_weight is not None or k_weight is not None
    if norm:
        q = _normalize_heads(q, q_weight, None, eps, "rms")
        k = _normalize_heads(k, k_weight, None, eps, "rms")
    c, s = cos[:, None, :], sin[:, None, :]
    q = apply_rope_ref(q, c, s, pairing)
    k = apply_rope_ref(k, c, s, pairing)
    return q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2)


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
        ``q, k, v``, each ``[B, H, T, D]``; q and k contiguous.
    FLOPs: :func:`flopkit.formulas.qk_norm_rope` ``(B, T, H, D, norm)``.
    """
    _check_qk_args(qkv, cos, sin, num_heads, q_weight, k_weight, pairing)
    if norm is None:
        norm = q_weight is not None or k_weight is not None
    if select_backend(backend, qkv, "qk_norm_rope") == "torch":
        return qk_norm_rope_ref(qkv, cos, sin, num_heads, q_weight, k_weight, eps, pairing, norm=norm)
    from ._rope_ops import qk_norm_rope_triton

    return qk_norm_rope_triton(qkv, cos, sin, num_heads, q_weight, k_weight, eps, pairing, norm)
