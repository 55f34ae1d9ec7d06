"""Measured FLOPs: fvcore's ``FlopCountAnalysis`` (a JIT trace on CPU) and torch's ``FlopCounterMode``
(dispatch on the meta device), both reduced to FLOPs by category per module path.

This module holds the fvcore engine (:func:`count_fvcore`, flopkit's fvcore handles) and what the
counters share: :class:`Measurement`, and the dispatch modes of the FlopCounterMode engine
(:class:`OpRecorder`, :class:`GroupedMMAnyDtype`; the engine itself is
:func:`flopkit.flops.anymodel.count_model`, and :func:`~flopkit.flops.anymodel.count_torch` a view
of it). Which category each op belongs to, and the factor that turns fvcore's unit into FLOPs
(it counts one per multiply-accumulate), is read from the one op table, :mod:`flopkit.flops.ops`.
Ops fvcore does not count there are skipped (fvcore lists them as unsupported).

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
from flopkit.formulas import FLOPS_PER_MAC

from .ops import fvcore_table, grouped_mm_flops, numel, qk_norm_rope_split

__all__ = [
    "Measurement",
    "FVCORE_HANDLES",
    "count_fvcore",
    "register_flopkit_formulas",
    "GroupedMMAnyDtype",
    "OpRecorder",
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
# fvcore handles flopkit adds: fvcore's own count one per multiply-accumulate; these count SDPA in
# MACs like fvcore's matmuls, and norms and RoPE in FLOPs (each op's factor: flopkit.flops.ops).

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


def _constant(value):
    return value.toIValue() if value.node().kind() == "prim::Constant" else None


# fvcore sees the same norms as JIT ops; these handles replace its own (5 per element with an affine,
# 4 without, batch norm in eval 1-2), so both counters use one convention.
def _fv_present(value) -> bool:
    return value.type().kind() != "NoneType"


@fvcore_handle("aten::layer_norm", "aten::group_norm")
def _fvcore_layer_norm(inputs: list, outputs: list) -> int:
    """``layer_norm(input, shape, weight, bias, ...)`` / ``group_norm(input, groups, weight, bias, ...)``."""
    return formulas.group_norm(numel(_shape(inputs[0])), _fv_present(inputs[2]), _fv_present(inputs[3]))


@fvcore_handle("aten::instance_norm")
def _fvcore_instance_norm(inputs: list, outputs: list) -> int:
    """``instance_norm(input, weight, bias, ...)``: statistics per sample, as a layer norm."""
    return formulas.group_norm(numel(_shape(inputs[0])), _fv_present(inputs[1]), _fv_present(inputs[2]))


@fvcore_handle("aten::batch_norm")
def _fvcore_batch_norm(inputs: list, outputs: list) -> int:
    """``batch_norm(input, weight, bias, running_mean, running_var, training, ...)``."""
    elements = numel(_shape(inputs[0]))
    return formulas.batch_norm(
        elements, bool(inputs[5].toIValue()), _fv_present(inputs[1]), _fv_present(inputs[2])
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
    return formulas.rms_norm(numel(shape[:-1]), shape[-1])


@fvcore_handle("flopkit::per_head_rms_norm", "flopkit::head_norm")
def head_norm_op_flops(inputs: list, outputs: list) -> int:
    """:func:`flopkit.formulas.head_norm` over the input's elements: mode read from a string argument
    (``"rms"`` when none), bias when a third tensor argument is present."""
    shape = _shape(inputs[0])
    mode = next((c for c in map(_constant, inputs) if c in formulas.NORM_MODES), "rms")
    tensors = [x for x in inputs[1:] if x.type().kind() == "TensorType"]
    bias = len(tensors) >= 2
    return formulas.head_norm(numel(shape[:-1]), 1, shape[-1], mode, bias)


@fvcore_handle("flopkit::qk_norm_rope")
def qk_norm_rope_op_flops(inputs: list, outputs: list) -> Counter:
    """:func:`flopkit.formulas.qk_norm_rope_breakdown`, one pseudo-op per category.

    Schema: ``(qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm)``.
    """
    B, T, three_hd = _shape(inputs[0])
    heads, norm = _constant(inputs[5]), bool(_constant(inputs[8]))
    return qk_norm_rope_split("flopkit::", B, T, heads, three_hd // (3 * heads), norm)


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


def _to_categories(raw: dict[str, Counter]) -> tuple[dict[str, dict[str, int]], set[str]]:
    """fvcore's per-path op counts as FLOPs by category (its unit times each op's factor, from the op
    table), and the categories with at least one counted op."""
    table = fvcore_table()
    flops: dict[str, dict[str, int]] = {}
    seen: set[str] = set()
    for path, ops in raw.items():
        out: dict[str, int] = {}
        for op, value in ops.items():
            entry = table.get(op)
            if entry is None:
                continue
            category, factor = entry
            out[category] = out.get(category, 0) + int(value) * factor
            seen.add(category)
        flops[path] = out
    return flops, seen


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
    flops, seen = _to_categories(raw)
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


def register_flopkit_formulas() -> None:
    """Put flopkit's FLOP formulas into torch's registry now: the ``flopkit::`` custom ops', and
    ``aten._grouped_mm``'s where torch has none (so a plain ``FlopCounterMode`` counts experts too).

    The custom ops' formulas are registered when their modules are first imported (at the first
    routed call), but ``FlopCounterMode`` copies the registry when it is constructed: a counter made
    before that first call would not count them (validate's torch counter in a fresh process
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


def has_dtensor(types) -> bool:
    """Whether a dispatch's ``types`` include ``DTensor`` (never when ``torch.distributed.tensor`` was
    not imported: no DTensor can exist then). A dispatch mode returns ``NotImplemented`` for these,
    so that DTensor runs first and the mode sees the local ops (and collectives) it turns into."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and any(issubclass(t, module.DTensor) for t in types)


class OpRecorder(torch.utils._python_dispatch.TorchDispatchMode):
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
            parts = qk_norm_rope_split("flopkit.", B, T, num_heads, three_hd // (3 * num_heads), norm)
            for parent in self.tracker.parents:
                self.qk_split.setdefault(parent, Counter()).update(parts)
        return func(*args, **(kwargs or {}))
