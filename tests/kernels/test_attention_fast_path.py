"""ViT5Attention's fused QK-norm + RoPE path gives the reference path's outputs and gradients.

On CPU the fused path is forced (the module picks it only for CUDA inputs) and the Triton kernel
runs in the interpreter; on a GPU the module's own dispatch is used.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _references import backends_of, rel_err

from flopkit import kernels
from flopkit.nn import ViT5Attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PAIRINGS = ("split_half", "interleaved")
# (has_cls, num_registers, qk_norm)
LAYOUTS = [(True, 4, "rmsnorm"), (False, 0, None), (True, 1, "headnorm"), (False, 4, "rmsnorm")]


@pytest.fixture
def fused_calls(monkeypatch):
    """Force the fused path on CPU and count the fused op's calls."""
    calls = backends_of(monkeypatch, kernels, "qk_norm_rope")
    if DEVICE == "cpu":
        # The route "triton" takes on CPU tensors in the interpreter: the eager kernel path.
        monkeypatch.setattr(
            ViT5Attention,
            "_fused_route",
            lambda self, x: kernels.route("triton", x, "test") if self.use_triton else None,
        )
    return calls


def make_pair(head_dim, pairing, has_cls, num_registers, qk_norm, dtype=torch.float32):
    heads = 2
    fast = ViT5Attention(
        heads * head_dim, heads, num_patches_h=3, num_patches_w=2, num_registers=num_registers,
        has_cls=has_cls, qk_norm=qk_norm, rope_pairing=pairing,
    )  # fmt: skip
    with torch.no_grad():
        for name, p in fast.named_parameters():
            # Norm weights away from 1 so their gradients and effect are visible.
            p.copy_(1 + 0.3 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    fast = fast.to(DEVICE, dtype)
    ref = copy.deepcopy(fast)
    ref.use_triton = False
    return fast, ref


def assert_grads_close(compiled: dict, eager: dict, tol: float) -> None:
    """Each gradient of a ``torch.compile``-wrapped module (parameters named ``_orig_mod.NAME``)
    within ``tol`` of the eager module's."""
    for name in eager:
        key = name if name in compiled else f"_orig_mod.{name}"
        assert rel_err(compiled[key], eager[name]) < tol, name


def forward_backward(module, x, grad_out):
    x = x.detach().clone().requires_grad_()
    out = module(x)
    out.backward(grad_out)
    grads = {"x": x.grad} | {name: p.grad for name, p in module.named_parameters()}
    return out.detach(), grads


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda v: f"cls{int(v[0])}-R{v[1]}-{v[2]}")
@pytest.mark.parametrize("head_dim", [64, 72])
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_fast_path_matches_reference_path(fused_calls, pairing, head_dim, layout):
    fast, ref = make_pair(head_dim, pairing, *layout)
    x = torch.randn(2, fast.num_tokens, fast.hidden_dim, device=DEVICE)
    g = torch.randn_like(x)
    out_f, grads_f = forward_backward(fast, x, g)
    # The module decides the route once and hands it to the op: the eager kernel path.
    assert fused_calls == [kernels.Route.KERNEL]
    out_r, grads_r = forward_backward(ref, x, g)
    assert fused_calls == [kernels.Route.KERNEL]  # the reference path does not call the fused op
    assert rel_err(out_f, out_r) < 1e-5
    assert grads_f.keys() == grads_r.keys()
    for name in grads_r:
        assert rel_err(grads_f[name], grads_r[name]) < 1e-5, name


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_fast_path_bf16_within_bf16_tolerance_of_float64(fused_calls, pairing):
    fast, ref = make_pair(72, pairing, True, 4, "rmsnorm", dtype=torch.bfloat16)
    exact = copy.deepcopy(ref).double()
    x = torch.randn(2, fast.num_tokens, fast.hidden_dim, device=DEVICE)
    g = torch.randn_like(x)
    out_f, grads_f = forward_backward(fast, x.bfloat16(), g.bfloat16())
    out_r, grads_r = forward_backward(ref, x.bfloat16(), g.bfloat16())
    out_e, grads_e = forward_backward(exact, x.double(), g.double())
    assert fused_calls == [kernels.Route.KERNEL]
    # The fused path must be as close to float64 as the bf16 reference path is (plus slack).
    assert rel_err(out_f, out_e) < max(1e-2, 1.5 * rel_err(out_r, out_e))
    for name in grads_e:
        bound = max(2e-2, 1.5 * rel_err(grads_r[name], grads_e[name]))
        assert rel_err(grads_f[name], grads_e[name]) < bound, name


def test_use_triton_false_takes_reference_path(fused_calls):
    fast, _ = make_pair(64, "split_half", True, 4, "rmsnorm")
    fast.use_triton = False
    fast(torch.randn(1, fast.num_tokens, fast.hidden_dim, device=DEVICE))
    assert fused_calls == []


