"""``kernels.gelu_linear`` (an MLP's exact GELU and second layer as one op: ``_mlp_triton.py``,
``_mlp_ops.py``) against float64, forward and backward, on its three routes, and ``Mlp``'s choice
of it.

On a machine without a GPU the kernels run in Triton's CPU interpreter (conftest.py), float32 and
float16 only: the interpreter computes ``tl.dot`` on bfloat16 tiles wrongly (test_sdpa_kernels.py).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from _references import backends_of, device, rel_err
from flopkit.kernels import _mlp_ops, _mlp_triton
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from flopkit import formulas, kernels
from flopkit.nn.vit5 import Mlp

DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if torch.cuda.is_available() else [])
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _inputs(shape, C, dtype, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    H = shape[-1]
    pre = torch.randn(shape, generator=g).to(device(), dtype).requires_grad_()
    w = (torch.randn(C, H, generator=g) / H**0.5).to(device(), dtype).requires_grad_()
    b = torch.randn(C, generator=g).to(device(), dtype).requires_grad_() if bias else None
    return pre, w, b


def _float64(pre, w, b, dy):
    args = [t.detach().double().requires_grad_() if t is not None else None for t in (pre, w, b)]
    y = F.linear(F.gelu(args[0]), args[1], args[2])
    grads = torch.autograd.grad(y, [t for t in args if t is not None], dy.double())
    return y.detach(), grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    ("shape", "C"),
    [((2, 37, 96), 40), ((70, 64), 64), ((3, 5, 200), 136)],  # K = C: uneven, even, uneven wider than a tile
)
def test_kernel_matches_float64_forward_and_backward(shape, C, bias, dtype):
    pre, w, b = _inputs(shape, C, dtype, bias)
    y = kernels.gelu_linear(pre, w, b, backend="triton")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device(), dtype)
    grads = torch.autograd.grad(y, [t for t in (pre, w, b) if t is not None], dy)
    y64, grads64 = _float64(pre, w, b, dy)
    assert y.dtype == dtype and y.shape == (*shape[:-1], C)
    assert rel_err(y, y64) < TOL[dtype]
    for name, got, want in zip(("pre", "weight", "bias")[: len(grads)], grads, grads64, strict=True):
        assert got.dtype == dtype and got.shape == want.shape, name
        assert rel_err(got, want) < TOL[dtype], name


def test_strided_gradient_and_input_are_taken():
    """A non-contiguous incoming gradient (the backward takes any strides) and a non-contiguous
    ``pre`` (copied) give the same results as contiguous ones."""
    pre, w, _ = _inputs((40, 96), 24, torch.float32, False)
    wide = torch.randn(96, 40, device=device()).t().requires_grad_()  # [40, 96], strides (1, 40)
    y = kernels.gelu_linear(wide, w, backend="triton")
    dy = torch.randn(y.shape[1], y.shape[0], device=device()).t()  # strides (1, 24)
    got = torch.autograd.grad(y, [wide, w], dy)
    y64, want = _float64(wide, w, None, dy)
    assert rel_err(y, y64) < 1e-5
    for a, b in zip(got, want, strict=True):
        assert rel_err(a, b) < 1e-5


def test_gelu_deriv_kernel_matches_float64():
    """The forward's one pass: gelu and gelu' of every element (a length that is not a multiple of
    the block), each within one rounding of float64 (plus 1e-6 absolute: ``1 + erf`` cancels far
    left in float32, as in PyTorch's own kernels)."""
    pre = (torch.randn(2 * _mlp_triton.DERIV_BLOCK + 77) * 3).to(device())
    h, g = _mlp_triton.gelu_deriv(pre)
    x = pre.double()
    cdf = 0.5 * (1 + torch.erf(x / 2**0.5))
    want_g = cdf + x * torch.exp(-x * x / 2) / (2 * torch.pi) ** 0.5
    eps = torch.finfo(torch.float32).eps
    for got, want in ((h, x * cdf), (g, want_g)):
        assert ((got.double() - want).abs() <= eps * want.abs() + 1e-6).all()
    ref_h, ref_g = _mlp_ops.gelu_deriv_ref(pre)
    torch.testing.assert_close(h, ref_h)
    torch.testing.assert_close(g, ref_g)


def test_custom_op_route_matches_eager_and_is_counted():
    """Through the ``flopkit::`` ops (what torch.compile and the counters see; on CPU the reference
    runs inside) the values and gradients are the eager path's, and FlopCounterMode counts
    ``linear``'s FLOPs each way by the ops' formulas."""
    results = []
    for routed in (False, True):
        pre, w, b = _inputs((6, 5, 32), 16, torch.float32, True, seed=3)
        if routed:
            with kernels.route_through_custom_ops(), FlopCounterMode(display=False) as counter:
                y = kernels.gelu_linear(pre, w, b)
                y.backward(torch.ones_like(y))
        else:
            y = kernels.gelu_linear(pre, w, b, backend="torch")
            y.backward(torch.ones_like(y))
        results.append([y.detach(), pre.grad, w.grad, b.grad])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    mm = formulas.linear(30, 32, 16)
    assert counts["flopkit.gelu_linear"] == mm
    assert counts["flopkit.gelu_linear_backward"] == mm
    assert counts["aten.mm"] == mm  # the weight gradient
    from flopkit.flops.ops import category_of

    assert (
        category_of("torch", "flopkit.gelu_linear")
        == category_of("torch", "flopkit.gelu_linear_backward")
        == "matmul"
    )


def test_opcheck():
    pre = torch.randn(4, 3, 32)
    w = torch.randn(16, 32)
    torch.library.opcheck(torch.ops.flopkit.gelu_linear.default, (pre, w, torch.randn(16)))
    torch.library.opcheck(torch.ops.flopkit.gelu_linear_backward.default, (torch.randn(4, 3, 16), w, pre))


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((torch.randn(4, 32), torch.randn(16, 31)), ValueError, r"pre must be \[\*, H\] and weight \[C, H\]"),
        (
            (torch.randn(4, 32), torch.randn(16, 32), torch.randn(15)),
            ValueError,
            r"bias must have shape \(16,\)",
        ),
        (
            (torch.randn(4, 32), torch.randn(16, 32).half()),
            TypeError,
            "weight is torch.float16, pre torch.float32",
        ),
    ],
)
def test_bad_input_is_refused_before_any_work(args, error, match):
    with pytest.raises(error, match=match):
        kernels.gelu_linear(*args)


