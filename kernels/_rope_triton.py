"""Triton kernels for the fused QK-norm + 2D RoPE + head transpose (``flopkit::qk_norm_rope``).

Forward, per token row of ``qkv`` ``[B, T, 3*H*D]`` and head ``h`` (q and k in one program):

    r = rsqrt(mean(x**2) + eps);  y = x * r * w;  out = y * cos + rot(y) * sin

written to ``[B, H, T, D]``. ``rot(y)_c = s_c * y_{p(c)}`` with a partner channel ``p(c)`` and a
sign ``s_c`` (split_half: ``p = c ± D/4`` within each half, ``s = -1`` on the first quarter of each
half; interleaved: ``p = c ^ 1``, ``s = -1`` on even channels). The partner is a second load of the
same cache lines, not a register shuffle, so the kernel works for any even ``D`` (masked to a
power-of-two block).

Backward: both pairings are block-diagonal in ``[[0, -1], [1, 0]]`` blocks, so ``rotᵀ = -rot`` and

    dy_c = cos_c * g_c - s_c * sin_{p(c)} * g_{p(c)}
    dw  += sum_rows(dy * x * r)                    (fp32 partials per program, summed on the host)
    dx   = r * (dy*w - x * r**2 * mean(dy*w*x))

The gradient w.r.t. ``qkv`` is written whole: q and k parts from the above, the v part from ``dv``
(``v`` is returned as a view of ``qkv``), so no zero-fill + add pass is needed.

The custom ops, autograd and FLOP formula live in ``_rope_ops.py``; this file holds only
the kernels and their launchers (the same split as the norm family).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._dispatch import num_sms
from ._launch import (
    TUNED_ARCH,
    Plan,
    Tile,
    cached_plan,
    cdiv,
    launch,
    next_power_of_2,
    partials,
    program_count,
)
from ._norm_triton import Runner, empty_grad, sum_partials

__all__ = ["qk_norm_rope_fwd", "qk_norm_rope_bwd"]


@triton.jit
def _partner(cols, HEAD_DIM: tl.constexpr, INTERLEAVED: tl.constexpr):
    """Partner channel ``p(c)`` and sign ``s_c`` of ``rot(y)_c = s_c * y_{p(c)}``."""
    if INTERLEAVED:
        partner = cols ^ 1
        sign = tl.where((cols & 1) == 0, -1.0, 1.0)
    else:
        first = (cols % (HEAD_DIM // 2)) < (HEAD_DIM // 4)
        partner = tl.where(first, cols + HEAD_DIM // 4, cols - HEAD_DIM // 4)
        sign = tl.where(first, -1.0, 1.0)
    return partner, sign


@triton.jit
def _swap_pairs(x):
    """``[R, C]`` -> the same with columns ``2i`` and ``2i+1`` exchanged (the interleaved partners).

    Each thread holds whole pairs, so this stays in registers; a re-load at ``c ^ 1`` would not
    vectorize (one 2-byte load per element)."""
    a, b = tl.split(tl.reshape(x, [x.shape[0], x.shape[1] // 2, 2]))
    return tl.reshape(tl.join(b, a), [x.shape[0], x.shape[1]])


@triton.jit
def _norm_rope_tile(
    x_ptrs, xp_ptrs, w_ptr, cos, sin, cols, partner, sign, mask, eps,
    HEAD_DIM: tl.constexpr, NORM: tl.constexpr, HAS_W: tl.constexpr, ACC: tl.constexpr,
    PARTNER_EVICT: tl.constexpr, INTERLEAVED: tl.constexpr,
):  # fmt: skip
    """Normalised and rotated ``[BLOCK_T, BLOCK_D]`` tile; ``xp_ptrs`` point at the partner channels."""
    x = tl.load(x_ptrs, mask=mask, other=0.0).to(ACC)
    if INTERLEAVED:
        xp = _swap_pairs(x)
    else:
        xp = tl.load(xp_ptrs, mask=mask, other=0.0, eviction_policy=PARTNER_EVICT).to(ACC)
    if NORM:
        r = tl.rsqrt((tl.sum(x * x, axis=1) / HEAD_DIM + eps).to(tl.float32))[:, None]
        x = x * r
        xp = xp * r
        if HAS_W:
            cmask = cols < HEAD_DIM
            x = x * tl.load(w_ptr + cols, mask=cmask, other=0.0).to(ACC)[None, :]
            xp = xp * tl.load(w_ptr + partner, mask=cmask, other=0.0).to(ACC)[None, :]
    return x * cos + sign[None, :] * xp * sin


@triton.jit
def _qk_norm_rope_fwd_kernel(
    qkv_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, q_ptr, k_ptr,
    num_rows, num_tokens, num_heads,
    s_qkv_b, s_qkv_t, s_qkv_c, s_cos_t, s_cos_d, s_sin_t, s_sin_d, s_qw_h, s_kw_h,
    eps,
    HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    NORM: tl.constexpr, HAS_QW: tl.constexpr, HAS_KW: tl.constexpr,
    INTERLEAVED: tl.constexpr, ACC: tl.constexpr, TABLE_EVICT: tl.constexpr, PARTNER_EVICT: tl.constexpr,
    TOKEN_MAJOR: tl.constexpr,
):  # fmt: skip
    # Heads vary fastest over program ids, so concurrent programs read whole token rows of qkv.
    pid = tl.program_id(0)
    h = pid % num_heads
    rows = (pid // num_heads) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_D)
    partner, sign = _partner(cols, HEAD_DIM, INTERLEAVED)
    mask = (rows < num_rows)[:, None] & (cols < HEAD_DIM)[None, :]
    b = (rows // num_tokens).to(tl.int64)
    t = rows % num_tokens

    # The [T, D] tables are shared by every batch row and head: keep them in L2.
    cos = tl.load(cos_ptr + t[:, None] * s_cos_t + cols[None, :] * s_cos_d, mask=mask, other=0.0,
                  eviction_policy=TABLE_EVICT).to(ACC)  # fmt: skip
    sin = tl.load(sin_ptr + t[:, None] * s_sin_t + cols[None, :] * s_sin_d, mask=mask, other=0.0,
                  eviction_policy=TABLE_EVICT).to(ACC)  # fmt: skip

    row = qkv_ptr + (b * s_qkv_b + t * s_qkv_t)[:, None]
    q_cols = ((h * HEAD_DIM + cols) * s_qkv_c)[None, :]
    q_pcols = ((h * HEAD_DIM + partner) * s_qkv_c)[None, :]
    k_shift = num_heads * HEAD_DIM * s_qkv_c
    # q and k are [B, H, T, D]: contiguous (head-major), or views of [B, T, H, D] (token-major).
    if TOKEN_MAJOR:
        out = ((b * num_tokens + t) * num_heads + h)[:, None] * HEAD_DIM + cols[None, :]
    else:
        out = ((b * num_heads + h) * num_tokens + t)[:, None] * HEAD_DIM + cols[None, :]

    q = _norm_rope_tile(
        row + q_cols, row + q_pcols, qw_ptr + h * s_qw_h, cos, sin, cols, partner, sign, mask, eps,
        HEAD_DIM, NORM, HAS_QW, ACC, PARTNER_EVICT, INTERLEAVED,
    )  # fmt: skip
    tl.store(q_ptr + out, q.to(q_ptr.dtype.element_ty), mask=mask)
    k = _norm_rope_tile(
        row + q_cols + k_shift, row + q_pcols + k_shift, kw_ptr + h * s_kw_h, cos, sin, cols, partner, sign,
        mask, eps, HEAD_DIM, NORM, HAS_KW, ACC, PARTNER_EVICT, INTERLEAVED,
    )  # fmt: skip
    tl.store(k_ptr + out, k.to(k_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tile_bwd_loads(
    g_ptrs, gp_ptrs, x_ptrs, mask, NORM: tl.constexpr, PARTNER_EVICT: tl.constexpr, INTERLEAVED: tl.constexpr
):  # fmt: skip
    """One tile's backward inputs as loaded: ``(g, g at the partners, x)`` (``g`` itself stands in
    for what the pairing or ``NORM`` does not need)."""
    g = tl.load(g_ptrs, mask=mask, other=0.0)
    gp = g if INTERLEAVED else tl.load(gp_ptrs, mask=mask, other=0.0, eviction_policy=PARTNER_EVICT)
    x = tl.load(x_ptrs, mask=mask, other=0.0) if NORM else g
    return g, gp, x


@triton.jit
def _norm_rope_tile_bwd(
    g, gp, x, w_ptr, cos, sin_p, cols, sign, eps,
    HEAD_DIM: tl.constexpr, NORM: tl.constexpr, HAS_W: tl.constexpr, ACC: tl.constexpr,
    INTERLEAVED: tl.constexpr,
):  # fmt: skip
    """``(dx, dw_partial)`` of one ``[BLOCK_T, BLOCK_D]`` tile from its loaded inputs
    (:func:`_tile_bwd_loads`); ``dw_partial`` is ``[BLOCK_D]`` (zeros without a weight), ``sin_p``
    is sin at the partner channels."""
    g = g.to(ACC)
    gp = _swap_pairs(g) if INTERLEAVED else gp.to(ACC)
    # rotᵀ = -rot for both pairings: dy = cos*g + rotᵀ(sin*g).
    dy = g * cos - sign[None, :] * gp * sin_p
    dw = tl.sum(dy * 0.0, axis=0)
    if NORM:
        x = x.to(ACC)
        r = tl.rsqrt((tl.sum(x * x, axis=1) / HEAD_DIM + eps).to(tl.float32))[:, None]
        n = x * r
        if HAS_W:
            dw = tl.sum(dy * n, axis=0)
            dy = dy * tl.load(w_ptr + cols, mask=cols < HEAD_DIM, other=0.0).to(ACC)[None, :]
        dy = r * (dy - n * (tl.sum(dy * n, axis=1) / HEAD_DIM)[:, None])
    return dy, dw


@triton.jit
def _qk_norm_rope_bwd_kernel(
    dq_ptr, dk_ptr, dv_ptr, qkv_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr,
    dqkv_ptr, dqw_part_ptr, dkw_part_ptr,
    num_rows, num_tokens, num_heads, tiles_per_prog,
    s_dq_b, s_dq_h, s_dq_t, s_dq_d, s_dk_b, s_dk_h, s_dk_t, s_dk_d, s_dv_b, s_dv_h, s_dv_t, s_dv_d,
    s_qkv_b, s_qkv_t, s_qkv_c, s_cos_t, s_cos_d, s_sin_t, s_sin_d, s_qw_h, s_kw_h,
    eps,
    HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    NORM: tl.constexpr, HAS_QW: tl.constexpr, HAS_KW: tl.constexpr, HAS_DV: tl.constexpr,
    INTERLEAVED: tl.constexpr, ACC: tl.constexpr, TABLE_EVICT: tl.constexpr, PARTNER_EVICT: tl.constexpr,
    IN_PLACE: tl.constexpr,
):  # fmt: skip
    # IN_PLACE: dqkv holds dq, dk and dv on entry (the attention's backward wrote them there). The
    # gradients are read from its q and k parts (dq_ptr, dk_ptr, dv_ptr are unused, and dq's and dk's
    # strides are dqkv's head views'), the results written over them, and its v part left as it is:
    # a program reads every element it writes before writing it.
    # Program (chunk, h) walks ``tiles_per_prog`` consecutive row tiles of head h and keeps the
    # weight-gradient partial in registers: partials are [num_chunks, H, D], not one per tile.
    pid = tl.program_id(0)
    h = pid % num_heads
    chunk = pid // num_heads
    cols = tl.arange(0, BLOCK_D)
    partner, sign = _partner(cols, HEAD_DIM, INTERLEAVED)
    cmask = cols < HEAD_DIM
    hd = num_heads * HEAD_DIM
    q_cols = h * HEAD_DIM + cols
    dqw_acc = tl.zeros([BLOCK_D], dtype=ACC)
    dkw_acc = tl.zeros([BLOCK_D], dtype=ACC)
    for i in range(tiles_per_prog):
        rows = (chunk * tiles_per_prog + i) * BLOCK_T + tl.arange(0, BLOCK_T)
        mask = (rows < num_rows)[:, None] & cmask[None, :]
        b = (rows // num_tokens).to(tl.int64)
        t = rows % num_tokens
        cos = tl.load(cos_ptr + t[:, None] * s_cos_t + cols[None, :] * s_cos_d, mask=mask, other=0.0,
                      eviction_policy=TABLE_EVICT).to(ACC)  # fmt: skip
        if INTERLEAVED:
            sin_p = tl.load(sin_ptr + t[:, None] * s_sin_t + cols[None, :] * s_sin_d, mask=mask, other=0.0,
                            eviction_policy=TABLE_EVICT).to(ACC)  # fmt: skip
            sin_p = _swap_pairs(sin_p)
        else:
            sin_p = tl.load(sin_ptr + t[:, None] * s_sin_t + partner[None, :] * s_sin_d, mask=mask, other=0.0,
                            eviction_policy=TABLE_EVICT).to(ACC)  # fmt: skip
        x_row = qkv_ptr + (b * s_qkv_b + t * s_qkv_t)[:, None]
        out_row = dqkv_ptr + (rows.to(tl.int64) * (3 * hd))[:, None]
        if IN_PLACE:
            dq_row = out_row + h * HEAD_DIM
            dk_row = out_row + (hd + h * HEAD_DIM)
        else:
            dq_row = dq_ptr + (b * s_dq_b + h * s_dq_h + t * s_dq_t)[:, None]
            dk_row = dk_ptr + (b * s_dk_b + h * s_dk_h + t * s_dk_t)[:, None]
        # Every read of the tile first (q's, k's and dv), then the math and the stores: one memory
        # round trip per tile instead of three (148.7 -> 138.0 us at vit5-small's shape on an H100:
        # benchmarks/results/sweep_vit_kernels_h100.md, run qk-early-loads_2026-11-23).
        gq, gqp, xq = _tile_bwd_loads(
            dq_row + (cols * s_dq_d)[None, :], dq_row + (partner * s_dq_d)[None, :],
            x_row + (q_cols * s_qkv_c)[None, :], mask, NORM, PARTNER_EVICT, INTERLEAVED,
        )  # fmt: skip
        gk, gkp, xk = _tile_bwd_loads(
            dk_row + (cols * s_dk_d)[None, :], dk_row + (partner * s_dk_d)[None, :],
            x_row + ((q_cols + hd) * s_qkv_c)[None, :], mask, NORM, PARTNER_EVICT, INTERLEAVED,
        )  # fmt: skip
        if HAS_DV:
            dv_row = dv_ptr + (b * s_dv_b + h * s_dv_h + t * s_dv_t)[:, None]
            dv = tl.load(dv_row + (cols * s_dv_d)[None, :], mask=mask, other=0.0)
        else:
            dv = tl.zeros([BLOCK_T, BLOCK_D], dtype=ACC)
        dxq, dwq = _norm_rope_tile_bwd(
            gq, gqp, xq, qw_ptr + h * s_qw_h, cos, sin_p, cols, sign, eps, HEAD_DIM, NORM, HAS_QW, ACC,
            INTERLEAVED,
        )  # fmt: skip
        tl.store(out_row + q_cols[None, :], dxq.to(dqkv_ptr.dtype.element_ty), mask=mask)
        dqw_acc += dwq
        dxk, dwk = _norm_rope_tile_bwd(
            gk, gkp, xk, kw_ptr + h * s_kw_h, cos, sin_p, cols, sign, eps, HEAD_DIM, NORM, HAS_KW, ACC,
            INTERLEAVED,
        )  # fmt: skip
        tl.store(out_row + (q_cols + hd)[None, :], dxk.to(dqkv_ptr.dtype.element_ty), mask=mask)
        dkw_acc += dwk
        if not IN_PLACE:
            tl.store(out_row + (q_cols + 2 * hd)[None, :], dv.to(dqkv_ptr.dtype.element_ty), mask=mask)

    part = (chunk * num_heads + h) * HEAD_DIM + cols
    if HAS_QW:
        tl.store(dqw_part_ptr + part, dqw_acc, mask=cmask)
    if HAS_KW:
        tl.store(dkw_part_ptr + part, dkw_acc, mask=cmask)


# --------------------------------------------------------------------------------------------------
# Launchers
#
# Tile tables keyed by (architecture, BLOCK_D), each entry citing the sweep that chose it
# (benchmarks/bench_attention.py --sweep, H100, bf16, D = 64): the forward is fastest with small
# one-warp programs (many CTAs per SM, ~512 elements of q and of k each); the backward with
# ~2K-element tiles, two warps, and about 4 programs per SM looping over row tiles. Only D = 64 was
# swept: every head dim and device runs its entry (the constants below).
_SWEEP = "benchmarks/results/bench_attention_h100.json, run sweep_2026-11-23"
FWD_TILES: dict[tuple[str, int], Tile] = {
    (TUNED_ARCH, 64): Tile(
        (512, 1), _SWEEP + ": best at (128, 201, 12, 64); within 1 % of the best at (32, 1025, 16, 64)"
    ),
}
BWD_TILES: dict[tuple[str, int], Tile] = {
    (TUNED_ARCH, 64): Tile(
        (2048, 2, 4), _SWEEP + ": 2048 elements, 2 warps best at both shapes; 4 per SM within 2 % of 64"
    ),
}
FWD_TILE_ELEMS, FWD_WARPS = FWD_TILES[(TUNED_ARCH, 64)].config
BWD_TILE_ELEMS, BWD_WARPS, BWD_PROGRAMS_PER_SM = BWD_TILES[(TUNED_ARCH, 64)].config
# Eviction hints: the cos/sin tables are re-read by every batch row and head; the partner re-read
# of a tile is the last use of its lines.
TABLE_EVICT, PARTNER_EVICT = "evict_last", "evict_first"


# One dtype rule for every kernel (kernels/_dispatch.py): fp32/fp16/bf16 I/O, fp32 math.
ACC_DTYPE = tl.float32


def _block_d(head_dim: int) -> int:
    return next_power_of_2(head_dim)


def _weight_head_stride(w: torch.Tensor | None) -> int:
    return 0 if w is None or w.dim() == 1 else w.stride(0)


def _program_count_hint(device: torch.device) -> int:
    n = num_sms(device)
    return BWD_PROGRAMS_PER_SM * n if device.type == "cuda" else n


def _evict(hints: bool) -> tuple[str, str]:
    return (TABLE_EVICT, PARTNER_EVICT) if hints else ("", "")


def _plan_fwd(
    qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm, block_t, num_warps, evict_hints
):
    """Plan :func:`qk_norm_rope_fwd`: the grid, scalars and constexprs; ``extra`` is whether each
    weight is read."""
    B, T, three_hd = qkv.shape
    D = int(three_hd // (3 * num_heads))  # a constexpr: specialises under dynamic shapes
    rows = B * T
    block_t = block_t or max(1, FWD_TILE_ELEMS // _block_d(D))
    has_qw, has_kw = norm and q_weight is not None, norm and k_weight is not None
    table_evict, partner_evict = _evict(evict_hints)
    plan = Plan(
        _qk_norm_rope_fwd_kernel,
        (cdiv(rows, block_t) * num_heads,),
        (
            rows, T, num_heads,
            *qkv.stride(), *cos.stride(), *sin.stride(),
            _weight_head_stride(q_weight), _weight_head_stride(k_weight),
            eps,
        ),
        dict(
            HEAD_DIM=D, BLOCK_T=block_t, BLOCK_D=_block_d(D), NORM=norm, HAS_QW=has_qw, HAS_KW=has_kw,
            INTERLEAVED=pairing == "interleaved", ACC=ACC_DTYPE, TABLE_EVICT=table_evict,
            PARTNER_EVICT=partner_evict, TOKEN_MAJOR=token_major(num_heads), num_warps=num_warps,
        ),
        extra=(has_qw, has_kw),
    )  # fmt: skip
    return (plan,)


TOKEN_MAJOR_MIN_HEADS = 12
"""From this many heads up, q and k are written token-major (``[B, H, T, D]`` views of
``[B, T, H, D]`` buffers). cuDNN's attention then writes its output in the same layout, so the
attention's ``out.transpose(1, 2).reshape(B, T, C)`` is a free view instead of a transposing copy
of the whole activation. On an H100 at T = 201, head_dim 64 (``benchmarks/sdpa_backends.py``), the
attention forward + backward with that output took 11 % less time at 12 heads but 16 % more at 6,
where cuDNN runs token-major inputs slower, so fewer heads stay head-major (contiguous)."""


def token_major(num_heads: int) -> bool:
    """Whether :func:`qk_norm_rope_fwd` writes q and k token-major for ``num_heads`` heads."""
    return num_heads >= TOKEN_MAJOR_MIN_HEADS


def empty_qk(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """A new q (or k) ``[B, H, T, D]`` for ``qkv`` ``[B, T, 3*H*D]`` in the layout of
    :func:`token_major`, qkv's dtype and device."""
    B, T, three_hd = qkv.shape
    D = three_hd // (3 * num_heads)
    if token_major(num_heads):
        return qkv.new_empty((B, T, num_heads, D)).transpose(1, 2)
    return qkv.new_empty((B, num_heads, T, D))


