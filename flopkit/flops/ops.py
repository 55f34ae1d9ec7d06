"""The op table: every op flopkit's measured counts know, once, with what each counter makes of it.

One :class:`Op` per op, keyed by the name torch's ``FlopCounterMode`` reports it under
(``"aten.mm"``, ``"flopkit.rms_norm"``; pseudo-ops recorded at the Python call are named
``"flopkit.measured.*"``). An entry says:

* ``category``: the :data:`flopkit.formulas.CATEGORIES` its FLOPs go to (None: no FLOPs counted);
* ``formula``: the FlopCounterMode formula flopkit gives it where torch has none (arguments as
  shapes, ``out_shape`` as a keyword, as torch's ``register_flop_formula``), each calling the single
  registry :mod:`flopkit.formulas`;
* ``fvcore``: the names fvcore's JIT trace reports it under, when fvcore (or a handle flopkit gives
  fvcore, :mod:`flopkit.flops.measured`) counts it, and ``fvcore_factor``, the factor from fvcore's
  unit to FLOPs (its own matmul handles count multiply-accumulates: ``FLOPS_PER_MAC``);
* ``movement``: no FLOPs at all (views, copies, indexing, comparisons), and ``convention``:
  pointwise arithmetic flopkit's convention leaves out (docs/conventions.md); both are kept out of
  the "not counted" lists;
* ``custom``: for a ``flopkit::`` custom op, the :mod:`flopkit.formulas` formula that counts it.

A new op's formula goes here (:func:`op` for one of torch's, :func:`register_op` at run time, which
:func:`flopkit.register_formula` calls); every counter reads its view from :data:`OPS`:
:func:`torch_category` and :func:`torch_mapping` (the FlopCounterMode engine,
:mod:`flopkit.flops.anymodel`), :func:`fvcore_table` (:mod:`flopkit.flops.measured`, and the plain
counters of :mod:`flopkit.flops.counters`), :func:`category_of` (validate's raw columns).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from flopkit import formulas
from flopkit.formulas import CATEGORIES, FLOP_FORMULAS, FLOPS_PER_MAC

__all__ = [
    "Op",
    "OPS",
    "op",
    "QK_NORM_ROPE",
    "QK_NORM_ROPE_PARTS",
    "RMS_NORM_OP",
    "RMS_NORM_BACKWARD_OP",
    "CAUSAL_OP",
    "category_of",
    "torch_category",
    "torch_mapping",
    "fvcore_table",
    "not_flops",
    "is_convention",
    "register_op",
    "numel",
    "qk_part",
    "qk_norm_rope_split",
    "grouped_mm_flops",
]


@dataclass(frozen=True)
class Op:
    """One op as flopkit's counters see it (see the module docstring)."""

    name: str
    category: str | None = None
    formula: Callable[..., int] | None = None
    fvcore: tuple[str, ...] = ()
    fvcore_factor: int = 1
    movement: bool = False
    convention: bool = False
    custom: str | None = None

    def __post_init__(self) -> None:
        if self.category is not None and self.category not in CATEGORIES:
            raise ValueError(f"{self.name}: category must be one of {CATEGORIES}, got {self.category!r}")
        if self.category is not None and (self.movement or self.convention):
            raise ValueError(f"{self.name}: an op with a category is neither movement nor convention")


OPS: dict[str, Op] = {}
"""op name (as FlopCounterMode reports it) -> :class:`Op`: the one table."""


def _add(*ops: Op) -> None:
    for entry in ops:
        if entry.name in OPS:
            raise ValueError(f"op {entry.name!r} is already in the table")
        OPS[entry.name] = entry


def op(category: str | None, *names: str, **fields: Any) -> None:
    """Add ops ``names`` (``"aten.x"``) of ``category`` sharing ``fields`` to the table."""
    _add(*(Op(name, category, **fields) for name in names))


def register_op(name: str, category: str, formula: Callable[..., int]) -> Op:
    """Count op ``name`` with ``formula`` in ``category`` from now on (its entry replaced, its fvcore
    names kept); the entry :func:`flopkit.register_formula` adds."""
    old = OPS.get(name)
    entry = replace(old, category=category, formula=formula, movement=False, convention=False) if old else (
        Op(name, category, formula)
    )  # fmt: skip
    OPS[name] = entry
    return entry


# ------------------------------------------------------------------------------------------------
# Views.


