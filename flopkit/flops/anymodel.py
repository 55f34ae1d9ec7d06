"""Measured FLOPs of any model on the meta device, in every category, forward and backward.

torch's ``FlopCounterMode`` counts matmul, convolution and (on the meta device, where SDPA runs its
math decomposition as two ``bmm``) attention. :data:`OP_FORMULAS` adds formulas for the norm and
elementwise ops through its ``custom_mapping`` (no tracer of our own): ``native_layer_norm``,
``native_group_norm``, ``native_batch_norm``, activations and softmax, and their backward ops.
Two things have no aten op of their own and are counted at the call:

* ``F.rms_norm`` (which decomposes into ``pow``/``mean``/``rsqrt``/``mul``) and modules whose class
  name ends in ``RMSNorm`` (Llama's, Qwen's, T5's hand-written norms): 3 FLOPs per element;
* ``F.scaled_dot_product_attention(..., is_causal=True)``: with ``causal="half"`` the masked
  query-key pairs are taken out of the decomposition's ``bmm`` count.

:func:`count_model` runs the forward (and with ``backward=True`` a second run with
``loss = sum of the outputs``) and returns per-module FLOPs by category, plus the input and output
shapes, dtypes and bytes of each module's first call.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from flopkit import formulas
from flopkit.formulas import CATEGORIES

from .measured import (
    _NOT_FLOPS,
    TORCH_OPS,
    Measurement,
    _numel,
    _OpRecorder,
    register_flopkit_formulas,
)

__all__ = [
    "CAUSAL_MODES",
    "OP_FORMULAS",
    "MEASURED_OPS",
    "ANYMODEL_LEGEND",
    "LayerShapes",
    "ModelCount",
    "count_model",
    "layer_shapes",
    "causal_pairs",
    "causal_legend",
]

CAUSAL_MODES = ("full", "half")

aten = torch.ops.aten


# ------------------------------------------------------------------------------------------------
# FlopCounterMode formulas (``custom_mapping``: op arguments as shapes) for the ops it has none for,
# each calling the single registry (flopkit.formulas): one FLOP = one multiply or add.


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=None, *, out_shape=None, **kw):
    return formulas.group_norm(_numel(input), weight is not None, bias is not None)


def _group_norm(input, weight, bias, *args, out_shape=None, **kw):
    return formulas.group_norm(_numel(input), weight is not None, bias is not None)


def _batch_norm(input, weight, bias, running_mean, running_var, training, *args, out_shape=None, **kw):
    return formulas.batch_norm(_numel(input), bool(training), weight is not None, bias is not None)


def _batch_norm_no_training(input, weight, bias, *args, out_shape=None, **kw):
    return formulas.batch_norm(_numel(input), False, weight is not None, bias is not None)


def _batch_norm_legit(input, weight, bias, *args, out_shape=None, **kw):
    return formulas.batch_norm(_numel(input), True, weight is not None, bias is not None)


def _activation(input, *args, out_shape=None, **kw):
    return formulas.activation(_numel(input))


def _softmax(input, *args, out_shape=None, **kw):
    return formulas.softmax(_numel(input))


# Backward ops: output_mask says which gradients run (a frozen weight or an input that needs no
# gradient drops its part).
def _layer_norm_backward(grad_out, input, normalized_shape, mean, rstd, weight, bias, output_mask, **kw):
    forward = formulas.group_norm(_numel(input), weight is not None, bias is not None)
    return formulas.norm_backward(forward, output_mask[0], output_mask[1] or output_mask[2])


def _group_norm_backward(grad_out, input, mean, rstd, weight, *args, out_shape=None, **kw):
    output_mask = args[-1]
    forward = formulas.group_norm(_numel(input), weight is not None, weight is not None)
    return formulas.norm_backward(forward, output_mask[0], output_mask[1] or output_mask[2])


def _batch_norm_backward(grad_out, input, weight, running_mean, running_var, save_mean, save_invstd, train,
                         eps, output_mask, *args, out_shape=None, **kw):  # fmt: skip
    forward = formulas.batch_norm(_numel(input), bool(train), weight is not None, weight is not None)
    return formulas.norm_backward(forward, output_mask[0], output_mask[1] or output_mask[2])


def _activation_backward(grad_out, *args, out_shape=None, **kw):
    return formulas.activation_backward(_numel(grad_out))


def _softmax_backward(grad_out, output, *args, out_shape=None, **kw):
    return formulas.softmax_backward(_numel(grad_out))


def _packets(*names: str) -> list:
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


_ACTIVATIONS = (
    "gelu", "gelu_", "silu", "silu_", "relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_", "hardswish",
    "hardswish_", "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_", "elu", "elu_", "leaky_relu",
    "leaky_relu_", "mish", "mish_", "softplus", "glu", "prelu", "_prelu_kernel", "log_sigmoid_forward",
)  # fmt: skip
_ACTIVATION_BACKWARDS = (
    "gelu_backward", "silu_backward", "threshold_backward", "tanh_backward", "sigmoid_backward",
    "hardswish_backward", "hardsigmoid_backward", "hardtanh_backward", "elu_backward",
    "leaky_relu_backward", "mish_backward", "softplus_backward", "glu_backward", "_prelu_kernel_backward",
    "log_sigmoid_backward",
)  # fmt: skip


# op packet -> (category, formula taking shapes, as FlopCounterMode's custom_mapping expects)
OP_FORMULAS: dict[Any, tuple[str, Callable[..., int]]] = {
    **{p: ("norm", _layer_norm) for p in _packets("native_layer_norm")},
    **{p: ("norm", _group_norm) for p in _packets("native_group_norm")},
    **{p: ("norm", _batch_norm) for p in _packets("native_batch_norm")},
    **{p: ("norm", _batch_norm_no_training) for p in _packets("_native_batch_norm_legit_no_training")},
    **{p: ("norm", _batch_norm_legit) for p in _packets("_native_batch_norm_legit")},
    **{p: ("norm", _layer_norm_backward) for p in _packets("native_layer_norm_backward")},
    **{p: ("norm", _group_norm_backward) for p in _packets("native_group_norm_backward")},
    **{p: ("norm", _batch_norm_backward) for p in _packets("native_batch_norm_backward")},
    **{p: ("elementwise", _activation) for p in _packets(*_ACTIVATIONS)},
    **{p: ("elementwise", _activation_backward) for p in _packets(*_ACTIVATION_BACKWARDS)},
    **{p: ("elementwise", _softmax) for p in _packets("_softmax", "_safe_softmax", "_log_softmax")},
    **{p: ("elementwise", _softmax_backward) for p in _packets("_softmax_backward_data", "_log_softmax_backward_data")},
}  # fmt: skip

# Pseudo-ops recorded at the call (no aten op of their own), by name.
RMS_NORM_OP = "flopkit.measured.rms_norm"
RMS_NORM_BACKWARD_OP = "flopkit.measured.rms_norm_backward"
CAUSAL_OP = "flopkit.measured.causal_masked"

# op name (as FlopCounterMode reports it) -> category, for every op this module's counts can hold.
MEASURED_OPS: dict[str, str] = {
    **TORCH_OPS,
    **{str(p): cat for p, (cat, _) in OP_FORMULAS.items()},
    # Backward and other FlopCounterMode formulas outside TORCH_OPS (the forward-only table).
    "aten.convolution_backward": "matmul",
    "aten._scaled_mm": "matmul",
    "aten._slow_conv2d_forward": "matmul",
    "aten.cudnn_convolution": "matmul",
    "aten.convolution_overrideable": "matmul",
    "aten._scaled_dot_product_efficient_attention_backward": "attention",
    "aten._scaled_dot_product_flash_attention_backward": "attention",
    "aten._scaled_dot_product_cudnn_attention_backward": "attention",
    "aten._flash_attention_backward": "attention",
    "aten._efficient_attention_backward": "attention",
    "flex_attention": "attention",
    "flex_attention_backward": "attention",
    RMS_NORM_OP: "norm",
    RMS_NORM_BACKWARD_OP: "norm",
    CAUSAL_OP: "attention",
}

ANYMODEL_LEGEND = (
    "measured (FlopCounterMode on the meta device, with flopkit's formulas for the ops it has none "
    f"for): norm = layer/group norm {formulas.group_norm(1, False, False)} per element + 1 per affine "
    f"weight + 1 per bias, batch norm in eval {formulas.batch_norm(1)} per element (scale and shift), "
    f"rms_norm (F.rms_norm and modules named *RMSNorm) {formulas.rms_norm(1, 1)} per element; "
    f"elementwise = activations {formulas.activation(1)} per element and softmax "
    f"{formulas.softmax(1)} per element (also the "
    "softmax inside SDPA, which flopkit's own analytic attention does not count). Not counted in measured "
    "modules: bias adds, residual adds, LayerScale, RoPE written as tensor arithmetic (Llama's "
    "rotate_half) and other plain aten add/mul, dropout, embedding lookups."
)


def causal_pairs(q_len: int, kv_len: int) -> int:
    """Query-key pairs a causal mask keeps, with SDPA's ``is_causal`` alignment (``tril`` of a
    ``[q_len, kv_len]`` ones matrix): ``sum_i min(i + 1, kv_len)``; ``T(T+1)/2`` when both are ``T``."""
    full_rows = min(q_len, kv_len)
    return full_rows * (full_rows + 1) // 2 + (q_len - full_rows) * kv_len


def causal_legend(mode: str, causal_calls: int, masked_calls: int) -> str:
    """The legend line for ``--causal-attention``."""
    if mode == "half":
        text = (
            f"--causal-attention half: {causal_calls} causal SDPA call(s) (is_causal=True) counted on the "
            "query-key pairs the mask keeps, T(T+1)/2 of T^2 (forward and backward)"
        )
    else:
        text = (
            f"--causal-attention full: attention counted on all T^2 query-key pairs, as FlopCounterMode "
            f"does; {causal_calls} SDPA call(s) were causal (is_causal=True): --causal-attention half "
            "counts only the pairs the mask keeps"
        )
    if masked_calls:
        text += (
            f"; {masked_calls} SDPA call(s) took an explicit attn_mask tensor, counted on all pairs "
            "(a mask's values are not known on the meta device)"
        )
    return text


@dataclass
class LayerShapes:
    """One module's first call: input and output tensor shapes and dtypes, and their bytes."""

    input_shapes: list[list[int]]
    input_dtypes: list[str]
    output_shapes: list[list[int]]
    output_dtypes: list[str]
    output_bytes: int
    param_bytes: int


