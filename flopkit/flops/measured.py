"""Measured FLOPs: fvcore's ``FlopCountAnalysis`` (a JIT trace on CPU) and torch's ``FlopCounterMode``
(dispatch on the meta device), both reduced to FLOPs by category per module path.

Each counter reports counts per module and per op in its own units; :data:`FVCORE_OPS` and
:data:`TORCH_OPS` say which category each op belongs to and the factor that turns the counter's
unit into FLOPs (fvcore counts one per multiply-accumulate). Ops in neither table are skipped by
the counter (fvcore lists them as unsupported; FlopCounterMode has no formula for them).

fvcore is imported inside :func:`count_fvcore` only.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from flopkit import formulas, kernels
from flopkit.formulas import FLOP_FORMULAS, FLOPS_PER_MAC

__all__ = [
    "Measurement",
    "FLOPKIT_OPS",
    "FVCORE_OPS",
    "TORCH_OPS",
    "FVCORE_HANDLES",
    "category_of",
    "count_fvcore",
    "count_torch",
    "register_flopkit_formulas",
    "CONVENTION_UNCOUNTED",
    "grouped_mm_flops",
    "GroupedMMAnyDtype",
    "grouped_mm_output_shape",
    "PositionalCall",
    "count_fvcore_any",
    "has_dtensor",
]


@dataclass
class Measurement:
    """One counter's view of a model: FLOPs by category per module path (descendants included)."""

    counter: str
    flops: dict[str, dict[str, int]]  # path -> category -> FLOPs (converted to 1 FLOP = 1 mul or add)
    raw: dict[str, Counter]  # path -> op -> the counter's own number
    called: set[str]  # module paths entered through __call__ (forward hooks fired)
    skipped: Counter  # ops the counter saw but does not count, over the whole model
    categories: set[str] = field(default_factory=set)  # categories with at least one counted op

    def breakdown(self, path: str) -> dict[str, int]:
        return self.flops.get(path, {})

    def hidden(self, path: str) -> dict[str, int]:
        """FLOPs by category that the counter's known blind spots hide at ``path`` (descendants
        included): :func:`flopkit.flops.blind_spots.hidden_flops`."""
        from .blind_spots import hidden_flops

        return hidden_flops(self.raw.get(path, {}))

    def blind_spot_calls(self, path: str = "") -> Counter:
        """Calls of each blind-spot op at ``path`` (descendants included)."""
        from .blind_spots import hidden_calls

        return hidden_calls(self.raw.get(path, {}))


# ----------------------------------------------------------------------------------------------
# Which counted op belongs to which category. fvcore's own handles count one per multiply-accumulate
# (factor FLOPS_PER_MAC). Its norm handles are replaced by flopkit's (flops/anymodel.py), in FLOPs.
# flopkit's own ops are counted by their registered formulas (flopkit.formulas), in FLOPs.

# flopkit:: custom op -> the formula that counts it (its category is the formula's).
FLOPKIT_OPS: dict[str, str] = {
    "rms_norm": "rms_norm",
    "rms_norm_residual": "rms_norm",
    "per_head_rms_norm": "per_head_rms_norm",
    "head_norm": "head_norm",
}
# flopkit::qk_norm_rope spans two categories: each call is split by formulas.qk_norm_rope_breakdown
# into these pseudo-ops.
QK_NORM_ROPE_PARTS = ("norm", "rope")


def _qk_part(prefix: str, category: str) -> str:
    return f"{prefix}qk_norm_rope[{category}]"


FVCORE_OPS: dict[str, tuple[str, int]] = {
    **dict.fromkeys(
        ("linear", "addmm", "mm", "matmul", "bmm", "einsum", "conv", "_convolution"),
        ("matmul", FLOPS_PER_MAC),
    ),
    **dict.fromkeys(("layer_norm", "group_norm", "batch_norm", "instance_norm"), ("norm", 1)),
    # flopkit's handles below: SDPA in MACs like fvcore's matmuls, norms and RoPE in FLOPs.
    "scaled_dot_product_attention": (FLOP_FORMULAS["sdpa"].category, FLOPS_PER_MAC),
    "rms_norm": (FLOP_FORMULAS["rms_norm"].category, 1),
    # fvcore reports custom ops without their namespace (flopkit::rms_norm_residual -> rms_norm_residual).
    **{op: (FLOP_FORMULAS[formula].category, 1) for op, formula in FLOPKIT_OPS.items()},
    **{_qk_part("flopkit::", cat): (cat, 1) for cat in QK_NORM_ROPE_PARTS},
}


