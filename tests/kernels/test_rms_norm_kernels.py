"""RMSNorm and fused residual RMSNorm kernels vs an independent float64 computation.

On CPU the kernels run in the Triton interpreter (``TRITON_INTERPRET=1``, see conftest.py).
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

import _early
import pytest
import torch
from _references import TOL, cold_compile, device, grads64, kernel_grads, norm64, rel_err
from flopkit.kernels import (
    _norm_ops,  # noqa: F401  (registers the flopkit:: ops the tests call directly)
    rms_norm,
    rms_norm_residual,
)
from flopkit.kernels import _norm_triton as tk
from flopkit.kernels._launch import Tile
from torch.utils.flop_counter import FlopCounterMode

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# D -> rows: odd row counts, few rows for wide D (the interpreter is slow).
SHAPES = {1: 37, 7: 37, 64: 33, 72: 19, 128: 9, 1000: 3, 4096: 2}


def _inputs(rows: int, D: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, D, generator=g).to(dtype).to(device())
    w = (1 + 0.5 * torch.randn(D, generator=g)).to(dtype).to(device())
    dy = torch.randn(rows, D, generator=g).to(dtype).to(device())
    return x, w, dy


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", list(SHAPES))
def test_rms_norm_forward_and_backward_match_float64(D, dtype):
    x, w, dy = _inputs(SHAPES[D], D, dtype, seed=D)
    (y, (dx, dw)) = kernel_grads(lambda a, b: rms_norm(a, b, backend="triton"), [x, w], dy)
    y64, (dx64, dw64) = grads64(norm64, [x, w], dy)
    assert y.dtype == dtype and y.shape == x.shape
    assert rel_err(y, y64) <= TOL[dtype]
    assert rel_err(dw, dw64) <= TOL[dtype]
    if D == 1:
        # dx = rstd * (g - xhat * mean(g * xhat)) ~ eps / x^2: pure cancellation; check it is ~0.
        assert (dx.double() - dx64).abs().max().item() <= 10 * TOL[dtype] * dy.abs().max().item()
    else:
        assert rel_err(dx, dx64) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_without_weight(dtype):
    x, _, dy = _inputs(5, 72, dtype, seed=1)
    y, (dx,) = kernel_grads(lambda a: rms_norm(a, None, backend="triton"), [x], dy)
    y64, (dx64,) = grads64(norm64, [x], dy)
    assert rel_err(y, y64) <= TOL[dtype]
    assert rel_err(dx, dx64) <= TOL[dtype]


def test_rms_norm_fp32_weight_on_bf16_input_keeps_input_dtype():
    x, w, dy = _inputs(9, 64, torch.bfloat16, seed=2)
    w = w.float()
    y, (dx, dw) = kernel_grads(lambda a, b: rms_norm(a, b, backend="triton"), [x, w], dy)
    y64, (dx64, dw64) = grads64(norm64, [x, w], dy)
    assert y.dtype == torch.bfloat16 and dx.dtype == torch.bfloat16 and dw.dtype == torch.float32
    assert max(rel_err(y, y64), rel_err(dx, dx64), rel_err(dw, dw64)) <= 1e-2


@pytest.mark.parametrize("shape", [(0, 64), (2, 0, 7), (0, 4096)])
def test_rms_norm_zero_rows(shape):
    x = torch.randn(shape, device=device(), requires_grad=True)
    w = torch.randn(shape[-1], device=device(), requires_grad=True)
    y = rms_norm(x, w, backend="triton")
    assert y.shape == x.shape
    dx, dw = torch.autograd.grad(y, (x, w), torch.ones_like(y))
    assert dx.shape == x.shape and torch.equal(dw, torch.zeros_like(w))


def test_rms_norm_leading_dims_and_1d_input():
    x, w, _ = _inputs(12, 64, torch.float32, seed=3)
    x4 = x.reshape(2, 3, 2, 64)
    assert rel_err(rms_norm(x4, w, backend="triton"), norm64(x4.double(), w.double())) <= 1e-5
    x1 = x[0]
    assert rel_err(rms_norm(x1, w, backend="triton"), norm64(x1.double(), w.double())) <= 1e-5


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda b: b[:, :64], id="row-stride"),
        pytest.param(lambda b: b[:, ::2], id="column-stride"),
        pytest.param(lambda b: b.reshape(5, 2, 128)[:, :, 64:].transpose(0, 1), id="permuted"),
        pytest.param(lambda b: b.reshape(5, 2, 2, 64)[:, :, 0], id="two-level"),
    ],
)
def test_rms_norm_strided_inputs_forward_and_backward(make):
    g = torch.Generator().manual_seed(4)
    base = torch.randn(10, 128, generator=g).to(device()).requires_grad_()
    w = torch.randn(64, generator=g).to(device()).requires_grad_()
    x = make(base)
    assert not x.is_contiguous() and x.shape[-1] == 64
    y = rms_norm(x, w, backend="triton")
    dy = torch.randn(y.shape, generator=g).to(device())
    db, dw = torch.autograd.grad(y, (base, w), dy)
    base64 = base.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    y64 = norm64(make(base64), w64)
    db64, dw64 = torch.autograd.grad(y64, (base64, w64), dy.double())
    assert rel_err(y, y64) <= 1e-5
    assert rel_err(db, db64) <= 1e-5 and rel_err(dw, dw64) <= 1e-5


def test_rms_norm_nan_and_inf_propagate_like_reference():
    x = torch.randn(6, 72, device=device())
    x[1, 3] = float("nan")
    x[2, 5] = float("inf")
    x[3, 0] = -float("inf")
    w = torch.randn(72, device=device())
    y = rms_norm(x, w, backend="triton").double()
    ref = norm64(x.double(), w.double())
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    ok = torch.isfinite(ref)
    assert torch.allclose(y[ok], ref[ok], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [7, 64, 1000])
def test_rms_norm_residual_matches_rounded_add_then_norm(D, dtype):
    rows = 3 if D == 1000 else 17
    x, w, dy = _inputs(rows, D, dtype, seed=10 + D)
    r, _, dh = _inputs(rows, D, dtype, seed=20 + D)
    (y, h), (dx, dr, dw) = kernel_grads(
        lambda a, b, c: rms_norm_residual(a, b, c, backend="triton"), [x, r, w], (dy, dh)
    )
    h_rounded = (x + r).double()  # semantics: h is rounded to x.dtype before the norm
    if dtype == torch.bfloat16 and not h.is_cuda:
        # Triton's CPU interpreter truncates fp32 -> bf16 (the GPU rounds to nearest): 1 ulp.
        assert ((h.double() - h_rounded).abs() <= h_rounded.abs() * 2**-7).all()
    else:
        assert torch.equal(h.double(), h_rounded)
    assert rel_err(y, norm64(h_rounded, w.double())) <= TOL[dtype]
    # Gradients of (norm(x + r), x + r) in float64.
    (_, _), (dx64, dr64, dw64) = grads64(lambda a, b, c: (norm64(a + b, c), a + b), [x, r, w], (dy, dh))
    assert rel_err(dx, dx64) <= TOL[dtype] and rel_err(dr, dr64) <= TOL[dtype]
    assert rel_err(dw, dw64) <= TOL[dtype]


@pytest.mark.parametrize("used", ["y", "h"])
@pytest.mark.parametrize("scaled", [False, True], ids=["plain", "layer-scale"])
def test_rms_norm_residual_one_output_unused(used, scaled):
    """Only one of ``(y, h)`` reaches the loss: the other's gradient arrives as None (no zeros are
    materialised) and every input's gradient still matches float64."""
    D, rows = 64, 17
    x, w, dy = _inputs(rows, D, torch.float32, seed=3)
    r, s, _ = _inputs(rows, D, torch.float32, seed=4)
    leaves = [t.clone().requires_grad_() for t in (x, r, w, s)]
    y, h = rms_norm_residual(*leaves[:3], scale=leaves[3] if scaled else None, backend="triton")
    ((y if used == "y" else h) * dy).sum().backward()
    x64, r64, w64, s64 = (t.detach().double().requires_grad_() for t in leaves)
    h64 = r64 + x64 * (s64 if scaled else 1.0)
    out64 = norm64(h64, w64) if used == "y" else h64
    (out64 * dy.double()).sum().backward()
    pairs = [(leaves[0], x64), (leaves[1], r64), (leaves[2], w64)] + ([(leaves[3], s64)] if scaled else [])
    for got, want in pairs:
        if want.grad is None:  # the weight gets no gradient when only h is used
            assert got.grad is None or not got.grad.any()
        else:
            assert rel_err(got.grad, want.grad) <= TOL[torch.float32]


