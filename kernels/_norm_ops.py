"""``torch.library`` custom ops for the norm kernels: ``flopkit::rms_norm``,
``flopkit::rms_norm_residual``, ``flopkit::per_head_rms_norm``, ``flopkit::head_norm`` and their
shared backward ``flopkit::norm_backward``.

Each op has a fake (meta) implementation, so ``torch.compile`` and the meta device see its
shapes; its autograd is registered with ``torch.library.register_autograd`` (the custom-op form
of an autograd Function: compile traces through it); the forward ops have FLOP formulas
registered with ``torch.utils.flop_counter`` (docs/conventions.md). Importing this module does not
import triton: the Triton launchers are imported when an op first runs. On a CPU tensor
without the Triton interpreter the ops run the PyTorch reference (see ``route_through_custom_ops``).
"""

from __future__ import annotations

import math

import torch
from torch.library import triton_op
from torch.utils.flop_counter import register_flop_formula

from flopkit import formulas

from ._dispatch import direct_apply, needs_custom_op, runs_reference_in_op
from ._reference import (
    _normalize_heads,
    layer_scale_backward_ref,
    norm_backward_ref,
    residual_dtype,
    rms_norm_ref,
    rms_norm_residual_ref,
    split_heads,
)

__all__ = ["rms_norm_op", "rms_norm_residual_op", "per_head_rms_norm_op", "head_norm_op", "norm_backward_op"]

Tensor = torch.Tensor


_TRITON_LAUNCHERS = None  # kernels/_norm_triton.py once imported (it imports triton)


def _launchers():
    global _TRITON_LAUNCHERS
    if _TRITON_LAUNCHERS is None:
        from . import _norm_triton

        _TRITON_LAUNCHERS = _norm_triton
    return _TRITON_LAUNCHERS


# The op bodies below are what torch.compile decomposes the ops into (``triton_op``): their kernel
# launches go through ``wrap_triton`` (``run=_launchers().wrapped``), so Inductor launches the Triton
# kernels from its own generated code, with no dispatcher or Python launcher per call at run time.


# --------------------------------------------------------------------------- forward ops