def category_of(counter: str, op: str) -> str | None:
    """The category of ``op`` as ``counter`` (``"fvcore"`` or ``"torch"``) names it, or None when
    the counter does not count it."""
    if counter == "fvcore":
        return FVCORE_OPS.get(op, (None, 0))[0]
    return TORCH_OPS.get(op)


FvcoreHandle = Callable[[list, list], "int | Counter"]
FVCORE_HANDLES: dict[str, FvcoreHandle] = {}


def fvcore_handle(*op_names: str) -> Callable[[FvcoreHandle], FvcoreHandle]:
    """Register a fvcore handle (``(inputs, outputs) -> count``) for the JIT ops ``op_names``."""

    def register(fn: FvcoreHandle) -> FvcoreHandle:
        for name in op_names:
            FVCORE_HANDLES[name] = fn
        return fn

    return register


def _shape(value) -> list[int]:
    from fvcore.nn.jit_handles import get_shape

    return list(get_shape(value))


def _numel(shape) -> int:
    """Elements of a shape (0 for None, an absent tensor)."""
    if shape is None:
        return 0
    out = 1
    for s in shape:
        out *= s
    return out


def _constant(value):
    return value.toIValue() if value.node().kind() == "prim::Constant" else None


# fvcore sees the same norms as JIT ops; these handles replace its own (5 per element with an affine,
# 4 without, batch norm in eval 1-2), so both counters use one convention.
def _fv_present(value) -> bool:
    return value.type().kind() != "NoneType"


@fvcore_handle("aten::layer_norm", "aten::group_norm")
def _fvcore_layer_norm(inputs: list, outputs: list) -> int:
    """``layer_norm(input, shape, weight, bias, ...)`` / ``group_norm(input, groups, weight, bias, ...)``."""
    return formulas.group_norm(_numel(_shape(inputs[0])), _fv_present(inputs[2]), _fv_present(inputs[3]))


@fvcore_handle("aten::instance_norm")
def _fvcore_instance_norm(inputs: list, outputs: list) -> int:
    """``instance_norm(input, weight, bias, ...)``: statistics per sample, as a layer norm."""
    return formulas.group_norm(_numel(_shape(inputs[0])), _fv_present(inputs[1]), _fv_present(inputs[2]))


@fvcore_handle("aten::batch_norm")
def _fvcore_batch_norm(inputs: list, outputs: list) -> int:
    """``batch_norm(input, weight, bias, running_mean, running_var, training, ...)``."""
    numel = _numel(_shape(inputs[0]))
    return formulas.batch_norm(
        numel, bool(inputs[5].toIValue()), _fv_present(inputs[1]), _fv_present(inputs[2])
    )


@fvcore_handle("aten::scaled_dot_product_attention")
def sdpa_macs(inputs: list, outputs: list) -> int:
    """QK^T and AV in multiply-accumulates: :func:`flopkit.formulas.sdpa` / ``FLOPS_PER_MAC``."""
    (B, H, Tq, D), (_, _, Tk, _), v = (_shape(x) for x in inputs[:3])
    return formulas.sdpa(B, H, Tq, Tk, D, v[-1]) // FLOPS_PER_MAC


@fvcore_handle("aten::rms_norm", "flopkit::rms_norm", "flopkit::rms_norm_residual")
def rms_norm_op_flops(inputs: list, outputs: list) -> int:
    """:func:`flopkit.formulas.rms_norm` over the input's rows (the last dim normalised)."""
    shape = _shape(inputs[0])
    return formulas.rms_norm(_numel(shape[:-1]), shape[-1])


@fvcore_handle("flopkit::per_head_rms_norm", "flopkit::head_norm")
def head_norm_op_flops(inputs: list, outputs: list) -> int:
    """:func:`flopkit.formulas.head_norm` over the input's elements: mode read from a string argument
    (``"rms"`` when none), bias when a third tensor argument is present."""
    shape = _shape(inputs[0])
    mode = next((c for c in map(_constant, inputs) if c in formulas.NORM_MODES), "rms")
    tensors = [x for x in inputs[1:] if x.type().kind() == "TensorType"]
    bias = len(tensors) >= 2
    return formulas.head_norm(_numel(shape[:-1]), 1, shape[-1], mode, bias)


