"""The runtime paths on a GPU: the eager fast launch, torch.compile inlining the kernels, CUDA graphs.

Skipped without CUDA (CI has none); run on the GPU machine with ``pytest tests/kernels -k cuda``.
Every check compares against the float64 reference on fresh random inputs.
"""

import pytest
import torch
from flopkit.kernels import _launch
from torch.utils.flop_counter import FlopCounterMode

from flopkit import kernels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DEV = "cuda"


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _inputs(dtype, *shape, offset=0):
    # ``offset`` shifts the data pointer off 16-byte alignment: Triton specialises on alignment,
    # so the launch cache must tell the two apart.
    base = torch.randn(offset + torch.Size(shape).numel(), device=DEV, dtype=dtype)
    return base[offset:].view(*shape).requires_grad_()


def _check_op(fn, ref, x, w, tol):
    y = fn(x, w)
    dy = torch.randn_like(y)
    y.backward(dy)
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
    y64 = ref(x64, w64)
    y64.backward(dy.double())
    assert rel_err(y, y64) < tol
    assert rel_err(x.grad, x64.grad) < tol and rel_err(w.grad, w64.grad) < tol


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("offset", [0, 1])
def test_cuda_fast_launch_repeats_match_float64(dtype, offset):
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    _launch.clear_launch_cache()
    for _ in range(3):  # the first call compiles, the later ones take the cached direct launch
        x = _inputs(dtype, 33, 5, 72, offset=offset)
        w = (1 + 0.1 * torch.randn(72, device=DEV)).to(dtype).requires_grad_()
        _check_op(kernels.rms_norm, kernels.rms_norm_ref, x, w, tol)
        xh = _inputs(dtype, 33, 6, 64, offset=offset)
        wh = (1 + 0.1 * torch.randn(6, 64, device=DEV)).to(dtype).requires_grad_()
        _check_op(
            lambda a, b: kernels.head_norm(a, b, mode="layer"),
            lambda a, b: kernels.head_norm_ref(a, b, mode="layer"),
            xh,
            wh,
            tol,
        )
    assert _launch._COMPILED, "the direct-launch cache was never filled on CUDA"


def _model():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.linspace(0.5, 1.5, 64, device=DEV))
            self.qkv = torch.nn.Linear(64, 192, device=DEV)
            self.register_buffer("cos", torch.randn(17, 16, device=DEV))
            self.register_buffer("sin", torch.randn(17, 16, device=DEV))
            self.qn = torch.nn.Parameter(torch.ones(16, device=DEV))

        def forward(self, x, r):
            y, h = kernels.rms_norm_residual(x, r, self.w)
            q, k, v = kernels.qk_norm_rope(self.qkv(y), self.cos, self.sin, 4, self.qn, self.qn)
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return kernels.rms_norm(a.transpose(1, 2).reshape(h.shape) + h, self.w)

    return Block()


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cuda_compile_inlines_the_triton_kernels(mode):
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    model = _model()
    x, r = torch.randn(2, 17, 64, device=DEV), torch.randn(2, 17, 64, device=DEV)
    eager = model(x, r)
    compiled = torch.compile(model, fullgraph=True, mode=mode)

    def step():
        torch.compiler.cudagraph_mark_step_begin()  # each call is a new step (CUDA graphs reuse outputs)
        for p in model.parameters():  # as a training loop's zero_grad(set_to_none=True): no accumulation
            p.grad = None  # into .grad tensors that a recorded CUDA graph owns
        out = compiled(x, r)
        out.sum().backward()
        return out

    out, code = run_and_get_code(step)
    out = step()  # a second call replays (CUDA graphs under reduce-overhead)
    assert rel_err(out.detach().clone(), eager) < 1e-5
    source = "\n".join(code)
    # Inductor launches flopkit's kernels from its own code instead of calling the custom ops.
    for kernel in ("_norm_fwd_kernel", "_qk_norm_rope_fwd_kernel", "_norm_bwd_kernel"):
        assert kernel in source, f"{kernel} not inlined under mode={mode}"
    assert "torch.ops.flopkit" not in source


def test_cuda_flop_counter_sees_the_ops():
    model = _model()
    x, r = torch.randn(2, 17, 64, device=DEV), torch.randn(2, 17, 64, device=DEV)
    with FlopCounterMode(display=False) as counter:
        model(x, r)
    counts = counter.get_flop_counts()["Global"]
    assert counts[torch.ops.flopkit.rms_norm] == 3 * x.numel()
    assert counts[torch.ops.flopkit.rms_norm_residual] == 3 * x.numel()
    assert counts[torch.ops.flopkit.qk_norm_rope] == (6 + 4) * x.numel()
