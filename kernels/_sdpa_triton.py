"""Triton kernels for short-sequence softmax attention, forward and backward (ViT shapes: T in the
hundreds, head_dim 64 or 128, no mask, no dropout).

Forward, per ``(b, h)`` and block of ``BLOCK_M`` query rows (``S = scale * q kᵀ``, in base 2:
``s = S * log2(e)``)::

    m = max_j s_ij;  l = sum_j 2**(s_ij - m);  o = sum_j 2**(s_ij - m) v_j / l;  lse = m + log2(l)

over key blocks of ``BLOCK_N`` with the running maximum rescaling the partial sums (one block when
``BLOCK_N >= T``). ``o`` is written ``[B, T, H, D]`` (returned as a ``[B, H, T, D]`` view, so
merging heads is free); ``lse`` ``[B, H, T]`` in fp32, base 2, for the backward.

Backward, with ``p = 2**(s - lse)``, ``dp = do vᵀ`` and ``delta_i = sum_d o_id * do_id``
(``= sum_j p_ij dp_ij``)::

    ds = p * (dp - delta);  dq = scale * ds k;  dk = scale * dsᵀ q;  dv = pᵀ do

with no atomics. Where a head's ``T`` rows fit one program (:func:`head_rows`: up to
``HEAD_TILE.block_m`` tokens, ``D`` up to 64), one kernel, ``_attn_bwd_head``: a program per head
holds all of its ``q``, ``do`` and ``dq`` and steps over the keys, storing each step's complete
``dk`` and ``dv`` and summing ``dq`` in registers (a flash backward's 5 products, each input read
once). Otherwise two kernels with no fp32 scratch besides ``delta`` ``[B, H, T]``:
``_attn_bwd_dq`` (per query block, looping over key blocks; it computes ``delta`` from ``o`` and
``do`` and stores it) and then ``_attn_bwd_dkdv`` (per key block, looping over query blocks; it
reads ``delta``). Each recomputes ``p`` from ``lse``. (One kernel adding ``dq`` with fp32 atomics
was slower on the H100; ``benchmarks/triton_attention.py`` keeps it for the comparison.) Every product
accumulates in fp32; ``p`` and ``ds`` enter the tensor-core products in the input dtype, as in
FlashAttention. The scales are cast to fp32 once per program: Inductor launches user kernels with
float scalars typed fp64, which would otherwise carry every logit tile through fp64.

QK-norm + RoPE and the attention as one op (``qk_norm_rope_attention_fwd`` / ``_bwd``) runs
``_rope_triton``'s kernels around these; opt-in (``QK_FUSED_FWD``), its forward is one kernel,
``_attn_fwd_qk``, which normalises and rotates q and k as it loads them from ``qkv``.

The tiles (``FWD_TILE``, ``DQ_TILE``, ``DKDV_TILE``, ``HEAD_TILE``) are the best of
``benchmarks/triton_attention.py``'s sweep on the H100 at T = 201, D = 64
(``benchmarks/results/triton_attention_h100.md``), written here by
``benchmarks/adopt_attention_tiles.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._launch import cdiv, launch, next_power_of_2
from ._rope_triton import (
    _norm_rope_tile,
    _partner,
    _weight_head_stride,
    empty_qk,
    qk_norm_rope_bwd,
    qk_norm_rope_fwd,
    qkv_heads,
)

__all__ = [
    "AttnTile",
    "attention_fwd",
    "attention_bwd",
    "qk_norm_rope_attention_fwd",
    "qk_norm_rope_attention_bwd",
    "FWD_TILE",
    "DQ_TILE",
    "DKDV_TILE",
    "HEAD_TILE",
    "QK_FUSED_FWD",
    "QK_FWD_TILE",
    "fuses_qk",
    "qk_attention_fwd_fused",
    "head_rows",
    "empty_token_major",
]

LOG2E = 1.4426950408889634


class AttnTile(NamedTuple):
    """One kernel's launch: query rows and keys per block, warps, software-pipeline stages."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    tail: int = 0
    """Past the last full block, the step over the rest of the tokens (query rows and keys); 0 pads
    the last block to a full one. At T = 201 with 64-blocks a tail of 16 computes 208 tokens where
    padding computes 256."""


FWD_TILE = AttnTile(64, 64, 4, 3, 0)
"""The forward's tile: a program's query rows, the keys per step."""
DQ_TILE = AttnTile(64, 64, 4, 2, 0)
"""``_attn_bwd_dq``: a program's query rows, the keys per step."""
DKDV_TILE = AttnTile(64, 64, 4, 1, 16)
"""``_attn_bwd_dkdv``: the query rows per step, a program's keys."""
QK_FUSED_FWD = False
"""Whether :func:`qk_norm_rope_attention_fwd` runs QK-norm + RoPE inside the attention forward
(:func:`_attn_fwd_qk`, one kernel, same outputs) instead of as a kernel of its own before it.
Off: not yet timed in a step (the one row that tried, ``bench_train`` run
``candidates_2026-12-08__compiled``, reran the shipped code from the compile caches; docs/kernels.md)."""
QK_FWD_TILE = AttnTile(128, 32, 8, 3, 0)
""":func:`_attn_fwd_qk`'s tile (no tail): compiled for sm90 with Triton 3.6 it holds 255 registers
without spilling, where :data:`FWD_TILE` spills 800 bytes (the rope's fp32 tables and the raw and
partner tiles of each key step). The one tile timed in a step (docs/kernels.md); the kernel
sweep, ``benchmarks/triton_attention.py --sweep qk_forward``, has not run on a GPU."""
HEAD_TILE = AttnTile(256, 64, 8, 1, 32)
"""``_attn_bwd_head``: the most query rows a program holds (a head's ``T``, rounded up to a power of
two), the keys per step."""


