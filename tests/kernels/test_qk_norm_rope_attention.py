"""QK-norm + RoPE and attention as one op (``flopkit::qk_norm_rope_attention``), whose backward
writes dq, dk and dv into one buffer and runs the QK-norm + RoPE's backward in place on it: equal,
bit for bit, to the two ops run one after the other, and within rounding of float64 specs written
in the two ops' own test files.

On a machine without a GPU the kernels run in Triton's CPU interpreter (float16 there: its bfloat16
``tl.dot`` is wrong, see ``test_sdpa_kernels.py``).
"""

from __future__ import annotations

import pytest
import torch
from _references import cold_compile, device, rel_err
from flopkit.kernels._launch import launch
from flopkit.kernels._rope_triton import qk_norm_rope_bwd, qk_norm_rope_fwd, qkv_heads
from flopkit.kernels._sdpa_triton import (
    AttnTile,
    attention_bwd,
    attention_fwd,
    qk_norm_rope_attention_bwd,
    qk_norm_rope_attention_fwd,
)
from test_qk_norm_rope import make_inputs
from test_qk_norm_rope import spec as qk_spec
from test_sdpa_kernels import spec as attention_spec
from torch.utils.flop_counter import FlopCounterMode

from flopkit import formulas, kernels

HALF = [torch.float16] + ([torch.bfloat16] if torch.cuda.is_available() else [])
TILES = {"dq_tile": AttnTile(16, 16, 4, 1), "dkdv_tile": AttnTile(16, 16, 4, 1)}
# dk/dv's keys in full blocks, then tail steps of 16 (the shipped DKDV_TILE's form; 16 is the
# smallest step tl.dot takes on a GPU).
TAILED = {"dq_tile": AttnTile(16, 16, 4, 1), "dkdv_tile": AttnTile(32, 32, 4, 1, 16)}


def float64_grads(qkv, cos, sin, qw, kw, heads, eps, pairing, norm, scale, do):
    """``o`` and the gradients of ``qkv`` and the weights, all in float64, from the two specs."""
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in (qkv, qw, kw)]
    q, k, v = qk_spec(leaves[0], cos, sin, heads, leaves[1], leaves[2], eps, pairing, norm)
    o = attention_spec(q, k, v, scale)
    o.backward(do.double())
    return o, [None if t is None else t.grad for t in leaves]


def run(D, weights, pairing, dtype, *, batch=2, heads=2, tokens=21, norm=None, tiles=TILES):
    """The one op's launchers (forward, then backward on a random ``do``), the two ops' launchers on
    the same inputs, and the float64 specs: ``(one_op, two_ops, exact)``, each ``(o, [dqkv, dqw, dkw])``."""
    qkv, cos, sin, qw, kw = make_inputs(D, weights, dtype, batch=batch, tokens=tokens, heads=heads)
    norm = qw is not None if norm is None else norm
    args = (cos, sin, qw, kw, heads, 1e-6, pairing, norm)
    scale = D**-0.5
    o, lse, q, k = qk_norm_rope_attention_fwd(qkv, *args, scale)
    do = torch.randn_like(o)
    one_op = (o, list(qk_norm_rope_attention_bwd(do, qkv, q, k, o, lse, *args, scale, **tiles)))
    # The two ops' launchers: dq, dk, dv in buffers of their own, then the QK-norm + RoPE's kernel.
    v = qkv.unflatten(-1, (3, heads, D))[:, :, 2].transpose(1, 2)
    o2, lse2 = attention_fwd(q, k, v, scale)
    dq, dk, dv = attention_bwd(do, q, k, v, o2, lse2, scale, **tiles)
    two_ops = (o2, list(qk_norm_rope_bwd(dq, dk, dv, qkv, *args)))
    return one_op, two_ops, float64_grads(qkv, *args, scale, do)


