"""The norm family's ops, one spec each (:class:`~flopkit.kernels._opspec.KernelOp`):
``flopkit::rms_norm``, ``flopkit::rms_norm_residual``, ``flopkit::per_head_rms_norm``,
``flopkit::head_norm`` and their shared backward ``flopkit::norm_backward``.

Each spec gives the kernel launch, the CPU reference, the fake (meta) implementation, the FLOP
formula (docs/conventions.md) and the autograd; :class:`KernelOp` generates from it the
``triton_op`` (torch.compile, dispatch modes, meta) and the eager path (an autograd Function that
launches the same kernels directly). The public functions in ``norm.py`` decide the route once
(:func:`~flopkit.kernels._dispatch.route`) and call :meth:`KernelOp.eager` or
:attr:`KernelOp.via_op`. Importing this module imports triton (the launchers); ``norm.py`` imports
it on the first kernel call.
"""

from __future__ import annotations

import math

import torch

from flopkit import formulas

from . import _norm_triton as _nt
from ._norm_triton import NormGrads
from ._opspec import KernelOp
from ._reference import (
    _normalize_heads,
    layer_scale_backward_ref,
    norm_backward_ref,
    residual_dtype,
    rms_norm_ref,
    rms_norm_residual_ref,
    split_heads,
)

__all__ = ["RMS_NORM", "RMS_NORM_RESIDUAL", "PER_HEAD_RMS_NORM", "HEAD_NORM", "NORM_BACKWARD", "OPS"]

Tensor = torch.Tensor


def _rows(shape, last: int) -> int:
    return math.prod(shape) // max(last, 1) if last else 0


# --------------------------------------------------------------------------- backward op
#
# Every norm op's autograd ends here. ``ctx.cfg`` is ``(eps, num_heads, head_dim, layer,
# per_head_weight)``; ``ctx.eager`` (set by KernelOp) says which way the forward went.


def _norm_backward_forward(
    dy, dres, x, weight, has_bias, num_heads, head_dim, eps, layer, per_head_weight, branch=None, scale=None, *, run
):  # fmt: skip
    dx, dw, db, dbranch, dscale = _nt.norm_backward(
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
        run=run,
    )
    # Distinct empties: custom-op outputs may not alias each other.
    dw = dw if dw is not None else x.new_empty((0,), dtype=torch.float32)
    db = dscale if dscale is not None else db if db is not None else x.new_empty((0,), dtype=torch.float32)
    return dx, dw, db, dbranch if dbranch is not None else x.new_empty((0,))


def _norm_backward_reference(
    dy, dres, x, weight, has_bias, num_heads, head_dim, eps, layer, per_head_weight, branch=None, scale=None
):  # fmt: skip
    dx, dw, db = norm_backward_ref(
        dy, dres, x, weight, has_bias, num_heads, head_dim, eps, layer, per_head_weight
    )
    if scale is None:
        return dx, dw, db, x.new_empty((0,))
    dbranch, dscale = layer_scale_backward_ref(dx, branch, scale)
    return dx, dw, dscale, dbranch


def _norm_backward_fake(
    dy, dres, x, weight, has_bias, num_heads, head_dim, eps, layer, per_head_weight, branch=None, scale=None
):  # fmt: skip
    wshape = (num_heads, head_dim) if per_head_weight else (head_dim,)
    dw = x.new_empty(wshape if weight is not None else (0,), dtype=torch.float32)
    db = x.new_empty(wshape if has_bias or scale is not None else (0,), dtype=torch.float32)
    dbranch = branch.new_empty(branch.shape) if scale is not None else x.new_empty((0,))
    return x.new_empty(x.shape), dw, db, dbranch