@pytest.mark.parametrize(
    "dtypes",
    [
        (torch.float32,) * 3,
        (torch.float16,) * 3,
        (torch.bfloat16,) * 3,
        (torch.bfloat16, torch.float32, torch.float32),
    ],
    ids=lambda d: "-".join(str(t).removeprefix("torch.") for t in d),
)
@pytest.mark.parametrize("D", [7, 64, 1000])
def test_rms_norm_residual_layer_scale_matches_float64(D, dtypes):
    """h = residual + x * scale (LayerScale folded in), forward and every gradient; a bf16 branch
    on an fp32 residual stream and fp32 scale (autocast training) gives an fp32 h, as eager does."""
    x_dt, r_dt, s_dt = dtypes
    rows = 3 if D == 1000 else 17
    x, w, dy = _inputs(rows, D, x_dt, seed=30 + D)
    r, s, dh = _inputs(rows, D, r_dt, seed=40 + D)
    s = (0.1 * s).to(s_dt)
    w = w.to(s_dt)
    (y, h), grads = kernel_grads(
        lambda a, b, c, d: rms_norm_residual(a, b, c, scale=d, backend="triton"), [x, r, w, s], (dy, dh)
    )
    out_dt = torch.promote_types(x_dt, r_dt)
    assert y.dtype == h.dtype == out_dt

    def ref(a, b, c, d):
        h64 = b + a * d
        return norm64(h64, c), h64

    (y64, h64), grads64_ = grads64(ref, [x, r, w, s], (dy, dh))
    tol = TOL[out_dt] if x_dt == out_dt else TOL[x_dt]
    assert rel_err(h, h64) <= TOL[out_dt] and rel_err(y, y64) <= tol
    for got, want, t in zip(grads, grads64_, (x, r, w, s), strict=True):
        assert got.dtype == t.dtype
        assert rel_err(got, want) <= TOL[t.dtype]