def assert_the_two_ops_results(one_op, two_ops, exact, tol):
    """Each of the one op's results equal to the two ops' (the same kernels on the same values) and
    within ``tol`` of float64; a gradient without a weight is the empty ``(0,)`` tensor."""
    assert torch.equal(one_op[0], two_ops[0])
    assert rel_err(one_op[0], exact[0]) < tol
    for name, got, other, ref in zip(("dqkv", "dqw", "dkw"), one_op[1], two_ops[1], exact[1], strict=True):
        assert got.dtype == other.dtype and got.shape == other.shape, name
        assert torch.equal(got, other), name
        if ref is None:  # no weight, or norm=False
            assert got.shape == (0,), name
        else:
            assert rel_err(got, ref) < tol, name


@pytest.mark.parametrize("weights", ["shared", "per_head", None])
@pytest.mark.parametrize("pairing", ["split_half", "interleaved"])
@pytest.mark.parametrize("dtype", HALF)
def test_matches_the_two_ops_and_float64(dtype, pairing, weights):
    """T = 21 (a partial last block each way), D = 16, both pairings, shared, per-head and no weights."""
    tol = 3e-3 if dtype == torch.float16 else 2e-2
    assert_the_two_ops_results(*run(16, weights, pairing, dtype), tol=tol)


def test_model_layout_and_tail_steps():
    """12 heads (q and k token-major, as ViT-5-Base's) and T = 37 with the dk/dv kernel's tail
    steps writing into the shared buffer."""
    one_op, two_ops, exact = run(
        16, "per_head", "split_half", torch.float16, batch=1, heads=12, tokens=37, tiles=TAILED
    )
    assert_the_two_ops_results(one_op, two_ops, exact, tol=3e-3)


@pytest.mark.parametrize("pairing", ["split_half", "interleaved"])
def test_rope_without_norm_ignores_the_weights(pairing):
    """``norm=False``: RoPE's backward only; the weights get no gradient (empty, as the two ops')."""
    assert_the_two_ops_results(*run(32, "shared", pairing, torch.float16, norm=False), tol=3e-3)


def test_opcheck_ops():
    """The custom ops' schema, fake, autograd registration and dispatch (forward and backward op)."""
    from flopkit.kernels import _sdpa_ops  # noqa: F401  (registers the ops)

    qkv, cos, sin, qw, kw = make_inputs(16, "per_head", batch=1, tokens=5, heads=1)
    qkv, qw, kw = (t.requires_grad_() for t in (qkv, qw, kw))
    args = (qkv, cos, sin, qw, kw, 1, 1e-6, "split_half", True, 0.25)
    torch.library.opcheck(torch.ops.flopkit.qk_norm_rope_attention.default, args)
    o, lse, q, k = torch.ops.flopkit.qk_norm_rope_attention.default(
        *(a.detach() if torch.is_tensor(a) else a for a in args)
    )
    back = (torch.randn_like(o), qkv.detach(), q, k, o, lse, cos, sin, qw.detach(), kw.detach(), 1, 1e-6,
            "split_half", True, 0.25)  # fmt: skip
    # The backward op has no autograd of its own: its schema, fake and dispatch (as opcheck's tests
    # name them; the forward's dynamic-shape AOT check above traces it already).
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.flopkit.qk_norm_rope_attention_backward.default, back, test_utils=checks)


def public_inputs(D, dtype=torch.float16, heads=2, tokens=9):
    qkv, cos, sin, qw, kw = make_inputs(D, "shared", dtype, batch=1, tokens=tokens, heads=heads)
    return qkv.requires_grad_(), cos, sin, qw.requires_grad_(), kw.requires_grad_()


def two_ops(qkv, cos, sin, heads, qw, kw, backend):
    q, k, v = kernels.qk_norm_rope(qkv, cos, sin, heads, qw, kw, backend=backend)
    return kernels.attention(q, k, v, backend=backend)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_public_op_gives_the_two_ops_values_and_gradients(backend):
    qkv, cos, sin, qw, kw = public_inputs(16)
    results = []
    for fn in (kernels.qk_norm_rope_attention, lambda *a, backend: two_ops(*a, backend)):
        for t in (qkv, qw, kw):
            t.grad = None
        out = fn(qkv, cos, sin, 2, qw, kw, backend=backend)
        out.float().square().sum().backward()
        results.append([out] + [t.grad.clone() for t in (qkv, qw, kw)])
    for got, ref in zip(*results, strict=True):
        assert torch.equal(got, ref)


