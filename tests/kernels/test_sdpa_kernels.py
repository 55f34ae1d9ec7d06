"""flopkit's Triton attention (``kernels/_sdpa_triton.py``) against a float64 softmax attention
written here, forward and backward (every backward form: VARIANTS), at small shapes.

On a machine without a GPU the kernels run in Triton's CPU interpreter (conftest.py). Triton 3.9's
interpreter computes ``tl.dot`` on bfloat16 tiles wrongly (values of order 1e9 for a product of
unit-normal 16 x 16 tiles; float16 and float32 are right), so bfloat16 runs on CUDA only.
"""

from __future__ import annotations

import json
import math
import os
import sys

import _early
import pytest
import torch
from _references import device, rel_err
from flopkit.kernels._sdpa_triton import HEAD_TILE, AttnTile, attention_bwd, attention_fwd, head_rows
from flopkit.kernels.sdpa import ATTENTION_HEAD_DIMS

DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if torch.cuda.is_available() else [])
# On CUDA, float32 tiles enter the tensor cores as TF32 (Triton's default; the modules never send
# float32 to these kernels, kernels.attention_supported); the interpreter multiplies in float32.
TOL = {
    torch.float32: 4e-3 if torch.cuda.is_available() else 1e-5,  # TF32: dq 2.0e-3 at T = 87 on an H100
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}
SMALL = AttnTile(16, 32, 4, 1)
# The backward's three forms: the shipped dq and dkdv kernels, the benchmark's atomic one (tried and
# not shipped), one program per head (where the head's rows fit its tile), and the benchmark's
# transposed form of it (a candidate, not shipped).
VARIANTS = ["two-kernels", "atomic-dq", "head", "head-t"]
SMALL_HEAD = AttnTile(128, 16, 4, 1, 0)  # heads of up to 128 tokens, 16 keys a step


def spec(q, k, v, scale):
    """float64 ``softmax(scale q kᵀ) v`` with the softmax written out."""
    s = torch.einsum("bhid,bhjd->bhij", q.double(), k.double()) * scale
    p = torch.exp(s - s.amax(-1, keepdim=True))
    p = p / p.sum(-1, keepdim=True)
    return torch.einsum("bhij,bhjd->bhid", p, v.double())


def token_major(B, H, T, D, dtype, scale=1.0):
    """A ``[B, H, T, D]`` view of a ``[B, T, H, D]`` buffer, as ViT5Attention hands q and k over."""
    return (torch.randn(B, T, H, D, device=device()) * scale).to(dtype).transpose(1, 2)


def qkv_slices(B, H, T, D, dtype):
    """q, k, v as head views of one ``[B, T, 3HD]`` activation (v's layout in the model)."""
    qkv = torch.randn(B, T, 3 * H * D, device=device()).to(dtype)
    return tuple(
        qkv[..., i * H * D : (i + 1) * H * D].unflatten(-1, (H, D)).transpose(1, 2) for i in range(3)
    )


