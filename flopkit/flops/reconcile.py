"""Reconciliation: analytic FLOPs vs each measured counter, category by category, per module.

A category is *comparable* for a counter when the counter can see that work: matmul and attention
always (after converting fvcore's MACs to FLOPs), and any other category in which the counter
counted at least one op (e.g. ``aten::rms_norm`` or a ``flopkit::`` custom op in the trace),
except elementwise: no counter sees flopkit's elementwise whole (LayerScale and bias adds are plain
``mul``/``add``), and torch's count holds the softmax inside SDPA, which flopkit leaves out.
Comparable categories must agree within ``rtol`` (default: exactly); everything else is listed
with the reason the counter cannot see it (:data:`BLIND_SPOTS`).

Verdicts: ``OK`` (every comparable count agrees), ``EXPLAINED`` (each difference is exactly the
FLOPs that a named counter blind spot hides, :data:`flopkit.flops.blind_spots.KNOWN_BLIND_SPOTS`)
and ``MISMATCH`` (anything else); only ``MISMATCH`` fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from flopkit import formulas
from flopkit.checks import check_tolerance
from flopkit.formulas import CATEGORIES, scale_breakdown

from .analytic import FlopNode, breakdown_at, depth_of, leaf_owner, top_paths
from .blind_spots import CATEGORY_BLIND_SPOTS, blind_spot
from .measured import Measurement

__all__ = [
    "ALWAYS_COMPARABLE",
    "BLIND_SPOTS",
    "COUNTER_NOTES",
    "ANY_MODEL_NOTES",
    "VERDICTS",
    "CheckRow",
    "Reconciliation",
    "reconcile",
    "reconcile_rows",
]

ALWAYS_COMPARABLE = ("matmul", "attention")
VERDICTS = ("OK", "EXPLAINED", "MISMATCH")

# Why a counter does not see a category: the table lives with the op blind spots.
BLIND_SPOTS = CATEGORY_BLIND_SPOTS

COUNTER_NOTES: dict[str, list[str]] = {
    "fvcore": [
        "fvcore (JIT trace on CPU, real tensors) counts 1 per multiply-accumulate: its linear/conv counts and "
        "flopkit's SDPA handle (B*H*T*S*(D+Dv) MACs, torch's SDPA formula / 2) are multiplied by 2.",
        "flopkit replaces fvcore's layer_norm/group_norm/batch_norm handles with its own (layer/group norm 4 per "
        "element + 1 per affine weight + 1 per bias, batch norm in eval 2 per element), and its handles for aten::rms_norm and flopkit::rms_norm, rms_norm_residual, per_head_rms_norm, "
        "head_norm and qk_norm_rope return flopkit FLOPs (the kernels' own formulas).",
    ],
    "torch": [
        "torch FlopCounterMode (meta device) counts 2 FLOPs per MAC for mm/addmm/convolution and, since on "
        "the meta device SDPA runs its math decomposition, for QK^T and AV as two aten.bmm (attributed to "
        "attention). On a CPU tensor SDPA would dispatch to _scaled_dot_product_flash_attention_for_cpu, "
        "which it has no formula for.",
        "FlopCounterMode reports flopkit.qk_norm_rope as one number (its registered formula: norm + rope); "
        "each call is split into norm and rope by the same formula applied to that call's arguments.",
    ],
}

GENERAL_NOTES = [
    "Both counters run the model inside flopkit.kernels.route_through_custom_ops(): every norm and the "
    "QK-norm + RoPE dispatch as flopkit:: custom ops (on CPU the PyTorch reference runs inside the op, on "
    "meta its fake), so the counters see them by name and count them with the ops' registered formulas.",
    f"Linear bias adds ({formulas.coefficient(formulas.bias_add(1, 1))}T*o) are elementwise in flopkit's convention and invisible to both counters (fvcore's "
    "linear handle and torch's addmm formula count the product only), so matmul compares products only.",
    "'in parent': the module's work ran inside another module's op instead of its own __call__ "
    "(ViT5Block.norm2 runs fused with the residual add and ls1's LayerScale via forward_residual), so both "
    "counters attribute its ops to the parent block, whose row carries the comparison.",
    "The final RMSNorm runs on the readout token only (the CLS token; all patches when has_cls=False), "
    f"and flopkit counts it so ({formulas.rms_norm(1, 1)}*C per image with CLS).",
    "validate compares flopkit's convention (QK-norm counted over all heads, which is what runs); upstream's "
    "nvsubquadratic convention (`convention` nvsubquadratic) counts one head and would fall short "
    f"of both counters by 2*{formulas.per_head_rms_norm(1, 1, 1)}*T*(H-1)*D per attention layer.",
]


@dataclass
class CheckRow:
    """One module's comparison: analytic breakdown, and per counter the compared sums and status."""

    path: str
    type: str
    analytic: dict[str, int]
    compared: dict[str, int] = field(default_factory=dict)  # counter -> analytic over comparable cats
    measured: dict[str, int] = field(default_factory=dict)  # counter -> measured over comparable cats
    status: dict[str, str] = field(default_factory=dict)  # counter -> ok | in parent | mismatch: cats
    deltas: dict[str, dict[str, int]] = field(default_factory=dict)  # counter -> category -> delta

    @property
    def verdict(self) -> str:
        for kind in ("MISMATCH", "EXPLAINED"):
            found = [f"{c}: {s}" for c, s in self.status.items() if s.startswith(kind)]
            if found:
                return "; ".join(found)
        for s in self.status.values():
            if s == "in parent" or s.startswith("counted in"):
                return s
        return "ok"

    @property
    def ok(self) -> bool:
        return not any(s.startswith("MISMATCH") for s in self.status.values())