# (weights, pairing, norm, heads, tile): partial blocks at T = 21, token-major q and k at 12 heads.
FUSED_CASES = [
    ("shared", "split_half", True, 2, AttnTile(16, 16, 4, 1)),
    ("per_head", "interleaved", True, 12, AttnTile(32, 16, 4, 2)),
    (None, "split_half", True, 2, AttnTile(32, 16, 4, 2)),
    ("shared", "interleaved", False, 2, AttnTile(16, 16, 4, 1)),
    ("per_head", "split_half", True, 12, AttnTile(16, 32, 4, 1)),
]


@pytest.mark.parametrize(("weights", "pairing", "norm", "heads", "tile"), FUSED_CASES)
def test_fused_forward_gives_the_two_kernels_outputs_bit_for_bit(
    monkeypatch, weights, pairing, norm, heads, tile
):
    """``QK_FUSED_FWD`` (opt-in): QK-norm + RoPE inside the attention forward (``_attn_fwd_qk``)
    returns the two kernels' ``o``, ``lse`` and saved ``q`` and ``k``: the same arithmetic, q and k
    rounded to the input dtype before the products as the first kernel stores them; the
    key-stepped normalisation stores k from one program per head only. Under the interpreter the
    outputs are equal bit for bit. Compiled for a GPU each kernel's instruction schedule is its
    own, and on an H100 the case without weights at T = 21 gave an ``o`` that was not bit-exact.
    A GPU is therefore held to rounding: a relative error of 2e-3 for the fp16 outputs and 1e-5
    for ``lse``. At ViT-5-Base's shape the GPU agrees bit for bit
    (``test_fused_forward_on_cuda_at_vit5_base_shape``)."""
    from flopkit.kernels import _sdpa_triton

    qkv, cos, sin, qw, kw = make_inputs(16, weights, torch.float16, batch=2, tokens=21, heads=heads)
    args = (qkv, cos, sin, qw, kw, heads, 1e-6, pairing, norm, 0.25)
    q, k = qk_norm_rope_fwd(*args[:-1])
    two = (*attention_fwd(q, k, qkv_heads(qkv, heads)[2], 0.25, tile=tile), q, k)  # the same tile
    monkeypatch.setattr(_sdpa_triton, "QK_FUSED_FWD", True)
    monkeypatch.setattr(_sdpa_triton, "QK_FWD_TILE", tile)
    assert _sdpa_triton.fuses_qk(qkv, heads)
    launched = []
    fused = qk_norm_rope_attention_fwd(*args, run=lambda kernel, *a, **k: launched.append(kernel.__name__)
                                       or launch(kernel, *a, **k))  # fmt: skip
    assert launched == ["_attn_fwd_qk"]
    for name, got, want in zip(("o", "lse", "q", "k"), fused, two, strict=True):
        assert got.shape == want.shape and got.stride() == want.stride(), name
        if qkv.is_cuda:
            assert rel_err(got, want) < (1e-5 if name == "lse" else 2e-3), name
        else:
            assert torch.equal(got, want), name


def test_fused_forward_gives_the_public_op_its_values_and_gradients(monkeypatch):
    from flopkit.kernels import _sdpa_triton

    qkv, cos, sin, qw, kw = public_inputs(16, tokens=21)
    results = []
    for fused in (False, True):
        monkeypatch.setattr(_sdpa_triton, "QK_FUSED_FWD", fused)
        monkeypatch.setattr(_sdpa_triton, "QK_FWD_TILE", _sdpa_triton.FWD_TILE)  # the two kernels' tile
        for t in (qkv, qw, kw):
            t.grad = None
        out = kernels.qk_norm_rope_attention(qkv, cos, sin, 2, qw, kw, backend="triton")
        out.float().square().sum().backward()
        results.append([out] + [t.grad.clone() for t in (qkv, qw, kw)])
    for got, ref in zip(*results, strict=True):
        assert torch.equal(got, ref)


