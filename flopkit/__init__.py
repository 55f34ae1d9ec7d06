"""flopkit: ViT-5 modules with exact analytic FLOPs, FLOP inspection and fast norm kernels."""

from ._source_tree import map_source_subpackages

map_source_subpackages()

from .nn import (  # noqa: E402
    HeadNorm,
    LayerScale,
    Mlp,
    PatchEmbed,
    PerHeadRMSNorm,
    RMSNorm,
    ViT5,
    ViT5Attention,
    ViT5Block,
)

__version__ = "0.1.0"


def __getattr__(name: str):
    # flopkit.sharded(...) without importing flopkit.parallel (and torch.distributed) with the package.
    if name == "sharded":
        from .parallel import sharded

        return sharded
    raise AttributeError(f"module 'flopkit' has no attribute {name!r}")


__all__ = [
    "RMSNorm",
    "PerHeadRMSNorm",
    "HeadNorm",
    "ViT5Attention",
    "PatchEmbed",
    "Mlp",
    "LayerScale",
    "ViT5Block",
    "ViT5",
    "sharded",
    "__version__",
]