def test_rms_norm_residual_layer_scale_rejects_bad_arguments():
    x = torch.randn(4, 8, device=device())
    with pytest.raises(ValueError, match=r"scale must have shape \(8,\)"):
        rms_norm_residual(x, x, None, scale=torch.ones(4, device=device()))
    with pytest.raises(ValueError, match="residual must have x's shape"):
        rms_norm_residual(x, x[:2], None)
    with pytest.raises(TypeError, match="scale must be float32, float16 or bfloat16"):
        rms_norm_residual(x, x, None, scale=torch.ones(8, dtype=torch.int32, device=device()))
    with pytest.raises(TypeError, match="Triton kernel takes float32"):
        rms_norm_residual(x, x.double(), None, backend="triton")


def test_rms_norm_residual_strided_residual():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 64, generator=g).to(device())
    rb = torch.randn(9, 128, generator=g).to(device())
    r = rb[:, 64:]
    w = torch.randn(64, generator=g).to(device())
    y, h = rms_norm_residual(x, r, w, backend="triton")
    assert torch.equal(h, x + r)
    assert rel_err(y, norm64((x + r).double(), w.double())) <= 1e-5


@pytest.mark.parametrize("residual", [False, True, "scale"])
def test_wide_rows_take_the_chunked_kernels(monkeypatch, residual):
    # Shrink the register limits so that D=200 runs the chunked kernels (as D > 16K does on a GPU).
    monkeypatch.setattr(tk, "FUSED_MAX_FWD", 64)
    monkeypatch.setattr(tk, "FUSED_MAX_BWD", 64)
    monkeypatch.setitem(tk.CHUNKED_FWD_TILES, tk.device_arch(torch.device(device())), Tile((64, 4), "test"))
    monkeypatch.setitem(
        tk.CHUNKED_BWD_TILES, tk.device_arch(torch.device(device())), Tile((64, 4, 1), "test")
    )
    x, w, dy = _inputs(11, 200, torch.float32, seed=6)
    if residual == "scale":
        r, s, dh = _inputs(11, 200, torch.float32, seed=7)
        (y, h), grads = kernel_grads(
            lambda a, b, c, d: rms_norm_residual(a, b, c, scale=d, backend="triton"), [x, r, w, s], (dy, dh)
        )
        (_, _), grads64_ = grads64(
            lambda a, b, c, d: (norm64(b + a * d, c), b + a * d), [x, r, w, s], (dy, dh)
        )
        y64 = norm64((r + x * s).double(), w.double())
    elif residual:
        r, _, dh = _inputs(11, 200, torch.float32, seed=7)
        (y, h), grads = kernel_grads(
            lambda a, b, c: rms_norm_residual(a, b, c, backend="triton"), [x, r, w], (dy, dh)
        )
        (_, _), grads64_ = grads64(lambda a, b, c: (norm64(a + b, c), a + b), [x, r, w], (dy, dh))
        y64 = norm64((x + r).double(), w.double())
    else:
        y, grads = kernel_grads(lambda a, b: rms_norm(a, b, backend="triton"), [x, w], dy)
        y64, grads64_ = grads64(norm64, [x, w], dy)
    assert rel_err(y, y64) <= 1e-5
    for got, want in zip(grads, grads64_, strict=True):
        assert rel_err(got, want) <= 1e-5


