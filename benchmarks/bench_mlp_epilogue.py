"""The ViT-5 MLP with its GELU in the GEMM epilogues, against cuBLAS + elementwise kernels: the
experiment behind ``flopkit.kernels.gelu_linear`` (the ``deriv`` kind and the ``flopkit
gelu_linear`` rows are the shipped op's kernels; the other kinds lost and stay for the record).

Run on the device machine (see /work/.library/device/), from the repository root::

    python -m benchmarks.bench_mlp_epilogue --out $OUT [--no-sweep] [--sweeps shipped,deriv]
        [--shapes "vit5-small b256"]

The idea (issue 8, item 4; issue 29): ``fc2(gelu(fc1(x)))`` as cuBLAS GEMMs plus elementwise
kernels moves the ``[M, H]`` hidden activation through memory several extra times per step (GELU
reads the pre-activation and writes ``h``; backward writes ``dy @ W2`` and reads it back with the
pre-activation). A Triton GEMM that applies the exact GELU (forward) and ``* gelu'(pre)``
(backward) to its fp32 accumulator tile removes those passes; the other three GEMMs stay cuBLAS:

    forward   pre = x @ W1ᵀ;  store pre and h = gelu(pre)        (_mm_gelu_kernel, BACKWARD=False)
    backward  dpre = (dy @ W2) * gelu'(pre)                       (_mm_gelu_kernel, BACKWARD=True)

Kinds: ``pointer`` (``_mm_gelu_kernel``, pointer loads, cp.async pipelining; persistent or one
tile per program), ``tma`` (``_mm_gelu_tma_kernel``, persistent, TMA descriptors: bulk loads,
asynchronous stores that overlap the next tile; ``SUBTILE`` epilogue halves), ``tma-ws`` (the same
with Triton's Hopper warp specialization), each swept over its tiles per direction; and ``deriv``:
cuBLAS ``x @ W1ᵀ`` then one elementwise pass storing ``h`` and ``gelu'(pre)``, and a backward GEMM
whose epilogue only multiplies by the stored ``gelu'`` (``erf`` and ``exp`` per element cost a tile
as much CUDA-core time as its tensor-core time), the shipped op's kernels; ``--sweeps shipped``
sweeps the op's pointer GEMM, its fallback.

Shapes: the MLPs of bench_train.py's steps, ``M = B * 201`` tokens, bf16, bias-free: vit5-small
b256 (``M = 51456, C = 384, H = 1536``) and vit5-base b128 (``M = 25728, C = 768, H = 3072``).
Rows, each forward + backward (gradients of x, W1, W2), median of ``triton.testing.do_bench``:
``torch eager`` (cuBLAS + aten GELU), ``torch.compile`` (cuBLAS + Inductor's fused elementwise
kernels), ``flopkit gelu_linear`` (the shipped op after cuBLAS ``fc1``) and ``fused (KIND)``. Those
rows include each version's host latency (``do_bench`` times from the event before the call); the
kernel rows do not. Also each kernel alone (the TMA GEMMs without epilogue among them), a tile
sweep, each version's relative errors against float64, and the costliest kernels of each version
(profiler). Writes ``bench_mlp_epilogue_DEVICE.json`` and ``.md`` under ``--out``
(``benchmarks/_harness.py``, whose copy and matmul roofs head the tables).
"""

# ruff: noqa: B023

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from flopkit.kernels import _mlp_triton as shipped_mlp
from flopkit.kernels._mlp_triton import _grouped_tile, _mm_pointer_tile

from benchmarks._harness import ResultWriter, device_ms, out_default, run_roofs