def test_float64_runs_the_reference_and_refuses_the_kernel():
    pre, w = torch.randn(4, 32, dtype=torch.float64), torch.randn(16, 32, dtype=torch.float64)
    torch.testing.assert_close(kernels.gelu_linear(pre, w), kernels.gelu_linear_ref(pre, w))
    # On the device the kernel can run on (CUDA, or the CPU interpreter), float64 is the refusal.
    with pytest.raises(TypeError, match="gelu_linear: the Triton kernel takes float32, float16 or bfloat16"):
        kernels.gelu_linear(pre.to(device()), w.to(device()), backend="triton")


# ----------------------------------------------------------------------------- Mlp's choice


def _force_kernel_route(monkeypatch):
    """Make ``Mlp`` see the eager kernel route on CPU (the interpreter runs the kernels), as on CUDA."""
    real = kernels.route

    def route(backend, x, op, **kw):
        return kernels.Route.KERNEL if op == "Mlp" else real(backend, x, op, **kw)

    monkeypatch.setattr(kernels, "route", route)


def _calls(monkeypatch) -> list:
    return backends_of(monkeypatch, kernels, "gelu_linear")


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_mlp_fused_path_matches_its_modules(monkeypatch, bias, fold):
    """On the kernel route ``Mlp`` runs ``kernels.gelu_linear`` (with ``ls2`` folded into ``fc2``'s
    weight when given), and its output and every gradient match the modules' path."""
    if fold and bias:
        pytest.skip("a scale folds only into a bias-free fc2")
    if not torch.cuda.is_available():
        _force_kernel_route(monkeypatch)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float16
    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        mlp = Mlp(32, 128, bias=bias).to(device(), dtype)
        mlp.fused_gelu_linear = fused
        x = torch.randn(2, 9, 32, device=device(), dtype=dtype, requires_grad=True)
        scale = torch.rand(32, device=device(), dtype=dtype, requires_grad=True) if fold else None
        seen = _calls(monkeypatch)
        y = mlp(x, scale)
        assert len(seen) == int(fused)
        y.backward(torch.randn_like(y))
        params = [p.grad for p in mlp.parameters()]
        results.append([y.detach(), x.grad, *params, *([scale.grad] if fold else [])])
    for a, b in zip(*results, strict=True):
        assert rel_err(a, b.double()) < 1e-2


