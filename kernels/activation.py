"""GELU for compiled models: the ``flopkit::gelu`` op, which ``torch.compile`` keeps as a call to
PyTorch's own CUDA kernels instead of generating Triton ones.

At ViT-5's MLP width the activation's two passes over the ``[B*T, 4C]`` tensor (forward, and the
backward's read of the incoming gradient and the saved input) are pure memory traffic. PyTorch's
vectorised kernels move it at the device's copy rate; the kernels Inductor generates for the same
``gelu`` and ``gelu_backward`` take about 7 % longer on an H100 (PyTorch's in
``benchmarks/results/step_kernels_h100.md``; Inductor's in the run before,
``git log -- benchmarks/results/step_kernels_vit5-small_pending_2026-11-23_h100.md``). Inside a compiled region :func:`gelu` therefore calls a
custom op, opaque to Inductor, whose forward and backward run ``aten.gelu`` and
``aten.gelu_backward``; everywhere else it is ``F.gelu``. Results are identical: the same kernels
run in eager mode. FLOPs: one per element, as ``nn.GELU`` (:func:`flopkit.formulas.elementwise`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gelu"]

Tensor = torch.Tensor

_GELU_APPROXIMATIONS = ("none", "tanh")


@torch.library.custom_op("flopkit::gelu", mutates_args=())
def _gelu_op(x: Tensor, approximate: str) -> Tensor:
    return torch.ops.aten.gelu.default(x, approximate=approximate)


@_gelu_op.register_fake
def _(x, approximate):
    return torch.empty_like(x)


@torch.library.custom_op("flopkit::gelu_backward", mutates_args=())
def _gelu_backward_op(grad: Tensor, x: Tensor, approximate: str) -> Tensor:
    return torch.ops.aten.gelu_backward.default(grad, x, approximate=approximate)


@_gelu_backward_op.register_fake
def _(grad, x, approximate):
    return torch.empty_like(x)


def _setup(ctx, inputs, output):
    x, approximate = inputs
    ctx.save_for_backward(x)
    ctx.approximate = approximate


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return _gelu_backward_op(grad, x, ctx.approximate), None


_gelu_op.register_autograd(_backward, setup_context=_setup)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """``F.gelu(x, approximate=approximate)``, ``x`` of any shape; returns ``x``'s shape and dtype.

    While ``torch.compile`` traces a CUDA tensor, the ``flopkit::gelu`` op (PyTorch's kernels,
    forward and backward, launched by Inductor's generated code); otherwise ``F.gelu`` itself.
    """
    if approximate not in _GELU_APPROXIMATIONS:
        raise ValueError(f"gelu: approximate must be one of {_GELU_APPROXIMATIONS}, got {approximate!r}")
    if torch.compiler.is_compiling() and x.is_cuda:
        return _gelu_op(x, approximate)
    return F.gelu(x, approximate=approximate)