def qkv_heads(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k and v of ``qkv`` ``[B, T, 3*H*D]`` as ``[B, H, T, D]`` views."""
    q, k, v = qkv.unflatten(-1, (3, num_heads, -1)).unbind(2)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def qk_norm_rope_fwd(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    num_heads: int,
    eps: float,
    pairing: str,
    norm: bool,
    *,
    block_t: int | None = None,
    num_warps: int = FWD_WARPS,
    evict_hints: bool = True,
    run: Runner = launch,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel: ``qkv`` ``[B, T, 3*H*D]`` -> q, k ``[B, H, T, D]``, contiguous or
    token-major views (:func:`token_major`)."""
    args = (qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm, block_t, num_warps, evict_hints)
    if run is launch:
        key = (
            "rope-fwd", qkv.shape, qkv.stride(), qkv.dtype, qkv.get_device(), cos.shape, cos.stride(),
            sin.stride(), _weight_key(q_weight), _weight_key(k_weight), *args[5:],
        )  # fmt: skip
        plan = cached = cached_plan(key, _plan_fwd, args)
    else:
        plan, cached = _plan_fwd(*args)[0], None
    has_qw, has_kw = plan.extra
    q, k = empty_qk(qkv, num_heads), empty_qk(qkv, num_heads)
    if qkv.numel() == 0:
        return q, k
    tensors = (qkv, cos, sin, q_weight if has_qw else qkv, k_weight if has_kw else qkv, q, k)
    run(plan.kernel, plan.grid, tensors + plan.scalars, plan.meta, 7, plan=cached)
    return q, k


def _weight_key(w: torch.Tensor | None) -> tuple | None:
    return None if w is None else (w.shape, w.stride())


def _plan_bwd(
    dq, dk, dv, qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm,
    block_t, num_warps, num_programs, evict_hints, in_place,
):  # fmt: skip
    """Plan :func:`qk_norm_rope_bwd`: grid, scalars, constexprs, the partials' shape and ``extra``
    (whether each weight has a gradient)."""
    B, T, three_hd = qkv.shape
    D = int(three_hd // (3 * num_heads))  # a constexpr: specialises under dynamic shapes
    rows = B * T
    has_qw, has_kw = norm and q_weight is not None, norm and k_weight is not None
    block_t = block_t or max(1, BWD_TILE_ELEMS // _block_d(D))
    n_tiles = torch.sym_max(1, cdiv(rows, block_t))
    chunks = program_count(n_tiles, (num_programs or _program_count_hint(qkv.device)) // num_heads)
    tiles_per_prog = cdiv(n_tiles, chunks)
    # No more programs than the tiles need; program_count (a no-op on the value) lets a symbolic
    # count be known positive, so the partials' allocation asks nothing of the batch.
    chunks = program_count(cdiv(n_tiles, tiles_per_prog), chunks)
    dv_t = dv if dv is not None else dq
    table_evict, partner_evict = _evict(evict_hints)
    plan = Plan(
        _qk_norm_rope_bwd_kernel,
        (chunks * num_heads,),
        (
            rows, T, num_heads, tiles_per_prog,
            *dq.stride(), *dk.stride(), *dv_t.stride(),
            *qkv.stride(), *cos.stride(), *sin.stride(),
            _weight_head_stride(q_weight), _weight_head_stride(k_weight),
            eps,
        ),
        dict(
            HEAD_DIM=D, BLOCK_T=block_t, BLOCK_D=_block_d(D), NORM=norm, HAS_QW=has_qw, HAS_KW=has_kw,
            HAS_DV=dv is not None, INTERLEAVED=pairing == "interleaved", ACC=ACC_DTYPE,
            TABLE_EVICT=table_evict, PARTNER_EVICT=partner_evict, IN_PLACE=in_place, num_warps=num_warps,
        ),
        parts=(chunks, num_heads, D),
        extra=(has_qw, has_kw),
    )  # fmt: skip
    return (plan,)


def qk_norm_rope_bwd(
    dq: torch.Tensor | None,
    dk: torch.Tensor | None,
    dv: torch.Tensor | None,
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    num_heads: int,
    eps: float,
    pairing: str,
    norm: bool,
    *,
    block_t: int | None = None,
    num_warps: int = BWD_WARPS,
    num_programs: int | None = None,
    evict_hints: bool = True,
    out: torch.Tensor | None = None,
    run: Runner = launch,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernel.

    ``dq``, ``dk``, ``dv``: ``[B, H, T, D]`` (any strides; ``dv`` None means zeros). Returns
    ``dqkv`` ``[B, T, 3*H*D]`` contiguous with all three parts written, and the weight gradients in
    the weights' shapes and dtypes (empty ``(0,)`` tensors where a weight is absent or unused).
    ``out``: run in place on this contiguous ``[B, T, 3*H*D]`` buffer of ``qkv``'s dtype, whose q, k
    and v parts hold dq, dk and dv (``dq``, ``dk`` and ``dv`` must then be None): the q and k parts
    are turned into the gradients of the raw q and k, the v part is left as it is. The kernel takes
    the buffer itself, never views of it (see :func:`~flopkit.kernels._sdpa_triton.attention_bwd`).
    """
    in_place = out is not None
    if in_place:
        given = any(t is not None for t in (dq, dk, dv))
        if given or out.shape != qkv.shape or out.dtype != qkv.dtype or not out.is_contiguous():
            raise ValueError(
                f"qk_norm_rope_bwd: in place (out given), dq, dk and dv must be None and out a contiguous "
                f"{tuple(qkv.shape)} {qkv.dtype} buffer; got out {tuple(out.shape)} {out.dtype} "
                f"(contiguous: {out.is_contiguous()}), dq, dk, dv "
                f"{tuple('None' if t is None else tuple(t.shape) for t in (dq, dk, dv))}"
            )
        dq, dk = qkv_heads(out, num_heads)[:2]  # their strides plan the launch; the kernel reads out
    args = (
        dq, dk, dv, qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm,
        block_t, num_warps, num_programs, evict_hints, in_place,
    )  # fmt: skip
    if run is launch:
        key = (
            "rope-bwd", qkv.shape, qkv.stride(), qkv.dtype, qkv.get_device(), dq.stride(), dk.stride(),
            dv.stride() if dv is not None else None, cos.shape, cos.stride(), sin.stride(),
            _weight_key(q_weight), _weight_key(k_weight), *args[8:],
        )  # fmt: skip
        plan = cached = cached_plan(key, _plan_bwd, args)
    else:
        plan, cached = _plan_bwd(*args)[0], None
    has_qw, has_kw = plan.extra
    rows = qkv.shape[0] * qkv.shape[1]
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device) if out is None else out
    dqw_part, dkw_part = partials(plan, cached is not None, qkv, has_qw, has_kw)
    if rows:
        # In place, qkv stands in for the unused gradient pointers: out is passed once.
        grads = (qkv, qkv, qkv) if in_place else (dq, dk, dv if dv is not None else dq)
        tensors = (
            *grads, qkv, cos, sin, q_weight if has_qw else qkv,
            k_weight if has_kw else qkv, dqkv, dqw_part if has_qw else dqkv, dkw_part if has_kw else dqkv,
        )  # fmt: skip
        run(plan.kernel, plan.grid, tensors + plan.scalars, plan.meta, 11, plan=cached)
    # The weights' gradients: the fp32 partials summed over chunks (and heads, for a shared (D,)
    # weight) in fp32, rounded once to the weight's dtype; q and k in one launch when they match.
    grads = [
        empty_grad(w, w.shape, w.dtype, qkv) if used else qkv.new_empty((0,), dtype=torch.float32)
        for w, used in ((q_weight, has_qw), (k_weight, has_kw))
    ]
    pending = [(p, g) for p, g, used in ((dqw_part, grads[0], has_qw), (dkw_part, grads[1], has_kw)) if used]
    if not rows:  # no tokens: the kernel never ran and the partials hold nothing
        for _, g in pending:
            g.zero_()
    elif len(pending) == 2 and grads[0].shape != grads[1].shape:
        for pair in pending:
            sum_partials([pair], run)
    elif pending:
        sum_partials(pending, run, cached)
    return dqkv, grads[0], grads[1]