@pytest.mark.parametrize(
    "change",
    ["setting off", "no grad", "tanh GELU", "dropout", "hook on fc2", "hook on act", "float32", "counter"],
)
def test_mlp_takes_the_modules_where_the_op_does_not_apply(monkeypatch, change):
    """Every condition of ``Mlp.fused_gelu_linear`` that sends a call to the modules' path."""
    if not torch.cuda.is_available():
        _force_kernel_route(monkeypatch)
    dtype = torch.float32 if change == "float32" else torch.float16
    mlp = Mlp(32, 64, act_layer=(lambda: nn.GELU("tanh")) if change == "tanh GELU" else nn.GELU)
    if change == "dropout":
        mlp = Mlp(32, 64, drop=0.1)
    mlp = mlp.to(device(), dtype)
    mlp.fused_gelu_linear = change != "setting off"
    if change.startswith("hook on"):
        getattr(mlp, change.split()[-1]).register_forward_hook(lambda *a: None)
    x = torch.randn(3, 32, device=device(), dtype=dtype)
    seen = _calls(monkeypatch)
    if change == "no grad":
        with torch.no_grad():
            mlp(x)
    elif change == "counter":
        with FlopCounterMode(display=False):
            mlp(x)
    else:
        mlp(x)
    assert seen == []
    if change == "setting off":  # and on again: the op
        mlp.fused_gelu_linear = True
        mlp(x.requires_grad_())
        assert seen == [kernels.Route.KERNEL]


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)
def test_mlp_fused_path_under_fsdp2_matches_its_modules(monkeypatch):
    """Under ``fully_shard`` (one rank, gloo on CPU and NCCL on CUDA: FSDP2's all-gather, its
    unsharded parameters and its reduce-scatter all run) ``Mlp`` still takes the op, and output and
    gradients match the modules'."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not torch.cuda.is_available():
        _force_kernel_route(monkeypatch)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float16
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh(device(), (1,))
        results = []
        for fused in (True, False):
            torch.manual_seed(0)
            mlp = Mlp(32, 128).to(device(), dtype)
            mlp.fused_gelu_linear = fused
            fully_shard(mlp, mesh=mesh)
            x = torch.randn(2, 9, 32, device=device(), dtype=dtype, requires_grad=True)
            seen = _calls(monkeypatch)
            y = mlp(x)
            assert len(seen) == int(fused)
            y.backward(torch.randn_like(y))
            results.append([y.detach(), x.grad, *(p.grad.full_tensor() for p in mlp.parameters())])
    finally:
        dist.destroy_process_group()
    for a, b in zip(*results, strict=True):
        assert rel_err(a, b.double()) < 1e-2


def test_mlp_default_is_the_op(monkeypatch):
    """On by default since an H100 step measured it (docs/benchmarks.md)."""
    if not torch.cuda.is_available():
        _force_kernel_route(monkeypatch)
    mlp = Mlp(32, 64).to(device(), torch.float16)
    seen = _calls(monkeypatch)
    mlp(torch.randn(3, 32, device=device(), dtype=torch.float16, requires_grad=True))
    assert mlp.fused_gelu_linear is True and seen == [kernels.Route.KERNEL]


def test_mlp_setting_is_checked():
    mlp = Mlp(8, 16).to(device(), torch.float16)
    mlp.fused_gelu_linear = "yes"
    with pytest.raises(ValueError, match="fused_gelu_linear must be True, False or 'eager', got 'yes'"):
        mlp(torch.randn(2, 8, device=device(), dtype=torch.float16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cuda_compiled_mlp_inlines_the_kernels_and_matches_float64(mode):
    """Under ``torch.compile`` ``Mlp`` runs the op, Inductor launches its two kernels from its own
    code, and the output and gradients match float64 as the eager op's do (bf16 on the H100)."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    torch.manual_seed(0)
    mlp = Mlp(128, 512).cuda().bfloat16()
    mlp.fused_gelu_linear = True
    x = torch.randn(4, 50, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(4, 50, 128, device="cuda", dtype=torch.bfloat16)
    ref = Mlp(128, 512).double().cuda()
    ref.load_state_dict(mlp.state_dict())
    x64 = x.detach().double().requires_grad_()
    y64 = ref(x64)
    y64.backward(dy.double())
    compiled = torch.compile(mlp, fullgraph=True, mode=mode)

    def step():
        torch.compiler.cudagraph_mark_step_begin()
        x.grad = None
        for p in mlp.parameters():
            p.grad = None
        out = compiled(x)
        out.backward(dy)
        return out

    out, code = run_and_get_code(step)
    out = step()
    source = "\n".join(code)
    for kernel in ("_gelu_deriv_kernel", "_dgelu_mm_tma_kernel"):  # bf16, row-major: TMA
        assert kernel in source, f"{kernel} not inlined under mode={mode}"
    assert rel_err(out.detach().clone(), y64) < 1.6e-2
    assert rel_err(x.grad, x64.grad) < 1.6e-2
    for p, p64 in zip(mlp.parameters(), ref.parameters(), strict=True):
        assert rel_err(p.grad, p64.grad) < 1.6e-2


@pytest.mark.parametrize(("subtile", "prefetch"), [(1, 0), (2, 0), (1, 1), (2, 1), (2, 2), (1, 3), (2, 3)])
def test_tma_backward_kernel_matches_float64(subtile, prefetch):
    """The TMA form of the backward GEMM (what CUDA half inputs take, ``BACKWARD_KERNEL``) in the
    interpreter, float32 (its descriptors load bfloat16 wrongly there), edges that cut the tiles;
    each place the epilogue's ``g`` may be loaded (``PREFETCH``)."""
    if torch.cuda.is_available():
        pytest.skip("CUDA runs it through the op (test_kernel_matches_float64)")
    M, K, N = 80, 48, 72
    a, b, g = torch.randn(M, K), torch.randn(K, N), torch.randn(M, N)
    out = torch.empty(M, N)
    _mlp_triton._dgelu_mm_tma_kernel[(3,)](
        a, b, g, out, M, N, K, NUM_PROGRAMS=3, BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, GROUP_M=2,
        SUBTILE=subtile, PREFETCH=prefetch,
    )  # fmt: skip
    want = (a.double() @ b.double()) * g.double()
    assert rel_err(out, want) < 1e-6


@pytest.mark.parametrize("fake", [False, True])
def test_alignment_is_read_from_traced_tensors_too(fake):
    """``torch.compile`` traces the op's body with fake tensors, which have no address: their
    storage offset decides (an address read there failed the compile)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() if fake else contextlib.nullcontext():
        t = torch.empty(64, 64, dtype=torch.bfloat16)
        assert _mlp_triton._aligned(t)
        assert _mlp_triton._aligned(t[8:])  # 8 rows of 128 bytes in
        assert not _mlp_triton._aligned(t.view(-1)[1:])  # 2 bytes in
        assert not _mlp_triton._aligned(t.view(-1)[4:])  # 8 bytes in


def test_tma_is_taken_only_where_its_layout_rules_hold():
    ok = torch.empty(64, 32, dtype=torch.float16)
    w = torch.empty(32, 48, dtype=torch.float16)
    assert not _mlp_triton._takes_tma(ok, w)  # not CUDA
    if torch.cuda.is_available():
        ok, w = ok.cuda(), w.cuda()
        assert _mlp_triton._takes_tma(ok, w)
        assert not _mlp_triton._takes_tma(ok.float(), w.float())
        assert not _mlp_triton._takes_tma(torch.empty(32, 64, device="cuda", dtype=torch.float16).t(), w)
        assert not _mlp_triton._takes_tma(
            torch.empty(64, 36, device="cuda", dtype=torch.float16)[:, :30], w[:30]
        )
