"""Registration of the fused QK-norm + RoPE: the ``flopkit::qk_norm_rope`` and
``flopkit::qk_norm_rope_backward`` ops (``triton_op``: torch.compile launches their kernels from
Inductor's own code), their fake implementations, autograd, and the FLOP formula.

``_QKNormRope`` is the eager twin: an autograd Function that launches the same kernels directly
and adds ``v`` as a view of ``qkv``, routing ``dv`` into the same backward kernel.
"""

from __future__ import annotations

import torch
from torch.library import triton_op
from torch.utils.flop_counter import register_flop_formula

from flopkit import formulas

from ._dispatch import direct_apply, needs_custom_op, runs_reference_in_op
from ._norm_triton import wrapped
from ._reference import norm_backward_ref, qk_norm_rope_ref, rotate_pairs
from ._rope_triton import empty_qk, qk_norm_rope_bwd, qk_norm_rope_fwd

__all__ = ["qk_norm_rope_triton"]

Tensor = torch.Tensor

# The custom ops are what torch.compile, FakeTensor/meta tracing and FlopCounterMode see. A plain
# eager call (no dispatch mode active, not compiling, real tensors) calls the same launchers
# directly: the dispatcher round trip costs tens of microseconds of CPU per call, as much as the
# kernel itself at ViT sizes.


@triton_op("flopkit::qk_norm_rope", mutates_args=())
def _qk_norm_rope_op(
    qkv: Tensor,
    cos: Tensor,
    sin: Tensor,
    q_weight: Tensor | None,
    k_weight: Tensor | None,
    num_heads: int,
    eps: float,
    pairing: str,
    norm: bool,
) -> tuple[Tensor, Tensor]:
    if runs_reference_in_op(qkv):
        q, k, _ = qk_norm_rope_ref(qkv, cos, sin, num_heads, q_weight, k_weight, eps, pairing, norm=norm)
        # The kernel's layout (token-major from TOKEN_MAJOR_MIN_HEADS heads up), as the fake's.
        q_out, k_out = empty_qk(qkv, num_heads), empty_qk(qkv, num_heads)
        return q_out.copy_(q), k_out.copy_(k)
    return qk_norm_rope_fwd(qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm, run=wrapped)


@_qk_norm_rope_op.register_fake
def _(qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm):
    return empty_qk(qkv, num_heads), empty_qk(qkv, num_heads)


