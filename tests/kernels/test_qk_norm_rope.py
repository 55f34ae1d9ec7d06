"""Fused QK-norm + 2D RoPE (``flopkit::qk_norm_rope``): the Triton kernel against a float64 spec.

On a machine without a GPU the kernel runs in Triton's CPU interpreter (conftest.py). The spec
below is written from docs/vit5.md directly: the rotation is an explicit matrix built from the
channel pairs, not the library's ``rotate_pairs``.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from _references import cold_compile, device, rel_err
from flopkit.kernels import qk_norm_rope, qk_norm_rope_ref
from torch.utils.flop_counter import FlopCounterMode

from flopkit import formulas

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PAIRINGS = ("split_half", "interleaved")
WEIGHTS = (None, "shared", "per_head")
B, T, H = 2, 7, 3


def rotation_matrix(D: int, pairing: str) -> torch.Tensor:
    """``M`` with ``rot(x) = x @ M``: for each pair ``(i, j)``, ``rot(x)_i = -x_j`` and ``rot(x)_j = x_i``."""
    if pairing == "split_half":
        q4 = D // 4
        pairs = [(half + c, half + c + q4) for half in (0, D // 2) for c in range(q4)]
    else:
        pairs = [(2 * c, 2 * c + 1) for c in range(D // 2)]
    M = torch.zeros(D, D, dtype=torch.float64)
    for i, j in pairs:
        M[j, i] = -1.0
        M[i, j] = 1.0
    return M


def spec(qkv, cos, sin, num_heads, q_weight, k_weight, eps, pairing, norm):
    """float64 q, k, v ``[B, H, T, D]`` of docs/vit5.md: RMS-norm per head, times weight, then rotate."""
    b, t, three_hd = qkv.shape
    D = three_hd // (3 * num_heads)
    x = qkv.double().reshape(b, t, 3, num_heads, D)
    M = rotation_matrix(D, pairing).to(qkv.device)
    c, s = cos.double()[:, None, :], sin.double()[:, None, :]

    def one(y, w):
        if norm:
            y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + eps)
            if w is not None:
                y = y * w.double()
        return (y * c + (y @ M) * s).permute(0, 2, 1, 3)

    return one(x[:, :, 0], q_weight), one(x[:, :, 1], k_weight), x[:, :, 2].permute(0, 2, 1, 3)


def make_inputs(D, weights, dtype=torch.float32, batch=B, tokens=T, heads=H):
    qkv = torch.randn(batch, tokens, 3 * heads * D, device=DEVICE).to(dtype)
    # Random tables, not unit-circle ones: the kernel must compute x*cos + rot(x)*sin for any values.
    cos = torch.randn(tokens, D, device=DEVICE)
    sin = torch.randn(tokens, D, device=DEVICE)
    shape = {None: None, "shared": (D,), "per_head": (heads, D)}[weights]
    qw = None if shape is None else 1 + 0.5 * torch.randn(shape, device=DEVICE)
    kw = None if shape is None else 1 + 0.5 * torch.randn(shape, device=DEVICE)
    return qkv, cos, sin, qw, kw


def run_both(qkv, cos, sin, qw, kw, pairing, norm=None, heads=H, eps=1e-6):
    """Kernel and spec forward + backward on the same random output gradients."""
    norm = (qw is not None) if norm is None else norm
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (qkv, qw, kw)]
    qkv_leaf, qw_leaf, kw_leaf = leaves
    outs = qk_norm_rope(
        qkv_leaf, cos, sin, heads, qw_leaf, kw_leaf, eps, pairing, norm=norm, backend="triton"
    )
    grads = [torch.randn(o.shape, device=DEVICE, dtype=torch.float64) for o in outs]
    sum((o.double() * g).sum() for o, g in zip(outs, grads, strict=True)).backward()

    ref_leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (qkv, qw, kw)]
    ref = spec(ref_leaves[0], cos, sin, heads, ref_leaves[1], ref_leaves[2], eps, pairing, norm)
    sum((o * g).sum() for o, g in zip(ref, grads, strict=True)).backward()
    return outs, ref, leaves, ref_leaves


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("D", [12, 64, 72])
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_forward_and_backward_match_float64_spec(pairing, D, weights):
    outs, ref, leaves, ref_leaves = run_both(*make_inputs(D, weights), pairing)
    for o, r in zip(outs, ref, strict=True):
        assert rel_err(o, r) < 1e-5
    for leaf, ref_leaf in zip(leaves, ref_leaves, strict=True):
        if leaf is not None:
            assert rel_err(leaf.grad, ref_leaf.grad) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_half_precision_io_within_rounding(pairing, dtype):
    qkv, cos, sin, qw, kw = make_inputs(72, "shared", dtype)
    outs, ref, leaves, ref_leaves = run_both(qkv, cos, sin, qw, kw, pairing)
    assert all(o.dtype == dtype for o in outs)
    for o, r in zip(outs, ref, strict=True):
        assert rel_err(o, r) < 1e-2
    for leaf, ref_leaf in zip(leaves, ref_leaves, strict=True):
        assert rel_err(leaf.grad, ref_leaf.grad) < 1e-2


def test_gradient_carries_v_slice_and_q_k_parts():
    qkv, cos, sin, qw, kw = make_inputs(8, "per_head")
    _, _, leaves, ref_leaves = run_both(qkv, cos, sin, qw, kw, "split_half")
    g, rg = leaves[0].grad.view(B, T, 3, H, 8), ref_leaves[0].grad.view(B, T, 3, H, 8)
    for part in range(3):
        assert rel_err(g[:, :, part], rg[:, :, part]) < 1e-5


def test_unused_v_gets_zero_gradient():
    qkv, cos, sin, qw, kw = make_inputs(8, "shared")
    leaf = qkv.clone().requires_grad_()
    q, k, _ = qk_norm_rope(leaf, cos, sin, H, qw, kw, pairing="interleaved", backend="triton")
    (q.sum() + k.sum()).backward()
    assert torch.count_nonzero(leaf.grad.view(B, T, 3, H, 8)[:, :, 2]) == 0
    assert torch.count_nonzero(leaf.grad.view(B, T, 3, H, 8)[:, :, :2]) > 0


@pytest.mark.parametrize("layout", ["last_dim_stride_2", "tokens_major", "storage_offset"])
def test_strided_qkv(layout):
    D = 12
    if layout == "last_dim_stride_2":
        qkv = torch.randn(B, T, 2 * 3 * H * D, device=DEVICE)[..., ::2]
    elif layout == "storage_offset":  # v is a view at an offset into qkv's storage
        qkv = torch.randn(B, T + 1, 3 * H * D + 4, device=DEVICE)[:, 1:, 4:]
    else:
        qkv = torch.randn(T, B, 3 * H * D, device=DEVICE).transpose(0, 1)
    assert not qkv.is_contiguous()
    _, cos, sin, qw, kw = make_inputs(D, "per_head")
    outs, ref, leaves, ref_leaves = run_both(qkv, cos.t().contiguous().t(), sin, qw, kw, "split_half")
    for o, r in zip(outs, ref, strict=True):
        assert rel_err(o, r) < 1e-5
    assert rel_err(leaves[0].grad, ref_leaves[0].grad) < 1e-5


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_twelve_heads_and_up_write_q_k_token_major(pairing):
    """From TOKEN_MAJOR_MIN_HEADS heads up q and k are [B, H, T, D] views of [B, T, H, D] buffers
    (cuDNN's attention output then needs no transposing copy); values and gradients as the spec."""
    from flopkit.kernels import _rope_triton as rt

    heads = rt.TOKEN_MAJOR_MIN_HEADS
    outs, ref, leaves, ref_leaves = run_both(*make_inputs(8, "per_head", heads=heads), pairing, heads=heads)
    q, k, _ = outs
    for t in (q, k):
        assert t.shape == (B, heads, T, 8) and not t.is_contiguous()
        assert t.transpose(1, 2).is_contiguous()
    for o, r in zip(outs, ref, strict=True):
        assert rel_err(o, r) < 1e-5
    for leaf, ref_leaf in zip(leaves, ref_leaves, strict=True):
        assert rel_err(leaf.grad, ref_leaf.grad) < 1e-5


def test_opcheck_token_major_layout():
    """The fake, the CPU reference inside the op and the kernel agree on the token-major strides."""
    from flopkit.kernels import _rope_ops  # noqa: F401
    from flopkit.kernels import _rope_triton as rt

    heads = rt.TOKEN_MAJOR_MIN_HEADS
    qkv, cos, sin, qw, kw = make_inputs(8, "shared", heads=heads)
    qkv.requires_grad_()
    args = (qkv, cos, sin, qw, kw, heads, 1e-6, "split_half", True)
    torch.library.opcheck(torch.ops.flopkit.qk_norm_rope.default, args)


def test_outputs_layout_q_k_contiguous_v_view_of_qkv():
    # H = 3 heads: below TOKEN_MAJOR_MIN_HEADS, q and k are contiguous (head-major).
    qkv, cos, sin, qw, kw = make_inputs(8, None)
    q, k, v = qk_norm_rope(qkv, cos, sin, H, backend="triton")
    assert q.shape == k.shape == v.shape == (B, H, T, 8)
    assert q.is_contiguous() and k.is_contiguous()
    assert v.untyped_storage().data_ptr() == qkv.untyped_storage().data_ptr()
    assert torch.equal(v, qkv.view(B, T, 3, H, 8)[:, :, 2].transpose(1, 2))


def test_norm_without_weight_normalises_only():
    qkv, cos, sin, _, _ = make_inputs(12, None)
    outs, ref, leaves, ref_leaves = run_both(qkv, cos, sin, None, None, "split_half", norm=True)
    for o, r in zip(outs, ref, strict=True):
        assert rel_err(o, r) < 1e-5
    assert rel_err(leaves[0].grad, ref_leaves[0].grad) < 1e-5


def test_weights_unused_without_norm():
    qkv, cos, sin, qw, kw = make_inputs(12, "shared")
    outs, ref, leaves, _ = run_both(qkv, cos, sin, qw, kw, "interleaved", norm=False)
    for o, r in zip(outs, ref, strict=True):
        assert rel_err(o, r) < 1e-5
    assert leaves[1].grad is None and leaves[2].grad is None


def test_float64_runs_the_reference_and_refuses_the_kernel():
    # One dtype rule for every op: float64 takes the reference; the kernels take fp32/fp16/bf16.
    qkv, cos, sin, qw, kw = make_inputs(12, "per_head", torch.float64)
    cos, sin, qw, kw = cos.double(), sin.double(), qw.double(), kw.double()
    with pytest.raises(TypeError, match="float64"):
        qk_norm_rope(qkv, cos, sin, H, qw, kw, backend="triton")
    q, k, v = qk_norm_rope(qkv, cos, sin, H, qw, kw, backend="auto")
    ref = spec(qkv, cos, sin, H, qw, kw, 1e-6, "split_half", True)
    assert q.dtype == torch.float64
    for o, r in zip((q, k, v), ref, strict=True):
        assert rel_err(o, r) < 1e-12


def test_many_rows_span_several_programs():
    # More row tiles than backward programs, so each program loops and reduces weight partials.
    qkv, cos, sin, qw, kw = make_inputs(8, "shared", batch=3, tokens=50, heads=2)
    outs, ref, leaves, ref_leaves = run_both(qkv, cos, sin, qw, kw, "split_half", heads=2)
    for o, r in zip(outs, ref, strict=True):
        assert rel_err(o, r) < 1e-5
    for leaf, ref_leaf in zip(leaves, ref_leaves, strict=True):
        assert rel_err(leaf.grad, ref_leaf.grad) < 1e-5


def test_empty_batch():
    qkv, cos, sin, qw, kw = make_inputs(8, "shared", batch=0)
    leaf = qkv.clone().requires_grad_()
    qw, kw = qw.requires_grad_(), kw.requires_grad_()
    q, k, v = qk_norm_rope(leaf, cos, sin, H, qw, kw, backend="triton")
    assert q.shape == (0, H, T, 8)
    (q.sum() + k.sum() + v.sum()).backward()
    assert leaf.grad.shape == qkv.shape
    # No tokens: the weight gradients are exact zeros (the kernel never ran to fill its partials).
    assert torch.equal(qw.grad, torch.zeros_like(qw)) and torch.equal(kw.grad, torch.zeros_like(kw))


def test_shared_q_weight_with_per_head_k_weight():
    # Weight gradients of different shapes are reduced in separate launches.
    qkv, cos, sin, qw, _ = make_inputs(8, "shared")
    _, _, _, _, kw = make_inputs(8, "per_head")
    outs, ref, leaves, ref_leaves = run_both(qkv, cos, sin, qw, kw, "interleaved")
    for o, r in zip(outs, ref, strict=True):
        assert rel_err(o, r) < 1e-5
    for leaf, ref_leaf in zip(leaves, ref_leaves, strict=True):
        assert rel_err(leaf.grad, ref_leaf.grad) < 1e-5


@pytest.mark.parametrize("weights", [None, "per_head"])
def test_opcheck_custom_ops(weights):
    from flopkit.kernels import _rope_ops  # noqa: F401  (registers the ops)

    qkv, cos, sin, qw, kw = make_inputs(8, weights)
    norm = weights is not None
    qkv.requires_grad_()
    if qw is not None:
        qw.requires_grad_()
    torch.library.opcheck(
        torch.ops.flopkit.qk_norm_rope.default, (qkv, cos, sin, qw, kw, H, 1e-6, "split_half", norm)
    )
    dq, dk, dv = (torch.randn(B, H, T, 8, device=DEVICE) for _ in range(3))
    # The backward op has no autograd of its own (no double backward): plain inputs.
    qw = None if qw is None else qw.detach()
    args = (dq, dk, dv, qkv.detach(), cos, sin, qw, kw, H, 1e-6, "interleaved", norm)
    torch.library.opcheck(torch.ops.flopkit.qk_norm_rope_backward.default, args)


def test_custom_op_on_meta_device():
    from flopkit.kernels import _rope_ops  # noqa: F401

    qkv = torch.empty(4, 9, 3 * 2 * 8, device="meta", dtype=torch.bfloat16)
    cos = sin = torch.empty(9, 8, device="meta")
    q, k = torch.ops.flopkit.qk_norm_rope(qkv, cos, sin, None, None, 2, 1e-6, "split_half", False)
    assert q.shape == k.shape == (4, 2, 9, 8) and q.dtype == torch.bfloat16


@pytest.mark.parametrize("norm", [True, False])
def test_flop_counter_sees_the_op(norm):
    qkv, cos, sin, qw, kw = make_inputs(8, "shared" if norm else None)
    with FlopCounterMode(display=False) as counter:
        qk_norm_rope(qkv, cos, sin, H, qw, kw, backend="triton")
    elems = B * T * H * 8
    # Hand count, docs/conventions.md: norm 3 and rope 2 FLOPs per element, for q and for k.
    expected = 2 * (3 + 2) * elems if norm else 2 * 2 * elems
    assert counter.get_total_flops() == expected == formulas.qk_norm_rope(B, T, H, 8, norm)
    assert "flopkit.qk_norm_rope" in {str(op) for op in counter.get_flop_counts()["Global"]}


def test_dispatcher_path_matches_direct_path():
    # Eager calls skip the custom-op dispatcher; under a dispatch mode (here FlopCounterMode) the
    # same launchers run through flopkit::qk_norm_rope and its backward op.
    qkv, cos, sin, qw, kw = make_inputs(12, "per_head")
    results = []
    for mode in (contextlib.nullcontext(), FlopCounterMode(display=False)):
        leaf = qkv.clone().requires_grad_()
        with mode:
            q, k, v = qk_norm_rope(leaf, cos, sin, H, qw, kw, pairing="interleaved", backend="triton")
            (q.sum() + 2 * k.sum() + 3 * v.sum()).backward()
        results.append((q, k, leaf.grad))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("sum_kernel", [False, True], ids=["torch-sums", "sum-kernel"])
@pytest.mark.parametrize("same_weight", [False, True])
def test_torch_compile_fullgraph_with_gradients(same_weight, sum_kernel, monkeypatch):
    """Whole-graph compile with gradients: v is a view of qkv, and one weight may serve q and k
    (Dynamo cannot trace an autograd.Function given one tensor twice). On CUDA, ``sum_kernel``:
    the weights' partials summed by ``_sum_partials_kernel`` in the graph (``TRACED_SUM_KERNEL``)."""
    if sum_kernel and device() != "cuda":
        pytest.skip("TRACED_SUM_KERNEL changes the CUDA path only (on CPU the ops run their references)")
    from flopkit.kernels import _norm_triton

    monkeypatch.setattr(_norm_triton, "TRACED_SUM_KERNEL", sum_kernel)
    qkv, cos, sin, qw, kw = make_inputs(8, "shared")
    qkv.requires_grad_()
    qw = qw.detach().clone().requires_grad_()
    kw = qw if same_weight else kw.detach().clone().requires_grad_()

    def f(a, wq, wk):
        q, k, v = qk_norm_rope(a, cos, sin, H, wq, wk, backend="triton")
        return (q * k).sum() + (v * v * v).sum()

    torch._dynamo.reset()
    with cold_compile(device() == "cuda"):  # the flag changes the compiled code on CUDA only
        out = torch.compile(f, fullgraph=True)(qkv, qw, kw)
        out.backward()
    a64, qw64 = qkv.detach().double().requires_grad_(), qw.detach().double().requires_grad_()
    kw64 = qw64 if same_weight else kw.detach().double().requires_grad_()
    q, k, v = qk_norm_rope_ref(a64, cos.double(), sin.double(), H, qw64, kw64)
    ref = (q * k).sum() + (v * v * v).sum()
    ref.backward()
    assert rel_err(out, ref) < 1e-5
    assert rel_err(qkv.grad, a64.grad) < 1e-5 and rel_err(qw.grad, qw64.grad) < 1e-5
    assert rel_err(kw.grad, kw64.grad) < 1e-5


def test_launchers_plan_symbolic_shapes():
    """Dynamic-shape tracing hands the launchers SymInt sizes (see the norm kernels' test)."""
    from _references import symbolic_fake_tensors
    from flopkit.kernels import _rope_triton as rt

    launched = []

    def record(kernel, grid, args, meta, num_tensors=0, plan=None):
        launched.append(kernel.__name__)

    mode, (qkv, cos, sin, w) = symbolic_fake_tensors((2, 17, 3 * H * 8), (17, 8), (17, 8), (8,))
    with mode:
        q, k = rt.qk_norm_rope_fwd(qkv, cos, sin, w, w, H, 1e-6, "split_half", True, run=record)
        dqkv, dqw, dkw = rt.qk_norm_rope_bwd(
            q, k, None, qkv, cos, sin, w, w, H, 1e-6, "split_half", True, run=record
        )
    assert q.shape == (2, H, 17, 8) and dqkv.shape == qkv.shape and dqw.shape == (8,)
    assert launched[:2] == ["_qk_norm_rope_fwd_kernel", "_qk_norm_rope_bwd_kernel"]