def test_fused_forward_only_where_its_kernel_applies(monkeypatch):
    """float32, a strided channel dimension, a head dimension below 16 or a tile with tail steps
    keep the two kernels."""
    from flopkit.kernels import _sdpa_triton

    qkv = make_inputs(16, "shared", torch.float16, batch=1, tokens=9, heads=2)[0]
    assert _sdpa_triton.fuses_qk(qkv, 2)
    assert not _sdpa_triton.fuses_qk(qkv.float(), 2)
    assert not _sdpa_triton.fuses_qk(qkv[..., ::2], 1)  # D = 16 at channel stride 2
    assert not _sdpa_triton.fuses_qk(qkv[..., :48], 2)  # D = 8
    tailed = AttnTile(32, 32, 4, 1, 16)
    with pytest.raises(ValueError, match=r"tail=16; _attn_fwd_qk takes no tail steps"):
        _sdpa_triton.qk_attention_fwd_fused(qkv, *make_inputs(16, "shared")[1:3], None, None, 2, 1e-6,
                                            "split_half", False, 0.25, tile=tailed)  # fmt: skip
    monkeypatch.setattr(_sdpa_triton, "QK_FWD_TILE", tailed)
    assert not _sdpa_triton.fuses_qk(qkv, 2)


def test_public_op_runs_the_two_ops_where_the_kernels_do_not_apply(monkeypatch):
    """D = 24 (not a power of two) takes the two ops on the same route; ``backend="triton"`` with
    such shapes or float32 raises the attention's error, which names them."""
    from flopkit.kernels import _sdpa_ops

    calls = []
    monkeypatch.setattr(_sdpa_ops.QK_NORM_ROPE_ATTENTION, "eager", lambda *a: calls.append(a))
    qkv, cos, sin, qw, kw = public_inputs(24)
    auto = kernels.qk_norm_rope_attention(qkv, cos, sin, 2, qw, kw)
    assert torch.equal(auto, two_ops(qkv, cos, sin, 2, qw, kw, "auto"))  # the two ops, on the same route
    assert calls == []
    with pytest.raises(ValueError, match=r"D in \(16, 32, 64, 128\).*got q \(1, 2, 9, 24\)"):
        kernels.qk_norm_rope_attention(qkv, cos, sin, 2, qw, kw, backend="triton")
    with pytest.raises(ValueError, match=r"cos must have shape \(T, D\) = \(9, 24\)"):
        kernels.qk_norm_rope_attention(qkv, cos[:5], sin, 2, qw, kw, backend="triton")
    f32 = [t.detach().float() for t in public_inputs(16)]  # TF32 on CUDA: the kernels do not take it
    with pytest.raises(ValueError, match="float16/bfloat16.*torch.float32"):
        kernels.qk_norm_rope_attention(*f32[:3], 2, *f32[3:], backend="triton")


def test_flop_counter_counts_both_parts():
    """The custom op's registered counts: forward QK-norm + RoPE plus SDPA, backward twice SDPA (the
    counts of the two ops it replaces), on meta tensors routed through the custom ops."""
    with torch.device("meta"):
        qkv, cos, sin, qw, kw = public_inputs(16, heads=2, tokens=9)
    with kernels.route_through_custom_ops(), FlopCounterMode(display=False) as counter:
        kernels.qk_norm_rope_attention(qkv, cos, sin, 2, qw, kw).sum().backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    sdpa = formulas.sdpa(1, 2, 9, 9, 16, 16)
    assert counts["flopkit.qk_norm_rope_attention"] == formulas.qk_norm_rope(1, 9, 2, 16, True) + sdpa
    assert counts["flopkit.qk_norm_rope_attention_backward"] == 2 * sdpa


