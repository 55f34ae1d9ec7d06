"""Build the two upstream ViT-5 models from their own source checkouts (tests and parity runs).

Nothing of upstream is copied here: each builder imports the upstream code from a directory the
caller names (a checkout of NVIDIA-BioNeMo/nvSubquadratic, or of wangf3014/ViT-5) and builds
the model the way upstream does:

* nvSubquadratic: ``ViT5ClassificationNet`` assembled as in its
  ``benchmarks/vit5_imagenet/bench_vit5_compile.py`` (RMSNorm QK-norm, GELU MLP, LayerScale),
  with ``use_quack`` chosen by the caller; input channels-last in ``{"input": x}``.
* official: ``models_vit5.vit5_{small,base,large,xlarge}(img_size=...)``. It imports timm; where
  torchvision is missing or broken, timm's unconditional torchvision imports are satisfied by
  inert placeholders (nothing of torchvision runs in a ViT-5). Its RoPE calls ``.cuda()``;
  :func:`official_forward` lets that be a no-op on a CPU-only machine.

Environment variables ``FLOPKIT_NVSUBQ_SRC`` and ``FLOPKIT_VIT5_SRC`` name the checkouts for tests. A
checkout is made importable by ``benchmarks._harness.add_source_tree`` (no ``sys.path`` edit).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch

from benchmarks._harness import add_source_tree

NVSUBQ_ENV = "FLOPKIT_NVSUBQ_SRC"
OFFICIAL_ENV = "FLOPKIT_VIT5_SRC"
OFFICIAL_BUILDERS = {384: "vit5_small", 768: "vit5_base", 1024: "vit5_large", 1152: "vit5_xlarge"}


def upstream_unavailable(source: str) -> str | None:
    """Why the upstream ``source`` cannot be imported here (a skip reason), or None when it can."""
    env = NVSUBQ_ENV if source == "nvsubquadratic" else OFFICIAL_ENV
    src = os.environ.get(env)
    if not src:
        return f"set {env} to a checkout of the {source} ViT-5 code to compare against it"
    try:
        if source == "nvsubquadratic":
            _import_nvsubquadratic(src)
        else:
            _import_official(src)
    except Exception as exc:  # any import failure is a reason to skip, reported as such
        return f"cannot import the {source} code from {src}: {type(exc).__name__}: {exc}"
    return None


# ------------------------------------------------------------------------------ nvSubquadratic
def _import_nvsubquadratic(src: str | Path) -> types.SimpleNamespace:
    add_source_tree(src)
    return types.SimpleNamespace(
        LazyConfig=importlib.import_module("nvsubquadratic.lazy_config").LazyConfig,
        MLP=importlib.import_module("nvsubquadratic.modules.mlp").MLP,
        RMSNorm=importlib.import_module("nvsubquadratic.modules.rms_norm").RMSNorm,
        ViT5Attention=importlib.import_module("nvsubquadratic.modules.vit5_attention").ViT5Attention,
        ViT5ResidualBlock=importlib.import_module(
            "nvsubquadratic.modules.vit5_residual_block"
        ).ViT5ResidualBlock,
        Net=importlib.import_module("nvsubquadratic.networks.vit5_classification").ViT5ClassificationNet,
    )


def build_nvsubquadratic(
    src: str | Path,
    *,
    hidden_dim: int = 384,
    depth: int = 12,
    num_heads: int = 6,
    image_size: int = 224,
    patch_size: int = 16,
    num_registers: int = 4,
    num_classes: int = 1000,
    mlp_ratio: float = 4.0,
    use_quack: bool = False,
) -> torch.nn.Module:
    """nvSubquadratic's ``ViT5ClassificationNet`` with random weights (its own init), on CPU."""
    up = _import_nvsubquadratic(src)
    L = up.LazyConfig
    grid = image_size // patch_size
    norm = L(up.RMSNorm)(dim=hidden_dim, eps=1e-6, use_quack=use_quack)
    return up.Net(
        in_channels=3,
        num_classes=num_classes,
        hidden_dim=hidden_dim,
        num_blocks=depth,
        patch_size=patch_size,
        image_size=image_size,
        num_registers=num_registers,
        dropout_rate=0.0,
        readout="cls",
        norm_cfg=norm,
        block_cfg=L(up.ViT5ResidualBlock)(
            sequence_mixer_cfg=L(up.ViT5Attention)(
                hidden_dim=hidden_dim,
                num_heads=num_heads,
                num_patches_h=grid,
                num_patches_w=grid,
                num_registers=num_registers,
                qk_norm=L(up.RMSNorm)(dim=hidden_dim // num_heads, eps=1e-6, use_quack=use_quack),
                rope_base=10000.0,
                reg_rope_base=100.0,
                attn_dropout=0.0,
                proj_dropout=0.0,
                qkv_bias=False,
            ),
            sequence_mixer_norm_cfg=norm,
            mlp_cfg=L(up.MLP)(
                dim=hidden_dim,
                activation="gelu",
                expansion_factor=mlp_ratio,
                dropout_cfg=L(torch.nn.Dropout)(p=0.0),
            ),
            mlp_norm_cfg=norm,
            hidden_dim=hidden_dim,
            layer_scale_init=1e-4,
            drop_path_rate=0.0,
        ),
    )


def nvsubquadratic_forward(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, classes]`` for images ``[B, 3, H, W]`` (upstream takes channels-last in a dict)."""
    return model({"input": images.permute(0, 2, 3, 1), "condition": None})["logits"]


# ------------------------------------------------------------------------------ official ViT-5
class _Placeholder(type):
    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(name)


def _placeholder(name: str) -> type:
    return _Placeholder(name, (), {"__init__": lambda self, *args, **kwargs: None})


class _InertModule(types.ModuleType):
    __path__: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = _placeholder(name)
        setattr(self, name, value)
        return value


class _InertTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):  # noqa: D102
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):  # noqa: D102
        return _InertModule(spec.name)

    def exec_module(self, module):  # noqa: D102
        module.__version__ = "0.0"


def _torchvision_works() -> bool:
    try:
        import torchvision.ops.misc  # noqa: F401
    except Exception:  # missing, or built for another torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def _import_official(src: str | Path) -> types.ModuleType:
    add_source_tree(src)
    if "models_vit5" in sys.modules:
        return sys.modules["models_vit5"]
    if not _torchvision_works() and not any(isinstance(f, _InertTorchvision) for f in sys.meta_path):
        sys.meta_path.insert(0, _InertTorchvision())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm's deprecated import paths
        return importlib.import_module("models_vit5")


def build_official(
    src: str | Path, *, hidden_dim: int = 384, image_size: int = 224, **kwargs: Any
) -> torch.nn.Module:
    """The official ``vit5_{small,base,large,xlarge}`` (by width) with random weights (its own init)."""
    module = _import_official(src)
    if hidden_dim not in OFFICIAL_BUILDERS:
        raise ValueError(f"hidden_dim must be one of {sorted(OFFICIAL_BUILDERS)}, got {hidden_dim}")
    return getattr(module, OFFICIAL_BUILDERS[hidden_dim])(img_size=image_size, **kwargs)


@contextlib.contextmanager
def _cuda_calls_are_noops():
    """The official RoPE does ``torch.arange(n).cuda()``; on a CPU-only machine keep it on CPU."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def official_forward(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, classes]`` for images ``[B, 3, H, W]``."""
    with _cuda_calls_are_noops():
        return model(images)
