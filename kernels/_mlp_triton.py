"""Triton kernels for :func:`flopkit.kernels.gelu_linear`: ``y = gelu(pre) @ Wᵀ (+ b)``, an MLP's
activation and second linear layer, with GELU's derivative stored in the forward and applied in
the backward GEMM's epilogue.

Unfused, the exact (erf) GELU and its backward move the ``[N, H]`` hidden activation six times
per step: GELU reads ``pre`` and writes ``h``; the backward GEMM writes ``dh = dy @ W``, and
``gelu_backward`` reads ``dh`` and ``pre`` and writes ``dpre``. Here the forward reads ``pre``
once and writes ``h`` and ``g = gelu'(pre)`` (:func:`_gelu_deriv_kernel`), and the backward GEMM
multiplies its fp32 accumulator by ``g`` before its only store (:func:`_dgelu_mm_kernel`): ``dh``
is never written or read. Per step that is five passes against six (the forward's extra write of
``g`` and the backward's read of it, against the write and read of ``dh`` and the read of ``pre``). Evaluating ``erf`` and ``exp`` in the GEMM's epilogue instead
(what storing ``g`` avoids) costs as much CUDA-core time per tile as the tile's tensor-core time
and lost on the H100 (``benchmarks/results/bench_mlp_epilogue_h100.md``).

Rounding: ``g`` is rounded once to ``pre``'s dtype and ``dpre = acc * g`` once to it, where
PyTorch rounds ``dh`` to the dtype and multiplies it by an fp32 ``gelu'``: one rounding of one
factor either way (docs/kernels.md gives the measured error against float64).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake

from ._dispatch import num_sms
from ._launch import cdiv, launch, program_count

__all__ = [
    "gelu_linear_forward",
    "gelu_linear_backward",
    "gelu_deriv",
    "DGELU_TILE",
    "DGELU_TMA_TILE",
    "BACKWARD_KERNEL",
    "DERIV_BLOCK",
]

DERIV_BLOCK = 2048
"""Elements per program of :func:`_gelu_deriv_kernel` (8 warps: 8 per thread)."""
DGELU_TILE = (128, 128, 64, 8, 8, 4)
"""``(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages)`` of :func:`_dgelu_mm_kernel`, one
persistent program per SM: the benchmark's pointer kernel's tile (its erf epilogue's best in the
sweep of 2026-11-23); not yet swept with this epilogue (``bench_mlp_epilogue --sweeps shipped``)."""
DGELU_TMA_TILE = (128, 256, 64, 8, 8, 3, 2, 0)
"""``(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, SUBTILE, PREFETCH)`` of
:func:`_dgelu_mm_tma_kernel`: the best of bench_mlp_epilogue's ``deriv`` sweep at vit5-base
(``benchmarks/results/bench_mlp_epilogue_h100.md``, run ``deriv_2026-12-07``: 0.249 ms).
``PREFETCH`` 0: 3 at this tile compiles without spills but has not been timed in a step (the row
that tried reran the shipped code from the compile caches; docs/kernels.md)."""
BACKWARD_KERNEL = "tma"
"""The backward GEMM where both fit: ``"tma"`` (:func:`_dgelu_mm_tma_kernel`) or ``"pointer"``
(:func:`_dgelu_mm_kernel`, which takes any strides and is the fallback)."""


@triton.jit
def _gelu_deriv_kernel(PRE, H, G, n, BLOCK: tl.constexpr):
    """``H = gelu(PRE)``, ``G = gelu'(PRE) = Φ(x) + x φ(x)`` over ``n`` contiguous elements, in fp32,
    each rounded once to its output's dtype."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(PRE + offs, mask=mask, other=0.0).to(tl.float32)
    cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
    pdf = tl.exp(-0.5 * x * x) * 0.3989422804014327
    tl.store(H + offs, (x * cdf).to(H.dtype.element_ty), mask=mask)
    tl.store(G + offs, (cdf + x * pdf).to(G.dtype.element_ty), mask=mask)


