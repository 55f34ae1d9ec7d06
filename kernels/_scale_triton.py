"""Triton kernels for :func:`flopkit.kernels.scale_rows`: a matrix times a per-row scale, and its
backward.

Forward ``out = W * s[:, None]`` (``W`` ``[R, K]``, ``s`` ``(R,)``), each product in fp32, rounded
once to ``out``'s dtype (PyTorch's type promotion of ``W * s``). Backward from ``g = dL/dout``::

    dW = g * s[:, None]          ds_r = sum_k g_rk * W_rk

in one kernel: a program per row reads ``g`` and ``W`` once, writes ``dW`` and accumulates ``ds`` in
fp32 (rounded once to ``s``'s dtype). Bytes moved, ``e`` = element size: forward ``2*R*K*e``,
backward ``3*R*K*e``. Any strides: the kernels take both of each matrix's.

ViT-5 folds its MLP's LayerScale into ``fc2``'s weight this way (``ScalableLinear``); in eager
PyTorch the same product is a broadcast multiply that TensorIterator does not vectorise, and its
backward three kernels (the two products and a row sum).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import cdiv, launch, next_power_of_2

__all__ = ["scale_rows_forward", "scale_rows_backward", "BLOCK_K"]

BLOCK_K = 1024
"""Columns a program handles per step; a row wider than this is walked in steps."""
_ROWS_FWD = 4  # rows per forward program (a 768 x 3072 weight: 192 x 3 programs)


@triton.jit
def _scale_rows_fwd_kernel(
    W, S, OUT, R, K, s_wr, s_wk, s_s, s_or,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    rm = rows < R
    m = rm[:, None] & (cols < K)[None, :]
    r64 = rows.to(tl.int64)
    s = tl.load(S + r64 * s_s, mask=rm, other=0.0).to(tl.float32)
    w = tl.load(W + r64[:, None] * s_wr + cols[None, :] * s_wk, mask=m, other=0.0).to(tl.float32)
    out = (w * s[:, None]).to(OUT.dtype.element_ty)
    tl.store(OUT + r64[:, None] * s_or + cols[None, :], out, mask=m)


@triton.jit
def _scale_rows_bwd_kernel(
    G, W, S, DW, DS, K, s_gr, s_gk, s_wr, s_wk, s_s, s_dwr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    s = tl.load(S + row * s_s).to(tl.float32)
    acc = tl.zeros((BLOCK_K,), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        m = cols < K
        g = tl.load(G + row * s_gr + cols * s_gk, mask=m, other=0.0).to(tl.float32)
        w = tl.load(W + row * s_wr + cols * s_wk, mask=m, other=0.0).to(tl.float32)
        tl.store(DW + row * s_dwr + cols, (g * s).to(DW.dtype.element_ty), mask=m)
        acc += g * w
    tl.store(DS + row, tl.sum(acc, 0).to(DS.dtype.element_ty))


def _block_k(K: int) -> int:
    return max(16, min(BLOCK_K, next_power_of_2(K)))


def scale_rows_forward(weight: torch.Tensor, scale: torch.Tensor, *, run=launch) -> torch.Tensor:
    """``weight * scale[:, None]`` for ``weight`` ``[R, K]`` and ``scale`` ``(R,)``: a new contiguous
    ``[R, K]`` tensor in ``torch.promote_types(weight.dtype, scale.dtype)``."""
    R, K = weight.shape
    out = torch.empty((R, K), dtype=torch.promote_types(weight.dtype, scale.dtype), device=weight.device)
    if out.numel() == 0:
        return out
    bk = _block_k(K)
    grid = (cdiv(R, _ROWS_FWD), cdiv(K, bk))
    args = (weight, scale, out, R, K, *weight.stride(), scale.stride(0), out.stride(0))
    run(_scale_rows_fwd_kernel, grid, args, {"BLOCK_R": _ROWS_FWD, "BLOCK_K": bk, "num_warps": 4}, 3)
    return out


def scale_rows_backward(
    grad: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, *, run=launch
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``weight * scale[:, None]`` from ``grad`` ``[R, K]``: ``(dweight, dscale)``, in
    ``weight``'s and ``scale``'s dtypes, ``dweight`` contiguous."""
    R, K = weight.shape
    dw = torch.empty((R, K), dtype=weight.dtype, device=weight.device)
    ds = torch.empty((R,), dtype=scale.dtype, device=scale.device)
    if R == 0:
        return dw, ds
    args = (grad, weight, scale, dw, ds, K, *grad.stride(), *weight.stride(), scale.stride(0), dw.stride(0))
    run(_scale_rows_bwd_kernel, (R,), args, {"BLOCK_K": _block_k(K), "num_warps": 4}, 5)
    return dw, ds
