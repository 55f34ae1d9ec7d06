"""flopkit modules; each has ``flop_count()``, ``flop_breakdown()`` and ``extra_repr()``."""

from .attention import ViT5Attention
from .norms import HeadNorm, PerHeadRMSNorm, RMSNorm
from .vit5 import PRESETS, LayerScale, Mlp, PatchEmbed, ScalableLinear, ViT5, ViT5Block
from .vit5_config import ViT5Config

__all__ = [
    "RMSNorm",
    "PerHeadRMSNorm",
    "HeadNorm",
    "ViT5Attention",
    "PatchEmbed",
    "Mlp",
    "ScalableLinear",
    "LayerScale",
    "ViT5Block",
    "ViT5",
    "ViT5Config",
    "PRESETS",
]