@dataclass
class Reconciliation:
    rows: list[CheckRow]
    comparable: dict[str, tuple[str, ...]]  # counter -> categories compared
    totals: dict[str, dict[str, int]]  # "analytic" and each counter -> category -> FLOPs (whole model)
    raw_totals: dict[str, dict[str, int]]  # counter -> op -> the counter's own number (whole model)
    skipped: dict[str, dict[str, int]]  # counter -> op -> occurrences the counter skipped
    notes: list[str]
    rtol: float
    # other counters run as shipped (flopkit.flops.counters.CounterColumn), with the cause of each difference
    plain: list = field(default_factory=list)
    hidden: dict[str, dict[str, int]] = field(default_factory=dict)  # counter -> category -> hidden FLOPs
    blind_spots: dict[str, dict[str, int]] = field(default_factory=dict)  # counter -> blind-spot op -> calls

    @property
    def counters(self) -> list[str]:
        """The counters compared, in the order they ran."""
        return list(self.comparable)

    def to_dict(self) -> dict[str, Any]:
        """The reconciliation as data (what the validate command prints as JSON, less the config)."""
        return {
            "rtol": self.rtol,
            "ok": self.ok,
            "verdict": self.verdict,
            "hidden": self.hidden,
            "blind_spots": self.blind_spots,
            "comparable": {k: list(v) for k, v in self.comparable.items()},
            "totals": self.totals,
            "raw_totals": self.raw_totals,
            "skipped_ops": self.skipped,
            "rows": [
                {
                    "path": r.path,
                    "type": r.type,
                    "analytic": r.analytic,
                    "compared": r.compared,
                    "measured": r.measured,
                    "deltas": r.deltas,
                    "status": r.status,
                    "verdict": r.verdict,
                }
                for r in self.rows
            ],
            "notes": self.notes,
            "counters": [c.to_dict() for c in self.plain],
        }

    @property
    def ok(self) -> bool:
        """No ``MISMATCH``: every comparable count agrees, or differs by exactly what a known blind
        spot hides (the whole model's totals included)."""
        return all(row.ok for row in self.rows) and all(
            _explained(
                self.totals[counter].get(cat, 0),
                self.hidden.get(counter, {}).get(cat, 0),
                self.totals["analytic"][cat],
                self.rtol,
            )
            for counter, cats in self.comparable.items()
            for cat in cats
        )

    @property
    def verdict(self) -> str:
        """``OK``, ``EXPLAINED`` (differences only where a named blind spot hides work) or
        ``MISMATCH``."""
        if not self.ok:
            return "MISMATCH"
        explained = any(s.startswith("EXPLAINED") for r in self.rows for s in r.status.values())
        return "EXPLAINED" if explained else "OK"

    def blind_spot_notes(self) -> list[str]:
        """One line per blind-spot op a counter met: its calls, the FLOPs they hide, the cause."""
        lines = []
        for counter, calls in self.blind_spots.items():
            hidden = self.hidden.get(counter, {})
            for op, n in sorted(calls.items()):
                spot = blind_spot(counter, op)
                parts = ", ".join(f"{c} {v:,}" for c, v in hidden.items() if v)
                lines.append(
                    f"{counter} blind spot: {op} x{n} hides {sum(hidden.values()):,} FLOPs ({parts}): "
                    f"{spot.cause if spot else 'no handle'}."
                )
        return lines


def _close(measured: int, analytic: int, rtol: float) -> bool:
    return abs(measured - analytic) <= rtol * abs(analytic)