def torch_category(name: str) -> str | None:
    """The category of ``name`` in FlopCounterMode's counts (flopkit's formulas and pseudo-ops
    included), or None when it counts no FLOPs there."""
    entry = OPS.get(name)
    return entry.category if entry is not None else None


def fvcore_table() -> dict[str, tuple[str, int]]:
    """fvcore's op name -> (category, factor from fvcore's unit to FLOPs), for every op fvcore (or
    a flopkit handle in fvcore) counts."""
    table: dict[str, tuple[str, int]] = {}
    for entry in OPS.values():
        for name in entry.fvcore:
            value = (entry.category, entry.fvcore_factor)
            if table.setdefault(name, value) != value:
                raise ValueError(f"fvcore op {name!r} has two entries: {table[name]} and {value}")
    return table


def category_of(counter: str, name: str) -> str | None:
    """The category of op ``name`` as ``counter`` (``"fvcore"`` or ``"torch"``) names it, or None
    when the counter does not count it."""
    if counter == "fvcore":
        return fvcore_table().get(name, (None, 0))[0]
    return torch_category(name)


def _packet(name: str):
    namespace, _, op_name = name.partition(".")
    if not op_name:
        return None
    try:
        return getattr(getattr(torch.ops, namespace), op_name)
    except (AttributeError, RuntimeError):
        return None  # not in this torch version, or a pseudo-op


def torch_mapping() -> dict[Any, Callable[..., int]]:
    """op packet -> formula for every op with a formula of flopkit's (FlopCounterMode's
    ``custom_mapping``); ops this torch does not have are left out."""
    out = {}
    for name, entry in OPS.items():
        if entry.formula is not None and (packet := _packet(name)) is not None:
            out[packet] = entry.formula
    return out


def not_flops(name: str) -> bool:
    """Whether op ``name``, seen by the FlopCounterMode engine without a count, stays out of the
    "not counted" list: data movement, or an op with a category (counted through a formula, or
    whose FLOPs the counter sees elsewhere, as SDPA's through its decomposition)."""
    entry = OPS.get(name)
    return entry is not None and (entry.movement or entry.category is not None)


def is_convention(name: str) -> bool:
    """Whether op ``name`` is pointwise arithmetic left out by flopkit's convention."""
    entry = OPS.get(name)
    return entry is not None and entry.convention


# ------------------------------------------------------------------------------------------------
# Helpers the formulas share.


def numel(shape) -> int:
    """Elements of a shape (0 for None, an absent tensor)."""
    if shape is None:
        return 0
    out = 1
    for s in shape:
        out *= s
    return out


QK_NORM_ROPE = "qk_norm_rope"
# flopkit::qk_norm_rope spans two categories: each call is split by formulas.qk_norm_rope_breakdown
# into these pseudo-ops.
QK_NORM_ROPE_PARTS = ("norm", "rope")


def qk_part(prefix: str, category: str) -> str:
    """The pseudo-op of ``flopkit::qk_norm_rope``'s ``category`` part (``prefix``: ``"flopkit."``
    as FlopCounterMode names ops, ``"flopkit::"`` as fvcore does)."""
    return f"{prefix}{QK_NORM_ROPE}[{category}]"


def qk_norm_rope_split(prefix: str, B: int, T: int, heads: int, head_dim: int, norm: bool) -> Counter:
    """One ``qk_norm_rope`` call's FLOPs as its part pseudo-ops (:func:`qk_part`)."""
    parts = formulas.qk_norm_rope_breakdown(B, T, heads, head_dim, norm)
    return Counter({qk_part(prefix, cat): parts[cat] for cat in QK_NORM_ROPE_PARTS})


# ------------------------------------------------------------------------------------------------
# FlopCounterMode formulas (op arguments as shapes) for the ops it has none for.


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=None, *, out_shape=None, **kw):
    return formulas.group_norm(numel(input), weight is not None, bias is not None)


def _group_norm(input, weight, bias, *args, out_shape=None, **kw):
    return formulas.group_norm(numel(input), weight is not None, bias is not None)


def _batch_norm(input, weight, bias, running_mean, running_var, training, *args, out_shape=None, **kw):
    return formulas.batch_norm(numel(input), bool(training), weight is not None, bias is not None)


def _batch_norm_no_training(input, weight, bias, *args, out_shape=None, **kw):
    return formulas.batch_norm(numel(input), False, weight is not None, bias is not None)