@dataclass
class ModelCount:
    """Per module path: FLOPs by category for the forward (and backward), and shapes."""

    forward: dict[str, dict[str, int]]
    backward: dict[str, dict[str, int]] | None
    shapes: dict[str, LayerShapes]
    raw: dict[str, Counter]  # path -> op -> FLOPs, forward
    skipped: Counter  # aten ops seen in the forward without a formula (not data movement)
    causal_calls: int = 0
    masked_calls: int = 0
    causal: str = "full"
    called: set[str] = field(default_factory=set)

    def breakdown(self, path: str) -> dict[str, int]:
        """Forward FLOPs by category of the module at ``path`` (descendants included)."""
        return self.forward.get(path, {})

    def measurement(self) -> Measurement:
        """The forward as a :class:`~flopkit.flops.measured.Measurement` named ``"torch"``, for
        :func:`~flopkit.flops.reconcile.reconcile_rows`."""
        seen = {MEASURED_OPS[op] for ops in self.raw.values() for op, v in ops.items() if v}
        return Measurement("torch", self.forward, self.raw, self.called, self.skipped, seen)


def _tensor_info(tree) -> tuple[list[list[int]], list[str], int]:
    leaves, _ = tree_flatten(tree)
    tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
    shapes = [list(t.shape) for t in tensors]
    dtypes = [str(t.dtype).removeprefix("torch.") for t in tensors]
    return shapes, dtypes, sum(t.numel() * t.element_size() for t in tensors)


