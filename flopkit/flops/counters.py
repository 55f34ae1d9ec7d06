"""Other FLOP counters as users run them, side by side with flopkit, each difference with its cause.

Validating a model spec reconciles flopkit against fvcore and FlopCounterMode with flopkit's own
handles added (:mod:`flopkit.flops.reconcile`). This module runs the counters *plain*, on a CPU copy
of the model with real tensors, as a user would: fvcore's ``FlopCountAnalysis`` (its own handles),
torch's ``FlopCounterMode`` (its own registry) and ptflops' ``aten`` backend (the one its maintainer
recommends for transformers). Totals are converted to FLOPs (fvcore and ptflops count
multiply-accumulates) and put in flopkit's categories; every category where a counter differs from
flopkit gets a cause read from what that counter saw: the ops it ran without a formula, MAC
conversion, bias adds counted inside ``addmm``.

fvcore and ptflops are imported only when run; a counter that is not installed is reported as such.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flopkit.formulas import CATEGORIES, FLOPS_PER_MAC

from .measured import GroupedMMAnyDtype, OpRecorder, PositionalCall
from .ops import fvcore_table, torch_category

__all__ = [
    "PLAIN_COUNTERS",
    "CounterColumn",
    "run_plain_counter",
    "compare_counters",
    "flop_bearing_category",
]

PLAIN_COUNTERS = ("fvcore", "flopcountermode", "ptflops")
"""The counters compared, by name: fvcore, torch's FlopCounterMode, ptflops (aten backend)."""

_UNITS = {"fvcore": "MAC", "flopcountermode": "FLOP", "ptflops": "MAC"}
_PACKAGES = {"fvcore": "fvcore", "flopcountermode": "torch", "ptflops": "ptflops"}


def flop_bearing_category(op: str) -> str | None:
    """The category of an aten op (``aten.name``) that does floating-point work flopkit counts, or
    None for data movement and pointwise arithmetic flopkit leaves out (the op table,
    :mod:`flopkit.flops.ops`; any SDPA kernel is attention)."""
    if op.startswith("flopkit.measured"):
        return None  # flopkit's own pseudo-ops, recorded at the call: no counter runs them
    if "scaled_dot_product" in op or "flash_attention" in op or "efficient_attention" in op:
        return "attention"
    return torch_category(op)


@dataclass
class CounterColumn:
    """One counter's view of the whole model: FLOPs by flopkit category, the ops it skipped, and
    the cause of each difference from flopkit."""

    counter: str
    unit: str  # "MAC" (x2 here; fvcore's norm handles count operations) or "FLOP"
    flops: dict[str, int] = field(default_factory=dict)
    missed: Counter = field(default_factory=Counter)  # FLOP-bearing ops it ran without a formula -> calls
    causes: dict[str, str] = field(default_factory=dict)  # category -> why it differs from flopkit
    error: str | None = None  # not installed, or the counter failed on this model

    @property
    def total(self) -> int:
        return sum(self.flops.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "counter": self.counter,
            "unit": self.unit,
            "flops": dict(self.flops),
            "total": self.total,
            "missed_ops": dict(self.missed),
            "causes": dict(self.causes),
            "error": self.error,
        }


def _fvcore(model: nn.Module, args: tuple, kwargs: dict) -> tuple[dict[str, int], Counter]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    wrapper, positional = PositionalCall.wrap(model, args, kwargs)
    analysis = FlopCountAnalysis(wrapper, positional)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with warnings.catch_warnings(), torch.no_grad(), GroupedMMAnyDtype():
        warnings.simplefilter("ignore")
        by_op = analysis.by_operator()
        unsupported = Counter(analysis.unsupported_ops())
    flops = dict.fromkeys(CATEGORIES, 0)
    table = fvcore_table()
    for op, count in by_op.items():
        # Its matmul handles count multiply-accumulates, its norm handles operations per element; its
        # other handles (upsample, adaptive pooling, grid_sample) are elementwise, in MACs.
        category, factor = table.get(op, ("elementwise", FLOPS_PER_MAC))
        flops[category] += int(count) * factor
    missed = Counter()
    for op, n in unsupported.items():
        aten = "aten." + op.split("::")[-1]
        if flop_bearing_category(aten) is not None or op.startswith(
            ("aten::_grouped_mm", "aten::scaled_dot")
        ):
            missed[op] += n
    return flops, missed


