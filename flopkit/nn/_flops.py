"""FLOP categories and the conventions shared by every module (DESIGN.md §3)."""

from __future__ import annotations

import math

from torch import nn

__all__ = [
    "CATEGORIES",
    "CONVENTIONS",
    "empty_breakdown",
    "add_breakdowns",
    "check_convention",
    "linear_flops",
    "module_breakdown",
    "CompositeFlops",
]

CATEGORIES = ("matmul", "attention", "norm", "rope", "elementwise")
CONVENTIONS = ("flopkit", "nvsubquadratic")


def empty_breakdown() -> dict[str, int]:
    """A breakdown with every category at zero."""
    return dict.fromkeys(CATEGORIES, 0)


def add_breakdowns(*parts: dict[str, int]) -> dict[str, int]:
    """Category-wise sum of breakdowns."""
    out = empty_breakdown()
    for part in parts:
        for key, value in part.items():
            out[key] += value
    return out


def check_convention(convention: str) -> None:
    """Raise ValueError unless ``convention`` is ``"flopkit"`` or ``"nvsubquadratic"``."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


ACTIVATIONS = (nn.GELU, nn.ReLU, nn.SiLU, nn.Tanh, nn.Sigmoid)
FREE_MODULES = (nn.Dropout, nn.Identity)


def linear_flops(num_rows: int, in_features: int, out_features: int, bias: bool) -> int:
    """``2 * T * i * o`` (+ ``T * o`` with bias)."""
    return 2 * num_rows * in_features * out_features + (num_rows * out_features if bias else 0)


def module_breakdown(module: nn.Module, count: int, convention: str = "flopkit") -> dict[str, int]:
    """FLOP breakdown of ``module`` applied to ``count`` rows (elements, for an activation).

    flopkit modules answer through their own ``flop_breakdown``; ``nn.Linear``, activations (one
    FLOP per element), dropout and identity have fixed formulas here. Anything else raises TypeError.
    """
    if hasattr(module, "flop_children"):
        return module.flop_breakdown(count, convention=convention)
    if hasattr(module, "flop_breakdown"):
        return module.flop_breakdown(count)
    out = empty_breakdown()
    if isinstance(module, nn.Linear):
        # The bias add is elementwise: torch's counters see only the product (addmm = mm FLOPs).
        out["matmul"] = linear_flops(count, module.in_features, module.out_features, bias=False)
        if module.bias is not None:
            out["elementwise"] = count * module.out_features
    elif isinstance(module, (nn.RMSNorm, nn.LayerNorm)):
        n = math.prod(module.normalized_shape)
        per_element = 3 if isinstance(module, nn.RMSNorm) else 5 + (getattr(module, "bias", None) is not None)
        out["norm"] = per_element * count * n
    elif isinstance(module, ACTIVATIONS):
        out["elementwise"] = count
    elif not isinstance(module, FREE_MODULES):
        raise TypeError(f"no FLOP formula for {type(module).__name__}; give it flop_breakdown(num_tokens)")
    return out


class CompositeFlops:
    """Mixin for modules whose FLOPs are their own work plus their children's.

    Subclasses implement ``flop_children(num_tokens, convention)`` -> ``[(name, module, count)]``
    and ``flop_self(num_tokens, convention)`` -> breakdown of work done outside any child.
    """

    def flop_children(self, num_tokens: int, convention: str) -> list[tuple[str, nn.Module, int]]:
        return []

    def flop_self(self, num_tokens: int, convention: str) -> dict[str, int]:
        return empty_breakdown()

    def flop_breakdown(self, num_tokens: int | None = None, *, convention: str = "flopkit") -> dict[str, int]:
        """FLOPs by category (``matmul, attention, norm, rope, elementwise``) for one forward."""
        check_convention(convention)
        num_tokens = self.default_flop_tokens() if num_tokens is None else num_tokens
        parts = [self.flop_self(num_tokens, convention)]
        parts += [
            module_breakdown(m, n, convention) for _, m, n in self.flop_children(num_tokens, convention)
        ]
        return add_breakdowns(*parts)

    def flop_count(self, num_tokens: int | None = None, *, convention: str = "flopkit") -> int:
        """Total forward FLOPs: the sum of :meth:`flop_breakdown`."""
        return sum(self.flop_breakdown(num_tokens, convention=convention).values())

    def default_flop_tokens(self) -> int:
        raise ValueError(f"{type(self).__name__}.flop_count needs num_tokens")
