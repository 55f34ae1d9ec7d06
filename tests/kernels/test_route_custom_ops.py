"""route_through_custom_ops: on CPU every op goes through its flopkit:: custom op (the reference
runs inside it), with the same values and gradients as the plain reference path, and the FLOP
counters see the ops by name."""

import pytest
import torch
from _references import device
from torch.utils.flop_counter import FlopCounterMode

from flopkit import ViT5Attention, kernels
from flopkit.nn.rope import build_rope_tables, token_layout

CASES = {
    "rms_norm": (lambda x, w, b, backend: kernels.rms_norm(x, w, backend=backend), (8,), False),
    "per_head": (lambda x, w, b, backend: kernels.per_head_rms_norm(x, w, 3, backend=backend), (8,), False),
    "per_head_flat": (
        lambda x, w, b, backend: kernels.per_head_rms_norm(x.flatten(-2), w, 3, backend=backend),
        (8,),
        False,
    ),
    "head_norm_layer": (
        lambda x, w, b, backend: kernels.head_norm(x, w, b, mode="layer", backend=backend),
        (3, 8),
        True,
    ),
    "head_norm_rms_flat": (
        lambda x, w, b, backend: kernels.head_norm(x.flatten(-2), w, b, backend=backend),
        (3, 8),
        False,
    ),
    "residual": (
        lambda x, w, b, backend: kernels.rms_norm_residual(x, x.flip(0), w, backend=backend),
        (8,),
        False,
    ),
    "residual_layer_scale": (
        lambda x, w, b, backend: kernels.rms_norm_residual(x, x.flip(0), w, scale=w.flip(0), backend=backend),
        (8,),
        False,
    ),
}


def run_case(fn, wshape, bias, dtype, routed):
    torch.manual_seed(1)
    x = torch.randn(5, 3, 8, dtype=dtype, requires_grad=True)
    w = torch.randn(wshape, dtype=dtype, requires_grad=True)
    b = torch.randn(wshape, dtype=dtype, requires_grad=True) if bias else None
    if routed:
        with kernels.route_through_custom_ops():
            out = fn(x, w, b, "auto")
    else:
        out = fn(x, w, b, "torch")
    outs = out if isinstance(out, tuple) else (out,)
    torch.manual_seed(2)
    sum((o.double() * torch.randn(o.shape, dtype=torch.float64)).sum() for o in outs).backward()
    return [o.detach() for o in outs], [t.grad for t in (x, w, b) if t is not None]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_routed_norm_ops_match_reference_forward_and_backward(case, dtype):
    fn, wshape, bias = CASES[case]
    outs_r, grads_r = run_case(fn, wshape, bias, dtype, routed=True)
    outs, grads = run_case(fn, wshape, bias, dtype, routed=False)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for a, b in zip(outs_r + grads_r, outs + grads, strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("pairing", ["split_half", "interleaved"])
@pytest.mark.parametrize("wshape", [(16,), (3, 16), None])
def test_routed_qk_norm_rope_matches_reference(pairing, wshape):
    H, D = 3, 16
    cos, sin = (t.double() for t in build_rope_tables(token_layout(3, 3, True, 4), D))
    base = [torch.randn(2, 14, 3 * H * D, dtype=torch.float64)]
    base += [torch.randn(wshape, dtype=torch.float64) if wshape else None for _ in range(2)]
    results = []
    for routed in (True, False):
        ins = [t.clone().requires_grad_() if t is not None else None for t in base]
        args = (ins[0], cos, sin, H, ins[1], ins[2], 1e-6, pairing)
        if routed:
            with kernels.route_through_custom_ops():
                outs = kernels.qk_norm_rope(*args, norm=True)
        else:
            outs = kernels.qk_norm_rope(*args, norm=True, backend="torch")
        torch.manual_seed(3)
        sum((o * torch.randn_like(o)).sum() for o in outs).backward()
        results.append([*outs, *(t.grad for t in ins if t is not None)])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


def test_routed_attention_is_counted_by_flop_counter_on_meta():
    with torch.device("meta"):
        attn = ViT5Attention(48, 3, 3, 3, qk_norm="rmsnorm")
        x = torch.empty(2, 14, 48)
    with kernels.route_through_custom_ops(), FlopCounterMode(display=False) as counter:
        attn(x)
    bd = attn.flop_breakdown()
    assert counter.get_total_flops() == 2 * sum(bd.values())
    assert "flopkit.qk_norm_rope" in {str(op) for op in counter.get_flop_counts()["Global"]}


def test_route_is_scoped_to_the_context():
    x = torch.randn(4, 8)
    with kernels.route_through_custom_ops():
        assert kernels.resolve_backend("auto", x, "t") == "triton"
    assert kernels.resolve_backend("auto", x, "t") == "torch"


def _eager_and_op(name):
    """The eager entry and the custom op that ``KernelOp`` generates from the op's one spec."""
    from flopkit.kernels import _norm_ops as ops

    spec = ops.OPS[f"flopkit::{name}"]
    return spec.eager, spec.op


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("rms_norm", lambda x, w, b: (x.view(15, 8), w, 1e-6)),
        ("rms_norm_residual", lambda x, w, b: (x.view(15, 8), x.view(15, 8).flip(0).detach(), w, 1e-6)),
        (
            "rms_norm_residual",
            lambda x, w, b: (x.view(15, 8), x.view(15, 8).flip(0).detach(), w, 1e-6, b[0]),
        ),
        ("per_head_rms_norm", lambda x, w, b: (x, w, 3, 8, 1e-6)),
        ("head_norm", lambda x, w, b: (x, w.expand(3, 8).contiguous(), b, 3, 8, 1e-5, "layer")),
    ],
)
def test_eager_path_matches_custom_op_path(name, args):
    """A plain eager call launches the kernels through the generated autograd.Function; the custom
    op (what torch.compile and the counters see) must give the same values and gradients."""
    eager, op = _eager_and_op(name)
    results = []
    for fn in (eager, op):
        torch.manual_seed(4)
        x = torch.randn(5, 24, device=device(), requires_grad=True)  # CUDA, or the CPU interpreter
        w = torch.randn(8, device=device(), requires_grad=True)
        b = torch.randn(3, 8, device=device(), requires_grad=True)
        out = fn(*args(x, w, b))
        outs = out if isinstance(out, tuple) else (out,)
        torch.manual_seed(5)
        sum((o * torch.randn_like(o)).sum() for o in outs).backward()
        results.append([*(o.detach() for o in outs), x.grad, w.grad, b.grad])
    for a, b in zip(*results, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b)


def test_float64_runs_the_reference_and_refuses_the_kernel():
    # On the device the kernel can run on (CUDA, or the CPU interpreter), float64 is the refusal.
    x = torch.randn(3, 8, dtype=torch.float64, device=device())
    torch.testing.assert_close(kernels.rms_norm(x), kernels.rms_norm_ref(x))
    with pytest.raises(
        TypeError, match="rms_norm: the Triton kernel takes float32, float16 or bfloat16, got float64"
    ):
        kernels.rms_norm(x, backend="triton")


@pytest.mark.parametrize("dtype", [torch.int32, torch.float8_e4m3fn])
def test_unsupported_dtypes_are_rejected_before_any_work(dtype):
    x = torch.ones(3, 8).to(dtype)
    with pytest.raises(TypeError, match=r"x must be float32, float16 or bfloat16"):
        kernels.rms_norm(x, backend="torch")