def test_compiled_module_hands_its_route_to_the_op(fused_calls):
    """Under torch.compile the module's one decision is the custom op, handed to qk_norm_rope as its
    backend (a Route, traced by Dynamo); values and gradients match the eager kernel path."""
    fast, _ = make_pair(64, "interleaved", True, 4, "rmsnorm")
    x = torch.randn(2, fast.num_tokens, fast.hidden_dim, device=DEVICE)
    g = torch.randn_like(x)
    out_e, grads_e = forward_backward(fast, x, g)
    torch._dynamo.reset()
    out_c, grads_c = forward_backward(torch.compile(fast, fullgraph=True), x, g)
    assert fused_calls == [kernels.Route.KERNEL, kernels.Route.CUSTOM_OP]
    assert rel_err(out_c, out_e) < 1e-5
    assert_grads_close(grads_c, grads_e, 1e-5)


HALF = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # the interpreter's bf16 tl.dot is wrong


@pytest.fixture
def attention_calls(monkeypatch):
    """Count calls of flopkit's attention op (``kernels.attention``) by ViT5Attention."""
    return backends_of(monkeypatch, kernels, "attention")


@pytest.fixture
def one_op_calls(monkeypatch):
    """Count calls of the QK-norm + RoPE + attention op (``kernels.qk_norm_rope_attention``)."""
    return backends_of(monkeypatch, kernels, "qk_norm_rope_attention")


@pytest.mark.parametrize(
    "one_op, qk_norm, pairing",
    [(True, "rmsnorm", "split_half"), (True, "headnorm", "interleaved"), (False, "rmsnorm", "split_half")],
    ids=["one-op-rmsnorm", "one-op-headnorm-interleaved", "two-ops"],
)
def test_half_precision_runs_flopkit_attention(
    fused_calls, attention_calls, one_op_calls, one_op, qk_norm, pairing
):
    """Half-precision inputs at head_dim 64 take flopkit's attention kernels on the route the module
    decided: one op for both (``fused_qk_attention = True``, the default), or the QK-norm + RoPE op
    and the attention op (False); either as close to float64 as the reference path (SDPA) in the
    same precision."""
    fast, ref = make_pair(64, pairing, True, 4, qk_norm, dtype=HALF)
    assert fast.fused_qk_attention is True
    fast.fused_qk_attention = one_op
    exact = copy.deepcopy(ref).double()
    x = torch.randn(2, fast.num_tokens, fast.hidden_dim, device=DEVICE)
    g = torch.randn_like(x)
    out_f, grads_f = forward_backward(fast, x.to(HALF), g.to(HALF))
    expected = (
        ([kernels.Route.KERNEL], [], []) if one_op else ([], [kernels.Route.KERNEL], [kernels.Route.KERNEL])
    )
    assert (one_op_calls, attention_calls, fused_calls) == expected
    out_r, grads_r = forward_backward(ref, x.to(HALF), g.to(HALF))
    assert (one_op_calls, attention_calls, fused_calls) == expected
    out_e, grads_e = forward_backward(exact, x.double(), g.double())
    assert rel_err(out_f, out_e) < max(3e-3, 1.5 * rel_err(out_r, out_e))
    for name in grads_e:
        bound = max(6e-3, 1.5 * rel_err(grads_r[name], grads_e[name]))
        assert rel_err(grads_f[name], grads_e[name]) < bound, name


@pytest.mark.parametrize("case", ["float32", "head_dim_72", "dropout", "counted", "switched_off"])
def test_attention_takes_sdpa_where_the_kernels_do_not_apply(
    fused_calls, attention_calls, one_op_calls, case
):
    """float32 (the kernels' products would round it to TF32), a head dim that is not a power of
    two, attention dropout in training, a FLOP counter recording the ops (it must see SDPA), and
    ``triton_attention = False``: SDPA runs, the fused QK-norm + RoPE still does."""
    dtype = torch.float32 if case == "float32" else HALF
    fast, _ = make_pair(72 if case == "head_dim_72" else 64, "split_half", True, 4, "rmsnorm", dtype=dtype)
    if case == "dropout":
        fast.attn_dropout = 0.1
    fast.triton_attention = case != "switched_off"
    x = torch.randn(1, fast.num_tokens, fast.hidden_dim, device=DEVICE, dtype=dtype)
    if case == "counted":
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            fast(x)
        counted = {str(op) for op in counter.get_flop_counts()["Global"]}
        assert not any("flopkit.attention" in op for op in counted), counted
    else:
        fast(x)
    assert attention_calls == one_op_calls == []
    assert fused_calls  # the QK-norm + RoPE kernel path was taken