def _explained(measured: int, hidden: int, analytic: int, rtol: float) -> bool:
    """Equal, or equal once the FLOPs a known blind spot hid are added back."""
    return _close(measured, analytic, rtol) or (hidden > 0 and _close(measured + hidden, analytic, rtol))


def _hidden_at(m: Measurement, path: str) -> tuple[dict[str, int], list[str]]:
    """The FLOPs the counter's blind spots hide at ``path`` and the ops that hide them (summed over
    the top-most entered descendants of a container it never entered, like :func:`_measured_at`)."""
    tops = [path] if path == "" or path in m.called else top_paths(path, m.called)
    hidden: dict[str, int] = {}
    ops: set[str] = set()
    for p in tops:
        for cat, v in m.hidden(p).items():
            hidden[cat] = hidden.get(cat, 0) + v
        ops |= set(m.blind_spot_calls(p))
    return hidden, sorted(ops)


def _measured_at(m: Measurement, path: str, model_paths: list[str]) -> dict[str, int] | None:
    """The counter's breakdown at ``path``; for a container it never entered (``blocks``), the sum
    over its top-most entered descendants; None when the module's work sits in its parent."""
    if path == "" or path in m.called:
        return m.breakdown(path)
    tops = top_paths(path, m.called)
    if not tops:
        return None
    out: dict[str, int] = {}
    for p in tops:
        for cat, v in m.breakdown(p).items():
            out[cat] = out.get(cat, 0) + v
    return out


def _check_counter(
    row: CheckRow,
    m: Measurement,
    cats: tuple[str, ...],
    counted_in: str | None,
    paths: list[str],
    rtol: float,
) -> None:
    """Fill ``row``'s entries for counter ``m`` over the categories ``cats``: its analytic count,
    the measured one at ``row.path`` and their per-category deltas, and the verdict (``counted in``
    an owner row, ``in parent`` when the counter attributed nothing to this module, ok, EXPLAINED
    when the FLOPs a known blind spot hid there make up each difference, else MISMATCH)."""
    want = {c: row.analytic.get(c, 0) for c in cats}
    row.compared[m.counter] = sum(want.values())
    if counted_in is not None:
        row.status[m.counter] = f"counted in {counted_in}"
        return
    got = _measured_at(m, row.path, paths)
    if got is None:
        row.status[m.counter] = "in parent" if sum(row.analytic.values()) else "ok"
        return
    have = {c: got.get(c, 0) for c in cats}
    row.measured[m.counter] = sum(have.values())
    row.deltas[m.counter] = {c: have[c] - want[c] for c in cats}
    bad = [c for c in cats if not _close(have[c], want[c], rtol)]
    if not bad:
        row.status[m.counter] = "ok"
        return
    hidden, ops = _hidden_at(m, row.path)
    if all(_explained(have[c], hidden.get(c, 0), want[c], rtol) for c in bad):
        row.status[m.counter] = f"EXPLAINED {'+'.join(bad)} (blind spot: {', '.join(ops)})"
    else:
        row.status[m.counter] = f"MISMATCH {'+'.join(bad)}"


def _whole_model_counts(
    analytic: dict[str, int], measurements: list[Measurement]
) -> tuple[dict[str, dict[str, int]], dict[str, dict], dict[str, dict]]:
    """The whole model's counts per counter (``"analytic"`` first), each counter's raw totals and
    the ops it skipped."""
    totals: dict[str, dict[str, int]] = {"analytic": analytic}
    raw_totals, skipped = {}, {}
    for m in measurements:
        totals[m.counter] = {c: m.breakdown("").get(c, 0) for c in CATEGORIES}
        raw_totals[m.counter] = dict(m.raw.get("", {}))
        skipped[m.counter] = dict(m.skipped)
    return totals, raw_totals, skipped