def layer_shapes(model: nn.Module, args: tuple = (), kwargs: dict | None = None) -> dict[str, LayerShapes]:
    """Per module path, the shapes, dtypes and bytes of its first call in ``model(*args, **kwargs)``
    (one forward, no gradient; meant for the meta device)."""
    shapes: dict[str, LayerShapes] = {}
    names: dict[nn.Module, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(module, name)

    def hook(module, args, kwargs, output):
        _record_shapes(shapes, names.get(module, ""), module, args, kwargs, output)

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in names]
    try:
        with torch.no_grad():
            model(*args, **(kwargs or {}))
    finally:
        for h in handles:
            h.remove()
    return shapes


def _record_shapes(shapes, path, module, args, kwargs, output) -> None:
    if path in shapes:
        return
    in_shapes, in_dtypes, _ = _tensor_info((args, kwargs))
    out_shapes, out_dtypes, out_bytes = _tensor_info(output)
    param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    shapes[path] = LayerShapes(in_shapes, in_dtypes, out_shapes, out_dtypes, out_bytes, param_bytes)


def _local_numel(x: torch.Tensor) -> int:
    """Elements this rank holds: a DTensor's local shard, else the tensor's."""
    return getattr(x, "_local_tensor", x).numel()


def _is_rms_norm_module(module: nn.Module) -> bool:
    return bool(re.search(r"rms_?norm$", type(module).__name__, re.IGNORECASE)) and not hasattr(
        module, "flop_count"
    )