NORM_BACKWARD = KernelOp(
    "flopkit::norm_backward",
    "(Tensor dy, Tensor? dres, Tensor x, Tensor? weight, bool has_bias, SymInt num_heads, SymInt head_dim, "
    "float eps, bool layer, bool per_head_weight, Tensor? branch=None, Tensor? scale=None) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    forward=_norm_backward_forward,
    reference=_norm_backward_reference,
    fake=_norm_backward_fake,
)
"""Gradients of every norm op: ``(dx, dw, db, dbranch)``; ``dx`` gets ``+ dres`` (the residual
output's gradient) when given. With a LayerScale ``scale`` (``h = residual + branch * scale``, ``x``
is ``h``), ``db`` is the scale's gradient and ``dbranch = dx * scale``. ``dw``/``db`` are fp32 of the
weight's shape; absent gradients are empty ``(0,)``."""


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _grads(ctx, dy, dres, src, weight, bias_dtype, branch, scale) -> NormGrads:
    """The backward of every norm op at its normalised rows ``src`` (``h`` for a residual op).

    Eager (``ctx.eager``): the backward launcher, its weight gradients rounded once to the
    parameter's dtype. Otherwise the ``flopkit::norm_backward`` op (what torch.compile traces and
    the counters see), its fp32 gradients cast to the parameters' dtypes. ``dweight``, ``dbias`` and
    ``dscale`` come back in the dtypes of ``weight``, the bias and ``scale``; absent ones as None.
    """
    eps, num_heads, head_dim, layer, per_head_weight = ctx.cfg
    if dy is None:
        dy = torch.zeros_like(src)
    if ctx.eager:
        g = _nt.norm_backward(
            dy,
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
        if bias_dtype is not None and g.dbias.dtype != bias_dtype:
            g = g._replace(dbias=g.dbias.to(bias_dtype))
        if scale is not None and g.dscale.dtype != scale.dtype:
            g = g._replace(dscale=g.dscale.to(scale.dtype))
        return g
    dx, dw, db, dbranch = NORM_BACKWARD.op(
        dy, dres, src, weight, bias_dtype is not None, num_heads, head_dim, eps, layer, per_head_weight, branch, scale
    )  # fmt: skip
    return NormGrads(
        dx,
        _cast(dw, weight.dtype) if weight is not None else None,
        _cast(db, bias_dtype) if bias_dtype is not None else None,
        dbranch if scale is not None else None,
        _cast(db, scale.dtype) if scale is not None else None,
    )


# --------------------------------------------------------------------------- rms_norm


def _rms_norm_forward(x: Tensor, weight: Tensor | None, eps: float, *, run) -> Tensor:
    return _nt.norm_forward(x, weight, None, eps, run=run)[0]


def _rms_norm_setup(ctx, inputs, output) -> None:
    x, weight, eps = inputs
    ctx.save_for_backward(x, weight)
    ctx.cfg = (eps, 1, x.shape[-1], False, False)


def _rms_norm_backward(ctx, dy):
    x, weight = ctx.saved_tensors
    g = _grads(ctx, dy, None, x, weight, None, None, None)
    return g.dx, g.dweight if ctx.needs_input_grad[1] else None, None


def _rms_norm_flops(x_shape, *args, out_shape=None, **kwargs) -> int:
    """RMSNorm: 3 FLOPs per element (square-accumulate 2, scale 1; docs/conventions.md)."""
    return formulas.rms_norm(_rows(x_shape, x_shape[-1]), x_shape[-1])


RMS_NORM = KernelOp(
    "flopkit::rms_norm",
    "(Tensor x, Tensor? weight, float eps) -> Tensor",
    forward=_rms_norm_forward,
    reference=rms_norm_ref,
    fake=lambda x, weight, eps: x.new_empty(x.shape),
    flops=_rms_norm_flops,
    setup=_rms_norm_setup,
    backward=_rms_norm_backward,
    materialize_grads=False,
)
"""RMSNorm over the last dim of ``x`` ``[*, D]``; ``weight`` ``(D,)`` or None."""


# --------------------------------------------------------------------------- rms_norm_residual


def _rms_norm_residual_forward(x, residual, weight, eps, scale=None, *, run) -> tuple[Tensor, Tensor]:
    return _nt.norm_forward(x, weight, None, eps, residual=residual, scale=scale, run=run)


def _rms_norm_residual_fake(x, residual, weight, eps, scale=None):
    dtype = residual_dtype(x, residual, scale)
    return x.new_empty(x.shape, dtype=dtype), x.new_empty(x.shape, dtype=dtype)


def _rms_norm_residual_setup(ctx, inputs, output) -> None:
    x, residual, weight, eps = inputs[:4]
    scale = inputs[4] if len(inputs) > 4 else None  # the schema's default may be left out
    # The backward runs at h; the branch x is needed only for the scale's gradient.
    ctx.save_for_backward(output[1], weight, x if scale is not None else None, scale)
    ctx.cfg = (eps, 1, x.shape[-1], False, False)
    ctx.dtypes = (x.dtype, residual.dtype)


def _rms_norm_residual_backward(ctx, dy, dh):
    h, weight, branch, scale = ctx.saved_tensors
    g = _grads(ctx, dy, dh, h, weight, None, branch, scale)
    need, dx, (x_dtype, r_dtype) = ctx.needs_input_grad, g.dx, ctx.dtypes
    # h = residual + x (* scale): the residual receives the gradient reaching h, x that times scale.
    grads = (
        g.dbranch if scale is not None else dx if dx.dtype == x_dtype else dx.to(x_dtype),
        dx if dx.dtype == r_dtype else dx.to(r_dtype),
        g.dweight if need[2] else None,
        None,
        g.dscale if len(need) > 4 and need[4] else None,
    )
    return grads[: len(need)]


def _rms_norm_residual_flops(x_shape, *args, out_shape=None, **kwargs) -> int:
    """Fused residual RMSNorm: 3 per element. The residual add and a LayerScale multiply are not
    counted, as FlopCounterMode counts neither ``aten.add`` nor ``aten.mul`` unfused (LayerScale's
    FLOPs are its module's, in the analytic count)."""
    return formulas.rms_norm(_rows(x_shape, x_shape[-1]), x_shape[-1])


RMS_NORM_RESIDUAL = KernelOp(
    "flopkit::rms_norm_residual",
    "(Tensor x, Tensor residual, Tensor? weight, float eps, Tensor? scale=None) -> (Tensor, Tensor)",
    forward=_rms_norm_residual_forward,
    reference=rms_norm_residual_ref,
    fake=_rms_norm_residual_fake,
    flops=_rms_norm_residual_flops,
    setup=_rms_norm_residual_setup,
    backward=_rms_norm_residual_backward,
    materialize_grads=False,
)
"""``h = residual + x`` (``residual + x * scale``, LayerScale ``(D,)``) in fp32, rounded once to the
promoted dtype; returns ``(rms_norm(h, weight), h)``."""


# --------------------------------------------------------------------------- per_head_rms_norm


def _per_head_forward(x, weight, num_heads, head_dim, eps, *, run) -> Tensor:
    return _nt.norm_forward(x, weight, None, eps, num_heads=num_heads, head_dim=head_dim, run=run)[0]


def _per_head_reference(x, weight, num_heads, head_dim, eps) -> Tensor:
    xh = split_heads(x, num_heads, head_dim, "per_head_rms_norm")
    return _normalize_heads(xh, weight, None, eps, "rms").reshape(x.shape)


def _per_head_setup(ctx, inputs, output) -> None:
    x, weight, num_heads, head_dim, eps = inputs
    ctx.save_for_backward(x, weight)
    ctx.cfg = (eps, num_heads, head_dim, False, False)


def _per_head_backward(ctx, dy):
    x, weight = ctx.saved_tensors
    g = _grads(ctx, dy, None, x, weight, None, None, None)
    return g.dx, g.dweight if ctx.needs_input_grad[1] else None, None, None, None


def _per_head_flops(x_shape, weight_shape, num_heads, head_dim, *args, out_shape=None, **kwargs) -> int:
    """QK-norm: 3 per element over all heads (``3 * N*H*D``)."""
    return formulas.per_head_rms_norm(_rows(x_shape, num_heads * head_dim), num_heads, head_dim)


PER_HEAD_RMS_NORM = KernelOp(
    "flopkit::per_head_rms_norm",
    "(Tensor x, Tensor? weight, SymInt num_heads, SymInt head_dim, float eps) -> Tensor",
    forward=_per_head_forward,
    reference=_per_head_reference,
    fake=lambda x, weight, num_heads, head_dim, eps: x.new_empty(x.shape),
    flops=_per_head_flops,
    setup=_per_head_setup,
    backward=_per_head_backward,
    materialize_grads=False,
)
"""RMSNorm of each head's ``D`` slice of ``x`` (``[*, H*D]`` or ``[*, H, D]``), shared ``(D,)`` weight."""


# --------------------------------------------------------------------------- head_norm


def _head_norm_forward(x, weight, bias, num_heads, head_dim, eps, mode, *, run) -> Tensor:
    return _nt.norm_forward(
        x,
        weight,
        bias,
        eps,
        num_heads=num_heads,
        head_dim=head_dim,
        layer=mode == "layer",
        per_head_weight=True,
        run=run,
    )[0]


def _head_norm_reference(x, weight, bias, num_heads, head_dim, eps, mode) -> Tensor:
    xh = split_heads(x, num_heads, head_dim, "head_norm")
    return _normalize_heads(xh, weight, bias, eps, mode).reshape(x.shape)


def _head_norm_setup(ctx, inputs, output) -> None:
    x, weight, bias, num_heads, head_dim, eps, mode = inputs
    ctx.save_for_backward(x, weight)
    ctx.cfg = (eps, num_heads, head_dim, mode == "layer", True)
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _head_norm_backward(ctx, dy):
    x, weight = ctx.saved_tensors
    g = _grads(ctx, dy, None, x, weight, ctx.bias_dtype, None, None)
    need = ctx.needs_input_grad
    return g.dx, g.dweight if need[1] else None, g.dbias if need[2] else None, None, None, None, None


def _head_norm_flops(
    x_shape, weight_shape, bias_shape, num_heads, head_dim, eps, mode, *args, out_shape=None, **kwargs
) -> int:
    """HeadNorm: rms 3, layer 5, +1 with bias, per element."""
    rows = _rows(x_shape, num_heads * head_dim)
    return formulas.head_norm(rows, num_heads, head_dim, mode, bias_shape is not None)


HEAD_NORM = KernelOp(
    "flopkit::head_norm",
    "(Tensor x, Tensor? weight, Tensor? bias, SymInt num_heads, SymInt head_dim, float eps, str mode) -> Tensor",
    forward=_head_norm_forward,
    reference=_head_norm_reference,
    fake=lambda x, weight, bias, num_heads, head_dim, eps, mode: x.new_empty(x.shape),
    flops=_head_norm_flops,
    setup=_head_norm_setup,
    backward=_head_norm_backward,
    materialize_grads=False,
)
"""Per-head RMS (``mode="rms"``) or Layer (``"layer"``) norm, ``(H, D)`` weight and bias."""


OPS: dict[str, KernelOp] = {
    op.name: op for op in (RMS_NORM, RMS_NORM_RESIDUAL, PER_HEAD_RMS_NORM, HEAD_NORM, NORM_BACKWARD)
}
"""Every op of the family by its ``flopkit::`` name."""
