"""The fused QK-norm + RoPE op, one spec (:class:`~flopkit.kernels._opspec.KernelOp`):
``flopkit::qk_norm_rope`` and its backward ``flopkit::qk_norm_rope_backward`` (``triton_op``:
torch.compile launches their kernels from Inductor's own code), their fake implementations, the
autograd and the FLOP formula, and the eager path generated from the same spec: an autograd Function
that launches the same kernels directly and adds ``v`` as a view of ``qkv``, routing ``dv`` into the
same backward kernel. ``rope.py``'s public op decides the route once and calls
:meth:`KernelOp.eager` or :attr:`KernelOp.via_op`.
"""

from __future__ import annotations

import torch

from flopkit import formulas

from ._opspec import KernelOp
from ._reference import norm_backward_ref, qk_norm_rope_ref, rotate_pairs
from ._rope_triton import empty_qk, qk_norm_rope_bwd, qk_norm_rope_fwd

__all__ = ["QK_NORM_ROPE", "QK_NORM_ROPE_BACKWARD", "OPS"]

Tensor = torch.Tensor


# --------------------------------------------------------------------------- backward op


def _qk_norm_rope_bwd_ref(dq, dk, dv, qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm):
    """The backward op's CPU reference in fp32 closed form: through RoPE ``g * cos - rot(g * sin)``
    (``rot^T = -rot`` for both pairings), then through the RMSNorm (the norm ops' reference backward)."""
    B, T, three_hd = qkv.shape
    acc = torch.promote_types(qkv.dtype, torch.float32)
    D = three_hd // (3 * num_heads)
    parts = qkv.to(acc).view(B, T, 3, num_heads, D).unbind(2)
    cos_f, sin_f = cos.to(acc)[:, None, :], sin.to(acc)[:, None, :]
    grads, weight_grads = [], []
    for x, g, w in ((parts[0], dq, q_weight), (parts[1], dk, k_weight)):
        g = g.to(acc).transpose(1, 2)  # [B, T, H, D]
        g = g * cos_f - rotate_pairs(g * sin_f, pairing)
        if norm:
            per_head = w is not None and w.dim() == 2
            g, dw, _ = norm_backward_ref(g, None, x, w, False, num_heads, D, eps, False, per_head)
            weight_grads.append(dw)
        else:
            weight_grads.append(qkv.new_empty((0,), dtype=acc))
        grads.append(g)
    grads.append(dv.to(acc).transpose(1, 2) if dv is not None else torch.zeros_like(parts[2]))
    dqkv = torch.stack(grads, dim=2).reshape(B, T, three_hd).to(qkv.dtype)
    return dqkv, weight_grads[0], weight_grads[1]


def fake_weight_grads(
    qkv: Tensor, q_weight: Tensor | None, k_weight: Tensor | None, norm: bool
) -> tuple[Tensor, Tensor]:
    """The backward ops' weight gradients as their fakes allocate them: a weight's shape where the
    norm uses it, else empty ``(0,)`` fp32 (the QK-norm + RoPE's backward op and the one op's)."""

    def one(w):
        return w.new_empty(w.shape) if w is not None and norm else qkv.new_empty((0,), dtype=torch.float32)

    return one(q_weight), one(k_weight)


def _qk_norm_rope_bwd_fake(dq, dk, dv, qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm):
    dqkv = qkv.new_empty(qkv.shape)
    return dqkv, *fake_weight_grads(qkv, q_weight, k_weight, norm)


QK_NORM_ROPE_BACKWARD = KernelOp(
    "flopkit::qk_norm_rope_backward",
    "(Tensor dq, Tensor dk, Tensor? dv, Tensor qkv, Tensor cos, Tensor sin, Tensor? q_weight, "
    "Tensor? k_weight, SymInt num_heads, float eps, str pairing, bool norm) -> (Tensor, Tensor, Tensor)",
    forward=qk_norm_rope_bwd,
    reference=_qk_norm_rope_bwd_ref,
    fake=_qk_norm_rope_bwd_fake,
)
"""``(dqkv, dq_weight, dk_weight)`` from the gradients of q, k and (optionally) v; absent weight
gradients are empty ``(0,)``."""


# --------------------------------------------------------------------------- forward op


