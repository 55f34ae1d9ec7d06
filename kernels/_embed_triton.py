"""Triton kernels for :func:`flopkit.kernels.embed_tokens`: a ViT's token sequence from its patch
embedding, position embedding, CLS and register tokens, and the backward.

Forward, for token ``t`` of ``T = N + has_cls + R`` (layout ``[patches, CLS?, registers]``, or
``[CLS, patches, registers]`` with ``cls_first``)::

    out[b, t] = patches[b, p] + pos[p]   (a patch row p)     cls   (the CLS row)     reg[r]   (a register row r)

each sum in fp32, rounded once to ``out``'s dtype. Backward from ``g = dL/dout``: ``dpatches[b, p]
= g[b, t]`` (contiguous), and ``dpos[p]``, ``dcls``, ``dreg[r]`` the sums of ``g[:, t]`` over the
batch in fp32. One program per token row and block of columns walks the batch in blocks, so the
row's kind is one branch per program. Bytes moved, ``e`` = element size: forward ``B*(N + T)*C*e``,
backward ``B*(T + N)*C*e``. Any strides.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import cdiv, launch

__all__ = ["embed_tokens_forward", "embed_tokens_backward"]

BLOCK_B, BLOCK_C = 32, 128  # batch rows x columns per step: an 8 KB bf16 tile


@triton.jit
def _program_row(N, C, HAS_CLS: tl.constexpr, CLS_FIRST: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's token ``t`` and columns (with their mask), and the token's source: ``(p,
    is_patch, is_cls, r)`` (patch index, CLS, register index)."""
    t = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    if HAS_CLS:
        if CLS_FIRST:
            p = t - 1
            is_cls = t == 0
        else:
            p = t
            is_cls = t == N
        r = t - N - 1
    else:
        p = t
        is_cls = t < 0
        r = t - N
    is_patch = (p >= 0) & (p < N)
    return t, cols, cols < C, p, is_patch, is_cls, r