def test_backward_persistent_loop_over_many_blocks(monkeypatch):
    # Two programs walk 3 row blocks: the partial dw accumulates across iterations.
    monkeypatch.setattr(tk, "num_sms", lambda dev: 1)
    x, w, dy = _inputs(301, 8, torch.float32, seed=8)
    _, (dx, dw) = kernel_grads(lambda a, b: rms_norm(a, b, backend="triton"), [x, w], dy)
    _, (dx64, dw64) = grads64(norm64, [x, w], dy)
    assert rel_err(dx, dx64) <= 1e-5 and rel_err(dw, dw64) <= 1e-5


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("kind", ["plain", "residual", "scale"])
def test_backward_prefetch_over_many_blocks_matches_float64(monkeypatch, kind, prefetch):
    """The persistent backward with and without PREFETCH (each program loading its next block before
    reducing the current one), D = 300 (the 512-wide tables), several blocks per program: dx, the
    weight gradient accumulated across iterations and, with a LayerScale, the branch and scale
    gradients match float64."""
    from flopkit.kernels import _launch

    monkeypatch.setattr(tk, "num_sms", lambda dev: 1)
    # The ops call the launcher through the module: force the flag on the table's own tile.
    monkeypatch.setattr(tk, "norm_backward", functools.partial(tk.norm_backward, prefetch=prefetch))
    _launch.clear_launch_cache()
    try:
        x, w, dy = _inputs(61, 300, torch.float32, seed=9)
        r, s, dh = _inputs(61, 300, torch.float32, seed=10)
        if kind == "plain":
            fn, ref, args, grads_in = (
                lambda a, b: rms_norm(a, b, backend="triton"),
                norm64,
                [x, w],
                dy,
            )
        elif kind == "residual":
            fn = lambda a, b, c: rms_norm_residual(a, b, c, backend="triton")  # noqa: E731
            ref = lambda a, b, c: (norm64(a + b, c), a + b)  # noqa: E731
            args, grads_in = [x, r, w], (dy, dh)
        else:
            fn = lambda a, b, c, d: rms_norm_residual(a, b, c, scale=d, backend="triton")  # noqa: E731
            ref = lambda a, b, c, d: (norm64(b + a * d, c), b + a * d)  # noqa: E731
            args, grads_in = [x, r, w, 0.1 * s], (dy, dh)
        _, grads = kernel_grads(fn, args, grads_in)
        _, want = grads64(ref, args, grads_in)
        for got, exp in zip(grads, want, strict=True):
            assert rel_err(got, exp) <= 1e-5
    finally:
        _launch.clear_launch_cache()


