"""flopkit's Triton attention (``kernels/_sdpa_triton.py``) against cuDNN's SDPA at the ViT-5
attention shapes (T = 201 tokens, head_dim 64, bf16), forward and backward.

Run on the device machine from the repository root::

    python -m benchmarks.triton_attention --out $OUT [--no-sweep | --sweep forward,head,qk_forward]

vit5-small at batch 256 (6 heads) and vit5-base at batch 128 (12 heads) have the same B·H, so the
tile sweep runs at vit5-base's shape only and its best tiles are then timed at both. The tensors
are laid out as in ``ViT5Attention``: q and k token-major views (``[B, H, T, D]`` over
``[B, T, H, D]``), v a slice of the fused qkv activation, the output's gradient a ``[B, T, C]``
buffer. Rows:

- cuDNN: ``F.scaled_dot_product_attention`` (PyTorch picks cuDNN on the H100), forward alone and
  forward + backward through autograd; its backward includes its side kernels.
- Triton: the forward, the backward (one kernel per head, ``_attn_bwd_head``, where T = 201 fits
  it), the backward's two kernels (``head_tile=None``), the atomic-dq variant below, and forward +
  backward called directly.
- QK-norm + RoPE's backward (a shared ``(D,)`` weight, split_half): the two ops' backward
  (``attention_bwd`` into dq, dk, dv buffers, then ``_rope_triton``'s kernel reading all three and
  writing the gradient of qkv) against ``qk_norm_rope_attention_bwd`` (the same kernels, the
  attention's writing into the gradient of qkv and the QK-norm + RoPE's running in place on its q
  and k parts), and the relative difference of their results (0: the same values).
- The one op's forward: QK-norm + RoPE's kernel then the attention's, against the opt-in
  ``_attn_fwd_qk`` (QK-norm + RoPE inside the forward) at ``QK_FWD_TILE`` or the ``qk_forward``
  sweep's best, and the relative difference of their outputs.

Each output is also compared with cuDNN's (relative Frobenius error) and with a float64 reference
on the first batch entry. Timings are ``triton.testing.do_bench`` medians (L2 flushed between
repeats). Writes ``triton_attention_DEVICE.json`` and ``.md`` under ``--out``.
"""

# ruff: noqa: B023

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from flopkit.kernels._launch import launch
from flopkit.kernels._rope_triton import qk_norm_rope_bwd, qk_norm_rope_fwd, qkv_heads
from flopkit.kernels._sdpa_triton import (
    DKDV_TILE,
    DQ_TILE,
    FWD_TILE,
    HEAD_TILE,
    LOG2E,
    QK_FWD_TILE,
    AttnTile,
    _head_index,
    _head_rows_in,
    _program,
    _tile,
    attention_bwd,
    attention_fwd,
    attention_ref,
    dense_last,
    empty_token_major,
    head_rows,
    qk_attention_fwd_fused,
    qk_norm_rope_attention_bwd,
    qk_norm_rope_attention_fwd,
    run_kernel,
    strides_bht,
)

from benchmarks._harness import device_ms, out_default, write_results

SHAPES = {"vit5-small b256": (256, 6), "vit5-base b128": (128, 12)}
T, D = 201, 64
ATOMIC_TILE = AttnTile(32, 64, 4, 1)  # the best of the atomic variant's sweep (results/triton_attention_h100)


