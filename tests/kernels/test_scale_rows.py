"""``scale_rows`` (``weight * scale[:, None]``) kernels vs an independent float64 computation, and its
routing: the kernels only in eager code on CUDA (CPU: the Triton interpreter, see conftest.py).
"""

from __future__ import annotations

import pytest
import torch
from _references import TOL, device, grads64, kernel_grads, rel_err
from flopkit.kernels import _scale_triton
from flopkit.kernels.scale import scale_rows, scale_rows_ref

from flopkit import kernels

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def rows64(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return w * s[:, None]


def _inputs(R: int, K: int, wdt: torch.dtype, sdt: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(R, K, generator=g).to(wdt).to(device())
    s = (1e-1 * torch.randn(R, generator=g)).to(sdt).to(device())
    dy = torch.randn(R, K, generator=g).to(torch.promote_types(wdt, sdt)).to(device())
    return w, s, dy


# K: below one step (16), ragged (37), one full step (1024) and past it (2500: three steps).
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("R,K", [(1, 16), (7, 37), (5, 1024), (3, 2500)])
def test_scale_rows_forward_and_backward_match_float64(R, K, dtype):
    w, s, dy = _inputs(R, K, dtype, dtype, seed=R * K)
    out, (dw, ds) = kernel_grads(lambda a, b: scale_rows(a, b, backend="triton"), [w, s], dy)
    out64, (dw64, ds64) = grads64(rows64, [w, s], dy)
    assert out.dtype == dtype and dw.dtype == dtype and ds.dtype == dtype
    assert out.shape == (R, K) and dw.shape == (R, K) and ds.shape == (R,)
    # The forward rounds one fp32 product: exactly PyTorch's (the interpreter's bf16 conversion
    # truncates, where the GPU rounds to nearest).
    if dtype != torch.bfloat16 or w.is_cuda:
        assert torch.equal(out, scale_rows_ref(w, s))
    for got, want in ((out, out64), (dw, dw64), (ds, ds64)):
        assert rel_err(got, want) <= TOL[dtype]


def test_scale_rows_row_sum_accumulates_in_fp32():
    # Half a bf16 row of (1 + 2**-7)**2 = 1 + 2**-6 + 2**-14, half of -(1 + 2**-6): the row sum is
    # 2048 * 2**-14 = 0.125 with fp32 products; rounded to bf16 first (the reference's order) each
    # product loses its 2**-14 and the sum is 0.
    K = 4096
    a = 1 + 2**-7
    w = torch.full((2, K), a, dtype=torch.bfloat16, device=device())
    dy = torch.full((2, K), a, dtype=torch.bfloat16, device=device())
    w[:, K // 2 :] = 1.0
    dy[:, K // 2 :] = -(1 + 2**-6)
    s = torch.ones(2, dtype=torch.bfloat16, device=device())
    _, (_, ds) = kernel_grads(lambda a, b: scale_rows(a, b, backend="triton"), [w, s], dy)
    assert ds.tolist() == [0.125, 0.125]
    _, (_, ds_ref) = kernel_grads(scale_rows_ref, [w, s], dy)
    assert ds_ref.tolist() == [0.0, 0.0]


def test_scale_rows_mixed_dtypes_follow_promotion():
    w, s, dy = _inputs(4, 40, torch.bfloat16, torch.float32, seed=3)
    out, (dw, ds) = kernel_grads(lambda a, b: scale_rows(a, b, backend="triton"), [w, s], dy)
    assert out.dtype == torch.float32 and dw.dtype == torch.bfloat16 and ds.dtype == torch.float32
    out64, (dw64, ds64) = grads64(rows64, [w, s], dy)
    assert max(rel_err(out, out64), rel_err(dw, dw64)) <= TOL[torch.bfloat16]
    assert rel_err(ds, ds64) <= TOL[torch.bfloat16]


def test_scale_rows_strided_inputs():
    # A transposed weight, a scale with stride 2 and a gradient that is a column slice.
    w, s, _ = _inputs(40, 9, torch.float32, torch.float32, seed=4)
    wt = w.t()  # [9, 40], strides (1, 9)
    s2 = torch.randn(18, device=device())[::2]
    big = torch.randn(9, 80, device=device())
    dy = big[:, ::2]
    out, (dw, ds) = kernel_grads(lambda a, b: scale_rows(a, b, backend="triton"), [wt, s2], dy)
    out64, (dw64, ds64) = grads64(rows64, [wt, s2], dy)
    for got, want in ((out, out64), (dw, dw64), (ds, ds64)):
        assert rel_err(got, want) <= TOL[torch.float32]


def test_scale_rows_empty():
    for R, K in ((0, 8), (3, 0)):
        w = torch.randn(R, K, device=device(), requires_grad=True)
        s = torch.randn(R, device=device(), requires_grad=True)
        out = scale_rows(w, s, backend="triton")
        assert out.shape == (R, K)
        dw, ds = torch.autograd.grad(out, (w, s), torch.ones_like(out), allow_unused=True)
        assert dw.shape == (R, K) and ds.shape == (R,) and not ds.any()


@pytest.mark.parametrize(
    "w_shape,s_shape,match",
    [((4, 3, 2), (4,), r"weight must be \[R, K\], got shape \(4, 3, 2\)"),
     ((4, 3), (3,), r"scale must have shape \(4,\) to match weight.shape\[0\], got \(3,\)")],
)  # fmt: skip
def test_scale_rows_rejects_bad_shapes(w_shape, s_shape, match):
    with pytest.raises(ValueError, match=match):
        scale_rows(torch.randn(w_shape), torch.randn(s_shape))


def test_scale_rows_dtypes():
    w, s = torch.randn(3, 4), torch.randn(3)
    with pytest.raises(
        TypeError, match="scale_rows: weight must be float32, float16 or bfloat16, got torch.int64"
    ):
        scale_rows(w.long(), s)
    with pytest.raises(TypeError, match="got scale float64"):
        scale_rows(w, s.double(), backend="triton")
    # float64 anywhere runs the reference.
    assert scale_rows(w, s.double()).dtype == torch.float64


def test_scale_rows_routes(monkeypatch):
    """The kernels run only where the route says KERNEL: ``backend="torch"``, CPU tensors with
    ``"auto"``, and every dispatch mode take the reference."""
    calls = []
    real = _scale_triton.scale_rows_forward
    monkeypatch.setattr(_scale_triton, "scale_rows_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    w, s = torch.randn(3, 4, device=device()), torch.randn(3, device=device())
    scale_rows(w, s, backend="torch")
    scale_rows(w.cpu(), s.cpu())
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False):
        scale_rows(w, s, backend="triton")
    assert calls == []
    scale_rows(w, s, backend="triton")
    assert calls == [1]


def test_vit5_fold_runs_scale_rows(monkeypatch):
    """The MLP's LayerScale fold goes through ``kernels.scale_rows``, and the block's output and
    gradients match the unfolded module (float64 on CPU: the reference path)."""
    from flopkit import ViT5Config
    from flopkit.nn.vit5 import ViT5Block

    seen = []
    real = kernels.scale_rows
    monkeypatch.setattr(kernels, "scale_rows", lambda *a, **k: seen.append(a[0].shape) or real(*a, **k))
    cfg = ViT5Config.from_preset("vit5-small", depth=1, hidden_dim=64, num_heads=2, num_registers=0)
    block = ViT5Block.from_config(cfg, 2, 2).double()
    x = torch.randn(2, block.num_tokens, 64, dtype=torch.float64)
    y = block(x)
    assert seen == [block.mlp.fc2.weight.shape]
    ref = x + block.ls1(block.attn(block.norm1(x)))
    ref = ref + block.ls2(block.mlp(block.norm2(ref)))
    torch.testing.assert_close(y, ref)


def test_vit5_fold_with_the_kernels_matches_the_reference():
    """``ScalableLinear.scale_backend="triton"`` (the opt-in kernels) gives the block's output and
    gradients of the default reference fold."""
    from flopkit import ViT5Config
    from flopkit.nn.vit5 import ViT5Block

    torch.manual_seed(0)
    cfg = ViT5Config.from_preset("vit5-small", depth=1, hidden_dim=64, num_heads=2, num_registers=0)
    block = ViT5Block.from_config(cfg, 2, 2).to(device())
    with torch.no_grad():
        block.ls2.gamma.normal_()  # away from its 1e-4 init, so the fold matters
    x = torch.randn(2, block.num_tokens, 64, device=device())
    results = []
    for backend in ("torch", "triton"):
        block.mlp.fc2.scale_backend = backend
        block.zero_grad()
        y = block(x)
        y.backward(torch.ones_like(y))
        results.append((y.detach(), block.mlp.fc2.weight.grad.clone(), block.ls2.gamma.grad.clone()))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
