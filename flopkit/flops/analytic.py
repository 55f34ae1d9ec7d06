"""Analytic FLOPs as a tree: walk ``flop_children`` down to the leaves (docs/conventions.md).

Every number comes from the modules themselves: a composite's ``flop_self`` and
``flop_children(num_tokens, convention) -> [(name, module, count)]``, a leaf's
``module_breakdown`` (which asks the module's own ``flop_breakdown`` or the fixed formulas for
``nn.Linear``, activations, norms). The walk only adds them up and attaches them to module paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from flopkit.formulas import BACKWARD_MULTIPLIERS, add_breakdowns, check_convention, scale_breakdown
from flopkit.nn._flops import FlopCounted, module_breakdown

__all__ = [
    "FlopNode",
    "FlopRow",
    "flop_tree",
    "is_analytic",
    "flop_rows",
    "breakdown_at",
    "top_paths",
    "leaf_owner",
    "depth_of",
    "backward_breakdown_at",
]


def backward_breakdown_at(path: str, nodes: dict[str, FlopNode]) -> dict[str, int]:
    """Backward FLOPs of the walked module at ``path`` (or the walked modules under a container):
    :data:`BACKWARD_MULTIPLIERS` times the forward, less the input gradient of every module under it
    whose input is data (``input_is_data``: the patch embedding's conv computes its weight gradient
    only)."""
    forward = breakdown_at(path, nodes)
    out = {k: v * BACKWARD_MULTIPLIERS.get(k, 0) for k, v in forward.items()}
    prefix = path + "." if path else ""
    for node in nodes.values():
        if (node.path == path or node.path.startswith(prefix)) and getattr(
            node.module, "input_is_data", False
        ):
            out["matmul"] -= node.own.get("matmul", 0)
    return out


@dataclass
class FlopNode:
    """One module in the analytic tree: its path, its own work and its children."""

    path: str
    module: nn.Module
    count: int
    own: dict[str, int]
    children: list[FlopNode] = field(default_factory=list)

    @property
    def breakdown(self) -> dict[str, int]:
        """FLOPs by category of the whole subtree."""
        return add_breakdowns(self.own, *(c.breakdown for c in self.children))

    def walk(self):
        """This node and every descendant, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def is_analytic(module: nn.Module) -> bool:
    """True for modules that count their own FLOPs (flopkit modules), the ones the walk can start at."""
    return isinstance(module, FlopCounted)


def flop_tree(module: nn.Module, count: int, convention: str = "flopkit", path: str = "") -> FlopNode:
    """The analytic tree of ``module`` applied to ``count`` rows (tokens, or images for a ViT5).

    A composite contributes ``flop_self`` and recurses into ``flop_children``; anything else is a
    leaf counted by :func:`~flopkit.nn._flops.module_breakdown`. ``count`` is tokens per sample
    (the module's own ``T`` for a ViT5); the root's breakdown equals
    ``module.flop_breakdown(count, convention=...)``.
    """
    check_convention(convention)
    if hasattr(module, "flop_children"):
        node = FlopNode(path, module, count, module.flop_self(count, convention))
        for name, child, n in module.flop_children(count, convention):
            node.children.append(flop_tree(child, n, convention, _join(path, name)))
        return node
    return FlopNode(path, module, count, module_breakdown(module, count, convention))


