"""Inspection reports: the token layout and the RoPE tables of a ViT-5 attention layer."""

from .layout import attention_of, layout_of, layout_ranges, layout_tokens
from .rope import pairing_norm_ratios, parse_token_spec, rope_summary, rope_token_rows

__all__ = [
    "attention_of",
    "layout_of",
    "layout_ranges",
    "layout_tokens",
    "parse_token_spec",
    "pairing_norm_ratios",
    "rope_summary",
    "rope_token_rows",
]