@triton_op("flopkit::qk_norm_rope_backward", mutates_args=())
def _qk_norm_rope_backward_op(
    dq: Tensor,
    dk: Tensor,
    dv: Tensor | None,
    qkv: Tensor,
    cos: Tensor,
    sin: Tensor,
    q_weight: Tensor | None,
    k_weight: Tensor | None,
    num_heads: int,
    eps: float,
    pairing: str,
    norm: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    if runs_reference_in_op(qkv):
        return _qk_norm_rope_bwd_ref(
            dq, dk, dv, qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm
        )
    return qk_norm_rope_bwd(
        dq, dk, dv, qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm, run=wrapped
    )


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


@_qk_norm_rope_backward_op.register_fake
def _(dq, dk, dv, qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm):
    def weight_grad(w):
        return w.new_empty(w.shape) if w is not None and norm else qkv.new_empty((0,), dtype=torch.float32)

    dqkv = qkv.new_empty(qkv.shape)
    return dqkv, weight_grad(q_weight), weight_grad(k_weight)


def _forward(qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm):
    op = torch.ops.flopkit.qk_norm_rope if needs_custom_op(qkv) else qk_norm_rope_fwd
    return op(qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm)


def _backward(ctx, dq, dk, dv):
    qkv, cos, sin, q_weight, k_weight = ctx.saved_tensors
    op = torch.ops.flopkit.qk_norm_rope_backward if needs_custom_op(qkv) else qk_norm_rope_bwd
    dqkv, dqw, dkw = op(
        dq, dk, dv, qkv, cos, sin, q_weight, k_weight, ctx.num_heads, ctx.eps, ctx.pairing, ctx.norm
    )
    dqw = dqw if q_weight is not None and ctx.norm else None
    dkw = dkw if k_weight is not None and ctx.norm else None
    return dqkv, dqw, dkw


def _setup_context(ctx, inputs, output):
    qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm = inputs
    ctx.save_for_backward(qkv, cos, sin, q_weight, k_weight)
    ctx.num_heads, ctx.eps, ctx.pairing, ctx.norm = num_heads, eps, pairing, norm


def _op_backward(ctx, dq, dk):
    # The op's own outputs are q and k only: the v part of d(qkv) is zero.
    dqkv, dqw, dkw = _backward(ctx, dq, dk, None)
    return dqkv, None, None, dqw, dkw, None, None, None, None


_qk_norm_rope_op.register_autograd(_op_backward, setup_context=_setup_context)


class _QKNormRope(torch.autograd.Function):
    """q, k from the forward kernel plus v as a view of ``qkv``; backward writes d(qkv) in one
    kernel, v's slice included, instead of autograd adding a zero-padded copy of dv."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm):
        q, k = _forward(qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm)
        _setup_context(ctx, (qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm), None)
        return q, k, _v_view(qkv, num_heads)

    @staticmethod
    def backward(ctx, dq, dk, dv):
        dqkv, dqw, dkw = _backward(ctx, dq, dk, dv)
        return dqkv, None, None, dqw, dkw, None, None, None, None


_apply_qk = direct_apply(_QKNormRope)


def _v_view(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """v, the last third of ``qkv`` ``[B, T, 3*H*D]``, viewed ``[B, H, T, D]``."""
    B, T, three_hd = qkv.shape
    hd = three_hd // 3
    if torch.compiler.is_compiling():  # Dynamo cannot trace storage_offset() inside the Function
        return qkv.narrow(-1, 2 * hd, hd).unflatten(-1, (num_heads, hd // num_heads)).transpose(1, 2)
    sb, st, sc = qkv.stride()
    # Eager: one as_strided instead of narrow + unflatten + transpose, three view ops of host time.
    return qkv.as_strided(
        (B, num_heads, T, hd // num_heads),
        (sb, hd // num_heads * sc, st, sc),
        qkv.storage_offset() + 2 * hd * sc,
    )


@register_flop_formula(torch.ops.flopkit.qk_norm_rope)
def _qk_norm_rope_flop(qkv_shape, cos_shape, sin_shape, qw_shape, kw_shape, num_heads, eps, pairing, norm,
                       *args, out_shape=None, **kwargs) -> int:  # fmt: skip
    """norm 3 + rope 2 FLOPs per element of q and of k (docs/conventions.md)."""
    B, T, three_hd = qkv_shape
    return formulas.qk_norm_rope(B, T, num_heads, three_hd // (3 * num_heads), norm)


def qk_norm_rope_triton(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_heads: int,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    eps: float,
    pairing: str,
    norm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton path of ``qk_norm_rope``: q, k ``[B, H, T, D]`` (contiguous, or token-major views from
    ``_rope_triton.TOKEN_MAJOR_MIN_HEADS`` heads up), v a ``[B, H, T, D]`` view of ``qkv``."""
    args = (qkv, cos, sin, q_weight, k_weight, num_heads, float(eps), pairing, bool(norm))
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (qkv, q_weight, k_weight)):
        if q_weight is not None and q_weight is k_weight and torch.compiler.is_compiling():
            # Dynamo cannot trace an autograd.Function given one tensor twice; the custom op's own
            # autograd can (v's gradient then reaches qkv through the view, an add Inductor fuses).
            q, k = torch.ops.flopkit.qk_norm_rope(*args)
            return q, k, _v_view(qkv, num_heads)
        return _apply_qk(*args)
    q, k = _forward(*args)
    return q, k, _v_view(qkv, num_heads)
