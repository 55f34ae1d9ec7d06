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
from ._sdpa_triton import attention_bwd, attention_fwd, empty_token_major

__all__ = ["ATTENTION", "ATTENTION_BACKWARD", "OPS"]

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


def _attention_backward_fake(do, q, k, v, o, lse, scale):
    grads = tuple(empty_token_major(t) for t in (q, k, v))
    # The kernels' scratch, allocated after the gradients and freed on return: delta [B, H, T] fp32
    # (a memory replay on meta sees the same blocks in the same order).
    torch.empty_like(lse)
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


OPS: dict[str, KernelOp] = {op.name: op for op in (ATTENTION, ATTENTION_BACKWARD)}
"""Every op of the family by its ``flopkit::`` name."""