def _batch_norm_legit(input, weight, bias, *args, out_shape=None, **kw):
    return formulas.batch_norm(numel(input), True, weight is not None, bias is not None)


def _activation(input, *args, out_shape=None, **kw):
    return formulas.activation(numel(input))


def _softmax(input, *args, out_shape=None, **kw):
    return formulas.softmax(numel(input))


# Backward ops: output_mask says which gradients run (a frozen weight or an input that needs no
# gradient drops its part).
def _layer_norm_backward(grad_out, input, normalized_shape, mean, rstd, weight, bias, output_mask, **kw):
    forward = formulas.group_norm(numel(input), weight is not None, bias is not None)
    return formulas.norm_backward(forward, output_mask[0], output_mask[1] or output_mask[2])


def _group_norm_backward(grad_out, input, mean, rstd, weight, *args, out_shape=None, **kw):
    output_mask = args[-1]
    forward = formulas.group_norm(numel(input), weight is not None, weight is not None)
    return formulas.norm_backward(forward, output_mask[0], output_mask[1] or output_mask[2])


def _batch_norm_backward(grad_out, input, weight, running_mean, running_var, save_mean, save_invstd, train,
                         eps, output_mask, *args, out_shape=None, **kw):  # fmt: skip
    forward = formulas.batch_norm(numel(input), bool(train), weight is not None, weight is not None)
    return formulas.norm_backward(forward, output_mask[0], output_mask[1] or output_mask[2])


def _activation_backward(grad_out, *args, out_shape=None, **kw):
    return formulas.activation_backward(numel(grad_out))


def _softmax_backward(grad_out, output, *args, out_shape=None, **kw):
    return formulas.softmax_backward(numel(grad_out))


def _addmm_inplace(self, mat1, mat2, *, out_shape=None, **kw) -> int:
    """``aten.addmm_`` (shapes): the product ``mat1 @ mat2`` (:func:`flopkit.formulas.linear`), as
    torch's ``addmm`` formula counts it (FlopCounterMode has none for the in-place form); the add is
    not counted."""
    m, k = mat1
    return formulas.linear(m, k, mat2[-1])


def _baddbmm_inplace(self, batch1, batch2, *, out_shape=None, **kw) -> int:
    """``aten.baddbmm_`` (shapes): the batched product, as torch's ``baddbmm`` formula counts it:
    :func:`flopkit.formulas.linear` over every batch's rows."""
    b, m, k = batch1
    return formulas.linear(b * m, k, batch2[-1])


def grouped_mm_flops(mat_a, mat_b, offs=None, bias=None, out_dtype=None, *, out_shape=None, **kw) -> int:
    """FlopCounterMode formula (arguments as shapes) of ``aten._grouped_mm``:
    :func:`flopkit.formulas.grouped_mm` (every row of the jagged operand in one group)."""
    return formulas.grouped_mm(tuple(mat_a), tuple(mat_b))


def _aten(*names: str) -> tuple[str, ...]:
    return tuple(f"aten.{n}" for n in names)


# ------------------------------------------------------------------------------------------------
# The table.

MAC = FLOPS_PER_MAC

# Matmuls. fvcore counts them in multiply-accumulates; FlopCounterMode has formulas (2 per MAC).
op("matmul", "aten.mm", fvcore=("mm",), fvcore_factor=MAC)
op("matmul", "aten.addmm", fvcore=("addmm",), fvcore_factor=MAC)
op("matmul", "aten.convolution", fvcore=("conv",), fvcore_factor=MAC)
op("matmul", "aten._convolution", fvcore=("_convolution",), fvcore_factor=MAC)
op("matmul", "aten.linear", fvcore=("linear",), fvcore_factor=MAC)
op("matmul", "aten.einsum", fvcore=("einsum",), fvcore_factor=MAC)
# fvcore traces torch.matmul and torch.bmm as matmul and bmm; it sees SDPA as its own op, so these
# are batched linears (experts) to it. FlopCounterMode sees aten.bmm (below) only after dispatch.
op("matmul", "aten.matmul", fvcore=("matmul", "bmm"), fvcore_factor=MAC)
op(
    "matmul",
    *_aten("convolution_backward", "_scaled_mm", "_slow_conv2d_forward", "cudnn_convolution",
           "convolution_overrideable"),
)  # fmt: skip
op("matmul", "aten._grouped_mm", formula=grouped_mm_flops)
op("matmul", "aten.addmm_", formula=_addmm_inplace)