SHAPES = {"vit5-small b256": (51456, 384, 1536), "vit5-base b128": (25728, 768, 3072)}
DT = torch.bfloat16
# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, programs per SM; 0 = one tile each)
SWEEP = [
    (128, 128, 64, 8, 8, 3, 0),
    (128, 128, 64, 8, 8, 4, 0),
    (128, 128, 64, 8, 4, 3, 0),
    (128, 128, 64, 8, 8, 2, 0),
    (128, 256, 64, 8, 8, 3, 0),
    (256, 128, 64, 8, 8, 3, 0),
    (128, 64, 64, 8, 4, 4, 0),
    (128, 128, 64, 8, 8, 3, 1),
    (128, 128, 64, 8, 8, 3, 2),
    (128, 128, 64, 8, 8, 4, 1),
    (128, 256, 64, 8, 8, 3, 1),
    (256, 128, 64, 8, 8, 3, 1),
]
# The kernel each linear_gelu_* call launches and its tiles, per direction: the sweeps set them to
# their best before the timed rows.
# A tile may carry an eighth field, the epilogue's SUBTILE (1 or 2; Triton 3.6 fails to compile 2
# under warp specialization); "tma-ws" tiles' num_warps is each consumer warp group's (the kernel
# runs 3 x num_warps warps: a producer and two consumers).
KIND = ["pointer"]
CONFIG = {
    "pointer": {"fwd": (128, 128, 64, 8, 8, 4, 1), "bwd": (128, 128, 64, 8, 8, 4, 1)},
    "tma": {"fwd": (128, 64, 64, 8, 4, 4, 2), "bwd": (64, 128, 64, 8, 4, 3, 2)},
    "tma-ws": {"fwd": (128, 128, 64, 8, 4, 3, 1, 1), "bwd": (128, 128, 64, 8, 4, 3, 1, 1)},
    "deriv": {"bwd": (128, 256, 64, 8, 8, 3, 2, 0)},
}


