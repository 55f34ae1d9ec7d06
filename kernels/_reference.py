"""PyTorch references of every op in ``flopkit.kernels`` (fp32 math; float64 stays float64): the
spec the Triton kernels are tested against, and what the ops run on CPU. Shared by the public op
files (``norm.py``, ``rope.py``) and the registrations (``_norm_ops.py``, ``_rope_ops.py``), so that
neither imports the other.

Rotation (docs/vit5.md): ``x' = x * cos + rot(x) * sin`` with two pairings:

* ``"split_half"`` (nvSubquadratic, default): with ``q4 = D/4``, ``h = D/2``,
  ``rot(x) = [-x[q4:h], x[:q4], -x[h+q4:], x[h:h+q4]]``. With the interleaved tables
  this pairs channels of different frequencies: it is not an orthogonal rotation.
* ``"interleaved"`` (official ViT-5 / EVA-02): adjacent pairs ``(x0, x1) -> (-x1, x0)``,
  an exact rotation.
"""

from __future__ import annotations

import torch

__all__ = [
    "ROPE_PAIRINGS",
    "rms_norm_ref",
    "rms_norm_residual_ref",
    "norm_backward_ref",
    "layer_scale_backward_ref",
    "residual_dtype",
    "split_heads",
    "check_heads",
    "rotate_pairs",
    "apply_rope_ref",
    "qk_norm_rope_ref",
]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp32 accumulation for every I/O dtype; a float64 input (tests' references) stays float64.
    return torch.promote_types(dtype, torch.float32)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """PyTorch reference RMSNorm over the last dim of ``x`` ``[*, D]``; ``weight`` ``(D,)`` or None."""
    acc = _acc_dtype(x.dtype)
    xf = x.to(acc)
    y = xf * torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(acc)
    return y.to(x.dtype)


def rms_norm_residual_ref(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference fused step: ``h = residual + x`` (``residual + x * scale`` with a LayerScale
    ``scale`` ``(D,)``), in PyTorch's type promotion; returns ``(rms_norm(h), h)``."""
    h = residual + (x if scale is None else x * scale)
    return rms_norm_ref(h, weight, eps), h


def residual_dtype(x: torch.Tensor, residual: torch.Tensor, scale: torch.Tensor | None = None) -> torch.dtype:
    """The dtype of ``h = residual + x * scale`` (``residual + x`` without a scale) in PyTorch's type
    promotion: what the fused residual norm returns ``h`` and ``y`` in."""
    branch = x.dtype if scale is None else torch.promote_types(x.dtype, scale.dtype)
    return torch.promote_types(branch, residual.dtype)


def layer_scale_backward_ref(
    dh: torch.Tensor, branch: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``h = residual + branch * scale`` given ``dh``: ``(dbranch, dscale)``, in fp32
    (float64 for float64 inputs); ``dbranch`` in ``branch``'s dtype, ``dscale`` unrounded."""
    acc = torch.promote_types(dh.dtype, torch.float32)
    g = dh.to(acc)
    dscale = (g * branch.to(acc)).reshape(-1, scale.shape[-1]).sum(0)
    return (g * scale.to(acc)).to(branch.dtype), dscale


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


def split_heads(x: torch.Tensor, num_heads: int, head_dim: int, op: str) -> torch.Tensor:
    """View ``x`` (``[*, H*D]`` or ``[*, H, D]``) as ``[*, H, D]``; raise ValueError on any other shape."""
    if check_heads(x, num_heads, head_dim, op):
        return x
    return x.unflatten(-1, (num_heads, head_dim))


def check_heads(x: torch.Tensor, num_heads: int, head_dim: int, op: str) -> bool:
    """Whether ``x`` is ``[*, H, D]`` (True) or ``[*, H*D]`` (False); ValueError on any other shape.
    :func:`split_heads` without the view (the kernels' launchers read either layout in place)."""
    if x.dim() >= 2 and tuple(x.shape[-2:]) == (num_heads, head_dim):
        return True
    if x.dim() >= 1 and x.shape[-1] == num_heads * head_dim:
        return False
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
