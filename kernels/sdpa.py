"""The attention family's public op: softmax attention for short sequences (ViT token counts) with
a Triton path, forward and backward, and PyTorch's SDPA as the reference.

:func:`attention` decides its call's route once (``_dispatch.route``) and calls the eager entry or
the custom op, both generated (``_opspec.KernelOp``) from the op's one spec in
``_sdpa_ops.py``; the Triton kernels are in ``_sdpa_triton.py``. FLOPs:
:func:`flopkit.formulas.sdpa` (PyTorch's count for SDPA), twice that for the backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import REFERENCE, Route, route
from .rope import _check_qk_args, qk_norm_rope

__all__ = [
    "attention",
    "attention_supported",
    "qk_norm_rope_attention",
    "qk_norm_rope_attention_supported",
    "ATTENTION_HEAD_DIMS",
    "ATTENTION_MAX_TOKENS",
]

ATTENTION_HEAD_DIMS = (16, 32, 64, 128)
"""Head dims the kernels take (a power of two: one ``tl.arange`` spans the head)."""
ATTENTION_MAX_TOKENS = 1024
"""The longest sequence :func:`attention_supported` sends to the kernels. They are correct at any
length; they were measured (``benchmarks/triton_attention.py``) at ViT lengths only, and long
sequences belong to FlashAttention-class kernels, which PyTorch's SDPA picks."""
KERNEL_DTYPES = (torch.float16, torch.bfloat16)


def attention_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the Triton kernels take q, k, v ``[B, H, T, D]``: one float16/bfloat16 dtype, equal
    shapes (self-attention without grouped heads), ``D`` in :data:`ATTENTION_HEAD_DIMS` and
    ``T <= ATTENTION_MAX_TOKENS``. float32 takes SDPA: the kernels' tensor-core products would round
    it to TF32."""
    return (
        q.dim() == 4
        and k.dtype == q.dtype
        and v.dtype == q.dtype
        and q.shape == k.shape == v.shape
        and _kernels_take(q.dtype, q.shape[2], q.shape[-1])
    )


def qk_norm_rope_attention_supported(qkv: torch.Tensor, num_heads: int) -> bool:
    """Whether the kernels take :func:`qk_norm_rope_attention` of ``qkv`` ``[B, T, 3*H*D]``: the
    q, k and v it makes would pass :func:`attention_supported`."""
    return (
        qkv.dim() == 3
        and qkv.shape[-1] % (3 * num_heads) == 0
        and _kernels_take(qkv.dtype, qkv.shape[1], qkv.shape[-1] // (3 * num_heads))
    )


def _kernels_take(dtype: torch.dtype, tokens: int, head_dim: int) -> bool:
    return dtype in KERNEL_DTYPES and head_dim in ATTENTION_HEAD_DIMS and tokens <= ATTENTION_MAX_TOKENS


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    *,
    backend: str | Route = "auto",
) -> torch.Tensor:
    """``softmax(scale · q kᵀ) v``: :func:`torch.nn.functional.scaled_dot_product_attention` with no
    mask and no dropout, on flopkit's Triton kernels where :func:`attention_supported`.

    Args:
        q, k, v: ``[B, H, T, D]``, any strides (a unit stride along ``D`` avoids a copy).
        scale: the logits' factor (default ``D ** -0.5``).
        backend: ``"auto"``, ``"triton"``, ``"torch"``, or a :class:`~flopkit.kernels.Route` the
            caller already decided with :func:`~flopkit.kernels.route`.
    Returns:
        ``[B, H, T, D]``. From the kernels a view of a ``[B, T, H, D]`` buffer, so
        ``out.transpose(1, 2).reshape(B, T, H * D)`` needs no copy.
    Raises:
        ValueError: shapes the kernels do not take, with ``backend="triton"``.
    FLOPs: :func:`flopkit.formulas.sdpa` ``(B, H, T, T, D)``.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    path = route(backend, q, "attention", dtypes=False)
    if path is not REFERENCE and not attention_supported(q, k, v):
        if backend == "triton":
            raise ValueError(
                "attention: the Triton kernels take float16/bfloat16 q, k, v of one shape [B, H, T, D] with "
                f"D in {ATTENTION_HEAD_DIMS} and T <= {ATTENTION_MAX_TOKENS}; got q {tuple(q.shape)} "
                f"{q.dtype}, k {tuple(k.shape)} {k.dtype}, v {tuple(v.shape)} {v.dtype}"
            )
        path = REFERENCE
    if path is REFERENCE:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    op = (_SDPA_OPS if path is Route.KERNEL and _SDPA_OPS else _ops()).ATTENTION
    return (op.eager if path is Route.KERNEL else op.via_op)(q, k, v, scale)[0]