def _blind_spots(
    measurements: list[Measurement],
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """Per counter that met a known blind spot: the FLOPs hidden by category, and each op's calls."""
    hidden = {m.counter: m.hidden("") for m in measurements if m.blind_spot_calls()}
    calls = {m.counter: dict(m.blind_spot_calls()) for m in measurements if m.blind_spot_calls()}
    return hidden, calls


def reconcile(
    model: nn.Module,
    tree: FlopNode,
    measurements: list[Measurement],
    batch: int = 1,
    rtol: float = 0.0,
    depth: int | None = None,
    not_comparable: tuple[str, ...] = ("elementwise",),
) -> Reconciliation:
    """Compare the analytic ``tree`` (per sample, scaled by ``batch``) with each measurement, per
    module down to ``depth`` and for the whole model, category by category.

    ``not_comparable``: categories never compared (:data:`BLIND_SPOTS` says why): flopkit's
    elementwise (LayerScale, GELU, bias and position-embedding adds) is what no counter sees whole.
    """
    check_tolerance(rtol)
    nodes = {node.path: node for node in tree.walk()}
    comparable = {
        m.counter: tuple(
            c for c in CATEGORIES if (c in ALWAYS_COMPARABLE or c in m.categories) and c not in not_comparable
        )
        for m in measurements
    }
    paths = [p for p, _ in model.named_modules()]
    modules = dict(model.named_modules())
    rows: list[CheckRow] = []
    for path in paths:
        if depth is not None and depth_of(path) > depth:
            continue
        analytic = breakdown_at(path, nodes)
        analytic = scale_breakdown(analytic, batch)
        row = CheckRow(path, type(modules[path]).__name__, analytic)
        owner = leaf_owner(path, nodes)  # e.g. patch_embed.proj: PatchEmbed's own formula covers it
        for m in measurements:
            _check_counter(row, m, comparable[m.counter], owner, paths, rtol)
        rows.append(row)

    whole = scale_breakdown(tree.breakdown, batch)
    totals, raw_totals, skipped = _whole_model_counts(whole, measurements)
    notes = [n for m in measurements for n in COUNTER_NOTES[m.counter]] + GENERAL_NOTES
    for m in measurements:
        for cat in CATEGORIES:
            if cat not in comparable[m.counter] and whole[cat]:
                notes.append(f"{m.counter} / {cat}: not comparable: {BLIND_SPOTS[m.counter][cat]}.")
    return _with_blind_spots(
        Reconciliation(rows, comparable, totals, raw_totals, skipped, notes, rtol), measurements
    )


def _with_blind_spots(rec: Reconciliation, measurements: list[Measurement]) -> Reconciliation:
    rec.hidden, rec.blind_spots = _blind_spots(measurements)
    rec.notes.extend(rec.blind_spot_notes())
    return rec


ANY_MODEL_NOTES = [
    "model validation: 'analytic' is flopkit's report of the model: analytic for flopkit's own modules, "
    "FlopCounterMode with flopkit's norm/activation/softmax formulas elsewhere (the report's 'measured' rows).",
    "torch here is FlopCounterMode on the meta device with the same formulas over the whole model: on measured "
    "modules it is the report's own count, so the comparison checks flopkit's analytic modules and the "
    "attribution to modules; fvcore (a JIT trace of a CPU copy with real weights) is the independent check.",
    "elementwise is not compared: flopkit's analytic modules count LayerScale, bias and position-embedding adds "
    "that no counter sees, and FlopCounterMode's count includes the softmax inside SDPA, which fvcore sees "
    "as one attention op and flopkit's analytic attention does not count.",
    "A hand-written RMSNorm (a module named *RMSNorm made of pow/mean/rsqrt/mul) is counted by flopkit and "
    "torch here (3 per element) but is plain arithmetic to fvcore; it makes norm differ only when fvcore "
    "also sees a norm op it counts.",
]


def reconcile_rows(
    model: nn.Module,
    rows: list,
    measurements: list[Measurement],
    rtol: float = 0.0,
    not_comparable: tuple[str, ...] = ("elementwise",),
) -> Reconciliation:
    """Compare flopkit's rows for any model (:func:`~flopkit.flops.mixed.mixed_rows`, batch included)
    with each measurement, per row and for the whole model, category by category.

    A category is compared when the counter counted an op in it (matmul and attention always),
    except ``not_comparable``.
    """
    check_tolerance(rtol)
    comparable = {
        m.counter: tuple(
            c for c in CATEGORIES if (c in ALWAYS_COMPARABLE or c in m.categories) and c not in not_comparable
        )
        for m in measurements
    }
    paths = [p for p, _ in model.named_modules()]
    out: list[CheckRow] = []
    for r in rows:
        row = CheckRow(r.path, r.type, dict(r.breakdown))
        for m in measurements:
            _check_counter(row, m, comparable[m.counter], r.counted_in, paths, rtol)
        out.append(row)
    totals, raw_totals, skipped = _whole_model_counts(dict(rows[0].breakdown), measurements)
    notes = list(ANY_MODEL_NOTES)
    if any(m.counter == "fvcore" for m in measurements):
        notes += COUNTER_NOTES["fvcore"]
    for m in measurements:
        for cat in CATEGORIES:
            if cat not in comparable[m.counter] and cat not in not_comparable and totals["analytic"][cat]:
                notes.append(
                    f"{m.counter} / {cat}: not comparable: the counter counted no op in this category."
                )
    return _with_blind_spots(
        Reconciliation(out, comparable, totals, raw_totals, skipped, notes, rtol), measurements
    )