# Attention. On the meta device SDPA runs its math decomposition: QK^T and AV as two bmm (an
# expert module's bmm is moved to matmul by the engine, flops/anymodel.py).
op("attention", "aten.scaled_dot_product_attention", fvcore=("scaled_dot_product_attention",),
   fvcore_factor=MAC)  # fmt: skip
op(
    "attention",
    *_aten("bmm", "baddbmm", "_scaled_dot_product_efficient_attention",
           "_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention",
           "_flash_attention_forward", "_efficient_attention_forward",
           "_scaled_dot_product_efficient_attention_backward",
           "_scaled_dot_product_flash_attention_backward", "_scaled_dot_product_cudnn_attention_backward",
           "_flash_attention_backward", "_efficient_attention_backward",
           # On a CPU tensor SDPA dispatches to this fused kernel, which FlopCounterMode has no formula for.
           "_scaled_dot_product_flash_attention_for_cpu"),
    "flex_attention",
    "flex_attention_backward",
)  # fmt: skip
op("attention", "aten.baddbmm_", formula=_baddbmm_inplace)

# Norms: flopkit's formulas (fvcore's norm handles are replaced by flopkit's, in FLOPs).
op("norm", "aten.native_layer_norm", formula=_layer_norm, fvcore=("layer_norm",))
op("norm", "aten.native_group_norm", formula=_group_norm, fvcore=("group_norm",))
op("norm", "aten.native_batch_norm", formula=_batch_norm, fvcore=("batch_norm",))
op("norm", "aten.instance_norm", fvcore=("instance_norm",))  # decomposes into batch_norm at dispatch
op("norm", "aten._native_batch_norm_legit_no_training", formula=_batch_norm_no_training)
op("norm", "aten._native_batch_norm_legit", formula=_batch_norm_legit)
op("norm", "aten.native_layer_norm_backward", formula=_layer_norm_backward)
op("norm", "aten.native_group_norm_backward", formula=_group_norm_backward)
op("norm", "aten.native_batch_norm_backward", formula=_batch_norm_backward)
# F.rms_norm decomposes into pow/mean/rsqrt/mul: the engine counts it at the call (RMS_NORM_OP).
op("norm", "aten.rms_norm", fvcore=("rms_norm",))

# Elementwise: activations and softmax (also the softmax inside SDPA's decomposition).
op(
    "elementwise",
    *_aten("gelu", "gelu_", "silu", "silu_", "relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_",
           "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_", "elu", "elu_",
           "leaky_relu", "leaky_relu_", "mish", "mish_", "softplus", "glu", "prelu", "_prelu_kernel",
           "log_sigmoid_forward"),
    formula=_activation,
)  # fmt: skip
op(
    "elementwise",
    *_aten("gelu_backward", "silu_backward", "threshold_backward", "tanh_backward", "sigmoid_backward",
           "hardswish_backward", "hardsigmoid_backward", "hardtanh_backward", "elu_backward",
           "leaky_relu_backward", "mish_backward", "softplus_backward", "glu_backward",
           "_prelu_kernel_backward", "log_sigmoid_backward"),
    formula=_activation_backward,
)  # fmt: skip
op("elementwise", *_aten("_softmax", "_safe_softmax", "_log_softmax"), formula=_softmax)
op("elementwise", *_aten("_softmax_backward_data", "_log_softmax_backward_data"), formula=_softmax_backward)

# flopkit's custom ops: counted by their registered formulas (flopkit.kernels registers them with
# torch), in FLOPs; fvcore reports them without their namespace (flopkit::rms_norm_residual ->
# rms_norm_residual), where flopkit's handles count them.
for _name, _formula in {
    "rms_norm": "rms_norm",
    "rms_norm_residual": "rms_norm",
    "per_head_rms_norm": "per_head_rms_norm",
    "head_norm": "head_norm",
}.items():
    _add(Op(f"flopkit.{_name}", FLOP_FORMULAS[_formula].category, fvcore=(_name,), custom=_formula))
# flopkit::qk_norm_rope spans norm and rope: FlopCounterMode's one number (its registered formula) is
# split per call into these parts by the same formula applied to the call's arguments.
for _cat in QK_NORM_ROPE_PARTS:
    _add(Op(qk_part("flopkit.", _cat), _cat, fvcore=(qk_part("flopkit::", _cat),), custom=QK_NORM_ROPE))