def check(
    q,
    k,
    v,
    dtype,
    *,
    fwd_tile=SMALL,
    dq_tile=SMALL,
    dkdv_tile=SMALL,
    head_tile=SMALL_HEAD,
    variant="two-kernels",
    scale=None,
    relative=("dq", "dk", "dv"),
    absolute=1e-3,
    tol=None,
):
    """The kernels' o, lse and gradients against :func:`spec`; gradients not in ``relative`` are held
    to an ``absolute`` error (a saturated softmax's dq and dk are zero up to rounding), or only to
    being finite where ``absolute`` is None. ``tol``: the gradients' relative bound, default
    ``TOL[dtype]``."""
    D = q.shape[-1]
    scale = D**-0.5 if scale is None else scale
    o, lse = attention_fwd(q, k, v, scale, tile=fwd_tile)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = spec(q64, k64, v64, scale)
    assert o.shape == q.shape and o.dtype == dtype
    assert rel_err(o, ref) < TOL[dtype]
    # lse is base 2: log2(sum_j exp(s_ij)); float32 q kᵀ runs as TF32 on CUDA (1.8e-4 on an H100)
    s = torch.einsum("bhid,bhjd->bhij", q64, k64).detach() * scale
    lse_tol = 1e-3 if dtype == torch.float32 and torch.cuda.is_available() else 1e-5
    assert rel_err(lse, torch.logsumexp(s, -1) / math.log(2)) < lse_tol
    do = torch.randn_like(ref).to(dtype)
    ref.backward(do.double())
    if variant == "atomic-dq":  # the benchmark's one-kernel variant, held to the same spec
        from benchmarks.triton_attention import attention_bwd_atomic

        grads = attention_bwd_atomic(do, q, k, v, o, lse, scale, tile=dkdv_tile)
    elif variant == "head-t":
        from benchmarks.triton_attention import attention_bwd_head_t

        grads = attention_bwd_head_t(do, q, k, v, o, lse, scale, tile=head_tile)
    else:
        if variant == "head":  # the head must fit the tile, or the two kernels would run instead
            assert head_rows(q.shape[2], D, head_tile), (q.shape, head_tile)
        tiles = {"dq_tile": dq_tile, "dkdv_tile": dkdv_tile}
        tiles["head_tile"] = head_tile if variant == "head" else None
        grads = attention_bwd(do, q, k, v, o, lse, scale, **tiles)
    for name, g, r in zip(("dq", "dk", "dv"), grads, (q64.grad, k64.grad, v64.grad), strict=True):
        assert g.shape == r.shape and g.dtype == dtype, name
        if name in relative:
            assert rel_err(g, r) < (TOL[dtype] if tol is None else tol), name
        else:
            assert torch.isfinite(g).all(), name
            assert absolute is None or (g.double().cpu() - r.cpu()).abs().max() < absolute, name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_float64(dtype, variant):
    # T = 37: neither block size divides it, so the last query and key blocks are masked.
    q, k, v = (token_major(2, 3, 37, 16, dtype) for _ in range(3))
    check(q, k, v, dtype, variant=variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_layout_and_head_dim_64(variant):
    """v a slice of the qkv activation (row stride 3·H·D), D = 64, T not a multiple of any block."""
    q, k, v = qkv_slices(1, 2, 21, 64, torch.float16)
    check(q, k, v, torch.float16, variant=variant)


# Tiles that step TAIL tokens past the last full block (the shipped tiles' form at ViT-5's T = 201).
TAILED = AttnTile(32, 32, 4, 1, 16)


@pytest.mark.parametrize(
    "T, tile",
    [
        (16, TAILED),  # shorter than a block: one tail step and nothing else
        (37, TAILED),  # one full block each way, then a partial tail step (5 of 16)
        (64, TAILED),  # full blocks only: the tail loops run zero times
        (87, TAILED),  # two full blocks, then a full tail step and a partial one (16 + 7)
        (37, AttnTile(64, 64, 4, 1, 16)),  # tail steps only: 16 + 16 + 5
        (45, AttnTile(32, 64, 4, 1, 32)),  # different full blocks per side; a 32-token tail
    ],
    ids=["T16", "T37", "T64", "T87", "T37-tail-only", "T45-tail32"],
)
def test_tail_steps_match_float64(T, tile):
    """Every kernel's query-row and key loops, with tail steps, against the float64 softmax: the
    masked tail steps, the unmasked full blocks and the programs that hold the partial last block."""
    q, k, v = (token_major(1, 2, T, 16, torch.float32) for _ in range(3))
    check(q, k, v, torch.float32, fwd_tile=tile, dq_tile=tile, dkdv_tile=tile)


@pytest.mark.parametrize(
    "T, tile",
    [
        (16, AttnTile(128, 32, 4, 1, 16)),  # shorter than a key block: one tail step, 16 rows
        (37, AttnTile(128, 32, 4, 1, 16)),  # one full key block, then a partial tail step (5 of 16)
        (64, AttnTile(64, 32, 4, 1, 16)),  # rows exactly the tile's; the tail loop runs zero times
        (87, AttnTile(128, 32, 4, 1, 16)),  # two full key blocks, a full tail step and a partial one
        (45, AttnTile(64, 16, 4, 1, 0)),  # no tail: the last key block masked and padded
    ],
    ids=["T16", "T37", "T64", "T87", "T45-no-tail"],
)
@pytest.mark.parametrize("variant", ["head", "head-t"])
def test_head_kernel_key_steps_match_float64(T, tile, variant):
    """``_attn_bwd_head`` (every query row of a head in one program) and the benchmark's transposed
    form over their key loops: the full blocks unmasked, the masked tail steps, and rows past T
    (their lse +inf, so p = 0)."""
    q, k, v = (token_major(1, 2, T, 16, torch.float32) for _ in range(3))
    check(q, k, v, torch.float32, head_tile=tile, variant=variant)


def test_head_kernel_only_where_the_head_fits():
    """``head_rows``: T rounded up to a power of two (at least 16) where it fits the tile's rows and
    D <= 64; 0 (the two kernels) past either, or without a tile. The shipped tile covers ViT-5's
    T = 201 at D = 64."""
    assert head_rows(201, 64, HEAD_TILE) == 256
    assert head_rows(5, 16, HEAD_TILE) == 16
    assert head_rows(257, 64, HEAD_TILE) == 0  # 512 rows: past the tile
    assert head_rows(201, 128, HEAD_TILE) == 0  # D = 128: twice the registers
    assert head_rows(201, 64, None) == 0
    launched = []

    def capture(kernel, grid, args, meta, num_tensors, plan=None):
        launched.append(kernel.__name__)

    for T, D in ((201, 64), (257, 64), (201, 128)):
        q = torch.empty(2, 3, T, D, device="meta", dtype=torch.bfloat16)
        lse = torch.empty(2, 3, T, device="meta")
        attention_bwd(q, q, q, q, q, lse, 0.125, run=capture)
    assert launched == ["_attn_bwd_head", *["_attn_bwd_dq", "_attn_bwd_dkdv"] * 2]


def test_tiles_larger_than_the_sequence():
    """One block holds every key and every query (the forward's single-step case)."""
    q, k, v = (token_major(1, 2, 5, 16, torch.float32) for _ in range(3))
    tile = AttnTile(16, 64, 4, 1)
    check(q, k, v, torch.float32, fwd_tile=tile, dq_tile=tile, dkdv_tile=AttnTile(16, 16, 4, 1))


@pytest.mark.parametrize(
    "tile, field",
    [
        (AttnTile(32, 32, 4, 1, 8), "tail=8"),
        (AttnTile(8, 32, 4, 1), "block_m=8"),
        (AttnTile(32, 48, 4, 1), "block_n=48"),
    ],
)
def test_tiles_a_gpu_cannot_compile_are_refused(tile, field):
    """Each block and tail size is some ``tl.dot``'s K, which must be at least 16 on a GPU (the
    interpreter takes any): a tail of 8 passed the CPU tests and failed to compile on an H100."""
    q = torch.empty(1, 2, 37, 16, device="meta", dtype=torch.float16)
    with pytest.raises(ValueError, match=f"{field}; it must be a power of two of at least 16"):
        attention_fwd(q, q, q, 0.25, tile=tile, run=no_launch)
    lse = torch.empty(1, 2, 37, device="meta")
    with pytest.raises(ValueError, match=f"{field}; it must be a power of two of at least 16"):
        attention_bwd(
            q,
            q,
            q,
            q,
            q,
            lse,
            0.25,
            dq_tile=AttnTile(32, 32, 4, 1),
            dkdv_tile=tile,
            head_tile=None,
            run=no_launch,
        )
    if (
        field != "block_m=8"
    ):  # a head tile's block_m is the rows it may hold: 8 sends T = 37 to the two kernels
        with pytest.raises(ValueError, match=f"{field}; it must be a power of two of at least 16"):
            attention_bwd(q, q, q, q, q, lse, 0.25, head_tile=tile._replace(block_m=64), run=no_launch)


def no_launch(kernel, grid, args, meta, num_tensors=0, plan=None):
    """A launch that runs nothing (meta tensors): what is checked is raised before it."""


@pytest.mark.parametrize("variant", ["two-kernels", "head", "head-t"])
def test_large_logits_stay_finite(variant):
    """Logits of order 1e3: the running maximum must keep every exponent at or below zero. On CUDA
    float32 q kᵀ runs as TF32, whose logits of order 1e3 are off by order 1 (an H100's dq was off by
    0.18 against a float64 zero), so there dq and dk are held to being finite only.

    On the CPU the logits are float32: each is off by up to about ``|s| · 2⁻²⁴`` per rounding of
    its 16-term sum, and ``p = exp(s - lse)`` carries that error as a relative one, so dv is held
    to ``max |s| · 2⁻²¹`` (about 6e-3 here), not to ``TOL``'s 1e-5: the CPU's summation order decides
    the rest (4.4e-4 on an AMD EPYC, under 1e-5 on the machines before it). A wrong mask or a
    lost maximum is off by order 1."""
    q, k, v = (token_major(1, 1, 19, 16, torch.float32, scale=s) for s in (30.0, 30.0, 1.0))
    absolute = None if torch.cuda.is_available() else 1e-3
    logits = (q.double() @ k.double().transpose(-1, -2)).abs().max().item()
    tol = None if torch.cuda.is_available() else max(TOL[torch.float32], logits * 2**-21)
    assert torch.cuda.is_available() or 1e-3 < tol < 1e-2, tol
    check(q, k, v, torch.float32, scale=1.0, relative=("dv",), absolute=absolute, variant=variant, tol=tol)


def test_custom_scale_and_contiguous_head_major():
    q, k, v = (torch.randn(1, 2, 33, 32, device=device()) for _ in range(3))
    check(q, k, v, torch.float32, scale=0.3)


def test_opcheck_attention_ops():
    """The custom ops' schema, fake, autograd registration and dispatch (forward and backward op)."""
    from flopkit.kernels import _sdpa_ops  # noqa: F401  (registers the ops)

    q, k, v = (token_major(1, 2, 9, 16, torch.float32).requires_grad_() for _ in range(3))
    torch.library.opcheck(torch.ops.flopkit.attention.default, (q, k, v, 0.25))
    o, lse = torch.ops.flopkit.attention.default(q.detach(), k.detach(), v.detach(), 0.25)
    do = torch.randn_like(o)
    args = (do, q.detach(), k.detach(), v.detach(), o, lse, 0.25)
    torch.library.opcheck(torch.ops.flopkit.attention_backward.default, args)


@pytest.mark.parametrize("variant", ["two-kernels", "head"])
def test_strided_head_dimension_is_copied_not_misread(variant):
    """A q whose head dimension is not unit-stride (a transposed view) gives the same result."""
    q = torch.randn(1, 2, 16, 11, device=device()).transpose(-1, -2)  # [1, 2, 11, 16], stride(-1) = 11
    k, v = (token_major(1, 2, 11, 16, torch.float32) for _ in range(2))
    check(q, k, v, torch.float32, variant=variant)


def test_public_op_routes_and_rejects_what_the_kernels_do_not_take():
    """``kernels.attention``: SDPA on ``backend="torch"`` and for inputs the kernels do not take under
    ``"auto"``; ``backend="triton"`` names the shapes and dtypes it was given instead of guessing."""
    import torch.nn.functional as F

    from flopkit import kernels

    q, k, v = (token_major(1, 2, 9, 16, torch.float16) for _ in range(3))
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert rel_err(kernels.attention(q, k, v, backend="torch"), expected) < TOL[torch.float16]
    assert rel_err(kernels.attention(q, k, v, backend="triton"), expected) < TOL[torch.float16]
    q24, k24, v24 = (token_major(1, 2, 9, 24, torch.float16) for _ in range(3))  # D = 24: not a power of two
    auto = kernels.attention(q24, k24, v24)  # SDPA, not the kernels
    assert rel_err(auto, F.scaled_dot_product_attention(q24.float(), k24.float(), v24.float())) < 2e-3
    with pytest.raises(ValueError, match=r"D in \(16, 32, 64, 128\).*got q \(1, 2, 9, 24\) torch.float16"):
        kernels.attention(q24, k24, v24, backend="triton")
    with pytest.raises(ValueError, match="float16/bfloat16"):
        kernels.attention(q.float(), k.float(), v.float(), backend="triton")
    assert not kernels.attention_supported(q, k[:, :, :5], v)  # cross-attention lengths differ


def test_grids_fit_cuda_limits_at_large_batches():
    """B·H beyond 65,535 (vit5-small at batch 12,000: 72,000 heads) must not land in a grid dimension
    CUDA limits to 65,535: every launch is one-dimensional (the limit there is 2**31 - 1)."""
    grids = []

    def capture(kernel, grid, args, meta, num_tensors, plan=None):
        grids.append(grid)

    q, k, v = (torch.empty(12_000, 6, 201, 64, device="meta", dtype=torch.bfloat16) for _ in range(3))
    o, lse = attention_fwd(q, k, v, 0.125, run=capture)
    attention_bwd(torch.empty_like(o), q, k, v, o, lse, 0.125, run=capture)  # one kernel per head
    attention_bwd(torch.empty_like(o), q, k, v, o, lse, 0.125, head_tile=None, run=capture)
    assert len(grids) == 4
    for grid in grids:
        assert len(grid) == 1 and 72_000 <= grid[0] < 2**31


# Compiles the kernels for sm90 with fp64 scales at every head dim in a fresh interpreter (the
# suite's runs in Triton's interpreter, whose language cannot compile): prints, per kernel and head
# dim, its TTIR lines with fp64 tensors, or why it did not compile.
_F64_CHECK = """
import itertools, json, sys
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from flopkit.kernels import _sdpa_triton as st, sdpa

TARGET = GPUTarget("cuda", 90, 32)


@triton.jit
def probe(X):
    tl.store(X, 1.0)


try:  # can this Triton build compile for sm90 at all (NVIDIA backend, ptxas)?
    compile(ASTSource(probe, {"X": "*fp32"}, {}), target=TARGET)
except Exception as e:
    print(json.dumps({"skip": f"{type(e).__name__}: {str(e)[:200]}"}))
    sys.exit(0)
found = {}
KERNELS = (
    (st._attn_fwd, st.FWD_TILE),
    (st._attn_bwd_dq, st.DQ_TILE),
    (st._attn_bwd_dkdv, st.DKDV_TILE),
    (st._attn_bwd_head, st.HEAD_TILE),
)
for (fn, tile), head_dim in itertools.product(KERNELS, [int(d) for d in sys.argv[1:]] or sdpa.ATTENTION_HEAD_DIMS):
    meta = {"HEAD_D": head_dim, "BLOCK_M": tile.block_m, "BLOCK_N": tile.block_n, "TAIL": tile.tail}
    if fn is st._attn_bwd_head:  # at T = 201, where it runs (head_rows: D <= 64)
        rows = st.head_rows(201, head_dim, tile)
        if not rows:
            continue
        meta |= {"ROWS": rows, "PACKED": True}
    options = {"num_warps": tile.num_warps, "num_stages": tile.num_stages}
    signature, constants = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in meta:
            signature[name], constants[(i,)] = "constexpr", meta[name]
        elif name in ("qk_scale", "scale"):
            signature[name] = "fp64"
        elif name in ("LSE", "DELTA"):
            signature[name] = "*fp32"
        elif name.isupper() and name not in ("H", "T"):
            signature[name] = "*bf16"
        else:
            signature[name] = "i32"
    key = f"{fn.__name__} D={head_dim}"
    try:
        compiled = compile(ASTSource(fn, signature, constants), target=TARGET, options=options)
    except Exception as e:  # the kernel does not compile at this head dim or with fp64 scales
        found[key] = [f"does not compile: {type(e).__name__}: {str(e)[:300]}"]
        continue
    found[key] = [line.strip() for line in compiled.asm["ttir"].splitlines() if "xf64" in line]
print(json.dumps(found))
"""


# Every head dim under FLOPKIT_REQUIRE_SM90 (.ci/run's Triton 3.6 step); the main suite compiles the
# kernels at the benchmarks' D = 64 only (3 compiles rather than 12 on the idle core).
SM90_HEAD_DIMS = ATTENTION_HEAD_DIMS if os.environ.get("FLOPKIT_REQUIRE_SM90") else (64,)


def _f64_check(out, environ):
    script = out / "f64_check.py"  # a file: Triton reads a kernel's source with inspect
    script.write_text(_F64_CHECK)
    env = _early.checkout_env(environ, drop=("TRITON_INTERPRET",))
    return [sys.executable, str(script), *map(str, SM90_HEAD_DIMS)], {"env": env, "timeout": 300}


F64_CHECK = _early.early("attention-fp64-scalars", _f64_check)


@pytest.mark.early("attention-fp64-scalars")
def test_kernels_compile_for_sm90_without_fp64_tiles():
    """Every kernel compiles for sm90 with the shipped tiles: at D = 64, and under
    FLOPKIT_REQUIRE_SM90 at every head dim the op takes (Triton 3.6 once refused D != 64, which the
    interpreter cannot see; .ci/run runs this test so with 3.6 as well). Inductor launches user kernels
    with Python floats typed fp64: compiled with fp64 scales, no kernel may compute a tile in fp64
    (run ``attention-compiled_2026-12-06`` of benchmarks/results/bench_train_h100.md, in git
    history, lost 1.3 GPU-ms a step to that); only the scalars' casts may be fp64."""
    done = F64_CHECK.result()
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in found:
        if os.environ.get("FLOPKIT_REQUIRE_SM90"):  # .ci/run's Triton 3.6 step: a skip would pass silently
            pytest.fail(
                f"FLOPKIT_REQUIRE_SM90 is set, but this Triton cannot compile for sm90: {found['skip']}"
            )
        pytest.skip(f"cannot compile for sm90 here: {found['skip']}")
    kernels = ("_attn_fwd", "_attn_bwd_dq", "_attn_bwd_dkdv")
    expected = [f"{k} D={d}" for k in kernels for d in SM90_HEAD_DIMS]
    expected += [f"_attn_bwd_head D={d}" for d in SM90_HEAD_DIMS if d <= 64]
    assert sorted(found) == sorted(expected)
    for kernel, lines in found.items():
        assert lines == [], f"{kernel}: {lines[:3]}"


def _events(fn, *inputs) -> list[int]:
    """The bytes each allocation (+) and free (-) of ``fn(*inputs)`` on meta moves, in order, as
    the memory replay's :class:`~flopkit.step_memory.trace.AllocationTrace` records them."""
    from flopkit.step_memory.trace import AllocationTrace

    trace = AllocationTrace()
    trace.adopt(inputs, "inputs")
    with trace:
        out = fn(*inputs)
        del out
    trace.close()
    return [e.delta for e in trace.events if e.op != ""]  # the adopted inputs' setup events left out


@pytest.mark.parametrize("T", [201, 300], ids=["head-kernel", "dq-dkdv"])
def test_backward_fakes_allocate_what_the_launchers_do(T):
    """A memory replay runs the backward ops' fakes on meta: they must allocate and free what the
    launcher does, in its order. The dq and dk/dv kernels need ``delta`` ``[B, H, T]`` fp32
    scratch, freed on return; the head kernel (T = 201) none."""
    from flopkit.kernels import _sdpa_ops as ops
    from flopkit.kernels._sdpa_triton import qk_norm_rope_attention_bwd

    from flopkit.step_memory.cuda import block_bytes

    B, H, D = 2, 3, 64
    q, k, v, o = (
        torch.empty(B, T, H, D, device="meta", dtype=torch.bfloat16).transpose(1, 2) for _ in range(4)
    )
    lse = torch.empty(B, H, T, device="meta")
    real = _events(lambda *t: attention_bwd(*t, 0.125, run=no_launch), o, q, k, v, o, lse)
    assert _events(lambda *t: ops._attention_backward_fake(*t, 0.125), o, q, k, v, o, lse) == real
    delta = block_bytes(B * H * T * 4)
    assert (real[3:5] == [delta, -delta]) == (T == 300)  # after dq, dk, dv
    # The one op: dqkv, then the same attention scratch (the QK-norm + RoPE's fp32 partials, which
    # the fake leaves out, come after it).
    qkv = torch.empty(B, T, 3 * H * D, device="meta", dtype=torch.bfloat16)
    cos = sin = torch.empty(T, D, device="meta")
    w = torch.empty(D, device="meta", dtype=torch.bfloat16)
    args = (cos, sin, w, w, H, 1e-6, "split_half", True, 0.125)
    inputs = (o, qkv, q, k, o, lse)
    real = _events(lambda *t: qk_norm_rope_attention_bwd(*t, *args, run=no_launch), *inputs)
    fake = _events(lambda *t: ops._qk_attention_backward_fake(*t, *args), *inputs)
    head = 3 if T == 300 else 1
    assert real[:head] == fake[:head] and real[0] == block_bytes(B * T * 3 * H * D * 2)
    assert (real[1:3] == [delta, -delta]) == (T == 300)