def _opcheck_args():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(5, 3, 64, generator=g).to(device()).requires_grad_()
    r = torch.randn(5, 3, 64, generator=g).to(device()).requires_grad_()
    w = torch.randn(64, generator=g).to(device()).requires_grad_()
    return x, r, w


def test_opcheck_rms_norm_ops():
    x, r, w = _opcheck_args()
    torch.library.opcheck(torch.ops.flopkit.rms_norm, (x, w, 1e-6))
    torch.library.opcheck(torch.ops.flopkit.rms_norm, (x, None, 1e-6))
    torch.library.opcheck(torch.ops.flopkit.rms_norm_residual, (x, r, w, 1e-6))
    s = (0.5 + torch.rand(64, device=device())).requires_grad_()
    torch.library.opcheck(torch.ops.flopkit.rms_norm_residual, (x, r, w, 1e-6, s))
    torch.library.opcheck(torch.ops.flopkit.rms_norm_residual, (x, r.detach().bfloat16(), None, 1e-6, s))


def test_flop_counter_counts_three_flops_per_element():
    x, r, w = _opcheck_args()
    with FlopCounterMode(display=False) as counter:
        rms_norm(x, w, backend="triton")
        rms_norm_residual(x, r, w, backend="triton")  # the residual add is not counted
        rms_norm_residual(x, r, w, scale=w, backend="triton")  # nor the LayerScale (its module's)
    assert counter.get_total_flops() == 3 * 3 * math.prod(x.shape)
    flops = counter.get_flop_counts()["Global"]
    assert flops[torch.ops.flopkit.rms_norm] == 3 * x.numel()
    assert flops[torch.ops.flopkit.rms_norm_residual] == 2 * 3 * x.numel()


def test_meta_tensors_get_shapes_from_the_fake_implementation():
    x = torch.empty(4, 7, 64, device="meta", dtype=torch.bfloat16)
    w = torch.empty(64, device="meta", dtype=torch.bfloat16)
    y, h = torch.ops.flopkit.rms_norm_residual(x, x, w, 1e-6)
    assert y.shape == h.shape == x.shape and y.dtype == torch.bfloat16
    y, h = torch.ops.flopkit.rms_norm_residual(x, x.float(), w, 1e-6, w.float())
    assert y.dtype == h.dtype == torch.float32


@pytest.mark.parametrize("sum_kernel", [False, True], ids=["torch-sums", "sum-kernel"])
def test_torch_compile_fullgraph_runs_the_custom_ops(sum_kernel, monkeypatch):
    """On CUDA the launchers are traced; ``sum_kernel``: the weight gradients' partials are summed
    by ``_sum_partials_kernel`` inside the graph (``TRACED_SUM_KERNEL``), not by torch ops."""
    if sum_kernel and device() != "cuda":
        pytest.skip("TRACED_SUM_KERNEL changes the CUDA path only (on CPU the ops run their references)")
    monkeypatch.setattr(tk, "TRACED_SUM_KERNEL", sum_kernel)

    class PreNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.linspace(0.5, 1.5, 64))
            self.s = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 64))

        def forward(self, x, r):
            y, h = rms_norm_residual(x, r, self.w, backend="triton")
            y, h = rms_norm_residual(y, h, self.w, scale=self.s, backend="triton")
            return rms_norm(y * 2 + h, self.w, backend="triton")

    torch._dynamo.reset()
    model = PreNorm().to(device())
    x, r, _ = _opcheck_args()
    compiled = torch.compile(model, fullgraph=True)
    with cold_compile(device() == "cuda"):  # the flag changes the compiled code on CUDA only
        out = compiled(x, r)
        out.sum().backward()
    x64, r64, w64, s64 = (t.detach().double() for t in (x, r, model.w, model.s))
    h64 = x64 + r64
    h64 = h64 + norm64(h64, w64) * s64
    ref = norm64(norm64(h64, w64) * 2 + h64, w64)
    assert rel_err(out, ref) <= 1e-5
    assert x.grad is not None and model.w.grad is not None and model.s.grad is not None


