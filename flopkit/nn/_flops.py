"""How modules count FLOPs: one signature for every module, formulas from :mod:`flopkit.formulas`.

Every flopkit module's ``flop_breakdown`` and ``flop_count`` take the same arguments with the same
meaning:

* ``num_tokens``: tokens per sample, i.e. the rows of the module's ``[*, T, C]`` input for one
  sequence or image. It defaults to the module's own ``T`` where its layout fixes one
  (``ViT5Attention``, ``ViT5Block``, ``PatchEmbed``, ``ViT5``), and is required otherwise
  (``RMSNorm``, ``Mlp``, ...). A module whose ``T`` follows from its image size (``ViT5``,
  ``PatchEmbed``) accepts only that value.
* ``batch_size``: samples (keyword only, default 1); every count scales linearly with it.
* ``convention``: ``"flopkit"`` or ``"nvsubquadratic"`` (keyword only; see
  :func:`flopkit.formulas.qk_norm_rows`).
"""

from __future__ import annotations

import math

from torch import nn

from flopkit import formulas
from flopkit.formulas import add_breakdowns, check_convention, empty_breakdown, scale_breakdown

from ._checks import check_positive_int

__all__ = ["FlopCounted", "CompositeFlops", "module_breakdown", "ACTIVATIONS", "FREE_MODULES"]

ACTIVATIONS = (nn.GELU, nn.ReLU, nn.SiLU, nn.Tanh, nn.Sigmoid)
FREE_MODULES = (nn.Dropout, nn.Identity)


def module_breakdown(module: nn.Module, count: int, convention: str = "flopkit") -> dict[str, int]:
    """FLOP breakdown of ``module`` applied to ``count`` rows (elements, for an activation).

    flopkit modules answer through their own ``flop_breakdown``; ``nn.Linear``, ``nn.RMSNorm``,
    ``nn.LayerNorm``, activations, dropout and identity through :mod:`flopkit.formulas`. Anything
    else raises TypeError.
    """
    if isinstance(module, FlopCounted):
        check_convention(convention)
        return module.flop_per_sample(count, convention)
    if isinstance(module, nn.Linear):
        return formulas.linear_breakdown(
            count, module.in_features, module.out_features, module.bias is not None
        )
    out = empty_breakdown()
    if isinstance(module, nn.RMSNorm):
        out["norm"] = formulas.rms_norm(count, math.prod(module.normalized_shape))
    elif isinstance(module, nn.LayerNorm):
        n = math.prod(module.normalized_shape)
        out["norm"] = formulas.layer_norm(count, n, getattr(module, "bias", None) is not None)
    elif isinstance(module, ACTIVATIONS):
        out["elementwise"] = formulas.activation(count)
    elif not isinstance(module, FREE_MODULES):
        raise TypeError(f"no FLOP formula for {type(module).__name__}; give it flop_breakdown(num_tokens)")
    return out


class FlopCounted:
    """Mixin giving a module ``flop_breakdown`` and ``flop_count`` with the shared signature.

    Subclasses implement ``flop_self(num_tokens, convention)`` (FLOPs by category for one sample of
    ``num_tokens`` tokens) and, where the layout fixes ``T``, ``default_flop_tokens()``; a module
    whose ``T`` cannot differ sets ``fixed_flop_tokens = True``.
    """

    fixed_flop_tokens = False

    def flop_self(self, num_tokens: int, convention: str) -> dict[str, int]:
        return empty_breakdown()

    def default_flop_tokens(self) -> int:
        raise ValueError(f"{type(self).__name__}.flop_count needs num_tokens (tokens per sample)")

    def resolve_flop_tokens(self, num_tokens: int | None) -> int:
        """``num_tokens`` checked, or the module's own ``T`` when None."""
        if num_tokens is None:
            return self.default_flop_tokens()
        check_positive_int("num_tokens", num_tokens)
        if self.fixed_flop_tokens and num_tokens != self.default_flop_tokens():
            raise ValueError(
                f"{type(self).__name__}: num_tokens={num_tokens}, but its image size fixes "
                f"{self.default_flop_tokens()} tokens per sample; leave num_tokens out "
                f"(batch_size={num_tokens} counts {num_tokens} samples)"
            )
        return num_tokens

    def flop_per_sample(self, num_tokens: int, convention: str) -> dict[str, int]:
        """FLOPs by category of one sample of ``num_tokens`` tokens (no checks; the tree walk's entry)."""
        return self.flop_self(num_tokens, convention)

    def flop_breakdown(
        self, num_tokens: int | None = None, *, batch_size: int = 1, convention: str = "flopkit"
    ) -> dict[str, int]:
        """Forward FLOPs by category (``matmul, attention, norm, rope, elementwise``) for
        ``batch_size`` samples of ``num_tokens`` tokens each."""
        check_convention(convention)
        check_positive_int("batch_size", batch_size)
        per_sample = self.flop_per_sample(self.resolve_flop_tokens(num_tokens), convention)
        return scale_breakdown(per_sample, batch_size)

    def flop_count(
        self, num_tokens: int | None = None, *, batch_size: int = 1, convention: str = "flopkit"
    ) -> int:
        """Total forward FLOPs: the sum of :meth:`flop_breakdown` (same arguments)."""
        return sum(self.flop_breakdown(num_tokens, batch_size=batch_size, convention=convention).values())


class CompositeFlops(FlopCounted):
    """Mixin for modules whose FLOPs are their own work plus their children's.

    Subclasses implement ``flop_children(num_tokens, convention)`` -> ``[(name, module, count)]``
    (``count``: rows the child runs on for one sample; elements for an activation) and optionally
    ``flop_self(num_tokens, convention)``, the work done outside any child.
    """

    def flop_children(self, num_tokens: int, convention: str) -> list[tuple[str, nn.Module, int]]:
        return []

    def flop_per_sample(self, num_tokens: int, convention: str) -> dict[str, int]:
        parts = [self.flop_self(num_tokens, convention)]
        parts += [
            module_breakdown(m, n, convention) for _, m, n in self.flop_children(num_tokens, convention)
        ]
        return add_breakdowns(*parts)