def qk_norm_rope_attention(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_heads: int,
    q_weight: torch.Tensor | None = None,
    k_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    pairing: str = "split_half",
    *,
    norm: bool | None = None,
    scale: float | None = None,
    backend: str | Route = "auto",
) -> torch.Tensor:
    """:func:`~flopkit.kernels.qk_norm_rope` then :func:`attention`, as one op with one backward:
    the attention's backward kernels write dq, dk and dv into the q, k and v parts of one ``dqkv``
    buffer, and the QK-norm + RoPE's backward kernel turns its q and k parts into the gradient of
    the raw q and k in place. The two ops write dq, dk and dv apart, and their second kernel reads
    dv and writes it again. Values and gradients are the two ops', bit for bit (the same kernels).

    Args:
        qkv, cos, sin, num_heads, q_weight, k_weight, eps, pairing, norm: as
            :func:`~flopkit.kernels.qk_norm_rope`.
        scale: the logits' factor (default ``D ** -0.5``).
        backend: as :func:`attention`. Where the kernels do not take the shapes
            (:func:`qk_norm_rope_attention_supported`) the two ops run instead, each on this route.
    Returns:
        ``[B, H, T, D]``, as :func:`attention`.
    FLOPs: :func:`flopkit.formulas.qk_norm_rope` plus :func:`flopkit.formulas.sdpa` ``(B, H, T, T, D)``.
    """
    _check_qk_args(qkv, cos, sin, num_heads, q_weight, k_weight, pairing)
    if norm is None:
        norm = q_weight is not None or k_weight is not None
    D = qkv.shape[-1] // (3 * num_heads)
    scale = D**-0.5 if scale is None else float(scale)
    path = route(backend, qkv, "qk_norm_rope_attention")
    if path is REFERENCE or not qk_norm_rope_attention_supported(qkv, num_heads):
        q, k, v = qk_norm_rope(
            qkv, cos, sin, num_heads, q_weight, k_weight, eps, pairing, norm=norm, backend=path
        )
        return attention(q, k, v, scale, backend=backend if backend == "triton" else path)
    op = (_SDPA_OPS if path is Route.KERNEL and _SDPA_OPS else _ops()).QK_NORM_ROPE_ATTENTION
    args = (qkv, cos, sin, q_weight, k_weight, num_heads, float(eps), pairing, bool(norm), scale)
    return (op.eager if path is Route.KERNEL else op.via_op)(*args)[0]


_SDPA_OPS = None  # kernels/_sdpa_ops.py once imported (it imports triton)


def _ops():
    """The attention op specs (``kernels/_sdpa_ops.py``), registered on first use. The eager path
    reads ``_SDPA_OPS`` first (``_SDPA_OPS if path is KERNEL and _SDPA_OPS else _ops()``); the
    custom-op route, which torch.compile traces, calls this function, whose body is an import
    statement and a store: the first trace then installs no guard on the global (a read of it, None
    then, made the second call recompile)."""
    global _SDPA_OPS
    from . import _sdpa_ops

    _SDPA_OPS = _sdpa_ops
    return _sdpa_ops
