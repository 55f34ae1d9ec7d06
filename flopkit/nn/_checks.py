"""Argument checks shared by the modules: each raises ValueError naming the argument and value.

The checks live in :mod:`flopkit.checks` (one input-checking layer for modules, commands and the
Python API); this module keeps the modules' imports short. Beside them, the rule of the modules'
kernel settings (``ViT5Attention.triton_attention``, ``Mlp.fused_gelu_linear``, ...): True, False
or ``"eager"``.
"""

from __future__ import annotations

from flopkit import kernels
from flopkit.checks import check_eps, check_finite, check_positive_int, is_int

__all__ = ["is_int", "check_positive_int", "check_eps", "check_finite", "check_setting", "setting_allows"]


def check_setting(name: str, mode: object) -> None:
    """A module's kernel setting ``name`` must be True, False or ``"eager"``."""
    if mode is not True and mode is not False and mode != "eager":
        raise ValueError(f"{name} must be True, False or 'eager', got {mode!r}")


def setting_allows(mode: bool | str, path: kernels.Route | None) -> bool:
    """Whether a checked setting allows a call's ``path``: True always, ``"eager"`` on the eager
    kernel route and in a memory replay of an eager CUDA step (its meta tensors take the custom
    ops), False never."""
    return mode is True or (mode == "eager" and (path is kernels.Route.KERNEL or kernels.replaying_cuda()))
