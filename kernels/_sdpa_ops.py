"""The attention op, one spec (:class:`~flopkit.kernels._opspec.KernelOp`): ``flopkit::attention``
(``o`` and the base-2 log-sum-exp the backward needs) and its backward
``flopkit::attention_backward``, with their CPU references, fakes, FLOP formulas (those of
PyTorch's SDPA: :func:`flopkit.formulas.sdpa` forward, twice that backward) and the autograd.
``sdpa.py``'s public op decides the route once and calls :meth:`KernelOp.eager` or
:attr:`KernelOp.via_op`. Importing this module imports triton (the launchers).
"""

from __future__ import annotations

import math

import torch

from flopkit import formulas

from ._opspec import KernelOp
from ._rope_ops import (
    _qk_norm_rope_bwd_ref,
    _qk_norm_rope_flops,
    _qk_norm_rope_reference,
    fake_weight_grads,
)
from ._rope_triton import empty_qk, qkv_heads
from ._sdpa_triton import (
    HEAD_TILE,
    attention_bwd,
    attention_fwd,
    empty_token_major,
    head_rows,
    qk_norm_rope_attention_bwd,
    qk_norm_rope_attention_fwd,
)

__all__ = [
    "ATTENTION",
    "ATTENTION_BACKWARD",
    "QK_NORM_ROPE_ATTENTION",
    "QK_NORM_ROPE_ATTENTION_BACKWARD",
    "OPS",
]

Tensor = torch.Tensor


