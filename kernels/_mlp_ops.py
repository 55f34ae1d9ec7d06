"""The GELU + linear op, one spec (:class:`~flopkit.kernels._opspec.KernelOp`): ``flopkit::gelu_linear``
(``y`` and the ``h`` and ``g = gelu'(pre)`` its backward needs) and its backward
``flopkit::gelu_linear_backward`` (``dpre`` only: the weight and bias gradients are PyTorch's
``mm`` and ``sum`` in the autograd backward), with their CPU references, fakes, FLOP formulas
(``linear``'s: ``2·N·C·H`` each way) and the autograd. ``mlp.py``'s public op decides the route
once. Importing this module imports triton (the launchers).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flopkit import formulas

from ._mlp_triton import gelu_linear_backward, gelu_linear_forward
from ._opspec import KernelOp

__all__ = ["GELU_LINEAR", "GELU_LINEAR_BACKWARD", "gelu_deriv_ref"]

Tensor = torch.Tensor


def gelu_deriv_ref(pre: Tensor) -> tuple[Tensor, Tensor]:
    """``(gelu(pre), gelu'(pre))`` in fp32 (or wider), each rounded once to ``pre``'s dtype."""
    x = pre.to(torch.promote_types(pre.dtype, torch.float32))
    cdf = 0.5 * (1.0 + torch.erf(x * math.sqrt(0.5)))
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return (x * cdf).to(pre.dtype), (cdf + x * pdf).to(pre.dtype)


# --------------------------------------------------------------------------- backward op


def _backward_reference(dy, weight, g):
    acc = torch.promote_types(g.dtype, torch.float32)
    dh = dy.reshape(-1, weight.shape[0]).to(acc) @ weight.to(acc)
    return (dh.reshape(g.shape) * g.to(acc)).to(g.dtype)


def _backward_fake(dy, weight, g):
    return torch.empty(g.shape, dtype=g.dtype, device=g.device)


def _backward_flops(dy_shape, weight_shape, g_shape, *args, out_shape=None, **kwargs) -> int:
    """``dy @ weight``: ``2·N·C·H`` (the product by ``g`` is not counted, as no plain product is)."""
    C, H = weight_shape
    return formulas.linear(math.prod(dy_shape[:-1]), H, C)


GELU_LINEAR_BACKWARD = KernelOp(
    "flopkit::gelu_linear_backward",
    "(Tensor dy, Tensor weight, Tensor g) -> Tensor",
    forward=gelu_linear_backward,
    reference=_backward_reference,
    fake=_backward_fake,
    flops=_backward_flops,
)
"""``dpre = (dy @ weight) * g`` ``[*, H]``, from ``dy`` ``[*, C]``, ``weight`` ``[C, H]``, ``g`` ``[*, H]``."""


# --------------------------------------------------------------------------- forward op


def _reference(pre, weight, bias):
    h, g = gelu_deriv_ref(pre)
    return F.linear(h, weight, bias), h, g


def _fake(pre, weight, bias):
    y = pre.new_empty((*pre.shape[:-1], weight.shape[0]))
    return (
        y,
        torch.empty_like(pre, memory_format=torch.contiguous_format),
        torch.empty_like(pre, memory_format=torch.contiguous_format),
    )


def _flops(pre_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """``h @ weightᵀ``: ``2·N·H·C`` (GELU's one FLOP per element and the bias add are elementwise,
    which torch's counter leaves out for every op)."""
    C, H = weight_shape
    return formulas.linear(math.prod(pre_shape[:-1]), H, C)


def _setup(ctx, inputs, output) -> None:
    pre, weight, bias = inputs
    _, h, g = output
    ctx.save_for_backward(weight, h, g)
    ctx.has_bias = bias is not None


def _backward(ctx, dy, dh=None, dg=None):
    """``dh`` and ``dg`` are None: ``h`` and ``g`` are the backward's, no caller differentiates them."""
    weight, h, g = ctx.saved_tensors
    need_pre, need_weight, need_bias = ctx.needs_input_grad
    dpre = dweight = dbias = None
    if need_pre:
        bwd = GELU_LINEAR_BACKWARD.forward if ctx.eager else GELU_LINEAR_BACKWARD.op
        dpre = bwd(dy, weight, g)
    dy2 = dy.reshape(-1, weight.shape[0])
    if need_weight:
        dweight = (dy2.t() @ h.reshape(-1, weight.shape[1])).to(weight.dtype)
    if need_bias and ctx.has_bias:
        dbias = dy2.sum(0).to(weight.dtype)
    return dpre, dweight, dbias


GELU_LINEAR = KernelOp(
    "flopkit::gelu_linear",
    "(Tensor pre, Tensor weight, Tensor? bias) -> (Tensor, Tensor, Tensor)",
    forward=gelu_linear_forward,
    reference=_reference,
    fake=_fake,
    flops=_flops,
    setup=_setup,
    backward=_backward,
    materialize_grads=False,
)
"""``(y, h, g)``: ``y = gelu(pre) @ weightᵀ + bias`` ``[*, C]`` and, for the backward, ``h = gelu(pre)``
and ``g = gelu'(pre)`` (``[*, H]``, contiguous), from ``pre`` ``[*, H]`` and ``weight`` ``[C, H]``."""