def test_compiled_module_runs_the_kernels_unless_eager_only(fused_calls, attention_calls, one_op_calls):
    """True (the default): torch.compile hands the custom-op route to the QK-norm + RoPE op and the
    attention op (one op in eager code with ``fused_qk_attention = "eager"``), and values and
    gradients match eager; ``triton_attention="eager"``: torch.compile runs SDPA."""
    fast, _ = make_pair(64, "split_half", True, 4, "rmsnorm", dtype=HALF)
    assert fast.triton_attention is True
    fast.fused_qk_attention = "eager"
    x = torch.randn(2, fast.num_tokens, fast.hidden_dim, device=DEVICE, dtype=HALF)
    g = torch.randn_like(x)
    out_e, grads_e = forward_backward(fast, x, g)
    assert (one_op_calls, attention_calls) == ([kernels.Route.KERNEL], [])
    torch._dynamo.reset()
    out_c, grads_c = forward_backward(torch.compile(fast, fullgraph=True), x, g)
    assert (one_op_calls, attention_calls) == ([kernels.Route.KERNEL], [kernels.Route.CUSTOM_OP])
    assert rel_err(out_c, out_e) < 2e-3
    assert_grads_close(grads_c, grads_e, 4e-3)
    fast.triton_attention = "eager"
    torch._dynamo.reset()
    forward_backward(torch.compile(fast, fullgraph=True), x, g)
    assert attention_calls == [kernels.Route.CUSTOM_OP]  # SDPA under torch.compile
    assert fused_calls == [kernels.Route.CUSTOM_OP, kernels.Route.CUSTOM_OP]


def test_compiled_module_runs_the_one_op_when_asked(fused_calls, attention_calls, one_op_calls):
    """``fused_qk_attention = True``: torch.compile runs the one op too, with eager's values and
    gradients; an unknown setting names itself."""
    fast, _ = make_pair(64, "split_half", True, 4, "rmsnorm", dtype=HALF)
    x = torch.randn(2, fast.num_tokens, fast.hidden_dim, device=DEVICE, dtype=HALF)
    g = torch.randn_like(x)
    fast.fused_qk_attention = True
    out_e, grads_e = forward_backward(fast, x, g)
    torch._dynamo.reset()
    out_c, grads_c = forward_backward(torch.compile(fast, fullgraph=True), x, g)
    assert one_op_calls == [kernels.Route.KERNEL, kernels.Route.CUSTOM_OP]
    assert fused_calls == attention_calls == []
    assert rel_err(out_c, out_e) < 2e-3
    assert_grads_close(grads_c, grads_e, 4e-3)
    fast.fused_qk_attention = "compiled"
    with pytest.raises(ValueError, match="fused_qk_attention must be True, False or 'eager', got 'compiled'"):
        fast(x)


@pytest.mark.parametrize("one_op", [True, False], ids=["one-op", "two-ops"])
def test_compiled_module_with_dynamic_batch_compiles_once(monkeypatch, one_op):
    """Under ``torch.compile(dynamic=True)`` the attention op (the one op by default, or the two)
    sits in the one graph every batch size reuses: its fake and launchers take symbolic sizes
    (``test_symbolic_batch.py``: on CUDA a launcher's plan guarded on the batch, and batch 3
    recompiled), nothing in the route guards on the batch, and loading the op families during the
    first trace guards on nothing (a read of their lazily set module globals did, and the second
    call recompiled)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    if DEVICE == "cpu":  # as in fused_calls, without a spy (a list the graph would guard on)
        monkeypatch.setattr(
            ViT5Attention,
            "_fused_route",
            lambda self, x: kernels.route("triton", x, "test") if self.use_triton else None,
        )
    # As in a fresh process, whatever ran before: no op family loaded yet.
    from flopkit.kernels import norm, rope, sdpa

    for module, name in ((norm, "_NORM_OPS"), (rope, "_ROPE_OPS"), (sdpa, "_SDPA_OPS")):
        monkeypatch.setattr(module, name, None)
    fast, ref = make_pair(64, "split_half", True, 4, "rmsnorm", dtype=HALF)
    fast.fused_qk_attention = one_op
    # bfloat16 (CUDA) rounds at 2**-8: the SDPA reference path differed by 3.9e-3 on an H100.
    tol = 2e-3 if torch.float16 == HALF else 8e-3
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")  # dynamo guards and the op in the graph; no codegen
    compiled = torch.compile(fast, backend=counter, dynamic=True, fullgraph=True)
    for batch in (2, 3, 5):
        x = torch.randn(batch, fast.num_tokens, fast.hidden_dim, device=DEVICE, dtype=HALF)
        g = torch.randn_like(x)
        out_c, grads_c = forward_backward(compiled, x, g)
        out_r, grads_r = forward_backward(ref, x, g)
        assert rel_err(out_c, out_r) < tol, batch
        assert rel_err(grads_c["x"], grads_r["x"]) < 2 * tol, batch
    # One graph for every batch size. The first trace in a process imports the op families and
    # restarts once, which hands the backend an empty graph besides.
    graphs = [graph for graph in counter.graphs if len(graph.graph.nodes)]
    assert len(graphs) == 1, counter.frame_count
    op = "flopkit.qk_norm_rope_attention" if one_op else "flopkit.attention."
    assert op in str(graphs[0].graph)


def test_triton_attention_rejects_unknown_modes(fused_calls):
    fast, _ = make_pair(64, "split_half", True, 4, "rmsnorm", dtype=HALF)
    fast.triton_attention = "always"
    with pytest.raises(ValueError, match="triton_attention must be True, False or 'eager', got 'always'"):
        fast(torch.randn(1, fast.num_tokens, fast.hidden_dim, device=DEVICE, dtype=HALF))
