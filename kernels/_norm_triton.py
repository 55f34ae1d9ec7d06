"""Triton kernels for the norm family (RMSNorm, fused residual RMSNorm, per-head RMS/Layer norm).

One forward and one backward kernel cover every op. A tile is ``BLOCK_T`` tokens x
``BLOCK_H`` heads (flattened to ``BLOCK_T * BLOCK_H`` rows) x ``BLOCK_D`` columns; a row is
normalised over its ``D`` columns with fp32 statistics. Row ``i`` of the tile is token
``t = i // BLOCK_H`` and head ``h = i % BLOCK_H``; token ``t`` sits at
``(t // HF) * s_outer + (t % HF) * s_fold`` so that e.g. ``q`` sliced out of a fused QKV
activation (``[B, T, H, D]`` with a row stride of ``3*H*D``) is read in place.

Rows wider than ``FUSED_MAX_*`` columns do not fit in registers: the ``*_chunked`` kernels
loop over the row in ``CHUNK`` columns (``CHUNKED_*_TILES``), one row per step, reading it twice (the second read
hits L2: one row is at most a few hundred KB).

Backward recomputes the row statistics from ``x`` instead of storing ``rstd`` in forward:
``x`` is read by backward anyway, so this moves 0 extra bytes (storing would add 4 bytes
per row to both passes). ``eps`` is cast to fp32 where it is used: Inductor passes Python floats to
user kernels as fp64 scalars, which would otherwise promote the statistics to fp64. Bytes moved, ``s`` = element size:
forward ``2*N*D*s`` (+ ``2*N*D*s`` residual in / ``h`` out), backward ``3*N*D*s``
(``x``, ``dy`` in, ``dx`` out; ``+N*D*s`` when the residual output has a gradient), plus
``P*D*4`` bytes of fp32 partial ``dw`` per persistent program.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._dispatch import device_arch, num_sms
from ._launch import (
    TUNED_ARCH,
    Plan,
    Tile,
    cached_plan,
    cdiv,
    launch,
    next_power_of_2,
    partials,
    pick_tile,
    program_count,
)
from ._reference import residual_dtype

__all__ = [
    "norm_forward",
    "norm_backward",
    "NormGrads",
]

# Largest BLOCK_H * BLOCK_D kept in registers; wider rows take the chunked kernels.
FUSED_MAX_FWD = 16384
FUSED_MAX_BWD = 8192

# ---------------------------------------------------------------------------------- tile tables
# Keyed by (architecture, BLOCK_H * BLOCK_D = the padded row width); docs/benchmarks.md (Reproducing)
# says how a table is swept and replaced. Every entry was chosen on an H100 (bf16) and cites the result that
# chose it: benchmarks/bench_norms.py's sweep of row shapes (widths 64, 128, 1024, 4096, 8192 and
# the chunked 65536), or benchmarks/sweep_vit_kernels.py at ViT-5 shapes. Widths that no sweep
# covered carry a neighbouring width's tile.
_NORMS = "benchmarks/results/bench_norms_h100.json, run 2026-11-23, sweep "
_NORMS_TABLES = "benchmarks/results/bench_norms_h100.json, run recheck_2026-11-23 (its tables)"
_NOT_SWEPT = "not swept: a neighbouring width's tile"
_VIT = "benchmarks/results/sweep_vit_kernels_h100.json, run prefetch_2026-11-23, "


def _table(
    entries: dict[int, tuple[tuple[int, ...], str]], arch: str = TUNED_ARCH
) -> dict[tuple[str, int], Tile]:
    return {(arch, width): Tile(config, source) for width, (config, source) in entries.items()}


# Forward and residual forward: (elements per program, num_warps).
FWD_TILES: dict[tuple[str, int], Tile] = _table({
    1: ((1024, 4), _NOT_SWEPT),
    2: ((1024, 4), _NOT_SWEPT),
    4: ((1024, 4), _NOT_SWEPT),
    8: ((2048, 4), _NOT_SWEPT),
    16: ((2048, 4), _NOT_SWEPT),
    32: ((2048, 4), _NOT_SWEPT),
    64: ((2048, 8), _NORMS + "308736x64"),
    128: ((4096, 8), _NORMS + "524288x128"),
    256: ((2048, 8), _NOT_SWEPT),
    512: ((4096, 8), _NOT_SWEPT),
    1024: ((2048, 4), _NORMS + "65536x768 (at 65536x1024 within 1 % of the best there, (2048, 8))"),
    2048: ((4096, 8), _NOT_SWEPT),
    4096: ((8192, 16), _NORMS + "16384x4096"),
    8192: ((8192, 16), _NORMS + "4096x8192"),
    16384: ((16384, 32), _NOT_SWEPT),
})  # fmt: skip
RES_TILES: dict[tuple[str, int], Tile] = {
    **FWD_TILES,
    **_table({
        64: ((4096, 4), _NORMS + "308736x64"),
        128: ((4096, 4), _NORMS + "524288x128"),
        1024: ((2048, 8), _NORMS + "65536x768 (at 65536x1024 within 1 % of the best there, (2048, 4))"),
        4096: ((4096, 4), _NORMS + "16384x4096"),
        8192: ((8192, 8), _NORMS + "4096x8192"),
    }),
}  # fmt: skip
# Persistent backward: (elements per tile, num_warps, programs per SM).
BWD_TILES: dict[tuple[str, int], Tile] = _table({
    1: ((1024, 4, 2), _NOT_SWEPT),
    2: ((1024, 4, 2), _NOT_SWEPT),
    4: ((2048, 4, 2), _NOT_SWEPT),
    8: ((2048, 4, 2), _NOT_SWEPT),
    16: ((4096, 8, 2), _NOT_SWEPT),
    32: ((2048, 8, 4), _NOT_SWEPT + "; " + _NORMS_TABLES),
    64: ((2048, 8, 4), _NORMS + "308736x64"),
    128: ((2048, 8, 4), _NORMS + "524288x128"),
    256: ((2048, 8, 4), _NOT_SWEPT),
    512: ((2048, 8, 4), _NOT_SWEPT),
    1024: ((4096, 4, 3), _NORMS + "65536x1024 and 65536x768"),
    2048: ((4096, 4, 3), _NOT_SWEPT + "; " + _NORMS_TABLES),
    4096: ((4096, 4, 3), _NORMS + "16384x4096"),
    8192: ((8192, 8, 1), _NORMS + "4096x8192"),
})  # fmt: skip
# Plain and residual rows (BLOCK_H = 1) at the ViT widths (C = 384 and 768), and the
# LayerScale-fused residual backward there, swept at ViT shapes (51456 x 384 and 25728 x 768 rows)
# with the loads of each program's next block issued before the current one is reduced (the
# kernel's PREFETCH), which beat the same sweep without it (the cited run has both). These entries
# run with PREFETCH; per-head tiles and other widths take BWD_TILES without it: unswept with it,
# and a tile too large for two blocks in registers spills (the same run's vit5-base res+prefetch
# row: the tile the table then held, with PREFETCH forced, against the swept best).
BWD_PREFETCH_TILES: dict[tuple[str, int], Tile] = _table({
    512: ((1024, 2, 8), _VIT + "vit5-small plain+prefetch and res+prefetch (best of res, second of plain)"),
    1024: ((2048, 4, 4), _VIT + "vit5-base plain+prefetch and res+prefetch"),
})  # fmt: skip
BWD_SCALE_TILES: dict[tuple[str, int], Tile] = _table({
    512: ((1024, 8, 4), _VIT + "vit5-small res+scale+prefetch"),
    1024: ((1024, 8, 4), _VIT + "vit5-base res+scale+prefetch"),
})  # fmt: skip
# Chunked kernels (rows wider than FUSED_MAX_*), keyed by architecture alone (one tile serves every
# width): forward (columns per step, num_warps); backward (columns per step, num_warps, programs
# per SM).
CHUNKED_FWD_TILES: dict[str, Tile] = {TUNED_ARCH: Tile((8192, 32), _NORMS + "1024x65536")}
CHUNKED_BWD_TILES: dict[str, Tile] = {TUNED_ARCH: Tile((8192, 16, 1), _NORMS + "1024x65536")}


def _chunked_tile(table: dict[str, Tile], arch: str) -> tuple[int, ...]:
    return table.get(arch, table[TUNED_ARCH]).config


@triton.jit
def _norm_fwd_kernel(
    X,
    R,
    Y,
    HO,
    W,
    B,
    S,
    n_tok,
    HF,
    NH,
    D,
    sx_o,
    sx_f,
    sx_h,
    sr_o,
    sr_f,
    sr_h,
    sw_h,
    eps,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FOLD: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_RES: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    LAYER: tl.constexpr,
):
    pid = tl.program_id(0)
    i = tl.arange(0, BLOCK_T * BLOCK_H)
    tok = (pid * BLOCK_T + i // BLOCK_H).to(tl.int64)
    head = i % BLOCK_H
    cols = tl.arange(0, BLOCK_D)
    row_ok = (tok < n_tok) & (head < NH)
    mask = row_ok[:, None] & (cols < D)[None, :]
    if FOLD:
        outer = tok // HF
        fold = tok % HF
        x_row = outer * sx_o + fold * sx_f + head * sx_h
        r_row = outer * sr_o + fold * sr_f + head * sr_h
    else:
        x_row = tok * sx_o + head * sx_h
        r_row = tok * sr_o + head * sr_h
    o_row = (tok * NH + head) * D
    x = tl.load(X + x_row[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(R + r_row[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_SCALE:  # LayerScale on the branch: h = residual + x * s
            x = x * tl.load(S + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
        h = (x + r).to(HO.dtype.element_ty)
        tl.store(HO + o_row[:, None] + cols[None, :], h, mask=mask)
        x = h.to(tl.float32)
    if LAYER:
        mean = tl.sum(x, axis=1) / D
        x = tl.where(mask, x - mean[:, None], 0.0)
    rstd = tl.rsqrt((tl.sum(x * x, axis=1) / D + eps).to(tl.float32))
    y = x * rstd[:, None]
    if HAS_W or HAS_B:
        w_off = head[:, None] * sw_h + cols[None, :]
        w_mask = (head < NH)[:, None] & (cols < D)[None, :]
        if HAS_W:
            y = y * tl.load(W + w_off, mask=w_mask, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(B + w_off, mask=w_mask, other=0.0).to(tl.float32)
    tl.store(Y + o_row[:, None] + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_rows(
    blk, i, head, cols, col_ok, n_tok, HF, NH, D, sx_o, sx_f, sx_h,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, FOLD: tl.constexpr,
):  # fmt: skip
    """Block ``blk`` of :func:`_norm_bwd_kernel`: ``(mask, x offsets, output offsets)``.

    Offsets only, no pointers: torch's mutation analysis of a ``wrap_triton`` kernel follows a
    store's pointer back through every argument of a call it came out of, so a helper that took
    the input pointers and returned offsets would mark those inputs as written (and under
    ``torch.compile`` a tensor passed in two slots would then be written back from the wrong one)."""
    tok = (blk * BLOCK_T + i // BLOCK_H).to(tl.int64)
    mask = ((tok < n_tok) & (head < NH))[:, None] & col_ok[None, :]
    if FOLD:  # noqa: SIM108 (constexpr branch, compiled out)
        x_row = (tok // HF) * sx_o + (tok % HF) * sx_f + head * sx_h
    else:
        x_row = tok * sx_o + head * sx_h
    return mask, x_row[:, None] + cols[None, :], ((tok * NH + head) * D)[:, None] + cols[None, :]


@triton.jit
def _bwd_loads(DY, DR, X, BR, mask, x_off, o_off, HAS_DRES: tl.constexpr, HAS_SCALE: tl.constexpr):
    """One block's inputs as loaded: ``(x, dy, dres, branch)`` (zeros where absent). Raw dtype: a
    prefetched block waits in half the registers of fp32."""
    x = tl.load(X + x_off, mask=mask, other=0.0)
    dy = tl.load(DY + o_off, mask=mask, other=0.0)
    dr = tl.load(DR + o_off, mask=mask, other=0.0) if HAS_DRES else tl.zeros_like(dy)
    br = tl.load(BR + o_off, mask=mask, other=0.0) if HAS_SCALE else tl.zeros_like(dy)
    return x, dy, dr, br


@triton.jit
def _norm_bwd_kernel(
    DY,
    DR,
    X,
    W,
    DX,
    DWP,
    DBP,
    BR,
    S,
    DBR,
    n_tok,
    HF,
    NH,
    D,
    sx_o,
    sx_f,
    sx_h,
    sw_h,
    eps,
    n_blocks,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FOLD: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_DRES: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    LAYER: tl.constexpr,
    PREFETCH: tl.constexpr = False,
):
    # HAS_SCALE (residual rows only, no bias): X is h = residual + branch * s; the kernel also
    # writes d(branch) = dh * s to DBR and accumulates d(s) = sum(dh * branch) in DBP's partials.
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    i = tl.arange(0, BLOCK_T * BLOCK_H)
    head = i % BLOCK_H
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    w_mask = (head < NH)[:, None] & col_ok[None, :]
    w_off = head[:, None] * sw_h + cols[None, :]
    if HAS_W:
        w = tl.load(W + w_off, mask=w_mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        s = tl.load(S + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_T * BLOCK_H, BLOCK_D), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_T * BLOCK_H, BLOCK_D), dtype=tl.float32)
    # Software pipelining (PREFETCH): the loads of a program's next block are issued before the
    # current block is reduced, so that each program keeps its reads in flight while it computes.
    # A block past the end loads nothing (its rows are all masked).
    if PREFETCH:
        mask_n, xo_n, o_n = _bwd_rows(
            pid, i, head, cols, col_ok, n_tok, HF, NH, D, sx_o, sx_f, sx_h, BLOCK_T, BLOCK_H, FOLD
        )
        x_n, dy_n, dr_n, br_n = _bwd_loads(DY, DR, X, BR, mask_n, xo_n, o_n, HAS_DRES, HAS_SCALE)
    for blk in range(pid, n_blocks, nprog):
        if PREFETCH:
            x, dy, dr, br, mask, o_off = x_n, dy_n, dr_n, br_n, mask_n, o_n
            mask_n, xo_n, o_n = _bwd_rows(
                blk + nprog, i, head, cols, col_ok, n_tok, HF, NH, D, sx_o, sx_f, sx_h, BLOCK_T, BLOCK_H, FOLD
            )
            x_n, dy_n, dr_n, br_n = _bwd_loads(DY, DR, X, BR, mask_n, xo_n, o_n, HAS_DRES, HAS_SCALE)
        else:
            mask, x_off, o_off = _bwd_rows(
                blk, i, head, cols, col_ok, n_tok, HF, NH, D, sx_o, sx_f, sx_h, BLOCK_T, BLOCK_H, FOLD
            )
            x, dy, dr, br = _bwd_loads(DY, DR, X, BR, mask, x_off, o_off, HAS_DRES, HAS_SCALE)
        x = x.to(tl.float32)
        dy = dy.to(tl.float32)
        if LAYER:
            mean = tl.sum(x, axis=1) / D
            x = tl.where(mask, x - mean[:, None], 0.0)
        rstd = tl.rsqrt((tl.sum(x * x, axis=1) / D + eps).to(tl.float32))
        xhat = x * rstd[:, None]
        if HAS_W:
            g = dy * w
            dw_acc += dy * xhat
        else:
            g = dy
        if HAS_B:
            db_acc += dy
        c1 = tl.sum(g * xhat, axis=1) / D
        if LAYER:
            c2 = tl.sum(g, axis=1) / D
            dx = (g - c2[:, None] - xhat * c1[:, None]) * rstd[:, None]
        else:
            dx = (g - xhat * c1[:, None]) * rstd[:, None]
        if HAS_DRES:
            dx += dr.to(tl.float32)
        tl.store(DX + o_off, dx.to(DX.dtype.element_ty), mask=mask)
        if HAS_SCALE:
            db_acc += dx * br.to(tl.float32)
            tl.store(DBR + o_off, (dx * s[None, :]).to(DBR.dtype.element_ty), mask=mask)
    p_off = pid * NH * D
    if BLOCK_H == 1:
        if HAS_W:
            tl.store(DWP + p_off + cols, tl.sum(dw_acc, axis=0), mask=col_ok)
        if HAS_B or HAS_SCALE:
            tl.store(DBP + p_off + cols, tl.sum(db_acc, axis=0), mask=col_ok)
    else:
        hh = tl.arange(0, BLOCK_H)
        hw_off = p_off + hh[:, None] * D + cols[None, :]
        hw_mask = (hh < NH)[:, None] & col_ok[None, :]
        if HAS_W:
            dw = tl.sum(tl.reshape(dw_acc, (BLOCK_T, BLOCK_H, BLOCK_D)), axis=0)
            tl.store(DWP + hw_off, dw, mask=hw_mask)
        if HAS_B:
            db = tl.sum(tl.reshape(db_acc, (BLOCK_T, BLOCK_H, BLOCK_D)), axis=0)
            tl.store(DBP + hw_off, db, mask=hw_mask)


@triton.jit
def _norm_fwd_chunked_kernel(
    X,
    R,
    Y,
    HO,
    W,
    B,
    S,
    HF,
    D,
    sx_o,
    sx_f,
    sr_o,
    sr_f,
    sw_f,
    eps,
    CHUNK: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_RES: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    LAYER: tl.constexpr,
):
    # One row per program; the row is read twice (three times in layer mode), the re-reads hit L2.
    row = tl.program_id(0).to(tl.int64)
    fold = row % HF
    x_ptr = X + (row // HF) * sx_o + fold * sx_f
    r_ptr = R + (row // HF) * sr_o + fold * sr_f
    y_ptr = Y + row * D
    h_ptr = HO + row * D
    w_ptr = W + fold * sw_f
    b_ptr = B + fold * sw_f
    cols = tl.arange(0, CHUNK)
    acc = tl.zeros((CHUNK,), dtype=tl.float32)
    for start in range(0, D, CHUNK):
        m = start + cols < D
        x = tl.load(x_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_RES:
            r = tl.load(r_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
            if HAS_SCALE:
                x = x * tl.load(S + start + cols, mask=m, other=0.0).to(tl.float32)
            h = (x + r).to(HO.dtype.element_ty)
            tl.store(h_ptr + start + cols, h, mask=m)
            x = h.to(tl.float32)
        if LAYER:
            acc += x
        else:
            acc += x * x
    if HAS_RES:
        x_ptr = h_ptr
    mean = 0.0
    if LAYER:
        mean = tl.sum(acc, axis=0) / D
        acc = tl.zeros((CHUNK,), dtype=tl.float32)
        for start in range(0, D, CHUNK):
            m = start + cols < D
            x = tl.load(x_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
            x = tl.where(m, x - mean, 0.0)
            acc += x * x
    rstd = tl.rsqrt((tl.sum(acc, axis=0) / D + eps).to(tl.float32))
    for start in range(0, D, CHUNK):
        m = start + cols < D
        x = tl.load(x_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
        y = (x - mean) * rstd
        if HAS_W:
            y = y * tl.load(w_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(b_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(y_ptr + start + cols, y.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _norm_bwd_chunked_kernel(
    DY,
    DR,
    X,
    W,
    DX,
    DWP,
    DBP,
    BR,
    S,
    DBR,
    n_rows,
    HF,
    D,
    sx_o,
    sx_f,
    sw_f,
    eps,
    CHUNK: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_DRES: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    LAYER: tl.constexpr,
    W_FOLD: tl.constexpr,
):
    # Persistent: program p takes rows p, p + P, ...; its fp32 partial dw/db row lives in DWP[p, fold].
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, CHUNK)
    pid64 = pid.to(tl.int64)
    for r in range(pid, n_rows, nprog):
        row = pid64 + (r - pid)  # int64 row index (r may be a plain int in the interpreter)
        fold = row % HF
        x_ptr = X + (row // HF) * sx_o + fold * sx_f
        o_ptr = row * D
        if W_FOLD:
            p_ptr = (pid * HF + fold) * D
            w_ptr = W + fold * sw_f
        else:
            p_ptr = pid * D
            w_ptr = W
        mean = 0.0
        if LAYER:
            acc = tl.zeros((CHUNK,), dtype=tl.float32)
            for start in range(0, D, CHUNK):
                m = start + cols < D
                acc += tl.load(x_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
            mean = tl.sum(acc, axis=0) / D
        sq = tl.zeros((CHUNK,), dtype=tl.float32)
        gx = tl.zeros((CHUNK,), dtype=tl.float32)
        gs = tl.zeros((CHUNK,), dtype=tl.float32)
        for start in range(0, D, CHUNK):
            m = start + cols < D
            x = tl.load(x_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
            x = tl.where(m, x - mean, 0.0)
            g = tl.load(DY + o_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
            if HAS_W:
                g = g * tl.load(w_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
            sq += x * x
            gx += g * x
            gs += g
        rstd = tl.rsqrt((tl.sum(sq, axis=0) / D + eps).to(tl.float32))
        c1 = tl.sum(gx, axis=0) / D * rstd
        c2 = 0.0
        if LAYER:
            c2 = tl.sum(gs, axis=0) / D
        for start in range(0, D, CHUNK):
            m = start + cols < D
            x = tl.load(x_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
            xhat = (x - mean) * rstd
            dy = tl.load(DY + o_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
            g = dy
            if HAS_W:
                g = dy * tl.load(w_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
                pw = tl.load(DWP + p_ptr + start + cols, mask=m, other=0.0)
                tl.store(DWP + p_ptr + start + cols, pw + dy * xhat, mask=m)
            if HAS_B:
                pb = tl.load(DBP + p_ptr + start + cols, mask=m, other=0.0)
                tl.store(DBP + p_ptr + start + cols, pb + dy, mask=m)
            dx = (g - c2 - xhat * c1) * rstd
            if HAS_DRES:
                dx += tl.load(DR + o_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
            tl.store(DX + o_ptr + start + cols, dx.to(DX.dtype.element_ty), mask=m)
            if HAS_SCALE:  # residual rows: the partial row is p_ptr, as for a bias
                br = tl.load(BR + o_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
                pb = tl.load(DBP + p_ptr + start + cols, mask=m, other=0.0)
                tl.store(DBP + p_ptr + start + cols, pb + dx * br, mask=m)
                sc = tl.load(S + start + cols, mask=m, other=0.0).to(tl.float32)
                tl.store(DBR + o_ptr + start + cols, (dx * sc).to(DBR.dtype.element_ty), mask=m)


@triton.jit
def _sum_partials_kernel(
    A, OA, B, OB, R, N, HAS_B: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr
):
    """Column sums of the contiguous fp32 partials ``A`` ``[R, N]`` (and ``B``) into ``OA`` (``OB``),
    accumulated in fp32 in a fixed order and rounded to the output dtype once."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cm = cols < N
    acc_a = tl.zeros((BLOCK_N,), tl.float32)
    acc_b = tl.zeros((BLOCK_N,), tl.float32)
    for r0 in range(0, R, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        m = (rows < R)[:, None] & cm[None, :]
        offs = rows[:, None] * N + cols[None, :]
        acc_a += tl.sum(tl.load(A + offs, mask=m, other=0.0), axis=0)
        if HAS_B:
            acc_b += tl.sum(tl.load(B + offs, mask=m, other=0.0), axis=0)
    tl.store(OA + cols, acc_a.to(OA.dtype.element_ty), mask=cm)
    if HAS_B:
        tl.store(OB + cols, acc_b.to(OB.dtype.element_ty), mask=cm)


# --------------------------------------------------------------------------- launchers

Runner = Callable[..., None]
"""How a launcher starts a kernel: ``run(kernel, grid, args, meta, num_tensor_args, plan=None)``
(``plan``: the cached plan standing for grid, scalars and meta, see ``_launch.launch``). Eager code
passes :func:`flopkit.kernels._launch.launch`; the ``triton_op`` bodies pass :func:`wrapped`, so that
``torch.compile`` sees the kernel and Inductor launches it from its own generated code."""


def wrapped(kernel, grid: tuple, args: tuple, meta: dict, num_tensors: int = 0, plan: object = None) -> None:
    """Launch through ``torch.library.wrap_triton`` (traceable; a plain launch when not tracing)."""
    from torch.library import wrap_triton

    wrap_triton(kernel)[grid](*args, **meta)


# The norm launchers plan (``_launch.Plan``) the row view of ``x`` (strides, head folding, whether a
# copy is needed) with the kernel, grid, scalars and constexprs; eager calls cache the plan.


class _Rows:
    """``x`` viewed as tokens x heads x D: token ``t`` at ``(t // HF) * s_o + (t % HF) * s_f``.

    ``copied``: the view needed a contiguous copy of ``x`` (strides that no row view can describe)."""

    __slots__ = ("t", "n_tok", "HF", "NH", "D", "s_o", "s_f", "s_h", "copied")

    def __init__(self, t, n_tok, HF, NH, D, s_o, s_f, s_h, copied=False):
        self.t, self.n_tok, self.HF, self.NH, self.D = t, n_tok, HF, NH, D
        self.s_o, self.s_f, self.s_h, self.copied = s_o, s_f, s_h, copied


def _rows_view(x: torch.Tensor, num_heads: int, head_dim: int, mode: str) -> _Rows:
    """Describe ``x`` (``[*, H, D]`` or ``[*, H*D]``; ``H = 1`` for plain rows), copying only if needed.

    ``mode``: ``"tile"``, heads are a tile axis (``NH = H``, per-head weights in registers);
    ``"fold"``, heads fold into tokens with ``HF = H`` (token ``t`` is head ``t % H``);
    ``"rows"``, any row layout (``HF`` is 1, or the last leading dim when that avoids a copy).
    """
    H, D = num_heads, head_dim
    xh = x if x.dim() >= 2 and x.shape[-1] == D and (H == 1 or x.shape[-2] == H) else None
    if xh is None:
        xh = x.reshape(*x.shape[:-1], H, D) if H > 1 else x.reshape(-1, D)
    copied = False
    if D > 1 and xh.stride(-1) != 1:
        xh, copied = xh.contiguous(), True
    for attempt in range(2):
        if attempt:
            xh, copied = xh.contiguous(), True
        try:
            if mode == "tile":
                v = xh.view(-1, H, D)
                return _Rows(v, v.shape[0], 1, H, D, v.stride(0), 0, v.stride(1), copied)
            if mode == "fold":
                v = xh.view(-1, H, D)
                return _Rows(v, v.shape[0] * H, H, 1, D, v.stride(0), v.stride(1), 0, copied)
            v = xh.view(-1, D)
            return _Rows(v, v.shape[0], 1, 1, D, v.stride(0), 0, 0, copied)
        except (RuntimeError, ValueError):  # eager raises RuntimeError, fake tensors ValueError
            pass
        if mode == "rows" and xh.dim() >= 3:
            try:
                v = xh.view(-1, xh.shape[-2], D)
                return _Rows(
                    v, v.shape[0] * v.shape[1], v.shape[1], 1, D, v.stride(0), v.stride(1), 0, copied
                )
            except (RuntimeError, ValueError):  # eager raises RuntimeError, fake tensors ValueError
                pass
    raise AssertionError("unreachable: a contiguous tensor always has a row view")


def _row_mode(per_head_weight: bool, fused: bool) -> str:
    if not per_head_weight:
        return "rows"
    return "tile" if fused else "fold"


def _contiguous_rows(r: _Rows, D: int) -> _Rows:
    return _Rows(r.t.contiguous().view(-1, D), r.n_tok, 1, 1, D, D, 0, 0, True)


SUM_TILE = Tile((4, 4096, 4), "benchmarks/results/bench_norms_h100.json, run sums_2026-12-07")
""":func:`_sum_partials_kernel`'s tile: (the widest column block, fp32 elements a program loads per
loop step, num_warps). Narrow column blocks and tall row blocks spread the columns over many
programs, each taking a few loop steps: the sums are latency-bound (a few microseconds, the
partials L2-resident). ``benchmarks/bench_norms.py sums`` times the candidates at ViT widths.
Past :data:`SUM_WIDE_COLS` columns the column block is 16 wide (the tile before that run): there
are programs enough, and a 4-column block reads 16 bytes of each row, half a 32-byte sector."""
SUM_WIDE_COLS = 2048
TRACED_SUM_KERNEL = False
"""Under ``torch.compile``, whether :func:`sum_partials` launches :func:`_sum_partials_kernel` (one
launch for a pair of gradients, as eager does) instead of torch ops, which Inductor lowers to a
split reduction of two kernels per gradient (docs/kernels.md gives the step's counts and times)."""


def sum_partials_plan(rows: int, cols: int, two: bool, tile: tuple[int, int, int] | None = None) -> Plan:
    """The plan of one :func:`_sum_partials_kernel` launch over ``[rows, cols]`` fp32 partials (two
    tensors of them when ``two``); its tensors are ``(A, OA, B, OB)``. ``tile`` overrides
    :data:`SUM_TILE` (benchmark sweeps)."""
    widest, elems, warps = tile or SUM_TILE.config
    if tile is None and cols > SUM_WIDE_COLS:
        widest = max(widest, 16)
    block_n = min(next_power_of_2(max(cols, 1)), widest)
    return Plan(
        _sum_partials_kernel,
        (cdiv(cols, block_n),),
        (rows, cols),
        dict(HAS_B=two, BLOCK_R=max(1, elems // block_n), BLOCK_N=block_n, num_warps=warps),
        False,
        False,
    )


def sum_partials(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], run: Runner, owner: Plan | None = None
) -> None:
    """For one or two ``(partials, out)`` pairs of one shape, write the column sums of the
    contiguous fp32 partials (``[R, N]``, ``N`` = ``out``'s numel, ``R`` = the rest) into ``out``
    (any float dtype), in one launch. ``owner``: the cached plan of the kernel that wrote the
    partials (eager launch cache); the reduction's own plan is kept on it (``owner.reduce``).

    Under ``torch.compile`` (``run`` is :func:`wrapped`) the sums are torch ops instead, unless
    :data:`TRACED_SUM_KERNEL` is set: Inductor fuses each sum with its cast into a split reduction
    (two kernels per gradient)."""
    if run is wrapped and not TRACED_SUM_KERNEL:
        for part, out in pairs:
            out.copy_(part.reshape(-1, out.numel()).sum(0).view(out.shape))
        return
    (a, oa), (b, ob) = pairs[0], pairs[-1]
    plan = owner.reduce if owner is not None else None
    if plan is None:
        cols = oa.numel()
        plan = sum_partials_plan(a.numel() // max(cols, 1), cols, len(pairs) == 2)
        if owner is not None:
            owner.reduce = plan
    run(
        plan.kernel,
        plan.grid,
        (a, oa, b, ob) + plan.scalars,
        plan.meta,
        4,
        plan=plan if owner is not None else None,
    )


def _empty_as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A new contiguous tensor of ``t``'s shape in ``dtype``: ``empty_like`` when that gives one (it
    costs a few microseconds less host time than ``torch.empty`` with a shape, dtype and device)."""
    if t.dtype == dtype and t.is_contiguous():
        return torch.empty_like(t)
    return torch.empty(t.shape, dtype=dtype, device=t.device)


def empty_grad(like: torch.Tensor | None, shape: tuple, dtype: torch.dtype, x: torch.Tensor) -> torch.Tensor:
    """A parameter gradient of ``shape`` in ``dtype`` on ``x``'s device, ``empty_like(like)`` when
    ``like`` (the parameter) has that shape and dtype."""
    if like is not None and like.dtype == dtype and like.shape == shape and like.is_contiguous():
        return torch.empty_like(like)
    return torch.empty(shape, dtype=dtype, device=x.device)


def _plan_forward(x, residual, has_w, has_b, has_s, eps, H, D, layer, per_head_weight, config):
    """Plan :func:`norm_forward`; returns ``(plan, x_rows, residual_rows)`` (tensors to launch on)."""
    block_d = next_power_of_2(D)
    block_h = next_power_of_2(H) if per_head_weight else 1
    fused = block_h * block_d <= FUSED_MAX_FWD
    rows = _rows_view(x, H, D, _row_mode(per_head_weight, fused))
    res = _rows_view(residual, H, D, "rows") if residual is not None else None
    if res is not None and (res.HF, rows.HF) != (1, 1):
        rows, res = _contiguous_rows(rows, D), _contiguous_rows(res, D)
    res_strides = (res.s_o, res.s_f, res.s_h) if res is not None else (0, 0, 0)
    flags = {"HAS_W": has_w, "HAS_B": has_b, "HAS_RES": res is not None, "HAS_SCALE": has_s, "LAYER": layer}
    sw = D if per_head_weight else 0
    if fused:
        width = block_h * block_d
        table = RES_TILES if residual is not None else FWD_TILES
        elems, warps = config or pick_tile(table, device_arch(x.device), min(width, FUSED_MAX_FWD)).config
        block_t = max(1, elems // width)
        plan = Plan(
            _norm_fwd_kernel,
            (cdiv(rows.n_tok, block_t),),
            (rows.n_tok, rows.HF, rows.NH, D, rows.s_o, rows.s_f, rows.s_h, *res_strides, sw, eps),
            dict(
                BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_D=block_d, FOLD=rows.HF > 1, **flags, num_warps=warps
            ),
            rows.copied,
            res is not None and res.copied,
        )
    else:
        chunk, warps = config or _chunked_tile(CHUNKED_FWD_TILES, device_arch(x.device))
        plan = Plan(
            _norm_fwd_chunked_kernel,
            (rows.n_tok,),
            (rows.HF, D, rows.s_o, rows.s_f, *res_strides[:2], sw, eps),
            dict(CHUNK=min(chunk, block_d), **flags, num_warps=warps),
            rows.copied,
            res is not None and res.copied,
        )
    return plan, rows.t, res.t if res is not None else None


def norm_forward(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    *,
    num_heads: int = 1,
    head_dim: int | None = None,
    layer: bool = False,
    per_head_weight: bool = False,
    residual: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    config: tuple[int, int] | None = None,
    run: Runner = launch,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalise ``x`` per row of ``head_dim`` columns; returns ``(y, h)`` (``h`` only with ``residual``).

    ``weight``/``bias``: ``(D,)`` shared, or ``(H, D)`` with ``per_head_weight``. With ``residual``
    the rows normalised are ``h = residual + x`` (``residual + x * scale`` with a ``(D,)`` ``scale``,
    LayerScale), computed in fp32 and rounded once. ``y`` and ``h`` are contiguous, of ``x``'s shape;
    their dtype is ``x``'s, or with a residual that of ``residual + x * scale`` in PyTorch's type
    promotion. ``config`` = ``(elements per tile, num_warps)`` overrides the table (benchmark sweeps).
    """
    # int(): under dynamic-shape tracing the row width specialises (tile sizes are constexprs).
    D = int(x.shape[-1] if head_dim is None else head_dim)
    dtype = x.dtype if residual is None else residual_dtype(x, residual, scale)
    y = _empty_as(x, dtype)
    h_out = _empty_as(x, dtype) if residual is not None else None
    if x.numel() == 0:
        return y, h_out
    has_w, has_b, has_s = weight is not None, bias is not None, scale is not None
    args = (x, residual, has_w, has_b, has_s, eps, num_heads, D, layer, per_head_weight, config)
    if run is launch:
        key = (
            "fwd",
            x.shape,
            x.stride(),
            x.get_device(),
            x.dtype,
            (residual.stride(), residual.dtype) if residual is not None else None,
            *args[2:],
        )
        plan = cached_plan(key, _plan_forward, args)
        xt = x.contiguous() if plan.x_copy else x
        rt = (residual.contiguous() if plan.r_copy else residual) if residual is not None else y
        cached = plan
    else:
        plan, xt, rt = _plan_forward(*args)
        rt = rt if rt is not None else y
        cached = None
    w = weight.contiguous() if has_w else y
    b = bias.contiguous() if has_b else y
    s = scale.contiguous() if has_s else y
    tensors = (xt, rt, y, h_out if h_out is not None else y, w, b, s)
    run(plan.kernel, plan.grid, tensors + plan.scalars, plan.meta, len(tensors), plan=cached)
    return y, h_out


def _plan_backward(
    x,
    has_w,
    has_bias,
    has_dres,
    has_s,
    eps,
    H,
    D,
    layer,
    per_head_weight,
    config,
    programs_per_sm,
    prefetch=None,
):
    """Plan :func:`norm_backward`; returns ``(plan, x_rows)``."""
    block_d = next_power_of_2(D)
    block_h = next_power_of_2(H) if per_head_weight else 1
    fused = block_h * block_d <= FUSED_MAX_BWD
    rows = _rows_view(x, H, D, _row_mode(per_head_weight, fused))
    budget = num_sms(x.device)
    flags = {"HAS_W": has_w, "HAS_B": has_bias, "HAS_DRES": has_dres, "HAS_SCALE": has_s, "LAYER": layer}
    sw = D if per_head_weight else 0
    if fused:
        width = block_h * block_d
        arch = device_arch(x.device)
        tile = pick_tile(BWD_SCALE_TILES, arch, width) if has_s else None
        if tile is None and block_h == 1:
            tile = pick_tile(BWD_PREFETCH_TILES, arch, width)
        tiled = tile is not None  # the prefetching tables
        if tile is None:
            tile = pick_tile(BWD_TILES, arch, min(width, FUSED_MAX_BWD))
        elems, warps, per_sm = tile.config
        prefetch = tiled if prefetch is None else prefetch
        elems, warps = config or (elems, warps)
        block_t = max(1, elems // width)
        n_blocks = cdiv(rows.n_tok, block_t)
        P = program_count(n_blocks, budget * (programs_per_sm or per_sm))
        plan = Plan(
            _norm_bwd_kernel,
            (P,),
            (rows.n_tok, rows.HF, rows.NH, D, rows.s_o, rows.s_f, rows.s_h, sw, eps, n_blocks),
            dict(
                BLOCK_T=block_t,
                BLOCK_H=block_h,
                BLOCK_D=block_d,
                FOLD=rows.HF > 1,
                **flags,
                PREFETCH=prefetch,
                num_warps=warps,
            ),
            rows.copied,
            False,
            (P, rows.NH, D),
        )
    else:
        chunk, warps, per_sm = _chunked_tile(CHUNKED_BWD_TILES, device_arch(x.device))
        chunk, warps = config or (chunk, warps)
        P = program_count(rows.n_tok, budget * (programs_per_sm or per_sm))
        fold_w = per_head_weight and rows.HF > 1
        plan = Plan(
            _norm_bwd_chunked_kernel,
            (P,),
            (rows.n_tok, rows.HF, D, rows.s_o, rows.s_f, sw, eps),
            dict(CHUNK=min(chunk, block_d), **flags, W_FOLD=fold_w, num_warps=warps),
            rows.copied,
            False,
            (P, rows.HF, D) if fold_w else (P, 1, D),
        )
    return plan, rows.t


class NormGrads(NamedTuple):
    """:func:`norm_backward`'s gradients: ``dx`` (of ``h`` with a residual), the weight's, the
    bias's, and with a LayerScale ``scale`` the branch's and the scale's (None where absent)."""

    dx: torch.Tensor
    dweight: torch.Tensor | None
    dbias: torch.Tensor | None
    dbranch: torch.Tensor | None = None
    dscale: torch.Tensor | None = None


def norm_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    has_bias: bool,
    eps: float,
    *,
    num_heads: int = 1,
    head_dim: int | None = None,
    layer: bool = False,
    per_head_weight: bool = False,
    dres: torch.Tensor | None = None,
    branch: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    config: tuple[int, int] | None = None,
    programs_per_sm: int | None = None,
    prefetch: bool | None = None,
    grad_dtype: torch.dtype = torch.float32,
    run: Runner = launch,
) -> NormGrads:
    """Gradients of :func:`norm_forward` at its normalised rows ``x`` (``h`` for a residual call).

    ``dres`` (the gradient reaching ``h`` directly) is added to ``dx``. With ``scale``, ``branch`` is
    the forward's ``x`` (``h = residual + branch * scale``, plain rows, no bias): ``dbranch =
    dx * scale`` in ``branch``'s dtype and ``dscale = sum(dx * branch)``. ``dx`` is contiguous in
    ``x``'s shape and dtype; ``dweight``/``dbias``/``dscale`` have the weight's (scale's) shape
    (``(H, D)`` with ``per_head_weight``, else ``(D,)``) in ``grad_dtype`` (the fp32 partials summed
    in fp32, then rounded).

    ``config`` = ``(elements per tile, num_warps)`` and ``programs_per_sm`` override the tile
    table; ``prefetch`` forces the kernel's next-block prefetch on or off (None: on where the
    prefetching tables ``BWD_PREFETCH_TILES``/``BWD_SCALE_TILES`` chose the tile). These serve
    benchmark sweeps; the ops never pass them.
    """
    # int(): under dynamic-shape tracing the row width specialises (tile sizes are constexprs).
    D = int(x.shape[-1] if head_dim is None else head_dim)
    wshape = (num_heads, D) if per_head_weight else (D,)
    dx = _empty_as(x, x.dtype)
    has_w, has_s = weight is not None, scale is not None
    if has_s and (has_bias or per_head_weight or layer or branch is None or branch.shape != x.shape):
        raise ValueError("norm_backward: scale needs the branch (x's shape) and plain RMS rows without bias")
    dbranch = _empty_as(branch, branch.dtype) if has_s else None
    if x.numel() == 0:
        dw = torch.zeros(wshape, dtype=grad_dtype, device=x.device) if has_w else None
        db = torch.zeros(wshape, dtype=grad_dtype, device=x.device) if has_bias or has_s else None
        return NormGrads(dx, dw, None if has_s else db, dbranch, db if has_s else None)
    dy = dy.contiguous()
    dres = dres.contiguous() if dres is not None else None
    args = (
        x,
        has_w,
        has_bias,
        dres is not None,
        has_s,
        eps,
        num_heads,
        D,
        layer,
        per_head_weight,
        config,
        programs_per_sm,
        prefetch,
    )
    if run is launch:
        key = ("bwd", x.shape, x.stride(), x.get_device(), x.dtype, *args[1:])
        plan = cached_plan(key, _plan_backward, args)
        xt = x.contiguous() if plan.x_copy else x
        cached = plan
    else:
        plan, xt = _plan_backward(*args)
        cached = None
    # A scale's partials take the bias's slot (a residual norm has no bias).
    dwp, dbp = partials(
        plan, cached is not None, x, has_w, has_bias or has_s, plan.kernel is _norm_bwd_kernel
    )
    dwp = dwp if dwp is not None else dx
    dbp = dbp if dbp is not None else dx
    w = weight.contiguous() if has_w else dx
    br = branch.contiguous() if has_s else dx
    s = scale.contiguous() if has_s else dx
    tensors = (dy, dres if dres is not None else dx, xt, w, dx, dwp, dbp, br, s, dbranch if has_s else dx)
    run(plan.kernel, plan.grid, tensors + plan.scalars, plan.meta, len(tensors), plan=cached)
    # Sum the fp32 partials in fp32 and round once, dw and db in one launch (sum then cast would be
    # two aten ops per gradient, more host time than the kernels run at ViT sizes).
    dw = empty_grad(weight, wshape, grad_dtype, x) if has_w else None
    db = empty_grad(scale if has_s else weight, wshape, grad_dtype, x) if has_bias or has_s else None
    pairs = [(p, g) for p, g in ((dwp, dw), (dbp, db)) if g is not None]
    if pairs:
        sum_partials(pairs, run, cached)
    return NormGrads(dx, dw, None if has_s else db, dbranch, db if has_s else None)
