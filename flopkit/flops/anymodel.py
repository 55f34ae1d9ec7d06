"""Measured FLOPs of any model on the meta device, in every category, forward and backward.

This is flopkit's one FlopCounterMode engine: :func:`count_model` (and :func:`count_torch`, its
forward as a :class:`~flopkit.flops.measured.Measurement`, for validate's torch counter).
torch's ``FlopCounterMode`` counts matmul, convolution and (on the meta device, where SDPA runs its
math decomposition as two ``bmm``) attention. The op table (:mod:`flopkit.flops.ops`) gives every
op its category and adds formulas for the ops torch has none for through the counter's
``custom_mapping`` (no tracer of our own): ``native_layer_norm``, ``native_group_norm``,
``native_batch_norm``, activations and softmax, and their backward ops.
Two things have no aten op of their own and are counted at the call:

* ``F.rms_norm`` (which decomposes into ``pow``/``mean``/``rsqrt``/``mul``) and modules whose class
  name ends in ``RMSNorm`` (Llama's, Qwen's, T5's hand-written norms): 3 FLOPs per element;
* ``F.scaled_dot_product_attention`` in a causal attention (``is_causal=True``, or a module whose
  ``is_causal`` is true, as Hugging Face's attention layers): with ``causal="half"`` or ``"exact"``
  the pairs the rule drops are taken out of the decomposition's ``bmm`` count (:func:`attention_rule`).

``aten._grouped_mm`` (mixture-of-experts layers) is counted by :func:`flopkit.formulas.grouped_mm` and
runs on the meta device in any dtype (:class:`~flopkit.flops.measured.GroupedMMAnyDtype`). Ops of
the user's own (a Triton kernel registered with ``torch.library``) are counted once
:func:`register_formula` gives them a formula.

:func:`count_model` runs the forward (and with ``backward=True`` a second run with
``loss = sum of the outputs``) and returns per-module FLOPs by category, plus the input and output
shapes, dtypes and bytes of each module's first call.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from flopkit import formulas
from flopkit.checks import InputError
from flopkit.formulas import CATEGORIES

from .measured import GroupedMMAnyDtype, Measurement, OpRecorder, register_flopkit_formulas
from .ops import (
    CAUSAL_OP,
    QK_NORM_ROPE,
    RMS_NORM_BACKWARD_OP,
    RMS_NORM_OP,
    is_convention,
    not_flops,
    register_op,
    torch_category,
    torch_mapping,
)

__all__ = [
    "CAUSAL_MODES",
    "ANYMODEL_LEGEND",
    "LayerShapes",
    "ModelCount",
    "count_model",
    "count_torch",
    "run_counters",
    "categories_by_path",
    "layer_shapes",
    "causal_pairs",
    "causal_legend",
    "attention_rule",
    "sliding_window_of",
    "padded_pairs",
    "register_formula",
    "expert_paths",
    "matmul_paths",
    "rotary_paths",
    "ROTARY_RULE",
    "grouped_experts",
    "skipped_legend",
]

CAUSAL_MODES = formulas.ATTENTION_RULES

aten = torch.ops.aten


def register_formula(op: Any, fn: Callable[..., int], category: str = "matmul") -> None:
    """Count ``op`` (an op packet such as ``torch.ops.mylib.my_kernel``, e.g. a Triton kernel
    registered with ``torch.library``) with ``fn`` in ``category``, from now on.

    ``fn`` takes the op's arguments with every tensor replaced by its shape (a ``torch.Size``), and
    ``out_shape`` as a keyword, as torch's ``register_flop_formula``; it returns FLOPs (one multiply
    or add each). The op is also put into torch's own registry when it has no formula there, so a
    plain ``FlopCounterMode`` counts it too.
    """
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    packet = getattr(op, "overloadpacket", op)
    if not isinstance(packet, torch._ops.OpOverloadPacket):
        raise TypeError(f"op must be an op packet such as torch.ops.mylib.my_kernel, got {op!r}")
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, got {category!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable (op arguments as shapes -> FLOPs), got {fn!r}")
    register_op(str(packet), category, fn)
    if packet not in flop_registry:
        register_flop_formula(packet)(fn)


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
    return formulas.kept_query_key_pairs(q_len, kv_len, offset=0)


def sliding_window_of(module: nn.Module | None) -> int | None:
    """The sliding window (keys per query, the query's own included) of an attention module: its
    ``sliding_window`` attribute (Gemma-2 style, ``None`` on full-attention layers); else, from its
    ``config``, the window of its layer type (``layer_types[layer_idx]``) or the config's
    ``sliding_window`` when the config has no layer types (Mistral). ``None``: no window."""
    if module is None:
        return None
    if hasattr(module, "sliding_window"):
        window = module.sliding_window
        return int(window) if isinstance(window, int) and window > 0 else None
    config = getattr(module, "config", None)
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int) or window <= 0 or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    layer = getattr(module, "layer_idx", None)
    if layer_types and isinstance(layer, int) and layer < len(layer_types):
        return window if layer_types[layer] == "sliding_attention" else None
    return window


def padded_pairs(
    key_mask: torch.Tensor, q_len: int, offset: int | None, window: int | None, causal: bool
) -> int:
    """Query-key pairs kept over a batch whose keys carry mask values ``key_mask`` (``[B, kv_len]``,
    real values): 0 is padding; with values 0/1 each query keeps the non-padding keys in its causal
    (and window) range, as Hugging Face's padding masks do; with values above 1 (packed sequences:
    one id per document) a query keeps only the keys of its own document. Not ``causal``: every
    query keeps every non-padding key. ``offset`` as :func:`flopkit.formulas.kept_query_key_pairs`
    (the queries are positions ``offset .. offset + q_len - 1`` of the keys)."""
    values = key_mask.to("cpu", torch.int64)
    kv_len = values.shape[-1]
    if not causal:
        return int((values != 0).sum()) * q_len
    if offset is None:
        offset = kv_len - q_len
    pos = torch.arange(offset, offset + q_len)
    hi = pos.clamp(-1, kv_len - 1) + 1
    lo = torch.zeros_like(pos) if window is None else (pos - window + 1).clamp(0, kv_len)
    lo = torch.minimum(lo, hi)

    def kept(keys: torch.Tensor) -> torch.Tensor:  # [B, q_len]: keys (0/1) in each query's range
        prefix = torch.nn.functional.pad(keys.cumsum(-1), (1, 0))
        return prefix[:, hi] - prefix[:, lo]

    if int(values.max()) <= 1:
        return int(kept((values != 0).long()).sum())
    own = values[:, pos.clamp(0, kv_len - 1)]  # each query's document id
    total = 0
    for doc in values.unique().tolist():
        if doc != 0:
            total += int((kept((values == doc).long()) * (own == doc)).sum())
    return total


def attention_rule(
    mode: str,
    query_shape: tuple[int, ...],
    kv_len: int,
    v_head_dim: int,
    *,
    is_causal: bool,
    causal_module: bool,
    q_len: int | None = None,
    window: int | None = None,
    key_mask: torch.Tensor | None = None,
    explicit_mask: bool = False,
) -> tuple[int, str]:
    """FLOPs of one SDPA call's QK^T and AV under the rule ``mode`` (``full``, ``half``, ``exact``),
    and the rule's description (for the legend).

    ``query_shape`` is the query as SDPA gets it (``[..., rows, E]``: Hugging Face packs a GQA
    decode step's heads into the rows); ``q_len`` the true query tokens per head (the attention
    module's input length; default the rows). ``is_causal``: SDPA's own flag (top-left alignment);
    ``causal_module``: the call runs in a causal attention layer with an explicit or absent mask
    (bottom-right alignment: queries are the last ``q_len`` positions). ``key_mask``: real mask
    values ``[B, >= kv_len]`` (their last ``kv_len`` columns are the keys).
    """
    *lead, rows, head_dim = query_shape
    query_rows = math.prod(lead) * rows
    full = formulas.attention_pairs_flops(query_rows, kv_len, head_dim, v_head_dim)
    causal = is_causal or causal_module
    if mode == "full" or (mode == "half" and not causal):
        return full, "all pairs"
    if mode == "half":
        return full // 2, "causal: half of all pairs"
    batch = query_shape[0] if len(query_shape) > 2 else 1
    q_len = rows if q_len is None or query_rows % (batch * q_len) else q_len
    heads = query_rows // (batch * q_len)
    offset = 0 if is_causal else None
    if key_mask is not None and key_mask.shape[0] == batch and key_mask.shape[-1] >= kv_len:
        keys = key_mask[:, -kv_len:]
        pairs = padded_pairs(keys, q_len, offset, window, causal)
        kind = ("packed documents" if int(keys.max()) > 1 else "padded keys") + (", causal" if causal else "")
    elif causal:
        pairs = batch * formulas.kept_query_key_pairs(q_len, kv_len, offset, window)
        kind = "causal"
    else:
        return full, ("explicit mask of unknown values: all pairs" if explicit_mask else "all pairs")
    if causal:
        kind += ", top-left (is_causal=True)" if is_causal else ", bottom-right"
    if causal and window is not None:
        kind += f", sliding window {window}"
    return formulas.attention_pairs_flops(heads, pairs, head_dim, v_head_dim), kind


def causal_legend(mode: str, causal_calls: int, masked_calls: int, rules: Counter | None = None) -> str:
    """The legend line for the attention rule ``mode`` (``causal``) and the rules applied
    to the SDPA calls (``rules``: description -> calls)."""
    if mode == "exact":
        text = (
            "causal attention 'exact': attention counted on the query-key pairs the mask keeps: causal "
            "T(T+1)/2, queries aligned bottom-right after a KV cache (top-left for is_causal=True calls), "
            "the layer's sliding window (keys with q - k < window), padding from attention_mask values"
        )
    elif mode == "half":
        text = (
            f"causal attention 'half': {causal_calls} causal SDPA call(s) counted on half of all "
            "query-key pairs (Tq*Tk/2, the common MFU convention; exact counts T(T+1)/2)"
        )
    else:
        text = (
            f"causal attention 'full': attention counted on all Tq*Tk query-key pairs, as FlopCounterMode "
            f"does; {causal_calls} SDPA call(s) were causal: 'exact' counts only the pairs "
            "the mask keeps"
        )
    if rules:
        text += "; rules applied: " + ", ".join(f"{rule} ({n} call(s))" for rule, n in sorted(rules.items()))
    if masked_calls and mode != "exact":
        text += (
            f"; {masked_calls} SDPA call(s) took an explicit attn_mask tensor, counted on all pairs "
            "(a mask's values are not known on the meta device)"
        )
    return text


def skipped_legend(uncounted: Counter, convention: Counter) -> list[str]:
    """Legend lines for the ops seen without a formula (counted as zero) and the pointwise
    arithmetic left out by convention, each with its calls."""

    def listing(ops: Counter) -> str:
        return ", ".join(f"{op} x{n}" for op, n in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))

    lines = []
    if uncounted:
        lines.append(
            f"NOT COUNTED (no FLOP formula, counted as 0): {listing(uncounted)}; give one with "
            "flopkit.register_formula(op, fn, category)"
        )
    if convention:
        lines.append(f"pointwise arithmetic not counted by convention (calls): {listing(convention)}")
    return lines


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
    rules: Counter = field(default_factory=Counter)  # attention rule applied -> SDPA calls (forward)
    # path -> hardware FLOPs beyond the model's (flash-attention backward's recompute), by category
    hardware_extra: dict[str, dict[str, int]] = field(default_factory=dict)

    def breakdown(self, path: str) -> dict[str, int]:
        """Forward FLOPs by category of the module at ``path`` (descendants included)."""
        return self.forward.get(path, {})

    @property
    def uncounted(self) -> Counter:
        """Ops seen in the forward that have no FLOP formula (counted as zero) -> calls."""
        return Counter({op: n for op, n in self.skipped.items() if not is_convention(op)})

    @property
    def convention_uncounted(self) -> Counter:
        """Pointwise arithmetic seen in the forward, not counted by convention -> calls."""
        return Counter({op: n for op, n in self.skipped.items() if is_convention(op)})

    def measurement(self) -> Measurement:
        """The forward as a :class:`~flopkit.flops.measured.Measurement` named ``"torch"``, for
        :func:`~flopkit.flops.reconcile.reconcile_rows`."""
        seen = {torch_category(op) for ops in self.raw.values() for op, v in ops.items() if v}
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
        self.modules: list[tuple[nn.Module, torch.Size | None]] = []  # (module, first input's shape)
        self.node_parents: dict[Any, frozenset[str]] = {}

    @property
    def parents(self) -> set[str]:
        node = torch._C._current_autograd_node()
        if node is not None:
            return {GLOBAL, *self.node_parents.get(node, ())}
        return {GLOBAL, *self.stack}

    def push(self, module: nn.Module, first_shape: torch.Size | None = None) -> None:
        self.stack.append(self.names.get(module, ""))
        self.modules.append((module, first_shape))

    def pop(self) -> None:
        self.stack.pop()
        self.modules.pop()

    def attention_module(self) -> tuple[nn.Module | None, torch.Size | None]:
        """The innermost running module with a boolean ``is_causal`` (an attention layer), and the
        shape of its first tensor input."""
        for module, shape in reversed(self.modules):
            if isinstance(getattr(module, "is_causal", None), bool):
                return module, shape
        return None, None

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

    def __enter__(self):  # FlopCounterMode enters its tracker; the mode is entered by run_counters
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
    """Counts, at the Python call, what has no aten op of its own: ``F.rms_norm`` and the attention
    rule's correction to SDPA. Adds pseudo-ops to the FlopCounterMode's own per-module counts, and
    the flash-attention backward's extra work to :attr:`hardware` (not model FLOPs)."""

    def __init__(self, counter, causal: str, backward: bool, key_mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.counter = counter
        self.causal = causal
        self.backward = backward
        self.key_mask = key_mask
        self.causal_calls = 0
        self.masked_calls = 0
        self.rules: Counter = Counter()
        self.hardware: dict[str, Counter] = {}
        self.norm_depth = 0
        self.attention_layers = 0  # calls of modules with a boolean is_causal (attention layers)
        self.sdpa_in_layers = 0  # SDPA calls inside such a module

    def eager_attention_rule(self) -> None:
        """Record, as a rule, the attention layers that ran without SDPA (eager matmuls + softmax):
        no rule applies to them, they are counted on the pairs their matmuls compute."""
        eager = self.attention_layers - self.sdpa_in_layers
        if eager > 0:
            self.rules["attention layer without SDPA (eager matmuls): the pairs it computes"] += eager

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
        module, first_shape = self.counter.mod_tracker.attention_module()
        self.sdpa_in_layers += module is not None
        causal_module = bool(module is not None and module.is_causal and not is_causal)
        if is_causal or causal_module:
            self.causal_calls += 1
        q_len = None
        if first_shape is not None and len(first_shape) == 3 and first_shape[0] == query.shape[0]:
            q_len = first_shape[1]  # [B, T, C] into the attention layer: T query tokens
        S, Ev = key.shape[-2], value.shape[-1]
        full = formulas.attention_pairs_flops(math.prod(query.shape[:-1]), S, query.shape[-1], Ev)
        kept, rule = attention_rule(
            self.causal,
            tuple(query.shape),
            S,
            Ev,
            is_causal=bool(is_causal),
            causal_module=causal_module,
            q_len=q_len,
            window=sliding_window_of(module) if causal_module else None,
            key_mask=self.key_mask,
            explicit_mask=attn_mask is not None,
        )
        self.rules[rule] += 1
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        # The backward runs four matmuls of the forward's size where the forward runs two.
        if kept != full:
            self.add(CAUSAL_OP, -(full - kept) * (3 if self.backward and grad else 1))
        if self.backward and grad:
            # A flash / memory-efficient kernel's backward recomputes QK^T: 5/2 of the forward, not 2.
            extra = formulas.flash_backward_extra(kept)
            for parent in set(self.counter.mod_tracker.parents):
                self.hardware.setdefault(parent, Counter())["attention"] += extra


def run_counters(
    model: nn.Module,
    args: tuple,
    kwargs: dict,
    causal: str,
    backward: bool,
    shapes: dict[str, LayerShapes] | None,
    seen_ops: Counter | None,
    key_mask: torch.Tensor | None = None,
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
    counter = counter_cls(display=False, custom_mapping=torch_mapping())
    tracker = _ModuleStack(names)
    counter.mod_tracker = tracker
    calls = _CallCounter(counter, causal, backward, key_mask)
    handles = []

    def pre_hook(module, args, kwargs):
        first = next((t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)), None)
        if isinstance(getattr(module, "is_causal", None), bool) and tracker.attention_module()[0] is None:
            calls.attention_layers += 1
        tracker.push(module, first.shape if first is not None else None)
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
    recorder = OpRecorder(seen_ops if seen_ops is not None else Counter())
    grad = torch.enable_grad() if backward else torch.no_grad()
    try:
        observing = observer.recording(tracker) if observer is not None else contextlib.nullcontext()
        with (
            kernels.route_through_custom_ops(),
            GroupedMMAnyDtype(),
            recorder,
            counter,
            grad,
            tracker.mode(),
            calls,
            observing,
        ):
            recorder.tracker = tracker
            recorder.inside_counted = lambda: calls.norm_depth > 0
            out = model(*args, **kwargs)
            if backward:
                leaves, _ = tree_flatten(out)
                loss = [t.sum() for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
                if not loss:
                    raise InputError(
                        "training", None, "no model output requires grad (no parameter takes part)"
                    )
                loss = torch.stack(loss).sum()
                if observer is not None:
                    observer.backward_starts(_raw_counts(counter.flop_counts, recorder))
                loss.backward()
    finally:
        for h in handles:
            h.remove()
    calls.eager_attention_rule()
    return _raw_counts(counter.flop_counts, recorder), calls


def _raw_counts(flop_counts: dict, recorder: OpRecorder) -> dict[str, Counter]:
    """A FlopCounterMode's counts as module path -> op name -> FLOPs, the fused QK-norm + RoPE op
    split into its norm and RoPE parts (which must add up to the op's registered formula)."""
    raw: dict[str, Counter] = {}
    for path, ops in flop_counts.items():
        if path == GLOBAL:
            continue
        raw[path] = Counter({str(op): int(v) for op, v in ops.items()})
        fused = raw[path].pop(f"flopkit.{QK_NORM_ROPE}", None)
        if fused is not None:
            split = recorder.qk_split.get(path, Counter())
            if sum(split.values()) != fused:
                raise RuntimeError(f"{path}: qk_norm_rope split {dict(split)} does not add up to {fused}")
            raw[path].update(split)
    return raw


def expert_paths(model: nn.Module) -> list[str]:
    """Paths of the top-most mixture-of-experts modules holding stacked expert weights (an int
    ``num_experts`` and a ``[num_experts, out, in]`` parameter): their ``bmm`` (Hugging Face's
    batched experts) is a matmul, not attention."""
    paths: list[str] = []
    for path, module in model.named_modules():
        experts = getattr(module, "num_experts", None)
        if not isinstance(experts, int) or any(path.startswith(p + ".") for p in paths):
            continue
        if any(p.dim() >= 3 and p.shape[0] == experts for p in module.parameters(recurse=False)):
            paths.append(path)
    return paths


def rotary_paths(model: nn.Module) -> list[str]:
    """Paths of rotary-embedding modules (class name ending in ``RotaryEmbedding``, as every
    Hugging Face model names them): a ``bmm`` there builds RoPE's table, positions times inverse
    frequencies (transformers before 5.2x: ``inv_freq @ position_ids``), a matmul, not attention."""
    return [
        path for path, module in model.named_modules() if type(module).__name__.endswith("RotaryEmbedding")
    ]


def _within(path: str, roots: Sequence[str]) -> bool:
    """Whether ``path`` is one of ``roots`` or inside one."""
    return any(path == r or path.startswith(r + ".") for r in roots)


def matmul_paths(model: nn.Module) -> list[str]:
    """Paths whose batched matmuls (``bmm``, ``baddbmm``) are matmuls, not attention: the experts
    (:func:`expert_paths`) and the rotary tables (:func:`rotary_paths`)."""
    experts = expert_paths(model)
    return experts + [p for p in rotary_paths(model) if not _within(p, experts)]


ROTARY_RULE = "rotary embedding's positions x frequencies product (a batched matmul): matmul, not attention"
"""The rule :func:`count_model` records (per module whose table ran as a ``bmm``)."""

_BATCHED_MATMULS = ("aten.bmm", "aten.baddbmm", "aten.baddbmm_")


@contextlib.contextmanager
def grouped_experts(model: nn.Module):
    """Within the block, Hugging Face experts set to their ``eager`` implementation (a Python loop
    over the experts each token was routed to: data-dependent indexing, which the meta device
    cannot run) use ``grouped_mm``, which does the same FLOPs under the routing assumption. Yields
    the number of expert modules switched."""
    changed: list[Any] = []
    modules = dict(model.named_modules())
    switched = 0
    for path in expert_paths(model):
        config = getattr(modules[path], "config", None)
        if getattr(config, "_experts_implementation", None) == "eager" or any(c is config for c in changed):
            switched += 1
            if all(c is not config for c in changed):
                changed.append(config)
                config._experts_implementation = "grouped_mm"
    try:
        yield switched
    finally:
        for config in changed:
            config._experts_implementation = "eager"


def categories_by_path(raw: dict[str, Counter], experts: list[str] = ()) -> dict[str, dict[str, int]]:
    """FLOPs by category per path; ``bmm`` inside the modules at ``experts`` (and its share in their
    ancestors) is a matmul: pass :func:`matmul_paths` (the experts and the rotary tables)."""

    out = {}
    for path, ops in raw.items():
        cats = dict.fromkeys(CATEGORIES, 0)
        for op, value in ops.items():
            category = torch_category(op)
            if category is None:
                raise RuntimeError(f"measured op {op!r} has no category in the op table (flopkit.flops.ops)")
            cats["matmul" if op in _BATCHED_MATMULS and _within(path, experts) else category] += value
        for e in experts:  # an ancestor holds its experts' bmm among its own: move that share
            if e != path and (path == "" or e.startswith(path + ".")):
                moved = sum(raw.get(e, {}).get(op, 0) for op in _BATCHED_MATMULS)
                cats["attention"] -= moved
                cats["matmul"] += moved
        out[path] = cats
    return out


def count_model(
    model: nn.Module,
    args: tuple = (),
    kwargs: dict | None = None,
    *,
    causal: str = "full",
    backward: bool = False,
    padding_mask: torch.Tensor | None = None,
) -> ModelCount:
    """Measured FLOPs of ``model(*args, **kwargs)`` (meta-device model and inputs) per module path.

    ``backward=True`` runs the model in train mode, once forward only and once with
    ``loss = sum of the outputs`` and its backward (inputs do not require grad), and reports
    ``backward[path] = (forward + backward run) - forward run`` by category; ``False`` runs it in
    eval mode. The model's own train/eval flags are restored.
    ``causal`` (:data:`flopkit.formulas.ATTENTION_RULES`): ``"full"`` counts every SDPA on all
    query-key pairs; ``"half"`` counts causal SDPA calls (``is_causal=True`` or in a causal attention
    layer) on half of them; ``"exact"`` on the pairs the mask keeps (:func:`attention_rule`: causal,
    bottom-right after a KV cache, the layer's sliding window, and ``padding_mask``).
    ``padding_mask``: the real values (``[B, keys]``, 1 = token, 0 = padding, or document ids above 1
    for packed sequences; CPU) of the attention mask the model would take; the model itself runs without it (on the meta device a mask has no
    values, and it changes which pairs are kept, not which ops run). Needs ``causal="exact"``.
    """
    if causal not in CAUSAL_MODES:
        raise ValueError(f"causal must be one of {', '.join(CAUSAL_MODES)}, got {causal!r}")
    if padding_mask is not None:
        if causal != "exact":
            raise ValueError(
                f"padding_mask applies with causal='exact' (it changes kept pairs), got {causal!r}"
            )
        if padding_mask.dim() != 2 or padding_mask.device.type == "meta":
            raise ValueError(
                f"padding_mask must be a real [batch, keys] tensor of mask values, got "
                f"{list(padding_mask.shape)} on {padding_mask.device.type}"
            )
    kwargs = kwargs or {}
    shapes: dict[str, LayerShapes] = {}
    seen: Counter = Counter()
    modes = {m: m.training for m in model.modules()}
    back = None
    with grouped_experts(model) as looped:  # an eager experts loop cannot run on meta
        try:
            # A training step runs the model in train mode (batch norm on batch statistics, dropout on).
            model.train(backward)
            raw, calls = run_counters(model, args, kwargs, causal, False, shapes, seen, padding_mask)
            batched = matmul_paths(model)  # experts and rotary tables: their bmm is a matmul
            forward = categories_by_path(raw, batched)
            for path in rotary_paths(model):
                if any(raw.get(path, {}).get(op, 0) for op in _BATCHED_MATMULS):
                    calls.rules[ROTARY_RULE] += 1
            hardware: dict[str, dict[str, int]] = {}
            if backward:
                raw_total, back_calls = run_counters(
                    model, args, kwargs, causal, True, None, None, padding_mask
                )
                hardware = {p: dict(c) for p, c in back_calls.hardware.items() if p != GLOBAL}
                total = categories_by_path(raw_total, batched)
                back = {
                    path: {c: total[path][c] - forward.get(path, {}).get(c, 0) for c in CATEGORIES}
                    for path in total
                }
        finally:
            for module, mode in modes.items():
                module.training = mode
    if looped:
        calls.rules["experts' eager loop counted in its grouped_mm form (same FLOPs: top-k per token)"] += (
            looped
        )
    counted = {op.split("[")[0] for ops in raw.values() for op in ops}
    skipped = Counter({op: n for op, n in seen.items() if op not in counted and not not_flops(op)})
    return ModelCount(
        forward, back, shapes, raw, skipped, calls.causal_calls, calls.masked_calls, causal, set(shapes),
        calls.rules, hardware,
    )  # fmt: skip


def count_torch(model: nn.Module, inputs: torch.Tensor) -> Measurement:
    """validate's torch counter: FlopCounterMode on ``model(inputs)`` (meant for the meta device,
    where SDPA runs as two ``bmm`` it can count), as :func:`count_model`'s forward, its
    :meth:`ModelCount.measurement`."""
    return count_model(model, (inputs,)).measurement()
