"""FLOPs of any ``nn.Module``: flopkit modules analytically, everything else by FlopCounterMode.

One forward on the meta device under ``FlopCounterMode`` records each module's measured FLOPs and
its first input's shape. The top-most modules with ``flop_count`` start analytic walks: with the
module's own tokens per sample (a ViT5's or an attention layer's ``T``)
times the input's batch, or, for token-wise modules without a default, ``numel / last dim`` rows.
Every other module is measured, with the analytic subtrees under it swapped in for their
measured share.
"""

from __future__ import annotations

import torch
from torch import nn

from flopkit.formulas import CATEGORIES, add_breakdowns, flash_backward_extra

from .analytic import (
    FlopNode,
    FlopRow,
    backward_breakdown_at,
    depth_of,
    flop_tree,
    is_analytic,
    leaf_owner,
    top_paths,
)
from .anymodel import ModelCount, count_model
from .llm import CHECKPOINTING, checkpoint_blocks, hardware_flops

__all__ = ["per_sample_count", "mixed_rows", "MIXED_LEGEND"]

MIXED_LEGEND = (
    "source: 'analytic' rows come from the modules' own flop_count; 'measured' rows from torch's "
    "FlopCounterMode on the meta device with flopkit's norm and elementwise formulas (see 'measured' "
    "below), with analytic subtrees swapped in."
)


def per_sample_count(module: nn.Module) -> int | None:
    """The module's own tokens per sample (``default_flop_tokens``: a ViT5's or an attention layer's
    ``T``), or None for token-wise modules without one (``RMSNorm``, ``Mlp``)."""
    try:
        return module.default_flop_tokens()
    except ValueError:
        return None


def _under(path: str, ancestor: str) -> bool:
    """True when ``path`` is strictly inside the module at ``ancestor``."""
    return path != ancestor and (ancestor == "" or path.startswith(ancestor + "."))