GLOBAL = "\0global"  # FlopCounterMode's "Global": every op, inside a module or not


class _ModuleStack(TorchFunctionMode):
    """The modules an op runs in, for FlopCounterMode's attribution (it replaces the counter's
    ``mod_tracker``, whose backward attribution goes wrong around modules that return their input,
    such as ``nn.Identity`` and dropout in eval).

    Forward: a stack kept by forward pre/post hooks. Backward: every autograd node created during the
    forward is tagged with the stack of its creation (the node graph is walked from each torch
    function's outputs), and an op in the backward is attributed to the modules of the node the
    engine is running (``torch._C._current_autograd_node()``).
    """

    def __init__(self, names: dict[nn.Module, str]) -> None:
        super().__init__()
        self.names = names
        self.stack: list[str] = []
        self.node_parents: dict[Any, frozenset[str]] = {}

    @property
    def parents(self) -> set[str]:
        node = torch._C._current_autograd_node()
        if node is not None:
            return {GLOBAL, *self.node_parents.get(node, ())}
        return {GLOBAL, *self.stack}

    def push(self, module: nn.Module) -> None:
        self.stack.append(self.names.get(module, ""))

    def pop(self) -> None:
        self.stack.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.stack and torch.is_grad_enabled():
            here = frozenset(self.stack)
            leaves, _ = tree_flatten(out)
            todo = [t.grad_fn for t in leaves if isinstance(t, torch.Tensor) and t.grad_fn is not None]
            while todo:
                node = todo.pop()
                if node is None or node in self.node_parents:
                    continue
                self.node_parents[node] = here
                todo.extend(fn for fn, _ in node.next_functions)
        return out

    def __enter__(self):  # FlopCounterMode enters its tracker; the mode is entered by _run
        return self

    def __exit__(self, *args):
        return None

    def mode(self):
        return _TorchFunctionScope(self)


class _TorchFunctionScope:
    """Enters a :class:`_ModuleStack` as a torch function mode (its own ``__enter__`` is a no-op so
    that FlopCounterMode can "enter" it as a tracker)."""

    def __init__(self, tracker: _ModuleStack) -> None:
        self.tracker = tracker

    def __enter__(self):
        TorchFunctionMode.__enter__(self.tracker)
        return self.tracker

    def __exit__(self, *args):
        return TorchFunctionMode.__exit__(self.tracker, *args)


