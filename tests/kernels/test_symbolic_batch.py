"""Every launcher plans a symbolic batch without guarding on it.

Under ``torch.compile(dynamic=True)`` on CUDA the custom ops' launchers are traced with a symbolic
batch ``B``; a Python comparison of a size derived from it (``min(blocks, cap)``) becomes a guard,
and a graph traced at one batch recompiles at another (seen on an H100:
``test_attention_fast_path.py``'s dynamic-batch test traced twice). On CPU the custom ops run the
reference, so the launchers are called here directly, on fake tensors of a symbolic batch, with a
launch that records instead of running (and clones each tensor it is given, as a traced launch's
functionalization does); the shape environment must end with no guards.
"""

from __future__ import annotations

import pytest
import torch
from flopkit.kernels import _norm_triton as nt
from flopkit.kernels import _rope_triton as rt
from flopkit.kernels import _sdpa_triton as st
from torch._dynamo.source import ConstantSource
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

T = 11  # tokens: B·T crosses the tile and program-count thresholds as B grows


@pytest.fixture
def symbolic():
    """``(mode, B, launches)``: a fake mode with a shape environment, a symbolic batch (hint 2), and
    the list a capturing launch appends ``(kernel name, grid)`` to."""
    env = ShapeEnv()
    mode = FakeTensorMode(shape_env=env)
    batch = env.create_symintnode(
        env.create_symbol(2, ConstantSource("B"), dynamic_dim=DimDynamic.DYNAMIC), hint=2
    )
    launches: list = []

    def capture(kernel, grid, args, meta, num_tensors=0, plan=None):
        launches.append((kernel.__name__, grid))
        # A traced launch (torch.library.wrap_triton) is functionalized: the tensors it mutates are
        # cloned, and a clone checks its source's contiguity, which asks of each symbolic dimension
        # whether it is 1 (the partials' [programs, ...] did: a guard on the batch on an H100).
        for t in args[:num_tensors]:
            if isinstance(t, torch.Tensor):
                t.clone()

    with mode:
        yield env, batch, capture, launches


def assert_no_guards(env: ShapeEnv, launches: list, *names: str) -> None:
    assert [name for name, _ in launches] == list(names)
    assert [str(g.expr) for g in env.guards] == []
    # The grids stay symbolic where they depend on the batch (a guard-free plan, not a constant one).
    assert any(isinstance(n, torch.SymInt) for _, grid in launches for n in grid)


@pytest.mark.parametrize("head_tile", [st.HEAD_TILE, None], ids=["head-kernel", "dq-dkdv"])
@pytest.mark.parametrize("one_op", [False, True])
def test_qk_norm_rope_and_attention_launchers(symbolic, one_op, head_tile):
    env, B, run, launches = symbolic
    H, D = 2, 64
    qkv = torch.empty(B, T, 3 * H * D, dtype=torch.float16)
    cos, sin, w = torch.empty(T, D), torch.empty(T, D), torch.empty(D)
    args = (cos, sin, w, w, H, 1e-6, "split_half", True)
    if one_op:
        o, lse, q, k = st.qk_norm_rope_attention_fwd(qkv, *args, 0.125, run=run)
        st.qk_norm_rope_attention_bwd(
            torch.empty_like(o), qkv, q, k, o, lse, *args, 0.125, head_tile=head_tile, run=run
        )
    else:
        q, k = rt.qk_norm_rope_fwd(qkv, *args, run=run)
        v = rt.qkv_heads(qkv, H)[2]
        o, lse = st.attention_fwd(q, k, v, 0.125, run=run)
        dq, dk, dv = st.attention_bwd(
            torch.empty_like(o), q, k, v, o, lse, 0.125, head_tile=head_tile, run=run
        )
        rt.qk_norm_rope_bwd(dq, dk, dv, qkv, *args, run=run)
    attention = ["_attn_bwd_head"] if head_tile else ["_attn_bwd_dq", "_attn_bwd_dkdv"]
    kernels = ["_qk_norm_rope_fwd_kernel", "_attn_fwd", *attention, "_qk_norm_rope_bwd_kernel"]
    assert_no_guards(env, launches, *kernels, "_sum_partials_kernel")


@pytest.mark.parametrize(
    "width, options",
    [
        (384, {}),  # vit5-small's rows
        (768, {"layer": True}),  # LayerNorm rows, the fused kernel's other tile table
        (128, {"num_heads": 2, "head_dim": 64, "per_head_weight": True}),  # HeadNorm
        (16384, {}),  # past the fused backward's width: the chunked backward kernel
    ],
)
def test_norm_launchers(symbolic, width, options):
    env, B, run, launches = symbolic
    x = torch.empty(B, T, width, dtype=torch.bfloat16)
    w = torch.empty((2, 64) if options.get("per_head_weight") else (width,))
    nt.norm_forward(x, w, None, 1e-6, run=run, **options)
    # A GPU-sized program cap (CPU's is a few programs, which B·T >= 22 exceeds whatever B is).
    nt.norm_backward(torch.empty_like(x), x, w, False, 1e-6, programs_per_sm=512, run=run, **options)
    names = [name for name, _ in launches]
    assert names[0] in ("_norm_fwd_kernel", "_norm_fwd_chunked_kernel"), names
    assert_no_guards(env, launches, *names)


def test_a_symbolic_sequence_length_takes_the_two_attention_kernels(symbolic):
    """The head kernel's rows are a constexpr: a traced dynamic ``T`` runs the dq and dk/dv kernels,
    whose blocks do not depend on ``T``, rather than specialise it."""
    env, T_sym, run, launches = symbolic
    q = torch.empty(2, 2, T_sym, 64, dtype=torch.float16)
    lse = torch.empty(2, 2, T_sym)
    assert st.head_rows(T_sym, 64, st.HEAD_TILE) == 0
    st.attention_bwd(q, q, q, q, q, lse, 0.125, run=run)
    assert_no_guards(env, launches, "_attn_bwd_dq", "_attn_bwd_dkdv")