@triton.jit
def _mm_gelu_kernel(
    A, B, PRE, OUT,
    M, N, K,
    s_am, s_ak, s_bk, s_bn,
    BACKWARD: tl.constexpr, EVEN_K: tl.constexpr, FLATTEN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """``acc = A @ B`` (``A`` ``[M, K]``, ``B`` ``[K, N]``, any strides) then the GELU epilogue into
    the contiguous ``[M, N]`` outputs (see the module docstring)."""
    # Persistent when the grid is smaller than the tile count: each program walks tiles
    # num_programs apart; FLATTEN lets the pipeliner overlap one tile's epilogue with the next
    # tile's first loads. Grouped order: GROUP_M row tiles share each column tile of B in L2.
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), grid_m * grid_n, tl.num_programs(0), flatten=FLATTEN):
        pid_m, pid_n = _grouped_tile(tile, grid_m, grid_n, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = _mm_pointer_tile(
            A, B, M, N, K, s_am, s_ak, s_bk, s_bn, offs_m, offs_n, EVEN_K, "tf32", BLOCK_M, BLOCK_N, BLOCK_K
        )
        _epilogue(acc, offs_m, offs_n, M, N, PRE, OUT, BACKWARD)


@triton.jit
def _epilogue(acc, offs_m, offs_n, M, N, PRE, OUT, BACKWARD: tl.constexpr):
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    offs = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    if BACKWARD:
        x = tl.load(PRE + offs, mask=mask, other=0.0).to(tl.float32)
        cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
        pdf = tl.exp(-0.5 * x * x) * 0.3989422804014327
        dpre = acc * (cdf + x * pdf)
        tl.store(OUT + offs, dpre.to(OUT.dtype.element_ty), mask=mask)
    else:
        pre = acc.to(PRE.dtype.element_ty)
        tl.store(PRE + offs, pre, mask=mask)
        x = pre.to(tl.float32)
        h = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
        tl.store(OUT + offs, h.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _mm_gelu_tma_kernel(
    A, B, PRE, OUT, M, N, K,
    BACKWARD: tl.constexpr, B_KMAJOR: tl.constexpr, NUM_PROGRAMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr = False, SUBTILE: tl.constexpr = 1, PLAIN: tl.constexpr = False,
):  # fmt: skip
    """:func:`_mm_gelu_kernel`'s work through TMA descriptors (Hopper's tensor memory accelerator):
    bulk tile loads with out-of-bounds zero fill, and asynchronous tile stores, so that one
    tile's epilogue stores overlap the next tile's loads. Persistent, ``NUM_PROGRAMS`` programs.
    ``A`` ``[M, K]`` row-major; ``B`` ``[N, K]`` row-major when ``B_KMAJOR`` (an ``nn.Linear``
    weight, used transposed) else ``[K, N]``; ``PRE``/``OUT`` ``[M, N]`` contiguous.

    ``WARP_SPECIALIZE`` has Triton split the tile loop into a producer warp group (the TMA loads)
    and two consumer warp groups of ``num_warps`` each (the wgmma and the epilogue), Hopper's
    producer/consumer form; the tile loop is then not flattened. ``SUBTILE = 2`` runs the epilogue
    on two ``[BLOCK_M, BLOCK_N / 2]`` halves of the accumulator (fewer live registers, smaller
    store tiles). ``PLAIN`` stores the accumulator alone into ``OUT`` (no GELU): the GEMM's own
    rate, against which the epilogue's cost reads."""
    a_desc = tl.make_tensor_descriptor(A, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
    if B_KMAJOR:
        b_desc = tl.make_tensor_descriptor(B, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
    else:
        b_desc = tl.make_tensor_descriptor(B, shape=[K, N], strides=[N, 1], block_shape=[BLOCK_K, BLOCK_N])
    SUB_N: tl.constexpr = BLOCK_N // SUBTILE
    pre_desc = tl.make_tensor_descriptor(PRE, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, SUB_N])
    out_desc = tl.make_tensor_descriptor(OUT, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, SUB_N])
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    for tile in tl.range(
        tl.program_id(0), grid_m * grid_n, NUM_PROGRAMS,
        flatten=not WARP_SPECIALIZE, warp_specialize=WARP_SPECIALIZE,
    ):  # fmt: skip
        pid_m, pid_n = _grouped_tile(tile, grid_m, grid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(k_tiles):
            a = a_desc.load([off_m, k * BLOCK_K])
            if B_KMAJOR:
                acc = tl.dot(a, b_desc.load([off_n, k * BLOCK_K]).T, acc)
            else:
                acc = tl.dot(a, b_desc.load([k * BLOCK_K, off_n]), acc)
        if SUBTILE == 2:
            halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, SUB_N)), (0, 2, 1))
            acc0, acc1 = tl.split(halves)
            _tma_epilogue(acc0, pre_desc, out_desc, off_m, off_n, BACKWARD, PLAIN)
            _tma_epilogue(acc1, pre_desc, out_desc, off_m, off_n + SUB_N, BACKWARD, PLAIN)
        else:
            _tma_epilogue(acc, pre_desc, out_desc, off_m, off_n, BACKWARD, PLAIN)


@triton.jit
def _tma_epilogue(
    acc, pre_desc, out_desc, off_m, off_n,
    BACKWARD: tl.constexpr, PLAIN: tl.constexpr,
):  # fmt: skip
    """The GELU epilogue of one ``acc`` tile at ``[off_m, off_n]`` through the descriptors."""
    dtype = out_desc.dtype
    if PLAIN:
        out_desc.store([off_m, off_n], acc.to(dtype))
    elif BACKWARD:
        x = pre_desc.load([off_m, off_n]).to(tl.float32)
        cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
        pdf = tl.exp(-0.5 * x * x) * 0.3989422804014327
        out_desc.store([off_m, off_n], (acc * (cdf + x * pdf)).to(dtype))
    else:
        pre = acc.to(dtype)
        pre_desc.store([off_m, off_n], pre)
        x = pre.to(tl.float32)
        out_desc.store([off_m, off_n], (0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))).to(dtype))


# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, programs per SM)
TMA_SWEEP = [
    (128, 128, 64, 8, 8, 2, 1),
    (128, 128, 64, 8, 8, 3, 1),
    (128, 128, 64, 8, 4, 2, 1),
    (128, 64, 64, 8, 4, 3, 1),
    (128, 64, 64, 8, 4, 4, 2),
    (64, 128, 64, 8, 4, 3, 2),
    (128, 256, 64, 8, 8, 2, 1),
    (256, 128, 64, 8, 8, 2, 1),
    (128, 128, 64, 8, 8, 3, 1, 2),
    (128, 256, 64, 8, 8, 3, 1, 2),
]


# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps per consumer, num_stages, programs per SM, SUBTILE)
WS_SWEEP = [
    (128, 128, 64, 8, 4, 3, 1, 1),
    (128, 128, 64, 8, 4, 4, 1, 1),
    (128, 128, 64, 8, 4, 2, 1, 1),
    (128, 256, 64, 8, 4, 3, 1, 1),
    (256, 128, 64, 8, 4, 3, 1, 1),
    (128, 128, 128, 8, 4, 2, 1, 1),
    (128, 128, 128, 8, 4, 3, 1, 1),
    (128, 64, 64, 8, 4, 4, 1, 1),
    (128, 64, 64, 8, 4, 4, 2, 1),
    (128, 128, 64, 16, 4, 3, 1, 1),
]
# The deriv kind: the shipped op's kernels (kernels/_mlp_triton.py), gelu and gelu' stored in the
# forward (after cuBLAS), the backward's TMA GEMM multiplying by gelu' at these tiles:
# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, SUBTILE, PREFETCH), one program per
# SM; PREFETCH is where the epilogue's gelu' tile is loaded (the kernel's docstring).
DERIV_SWEEP = [
    (128, 256, 64, 8, 8, 3, 2, 0),
    (128, 256, 64, 8, 8, 3, 2, 1),
    (128, 256, 64, 8, 8, 3, 2, 2),
    (128, 256, 64, 8, 8, 4, 2, 2),
    (128, 128, 64, 8, 8, 3, 1, 0),
    (128, 128, 64, 8, 8, 3, 1, 1),
    (128, 128, 64, 8, 8, 4, 1, 1),
    (128, 128, 64, 8, 8, 4, 2, 1),
    (128, 128, 64, 8, 4, 4, 1, 1),
    (128, 256, 64, 8, 8, 2, 1, 0),
    (128, 256, 64, 8, 8, 3, 2, 3),
    (128, 128, 64, 8, 8, 3, 1, 3),
    (128, 128, 64, 8, 8, 4, 2, 3),
]
# The shipped op's backward GEMM (kernels/_mlp_triton.py's DGELU_TILE, a pointer kernel, one
# persistent program per SM): (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages).
SHIPPED_SWEEP = [
    (128, 128, 64, 8, 8, 4),
    (128, 128, 64, 8, 8, 3),
    (128, 256, 64, 8, 8, 3),
    (128, 256, 64, 8, 8, 2),
    (256, 128, 64, 8, 8, 3),
    (128, 128, 64, 8, 4, 4),
    (128, 64, 64, 8, 4, 4),
    (64, 128, 64, 8, 4, 4),
]
SWEEPS = {
    "shipped": SHIPPED_SWEEP,
    "pointer": SWEEP,
    "tma": TMA_SWEEP,
    "tma-ws": WS_SWEEP,
    "deriv": DERIV_SWEEP,
}


def _tiles_and_grid(kind: str, backward: bool, M: int, N: int, device: torch.device):
    """``kind``'s tile config for this direction and its grid size: one program per tile, or
    ``programs per SM`` x SMs of them (persistent) when the config says so."""
    config = CONFIG[kind]["bwd" if backward else "fwd"]
    block_m, block_n, per_sm = config[0], config[1], config[6]
    tiles = triton.cdiv(M, block_m) * triton.cdiv(N, block_n)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 3
    return config, min(tiles, sms * per_sm) if per_sm else tiles