class _CallCounter(TorchFunctionMode):
    """Counts, at the Python call, what has no aten op of its own: ``F.rms_norm`` and the causal
    SDPA correction. Adds pseudo-ops to the FlopCounterMode's own per-module counts."""

    def __init__(self, counter, causal: str, backward: bool) -> None:
        super().__init__()
        self.counter = counter
        self.causal = causal
        self.backward = backward
        self.causal_calls = 0
        self.masked_calls = 0
        self.norm_depth = 0

    def add(self, op: str, flops: int) -> None:
        """Add ``flops`` under ``op`` to every module now running, as FlopCounterMode does."""
        for parent in set(self.counter.mod_tracker.parents):
            self.counter.flop_counts[parent][op] += flops

    def rms_norm(self, numel: int, needs_grad: bool) -> None:
        forward = formulas.rms_norm(numel, 1)
        self.add(RMS_NORM_OP, forward)
        if self.backward and needs_grad:
            # F.rms_norm's backward is plain aten arithmetic (no formula sees it): the 2x rule.
            self.add(RMS_NORM_BACKWARD_OP, formulas.norm_backward(forward))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.rms_norm, torch.rms_norm) and self.norm_depth == 0:
            x = args[0] if args else kwargs["input"]
            self.norm_depth += 1
            try:
                self.rms_norm(_local_numel(x), torch.is_grad_enabled() and x.requires_grad)
                return func(*args, **kwargs)
            finally:
                self.norm_depth -= 1
        if func is F.scaled_dot_product_attention:
            self._sdpa(*args, **kwargs)
        return func(*args, **kwargs)

    def _sdpa(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kw) -> None:
        if attn_mask is not None:
            self.masked_calls += 1
        if not is_causal:
            return
        self.causal_calls += 1
        if self.causal != "half":
            return
        *batch, L, E = query.shape
        S, Ev = key.shape[-2], value.shape[-1]
        heads = math.prod(batch)
        full = 2 * heads * L * S * (E + Ev)
        kept = 2 * heads * causal_pairs(L, S) * (E + Ev)
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        # The backward runs four matmuls of the forward's size where the forward runs two.
        self.add(CAUSAL_OP, -(full - kept) * (3 if self.backward and grad else 1))