def test_backward_writes_one_buffer_and_runs_the_rope_backward_in_place():
    """On meta tensors at vit5-base's shape: every backward kernel gets the one ``dqkv`` buffer
    itself, never a view of it (torch.compile may copy a mutated view to other strides than the
    launch's), with dq, dk and dv at element offsets 0, C and 2C of its rows; the QK-norm + RoPE's
    backward kernel then runs in place on it (``IN_PLACE``), leaving its v part."""
    launches = []

    def capture(kernel, grid, args, meta, num_tensors, plan=None):
        launches.append((kernel.__name__, args[:num_tensors], args[num_tensors:], meta))

    B, T, H, D = 128, 201, 12, 64
    C = H * D
    qkv = torch.empty(B, T, 3 * C, device="meta", dtype=torch.bfloat16)
    cos = sin = torch.empty(T, D, device="meta")
    w = torch.empty(D, device="meta")
    args = (cos, sin, w, w, H, 1e-6, "split_half", True, 0.125)
    o, lse, q, k = qk_norm_rope_attention_fwd(qkv, *args, run=capture)
    launches.clear()
    # One kernel per head (ViT-5's T = 201 fits it):
    dqkv, dqw, dkw = qk_norm_rope_attention_bwd(torch.empty_like(o), qkv, q, k, o, lse, *args, run=capture)
    assert dqkv.shape == qkv.shape and dqkv.is_contiguous() and dqw.shape == dkw.shape == (D,)
    head_view = (T * 3 * C, D, 3 * C)  # (batch, head, token) strides of a part of dqkv
    names = [name for name, *_ in launches]
    assert names[:2] == ["_attn_bwd_head", "_qk_norm_rope_bwd_kernel"], names
    _, tensors, scalars, meta = launches[0]
    assert tensors[6] is dqkv and meta["PACKED"] is True
    assert all(t is not dqkv for t in tensors[:6] + tensors[7:])  # passed once
    assert scalars[15:27] == (*head_view, *head_view, *head_view, 0, C, 2 * C)
    assert not any(t._base is dqkv for t in tensors if t is not None)
    _, rope_tensors, _, rope_meta = launches[1]
    assert rope_tensors[8] is dqkv and rope_meta["IN_PLACE"] is True
    # The dq and dkdv kernels (a head that does not fit one program):
    launches.clear()
    dqkv, dqw, dkw = qk_norm_rope_attention_bwd(
        torch.empty_like(o), qkv, q, k, o, lse, *args, head_tile=None, run=capture
    )
    names = [name for name, *_ in launches]
    assert names[:3] == ["_attn_bwd_dq", "_attn_bwd_dkdv", "_qk_norm_rope_bwd_kernel"], names
    (_, dq_tensors, dq_scalars, _), (_, kv_tensors, kv_scalars, kv_meta) = launches[:2]
    assert dq_tensors[7] is dqkv and dq_scalars[15:19] == (*head_view, 0)
    assert kv_tensors[6] is dqkv and kv_meta["PACKED"] is True
    assert all(t is not dqkv for t in kv_tensors[:6] + kv_tensors[7:])  # passed once
    assert kv_scalars[12:20] == (*head_view, *head_view, C, 2 * C)
    for _, tensors, _, _ in launches[:3]:
        assert not any(t._base is dqkv for t in tensors if t is not None)
    _, rope_tensors, _, rope_meta = launches[2]
    assert rope_tensors[8] is dqkv and all(t is not dqkv for t in rope_tensors[:8])
    assert rope_meta["IN_PLACE"] is True and rope_meta["HAS_DV"] is False