# flopkit::gelu_linear and its backward (kernels.gelu_linear): linear's product each way, by their
# registered formulas. Models never show them to a counter (Mlp runs its modules while ops are
# recorded); a direct call under FlopCounterMode does.
op("matmul", "flopkit.gelu_linear", "flopkit.gelu_linear_backward", custom="linear")

# Pseudo-ops the FlopCounterMode engine records at the Python call (no aten op of their own).
RMS_NORM_OP = "flopkit.measured.rms_norm"
RMS_NORM_BACKWARD_OP = "flopkit.measured.rms_norm_backward"
CAUSAL_OP = "flopkit.measured.causal_masked"
op("norm", RMS_NORM_OP, RMS_NORM_BACKWARD_OP)
op("attention", CAUSAL_OP)

# No FLOPs: data movement, indexing, sorting, comparisons, integer bookkeeping (routing, masks,
# positions), and masking around the softmax, which flopkit's convention does not count either.
op(
    None,
    *_aten(
        "view", "_unsafe_view", "t", "transpose", "permute", "expand", "unbind", "select", "slice", "cat",
        "clone", "detach", "unsqueeze", "squeeze", "flatten", "reshape", "_to_copy", "copy_", "empty",
        "empty_like", "new_empty", "lift_fresh", "alias", "stack", "split", "split_with_sizes", "as_strided",
        "contiguous", "zeros", "unflatten", "expand_as", "index", "arange", "full", "ones", "scalar_tensor",
        "empty_strided", "where", "masked_fill", "tril", "triu",
        "embedding", "embedding_dense_backward", "topk", "sort", "argsort", "histc", "bincount", "cumsum",
        "index_put", "index_put_", "index_select", "gather", "scatter", "scatter_add", "scatter_add_",
        "floor_divide", "one_hot", "eq", "ne", "gt", "lt", "ge", "le", "logical_and", "logical_or",
        "logical_not", "bitwise_and", "bitwise_or", "bitwise_not", "any", "all", "nonzero", "masked_fill_",
        "fill_", "zero_", "zeros_like", "ones_like", "full_like", "new_zeros", "new_ones", "new_full",
        "repeat", "repeat_interleave", "roll", "flip", "constant_pad_nd", "_unsafe_index", "index_copy",
        "argmax", "max", "native_dropout", "native_dropout_backward", "bernoulli_", "rand", "randn",
        "lift_fresh_copy", "_assert_async", "masked_select", "diagonal", "split_with_sizes_copy",
        "view_as_real", "view_as_complex", "_to_dtype", "narrow", "movedim", "mT", "set_", "resize_",
        "count_nonzero", "scatter_", "scatter_reduce", "index_add", "index_add_", "masked_scatter",
        "tril_", "triu_", "uniform_", "normal_", "t_", "transpose_", "detach_", "unsqueeze_", "squeeze_",
        "as_strided_", "cumsum_", "floor_divide_", "eq_", "ne_", "gt_", "lt_", "ge_", "le_", "logical_and_",
        "logical_or_", "logical_not_", "bitwise_and_", "bitwise_or_", "bitwise_not_", "index_copy_",
        "scatter_reduce_", "masked_scatter_",
    ),
    movement=True,
)  # fmt: skip

# Plain pointwise arithmetic and reductions (residual adds, RoPE as tensor arithmetic, routing
# weights, hand-written norms outside a *RMSNorm module): not counted, by flopkit's convention
# (docs/conventions.md); listed apart from the ops that have no formula at all.
op(
    None,
    *_aten(
        "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "neg", "pow", "rsqrt", "sqrt",
        "exp", "log", "cos", "sin", "sum", "mean", "abs", "reciprocal", "square", "addcmul", "addcdiv",
        "maximum", "minimum", "clamp", "clamp_min", "clamp_max", "var_mean", "var", "std", "amax", "amin",
        "erf", "logsumexp", "lerp", "sign", "outer", "polar",
        # in-place forms (older transformers build attention masks with clamp_)
        "neg_", "pow_", "rsqrt_", "sqrt_", "exp_", "log_", "cos_", "sin_", "abs_", "reciprocal_", "square_",
        "addcmul_", "addcdiv_", "clamp_", "clamp_min_", "clamp_max_", "erf_", "lerp_", "sign_",
    ),
    convention=True,
)  # fmt: skip
