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

from flopkit.formulas import CATEGORIES, add_breakdowns, training_breakdown

from .analytic import FlopNode, FlopRow, depth_of, flop_tree, is_analytic, top_paths
from .measured import count_torch

__all__ = ["per_sample_count", "mixed_rows", "MIXED_LEGEND"]

MIXED_LEGEND = (
    "source: 'analytic' rows come from the modules' own flop_count; 'measured' rows from torch's "
    "FlopCounterMode on the meta device (matmul, conv and attention only: norms, activations and "
    "other elementwise work in measured modules are not counted), with analytic subtrees swapped in."
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


def _record_shapes(model: nn.Module) -> tuple[dict[str, tuple[int, ...]], list]:
    shapes: dict[str, tuple[int, ...]] = {}

    def hook_for(name: str):
        def hook(module, args):
            if name not in shapes and args and isinstance(args[0], torch.Tensor):
                shapes[name] = tuple(args[0].shape)

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in model.named_modules()]
    return shapes, handles


def mixed_rows(
    model: nn.Module,
    inputs: torch.Tensor,
    convention: str = "flopkit",
    depth: int | None = None,
    training: bool = False,
) -> list[FlopRow]:
    """Per-module rows for any model (on the meta device) run on ``inputs``; see the module docstring."""
    shapes, handles = _record_shapes(model)
    try:
        measured = count_torch(model, inputs)
    finally:
        for h in handles:
            h.remove()
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

    out = []
    for path, module in modules.items():
        if depth is not None and depth_of(path) > depth:
            continue
        if path in nodes or any(_under(path, r) for r in roots):
            breakdown, source = analytic(path), "analytic"
        else:
            own = measured.breakdown(path)
            inner = top_paths(path, trees)
            swapped = [measured.breakdown(p) for p in inner]
            breakdown = add_breakdowns(dict.fromkeys(CATEGORIES, 0), own, *(analytic(p) for p in inner))
            for part in swapped:
                for k, v in part.items():
                    breakdown[k] -= v
            source = "measured+analytic" if inner else "measured"
        if training:
            breakdown = training_breakdown(breakdown)
        out.append(FlopRow.of(path, module, breakdown, source=source))
    return out