def test_row_view_of_a_strided_slice_under_fake_tensors():
    # torch.compile traces the launcher with fake tensors, whose failed .view() raises ValueError
    # where eager raises RuntimeError: q sliced out of a fused qkv must still get its row view.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(4, 9, 3, 6, 64)[:, :, 0]  # [B, T, H, D] with the qkv row stride
        rows = tk._rows_view(q, 1, 64, "rows")
    assert (rows.n_tok, rows.HF, rows.s_o, rows.s_f) == (4 * 9 * 6, 6, 3 * 6 * 64, 64)
    assert not rows.copied


@pytest.mark.parametrize("two", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, cols", [(1, 1), (7, 5), (300, 40), (3, 700)])
@pytest.mark.parametrize("runner", ["launch", "wrapped", "wrapped-kernel"])
def test_sum_partials_kernel_matches_float64_column_sums(rows, cols, two, out_dtype, runner, monkeypatch):
    """The backward's weight-gradient reduction: fp32 partials summed in fp32, rounded once, by the
    kernel (eager's ``launch``; ``wrapped`` with ``TRACED_SUM_KERNEL``) or by torch ops (``wrapped``,
    the traced default)."""
    from flopkit.kernels._launch import launch
    from flopkit.kernels._norm_triton import sum_partials, wrapped

    monkeypatch.setattr(tk, "TRACED_SUM_KERNEL", runner == "wrapped-kernel")
    gen = torch.Generator().manual_seed(rows * 1000 + cols)
    parts = tuple(torch.randn(rows, cols, generator=gen).to(device()) for _ in range(2 if two else 1))
    outs = tuple(torch.full((cols,), float("nan"), dtype=out_dtype, device=device()) for _ in parts)
    sum_partials(list(zip(parts, outs, strict=True)), launch if runner == "launch" else wrapped)
    for part, out in zip(parts, outs, strict=True):
        ref, out = part.double().sum(0).cpu(), out.cpu()
        # fp32 accumulation in another order, then one rounding to the output dtype: one bf16 ulp,
        # since Triton's CPU interpreter truncates fp32 -> bf16 where the GPU rounds to nearest.
        tol = 1e-6 if out_dtype == torch.float32 else 2**-7
        assert ((out.double() - ref).abs() <= tol * ref.abs().clamp_min(1.0) * max(1, rows) ** 0.5).all()


@pytest.mark.parametrize("tile", [(4, 4096, 4), (16, 4096, 4), (32, 8192, 2), (8, 16, 1)])
def test_sum_partials_tiles_sum_every_row_and_column(tile):
    """Any tile the sums' sweep times sums the same partials: column blocks wider or narrower than
    the columns, one row block or several (``(8, 16, 1)``: two rows a loop step)."""
    from flopkit.kernels._norm_triton import sum_partials_plan

    gen = torch.Generator().manual_seed(7)
    a, b = (torch.randn(37, 11, generator=gen).to(device()) for _ in range(2))
    oa, ob = (torch.full((11,), float("nan"), device=device()) for _ in range(2))
    plan = sum_partials_plan(37, 11, True, tile)
    assert plan.meta["BLOCK_N"] <= tile[0] and plan.meta["num_warps"] == tile[2]
    plan.kernel[plan.grid](a, oa, b, ob, *plan.scalars, **plan.meta)
    for part, out in ((a, oa), (b, ob)):
        torch.testing.assert_close(out.cpu().double(), part.double().sum(0).cpu(), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("residual", [False, True])
def test_repeated_calls_reuse_the_plan_and_stay_exact(residual):
    """The eager path keeps a plan and the backward's partial buffers per shape: later calls with
    other values must not see the earlier calls' partials."""
    from flopkit.kernels import _launch

    _launch.clear_launch_cache()
    grads_seen = []
    for seed in range(3):
        x, w, dy = _inputs(19, 72, torch.float32, seed=100 + seed)
        r = _inputs(19, 72, torch.float32, seed=200 + seed)[0]
        s = (0.5 + torch.rand(72, generator=torch.Generator().manual_seed(seed))).to(device())
        if residual:

            def fn(a, b, c, d):
                return rms_norm_residual(a, c, b, scale=d, backend="triton")[0]

            def ref(a, b, c, d):
                return norm64(c + a * d, b)

            inputs = [x, w, r, s]
        else:
            fn, ref, inputs = (lambda a, b: rms_norm(a, b, backend="triton")), norm64, [x, w]
        y, grads = kernel_grads(fn, inputs, dy)
        y64, grads64_ = grads64(ref, inputs, dy)
        assert rel_err(y, y64) <= TOL[torch.float32]
        for g, g64 in zip(grads, grads64_, strict=True):
            assert rel_err(g, g64) <= TOL[torch.float32]
        grads_seen.append(grads[1])
    plans = [p for p in _launch._PLANS.values() if p.parts is not None]
    assert len(plans) == 1 and plans[0].workspace is not None  # one backward plan, reused
    assert not torch.equal(grads_seen[0], grads_seen[1])


def test_launchers_plan_symbolic_shapes():
    """Dynamic-shape tracing hands the launchers SymInt sizes: the row width must specialise (it
    sizes constexpr tiles and keys the launch tables) while the row count may stay symbolic."""
    from _references import symbolic_fake_tensors

    launched = []

    def record(kernel, grid, args, meta, num_tensors=0, plan=None):
        launched.append(kernel.__name__)

    mode, (x, w, r, s, xh, hw) = symbolic_fake_tensors((33, 72), (72,), (33, 72), (72,), (5, 3, 64), (3, 64))
    with mode:
        y, _ = tk.norm_forward(x, w, None, 1e-6, run=record)
        tk.norm_backward(y, x, w, False, 1e-6, run=record)
        y, h = tk.norm_forward(x, w, None, 1e-6, residual=r, scale=s, run=record)
        tk.norm_backward(y, h, w, False, 1e-6, dres=y, branch=x, scale=s, run=record)
        yh, _ = tk.norm_forward(
            xh, hw, hw, 1e-5, num_heads=3, head_dim=64, layer=True, per_head_weight=True, run=record
        )
        tk.norm_backward(
            yh, xh, hw, True, 1e-5, num_heads=3, head_dim=64, layer=True, per_head_weight=True, run=record
        )
    assert y.shape == x.shape and h.shape == x.shape and yh.shape == xh.shape
    assert launched.count("_norm_fwd_kernel") == 3 and launched.count("_norm_bwd_kernel") == 3


def _traced_sums(out, environ) -> tuple[list[str], dict]:
    # Without TRITON_INTERPRET: tracing an interpreted kernel runs it on the fake tensors.
    env = _early.checkout_env(environ, TRITON_INTERPRET="0", PYTHONWARNINGS="ignore")
    return [sys.executable, str(Path(__file__).with_name("_traced_sums_probe.py"))], {
        "env": env,
        "timeout": 300,
    }


# Starts when the session is collected (tests/_early.py).
TRACED_SUMS = _early.early("traced_sums", _traced_sums)


@pytest.mark.early("traced_sums")
def test_traced_backward_sums_partials_with_the_kernel_only_when_asked():
    """Traced as ``torch.compile`` traces a launcher (``run=wrapped``, fake tensors), a scaled
    residual norm's backward sums its two weight gradients with two torch sums by default and with
    one ``_sum_partials_kernel`` launch under ``TRACED_SUM_KERNEL``; so does the QK-norm + RoPE
    backward for its q and k weights (``_traced_sums_probe.py``)."""
    done = TRACED_SUMS.result()
    assert done.returncode == 0, done.stderr[-3000:]
    graphs = json.loads(done.stdout.strip().splitlines()[-1])
    for flag, sums in (("0", ["aten.sum.dim_IntList"] * 2), ("1", ["_sum_partials_kernel"])):
        assert graphs[flag] == {
            "norm": ["_norm_bwd_kernel", *sums],
            "rope": ["_qk_norm_rope_bwd_kernel", *sums],
        }, flag
