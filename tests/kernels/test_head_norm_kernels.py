"""Per-head norms (QK-norm with a shared weight, HeadNorm rms/layer) vs float64 references."""

from __future__ import annotations

import pytest
import torch
from _references import TOL, device, grads64, kernel_grads, norm64, rel_err
from flopkit.kernels import _norm_triton as tk
from flopkit.kernels import head_norm, per_head_rms_norm
from flopkit.kernels._launch import Tile
from torch.utils.flop_counter import FlopCounterMode

# importing _norm_ops registers the flopkit:: ops (on first use otherwise); these tests call them directly

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _heads64(x, weight, bias, H, D, eps, centre):
    """float64 per-head norm of ``x`` ``[*, H*D]`` or ``[*, H, D]``; weight ``(D,)`` or ``(H, D)``."""
    return norm64(x.reshape(-1, H, D), weight, bias, eps, centre).reshape(x.shape)


def _data(shape, dtype, seed, *extra):
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(shape, generator=g).to(dtype).to(device())]
    out += [(1 + 0.5 * torch.randn(s, generator=g)).to(dtype).to(device()) for s in extra]
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("H", "D"), [(3, 64), (2, 72), (2, 128), (5, 7)])
@pytest.mark.parametrize("flat", [True, False], ids=["flat", "heads"])
def test_per_head_rms_norm_matches_float64(H, D, dtype, flat):
    shape = (3, 5, H * D) if flat else (3, 5, H, D)
    x, w = _data(shape, dtype, H * D, (D,))
    (dy,) = _data(shape, dtype, H * D + 1)
    fn = lambda a, b: per_head_rms_norm(a, b, H, backend="triton")  # noqa: E731
    y, (dx, dw) = kernel_grads(fn, [x, w], dy)
    y64, (dx64, dw64) = grads64(lambda a, b: _heads64(a, b, None, H, D, 1e-6, False), [x, w], dy)
    assert y.shape == x.shape and y.dtype == dtype
    assert max(rel_err(y, y64), rel_err(dx, dx64), rel_err(dw, dw64)) <= TOL[dtype]