def _lse2(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """``log2 sum_j exp(scale q_i·k_j)`` ``[B, H, T]`` in fp32 or wider."""
    acc = torch.promote_types(q.dtype, torch.float32)
    s = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * scale
    return torch.logsumexp(s, -1) / math.log(2)


# --------------------------------------------------------------------------- backward op


def _attention_backward_reference(do, q, k, v, o, lse, scale):
    """Closed form in fp32 (no autograd: the op's body may run while a compiler traces it):
    ``ds = p * (do vᵀ - rowsum(do * o))``, ``dq = scale ds k``, ``dk = scale dsᵀ q``, ``dv = pᵀ do``."""
    acc = torch.promote_types(q.dtype, torch.float32)
    q_, k_, v_, o_, do_ = (t.to(acc) for t in (q, k, v, o, do))
    p = torch.softmax((q_ @ k_.transpose(-1, -2)) * scale, -1)
    dv = p.transpose(-1, -2) @ do_
    ds = p * (do_ @ v_.transpose(-1, -2) - (do_ * o_).sum(-1, keepdim=True))
    dq, dk = (ds @ k_) * scale, (ds.transpose(-1, -2) @ q_) * scale
    return tuple(empty_token_major(t).copy_(g) for t, g in zip((q, k, v), (dq, dk, dv), strict=True))


def _attention_backward_flops(do_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """PyTorch's count for SDPA's backward: four matmuls, twice the forward's two."""
    B, H, T, D = q_shape
    return 2 * formulas.sdpa(B, H, T, k_shape[2], D, v_shape[3])


def _delta_scratch(q: torch.Tensor, lse: torch.Tensor) -> None:
    """The backward kernels' scratch as the launcher allocates it: ``delta`` ``[B, H, T]`` fp32, freed
    on return, for the dq and dk/dv kernels only (one kernel per head keeps it in registers), so a
    memory replay on meta sees the same blocks in the same order."""
    if not head_rows(q.shape[2], q.shape[-1], HEAD_TILE):
        torch.empty_like(lse)


def _attention_backward_fake(do, q, k, v, o, lse, scale):
    grads = tuple(empty_token_major(t) for t in (q, k, v))
    _delta_scratch(q, lse)  # after the gradients
    return grads


ATTENTION_BACKWARD = KernelOp(
    "flopkit::attention_backward",
    "(Tensor do, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, float scale) -> (Tensor, Tensor, Tensor)",
    forward=attention_bwd,
    reference=_attention_backward_reference,
    fake=_attention_backward_fake,
    flops=_attention_backward_flops,
)
"""``(dq, dk, dv)``, each ``[B, H, T, D]`` over a ``[B, T, H, D]`` buffer."""


# --------------------------------------------------------------------------- forward op


def _attention_reference(q, k, v, scale):
    acc = torch.promote_types(q.dtype, torch.float32)
    o = torch.nn.functional.scaled_dot_product_attention(q.to(acc), k.to(acc), v.to(acc), scale=scale)
    return empty_token_major(q).copy_(o), _lse2(q, k, scale).float()


def _attention_fake(q, k, v, scale):
    B, H, T, _ = q.shape
    return empty_token_major(q), q.new_empty((B, H, T), dtype=torch.float32)


def _attention_flops(q_shape, k_shape, v_shape, scale, *args, out_shape=None, **kwargs) -> int:
    """PyTorch's count for SDPA: ``2·B·H·T·S·(D + Dv)`` (docs/conventions.md)."""
    B, H, T, D = q_shape
    return formulas.sdpa(B, H, T, k_shape[2], D, v_shape[3])


def _setup(ctx, inputs, output) -> None:
    q, k, v, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.scale = scale


def _backward(ctx, do, dlse=None):
    """``dlse`` is None: the log-sum-exp is the backward's, no caller differentiates it."""
    q, k, v, o, lse = ctx.saved_tensors
    bwd = ATTENTION_BACKWARD.forward if ctx.eager else ATTENTION_BACKWARD.op
    dq, dk, dv = bwd(do, q, k, v, o, lse, ctx.scale)
    return dq, dk, dv, None


ATTENTION = KernelOp(
    "flopkit::attention",
    "(Tensor q, Tensor k, Tensor v, float scale) -> (Tensor, Tensor)",
    forward=attention_fwd,
    reference=_attention_reference,
    fake=_attention_fake,
    flops=_attention_flops,
    setup=_setup,
    backward=_backward,
    materialize_grads=False,
)
"""``softmax(scale q kᵀ) v`` ``[B, H, T, D]`` (over a ``[B, T, H, D]`` buffer) and its base-2
log-sum-exp ``[B, H, T]`` fp32, from q, k, v ``[B, H, T, D]``."""


# --------------------------------------------------------------------------- QK-norm + RoPE and attention, one op


def _qk_attention_backward_reference(do, qkv, q, k, o, lse, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm,
                              scale):  # fmt: skip
    """The two ops' references in a row: the attention's backward, then the QK-norm + RoPE's."""
    v = qkv_heads(qkv, num_heads)[2]
    dq, dk, dv = _attention_backward_reference(do, q, k, v, o, lse, scale)
    return _qk_norm_rope_bwd_ref(dq, dk, dv, qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm)


def _qk_attention_backward_fake(
    do, qkv, q, k, o, lse, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm, scale
):
    # The launcher's allocations in its order: dqkv, the attention's scratch; then the weight gradients.
    dqkv = qkv.new_empty(qkv.shape)
    _delta_scratch(q, lse)
    return dqkv, *fake_weight_grads(qkv, q_weight, k_weight, norm)


def _qk_attention_backward_flops(do_shape, qkv_shape, q_shape, *args, out_shape=None, **kwargs) -> int:
    """The parts' counts: the attention's backward (twice SDPA's forward); the QK-norm + RoPE's
    backward has no formula of its own (as ``flopkit::qk_norm_rope_backward``)."""
    B, H, T, D = q_shape
    return 2 * formulas.sdpa(B, H, T, T, D, D)


QK_NORM_ROPE_ATTENTION_BACKWARD = KernelOp(
    "flopkit::qk_norm_rope_attention_backward",
    "(Tensor do, Tensor qkv, Tensor q, Tensor k, Tensor o, Tensor lse, Tensor cos, Tensor sin, "
    "Tensor? q_weight, Tensor? k_weight, SymInt num_heads, float eps, str pairing, bool norm, float scale) "
    "-> (Tensor, Tensor, Tensor)",
    forward=qk_norm_rope_attention_bwd,
    reference=_qk_attention_backward_reference,
    fake=_qk_attention_backward_fake,
    flops=_qk_attention_backward_flops,
)
"""``(dqkv, dq_weight, dk_weight)``: the attention's backward kernels write dq, dk and dv into one
``dqkv`` buffer, then the QK-norm + RoPE's backward kernel runs in place on its q and k parts;
absent weight gradients are empty ``(0,)``."""


def _qk_attention_reference(qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm, scale):
    q, k = _qk_norm_rope_reference(qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm)
    o, lse = _attention_reference(q, k, qkv_heads(qkv, num_heads)[2], scale)
    return o, lse, q, k


def _qk_attention_fake(qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm, scale):
    q, k = empty_qk(qkv, num_heads), empty_qk(qkv, num_heads)
    o, lse = _attention_fake(q, k, q, scale)
    return o, lse, q, k


def _qk_attention_flops(qkv_shape, cos_shape, sin_shape, qw_shape, kw_shape, num_heads, eps, pairing, norm, scale,
                 *args, out_shape=None, **kwargs) -> int:  # fmt: skip
    """The parts' counts: QK-norm + RoPE (:func:`flopkit.formulas.qk_norm_rope`) plus SDPA's."""
    B, T, three_hd = qkv_shape
    D = three_hd // (3 * num_heads)
    rope = _qk_norm_rope_flops(
        qkv_shape, cos_shape, sin_shape, qw_shape, kw_shape, num_heads, eps, pairing, norm
    )
    return rope + formulas.sdpa(B, num_heads, T, T, D, D)


def _qk_attention_setup(ctx, inputs, output) -> None:
    qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm, scale = inputs
    o, lse, q, k = output
    ctx.save_for_backward(qkv, q, k, o, lse, cos, sin, q_weight, k_weight)
    ctx.num_heads, ctx.eps, ctx.pairing, ctx.norm, ctx.scale = num_heads, eps, pairing, norm, scale


def _qk_attention_backward(ctx, do, *unused):
    """``unused``: the gradients of lse, q and k, outputs only the backward reads (None, or zeros
    through the op's autograd; no caller differentiates them)."""
    saved = ctx.saved_tensors  # the backward op's tensors in its order: qkv, q, k, o, lse, cos, sin, weights
    bwd = QK_NORM_ROPE_ATTENTION_BACKWARD.forward if ctx.eager else QK_NORM_ROPE_ATTENTION_BACKWARD.op
    dqkv, dqw, dkw = bwd(do, *saved, ctx.num_heads, ctx.eps, ctx.pairing, ctx.norm, ctx.scale)
    q_weight, k_weight = saved[-2:]
    dqw = dqw if q_weight is not None and ctx.norm else None
    dkw = dkw if k_weight is not None and ctx.norm else None
    return dqkv, None, None, dqw, dkw, None, None, None, None, None


QK_NORM_ROPE_ATTENTION = KernelOp(
    "flopkit::qk_norm_rope_attention",
    "(Tensor qkv, Tensor cos, Tensor sin, Tensor? q_weight, Tensor? k_weight, SymInt num_heads, float eps, "
    "str pairing, bool norm, float scale) -> (Tensor, Tensor, Tensor, Tensor)",
    forward=qk_norm_rope_attention_fwd,
    reference=_qk_attention_reference,
    fake=_qk_attention_fake,
    flops=_qk_attention_flops,
    setup=_qk_attention_setup,
    backward=_qk_attention_backward,
    materialize_grads=False,
)
"""From ``qkv`` ``[B, T, 3*H*D]``: ``(o, lse, q, k)``, the attention of the QK-normalised, rotated
q and k with v (``o`` ``[B, H, T, D]`` over a ``[B, T, H, D]`` buffer, ``lse`` base 2), and the q
and k it attended with (the backward's inputs)."""


OPS: dict[str, KernelOp] = {
    op.name: op
    for op in (ATTENTION, ATTENTION_BACKWARD, QK_NORM_ROPE_ATTENTION, QK_NORM_ROPE_ATTENTION_BACKWARD)
}
"""Every op of the family by its ``flopkit::`` name."""