def mixed_rows(
    model: nn.Module,
    inputs: torch.Tensor | tuple[tuple, dict],
    convention: str = "flopkit",
    depth: int | None = None,
    training: bool = False,
    causal: str = "full",
    *,
    padding_mask: torch.Tensor | None = None,
    checkpointing: str = "none",
) -> tuple[list[FlopRow], ModelCount]:
    """Per-module rows for any model (on the meta device) run on ``inputs`` (a tensor, or
    ``(args, kwargs)``), and the measured count behind them; see the module docstring.

    With ``training``, measured rows add the measured backward (``FlopCounterMode`` over
    ``loss = sum of outputs``); analytic rows add :data:`~flopkit.flops.analytic.BACKWARD_MULTIPLIERS`.
    Each row carries the forward+backward breakdown and, in ``backward``, the backward part, and its
    hardware FLOPs (:func:`~flopkit.flops.llm.hardware_flops`: with ``training``, flash-attention
    backward at 5/2 of the forward, and with ``checkpointing="blocks"`` a second forward of each
    repeated block). ``causal`` and ``padding_mask``: :func:`~flopkit.flops.anymodel.count_model`.
    """
    if checkpointing not in CHECKPOINTING:
        raise ValueError(f"checkpointing must be one of {', '.join(CHECKPOINTING)}, got {checkpointing!r}")
    if checkpointing != "none" and not training:
        raise ValueError("checkpointing applies to a training step (training=True)")
    args, kwargs = ((inputs,), {}) if isinstance(inputs, torch.Tensor) else inputs
    measured = count_model(model, args, kwargs, causal=causal, backward=training, padding_mask=padding_mask)
    shapes = {p: tuple(s.input_shapes[0]) for p, s in measured.shapes.items() if s.input_shapes}
    modules = dict(model.named_modules())
    analytic_paths = [p for p, m in modules.items() if is_analytic(m) and p in shapes]
    roots = [p for p in analytic_paths if not any(_under(p, q) for q in analytic_paths)]
    trees: dict[str, tuple[FlopNode, int]] = {}
    for path in roots:
        module, shape = modules[path], shapes[path]
        count = per_sample_count(module)
        if count is not None:
            trees[path] = (flop_tree(module, count, convention, path), shape[0])
        else:
            rows = 1
            for s in shape[:-1]:
                rows *= s
            trees[path] = (flop_tree(module, rows, convention, path), 1)
    nodes = {n.path: (n, scale) for tree, scale in trees.values() for n in tree.walk()}

    def analytic(path: str) -> dict[str, int]:
        if path not in nodes:  # a container the walk steps over (blocks), or dropout/identity
            return add_breakdowns(
                dict.fromkeys(CATEGORIES, 0), *(analytic(p) for p in top_paths(path, nodes))
            )
        node, scale = nodes[path]
        return {k: v * scale for k, v in node.breakdown.items()}

    def analytic_backward(path: str) -> dict[str, int]:
        if path not in nodes:
            return add_breakdowns(
                dict.fromkeys(CATEGORIES, 0), *(analytic_backward(p) for p in top_paths(path, nodes))
            )
        scale = nodes[path][1]
        walked = {p: n for p, (n, _) in nodes.items()}
        return {k: v * scale for k, v in backward_breakdown_at(path, walked).items()}

    def entered(counts: dict[str, dict[str, int]], path: str) -> dict[str, int]:
        """The count at ``path``; for a container never called (a ModuleList), the sum over the
        top-most modules under it that were."""
        if path in measured.called:
            return counts.get(path, {})
        return add_breakdowns(*(counts.get(p, {}) for p in top_paths(path, measured.called)))

    def combine(own, inner_analytic, inner_measured):
        out = add_breakdowns(dict.fromkeys(CATEGORIES, 0), own, *inner_analytic)
        for part in inner_measured:
            for k, v in part.items():
                out[k] -= v
        return out

    blocks = checkpoint_blocks(model) if checkpointing == "blocks" else []
    forward_of: dict[str, dict[str, int]] = {}
    out = []
    for path, module in reversed(list(modules.items())):  # children before their parents
        if depth is not None and depth_of(path) > depth and not any(path == b for b in blocks):
            continue
        backward, owner = None, None
        if path in nodes or any(_under(path, r) for r in roots):
            forward, source = analytic(path), "analytic"
            owner = leaf_owner(path, {p: n for p, (n, _) in nodes.items()})
            if training:
                backward = analytic_backward(path)
        else:
            inner = top_paths(path, trees)
            inner_forward = [analytic(p) for p in inner]
            forward = combine(
                entered(measured.forward, path), inner_forward, [measured.breakdown(p) for p in inner]
            )
            if training:
                backward = combine(
                    entered(measured.backward, path),
                    [analytic_backward(p) for p in inner],
                    [measured.backward.get(p, {}) for p in inner],
                )
            source = "measured+analytic" if inner else "measured"
        breakdown = add_breakdowns(forward, backward) if backward is not None else forward
        row = FlopRow.of(path, module, breakdown, source=source, backward=backward, counted_in=owner)
        row.shapes = measured.shapes.get(path)
        forward_of[path] = forward
        if training:
            extra = (
                flash_backward_extra(forward["attention"])  # flopkit's attention runs SDPA
                if source == "analytic"
                else entered(measured.hardware_extra, path).get("attention", 0)
            )
            recompute = None
            if blocks:
                inside = next((b for b in blocks if path == b or path.startswith(b + ".")), None)
                parts = [path] if inside else [b for b in blocks if _under(b, path)]
                recompute = add_breakdowns(*(forward_of[p] for p in parts if p in forward_of))
            row.hardware_flops = hardware_flops(breakdown, extra, recompute)
        else:
            row.hardware_flops = hardware_flops(breakdown)
        if depth is None or depth_of(path) <= depth:
            out.append(row)
    out.reverse()
    return out, measured
