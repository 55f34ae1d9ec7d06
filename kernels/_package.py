"""flopkit.kernels: norm and RoPE ops with a Triton path (CUDA) and a PyTorch reference.

Three files per op family (norm, rope): the public ops with their PyTorch references (``norm.py``,
``rope.py``), one spec per op (``_norm_ops.py``, ``_rope_ops.py``) from which ``_opspec.KernelOp``
generates the ``torch.library`` op and the eager path, and the Triton kernels with their launchers
(``_norm_triton.py``, ``_rope_triton.py``). FLOP formulas live in :mod:`flopkit.formulas`. Every
public op takes ``backend="auto" | "triton" | "torch"``: ``auto`` runs Triton on CUDA tensors and
the reference elsewhere. Each public op decides its call's route once (:func:`route`: the
reference, the eager kernel path or the ``flopkit::`` custom op). Triton is imported only when a
kernel first runs. ``activation.py`` holds :func:`gelu`, which compiled code runs as PyTorch's own
kernels; ``scale.py`` :func:`scale_rows` (a matrix times a per-row scale: ViT-5's LayerScale folded
into a weight) and ``embed.py`` :func:`embed_tokens` (a ViT's token sequence from its patch and
position embeddings, CLS and register tokens), whose Triton paths run in eager CUDA code only;
``mlp.py`` :func:`gelu_linear` (an MLP's GELU and second layer, GELU's derivative applied in the
backward GEMM's epilogue).
"""

from ._dispatch import BACKENDS, SUPPORTED_DTYPES, Route, ops_observed, replaying_cuda, resolve_backend, route
from ._routing import replay_cuda_paths, route_through_custom_ops
from .activation import gelu
from .embed import embed_tokens, embed_tokens_ref
from .mlp import GELU_LINEAR_DTYPES, gelu_linear, gelu_linear_ref
from .norm import (
    head_norm,
    head_norm_ref,
    per_head_rms_norm,
    per_head_rms_norm_ref,
    residual_dtype,
    rms_norm,
    rms_norm_ref,
    rms_norm_residual,
    rms_norm_residual_ref,
    split_heads,
)
from .rope import ROPE_PAIRINGS, apply_rope_ref, qk_norm_rope, qk_norm_rope_ref, rotate_pairs
from .scale import scale_rows, scale_rows_ref
from .sdpa import (
    ATTENTION_HEAD_DIMS,
    ATTENTION_MAX_TOKENS,
    attention,
    attention_supported,
    qk_norm_rope_attention,
    qk_norm_rope_attention_supported,
)

__all__ = [
    "BACKENDS",
    "SUPPORTED_DTYPES",
    "ROPE_PAIRINGS",
    "Route",
    "route",
    "resolve_backend",
    "ops_observed",
    "route_through_custom_ops",
    "replay_cuda_paths",
    "replaying_cuda",
    "rms_norm",
    "rms_norm_ref",
    "rms_norm_residual",
    "rms_norm_residual_ref",
    "residual_dtype",
    "per_head_rms_norm",
    "per_head_rms_norm_ref",
    "head_norm",
    "head_norm_ref",
    "split_heads",
    "qk_norm_rope",
    "qk_norm_rope_ref",
    "apply_rope_ref",
    "rotate_pairs",
    "gelu",
    "gelu_linear",
    "gelu_linear_ref",
    "GELU_LINEAR_DTYPES",
    "scale_rows",
    "scale_rows_ref",
    "embed_tokens",
    "embed_tokens_ref",
    "attention",
    "attention_supported",
    "qk_norm_rope_attention",
    "qk_norm_rope_attention_supported",
    "ATTENTION_HEAD_DIMS",
    "ATTENTION_MAX_TOKENS",
]