def _run(
    model: nn.Module,
    args: tuple,
    kwargs: dict,
    causal: str,
    backward: bool,
    shapes: dict[str, LayerShapes] | None,
    seen_ops: Counter | None,
    counter_cls: type | None = None,
    observer: Any = None,
) -> tuple[dict[str, Counter], _CallCounter]:
    """One run of ``model`` under the counters; per module path, FLOPs per op.

    ``counter_cls``: a ``FlopCounterMode`` subclass to count with (default FlopCounterMode).
    ``observer``: an object with ``recording(tracker)`` (a context manager entered inside the
    counters, given the module tracker) and ``backward_starts(raw)`` (called just before the
    backward with the forward's counts, as this function returns them); with one, this run's hooks are prepended, so that a module's own pre-hooks (a
    sharding plan's input redistribution, FSDP's all-gather) run inside it.
    """
    import contextlib

    from torch.utils.flop_counter import FlopCounterMode

    from flopkit import kernels

    counter_cls = counter_cls or FlopCounterMode

    names: dict[nn.Module, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(module, name)
    register_flopkit_formulas()
    counter = counter_cls(display=False, custom_mapping={p: f for p, (_, f) in OP_FORMULAS.items()})
    tracker = _ModuleStack(names)
    counter.mod_tracker = tracker
    calls = _CallCounter(counter, causal, backward)
    handles = []

    def pre_hook(module, args, kwargs):
        tracker.push(module)
        if _is_rms_norm_module(module) and calls.norm_depth == 0:
            x = args[0] if args else next(iter(kwargs.values()))
            calls.rms_norm(_local_numel(x), torch.is_grad_enabled() and backward)
        if _is_rms_norm_module(module):
            calls.norm_depth += 1

    def post_hook(module, args, kwargs, output):
        tracker.pop()
        if _is_rms_norm_module(module):
            calls.norm_depth -= 1
        if shapes is not None:
            path = names.get(module, "")
            if path not in shapes:
                in_shapes, in_dtypes, _ = _tensor_info((args, kwargs))
                out_shapes, out_dtypes, out_bytes = _tensor_info(output)
                param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
                shapes[path] = LayerShapes(
                    in_shapes, in_dtypes, out_shapes, out_dtypes, out_bytes, param_bytes
                )

    for module in names:
        handles.append(
            module.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=observer is not None)
        )
        handles.append(module.register_forward_hook(post_hook, with_kwargs=True, always_call=True))
    recorder = _OpRecorder(seen_ops if seen_ops is not None else Counter())
    grad = torch.enable_grad() if backward else torch.no_grad()
    try:
        observing = observer.recording(tracker) if observer is not None else contextlib.nullcontext()
        with kernels.route_through_custom_ops(), recorder, counter, grad, tracker.mode(), calls, observing:
            recorder.tracker = tracker
            out = model(*args, **kwargs)
            if backward:
                leaves, _ = tree_flatten(out)
                loss = [t.sum() for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
                if not loss:
                    raise ValueError("--training: no model output requires grad (no parameter takes part)")
                loss = torch.stack(loss).sum()
                if observer is not None:
                    observer.backward_starts(_raw_counts(counter.flop_counts, recorder))
                loss.backward()
    finally:
        for h in handles:
            h.remove()
    return _raw_counts(counter.flop_counts, recorder), calls


def _raw_counts(flop_counts: dict, recorder: _OpRecorder) -> dict[str, Counter]:
    """A FlopCounterMode's counts as module path -> op name -> FLOPs, the fused QK-norm + RoPE op
    split into its norm and RoPE parts."""
    raw: dict[str, Counter] = {}
    for path, ops in flop_counts.items():
        if path == GLOBAL:
            continue
        raw[path] = Counter({str(op): int(v) for op, v in ops.items()})
        fused = raw[path].pop("flopkit.qk_norm_rope", None)
        if fused is not None:
            raw[path].update(recorder.qk_split.get(path, Counter()))
    return raw


def _categories(raw: dict[str, Counter]) -> dict[str, dict[str, int]]:
    out = {}
    for path, ops in raw.items():
        cats = dict.fromkeys(CATEGORIES, 0)
        for op, value in ops.items():
            if op not in MEASURED_OPS:
                raise RuntimeError(f"measured op {op!r} has no category in MEASURED_OPS")
            cats[MEASURED_OPS[op]] += value
        out[path] = cats
    return out


def count_model(
    model: nn.Module,
    args: tuple = (),
    kwargs: dict | None = None,
    *,
    causal: str = "full",
    backward: bool = False,
) -> ModelCount:
    """Measured FLOPs of ``model(*args, **kwargs)`` (meta-device model and inputs) per module path.

    ``backward=True`` runs the model in train mode, once forward only and once with
    ``loss = sum of the outputs`` and its backward (inputs do not require grad), and reports
    ``backward[path] = (forward + backward run) - forward run`` by category; ``False`` runs it in
    eval mode. The model's own train/eval flags are restored.
    ``causal``: ``"full"`` counts every SDPA on all query-key pairs; ``"half"`` counts causal SDPA
    calls (``is_causal=True``) on the pairs the mask keeps (:func:`causal_pairs`).
    """
    if causal not in CAUSAL_MODES:
        raise ValueError(f"--causal-attention must be one of {', '.join(CAUSAL_MODES)}, got {causal!r}")
    kwargs = kwargs or {}
    shapes: dict[str, LayerShapes] = {}
    seen: Counter = Counter()
    modes = {m: m.training for m in model.modules()}
    back = None
    try:
        # A training step runs the model in train mode (batch norm on batch statistics, dropout on).
        model.train(backward)
        raw, calls = _run(model, args, kwargs, causal, False, shapes, seen)
        forward = _categories(raw)
        if backward:
            raw_total, _ = _run(model, args, kwargs, causal, True, None, None)
            total = _categories(raw_total)
            back = {
                path: {c: total[path][c] - forward.get(path, {}).get(c, 0) for c in CATEGORIES}
                for path in total
            }
    finally:
        for module, mode in modes.items():
            module.training = mode
    counted = {op.split("[")[0] for ops in raw.values() for op in ops}
    skipped = Counter({op: n for op, n in seen.items() if op not in counted and op not in _NOT_FLOPS})
    return ModelCount(
        forward, back, shapes, raw, skipped, calls.causal_calls, calls.masked_calls, causal, set(shapes)
    )