def _tma_launch(a, b, pre, out, M, N, K, backward, b_kmajor, kind="tma", plain=False):
    """The TMA kernel of ``kind`` (``"tma"``, or ``"tma-ws"``: warp-specialized) at its tiles for
    this direction; ``plain`` stores ``a @ b`` into ``out`` without the GELU."""
    # Triton keeps its allocator per thread (a context variable): set it here, where backward runs
    # on autograd's device thread too.
    triton.set_allocator(shipped_mlp._scratch)
    config, programs = _tiles_and_grid(kind, backward, M, N, a.device)
    block_m, block_n, block_k, group_m, num_warps, num_stages = config[:6]
    _mm_gelu_tma_kernel[(programs,)](
        a, b, pre, out, M, N, K, BACKWARD=backward, B_KMAJOR=b_kmajor, NUM_PROGRAMS=programs,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
        WARP_SPECIALIZE=kind.endswith("-ws"), SUBTILE=config[7] if len(config) > 7 else 1, PLAIN=plain,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip


def _launch(a, b, pre, out, M, N, K, backward):
    """The pointer kernel on ``A`` = ``a`` ``[M, K]`` and ``B`` = ``b`` ``[K, N]`` (any strides)."""
    (block_m, block_n, block_k, group_m, num_warps, num_stages, per_sm), programs = _tiles_and_grid(
        "pointer", backward, M, N, a.device
    )
    _mm_gelu_kernel[(programs,)](
        a, b, pre, out, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        BACKWARD=backward, EVEN_K=K % block_k == 0, FLATTEN=per_sm > 0,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip


def linear_gelu_fwd(x, w1):
    """``pre = x @ W1ᵀ``, ``h = gelu(pre)`` (``[M, H]`` each); for the deriv kind ``gelu'(pre)``
    in place of ``pre`` (what their backward reads)."""
    if KIND[0] == "deriv":
        h, g = shipped_mlp.gelu_deriv(x @ w1.t())
        return g, h
    M, K = x.shape
    N = w1.shape[0]
    pre = torch.empty((M, N), dtype=x.dtype, device=x.device)
    h = torch.empty_like(pre)
    if KIND[0] != "pointer":
        _tma_launch(x, w1, pre, h, M, N, K, backward=False, b_kmajor=True, kind=KIND[0])
    else:
        _launch(x, w1.t(), pre, h, M, N, K, backward=False)
    return pre, h


def linear_gelu_bwd(dy, w2, pre):
    """``dpre = (dy @ W2) * gelu'(pre)`` (the deriv kind: ``pre`` holds ``gelu'(pre)``)."""
    if KIND[0] == "deriv":
        with _shipped_tile("tma", CONFIG["deriv"]["bwd"]) as backward:
            return backward(dy, w2, pre)
    M, C = dy.shape
    dpre = torch.empty_like(pre)
    if KIND[0] != "pointer":
        _tma_launch(dy, w2, pre, dpre, M, w2.shape[1], C, backward=True, b_kmajor=False, kind=KIND[0])
    else:
        _launch(dy, w2, pre, dpre, M, w2.shape[1], C, backward=True)
    return dpre


class FusedMlp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, w2):
        pre, h = linear_gelu_fwd(x, w1)
        ctx.save_for_backward(x, w1, w2, pre, h)
        return h @ w2.t()

    @staticmethod
    def backward(ctx, dy):
        x, w1, w2, pre, h = ctx.saved_tensors
        dpre = linear_gelu_bwd(dy, w2, pre)
        return dpre @ w1, dpre.t() @ x, dy.t() @ h


def fused(x, w1, w2):
    return FusedMlp.apply(x, w1, w2)


def shipped(x, w1, w2):
    """flopkit's op: cuBLAS fc1, then ``kernels.gelu_linear`` (gelu and gelu' stored, cuBLAS fc2;
    backward: the pointer GEMM with the multiply epilogue)."""
    from flopkit import kernels

    return kernels.gelu_linear(F.linear(x, w1), w2)


def ms(fn, rep: int = 60) -> float:
    return device_ms(fn, warmup_ms=20, rep_ms=rep)


def make(M, C, H, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(M, C, device="cuda", generator=g).to(DT).requires_grad_()
    w1 = (torch.randn(H, C, device="cuda", generator=g) / C**0.5).to(DT).requires_grad_()
    w2 = (torch.randn(C, H, device="cuda", generator=g) / H**0.5).to(DT).requires_grad_()
    dy = torch.randn(M, C, device="cuda", generator=g).to(DT)
    return x, w1, w2, dy


def ref(x, w1, w2):
    return F.linear(F.gelu(F.linear(x, w1)), w2)


def step(fn, x, w1, w2, dy):
    def run():
        x.grad = w1.grad = w2.grad = None
        fn(x, w1, w2).backward(dy)

    return run


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


def check(M, C, H) -> dict:
    """Relative error of y and every gradient against float64, for both fused kernels and torch eager."""
    out = {}
    x, w1, w2, dy = make(M, C, H, seed=1)
    xd, w1d, w2d = (t.detach().double().requires_grad_() for t in (x, w1, w2))
    ref(xd, w1d, w2d).backward(dy.double())
    kinds = [*((f"fused ({kind})", fused) for kind in CONFIG), ("flopkit gelu_linear", shipped)]
    for name, fn in [*kinds, ("torch eager", ref)]:
        KIND[0] = name[7:-1] if name.startswith("fused") else KIND[0]
        x.grad = w1.grad = w2.grad = None
        y = fn(x, w1, w2)
        y.backward(dy)
        out[name] = {
            "y": rel(y, ref(xd, w1d, w2d).detach()),
            "dx": rel(x.grad, xd.grad),
            "dw1": rel(w1.grad, w1d.grad),
            "dw2": rel(w2.grad, w2d.grad),
        }
    return out


def kernel_times(M, C, H) -> dict:
    x, w1, w2, dy = make(M, C, H)
    xs, w1s, w2s = x.detach(), w1.detach(), w2.detach()
    pre = xs @ w1s.t()  # (the deriv kind's backward reads gelu'(pre) instead: same bytes, same time)
    out = {}
    for kind in CONFIG:
        KIND[0] = kind
        out[f"fused forward ({kind})"] = ms(lambda: linear_gelu_fwd(xs, w1s))
        out[f"fused backward ({kind})"] = ms(lambda: linear_gelu_bwd(dy, w2s, pre))
    # The TMA kernels' GEMMs alone (no GELU, the accumulator stored), at the tiles above.
    N = w2s.shape[1]
    for kind in ("tma", "tma-ws"):
        for direction, (a, b, kmajor) in {"fwd": (xs, w1s, True), "bwd": (dy, w2s, False)}.items():
            dst = torch.empty((M, N), dtype=DT, device="cuda")
            out[f"GEMM alone {direction} ({kind})"] = ms(
                lambda: _tma_launch(a, b, dst, dst, M, N, C, direction == "bwd", kmajor, kind, plain=True)
            )
    da = dy @ w2s
    return out | {
        "aten gelu backward": ms(lambda: torch.ops.aten.gelu_backward(da, pre)),
        "cuBLAS x @ W1^T": ms(lambda: xs @ w1s.t()),
        "cuBLAS dy @ W2": ms(lambda: dy @ w2s),
        "aten gelu": ms(lambda: F.gelu(pre)),
        "Triton gelu + gelu' (deriv forward)": ms(lambda: shipped_mlp.gelu_deriv(pre)),
        **{
            f"flopkit gelu_linear backward ({kind} GEMM)": _shipped_backward_ms(dy, w2s, pre, kind)
            for kind in ("tma", "pointer")
        },
    }


def sweep(M, C, H, kind: str, configs) -> list[dict]:
    """Time the forward and the backward kernel of ``kind`` at every tile of ``configs``; leave
    each direction at its fastest in ``CONFIG``."""
    x, w1, w2, dy = make(M, C, H)
    xs, w1s, w2s = x.detach(), w1.detach(), w2.detach()
    pre = xs @ w1s.t()
    runs = {"fwd": lambda: linear_gelu_fwd(xs, w1s), "bwd": lambda: linear_gelu_bwd(dy, w2s, pre)}
    want = None
    if kind == "deriv":  # the forward has no tiles; each tile's output is checked against float64
        del runs["fwd"]
        want = (dy.double() @ w2s.double()) * pre.double()
    rows, best = [], {}
    KIND[0] = kind
    for cfg in configs:
        row = {"kind": kind, "config": cfg}
        for direction, fn in runs.items():
            CONFIG[kind][direction] = cfg
            try:
                if want is not None:
                    row["rel_err"] = rel(fn(), want)
                row[direction] = t = ms(fn)
                if t < best.get(direction, (float("inf"),))[0]:
                    best[direction] = (t, cfg)
            except Exception as e:  # noqa: BLE001  (a tile that does not fit: shared memory)
                row[direction + " error"] = repr(e)[:200]
        rows.append(row)
        print("sweep", M, C, H, row, flush=True)
    for direction, (_, cfg) in best.items():
        CONFIG[kind][direction] = cfg
    return rows


@contextlib.contextmanager
def _shipped_tile(kind: str, tile=None):
    """The shipped op's ``kind`` backward GEMM (``"tma"`` or ``"pointer"``) at ``tile`` (None: its own)
    inside the block, its tile restored after."""
    name = "DGELU_TMA_TILE" if kind == "tma" else "DGELU_TILE"
    before = getattr(shipped_mlp, name)
    setattr(shipped_mlp, name, tile or before)
    try:
        yield lambda dy, w2, g: shipped_mlp.gelu_linear_backward(dy, w2, g, kernel=kind)
    finally:
        setattr(shipped_mlp, name, before)


def _shipped_backward_ms(dy, w2, g, kind: str, tile=None) -> float:
    """The shipped op's ``kind`` backward GEMM at ``tile``, ms (:func:`_shipped_tile`)."""
    with _shipped_tile(kind, tile) as backward:
        return ms(lambda: backward(dy, w2, g))


def sweep_shipped(M, C, H) -> list[dict]:
    """Time the shipped op's pointer GEMM (``kernel="pointer"``) at every tile of
    :data:`SHIPPED_SWEEP`; leave ``DGELU_TILE`` at the fastest for the rows after (the ``tiles``
    entry of the record)."""
    _, _, w2, dy = make(M, C, H)
    g = dy.new_empty(M, H).normal_()
    w2s = w2.detach()
    rows, best = [], (float("inf"), shipped_mlp.DGELU_TILE)
    for cfg in SHIPPED_SWEEP:
        row = {"kind": "shipped", "config": cfg}
        try:
            row["bwd"] = t = _shipped_backward_ms(dy, w2s, g, "pointer", cfg)
            best = min(best, (t, cfg))
        except Exception as e:  # noqa: BLE001  (a tile that does not fit: shared memory)
            row["bwd error"] = repr(e)[:200]
        rows.append(row)
        print("sweep", M, C, H, row, flush=True)
    shipped_mlp.DGELU_TILE = best[1]
    return rows


def top_kernels(fn, n: int = 12) -> list[tuple[str, float]]:
    """The ``n`` costliest GPU kernels of one call of ``fn`` (profiler, ms per call over 5 calls)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
    return [(e.key[:90], e.device_time_total / 5 / 1e3) for e in rows[:n] if e.device_time_total > 0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=out_default())
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument(
        "--sweeps", default=",".join(SWEEPS), help=f"the kernels to sweep, of {', '.join(SWEEPS)}"
    )
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument(
        "--sweep-only",
        action="store_true",
        help="the check and the sweeps, not the kernel, step and profile rows",
    )
    args = ap.parse_args()
    if args.sweep_only and args.no_sweep:
        ap.error("--sweep-only and --no-sweep: nothing would be timed")
    unknown = sorted(set(args.sweeps.split(",")) - set(SWEEPS))
    if unknown:
        ap.error(f"--sweeps: unknown kernel(s) {', '.join(unknown)}; known: {', '.join(SWEEPS)}")
    torch.backends.cuda.matmul.allow_tf32 = False
    writer = ResultWriter(args.out, "bench_mlp_epilogue", roofs=run_roofs())
    res: dict = {"shapes": {}}
    compiled_ref = torch.compile(ref)
    for name in args.shapes.split(","):
        M, C, H = SHAPES[name]
        r = res["shapes"][name] = {"M": M, "C": C, "H": H}
        r["check"] = check(M, C, H)
        print(name, "check", r["check"], flush=True)
        if not args.no_sweep:
            r["sweep"] = [
                row
                for kind in args.sweeps.split(",")
                for row in (
                    sweep_shipped(M, C, H) if kind == "shipped" else sweep(M, C, H, kind, SWEEPS[kind])
                )
            ]
        r["tiles"] = {kind: dict(cfg) for kind, cfg in CONFIG.items()} | {"shipped": shipped_mlp.DGELU_TILE}
        if args.sweep_only:
            writer.save(res)
            continue
        r["kernels"] = kernel_times(M, C, H)
        x, w1, w2, dy = make(M, C, H)
        r["steps"] = {
            "torch eager": ms(step(ref, x, w1, w2, dy)),
            "torch.compile": ms(step(compiled_ref, x, w1, w2, dy)),
        }
        r["profile"] = {
            "torch.compile": top_kernels(step(compiled_ref, x, w1, w2, dy)),
            "torch eager": top_kernels(step(ref, x, w1, w2, dy)),
        }
        r["steps"]["flopkit gelu_linear"] = ms(step(shipped, x, w1, w2, dy))
        for kind in CONFIG:
            KIND[0] = kind
            r["steps"][f"fused ({kind})"] = ms(step(fused, x, w1, w2, dy))
            r["profile"][f"fused ({kind})"] = top_kernels(step(fused, x, w1, w2, dy))
        r["flop"] = 3 * 2 * (2 * M * C * H)
        for k, rows in r["profile"].items():
            print(name, k, *[f"  {t:.4f} {n}" for n, t in rows], sep="\n", flush=True)
        print(name, r["kernels"], r["steps"], flush=True)
        writer.save(res)
    lines = [
        "| shape | MLP forward + backward | ms | TFLOP/s | vs torch.compile |",
        "|---|---|---:|---:|---:|",
    ]
    for name, r in res["shapes"].items():
        base = r.get("steps", {}).get("torch.compile")
        for row, t in r.get("steps", {}).items():
            lines.append(f"| {name} | {row} | {t:.3f} | {r['flop'] / t / 1e9:.0f} | {base / t:.2f}x |")
    lines += ["", "| shape | kernel | ms |", "|---|---|---:|"]
    for name, r in res["shapes"].items():
        for row, t in r.get("kernels", {}).items():
            lines.append(f"| {name} | {row} | {t:.4f} |")
        for row in r.get("sweep", []):
            fwd, bwd = row.get("fwd", float("nan")), row.get("bwd", float("nan"))
            err = f" (rel. err. {row['rel_err']:.1e})" if "rel_err" in row else ""
            lines.append(
                f"| {name} | sweep {row['kind']} {row['config']} fwd / bwd | {fwd:.4f} / {bwd:.4f}{err} |"
            )
    writer.finish(res, lines)


if __name__ == "__main__":
    main()
