"""flopkit.kernels: norm and RoPE ops with a Triton path (CUDA) and a PyTorch reference.

Every public op takes ``backend="auto" | "triton" | "torch"``: ``auto`` runs Triton on CUDA
tensors and the reference elsewhere. Triton is imported only when a kernel first runs.
"""

from ._dispatch import BACKENDS, SUPPORTED_DTYPES, resolve_backend, route_through_custom_ops
from .head_norm import (
    HEAD_NORM_MODES,
    head_norm,
    head_norm_flops,
    head_norm_ref,
    per_head_rms_norm,
    per_head_rms_norm_ref,
    split_heads,
)
from .qk_norm_rope import (
    ROPE_PAIRINGS,
    apply_rope_ref,
    qk_norm_rope,
    qk_norm_rope_flops,
    qk_norm_rope_ref,
    rotate_pairs,
)
from .rms_norm import rms_norm, rms_norm_flops, rms_norm_ref, rms_norm_residual, rms_norm_residual_ref

__all__ = [
    "BACKENDS",
    "SUPPORTED_DTYPES",
    "HEAD_NORM_MODES",
    "ROPE_PAIRINGS",
    "resolve_backend",
    "route_through_custom_ops",
    "rms_norm",
    "rms_norm_ref",
    "rms_norm_residual",
    "rms_norm_residual_ref",
    "rms_norm_flops",
    "per_head_rms_norm",
    "per_head_rms_norm_ref",
    "head_norm",
    "head_norm_ref",
    "head_norm_flops",
    "split_heads",
    "qk_norm_rope",
    "qk_norm_rope_ref",
    "qk_norm_rope_flops",
    "apply_rope_ref",
    "rotate_pairs",
]