@triton.jit
def _embed_fwd_kernel(
    X, POS, CLS, REG, OUT, B, N, C, s_xb, s_xn, s_xc, s_pn, s_pc, s_cc, s_rr, s_rc, s_ob, s_ot,
    HAS_POS: tl.constexpr, HAS_CLS: tl.constexpr, CLS_FIRST: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    t, cols, cm, p, is_patch, is_cls, r = _program_row(N, C, HAS_CLS, CLS_FIRST, BLOCK_C)
    if is_patch:
        add = tl.zeros((BLOCK_C,), tl.float32)
        if HAS_POS:
            add = tl.load(POS + p * s_pn + cols * s_pc, mask=cm, other=0.0).to(tl.float32)
    elif is_cls:
        add = tl.load(CLS + cols * s_cc, mask=cm, other=0.0).to(tl.float32)
    else:
        add = tl.load(REG + r * s_rr + cols * s_rc, mask=cm, other=0.0).to(tl.float32)
    for b0 in range(0, B, BLOCK_B):
        bs = (b0 + tl.arange(0, BLOCK_B)).to(tl.int64)
        m = (bs < B)[:, None] & cm[None, :]
        v = tl.zeros((BLOCK_B, BLOCK_C), tl.float32) + add[None, :]
        if is_patch:
            v += tl.load(X + bs[:, None] * s_xb + p * s_xn + cols[None, :] * s_xc, mask=m, other=0.0).to(
                tl.float32
            )
        tl.store(OUT + bs[:, None] * s_ob + t * s_ot + cols[None, :], v.to(OUT.dtype.element_ty), mask=m)


@triton.jit
def _embed_bwd_kernel(
    G, DX, DPOS, DCLS, DREG, B, N, C, s_gb, s_gt, s_gc, s_db, s_dn,
    HAS_POS: tl.constexpr, HAS_CLS: tl.constexpr, CLS_FIRST: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    t, cols, cm, p, is_patch, is_cls, r = _program_row(N, C, HAS_CLS, CLS_FIRST, BLOCK_C)
    acc = tl.zeros((BLOCK_C,), tl.float32)
    for b0 in range(0, B, BLOCK_B):
        bs = (b0 + tl.arange(0, BLOCK_B)).to(tl.int64)
        m = (bs < B)[:, None] & cm[None, :]
        g = tl.load(G + bs[:, None] * s_gb + t * s_gt + cols[None, :] * s_gc, mask=m, other=0.0)
        if is_patch:
            tl.store(DX + bs[:, None] * s_db + p * s_dn + cols[None, :], g.to(DX.dtype.element_ty), mask=m)
        acc += tl.sum(g.to(tl.float32), 0)
    if is_patch:
        if HAS_POS:
            tl.store(DPOS + p * C + cols, acc.to(DPOS.dtype.element_ty), mask=cm)
    elif is_cls:
        tl.store(DCLS + cols, acc.to(DCLS.dtype.element_ty), mask=cm)
    else:
        tl.store(DREG + r * C + cols, acc.to(DREG.dtype.element_ty), mask=cm)


def _launch_rows(
    run, kernel, T: int, C: int, args: tuple, has_pos: bool, has_cls: bool, cls_first: bool
) -> None:
    """Launch ``kernel`` (its first 5 arguments tensors) with a program per token row and block of
    ``BLOCK_C`` columns."""
    meta = {
        "HAS_POS": has_pos,
        "HAS_CLS": has_cls,
        "CLS_FIRST": cls_first,
        "BLOCK_B": BLOCK_B,
        "BLOCK_C": BLOCK_C,
    }
    run(kernel, (T, cdiv(C, BLOCK_C)), args, meta | {"num_warps": 4}, 5)


def embed_tokens_forward(
    patches: torch.Tensor,
    pos: torch.Tensor | None,
    cls: torch.Tensor | None,
    reg: torch.Tensor | None,
    cls_first: bool,
    dtype: torch.dtype,
    *,
    run=launch,
) -> torch.Tensor:
    """``[B, T, C]`` tokens (contiguous, ``dtype``) from ``patches`` ``[B, N, C]``, ``pos`` ``[N, C]``,
    ``cls`` ``[C]`` and ``reg`` ``[R, C]`` (each optional but ``patches``)."""
    B, N, C = patches.shape
    R = reg.shape[0] if reg is not None else 0
    T = N + (cls is not None) + R
    out = torch.empty((B, T, C), dtype=dtype, device=patches.device)
    if out.numel() == 0:
        return out
    # Absent inputs: any tensor stands in for the pointer (never read).
    pos_, cls_, reg_ = (t if t is not None else patches for t in (pos, cls, reg))
    s_pos = pos.stride() if pos is not None else (0, 0)
    s_cls = cls.stride(0) if cls is not None else 0
    s_reg = reg.stride() if reg is not None else (0, 0)
    args = (
        patches,
        pos_,
        cls_,
        reg_,
        out,
        B,
        N,
        C,
        *patches.stride(),
        *s_pos,
        s_cls,
        *s_reg,
        out.stride(0),
        out.stride(1),
    )
    _launch_rows(run, _embed_fwd_kernel, T, C, args, pos is not None, cls is not None, cls_first)
    return out


def embed_tokens_backward(
    grad: torch.Tensor,
    patches_dtype: torch.dtype,
    N: int,
    specs: tuple,
    cls_first: bool,
    *,
    run=launch,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients from ``grad`` ``[B, T, C]``: ``(dpatches [B, N, C], dpos, dcls, dreg)``, the last three
    summed over the batch, new contiguous tensors of ``specs``: the ``(shape, dtype)`` of ``pos``,
    ``cls`` and ``reg`` (any shape with ``N * C``, ``C`` and ``R * C`` elements; None for an absent
    one, whose gradient is None)."""
    B, T, C = grad.shape
    dx = torch.empty((B, N, C), dtype=patches_dtype, device=grad.device)
    dpos, dcls, dreg = (
        torch.empty(spec[0], dtype=spec[1], device=grad.device) if spec is not None else None
        for spec in specs
    )
    if T == 0 or C == 0:
        return dx, *(d.zero_() if d is not None else None for d in (dpos, dcls, dreg))
    args = (
        grad,
        dx,
        *(d if d is not None else dx for d in (dpos, dcls, dreg)),
        B,
        N,
        C,
        *grad.stride(),
        dx.stride(0),
        dx.stride(1),
    )
    _launch_rows(run, _embed_bwd_kernel, T, C, args, dpos is not None, dcls is not None, cls_first)
    return dx, dpos, dcls, dreg
