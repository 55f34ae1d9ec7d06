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
    ViT5Config,
)

__version__ = "0.1.0"


def register_formula(op, fn, category: str = "matmul") -> None:
    """Count ``op`` (an op packet, e.g. ``torch.ops.mylib.my_kernel``: a Triton kernel registered
    with ``torch.library``) with ``fn`` (its arguments as shapes -> FLOPs) in ``category``, in every
    measured count from now on, and in torch's ``FlopCounterMode``:
    :func:`flopkit.flops.anymodel.register_formula`."""
    from .flops.anymodel import register_formula as register

    register(op, fn, category)


# Entry points that sit above the modules, imported on first use (the package stays light).
_LAZY = {
    "count": ("flopkit.flops.count", "count"),
    "FlopCount": ("flopkit.flops.count", "FlopCount"),
    "count_sweep": ("flopkit.flops.count", "count_sweep"),
    "FlopSweep": ("flopkit.flops.count", "FlopSweep"),
    "count_generation": ("flopkit.flops.count", "count_generation"),
    "GenerationCount": ("flopkit.flops.count", "GenerationCount"),
    "load_vit5": ("flopkit.checkpoints", "load_vit5"),
    "memory": ("flopkit.step_memory", "memory"),
    "fit_batch": ("flopkit.step_memory", "fit_batch"),
    "MemoryResult": ("flopkit.step_memory", "MemoryResult"),
    "sharded": ("flopkit.parallel", "sharded"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
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
    "ViT5Config",
    "load_vit5",
    "count",
    "FlopCount",
    "count_sweep",
    "FlopSweep",
    "count_generation",
    "GenerationCount",
    "register_formula",
    "memory",
    "fit_batch",
    "MemoryResult",
    "sharded",
    "__version__",
]