# The backward as one kernel (tried, slower than the two kernels flopkit ships; kept for the comparison).
@triton.jit
def _attn_bwd_atomic(
    Q, K, V, O, DO, LSE, DK, DV, DQ32,
    s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot, s_gb, s_gh, s_gt,
    s_dkb, s_dkh, s_dkt, s_dvb, s_dvh, s_dvt,
    H, T, qk_scale, scale,
    HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TAIL: tl.constexpr,
):  # fmt: skip
    """One pass (no tail steps: ``TAIL``, from ``run_kernel``'s tile, is 0): per key block, dk and dv as ``_attn_bwd_dkdv``, and each query block's share of
    ``dq`` added (fp32 atomics) into ``DQ32`` ``[B, T, H, D]``, zeroed by the caller. ``delta`` is
    computed in place from ``o`` and ``do``."""
    qk_scale = tl.cast(qk_scale, tl.float32)
    pid_n, bh, b, h = _program(T, H, BLOCK_N)
    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows0 = tl.arange(0, BLOCK_M)
    d = tl.arange(0, HEAD_D)
    key_ok = keys < T
    k = _tile(K + b * s_kb + h * s_kh, keys, s_kt, d, key_ok)
    v = _tile(V + b * s_vb + h * s_vh, keys, s_vt, d, key_ok)
    q_base = Q + b * s_qb + h * s_qh
    o_base = O + b * s_ob + h * s_oh
    do_base = DO + b * s_gb + h * s_gh
    dq_base = DQ32 + b * T * H * HEAD_D + h * HEAD_D
    stats = bh.to(tl.int64) * T
    dk = tl.zeros([BLOCK_N, HEAD_D], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_D], tl.float32)
    for start in range(0, T, BLOCK_M):
        rows = start + rows0
        row_ok = rows < T
        q = _tile(q_base, rows, s_qt, d, row_ok)
        do = _tile(do_base, rows, s_gt, d, row_ok)
        o = _tile(o_base, rows, s_ot, d, row_ok)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        lse = tl.load(LSE + stats + rows, mask=row_ok, other=float("inf"))
        st = tl.dot(k, tl.trans(q)) * qk_scale
        pt = tl.exp2(st - lse[None, :])
        dv = tl.dot(pt.to(do.dtype), do, dv)
        dpt = tl.dot(v, tl.trans(do))
        dst = pt * (dpt - delta[None, :])
        ds_in = dst.to(q.dtype)
        dk = tl.dot(ds_in, q, dk)
        dq = (tl.dot(tl.trans(ds_in), k) * scale).to(tl.float32)
        tl.atomic_add(
            dq_base + rows[:, None] * (H * HEAD_D) + d[None, :], dq, mask=row_ok[:, None], sem="relaxed"
        )
    dk_ptrs = DK + b * s_dkb + h * s_dkh + keys[:, None] * s_dkt + d[None, :]
    tl.store(dk_ptrs, (dk * tl.cast(scale, tl.float32)).to(DK.dtype.element_ty), mask=key_ok[:, None])
    dv_ptrs = DV + b * s_dvb + h * s_dvh + keys[:, None] * s_dvt + d[None, :]
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=key_ok[:, None])


def attention_bwd_atomic(do, q, k, v, o, lse, scale: float, *, tile: AttnTile = ATOMIC_TILE):
    """:func:`attention_bwd`'s gradients from one kernel that adds ``dq`` with fp32 atomics into a
    zeroed ``[B, T, H, D]`` buffer, then rounds it to q's dtype."""
    do, q, k, v = dense_last(do), dense_last(q), dense_last(k), dense_last(v)
    B, H, T_, D_ = q.shape
    dq, dk, dv = empty_token_major(q), empty_token_major(k), empty_token_major(v)
    dq32 = torch.zeros((B, T_, H, D_), device=q.device, dtype=torch.float32)
    strides = (*strides_bht(q), *strides_bht(k), *strides_bht(v), *strides_bht(o), *strides_bht(do))
    scalars = (*strides, *strides_bht(dk), *strides_bht(dv), H, T_, scale * LOG2E, scale)
    tensors = (q, k, v, o, do, lse, dk, dv, dq32)
    run_kernel(launch, _attn_bwd_atomic, triton.cdiv(T_, tile.block_n), B * H, tensors, scalars, D_, tile)
    return dq.copy_(dq32.transpose(1, 2)), dk, dv