@triton.jit
def _grouped_tile(tile, grid_m, grid_n, GROUP_M: tl.constexpr):
    """``(pid_m, pid_n)`` of the ``tile``-th tile in grouped order: ``GROUP_M`` row tiles in a row
    share each column tile of ``B`` while it is in L2."""
    width = GROUP_M * grid_n
    first_m = (tile // width) * GROUP_M
    size_m = min(grid_m - first_m, GROUP_M)
    return first_m + (tile % width) % size_m, (tile % width) // size_m


@triton.jit
def _mm_pointer_tile(
    A, B, M, N, K, s_am, s_ak, s_bk, s_bn, offs_m, offs_n,
    EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """The fp32 tile ``A[offs_m, :] @ B[:, offs_n]`` by pointer loads (``A`` ``[M, K]``, ``B``
    ``[K, N]``, any strides). Rows and columns past the edge wrap around (a caller never stores
    them): unmasked loads whose offsets keep their contiguity visible to Triton, so row-major
    operands load 16 bytes at a time (a ``where`` hid it: 2-byte loads, a 4x slower GEMM)."""
    offs_k = tl.arange(0, BLOCK_K)
    am = (offs_m % M).to(tl.int64)
    bn = offs_n % N
    a_ptrs = A + am[:, None] * s_am + offs_k[None, :] * s_ak
    b_ptrs = B + offs_k[:, None] * s_bk + bn[None, :] * s_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < left, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * s_ak
        b_ptrs += BLOCK_K * s_bk
    return acc


@triton.jit
def _dgelu_mm_kernel(
    A, B, G, OUT, M, N, K, s_am, s_ak, s_bk, s_bn,
    EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """``OUT = (A @ B) * G``: ``A`` ``[M, K]`` and ``B`` ``[K, N]`` with any strides, ``G`` and
    ``OUT`` ``[M, N]`` contiguous; fp32 accumulation, one rounding. Persistent: each program walks
    the tiles ``num_programs`` apart, in groups of ``GROUP_M`` row tiles sharing a column tile of
    ``B`` in L2; the flattened loop lets one tile's epilogue overlap the next tile's first loads.
    ``PRECISION``: ``tl.dot``'s ``input_precision``, ``"ieee"`` for float32 products in full
    precision (``"tf32"`` for half inputs, where it changes nothing)."""
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), grid_m * grid_n, tl.num_programs(0), flatten=True):
        pid_m, pid_n = _grouped_tile(tile, grid_m, grid_n, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = _mm_pointer_tile(
            A,
            B,
            M,
            N,
            K,
            s_am,
            s_ak,
            s_bk,
            s_bn,
            offs_m,
            offs_n,
            EVEN_K,
            PRECISION,
            BLOCK_M,
            BLOCK_N,
            BLOCK_K,
        )
        mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        offs = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(OUT + offs, (acc * g).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _dgelu_mm_tma_kernel(
    A, B, G, OUT, M, N, K, NUM_PROGRAMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SUBTILE: tl.constexpr, PREFETCH: tl.constexpr = 0,
):  # fmt: skip
    """:func:`_dgelu_mm_kernel`'s ``OUT = (A @ B) * G`` through TMA descriptors (Hopper's bulk tile
    copies, zero-filled past the edges; asynchronous stores that overlap the next tile's loads), for
    row-major ``A`` ``[M, K]``, ``B`` ``[K, N]``, ``G`` and ``OUT`` ``[M, N]``. ``SUBTILE = 2``
    multiplies and stores the accumulator in two ``[BLOCK_M, BLOCK_N / 2]`` halves. The descriptors
    are built on the device, in global scratch from ``triton.set_allocator``'s allocator.

    ``PREFETCH``: where the epilogue's ``G`` tile is loaded. 0: after the K loop, so the tile waits
    for its load; 1: by pointer loads issued before the K loop (a load stalls a warp only where its
    registers are first read, so it lands while the tensor cores work, at the price of holding it
    in registers through the loop); 2: the same for the first half only (``SUBTILE = 2``), the
    second half loaded after the loop; 3: the first (or only) part by its descriptor before the K
    loop."""
    SUB_N: tl.constexpr = BLOCK_N // SUBTILE
    a_desc = tl.make_tensor_descriptor(A, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
    b_desc = tl.make_tensor_descriptor(B, shape=[K, N], strides=[N, 1], block_shape=[BLOCK_K, BLOCK_N])
    g_desc = tl.make_tensor_descriptor(G, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, SUB_N])
    o_desc = tl.make_tensor_descriptor(OUT, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, SUB_N])
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    for tile in tl.range(tl.program_id(0), grid_m * grid_n, NUM_PROGRAMS, flatten=True):
        pid_m, pid_n = _grouped_tile(tile, grid_m, grid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        if PREFETCH == 3:
            g0 = g_desc.load([off_m, off_n])
        elif PREFETCH:
            g0 = _g_tile(G, M, N, off_m, off_n, BLOCK_M, SUB_N)
            if PREFETCH == 1 and SUBTILE == 2:
                g1 = _g_tile(G, M, N, off_m, off_n + SUB_N, BLOCK_M, SUB_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(k_tiles):
            acc = tl.dot(a_desc.load([off_m, k * BLOCK_K]), b_desc.load([k * BLOCK_K, off_n]), acc)
        if not PREFETCH:
            g0 = g_desc.load([off_m, off_n])
        if SUBTILE == 2:
            acc0, acc1 = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, SUB_N)), (0, 2, 1)))
            o_desc.store([off_m, off_n], (acc0 * g0.to(tl.float32)).to(o_desc.dtype))
            if PREFETCH != 1:
                g1 = g_desc.load([off_m, off_n + SUB_N])
            o_desc.store([off_m, off_n + SUB_N], (acc1 * g1.to(tl.float32)).to(o_desc.dtype))
        else:
            o_desc.store([off_m, off_n], (acc * g0.to(tl.float32)).to(o_desc.dtype))