def test_per_head_rms_norm_reads_q_in_place_from_fused_qkv():
    # q sliced from [B, T, 3, H, D]: heads and tokens have different strides, no copy needed.
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(2, 9, 3, 4, 64, generator=g).to(device()).requires_grad_()
    w = torch.randn(64, generator=g).to(device()).requires_grad_()
    q = qkv[:, :, 0]
    y = per_head_rms_norm(q, w, 4, backend="triton")
    dy = torch.randn(y.shape, generator=g).to(device())
    dqkv, dw = torch.autograd.grad(y, (qkv, w), dy)
    qkv64, w64 = qkv.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    y64 = norm64(qkv64[:, :, 0], w64)
    dqkv64, dw64 = torch.autograd.grad(y64, (qkv64, w64), dy.double())
    assert rel_err(y, y64) <= 1e-5 and rel_err(dqkv, dqkv64) <= 1e-5 and rel_err(dw, dw64) <= 1e-5
    assert torch.equal(dqkv[:, :, 1:], torch.zeros_like(dqkv[:, :, 1:]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["rms", "layer"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize(("H", "D"), [(3, 64), (12, 72)])
def test_head_norm_matches_float64(H, D, mode, with_bias, dtype):
    shape = (7, H, D)
    x, w, b = _data(shape, dtype, H + D, (H, D), (H, D))
    (dy,) = _data(shape, dtype, 99)
    b = b if with_bias else None
    fn = lambda a, c, e: head_norm(a, c, e, eps=1e-5, mode=mode, backend="triton")  # noqa: E731
    y, grads = kernel_grads(fn, [x, w, b], dy)
    y64, grads64_ = grads64(lambda a, c, e: norm64(a, c, e, 1e-5, mode == "layer"), [x, w, b], dy)
    assert rel_err(y, y64) <= TOL[dtype]
    for got, want in zip(grads, grads64_, strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            assert got.dtype == dtype
            assert rel_err(got, want) <= TOL[dtype]


def test_head_norm_without_weight_uses_num_heads_and_head_dim():
    (x,) = _data((5, 2 * 72), torch.float32, 3)
    y = head_norm(x, None, None, mode="layer", num_heads=2, head_dim=72, backend="triton")
    assert rel_err(y, _heads64(x.double(), None, None, 2, 72, 1e-5, True)) <= 1e-5


@pytest.mark.parametrize("mode", ["rms", "layer"])
def test_head_norm_wide_heads_take_the_chunked_kernels(monkeypatch, mode):
    monkeypatch.setattr(tk, "FUSED_MAX_FWD", 64)
    monkeypatch.setattr(tk, "FUSED_MAX_BWD", 64)
    monkeypatch.setitem(tk.CHUNKED_FWD_TILES, tk.device_arch(torch.device(device())), Tile((32, 4), "test"))
    monkeypatch.setitem(
        tk.CHUNKED_BWD_TILES, tk.device_arch(torch.device(device())), Tile((32, 4, 1), "test")
    )
    x, w, b = _data((5, 3, 100), torch.float32, 4, (3, 100), (3, 100))
    (dy,) = _data((5, 3, 100), torch.float32, 5)
    fn = lambda a, c, e: head_norm(a, c, e, mode=mode, backend="triton")  # noqa: E731
    y, grads = kernel_grads(fn, [x, w, b], dy)
    y64, grads64_ = grads64(lambda a, c, e: norm64(a, c, e, 1e-5, mode == "layer"), [x, w, b], dy)
    assert rel_err(y, y64) <= 1e-5
    for got, want in zip(grads, grads64_, strict=True):
        assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("shape", [(5, 3 * 64 + 1), (5, 2, 64), (5, 3, 32), ()])
def test_head_shapes_other_than_flat_or_split_are_rejected_before_any_work(backend, shape):
    # x must be [*, H*D] or [*, H, D]: 3 heads of 64 here.
    x = torch.randn(shape, device=device())
    with pytest.raises(ValueError, match=r"num_heads\*head_dim = 3\*64 = 192 or in \(3, 64\)"):
        head_norm(x, torch.ones(3, 64, device=device()), None, backend=backend)
    with pytest.raises(ValueError, match=r"num_heads\*head_dim = 3\*64 = 192 or in \(3, 64\)"):
        per_head_rms_norm(x, torch.ones(64, device=device()), 3, backend=backend)


def test_head_norm_zero_rows():
    x = torch.empty(0, 3, 64, device=device(), requires_grad=True)
    w = torch.randn(3, 64, device=device(), requires_grad=True)
    y = head_norm(x, w, None, mode="layer", backend="triton")
    dx, dw = torch.autograd.grad(y, (x, w), torch.ones_like(y))
    assert y.shape == x.shape and torch.equal(dw, torch.zeros_like(w))


def test_head_norm_nan_propagates_to_its_head_only():
    x = torch.randn(4, 3, 64, device=device())
    x[1, 2, 5] = float("nan")
    y = head_norm(x, torch.ones(3, 64, device=device()), None, mode="layer", backend="triton")
    assert torch.isnan(y[1, 2]).all()
    assert torch.isfinite(y[1, :2]).all() and torch.isfinite(y[[0, 2, 3]]).all()


def test_opcheck_head_norm_ops():
    x, w, hw, hb = _data((5, 3, 64), torch.float32, 6, (64,), (3, 64), (3, 64))
    x, w, hw, hb = (t.requires_grad_() for t in (x, w, hw, hb))
    torch.library.opcheck(torch.ops.flopkit.per_head_rms_norm, (x, w, 3, 64, 1e-6))
    torch.library.opcheck(torch.ops.flopkit.head_norm, (x, hw, hb, 3, 64, 1e-5, "layer"))
    torch.library.opcheck(torch.ops.flopkit.head_norm, (x, hw, None, 3, 64, 1e-5, "rms"))


@pytest.mark.parametrize(
    ("mode", "with_bias", "per_elem"),
    [("rms", False, 3), ("rms", True, 4), ("layer", False, 5), ("layer", True, 6)],
)
def test_flop_counter_counts_head_norm_by_mode_and_bias(mode, with_bias, per_elem):
    x, hw, hb = _data((5, 3, 64), torch.float32, 7, (3, 64), (3, 64))
    with FlopCounterMode(display=False) as counter:
        head_norm(x, hw, hb if with_bias else None, mode=mode, backend="triton")
    assert counter.get_total_flops() == per_elem * x.numel()


def test_flop_counter_counts_per_head_rms_norm_over_all_heads():
    x, w = _data((5, 3 * 64), torch.float32, 8, (64,))
    with FlopCounterMode(display=False) as counter:
        per_head_rms_norm(x, w, 3, backend="triton")
    assert counter.get_total_flops() == 3 * x.numel()


def test_torch_compile_fullgraph_with_head_norms():
    class QKNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qw = torch.nn.Parameter(torch.linspace(0.5, 1.5, 64))
            self.kw = torch.nn.Parameter(torch.linspace(1.5, 0.5, 3 * 64).reshape(3, 64))

        def forward(self, q, k):
            return per_head_rms_norm(q, self.qw, 3, backend="triton") * head_norm(
                k, self.kw, None, mode="layer", backend="triton"
            )

    torch._dynamo.reset()
    q, k = _data((4, 3, 64), torch.float32, 9, (4, 3, 64))
    model = QKNorm().to(device())
    out = torch.compile(model, fullgraph=True)(q, k)
    out.sum().backward()
    ref = norm64(q.double(), model.qw.double()) * norm64(k.double(), model.kw.double(), None, 1e-5, True)
    assert rel_err(out, ref) <= 1e-5 and model.kw.grad is not None