def _dispatch_counter(
    counter: str, model: nn.Module, args: tuple, kwargs: dict
) -> tuple[dict[str, int], Counter]:
    """FlopCounterMode or ptflops' aten FlopCounterMode over one forward; ops seen via a recorder."""
    seen: Counter = Counter()
    recorder = OpRecorder(seen)
    if counter == "flopcountermode":
        from torch.utils.flop_counter import FlopCounterMode

        mode = FlopCounterMode(display=False)
    else:
        from ptflops.aten_engine import FlopCounterMode as AtenCounter

        mode = AtenCounter(output_params={"print_params": {}, "serialize_params": {}})
    with torch.no_grad(), GroupedMMAnyDtype(), recorder, mode:
        model(*args, **kwargs)
    if counter == "flopcountermode":
        counts = {str(op): int(v) for op, v in mode.get_flop_counts()["Global"].items()}
        factor = 1
    else:
        counts = {str(op): int(v) for op, v in mode.flop_counts["Global"].items()}
        factor = FLOPS_PER_MAC
    flops = dict.fromkeys(CATEGORIES, 0)
    for op, value in counts.items():
        flops[flop_bearing_category(op) or "elementwise"] += value * factor
    missed = Counter(
        {op: n for op, n in seen.items() if op not in counts and flop_bearing_category(op) is not None}
    )
    return flops, missed


def run_plain_counter(
    counter: str, model: nn.Module, args: tuple = (), kwargs: dict | None = None
) -> CounterColumn:
    """Run ``counter`` (one of :data:`PLAIN_COUNTERS`) as shipped on ``model(*args, **kwargs)``
    (real tensors, CPU); a missing package or a failure becomes the column's ``error``."""
    if counter not in PLAIN_COUNTERS:
        raise ValueError(f"counter must be one of {', '.join(PLAIN_COUNTERS)}, got {counter!r}")
    column = CounterColumn(counter, _UNITS[counter])
    if importlib.util.find_spec(_PACKAGES[counter]) is None:
        column.error = f"not installed (pip install {_PACKAGES[counter]})"
        return column
    try:
        if counter == "fvcore":
            column.flops, column.missed = _fvcore(model, args, kwargs or {})
        else:
            column.flops, column.missed = _dispatch_counter(counter, model, args, kwargs or {})
    except Exception as exc:  # a counter that cannot trace or run this model: its own column says so
        column.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return column


def _has_linear_bias(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) and m.bias is not None for m in model.modules())


def _explain(column: CounterColumn, flopkit: dict[str, int], model: nn.Module) -> None:
    """Fill ``column.causes``: one cause per category where the counter and flopkit differ."""
    missed_by_category: dict[str, list[str]] = {}
    for op, n in column.missed.items():
        aten = op if op.startswith("aten.") else "aten." + op.split("::")[-1]
        category = flop_bearing_category(aten) or "elementwise"
        missed_by_category.setdefault(category, []).append(f"{op} x{n}")
    unit = " (its MACs x2 as FLOPs)" if column.unit == "MAC" else ""
    for category in CATEGORIES:
        ours, theirs = flopkit.get(category, 0), column.flops.get(category, 0)
        if ours == theirs:
            continue
        reasons = []
        if category in missed_by_category:
            names = ", ".join(missed_by_category[category])
            reasons.append(f"ran without a formula, counted 0: {names}")
            if any("_for_cpu" in m or "flash_attention" in m for m in missed_by_category[category]):
                reasons.append(
                    f"SDPA on the CPU dispatches to a fused kernel this counter has no formula for "
                    f"(torch {torch.__version__.split('+')[0]})"
                )
        if theirs > ours and category == "matmul" and column.counter == "ptflops" and _has_linear_bias(model):
            reasons.append(
                "ptflops counts each Linear bias add inside aten.addmm as a MAC (flopkit: elementwise)"
            )
        if category == "norm" and column.counter == "fvcore" and theirs:
            reasons.append(
                "fvcore's norm handles count 5 operations per element with an affine, 4 without (flopkit: "
                "4 + 1 per weight + 1 per bias; batch norm in eval 2)"
            )
        if theirs == 0 and not reasons:
            reasons.append(
                f"{column.counter} has no formula for this category's ops (norms, activations, softmax)"
            )
        if not reasons:
            reasons.append(
                f"{column.counter} counts {theirs:,} where flopkit counts {ours:,}{unit}: op-level conventions differ"
            )
        column.causes[category] = "; ".join(reasons)


def compare_counters(
    model: nn.Module,
    args: tuple,
    kwargs: dict,
    flopkit: dict[str, int],
    counters: tuple[str, ...] = PLAIN_COUNTERS,
) -> list[CounterColumn]:
    """Run each of ``counters`` plain on ``model`` (a CPU copy with real weights, real inputs) and
    explain each category where it differs from ``flopkit`` (flopkit's forward FLOPs by category)."""
    columns = []
    for counter in counters:
        column = run_plain_counter(counter, model, args, kwargs)
        if column.error is None:
            _explain(column, flopkit, model)
        columns.append(column)
    return columns