@dataclass
class FlopRow:
    """One row of a per-module report."""

    path: str
    type: str
    repr: str
    params: int
    breakdown: dict[str, int]
    source: str = "analytic"
    counted_in: str | None = None  # the ancestor whose own formula includes this module's work
    backward: dict[str, int] | None = None  # with training on a measured model: the backward part
    shapes: Any = None  # a flopkit.flops.anymodel.LayerShapes: the module's first call, when recorded
    hardware_flops: int | None = None  # matmul + attention as CUDA kernels run them (flopkit.flops.llm)

    @classmethod
    def of(cls, path: str, module: nn.Module, breakdown: dict[str, int], **extra: object) -> FlopRow:
        """The row of ``module`` at ``path``: type, one-line ``extra_repr``, parameter count."""
        return cls(
            path=path,
            type=type(module).__name__,
            repr=" ".join(module.extra_repr().split()),
            params=sum(p.numel() for p in module.parameters()),
            breakdown=breakdown,
            **extra,
        )

    @property
    def flops(self) -> int:
        return sum(self.breakdown.values())

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "path": self.path,
            "type": self.type,
            "repr": self.repr,
            "params": self.params,
            "flops": self.flops,
            "breakdown": dict(self.breakdown),
            "source": self.source,
            "counted_in": self.counted_in,
        }
        if self.backward is not None:
            backward = sum(self.backward.values())
            out.update(
                forward_flops=self.flops - backward, backward_flops=backward, backward=dict(self.backward)
            )
        if self.hardware_flops is not None:
            out["hardware_flops"] = self.hardware_flops
        shapes = self.shapes
        out["input_shapes"] = shapes.input_shapes if shapes is not None else []
        out["output_shapes"] = shapes.output_shapes if shapes is not None else []
        if shapes is not None:
            out.update(
                input_dtypes=shapes.input_dtypes,
                output_dtypes=shapes.output_dtypes,
                param_bytes=shapes.param_bytes,
                output_bytes=shapes.output_bytes,
            )
        return out


def depth_of(path: str) -> int:
    return 0 if not path else path.count(".") + 1


def top_paths(path: str, paths) -> list[str]:
    """The top-most of ``paths`` strictly under ``path`` (``blocks`` -> ``blocks.0``, ``blocks.1``...)."""
    prefix = path + "." if path else ""
    under = [p for p in paths if p != path and p.startswith(prefix)]
    return [p for p in under if not any(p.startswith(q + ".") for q in under)]


def breakdown_at(path: str, nodes: dict[str, FlopNode]) -> dict[str, int]:
    """The walked module's breakdown at ``path``; for a container the walk stepped over (``blocks``,
    a ``ModuleList``) the sum over the walked modules under it; zeros for anything else."""
    if path in nodes:
        return nodes[path].breakdown
    return add_breakdowns(*(nodes[p].breakdown for p in top_paths(path, nodes)))


def flop_rows(
    model: nn.Module,
    tree: FlopNode,
    depth: int | None = None,
    batch: int = 1,
    training: bool = False,
) -> list[FlopRow]:
    """One :class:`FlopRow` per module of ``model`` (``named_modules`` order) down to ``depth``.

    A module the walk reached gets its subtree's breakdown; a container the walk stepped over
    (``blocks``) gets the sum of the walked modules under it; anything else (dropout, identity) 0.
    Counts are multiplied by ``batch``; ``training`` adds the backward
    (:data:`flopkit.formulas.BACKWARD_MULTIPLIERS`).
    """
    nodes = {node.path: node for node in tree.walk()}
    rows = []
    for path, module in model.named_modules():
        if depth is not None and depth_of(path) > depth:
            continue
        breakdown = scale_breakdown(breakdown_at(path, nodes), batch)
        owner = leaf_owner(path, nodes)
        backward = None
        if training:
            backward = scale_breakdown(backward_breakdown_at(path, nodes), batch)
            breakdown = add_breakdowns(breakdown, backward)
        rows.append(FlopRow.of(path, module, breakdown, counted_in=owner, backward=backward))
    return rows


def leaf_owner(path: str, nodes: dict[str, FlopNode]) -> str | None:
    """For a module inside a walked leaf (``patch_embed.proj`` inside ``PatchEmbed``, whose own
    formula covers the conv), that leaf's path; else None."""
    if path in nodes:
        return None
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        node = nodes.get(".".join(parts[:i]))
        if node is not None:
            return node.path if not node.children and not hasattr(node.module, "flop_children") else None
    return None