def _qk_norm_rope_reference(qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm):
    q, k, _ = qk_norm_rope_ref(qkv, cos, sin, num_heads, q_weight, k_weight, eps, pairing, norm=norm)
    # The kernel's layout (token-major from TOKEN_MAJOR_MIN_HEADS heads up), as the fake's.
    q_out, k_out = empty_qk(qkv, num_heads), empty_qk(qkv, num_heads)
    return q_out.copy_(q), k_out.copy_(k)


def _qk_norm_rope_fake(qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm):
    return empty_qk(qkv, num_heads), empty_qk(qkv, num_heads)


def _setup(ctx, inputs, output) -> None:
    qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm = inputs
    ctx.save_for_backward(qkv, cos, sin, q_weight, k_weight)
    ctx.num_heads, ctx.eps, ctx.pairing, ctx.norm = num_heads, eps, pairing, norm


def _backward(ctx, dq, dk, dv=None):
    """d(qkv) in one kernel, v's slice included (``dv`` is None through the op's own autograd: its
    outputs are q and k only, and v's gradient reaches ``qkv`` through the view)."""
    qkv, cos, sin, q_weight, k_weight = ctx.saved_tensors
    # Eager: the backward spec's launch itself (run=launch by default); else its custom op.
    bwd = QK_NORM_ROPE_BACKWARD.forward if ctx.eager else QK_NORM_ROPE_BACKWARD.op
    dqkv, dqw, dkw = bwd(
        dq, dk, dv, qkv, cos, sin, q_weight, k_weight, ctx.num_heads, ctx.eps, ctx.pairing, ctx.norm
    )
    dqw = dqw if q_weight is not None and ctx.norm else None
    dkw = dkw if k_weight is not None and ctx.norm else None
    return dqkv, None, None, dqw, dkw, None, None, None, None


def _v_view(args: tuple, eager: bool) -> tuple[Tensor]:
    """v, the last third of ``qkv`` ``[B, T, 3*H*D]``, viewed ``[B, H, T, D]``."""
    qkv, num_heads = args[0], args[5]
    B, T, three_hd = qkv.shape
    hd = three_hd // 3
    if not eager:  # traced code (Dynamo cannot trace storage_offset() inside the Function)
        return (qkv.narrow(-1, 2 * hd, hd).unflatten(-1, (num_heads, hd // num_heads)).transpose(1, 2),)
    sb, st, sc = qkv.stride()
    # Eager: one as_strided instead of narrow + unflatten + transpose, three view ops of host time.
    v = qkv.as_strided(
        (B, num_heads, T, hd // num_heads),
        (sb, hd // num_heads * sc, st, sc),
        qkv.storage_offset() + 2 * hd * sc,
    )
    return (v,)


def _qk_norm_rope_flops(qkv_shape, cos_shape, sin_shape, qw_shape, kw_shape, num_heads, eps, pairing, norm,
                        *args, out_shape=None, **kwargs) -> int:  # fmt: skip
    """norm 3 + rope 2 FLOPs per element of q and of k (docs/conventions.md)."""
    B, T, three_hd = qkv_shape
    return formulas.qk_norm_rope(B, T, num_heads, three_hd // (3 * num_heads), norm)


QK_NORM_ROPE = KernelOp(
    "flopkit::qk_norm_rope",
    "(Tensor qkv, Tensor cos, Tensor sin, Tensor? q_weight, Tensor? k_weight, SymInt num_heads, "
    "float eps, str pairing, bool norm) -> (Tensor, Tensor)",
    forward=qk_norm_rope_fwd,
    reference=_qk_norm_rope_reference,
    fake=_qk_norm_rope_fake,
    flops=_qk_norm_rope_flops,
    setup=_setup,
    backward=_backward,
    views=_v_view,
)
"""From ``qkv`` ``[B, T, 3*H*D]``: q and k normalised and rotated, ``[B, H, T, D]`` (contiguous, or
token-major views from ``_rope_triton.TOKEN_MAJOR_MIN_HEADS`` heads up); the public op adds v, a
``[B, H, T, D]`` view of ``qkv``."""


OPS: dict[str, KernelOp] = {op.name: op for op in (QK_NORM_ROPE, QK_NORM_ROPE_BACKWARD)}
"""Every op of the family by its ``flopkit::`` name."""