def test_backward_launchers_refuse_an_out_they_cannot_write():
    qkv = torch.empty(1, 3, 48, device="meta")
    g = torch.empty(1, 2, 3, 8, device="meta")
    table = torch.empty(3, 8, device="meta")
    args = (qkv, table, table, None, None, 2, 1e-6, "split_half", False)
    with pytest.raises(ValueError, match=r"dq, dk and dv must be None and out a contiguous \(1, 3, 48\)"):
        qk_norm_rope_bwd(g, g, None, *args, out=torch.empty_like(qkv))
    with pytest.raises(ValueError, match="contiguous: False"):
        qk_norm_rope_bwd(None, None, None, *args, out=torch.empty(1, 48, 3, device="meta").mT)
    q = torch.empty(1, 2, 3, 8, device="meta", dtype=torch.float16)
    lse = torch.empty(1, 2, 3, device="meta")
    with pytest.raises(ValueError, match=r"out must be a contiguous \(1, 3, 48\) torch.float16 buffer"):
        attention_bwd(q, q, q, q, q, lse, 0.5, out=torch.empty(1, 3, 16, device="meta", dtype=torch.float16))


@pytest.mark.skipif(device() != "cuda", reason="bfloat16 end to end needs CUDA (the interpreter's bf16 dot)")
def test_bfloat16_at_vit5_base_shape_on_cuda():
    one_op, two_ops, exact = run(64, "shared", "split_half", torch.bfloat16, batch=1, heads=12, tokens=201)
    assert_the_two_ops_results(one_op, two_ops, exact, tol=2e-2)


@pytest.mark.skipif(device() != "cuda", reason="the compiled kernel on a GPU, bf16 at ViT-5-Base's shape")
@pytest.mark.parametrize("tile", [None, AttnTile(64, 64, 4, 3, 0)], ids=["QK_FWD_TILE", "FWD_TILE"])
def test_fused_forward_on_cuda_at_vit5_base_shape(monkeypatch, tile):
    """The opt-in fused forward compiled for the GPU (its own tile, and the two kernels' tile, at
    which it must give their outputs bit for bit), and through the public op eagerly and under
    ``torch.compile``: the values and gradients of the two-kernel path, the compiled ones within
    rounding (Inductor may fuse the ops around the kernels differently)."""
    from flopkit.kernels import _sdpa_triton

    qkv, cos, sin, qw, kw = make_inputs(64, "shared", torch.bfloat16, batch=2, tokens=201, heads=12)
    args = (qkv, cos, sin, qw, kw, 12, 1e-6, "split_half", True, 0.125)
    q, k = qk_norm_rope_fwd(*args[:-1])
    fused = _sdpa_triton.qk_attention_fwd_fused(*args, tile=tile)
    want = (*attention_fwd(q, k, qkv_heads(qkv, 12)[2], 0.125, tile=tile or _sdpa_triton.QK_FWD_TILE), q, k)
    for name, got, ref in zip(("o", "lse", "q", "k"), fused, want, strict=True):
        assert torch.equal(got, ref), name

    leaves = [t.detach().clone().requires_grad_() for t in (qkv, qw, kw)]
    results = {}
    for fused_fwd in (False, True):
        monkeypatch.setattr(_sdpa_triton, "QK_FUSED_FWD", fused_fwd)
        monkeypatch.setattr(_sdpa_triton, "QK_FWD_TILE", tile or _sdpa_triton.QK_FWD_TILE)
        for compiled in (False, True):
            torch._dynamo.reset()
            fn = kernels.qk_norm_rope_attention
            fn = torch.compile(fn) if compiled else fn
            for t in leaves:
                t.grad = None
            with cold_compile():  # else the fused row would get the two kernels' compiled code
                out = fn(leaves[0], cos, sin, 12, leaves[1], leaves[2])
                out.float().square().sum().backward()
            results[fused_fwd, compiled] = [out.detach()] + [t.grad.clone() for t in leaves]
    for compiled in (False, True):
        for got, ref in zip(results[True, compiled], results[False, compiled], strict=True):
            if tile is not None and not compiled:
                assert torch.equal(got, ref)
            else:
                assert rel_err(got, ref) < 1e-2
