"""Token layout report: where patches, CLS and registers sit in the ``T`` axis, and their grids."""

from __future__ import annotations

from typing import Any

from torch import nn

from flopkit.nn import ViT5, ViT5Attention, ViT5Block
from flopkit.nn.rope import TokenLayout

__all__ = [
    "MAX_LISTED_TOKENS",
    "attention_of",
    "check_listed_tokens",
    "layout_of",
    "layout_ranges",
    "layout_tokens",
]


def attention_of(module: nn.Module) -> ViT5Attention:
    """The attention layer whose layout and RoPE tables a report shows (every block's are equal)."""
    if isinstance(module, ViT5Attention):
        return module
    if isinstance(module, ViT5Block):
        return module.attn
    if isinstance(module, ViT5):
        return module.blocks[0].attn
    raise ValueError(
        f"a {type(module).__name__} has no token layout; use a ViT5 model, ViT5Block or ViT5Attention config"
    )


def layout_of(module: nn.Module) -> TokenLayout:
    return attention_of(module).layout


def _span(start: int, stop: int) -> str:
    return str(start) if stop - start == 1 else f"{start}-{stop - 1}"


def layout_ranges(layout: TokenLayout) -> list[dict[str, Any]]:
    """One entry per kind of token: ``kind``, index ``range`` (inclusive), ``count``, ``grid``."""
    h, w = layout.num_patches_h, layout.num_patches_w
    start = layout.patch_start
    index = f"{start} + y*{w} + x" if start else f"y*{w} + x"
    rows = [
        {
            "kind": "patch",
            "range": _span(start, start + layout.num_patches),
            "count": layout.num_patches,
            "grid": f"{h}x{w}, row-major: index = {index}",
        }
    ]
    if layout.has_cls:
        cls = {"kind": "cls", "range": str(layout.cls_index), "count": 1, "grid": "none (RoPE identity)"}
        rows.insert(0 if layout.cls_first else 1, cls)
    if layout.num_registers:
        side = layout.register_grid
        rows.append(
            {
                "kind": "register",
                "range": _span(layout.register_start, layout.num_tokens),
                "count": layout.num_registers,
                "grid": f"{side}x{side} (sqrt(R) = {side}), row-major",
            }
        )
    rows.append(
        {
            "kind": "total T",
            "range": _span(0, layout.num_tokens),
            "count": layout.num_tokens,
            "grid": layout.describe(),
        }
    )
    return rows


MAX_LISTED_TOKENS = 1_000_000
"""Most tokens a report lists one row each (:func:`layout_tokens`, and the ``tokens`` that
:func:`flopkit.inspect.rope.rope_token_rows` reports)."""


def check_listed_tokens(count: int, hint: str) -> None:
    """:class:`flopkit.checks.InputError` (a ValueError naming ``tokens``, ending in ``hint``) when a
    report would list more than :data:`MAX_LISTED_TOKENS` tokens."""
    from flopkit.checks import InputError

    if count > MAX_LISTED_TOKENS:
        raise InputError(
            "tokens", None, f"{count:,} tokens is above the {MAX_LISTED_TOKENS:,} a report lists; {hint}"
        )


def layout_tokens(layout: TokenLayout) -> list[dict[str, Any]]:
    """Every token: ``index``, ``kind`` (patch | cls | register), grid ``y`` and ``x`` (None for CLS).

    ValueError above :data:`MAX_LISTED_TOKENS` tokens."""
    check_listed_tokens(
        layout.num_tokens, "list a range of them with the RoPE report's `tokens`, or use a smaller image_size"
    )
    return [{"index": i, "kind": kind, "y": y, "x": x} for i, kind, y, x in layout.tokens()]