@triton.jit
def _g_tile(G, M, N, off_m, off_n, BLOCK_M: tl.constexpr, SUB_N: tl.constexpr):
    """``G[off_m : off_m + BLOCK_M, off_n : off_n + SUB_N]`` (row-major ``[M, N]``) by pointer loads,
    zero past the edges."""
    rows = off_m + tl.arange(0, BLOCK_M)
    cols = off_n + tl.arange(0, SUB_N)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    return tl.load(G + rows.to(tl.int64)[:, None] * N + cols[None, :], mask=mask, other=0.0)


def _scratch(size: int, alignment: int, stream) -> torch.Tensor:
    """The TMA kernel's global scratch (its descriptors), on the current CUDA device."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _takes_tma(a: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the TMA kernel takes ``a`` ``[M, C]`` and ``weight`` ``[C, H]``: CUDA, half inputs,
    row-major with unit inner strides and 16-byte aligned rows and bases (TMA's rules)."""
    if not a.is_cuda or a.dtype not in (torch.float16, torch.bfloat16):
        return False
    e = a.element_size()
    return (
        a.stride(1) == 1
        and a.stride(0) == a.shape[1]
        and weight.stride(1) == 1
        and weight.stride(0) == weight.shape[1]
        and (a.shape[1] * e) % 16 == 0
        and (weight.shape[1] * e) % 16 == 0
        and _aligned(a)
        and _aligned(weight)
    )


def _aligned(t: torch.Tensor) -> bool:
    """Whether ``t``'s first element is 16-byte aligned. A traced (fake) tensor has no address:
    its storage offset decides, on the assumption that its storage is aligned, as the caching
    allocator's blocks and Inductor's buffers are (the backward's ``dy`` and ``weight``)."""
    if type(t) in _PLAIN or not is_fake(t):  # eager tensors skip is_fake (about 2 µs a call)
        return t.data_ptr() % 16 == 0
    return (t.storage_offset() * t.element_size()) % 16 == 0


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def gelu_deriv(pre: torch.Tensor, *, run=launch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gelu(pre), gelu'(pre))`` for a contiguous ``pre`` of any shape, each in ``pre``'s dtype."""
    h, g = torch.empty_like(pre), torch.empty_like(pre)
    n = pre.numel()
    if n:
        run(
            _gelu_deriv_kernel,
            (cdiv(n, DERIV_BLOCK),),
            (pre, h, g, n),
            {"BLOCK": DERIV_BLOCK, "num_warps": 8},
            3,
        )
    return h, g


def gelu_linear_forward(
    pre: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, run=launch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, h, g)``: ``h = gelu(pre)`` and ``g = gelu'(pre)`` (``pre``'s shape ``[*, H]``, contiguous)
    and ``y = h @ weightᵀ + bias`` ``[*, C]`` (PyTorch's linear: cuBLAS on CUDA)."""
    h, g = gelu_deriv(pre.contiguous(), run=run)
    return torch.nn.functional.linear(h, weight, bias), h, g


def gelu_linear_backward(
    dy: torch.Tensor, weight: torch.Tensor, g: torch.Tensor, *, run=launch, kernel: str | None = None
) -> torch.Tensor:
    """``dpre = (dy @ weight) * g`` ``[*, H]`` in ``g``'s dtype, from ``dy`` ``[*, C]`` (any strides
    after flattening its leading dimensions), ``weight`` ``[C, H]`` and ``g`` ``[*, H]`` contiguous.
    ``kernel``: ``"tma"`` or ``"pointer"`` forces that GEMM (the sm90 compile check plans the TMA
    one on CPU tensors); None takes :data:`BACKWARD_KERNEL` where the TMA layout rules hold."""
    C, H = weight.shape
    a = dy.reshape(-1, C)
    M = a.shape[0]
    out = torch.empty(g.shape, dtype=g.dtype, device=g.device)
    if M == 0 or H == 0:
        return out
    if C == 0:
        return out.zero_()
    if kernel == "tma" or (kernel is None and BACKWARD_KERNEL == "tma" and _takes_tma(a, weight)):
        # Triton keeps its allocator per thread: set it here, where the backward runs on
        # autograd's thread (Inductor's launcher sets its own before each launch).
        triton.set_allocator(_scratch)
        bm, bn, bk, group_m, warps, stages, subtile, prefetch = DGELU_TMA_TILE
        programs = program_count(cdiv(M, bm) * cdiv(H, bn), num_sms(g.device))
        meta = {
            "NUM_PROGRAMS": programs, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m,
            "SUBTILE": subtile, "PREFETCH": prefetch, "num_warps": warps, "num_stages": stages,
        }  # fmt: skip
        run(_dgelu_mm_tma_kernel, (programs,), (a, weight, g, out, M, H, C), meta, 4)
        return out
    bm, bn, bk, group_m, warps, stages = DGELU_TILE
    programs = program_count(cdiv(M, bm) * cdiv(H, bn), num_sms(g.device))
    args = (a, weight, g, out, M, H, C, *a.stride(), *weight.stride())
    meta = {
        "EVEN_K": C % bk == 0, "PRECISION": "ieee" if g.dtype == torch.float32 else "tf32",
        "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m,
        "num_warps": warps, "num_stages": stages,
    }  # fmt: skip
    run(_dgelu_mm_kernel, (programs,), args, meta, 4)
    return out