# One program per head in the transposed form (FlashAttention-2's dk/dv loop order): each key step
# computes sᵀ = k qᵀ ([keys, rows]), so pᵀ and dsᵀ enter the dv and dk products as they are and only
# dq's product takes a transpose (dsᵀ)ᵀ, where _attn_bwd_head transposes p and ds for dv and dk.
# A candidate against the shipped kernel (the "head_t" sweep); not shipped unless it wins.
@triton.jit
def _head_t_keys(q, do, lse, delta, k_base, v_base, dk_base, dv_base, s_kt, s_vt, s_dkt, s_dvt,
                 start, stop, T, qk_scale, scale, dq, d, STEP: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    for k0 in range(start, stop, STEP):
        keys = k0 + tl.arange(0, STEP)
        key_ok = keys < T
        k = _tile(k_base, keys, s_kt, d, key_ok)
        v = _tile(v_base, keys, s_vt, d, key_ok)
        st = tl.dot(k, tl.trans(q)) * qk_scale  # [STEP, ROWS]
        pt = tl.exp2(st - lse[None, :])
        if MASKED:  # keys past T: their k is 0, so their logits are 0, not -inf
            pt = tl.where(key_ok[:, None], pt, 0.0)
        dpt = tl.dot(v, tl.trans(do))
        dst = (pt * (dpt - delta[None, :])).to(q.dtype)
        dv = tl.dot(pt.to(do.dtype), do)  # [STEP, D]
        dk = tl.dot(dst, q)
        dq = tl.dot(tl.trans(dst), k, dq)
        tl.store(dk_base + keys[:, None] * s_dkt + d[None, :], (dk * scale).to(dk_base.dtype.element_ty),
                 mask=key_ok[:, None])  # fmt: skip
        tl.store(dv_base + keys[:, None] * s_dvt + d[None, :], dv.to(dv_base.dtype.element_ty),
                 mask=key_ok[:, None])  # fmt: skip
    return dq


@triton.jit
def _attn_bwd_head_t(
    Q, K, V, O, DO, LSE, DQ, DK, DV,
    s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot, s_gb, s_gh, s_gt,
    s_dqb, s_dqh, s_dqt, s_dkb, s_dkh, s_dkt, s_dvb, s_dvh, s_dvt,
    H, T, qk_scale, scale,
    HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TAIL: tl.constexpr,
    ROWS: tl.constexpr,
):  # fmt: skip
    """``_attn_bwd_head`` (one program per head, separate dq, dk and dv buffers) in the transposed
    form above."""
    qk_scale = tl.cast(qk_scale, tl.float32)
    scale = tl.cast(scale, tl.float32)
    bh, b, h, rows, d, row_ok = _head_index(H, T, HEAD_D, ROWS)
    q, do, delta, lse = _head_rows_in(
        Q, O, DO, LSE, s_qb, s_qh, s_qt, s_ob, s_oh, s_ot, s_gb, s_gh, s_gt, bh, b, h, rows, d, row_ok, T
    )
    dq = tl.zeros([ROWS, HEAD_D], tl.float32)
    kv = (K + b * s_kb + h * s_kh, V + b * s_vb + h * s_vh)
    grads = (DK + b * s_dkb + h * s_dkh, DV + b * s_dvb + h * s_dvh, s_kt, s_vt, s_dkt, s_dvt)
    if TAIL:
        full = T - T % BLOCK_N
        dq = _head_t_keys(q, do, lse, delta, *kv, *grads, 0, full, T, qk_scale, scale, dq, d, BLOCK_N, False)
        dq = _head_t_keys(q, do, lse, delta, *kv, *grads, full, T, T, qk_scale, scale, dq, d, TAIL, True)
    else:
        dq = _head_t_keys(q, do, lse, delta, *kv, *grads, 0, T, T, qk_scale, scale, dq, d, BLOCK_N, True)
    dq_ptrs = DQ + b * s_dqb + h * s_dqh + rows[:, None] * s_dqt + d[None, :]
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


def attention_bwd_head_t(do, q, k, v, o, lse, scale: float, *, tile: AttnTile = HEAD_TILE):
    """:func:`attention_bwd`'s gradients from ``_attn_bwd_head_t``, into new ``[B, T, H, D]``
    buffers (as ``[B, H, T, D]`` views). The head must fit ``tile`` (:func:`head_rows`)."""
    do, q, k, v = dense_last(do), dense_last(q), dense_last(k), dense_last(v)
    B, H, T_, D_ = q.shape
    rows = head_rows(T_, D_, tile)
    if not rows:
        raise ValueError(f"attention_bwd_head_t: a {T_}-token head of dim {D_} does not fit {tile}")
    dq, dk, dv = empty_token_major(q), empty_token_major(k), empty_token_major(v)
    strides = (*strides_bht(q), *strides_bht(k), *strides_bht(v), *strides_bht(o), *strides_bht(do))
    scalars = (*strides, *strides_bht(dq), *strides_bht(dk), *strides_bht(dv), H, T_, scale * LOG2E, scale)
    tensors = (q, k, v, o, do, lse, dq, dk, dv)
    run_kernel(launch, _attn_bwd_head_t, 1, B * H, tensors, scalars, D_, tile, ROWS=rows)
    return dq, dk, dv


def ms(fn) -> float:
    return device_ms(fn, warmup_ms=25, rep_ms=100)


def tensors(B: int, H: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, device="cuda", generator=g).to(torch.bfloat16)

    q, k = (randn(B, T, H, D).transpose(1, 2) for _ in range(2))
    v = randn(B, T, 3 * H * D)[..., 2 * H * D :].unflatten(-1, (H, D)).transpose(1, 2)
    do = randn(B, T, H, D).transpose(1, 2)
    return q, k, v, do


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


# The sweep: (block_m, block_n, warps, stages, tail) per kernel, each tile with tail steps (16 at
# T = 201: 208 tokens a side) and, for the best-known blocks, without (the last block padded to 256).
SWEEP = {
    "forward": [
        *(AttnTile(64, 64, 4, s, tail) for s in (2, 3) for tail in (0, 16)),
        *(AttnTile(128, 64, 8, 3, tail) for tail in (0, 16)),
        AttnTile(128, 128, 8, 3, 16),
        # Wider key steps (ptxas for sm_90a, Triton 3.6, arguments specialised as at a launch: 182,
        # 188, 186 and 255 registers, no spills).
        *(AttnTile(64, 128, 4, s, 0) for s in (2, 3)),
        AttnTile(128, 128, 8, 2, 0),
        AttnTile(64, 256, 8, 1, 0),
    ],
    "dq": [
        *(AttnTile(64, 64, 4, s, tail) for s in (1, 2) for tail in (0, 16)),
        AttnTile(64, 32, 4, 2, 16),
        AttnTile(128, 64, 8, 2, 16),
    ],
    "dkdv": [
        *(AttnTile(bm, 64, 4, 1, tail) for bm in (32, 64) for tail in (0, 16)),
        AttnTile(64, 64, 4, 2, 16),
        AttnTile(32, 128, 8, 1, 16),
    ],
    # One program per head (block_m: the most rows it holds); warps and keys per step set the
    # registers (8 warps: 255 a thread; 16 warps: 128).
    "head": [
        *(AttnTile(256, bn, w, 1, 16) for bn in (32, 64) for w in (8, 16)),
        AttnTile(256, 16, 8, 1, 0),
        # By ptxas for sm_90a (Triton 3.6, arguments specialised as at a launch), every tile here
        # holds 255 registers a thread but (256, 32, 8, 1, 0): 178. The shipped 16-key tail spills
        # 72 bytes and takes 168 KiB of shared memory; 64-key steps with the last padded (256 keys)
        # 16 bytes and 104 KiB, pipelined over two stages 32 bytes and 128 KiB; a 32-key tail 52
        # bytes and 168 KiB.
        *(AttnTile(256, 64, 8, s, 0) for s in (1, 2)),
        AttnTile(256, 64, 8, 1, 32),
        AttnTile(256, 64, 8, 2, 16),
        AttnTile(256, 32, 8, 1, 0),
        AttnTile(256, 32, 8, 2, 16),
        AttnTile(256, 32, 16, 2, 16),
    ],
    # The opt-in forward with QK-norm + RoPE inside (_attn_fwd_qk, qk_forward below; no tails). By
    # ptxas for sm_90a (Triton 3.6): (128, 32, 8, 3), (128, 32, 8, 2) and (64, 16, 4, 3) hold 255
    # registers without spills; (128, 16, 8, 3) spills 8 bytes, (64, 64, 8, 3) 28, (64, 32, 4, 3) 64,
    # (128, 64, 8, 3) 124, (64, 64, 4, 3) 800 and (256, 32, 8, 2) 1,004.
    "qk_forward": [
        AttnTile(128, 32, 8, 3, 0),
        AttnTile(128, 32, 8, 2, 0),
        AttnTile(128, 16, 8, 3, 0),
        AttnTile(64, 64, 8, 3, 0),
        AttnTile(64, 32, 4, 3, 0),
        AttnTile(64, 16, 4, 3, 0),
        AttnTile(128, 64, 8, 3, 0),
        AttnTile(64, 64, 4, 3, 0),
    ],
    # The transposed form (_attn_bwd_head_t): the shipped head tile and its neighbours; 128 keys a
    # step give each warpgroup a 64-key half of sᵀ's rows.
    "head_t": [
        AttnTile(256, 64, 8, 1, 16),
        AttnTile(256, 64, 8, 1, 0),
        AttnTile(256, 64, 8, 2, 16),
        AttnTile(256, 32, 8, 1, 16),
        AttnTile(256, 32, 4, 1, 16),
        AttnTile(256, 128, 8, 1, 16),
        AttnTile(256, 64, 16, 1, 16),
    ],
}


def sweep(q, k, v, do, scale, kernels=tuple(SWEEP)) -> list[dict]:
    """The tiles of :data:`SWEEP` of each of ``kernels`` at vit5-base's shape, the other kernels at
    their defaults (the dq and dkdv rows time the whole backward)."""
    rows = []
    o, lse = attention_fwd(q, k, v, scale)
    two = {"head_tile": None}
    calls = {
        "forward": lambda t: attention_fwd(q, k, v, scale, tile=t),
        "dq": lambda t: attention_bwd(do, q, k, v, o, lse, scale, dq_tile=t, **two),
        "dkdv": lambda t: attention_bwd(do, q, k, v, o, lse, scale, dkdv_tile=t, **two),
        "head": lambda t: attention_bwd(do, q, k, v, o, lse, scale, head_tile=t),
        "head_t": lambda t: attention_bwd_head_t(do, q, k, v, o, lse, scale, tile=t),
    }
    shipped = attention_bwd(do, q, k, v, o, lse, scale)
    for kernel in kernels:
        for t in SWEEP[kernel]:
            rows.append(_timed(kernel, t, lambda t=t, kernel=kernel: calls[kernel](t), shipped))
    return rows


def _timed(kernel: str, tile: AttnTile, fn, shipped=None) -> dict:
    """A sweep row: ``fn``'s time, and where it is not the attention forward (a backward's dq, dk
    and dv; the fused forward's o, lse, q and k) and ``shipped`` is given, the relative difference
    of each of its results from ``shipped``'s."""
    row = {"kernel": kernel, "tile": list(tile)}
    try:
        out = fn()
        if shipped is not None and kernel not in ("forward",):
            row["rel_vs_shipped"] = [rel(a, b) for a, b in zip(out, shipped, strict=True)]
        row["ms"] = ms(fn)
    except Exception as e:  # a tile that does not fit (shared memory, registers)
        row["error"] = repr(e)[:160]
    return row


def _qk_inputs(B: int, H: int, seed: int):
    """One qkv activation ``[B, T, 3HD]`` (bf16) and the QK-norm + RoPE arguments after it (random
    tables, a shared ``(D,)`` weight, split_half), and the generator that made them."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(B, T, 3 * H * D, device="cuda", generator=g).to(torch.bfloat16)
    cos, sin = (torch.randn(T, D, device="cuda", generator=g) for _ in range(2))
    w = 1 + 0.1 * torch.randn(D, device="cuda", generator=g)
    return g, qkv, (cos, sin, w, w, H, 1e-6, "split_half", True)


def qk_backward(B: int, H: int, scale: float, tiles: dict) -> dict:
    """The QK-norm + RoPE's backward two ways (module docstring) on one qkv activation ``[B, T, 3HD]``."""
    g, qkv, args = _qk_inputs(B, H, seed=1)
    o, lse, q, k = qk_norm_rope_attention_fwd(qkv, *args, scale)
    do = torch.randn(B, T, H, D, device="cuda", generator=g).to(torch.bfloat16).transpose(1, 2)
    v = qkv_heads(qkv, H)[2]
    bwd_tiles = {"dq_tile": tiles["dq"], "dkdv_tile": tiles["dkdv"], "head_tile": tiles["head"]}

    def two_ops():
        dq, dk, dv = attention_bwd(do, q, k, v, o, lse, scale, **bwd_tiles)
        return qk_norm_rope_bwd(dq, dk, dv, qkv, *args)

    def one_op():
        return qk_norm_rope_attention_bwd(do, qkv, q, k, o, lse, *args, scale, **bwd_tiles)

    return {
        "qk_two_ops_backward_ms": ms(two_ops),
        "qk_one_op_backward_ms": ms(one_op),
        "qk_one_op_vs_two_ops": [rel(a, b) for a, b in zip(one_op(), two_ops(), strict=True)],
    }


def qk_forward(B: int, H: int, scale: float, tiles: dict, fused_tiles) -> dict:
    """The one op's forward two ways on one qkv activation ``[B, T, 3HD]`` (a shared ``(D,)``
    weight, split_half): the QK-norm + RoPE kernel then the attention forward at ``tiles["forward"]``,
    against ``_attn_fwd_qk`` (QK-norm + RoPE inside the forward) at each of ``fused_tiles``, each
    with its output's relative difference from the two kernels' (0 at the same tile: the same
    values; else the key steps' rounding) in ``rel_vs_shipped``, for ``(o, lse, q, k)``."""
    _, qkv, args = _qk_inputs(B, H, seed=2)

    def two_kernels():
        q, k = qk_norm_rope_fwd(qkv, *args)
        return (*attention_fwd(q, k, qkv_heads(qkv, H)[2], scale, tile=tiles["forward"]), q, k)

    want = two_kernels()
    fused = [
        _timed(
            "qk_forward", tile, lambda tile=tile: qk_attention_fwd_fused(qkv, *args, scale, tile=tile), want
        )
        for tile in fused_tiles
    ]
    return {"qk_two_kernels_forward_ms": ms(two_kernels), "qk_fused_forward": fused}


def best(rows: list[dict], kernel: str) -> tuple[AttnTile, float]:
    ok = [r for r in rows if r["kernel"] == kernel and "ms" in r]
    r = min(ok, key=lambda r: r["ms"])
    return AttnTile(*r["tile"]), r["ms"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=out_default())
    ap.add_argument("--no-sweep", action="store_true", help="time the committed tiles only")
    ap.add_argument(
        "--sweep",
        default=",".join(SWEEP),
        help=f"comma list of the kernels to sweep ({', '.join(SWEEP)}); the others keep their tiles",
    )
    args = ap.parse_args()
    scale = D**-0.5
    res: dict = {"T": T, "D": D}
    tiles = {"forward": FWD_TILE, "dq": DQ_TILE, "dkdv": DKDV_TILE, "head": HEAD_TILE, "atomic": ATOMIC_TILE}
    tiles["qk_forward"] = QK_FWD_TILE
    if not args.no_sweep:
        q, k, v, do = tensors(*SHAPES["vit5-base b128"])
        # The dq sweep times the whole backward with each dq tile (dkdv at its default) and the
        # other way round: subtract the fixed kernel's share when comparing across kernels.
        swept = [name for name in args.sweep.split(",") if name]
        unknown = [name for name in swept if name not in SWEEP]
        if unknown:
            ap.error(f"--sweep: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(SWEEP)}")
        attention = [name for name in swept if name != "qk_forward"]
        res["sweep"] = rows = sweep(q, k, v, do, scale, attention)
        tiles |= {name: best(rows, name)[0] for name in attention}
        if "qk_forward" in swept:
            fused = qk_forward(*SHAPES["vit5-base b128"], scale, tiles, SWEEP["qk_forward"])
            rows += fused["qk_fused_forward"]
            tiles["qk_forward"] = best(rows, "qk_forward")[0]
    res["tiles"] = {name: list(t) for name, t in tiles.items()}
    res["rows"] = out_rows = []
    for shape, (B, H) in SHAPES.items():
        q, k, v, do = tensors(B, H)
        q.requires_grad_()
        k.requires_grad_()
        v.requires_grad_()

        def sdpa_fwd():
            return F.scaled_dot_product_attention(q, k, v, scale=scale)

        def sdpa_fwd_bwd():
            q.grad = k.grad = v.grad = None
            sdpa_fwd().backward(do)

        o, lse = attention_fwd(q.detach(), k.detach(), v.detach(), scale, tile=tiles["forward"])

        def tri_fwd():
            return attention_fwd(q.detach(), k.detach(), v.detach(), scale, tile=tiles["forward"])

        def tri_bwd(o=o, lse=lse, head_tile=tiles["head"]):
            q_, k_, v_ = q.detach(), k.detach(), v.detach()
            return attention_bwd(
                do,
                q_,
                k_,
                v_,
                o,
                lse,
                scale,
                dq_tile=tiles["dq"],
                dkdv_tile=tiles["dkdv"],
                head_tile=head_tile,
            )

        def tri_bwd_two():
            return tri_bwd(head_tile=None)

        def tri_bwd_atomic():
            return attention_bwd_atomic(
                do, q.detach(), k.detach(), v.detach(), o, lse, scale, tile=tiles["atomic"]
            )

        def tri_fwd_bwd():
            return tri_bwd(*tri_fwd())

        sdpa_fwd_bwd()
        ref_o = sdpa_fwd().detach()
        ref_grads = (q.grad, k.grad, v.grad)
        grads = tri_bwd()
        grads_atomic = tri_bwd_atomic()
        grads_two = tri_bwd_two()
        # float64 reference on batch entry 0
        q0, k0, v0 = (t.detach()[:1].double().requires_grad_() for t in (q, k, v))
        o64 = attention_ref(q0, k0, v0, scale)
        o64.backward(do[:1].double())
        row = {
            "shape": shape,
            "cudnn_forward_ms": ms(sdpa_fwd),
            "cudnn_forward_backward_ms": ms(sdpa_fwd_bwd),
            "triton_forward_ms": ms(tri_fwd),
            "triton_backward_ms": ms(tri_bwd),
            "triton_forward_backward_ms": ms(tri_fwd_bwd),
            "triton_backward_two_kernels_ms": ms(tri_bwd_two),
            "triton_backward_atomic_ms": ms(tri_bwd_atomic),
            "atomic_vs_two_kernel": [rel(a, b) for a, b in zip(grads_atomic, grads_two, strict=True)],
            "head_vs_two_kernel": [rel(a, b) for a, b in zip(grads, grads_two, strict=True)],
            "o_vs_cudnn": rel(o, ref_o),
            "o_err_f64": {"triton": rel(o[:1], o64), "cudnn": rel(ref_o[:1], o64)},
        }
        for name, a, b, g64 in zip(
            ("dq", "dk", "dv"), grads, ref_grads, (q0.grad, k0.grad, v0.grad), strict=True
        ):
            row[f"{name}_vs_cudnn"] = rel(a, b)
            row[f"{name}_err_f64"] = {"triton": rel(a[:1], g64), "cudnn": rel(b[:1], g64)}
        row |= qk_backward(B, H, scale, tiles)
        row |= qk_forward(B, H, scale, tiles, [tiles["qk_forward"]])
        out_rows.append(row)
    lines = [
        f"T = {T}, head_dim {D}, bf16; tiles (block_m, block_n, warps, stages, tail): "
        + ", ".join(f"{n} {tuple(t)}" for n, t in res["tiles"].items()),
        "",
        "| shape | cuDNN fwd | cuDNN fwd+bwd | Triton fwd | Triton bwd | Triton bwd (dq, dkdv) "
        "| Triton bwd (atomic dq) | Triton fwd+bwd | fwd+bwd vs cuDNN |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out_rows:
        lines.append(
            f"| {r['shape']} | {r['cudnn_forward_ms']:.4f} | {r['cudnn_forward_backward_ms']:.4f} | "
            f"{r['triton_forward_ms']:.4f} | {r['triton_backward_ms']:.4f} | "
            f"{r['triton_backward_two_kernels_ms']:.4f} | {r['triton_backward_atomic_ms']:.4f} | "
            f"{r['triton_forward_backward_ms']:.4f} | "
            f"{r['cudnn_forward_backward_ms'] / r['triton_forward_backward_ms']:.2f}x |"
        )
    lines += [
        "",
        "| shape | tensor | vs cuDNN | Triton vs float64 | cuDNN vs float64 |",
        "|---|---|---:|---:|---:|",
    ]
    for r in out_rows:
        for name in ("o", "dq", "dk", "dv"):
            e = r[f"{name}_err_f64"]
            lines.append(
                f"| {r['shape']} | {name} | {r[f'{name}_vs_cudnn']:.1e} | {e['triton']:.1e} | {e['cudnn']:.1e} |"
            )
    lines += ["", "One kernel per head against the two kernels, relative difference of dq, dk, dv:", ""]
    lines += [f"- {r['shape']}: " + ", ".join(f"{e:.1e}" for e in r["head_vs_two_kernel"]) for r in out_rows]
    lines += [
        "",
        "QK-norm + RoPE's backward after the attention's: the two ops' against the one op's (one "
        "gradient buffer, the QK-norm + RoPE's kernel in place), ms:",
        "",
        "| shape | two ops | one op | saved | rel. difference (dqkv, dw_q, dw_k) |",
        "|---|---:|---:|---:|---|",
    ]
    for r in out_rows:
        diff = ", ".join(f"{e:.1e}" for e in r["qk_one_op_vs_two_ops"])
        lines.append(
            f"| {r['shape']} | {r['qk_two_ops_backward_ms']:.4f} | {r['qk_one_op_backward_ms']:.4f} | "
            f"{r['qk_two_ops_backward_ms'] - r['qk_one_op_backward_ms']:.4f} | {diff} |"
        )
    lines += [
        "",
        "The one op's forward: QK-norm + RoPE's kernel then the attention's, against the attention "
        "forward with QK-norm + RoPE inside (_attn_fwd_qk, opt-in), ms:",
        "",
        "| shape | two kernels | fused (tile) | saved | o: rel. difference |",
        "|---|---:|---:|---:|---|",
    ]
    for r in out_rows:
        f = r["qk_fused_forward"][0]
        fused_ms = f.get("ms", float("nan"))
        lines.append(
            f"| {r['shape']} | {r['qk_two_kernels_forward_ms']:.4f} | {fused_ms:.4f} {tuple(f['tile'])} | "
            f"{r['qk_two_kernels_forward_ms'] - fused_ms:.4f} | "
            f"{f.get('rel_vs_shipped', [float('nan')])[0]:.1e}{' ' + f['error'] if 'error' in f else ''} |"
        )
    if "sweep" in res:
        lines += ["", "Sweep at vit5-base b128 (ms; dq and dkdv rows time the whole backward):", "",
                  "| kernel | tile | ms | dq, dk, dv against the shipped backward (rel.) |",
                  "|---|---|---:|---|"]  # fmt: skip
        for r in res["sweep"]:
            diff = ", ".join(f"{e:.1e}" for e in r.get("rel_vs_shipped", ())) or r.get("error", "")
            if r["kernel"] == "qk_forward" and "rel_vs_shipped" in r:  # against the two kernels'
                diff = "o, lse, q, k " + diff
            lines.append(f"| {r['kernel']} | {tuple(r['tile'])} | {r.get('ms', float('nan')):.4f} | {diff} |")
    write_results(args.out, "triton_attention", res, lines)


if __name__ == "__main__":
    main()