@triton_op("flopkit::rms_norm", mutates_args=())
def rms_norm_op(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """RMSNorm over the last dim of ``x`` ``[*, D]``; ``weight`` ``(D,)`` or None."""
    if runs_reference_in_op(x):
        return rms_norm_ref(x, weight, eps)
    y, _ = _launchers().norm_forward(x, weight, None, eps, run=_launchers().wrapped)
    return y


@rms_norm_op.register_fake
def _(x, weight, eps):
    return x.new_empty(x.shape)


@triton_op("flopkit::rms_norm_residual", mutates_args=())
def rms_norm_residual_op(
    x: Tensor, residual: Tensor, weight: Tensor | None, eps: float, scale: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``h = residual + x`` (``residual + x * scale``, LayerScale ``(D,)``) in fp32, rounded once to
    the promoted dtype; returns ``(rms_norm(h, weight), h)``."""
    if runs_reference_in_op(x):
        return rms_norm_residual_ref(x, residual, weight, eps, scale)
    y, h = _launchers().norm_forward(
        x, weight, None, eps, residual=residual, scale=scale, run=_launchers().wrapped
    )
    return y, h


@rms_norm_residual_op.register_fake
def _(x, residual, weight, eps, scale=None):
    dtype = residual_dtype(x, residual, scale)
    return x.new_empty(x.shape, dtype=dtype), x.new_empty(x.shape, dtype=dtype)


@triton_op("flopkit::per_head_rms_norm", mutates_args=())
def per_head_rms_norm_op(
    x: Tensor, weight: Tensor | None, num_heads: int, head_dim: int, eps: float
) -> Tensor:
    """RMSNorm of each head's ``D`` slice of ``x`` (``[*, H*D]`` or ``[*, H, D]``), shared ``(D,)`` weight."""
    if runs_reference_in_op(x):
        return _normalize_heads(
            split_heads(x, num_heads, head_dim, "per_head_rms_norm"), weight, None, eps, "rms"
        ).reshape(x.shape)
    y, _ = _launchers().norm_forward(
        x, weight, None, eps, num_heads=num_heads, head_dim=head_dim, run=_launchers().wrapped
    )
    return y


@per_head_rms_norm_op.register_fake
def _(x, weight, num_heads, head_dim, eps):
    return x.new_empty(x.shape)


@triton_op("flopkit::head_norm", mutates_args=())
def head_norm_op(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    num_heads: int,
    head_dim: int,
    eps: float,
    mode: str,
) -> Tensor:
    """Per-head RMS (``mode="rms"``) or Layer (``"layer"``) norm, ``(H, D)`` weight and bias."""
    if runs_reference_in_op(x):
        xh = split_heads(x, num_heads, head_dim, "head_norm")
        return _normalize_heads(xh, weight, bias, eps, mode).reshape(x.shape)
    y, _ = _launchers().norm_forward(
        x,
        weight,
        bias,
        eps,
        num_heads=num_heads,
        head_dim=head_dim,
        layer=mode == "layer",
        per_head_weight=True,
        run=_launchers().wrapped,
    )
    return y


@head_norm_op.register_fake
def _(x, weight, bias, num_heads, head_dim, eps, mode):
    return x.new_empty(x.shape)


# --------------------------------------------------------------------------- backward op


@triton_op("flopkit::norm_backward", mutates_args=())
def norm_backward_op(
    dy: Tensor,
    dres: Tensor | None,
    x: Tensor,
    weight: Tensor | None,
    has_bias: bool,
    num_heads: int,
    head_dim: int,
    eps: float,
    layer: bool,
    per_head_weight: bool,
    branch: Tensor | None = None,
    scale: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of every norm op: ``(dx, dw, db, dbranch)``; ``dx`` gets ``+ dres`` (the residual
    output's gradient) when given. With a LayerScale ``scale`` (``h = residual + branch * scale``,
    ``x`` is ``h``), ``db`` is the scale's gradient and ``dbranch = dx * scale``. ``dw``/``db`` are
    fp32 of the weight's shape; absent gradients are empty ``(0,)``."""
    if runs_reference_in_op(x):
        dx, dw, db = norm_backward_ref(
            dy, dres, x, weight, has_bias, num_heads, head_dim, eps, layer, per_head_weight
        )
        if scale is None:
            return dx, dw, db, x.new_empty((0,))
        dbranch, dscale = layer_scale_backward_ref(dx, branch, scale)
        return dx, dw, dscale, dbranch
    dx, dw, db, dbranch, dscale = _launchers().norm_backward(
        dy,
        x,
        weight,
        has_bias,
        eps,
        num_heads=num_heads,
        head_dim=head_dim,
        layer=layer,
        per_head_weight=per_head_weight,
        dres=dres,
        branch=branch,
        scale=scale,
        run=_launchers().wrapped,
    )
    # Distinct empties: custom-op outputs may not alias each other.
    dw = dw if dw is not None else x.new_empty((0,), dtype=torch.float32)
    db = dscale if dscale is not None else db if db is not None else x.new_empty((0,), dtype=torch.float32)
    return dx, dw, db, dbranch if dbranch is not None else x.new_empty((0,))


@norm_backward_op.register_fake
def _(
    dy, dres, x, weight, has_bias, num_heads, head_dim, eps, layer, per_head_weight, branch=None, scale=None
):
    wshape = (num_heads, head_dim) if per_head_weight else (head_dim,)
    dw = x.new_empty(wshape if weight is not None else (0,), dtype=torch.float32)
    db = x.new_empty(wshape if has_bias or scale is not None else (0,), dtype=torch.float32)
    dbranch = branch.new_empty(branch.shape) if scale is not None else x.new_empty((0,))
    return x.new_empty(x.shape), dw, db, dbranch


def _grad_for(param: Tensor | None, grad: Tensor, needed: bool) -> Tensor | None:
    if param is None or not needed:
        return None
    return grad.to(param.dtype)


# --------------------------------------------------------------------------- autograd


def _save_x_weight(ctx, inputs, output):
    x, weight = inputs[0], inputs[1]
    ctx.save_for_backward(x, weight)


def _rms_norm_backward(ctx, dy):
    x, weight = ctx.saved_tensors
    D = x.shape[-1]
    dx, dw, _, _ = norm_backward_op(dy, None, x, weight, False, 1, D, ctx.eps, False, False)
    return dx, _grad_for(weight, dw, ctx.needs_input_grad[1]), None


def _rms_norm_setup(ctx, inputs, output):
    _save_x_weight(ctx, inputs, output)
    ctx.eps = inputs[2]


torch.library.register_autograd("flopkit::rms_norm", _rms_norm_backward, setup_context=_rms_norm_setup)


def _rms_norm_residual_setup(ctx, inputs, output):
    x, residual, weight, eps = inputs[:4]
    scale = inputs[4] if len(inputs) > 4 else None  # the schema's default may be left out
    # The branch x is needed only for the scale's gradient.
    ctx.save_for_backward(output[1], weight, x if scale is not None else None, scale)
    ctx.eps, ctx.dtypes = eps, (x.dtype, residual.dtype)


def _rms_norm_residual_backward(ctx, dy, dh):
    h, weight, branch, scale = ctx.saved_tensors
    D = h.shape[-1]
    if dy is None:
        dy = torch.zeros_like(h)
    dx, dw, ds, dbranch = norm_backward_op(
        dy, dh, h, weight, False, 1, D, ctx.eps, False, False, branch, scale
    )
    # h = residual + x (* scale): the residual receives the gradient reaching h, x that times scale.
    need = ctx.needs_input_grad
    grads = (
        dbranch if scale is not None else dx.to(ctx.dtypes[0]),
        dx.to(ctx.dtypes[1]),
        _grad_for(weight, dw, need[2]),
        None,
        _grad_for(scale, ds, len(need) > 4 and need[4]),
    )
    return grads[: len(need)]


torch.library.register_autograd(
    "flopkit::rms_norm_residual", _rms_norm_residual_backward, setup_context=_rms_norm_residual_setup
)


def _per_head_setup(ctx, inputs, output):
    _save_x_weight(ctx, inputs, output)
    ctx.num_heads, ctx.head_dim, ctx.eps = inputs[2], inputs[3], inputs[4]


def _per_head_backward(ctx, dy):
    x, weight = ctx.saved_tensors
    dx, dw, _, _ = norm_backward_op(
        dy, None, x, weight, False, ctx.num_heads, ctx.head_dim, ctx.eps, False, False
    )
    return dx, _grad_for(weight, dw, ctx.needs_input_grad[1]), None, None, None


torch.library.register_autograd(
    "flopkit::per_head_rms_norm", _per_head_backward, setup_context=_per_head_setup
)


def _head_norm_setup(ctx, inputs, output):
    x, weight, bias, num_heads, head_dim, eps, mode = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.num_heads, ctx.head_dim, ctx.eps, ctx.layer = num_heads, head_dim, eps, mode == "layer"


def _head_norm_backward(ctx, dy):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db, _ = norm_backward_op(
        dy, None, x, weight, bias is not None, ctx.num_heads, ctx.head_dim, ctx.eps, ctx.layer, True
    )
    return (
        dx,
        _grad_for(weight, dw, ctx.needs_input_grad[1]),
        _grad_for(bias, db, ctx.needs_input_grad[2]),
        None,
        None,
        None,
        None,
    )


torch.library.register_autograd("flopkit::head_norm", _head_norm_backward, setup_context=_head_norm_setup)


# --------------------------------------------------------------------------- FLOP formulas


def _rows(shape, last: int) -> int:
    return math.prod(shape) // max(last, 1) if last else 0


@register_flop_formula(torch.ops.flopkit.rms_norm)
def _rms_norm_flop(x_shape, *args, out_shape=None, **kwargs) -> int:
    """RMSNorm: 3 FLOPs per element (square-accumulate 2, scale 1; docs/conventions.md)."""
    return formulas.rms_norm(_rows(x_shape, x_shape[-1]), x_shape[-1])


@register_flop_formula(torch.ops.flopkit.rms_norm_residual)
def _rms_norm_residual_flop(x_shape, *args, out_shape=None, **kwargs) -> int:
    """Fused residual RMSNorm: 3 per element. The residual add and a LayerScale multiply are not
    counted, as FlopCounterMode counts neither ``aten.add`` nor ``aten.mul`` unfused (LayerScale's
    FLOPs are its module's, in the analytic count)."""
    return formulas.rms_norm(_rows(x_shape, x_shape[-1]), x_shape[-1])


@register_flop_formula(torch.ops.flopkit.per_head_rms_norm)
def _per_head_rms_norm_flop(
    x_shape, weight_shape, num_heads, head_dim, *args, out_shape=None, **kwargs
) -> int:
    """QK-norm: 3 per element over all heads (``3 * N*H*D``)."""
    return formulas.per_head_rms_norm(_rows(x_shape, num_heads * head_dim), num_heads, head_dim)


@register_flop_formula(torch.ops.flopkit.head_norm)
def _head_norm_flop(
    x_shape, weight_shape, bias_shape, num_heads, head_dim, eps, mode, *args, out_shape=None, **kwargs
) -> int:
    """HeadNorm: rms 3, layer 5, +1 with bias, per element."""
    rows = _rows(x_shape, num_heads * head_dim)
    return formulas.head_norm(rows, num_heads, head_dim, mode, bias_shape is not None)


# --------------------------------------------------------------------------- entry points
#
# The public functions call these. Under torch.compile, a dispatch mode, a JIT trace, on meta or
# when routed (``needs_custom_op``) they call the custom ops above; a plain eager call runs the same
# launchers through ``_NormFunction``, skipping the dispatcher's Python round trip (custom-op
# dispatch plus its Python autograd wrapper cost more host time than the kernels run at ViT sizes).


def _forward(x, residual, weight, bias, scale, spec):
    """The eager forward launch of every norm op: ``(y, h)`` (``h`` only with a residual)."""
    eps, num_heads, head_dim, layer, per_head_weight = spec
    return _launchers().norm_forward(
        x,
        weight,
        bias,
        eps,
        num_heads=num_heads,
        head_dim=head_dim,
        layer=layer,
        per_head_weight=per_head_weight,
        residual=residual,
        scale=scale,
    )


class _NormFunction(torch.autograd.Function):
    """Eager autograd for every norm op: forward and backward launch the Triton kernels directly.

    ``spec`` is ``(eps, num_heads, head_dim, layer, per_head_weight)``: one argument instead of five,
    as ``Function.apply`` costs host time per argument."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, scale, spec):
        y, h = _forward(x, residual, weight, bias, scale, spec)
        fused = residual is not None
        # An unused output's gradient arrives as None, not as a tensor of zeros (a fill kernel and
        # a pass of the backward kernel reading it): the backward then adds no ``dres``.
        ctx.set_materialize_grads(False)
        # The branch x is needed only for a LayerScale's gradient.
        ctx.save_for_backward(h if fused else x, weight, x if scale is not None else None, scale)
        ctx.spec, ctx.bias_dtype = spec, bias.dtype if bias is not None else None
        ctx.in_dtypes = (x.dtype, residual.dtype) if fused else None
        return (y, h) if fused else y

    @staticmethod
    def backward(ctx, dy, dres=None):
        src, weight, branch, scale = ctx.saved_tensors
        eps, num_heads, head_dim, layer, per_head_weight = ctx.spec
        bias_dtype, in_dtypes = ctx.bias_dtype, ctx.in_dtypes
        g = _launchers().norm_backward(
            dy if dy is not None else torch.zeros_like(src),
            src,
            weight,
            bias_dtype is not None,
            eps,
            num_heads=num_heads,
            head_dim=head_dim,
            layer=layer,
            per_head_weight=per_head_weight,
            dres=dres,
            branch=branch,
            scale=scale,
            grad_dtype=weight.dtype if weight is not None else bias_dtype or torch.float32,
        )
        need = ctx.needs_input_grad
        dw = g.dweight if weight is not None and need[2] else None
        db = _cast(g.dbias, bias_dtype) if bias_dtype is not None and need[3] else None
        if in_dtypes is None:
            return g.dx, None, dw, db, None, None
        ds = _cast(g.dscale, scale.dtype) if scale is not None and need[4] else None
        # h = residual + x (* scale): the residual receives the gradient reaching h, x that times scale.
        dx = g.dbranch if scale is not None else _cast(g.dx, in_dtypes[0])
        return dx, _cast(g.dx, in_dtypes[1]), dw, db, ds, None


_apply_norm = direct_apply(_NormFunction)


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _eager(x, residual, weight, bias, scale, spec):
    """The eager call: through ``_NormFunction`` when a gradient is needed, else straight to the
    launcher (``autograd.Function.apply`` alone costs several microseconds of host time)."""
    if torch.is_grad_enabled() and (
        x.requires_grad
        or (residual is not None and residual.requires_grad)
        or (weight is not None and weight.requires_grad)
        or (bias is not None and bias.requires_grad)
        or (scale is not None and scale.requires_grad)
    ):
        return _apply_norm(x, residual, weight, bias, scale, spec)
    y, h = _forward(x, residual, weight, bias, scale, spec)
    return (y, h) if residual is not None else y


def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """``flopkit::rms_norm``, or its eager twin (see the note above)."""
    if needs_custom_op(x):
        return rms_norm_op(x, weight, eps)
    return _eager(x, None, weight, None, None, (eps, 1, x.shape[-1], False, False))


def rms_norm_residual(
    x: Tensor, residual: Tensor, weight: Tensor | None, eps: float, scale: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``flopkit::rms_norm_residual``, or its eager twin."""
    if needs_custom_op(x):
        return rms_norm_residual_op(x, residual, weight, eps, scale)
    return _eager(x, residual, weight, None, scale, (eps, 1, x.shape[-1], False, False))


def per_head_rms_norm(x: Tensor, weight: Tensor | None, num_heads: int, head_dim: int, eps: float) -> Tensor:
    """``flopkit::per_head_rms_norm``, or its eager twin."""
    if needs_custom_op(x):
        return per_head_rms_norm_op(x, weight, num_heads, head_dim, eps)
    return _eager(x, None, weight, None, None, (eps, num_heads, head_dim, False, False))


def head_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    num_heads: int,
    head_dim: int,
    eps: float,
    mode: str,
) -> Tensor:
    """``flopkit::head_norm``, or its eager twin."""
    if needs_custom_op(x):
        return head_norm_op(x, weight, bias, num_heads, head_dim, eps, mode)
    return _eager(x, None, weight, bias, None, (eps, num_heads, head_dim, mode == "layer", True))