@fvcore_handle("flopkit::qk_norm_rope")
def qk_norm_rope_op_flops(inputs: list, outputs: list) -> Counter:
    """:func:`flopkit.formulas.qk_norm_rope_breakdown`, one pseudo-op per category.

    Schema: ``(qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm)``.
    """
    B, T, three_hd = _shape(inputs[0])
    heads, norm = _constant(inputs[5]), bool(_constant(inputs[8]))
    return _qk_norm_rope_split("flopkit::", B, T, heads, three_hd // (3 * heads), norm)


def _qk_norm_rope_split(prefix: str, B: int, T: int, heads: int, head_dim: int, norm: bool) -> Counter:
    parts = formulas.qk_norm_rope_breakdown(B, T, heads, head_dim, norm)
    return Counter({_qk_part(prefix, cat): parts[cat] for cat in QK_NORM_ROPE_PARTS})


# ----------------------------------------------------------------------------------------------
# FlopCounterMode: op packet name -> category. Its formulas already count 2 FLOPs per MAC.

TORCH_OPS: dict[str, str] = {
    **dict.fromkeys(("aten.mm", "aten.addmm", "aten.convolution", "aten._convolution"), "matmul"),
    # On the meta device SDPA runs its math decomposition: QK^T and AV as two bmm.
    **dict.fromkeys(
        (
            "aten.bmm",
            "aten.baddbmm",
            "aten._scaled_dot_product_efficient_attention",
            "aten._scaled_dot_product_flash_attention",
            "aten._scaled_dot_product_cudnn_attention",
            "aten._flash_attention_forward",
            "aten._efficient_attention_forward",
        ),
        FLOP_FORMULAS["sdpa"].category,
    ),
    **{f"flopkit.{op}": FLOP_FORMULAS[formula].category for op, formula in FLOPKIT_OPS.items()},
    # FlopCounterMode counts flopkit.qk_norm_rope as one number (its registered formula, norm + rope);
    # count_torch splits each call into these by the same formula applied to the call's arguments.
    **{_qk_part("flopkit.", cat): cat for cat in QK_NORM_ROPE_PARTS},
}


# ----------------------------------------------------------------------------------------------


class _CallRecorder:
    """Forward pre-hooks recording which modules are entered through ``__call__``."""

    def __init__(self, model: nn.Module) -> None:
        self.called: set[str] = set()
        self._handles = [
            module.register_forward_pre_hook(self._hook(name)) for name, module in model.named_modules()
        ]

    def _hook(self, name: str):
        def hook(module, args):
            self.called.add(name)

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _to_categories(raw: dict[str, Counter], table: Callable[[str], tuple[str, int] | None]):
    flops: dict[str, dict[str, int]] = {}
    seen: set[str] = set()
    skipped: Counter = Counter()
    for path, ops in raw.items():
        out: dict[str, int] = {}
        for op, value in ops.items():
            entry = table(op)
            if entry is None:
                if path == "":
                    skipped[op] += value
                continue
            category, factor = entry
            out[category] = out.get(category, 0) + int(value) * factor
            seen.add(category)
        flops[path] = out
    return flops, seen, skipped


def count_fvcore(model: nn.Module, inputs: torch.Tensor) -> Measurement:
    """Run fvcore's ``FlopCountAnalysis`` on ``model(inputs)`` (real tensors, CPU), with flopkit's
    handles (:data:`FVCORE_HANDLES`) added; returns FLOPs by category per module path. The ops of
    fvcore's known blind spots (:mod:`flopkit.flops.blind_spots`) stay uncounted; their hidden
    FLOPs are recorded beside the counts (:meth:`Measurement.hidden`)."""
    with warnings.catch_warnings():  # fvcore's import scripts functions with the deprecated torch.jit.script
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    from .blind_spots import fvcore_blind_spot_handles

    recorder = _CallRecorder(model)
    try:
        analysis = FlopCountAnalysis(model, inputs)
        analysis.set_op_handle(**FVCORE_HANDLES, **fvcore_blind_spot_handles())
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        with warnings.catch_warnings(), torch.no_grad(), kernels.route_through_custom_ops():
            warnings.simplefilter("ignore")
            raw = {path: Counter(ops) for path, ops in analysis.by_module_and_operator().items()}
            unsupported = Counter(analysis.unsupported_ops(""))
    finally:
        recorder.remove()
    flops, seen, _ = _to_categories(raw, FVCORE_OPS.get)
    return Measurement("fvcore", flops, raw, recorder.called, unsupported, seen)


class PositionalCall(nn.Module):
    """``model(*args, **kwargs)`` called from positional tensors only, returning a tuple of tensors:
    fvcore's JIT trace takes neither keyword inputs nor dict outputs (a Hugging Face ``ModelOutput``).
    Build it with :meth:`wrap`; :func:`count_fvcore_any` removes its level from module paths."""

    def __init__(self, model: nn.Module, num_args: int, names: list[str]) -> None:
        super().__init__()
        self.model, self.num_args, self.names = model, num_args, names

    @classmethod
    def wrap(cls, model: nn.Module, args: tuple, kwargs: dict) -> tuple[PositionalCall, tuple]:
        """The wrapper and the positional inputs it takes."""
        return cls(model, len(args), list(kwargs)), (*args, *kwargs.values())

    def forward(self, *tensors):
        from torch.utils._pytree import tree_flatten

        out = self.model(
            *tensors[: self.num_args], **dict(zip(self.names, tensors[self.num_args :], strict=True))
        )
        leaves, _ = tree_flatten(out)
        return tuple(t for t in leaves if isinstance(t, torch.Tensor))


def count_fvcore_any(model: nn.Module, args: tuple = (), kwargs: dict | None = None) -> Measurement:
    """:func:`count_fvcore` of ``model(*args, **kwargs)`` (real tensors, CPU) for any model: keyword
    inputs and dict outputs go through :class:`PositionalCall`; paths are the model's own."""
    wrapper, positional = PositionalCall.wrap(model, args, kwargs or {})
    m = count_fvcore(wrapper, positional)

    def strip(path: str) -> str | None:
        if path == "model":
            return ""
        return path[len("model.") :] if path.startswith("model.") else None

    m.flops = {strip(p): v for p, v in m.flops.items() if strip(p) is not None}
    m.raw = {strip(p): v for p, v in m.raw.items() if strip(p) is not None}
    m.called = {strip(p) for p in m.called if strip(p) is not None}
    return m


def grouped_mm_flops(mat_a, mat_b, offs=None, bias=None, out_dtype=None, *, out_shape=None, **kw) -> int:
    """FlopCounterMode formula (arguments as shapes) of ``aten._grouped_mm``:
    :func:`flopkit.formulas.grouped_mm` (every row of the jagged operand in one group)."""
    return formulas.grouped_mm(tuple(mat_a), tuple(mat_b))


def register_flopkit_formulas() -> None:
    """Put flopkit's FLOP formulas into torch's registry now: the ``flopkit::`` custom ops', and
    ``aten._grouped_mm``'s where torch has none (so a plain ``FlopCounterMode`` counts experts too).

    The custom ops' formulas are registered when their modules are first imported (at the first
    routed call), but ``FlopCounterMode`` copies the registry when it is constructed: a counter made
    before that first call would not count them (``validate --against torch`` in a fresh process
    missed every norm).
    """
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    from flopkit.kernels import _norm_ops, _rope_ops  # noqa: F401

    grouped = getattr(torch.ops.aten, "_grouped_mm", None)
    if grouped is not None and grouped not in flop_registry:
        register_flop_formula(grouped)(grouped_mm_flops)


def grouped_mm_output_shape(a: torch.Size, b: torch.Size, groups: int | None) -> list[int]:
    """The output shape of ``torch._grouped_mm(a, b)``: ``[S, N]`` for ``[S, K] @ [G, K, N]``,
    ``[M, N]`` for ``[G, M, K] @ [K, N]``, ``[G, M, N]`` for 2D @ 2D (``groups`` offsets) and 3D @ 3D."""
    if len(a) == 2 and len(b) == 2:
        return [groups, a[0], b[1]]
    if len(a) == 2:
        return [a[0], b[-1]]
    if len(b) == 2:
        return [a[1], b[1]]
    return [a[0], a[1], b[-1]]


def _offs(args: tuple, kwargs: dict) -> int | None:
    offs = args[2] if len(args) > 2 else kwargs.get("offs")
    return offs.shape[0] if offs is not None else None


class GroupedMMAnyDtype(torch.utils._python_dispatch.TorchDispatchMode):
    """Runs ``aten._grouped_mm`` in any dtype on the meta device and the CPU, whose kernels take
    bfloat16 only (a mixture-of-experts model built in float32 raised "Expected inputs of BF16 type")
    and, on meta, 16-byte-aligned strides (DeepSeek-V2's 1407-wide experts): on meta the output is
    made from the shapes (:func:`grouped_mm_output_shape`); on the CPU the op runs on bfloat16 copies
    and its output is cast back to the input's dtype.
    Enter it *outside* a ``FlopCounterMode``, which then sees (and counts) the original call."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket is getattr(torch.ops.aten, "_grouped_mm", None):
            a = args[0]
            if a.device.type == "meta":  # the meta kernel checks dtype and 16-byte strides: shapes only
                return torch.empty(grouped_mm_output_shape(a.shape, args[1].shape, _offs(args, kwargs)),
                                   dtype=kwargs.get("out_dtype") or a.dtype, device="meta")  # fmt: skip
            if a.dtype != torch.bfloat16 and a.device.type == "cpu":

                def low(t):
                    return (
                        t.to(torch.bfloat16) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                    )

                out_dtype = kwargs.pop("out_dtype", None)
                kwargs = {k: low(v) for k, v in kwargs.items()}
                return func(*map(low, args), **kwargs).to(out_dtype or a.dtype)
        return func(*args, **kwargs)


def count_torch(model: nn.Module, inputs: torch.Tensor) -> Measurement:
    """Run torch's ``FlopCounterMode`` on ``model(inputs)``; meant for the meta device, where SDPA
    runs as two ``bmm`` it can count (on CPU it dispatches to a fused kernel it has no formula for)."""
    from torch.utils.flop_counter import FlopCounterMode

    register_flopkit_formulas()
    root = type(model).__name__
    recorder = _CallRecorder(model)
    seen_ops: Counter = Counter()
    recorder_ops = _OpRecorder(seen_ops)
    try:
        with (
            kernels.route_through_custom_ops(),
            recorder_ops,
            FlopCounterMode(display=False) as counter,
            torch.no_grad(),
        ):
            recorder_ops.tracker = counter.mod_tracker
            model(inputs)
    finally:
        recorder.remove()
    raw: dict[str, Counter] = {}
    for name, ops in counter.get_flop_counts().items():
        if name == root:
            path = ""
        elif name.startswith(root + "."):
            path = name[len(root) + 1 :]
        else:
            continue  # "Global"
        raw[path] = Counter({str(op): int(v) for op, v in ops.items()})
        fused = raw[path].pop("flopkit.qk_norm_rope", None)
        if fused is not None:
            split = recorder_ops.qk_split.get(name, Counter())
            if sum(split.values()) != fused:
                raise RuntimeError(f"{name}: qk_norm_rope split {dict(split)} does not add up to {fused}")
            raw[path].update(split)
    flops, seen, _ = _to_categories(raw, lambda op: (TORCH_OPS[op], 1) if op in TORCH_OPS else None)
    counted = {op.split("[")[0] for ops in raw.values() for op in ops}
    skipped = Counter({op: n for op, n in seen_ops.items() if op not in counted and op not in _NOT_FLOPS})
    return Measurement("torch", flops, raw, recorder.called, skipped, seen)


# Ops not listed as skipped: data movement, ops counted above, and softmax/masking, which
# flopkit's convention does not count either.
_NOT_FLOPS = {
    "aten.view", "aten._unsafe_view", "aten.t", "aten.transpose", "aten.permute", "aten.expand",
    "aten.unbind", "aten.select", "aten.slice", "aten.cat", "aten.clone", "aten.detach",
    "aten.unsqueeze", "aten.squeeze", "aten.flatten", "aten.reshape", "aten._to_copy", "aten.copy_",
    "aten.empty", "aten.empty_like", "aten.new_empty", "aten.lift_fresh", "aten.alias", "aten.stack",
    "aten.split", "aten.split_with_sizes", "aten.as_strided", "aten.contiguous", "aten.zeros",
    "aten.unflatten", "aten.expand_as", "aten.index", "aten.arange", "aten.full", "aten.ones",
    "aten.mm", "aten.addmm", "aten.bmm", "aten.convolution", "aten.scalar_tensor", "aten.empty_strided",
    "aten._scaled_dot_product_flash_attention_for_cpu", "aten.scaled_dot_product_attention",
    "aten._softmax", "aten._safe_softmax", "aten.where", "aten.masked_fill", "aten.tril", "aten.triu",
    # Indexing, sorting, comparisons, integer bookkeeping (routing, masks, positions): no FLOPs.
    "aten.embedding", "aten.embedding_dense_backward", "aten.topk", "aten.sort", "aten.argsort",
    "aten.histc", "aten.bincount", "aten.cumsum", "aten.index_put", "aten.index_put_", "aten.index_select",
    "aten.gather", "aten.scatter", "aten.scatter_add", "aten.scatter_add_", "aten.floor_divide",
    "aten.one_hot", "aten.eq", "aten.ne", "aten.gt", "aten.lt", "aten.ge", "aten.le", "aten.logical_and",
    "aten.logical_or", "aten.logical_not", "aten.bitwise_and", "aten.bitwise_or", "aten.bitwise_not",
    "aten.any", "aten.all", "aten.nonzero", "aten.masked_fill_", "aten.fill_", "aten.zero_",
    "aten.zeros_like", "aten.ones_like", "aten.full_like", "aten.new_zeros", "aten.new_ones",
    "aten.new_full", "aten.repeat", "aten.repeat_interleave", "aten.roll", "aten.flip",
    "aten.constant_pad_nd", "aten._unsafe_index", "aten.index_copy", "aten.argmax", "aten.max",
    "aten.native_dropout", "aten.native_dropout_backward", "aten.bernoulli_", "aten.rand", "aten.randn",
    "aten.lift_fresh_copy", "aten._assert_async", "aten.masked_select", "aten.diagonal",
    "aten.split_with_sizes_copy", "aten.view_as_real", "aten.view_as_complex", "aten._to_dtype",
    "aten.narrow", "aten.movedim", "aten.mT", "aten.set_", "aten.resize_", "aten.count_nonzero",
    "aten.scatter_", "aten.scatter_reduce", "aten.index_add", "aten.index_add_", "aten.masked_scatter",
}  # fmt: skip

CONVENTION_UNCOUNTED = frozenset({
    "aten.add", "aten.add_", "aten.sub", "aten.sub_", "aten.rsub", "aten.mul", "aten.mul_", "aten.div",
    "aten.div_", "aten.neg", "aten.pow", "aten.rsqrt", "aten.sqrt", "aten.exp", "aten.log", "aten.cos",
    "aten.sin", "aten.sum", "aten.mean", "aten.abs", "aten.reciprocal", "aten.square", "aten.addcmul",
    "aten.addcdiv", "aten.maximum", "aten.minimum", "aten.clamp", "aten.clamp_min", "aten.clamp_max",
    "aten.var_mean", "aten.var", "aten.std", "aten.amax", "aten.amin", "aten.erf", "aten.logsumexp",
    "aten.lerp", "aten.sign", "aten.outer", "aten.polar",
})  # fmt: skip
"""Plain pointwise arithmetic and reductions (residual adds, RoPE as tensor arithmetic, routing
weights, hand-written norms outside a ``*RMSNorm`` module): not counted, by flopkit's convention
(docs/conventions.md); listed apart from the ops that have no formula at all."""


def has_dtensor(types) -> bool:
    """Whether a dispatch's ``types`` include ``DTensor`` (never when ``torch.distributed.tensor`` was
    not imported: no DTensor can exist then). A dispatch mode returns ``NotImplemented`` for these,
    so that DTensor runs first and the mode sees the local ops (and collectives) it turns into."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and any(issubclass(t, module.DTensor) for t in types)


class _OpRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts every aten op dispatched (by packet name), to list the ones FlopCounterMode skips, and
    splits each ``flopkit.qk_norm_rope`` call into its norm and RoPE FLOPs per enclosing module
    (``tracker``: the FlopCounterMode's module tracker, set once the counter is entered)."""

    def __init__(self, seen: Counter) -> None:
        super().__init__()
        self.seen = seen
        self.tracker = None
        self.qk_split: dict[str, Counter] = {}
        # True while inside something counted as a whole (an RMSNorm module): its aten ops are not
        # "seen without a formula".
        self.inside_counted: Callable[[], bool] = lambda: False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if has_dtensor(types):
            return NotImplemented
        name = str(func.overloadpacket)
        if not self.inside_counted():
            self.seen[name] += 1
        if name == "flopkit.qk_norm_rope" and self.tracker is not None:
            qkv, num_heads, norm = args[0], args[5], args[8]
            B, T, three_hd = qkv.shape
            parts = _qk_norm_rope_split("flopkit.", B, T, num_heads, three_hd // (3 * num_heads), norm)
            for parent in self.tracker.parents:
                self.qk_split.setdefault(parent, Counter()).update(parts)
        return func(*args, **(kwargs or {}))