@triton.jit
def _program(T, H, BLOCK: tl.constexpr):
    """This program's block (of ``BLOCK`` tokens) and ``(b·H + h, b, h)``, ``b`` in int64 for the
    pointer arithmetic. The grid is one-dimensional (the second dimension is limited to 65,535
    programs: B·H exceeds it at large batches) and ordered as a ``(blocks, B·H)`` grid would be: a
    head's blocks run side by side."""
    blocks = tl.cdiv(T, BLOCK)
    bh = tl.program_id(0) // blocks
    return tl.program_id(0) % blocks, bh, (bh // H).to(tl.int64), bh % H


@triton.jit
def _tile(base, tokens, s_t, d, ok, TRANSPOSED: tl.constexpr = False):
    """The ``[tokens, D]`` tile at ``base`` (token stride ``s_t``, unit stride along ``d``), or its
    ``[D, tokens]`` transpose; tokens where ``ok`` is False read as 0."""
    # One return: Triton 3.6 type-checks every return of a function, even one a constexpr
    # condition rules out, and refuses two tiles of different shapes (BLOCK != HEAD_D).
    if TRANSPOSED:
        tile = tl.load(base + tokens[None, :] * s_t + d[:, None], mask=ok[None, :], other=0.0)
    else:
        tile = tl.load(base + tokens[:, None] * s_t + d[None, :], mask=ok[:, None], other=0.0)
    return tile


@triton.jit
def _fwd_keys(q, kv_bases, s_kt, s_vt, start, stop, T, qk_scale, m_i, l_i, acc, d,
              STEP: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    """The online softmax of ``q``'s rows over keys ``start .. stop`` in steps of ``STEP``; only a
    ``MASKED`` loop meets keys past ``T`` (a full block's keys are all valid)."""
    k_base, v_base = kv_bases
    for k0 in range(start, stop, STEP):
        keys = k0 + tl.arange(0, STEP)
        key_ok = keys < T
        kt = _tile(k_base, keys, s_kt, d, key_ok, TRANSPOSED=True)
        m_i, l_i, acc = _softmax_step(q, kt, v_base, keys, key_ok, s_vt, d, qk_scale, m_i, l_i, acc, MASKED)
    return m_i, l_i, acc


@triton.jit
def _softmax_step(q, kt, v_base, keys, key_ok, s_vt, d, qk_scale, m_i, l_i, acc, MASKED: tl.constexpr):
    """One key step of the online softmax: ``q`` against ``kt`` (``[D, STEP]``), the running max
    ``m_i``, sum ``l_i`` and ``acc`` rescaled and the step's ``p @ v`` added."""
    s = tl.dot(q, kt) * qk_scale
    if MASKED:
        s = tl.where(key_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _tile(v_base, keys, s_vt, d, key_ok)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return m_new, l_i, acc


@triton.jit
def _fwd_rows(q_base, kv_bases, o_base, lse_base, s_qt, s_kt, s_vt, s_ot, row0, T, qk_scale,
              HEAD_D: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, TAIL: tl.constexpr):  # fmt: skip
    """``o`` and ``lse`` of one head's query rows ``row0 .. row0 + ROWS`` (those below ``T``)."""
    rows = row0 + tl.arange(0, ROWS)
    d = tl.arange(0, HEAD_D)
    row_ok = rows < T
    q = _tile(q_base, rows, s_qt, d, row_ok)
    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, HEAD_D], tl.float32)
    if TAIL:  # full key blocks unmasked, then the rest in steps of TAIL
        full = T - T % BLOCK_N
        m_i, l_i, acc = _fwd_keys(
            q, kv_bases, s_kt, s_vt, 0, full, T, qk_scale, m_i, l_i, acc, d, BLOCK_N, False
        )
        m_i, l_i, acc = _fwd_keys(q, kv_bases, s_kt, s_vt, full, T, T, qk_scale, m_i, l_i, acc, d, TAIL, True)
    else:  # every key block masked, the last one padded to BLOCK_N
        m_i, l_i, acc = _fwd_keys(q, kv_bases, s_kt, s_vt, 0, T, T, qk_scale, m_i, l_i, acc, d, BLOCK_N, True)
    acc = acc / l_i[:, None]
    o_ptrs = o_base + rows[:, None] * s_ot + d[None, :]
    tl.store(o_ptrs, acc.to(o_base.dtype.element_ty), mask=row_ok[:, None])
    tl.store(lse_base + rows, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit
def _attn_fwd(
    Q, K, V, O, LSE,
    s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot,
    H, T, qk_scale,
    HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TAIL: tl.constexpr,
):  # fmt: skip
    # Scalars may arrive as fp64 (Inductor's launches): every product stays fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    pid_m, bh, b, h = _program(T, H, BLOCK_M)
    q_base = Q + b * s_qb + h * s_qh
    kv_bases = (K + b * s_kb + h * s_kh, V + b * s_vb + h * s_vh)
    o_base = O + b * s_ob + h * s_oh
    lse_base = LSE + bh.to(tl.int64) * T
    row0 = pid_m * BLOCK_M
    strides = (s_qt, s_kt, s_vt, s_ot)
    if TAIL:  # the last, partial block of queries in steps of TAIL rows
        if row0 + BLOCK_M <= T:
            _fwd_rows(
                q_base,
                kv_bases,
                o_base,
                lse_base,
                *strides,
                row0,
                T,
                qk_scale,
                HEAD_D,
                BLOCK_M,
                BLOCK_N,
                TAIL,
            )
        else:
            for r in range(row0, T, TAIL):
                _fwd_rows(
                    q_base, kv_bases, o_base, lse_base, *strides, r, T, qk_scale, HEAD_D, TAIL, BLOCK_N, TAIL
                )
    else:
        _fwd_rows(
            q_base, kv_bases, o_base, lse_base, *strides, row0, T, qk_scale, HEAD_D, BLOCK_M, BLOCK_N, 0
        )


@triton.jit
def _qk_rows(base, w_base, COS, SIN, tokens, ok, d, s_t, s_cos_t, s_cos_d, s_sin_t, s_sin_d, eps,
             HEAD_D: tl.constexpr, NORM: tl.constexpr, HAS_W: tl.constexpr, INTERLEAVED: tl.constexpr):  # fmt: skip
    """QK-norm + RoPE of one head's q (or k) at ``tokens``, read raw from ``qkv`` at ``base`` (token
    stride ``s_t``, unit channel stride), as ``_qk_norm_rope_fwd_kernel`` computes it: fp32
    ``[tokens, HEAD_D]``, 0 where ``ok`` is False. ``w_base``: this head's norm weight."""
    partner, sign = _partner(d, HEAD_D, INTERLEAVED)
    mask = ok[:, None] & (d < HEAD_D)[None, :]
    cos = tl.load(COS + tokens[:, None] * s_cos_t + d[None, :] * s_cos_d, mask=mask, other=0.0).to(tl.float32)
    sin = tl.load(SIN + tokens[:, None] * s_sin_t + d[None, :] * s_sin_d, mask=mask, other=0.0).to(tl.float32)
    row = base + tokens[:, None] * s_t
    return _norm_rope_tile(
        row + d[None, :], row + partner[None, :], w_base, cos, sin, d, partner, sign, mask, eps,
        HEAD_D, NORM, HAS_W, tl.float32, "", INTERLEAVED,
    )  # fmt: skip


@triton.jit
def _fwd_qk_keys(q, src, k_out, s_kt, v_base, s_t, tables, start, stop, T, qk_scale, m_i, l_i, acc, d,
                 store_k, HEAD_D: tl.constexpr, NORM: tl.constexpr, HAS_KW: tl.constexpr,
                 INTERLEAVED: tl.constexpr, STEP: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    """:func:`_fwd_keys` with each key step's k normalised and rotated from ``qkv`` here (``src``:
    this head's raw k and its weight), rounded to the output dtype as the two-kernel path stores
    it, and stored into ``k_out`` below token ``store_k`` (``T`` in one program per head, else 0)."""
    k_base, kw_base = src
    COS, SIN, s_cos_t, s_cos_d, s_sin_t, s_sin_d, eps = tables
    for k0 in range(start, stop, STEP):
        keys = k0 + tl.arange(0, STEP)
        key_ok = keys < T
        k = _qk_rows(
            k_base, kw_base, COS, SIN, keys, key_ok, d, s_t, s_cos_t, s_cos_d, s_sin_t, s_sin_d, eps,
            HEAD_D, NORM, HAS_KW, INTERLEAVED,
        ).to(k_out.dtype.element_ty)  # fmt: skip
        tl.store(k_out + keys[:, None] * s_kt + d[None, :], k, mask=(keys < store_k)[:, None])
        m_i, l_i, acc = _softmax_step(
            q, tl.trans(k), v_base, keys, key_ok, s_t, d, qk_scale, m_i, l_i, acc, MASKED
        )
    return m_i, l_i, acc


@triton.jit
def _attn_fwd_qk(
    QKV, COS, SIN, QW, KW, Q, K, O, LSE,
    s_xb, s_xt, s_cos_t, s_cos_d, s_sin_t, s_sin_d, s_qw_h, s_kw_h,
    s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_ob, s_oh, s_ot,
    H, T, qk_scale, eps,
    HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TAIL: tl.constexpr,
    NORM: tl.constexpr, HAS_QW: tl.constexpr, HAS_KW: tl.constexpr, INTERLEAVED: tl.constexpr,
):  # fmt: skip
    """QK-norm + RoPE and the attention forward in one kernel: :func:`_attn_fwd` reading q and k raw
    from ``qkv`` ``[B, T, 3*H*D]`` and normalising and rotating them as they load (q once per
    program, each key step's k in every program of the head), v a view of ``qkv``. It also
    writes the normalised q (each program its rows) and k (the head's first program) that the
    backward reads, so its outputs are the two-kernel path's, value for value: q and k rounded to
    the input dtype before the products, as that path stores them. ``TAIL`` must be 0."""
    qk_scale = tl.cast(qk_scale, tl.float32)  # as in _attn_fwd
    eps = tl.cast(eps, tl.float32)
    pid_m, bh, b, h = _program(T, H, BLOCK_M)
    x_base = QKV + b * s_xb + h * HEAD_D
    k_base = x_base + H * HEAD_D
    v_base = x_base + 2 * H * HEAD_D
    tables = (COS, SIN, s_cos_t, s_cos_d, s_sin_t, s_sin_d, eps)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, HEAD_D)
    row_ok = rows < T
    q = _qk_rows(
        x_base, QW + h * s_qw_h, COS, SIN, rows, row_ok, d, s_xt, s_cos_t, s_cos_d, s_sin_t, s_sin_d, eps,
        HEAD_D, NORM, HAS_QW, INTERLEAVED,
    ).to(Q.dtype.element_ty)  # fmt: skip
    tl.store(Q + b * s_qb + h * s_qh + rows[:, None] * s_qt + d[None, :], q, mask=row_ok[:, None])
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], tl.float32)
    m_i, l_i, acc = _fwd_qk_keys(
        q, (k_base, KW + h * s_kw_h), K + b * s_kb + h * s_kh, s_kt, v_base, s_xt, tables, 0, T, T, qk_scale,
        m_i, l_i, acc, d, tl.where(pid_m == 0, T, 0), HEAD_D, NORM, HAS_KW, INTERLEAVED, BLOCK_N, True,
    )  # fmt: skip
    acc = acc / l_i[:, None]
    o_ptrs = O + b * s_ob + h * s_oh + rows[:, None] * s_ot + d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + bh.to(tl.int64) * T + rows, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit
def _dq_keys(q, do, lse, delta, kv_bases, s_kt, s_vt, start, stop, T, qk_scale, dq, d,
             STEP: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    """``dq``'s sum over keys ``start .. stop`` in steps of ``STEP`` (unscaled); only a ``MASKED``
    loop meets keys past ``T``."""
    k_base, v_base = kv_bases
    for k0 in range(start, stop, STEP):
        keys = k0 + tl.arange(0, STEP)
        key_ok = keys < T
        kt = _tile(k_base, keys, s_kt, d, key_ok, TRANSPOSED=True)
        vt = _tile(v_base, keys, s_vt, d, key_ok, TRANSPOSED=True)
        s = tl.dot(q, kt) * qk_scale
        p = tl.exp2(s - lse[:, None])
        if MASKED:  # a key past T reads as 0: its p, 2**-lse, overflows where every logit is below -128
            p = tl.where(key_ok[None, :], p, 0.0)
        dp = tl.dot(do, vt)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq)
    return dq


@triton.jit
def _dq_rows(q_base, kv_bases, o_base, do_base, dq_base, lse_base, delta_base,
             s_qt, s_kt, s_vt, s_ot, s_gt, s_dqt, row0, T, qk_scale, scale,
             HEAD_D: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, TAIL: tl.constexpr):  # fmt: skip
    """``dq`` and ``delta`` of one head's query rows ``row0 .. row0 + ROWS`` (those below ``T``)."""
    rows = row0 + tl.arange(0, ROWS)
    d = tl.arange(0, HEAD_D)
    row_ok = rows < T
    q = _tile(q_base, rows, s_qt, d, row_ok)
    do = _tile(do_base, rows, s_gt, d, row_ok)
    o = _tile(o_base, rows, s_ot, d, row_ok)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(delta_base + rows, delta, mask=row_ok)
    lse = tl.load(lse_base + rows, mask=row_ok, other=0.0)
    dq = tl.zeros([ROWS, HEAD_D], tl.float32)
    if TAIL:  # as in _fwd_rows
        full = T - T % BLOCK_N
        dq = _dq_keys(q, do, lse, delta, kv_bases, s_kt, s_vt, 0, full, T, qk_scale, dq, d, BLOCK_N, False)
        dq = _dq_keys(q, do, lse, delta, kv_bases, s_kt, s_vt, full, T, T, qk_scale, dq, d, TAIL, True)
    else:
        dq = _dq_keys(q, do, lse, delta, kv_bases, s_kt, s_vt, 0, T, T, qk_scale, dq, d, BLOCK_N, True)
    dq_ptrs = dq_base + rows[:, None] * s_dqt + d[None, :]
    tl.store(dq_ptrs, (dq * scale).to(dq_base.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _attn_bwd_dq(
    Q, K, V, O, DO, LSE, DELTA, DQ,
    s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot, s_gb, s_gh, s_gt,
    s_dqb, s_dqh, s_dqt, dq_off,
    H, T, qk_scale, scale,
    HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TAIL: tl.constexpr,
):  # fmt: skip
    # ``dq_off``: dq's element offset in DQ (a packed dqkv buffer's q part: 0; see attention_bwd).
    qk_scale = tl.cast(qk_scale, tl.float32)  # as in _attn_fwd
    scale = tl.cast(scale, tl.float32)
    pid_m, bh, b, h = _program(T, H, BLOCK_M)
    stats = bh.to(tl.int64) * T
    bases = (
        Q + b * s_qb + h * s_qh,
        (K + b * s_kb + h * s_kh, V + b * s_vb + h * s_vh),
        O + b * s_ob + h * s_oh,
        DO + b * s_gb + h * s_gh,
        DQ + dq_off + b * s_dqb + h * s_dqh,
        LSE + stats,
        DELTA + stats,
    )
    strides = (s_qt, s_kt, s_vt, s_ot, s_gt, s_dqt)
    row0 = pid_m * BLOCK_M
    if TAIL:  # as in _attn_fwd
        if row0 + BLOCK_M <= T:
            _dq_rows(*bases, *strides, row0, T, qk_scale, scale, HEAD_D, BLOCK_M, BLOCK_N, TAIL)
        else:
            for r in range(row0, T, TAIL):
                _dq_rows(*bases, *strides, r, T, qk_scale, scale, HEAD_D, TAIL, BLOCK_N, TAIL)
    else:
        _dq_rows(*bases, *strides, row0, T, qk_scale, scale, HEAD_D, BLOCK_M, BLOCK_N, 0)


@triton.jit
def _dkdv_rows(k, v, q_base, do_base, lse_base, delta_base, s_qt, s_gt, start, stop, T, qk_scale, dk, dv, d,
               STEP: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    """``dk`` (unscaled) and ``dv``'s sums over query rows ``start .. stop`` in steps of ``STEP``;
    only a ``MASKED`` loop meets rows past ``T``."""
    for r0 in range(start, stop, STEP):
        rows = r0 + tl.arange(0, STEP)
        row_ok = rows < T
        qt = _tile(q_base, rows, s_qt, d, row_ok, TRANSPOSED=True)
        do = _tile(do_base, rows, s_gt, d, row_ok)
        if MASKED:
            # Rows past T get lse = +inf, so their p is exactly 0 (their q and do are 0 as well).
            lse = tl.load(lse_base + rows, mask=row_ok, other=float("inf"))
            delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
        else:
            lse = tl.load(lse_base + rows)
            delta = tl.load(delta_base + rows)
        st = tl.dot(k, qt) * qk_scale  # [KEYS, STEP] = sᵀ
        pt = tl.exp2(st - lse[None, :])
        dv = tl.dot(pt.to(do.dtype), do, dv)
        dpt = tl.dot(v, tl.trans(do))
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk)
    return dk, dv


@triton.jit
def _dkdv_keys(q_base, k_base, v_base, do_base, dk_base, dv_base, lse_base, delta_base,
               s_qt, s_kt, s_vt, s_gt, s_dkt, s_dvt, key0, T, qk_scale, scale,
               HEAD_D: tl.constexpr, KEYS: tl.constexpr, BLOCK_M: tl.constexpr, TAIL: tl.constexpr):  # fmt: skip
    """``dk`` and ``dv`` of one head's keys ``key0 .. key0 + KEYS`` (those below ``T``)."""
    keys = key0 + tl.arange(0, KEYS)
    d = tl.arange(0, HEAD_D)
    key_ok = keys < T
    k = _tile(k_base, keys, s_kt, d, key_ok)
    v = _tile(v_base, keys, s_vt, d, key_ok)
    dk = tl.zeros([KEYS, HEAD_D], tl.float32)
    dv = tl.zeros([KEYS, HEAD_D], tl.float32)
    rest = (q_base, do_base, lse_base, delta_base, s_qt, s_gt)
    if TAIL:  # full query blocks unmasked, then the rest in steps of TAIL
        full = T - T % BLOCK_M
        dk, dv = _dkdv_rows(k, v, *rest, 0, full, T, qk_scale, dk, dv, d, BLOCK_M, False)
        dk, dv = _dkdv_rows(k, v, *rest, full, T, T, qk_scale, dk, dv, d, TAIL, True)
    else:
        dk, dv = _dkdv_rows(k, v, *rest, 0, T, T, qk_scale, dk, dv, d, BLOCK_M, True)
    dk_ptrs = dk_base + keys[:, None] * s_dkt + d[None, :]
    tl.store(dk_ptrs, (dk * scale).to(dk_base.dtype.element_ty), mask=key_ok[:, None])
    dv_ptrs = dv_base + keys[:, None] * s_dvt + d[None, :]
    tl.store(dv_ptrs, dv.to(dv_base.dtype.element_ty), mask=key_ok[:, None])


@triton.jit
def _attn_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_gb, s_gh, s_gt,
    s_dkb, s_dkh, s_dkt, s_dvb, s_dvh, s_dvt, dk_off, dv_off,
    H, T, qk_scale, scale,
    HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TAIL: tl.constexpr,
    PACKED: tl.constexpr,
):  # fmt: skip
    # PACKED: dk and dv are parts of one buffer, DK, at element offsets dk_off and dv_off (DV unused):
    # the kernel then mutates one tensor, passed once (see attention_bwd).
    qk_scale = tl.cast(qk_scale, tl.float32)  # as in _attn_fwd
    scale = tl.cast(scale, tl.float32)
    pid_n, bh, b, h = _program(T, H, BLOCK_N)
    stats = bh.to(tl.int64) * T
    bases = (
        Q + b * s_qb + h * s_qh,
        K + b * s_kb + h * s_kh,
        V + b * s_vb + h * s_vh,
        DO + b * s_gb + h * s_gh,
        DK + dk_off + b * s_dkb + h * s_dkh,
        (DK if PACKED else DV) + dv_off + b * s_dvb + h * s_dvh,
        LSE + stats,
        DELTA + stats,
    )
    strides = (s_qt, s_kt, s_vt, s_gt, s_dkt, s_dvt)
    key0 = pid_n * BLOCK_N
    if TAIL:  # the last, partial block of keys in steps of TAIL
        if key0 + BLOCK_N <= T:
            _dkdv_keys(*bases, *strides, key0, T, qk_scale, scale, HEAD_D, BLOCK_N, BLOCK_M, TAIL)
        else:
            for k0 in range(key0, T, TAIL):
                _dkdv_keys(*bases, *strides, k0, T, qk_scale, scale, HEAD_D, TAIL, BLOCK_M, TAIL)
    else:
        _dkdv_keys(*bases, *strides, key0, T, qk_scale, scale, HEAD_D, BLOCK_N, BLOCK_M, 0)


@triton.jit
def _head_keys(q, do, lse, delta, k_base, v_base, dk_base, dv_base, s_kt, s_vt, s_dkt, s_dvt,
               start, stop, T, qk_scale, scale, dq, d, STEP: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    """One head's keys ``start .. stop`` in steps of ``STEP``: each step's ``dk`` and ``dv``, complete
    (every query row is in ``q``), stored; ``dq``'s sum over them (unscaled) returned. Only a
    ``MASKED`` loop meets keys past ``T``."""
    for k0 in range(start, stop, STEP):
        keys = k0 + tl.arange(0, STEP)
        key_ok = keys < T
        k = _tile(k_base, keys, s_kt, d, key_ok)
        v = _tile(v_base, keys, s_vt, d, key_ok)
        s = tl.dot(q, tl.trans(k)) * qk_scale  # [ROWS, STEP]
        p = tl.exp2(s - lse[:, None])
        if MASKED:  # as in _dq_keys
            p = tl.where(key_ok[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dv = tl.dot(tl.trans(p.to(do.dtype)), do)  # [STEP, D]
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q)
        dq = tl.dot(ds.to(k.dtype), k, dq)
        tl.store(dk_base + keys[:, None] * s_dkt + d[None, :], (dk * scale).to(dk_base.dtype.element_ty),
                 mask=key_ok[:, None])  # fmt: skip
        tl.store(dv_base + keys[:, None] * s_dvt + d[None, :], dv.to(dv_base.dtype.element_ty),
                 mask=key_ok[:, None])  # fmt: skip
    return dq


@triton.jit
def _head_index(H, T, HEAD_D: tl.constexpr, ROWS: tl.constexpr):
    """A program of one head: ``(b·H + h, b, h)`` (``b`` in int64), its ``ROWS`` row indices, the
    head-dimension indices and the rows' mask. No pointers in, so that torch's mutation analysis
    (which follows a store's pointer back through every argument of a call it came out of) sees
    the stores built from these write only the buffers they add them to; computed inside
    :func:`_head_rows_in`, they marked ``q``, ``o``, ``do`` and ``lse`` as written, and
    ``torch.compile`` then copied ``q`` and ``o`` before every backward (docs/kernels.md)."""
    bh = tl.program_id(0)
    rows = tl.arange(0, ROWS)
    return bh, (bh // H).to(tl.int64), bh % H, rows, tl.arange(0, HEAD_D), rows < T


@triton.jit
def _head_rows_in(Q, O, DO, LSE, s_qb, s_qh, s_qt, s_ob, s_oh, s_ot, s_gb, s_gh, s_gt, bh, b, h, rows, d,
                  row_ok, T):  # fmt: skip
    """What a program of one head (:func:`_head_index`) holds for its whole backward: ``q``, ``do``,
    ``delta = rowsum(o * do)`` (fp32) and ``lse`` for every row (shared by ``_attn_bwd_head`` and
    the benchmark's transposed form). Values only: no store's pointer comes out of this call."""
    q = _tile(Q + b * s_qb + h * s_qh, rows, s_qt, d, row_ok)
    do = _tile(DO + b * s_gb + h * s_gh, rows, s_gt, d, row_ok)
    o = _tile(O + b * s_ob + h * s_oh, rows, s_ot, d, row_ok)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    # Rows past T get lse = +inf, so their p is exactly 0 (their q and do are 0 as well).
    lse = tl.load(LSE + bh.to(tl.int64) * T + rows, mask=row_ok, other=float("inf"))
    return q, do, delta, lse


@triton.jit
def _attn_bwd_head(
    Q, K, V, O, DO, LSE, DQ, DK, DV,
    s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot, s_gb, s_gh, s_gt,
    s_dqb, s_dqh, s_dqt, s_dkb, s_dkh, s_dkt, s_dvb, s_dvh, s_dvt, dq_off, dk_off, dv_off,
    H, T, qk_scale, scale,
    HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TAIL: tl.constexpr,
    ROWS: tl.constexpr, PACKED: tl.constexpr,
):  # fmt: skip
    # One program per head holds all of its ROWS >= T query rows (q, do, dq): dq then sums over
    # every key in registers and dk, dv over every query row, so the backward is one pass over the
    # keys with no second kernel, no atomics and no delta buffer. PACKED: dq, dk and dv are parts of
    # one buffer, DQ, at element offsets dq_off, dk_off and dv_off (DK and DV unused; see
    # attention_bwd).
    qk_scale = tl.cast(qk_scale, tl.float32)  # as in _attn_fwd
    scale = tl.cast(scale, tl.float32)
    bh, b, h, rows, d, row_ok = _head_index(H, T, HEAD_D, ROWS)
    q, do, delta, lse = _head_rows_in(
        Q, O, DO, LSE, s_qb, s_qh, s_qt, s_ob, s_oh, s_ot, s_gb, s_gh, s_gt, bh, b, h, rows, d, row_ok, T
    )
    dq = tl.zeros([ROWS, HEAD_D], tl.float32)
    kv = (K + b * s_kb + h * s_kh, V + b * s_vb + h * s_vh)
    dk_base = (DQ if PACKED else DK) + dk_off + b * s_dkb + h * s_dkh
    dv_base = (DQ if PACKED else DV) + dv_off + b * s_dvb + h * s_dvh
    grads = (dk_base, dv_base, s_kt, s_vt, s_dkt, s_dvt)
    if TAIL:  # full key blocks unmasked, then the rest in steps of TAIL
        full = T - T % BLOCK_N
        dq = _head_keys(q, do, lse, delta, *kv, *grads, 0, full, T, qk_scale, scale, dq, d, BLOCK_N, False)
        dq = _head_keys(q, do, lse, delta, *kv, *grads, full, T, T, qk_scale, scale, dq, d, TAIL, True)
    else:
        dq = _head_keys(q, do, lse, delta, *kv, *grads, 0, T, T, qk_scale, scale, dq, d, BLOCK_N, True)
    dq_ptrs = DQ + dq_off + b * s_dqb + h * s_dqh + rows[:, None] * s_dqt + d[None, :]
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


def head_rows(T: int, head_dim: int, tile: AttnTile | None) -> int:
    """The query rows one ``_attn_bwd_head`` program holds for a ``T``-token head (``T`` rounded up to
    a power of two, at least 16), or 0 where the head does not fit ``tile`` (``T`` past
    ``tile.block_m``, ``head_dim`` past 64), ``tile`` is None, or ``T`` is symbolic (a traced
    dynamic sequence length: the rows are a constexpr, and the two kernels take any ``T`` without
    specialising it)."""
    if tile is None or head_dim > 64 or not isinstance(T, int):
        return 0
    rows = max(16, next_power_of_2(T))
    return rows if rows <= tile.block_m else 0


def dense_last(t: torch.Tensor) -> torch.Tensor:
    """The kernels address the head dimension with unit stride: copy a tensor that lacks it."""
    return t if t.stride(-1) == 1 else t.contiguous()


def strides_bht(t: torch.Tensor) -> tuple[int, int, int]:
    """``(batch, head, token)`` strides of a ``[B, H, T, D]`` tensor whose last dimension is dense."""
    return t.stride(0), t.stride(1), t.stride(2)


def empty_token_major(like: torch.Tensor) -> torch.Tensor:
    """An uninitialised ``[B, H, T, D]`` tensor stored ``[B, T, H, D]`` (the heads merge for free)."""
    B, H, T, D = like.shape
    return like.new_empty((B, T, H, D)).transpose(1, 2)


def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    *,
    tile: AttnTile = FWD_TILE,
    run=launch,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(scale * q kᵀ) v`` and its base-2 log-sum-exp.

    Args:
        q, k, v: ``[B, H, T, D]``, any strides with a dense last dimension, one dtype (fp16/bf16).
        scale: the logits' factor.
    Returns:
        ``o`` ``[B, H, T, D]`` (a view of a ``[B, T, H, D]`` buffer) and ``lse`` ``[B, H, T]`` fp32.
    """
    q, k, v = dense_last(q), dense_last(k), dense_last(v)
    B, H, T, D = q.shape
    bm = tile.block_m
    o = empty_token_major(q)
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    if o.numel() == 0:
        return o, lse
    scalars = (*strides_bht(q), *strides_bht(k), *strides_bht(v), *strides_bht(o), H, T, scale * LOG2E)
    run_kernel(run, _attn_fwd, cdiv(T, bm), B * H, (q, k, v, o, lse), scalars, D, tile)
    return o, lse


def attention_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    *,
    dq_tile: AttnTile = DQ_TILE,
    dkdv_tile: AttnTile = DKDV_TILE,
    head_tile: AttnTile | None = HEAD_TILE,
    out: torch.Tensor | None = None,
    run=launch,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of :func:`attention_fwd`'s ``o`` w.r.t. q, k and v.

    Where a head's query rows fit one program (:func:`head_rows`: ``T`` up to ``head_tile.block_m``
    and ``D`` up to 64), one kernel, ``_attn_bwd_head``, computes all three per head; otherwise (or
    with ``head_tile=None``) ``_attn_bwd_dq`` and then ``_attn_bwd_dkdv`` do, with ``dq_tile`` and
    ``dkdv_tile``.

    Args:
        do: ``[B, H, T, D]``, the gradient of ``o`` (any strides with a dense last dimension).
        q, k, v, o, lse: the forward's inputs and outputs.
        out: a contiguous ``[B, T, 3*H*D]`` buffer in q's dtype (a ``dqkv``) to write dq, dk and dv
            into, as its q, k and v parts (:func:`~flopkit.kernels._rope_triton.qkv_heads`);
            default new buffers. The kernels take the buffer itself and element offsets, never
            views of it: a traced launch reads the strides once, at trace time, and a compiled
            vit5-base step whose kernels mutated the head views hit an illegal memory access on an
            H100 (docs/kernels.md).
    Returns:
        ``dq, dk, dv`` ``[B, H, T, D]``: the head views of ``out``, or views of ``[B, T, H, D]``
        buffers, in q's dtype.
    """
    do, q, k, v = dense_last(do), dense_last(q), dense_last(k), dense_last(v)
    B, H, T, D = q.shape
    if out is None:
        dq, dk, dv = empty_token_major(q), empty_token_major(k), empty_token_major(v)
        buffers, offsets = (dq, dk, dv), (0, 0, 0)
    else:
        if out.shape != (B, T, 3 * H * D) or out.dtype != q.dtype or not out.is_contiguous():
            raise ValueError(
                f"attention_bwd: out must be a contiguous {(B, T, 3 * H * D)} {q.dtype} buffer, got "
                f"{tuple(out.shape)} {out.dtype} (contiguous: {out.is_contiguous()})"
            )
        dq, dk, dv = qkv_heads(out, H)  # for their strides, and the return value
        buffers, offsets = (out, out, out), (0, H * D, 2 * H * D)
    if dq.numel() == 0:
        return dq, dk, dv
    qk_scale = scale * LOG2E
    strides = (*strides_bht(q), *strides_bht(k), *strides_bht(v))
    tail = (H, T, qk_scale, scale)
    rows = head_rows(T, D, head_tile)
    if rows:
        grads = (*strides_bht(dq), *strides_bht(dk), *strides_bht(dv), *offsets)
        scalars = (*strides, *strides_bht(o), *strides_bht(do), *grads, *tail)
        # Packed: DK and DV are placeholders (the kernel addresses dk and dv in DQ).
        rest = (lse, lse) if out is not None else buffers[1:]
        tensors = (q, k, v, o, do, lse, buffers[0], *rest)
        run_kernel(
            run, _attn_bwd_head, 1, B * H, tensors, scalars, D, head_tile, ROWS=rows, PACKED=out is not None
        )
        return dq, dk, dv
    delta = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    scalars = (*strides, *strides_bht(o), *strides_bht(do), *strides_bht(dq), offsets[0], *tail)
    tensors = (q, k, v, o, do, lse, delta, buffers[0])
    run_kernel(run, _attn_bwd_dq, cdiv(T, dq_tile.block_m), B * H, tensors, scalars, D, dq_tile)
    scalars = (*strides, *strides_bht(do), *strides_bht(dk), *strides_bht(dv), *offsets[1:], *tail)
    # Packed: DV is a placeholder (the kernel addresses dv in DK), so the buffer is passed once.
    tensors = (q, k, v, do, lse, delta, buffers[1], lse if out is not None else buffers[2])
    blocks = cdiv(T, dkdv_tile.block_n)
    run_kernel(run, _attn_bwd_dkdv, blocks, B * H, tensors, scalars, D, dkdv_tile, PACKED=out is not None)
    return dq, dk, dv


def qk_norm_rope_attention_fwd(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    num_heads: int,
    eps: float,
    pairing: str,
    norm: bool,
    scale: float,
    *,
    run=launch,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """QK-norm + RoPE (``_rope_triton``'s forward kernel), then :func:`attention_fwd` with v a view
    of ``qkv``.

    Args:
        qkv: ``[B, T, 3*H*D]``; cos, sin ``[T, D]``; the weights ``(D,)``, ``(H, D)`` or None; as
            :func:`~flopkit.kernels.qk_norm_rope`.
    Returns:
        ``o`` ``[B, H, T, D]`` and ``lse`` as :func:`attention_fwd`, and the normalised, rotated
        q and k ``[B, H, T, D]`` the backward reads.
    """
    if QK_FUSED_FWD and fuses_qk(qkv, num_heads):
        return qk_attention_fwd_fused(
            qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm, scale, run=run
        )
    q, k = qk_norm_rope_fwd(qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm, run=run)
    o, lse = attention_fwd(q, k, qkv_heads(qkv, num_heads)[2], scale, run=run)
    return o, lse, q, k


def fuses_qk(qkv: torch.Tensor, num_heads: int) -> bool:
    """Whether :func:`_attn_fwd_qk` takes ``qkv`` ``[B, T, 3*H*D]``: half precision, unit channel
    stride, a power-of-two head dimension of at least 16, and :data:`QK_FWD_TILE` without a tail."""
    D = qkv.shape[-1] // (3 * num_heads)
    return (
        qkv.dtype in (torch.float16, torch.bfloat16)
        and qkv.stride(-1) == 1
        and D >= 16
        and D & (D - 1) == 0
        and QK_FWD_TILE.tail == 0
    )


def qk_attention_fwd_fused(
    qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm, scale, *, tile=None, run=launch
):
    """:func:`qk_norm_rope_attention_fwd`'s outputs from the one kernel :func:`_attn_fwd_qk`, at
    ``tile`` (default :data:`QK_FWD_TILE`; no tail), for a ``qkv`` that :func:`fuses_qk` takes."""
    tile = tile or QK_FWD_TILE
    if tile.tail:
        raise ValueError(
            f"qk_attention_fwd_fused: {tile} has tail={tile.tail}; _attn_fwd_qk takes no tail steps (0)"
        )
    B, T, three_hd = qkv.shape
    H, D = num_heads, int(three_hd // (3 * num_heads))  # a constexpr: specialises under dynamic shapes
    q, k = empty_qk(qkv, H), empty_qk(qkv, H)
    o = empty_token_major(q)
    lse = torch.empty((B, H, T), device=qkv.device, dtype=torch.float32)
    if o.numel() == 0:
        return o, lse, q, k
    has_qw, has_kw = norm and q_weight is not None, norm and k_weight is not None
    tensors = (qkv, cos, sin, q_weight if has_qw else qkv, k_weight if has_kw else qkv, q, k, o, lse)
    scalars = (
        qkv.stride(0), qkv.stride(1), *cos.stride(), *sin.stride(),
        _weight_head_stride(q_weight), _weight_head_stride(k_weight),
        *strides_bht(q), *strides_bht(k), *strides_bht(o), H, T, scale * LOG2E, eps,
    )  # fmt: skip
    run_kernel(
        run, _attn_fwd_qk, cdiv(T, tile.block_m), B * H, tensors, scalars, D, tile,
        NORM=norm, HAS_QW=has_qw, HAS_KW=has_kw, INTERLEAVED=pairing == "interleaved",
    )  # fmt: skip
    return o, lse, q, k


def qk_norm_rope_attention_bwd(
    do: torch.Tensor,
    qkv: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    num_heads: int,
    eps: float,
    pairing: str,
    norm: bool,
    scale: float,
    *,
    dq_tile: AttnTile = DQ_TILE,
    dkdv_tile: AttnTile = DKDV_TILE,
    head_tile: AttnTile | None = HEAD_TILE,
    run=launch,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of :func:`qk_norm_rope_attention_fwd`'s ``o`` in one ``dqkv`` buffer: the
    attention's backward kernels write dq, dk and dv into its q, k and v parts, and the QK-norm +
    RoPE's backward kernel then turns the q and k parts into the gradients of the raw q and k in
    place (leaving v's). The two ops write dq, dk, dv apart and the second kernel copies dv over.

    Args:
        do: ``[B, H, T, D]``; the rest: the forward's inputs and outputs.
    Returns:
        ``dqkv`` ``[B, T, 3*H*D]`` contiguous, and the weights' gradients as
        :func:`~flopkit.kernels._rope_triton.qk_norm_rope_bwd` returns them.
    """
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    attention_bwd(
        do, q, k, qkv_heads(qkv, num_heads)[2], o, lse, scale, dq_tile=dq_tile, dkdv_tile=dkdv_tile,
        head_tile=head_tile, out=dqkv, run=run,
    )  # fmt: skip
    return qk_norm_rope_bwd(
        None, None, None, qkv, cos, sin, q_weight, k_weight, num_heads, eps, pairing, norm, out=dqkv, run=run
    )


def run_kernel(
    run, kernel, blocks: int, heads: int, tensors: tuple, scalars: tuple, head_dim: int, tile: AttnTile,
    **constexprs,
):  # fmt: skip
    """``run`` (``_launch.launch`` eager, ``wrapped`` traced) one kernel over ``blocks · B·H`` programs,
    a one-dimensional grid (each kernel splits its program id into block and head); ``constexprs``:
    the kernel's own compile-time flags."""
    # Each of these is a tl.dot's K somewhere; on a GPU tl.dot takes K >= 16 (the interpreter any).
    for name in ("block_m", "block_n", "tail"):
        size = getattr(tile, name)
        if (size or name != "tail") and (size < 16 or size & (size - 1)):
            raise ValueError(
                f"{kernel.__name__}: {tile} has {name}={size}; it must be a power of two of at least 16"
                + (" (or 0, no tail steps)" if name == "tail" else "")
            )
    meta = {
        **constexprs,
        "HEAD_D": head_dim,
        "BLOCK_M": tile.block_m,
        "BLOCK_N": tile.block_n,
        "TAIL": tile.tail,
        "num_warps": tile.num_warps,
        "num_stages": tile.num_stages,
    }
    run(kernel, (blocks * heads,), tensors + scalars, meta, len(tensors))


def attention_ref(q, k, v, scale: float) -> torch.Tensor:
    """The float64 reference (tests): ``softmax(scale * q kᵀ) v``."""
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    return torch.softmax(s, -1) @ v.double()
