"""Measured counting of any model: per-op formulas against hand counts, causal attention, the
measured backward, and shapes per layer. Plain torch modules only (no timm / transformers)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from flopkit.config import load_config, model_input
from flopkit.flops.analytic import backward_breakdown_at, flop_tree
from flopkit.flops.anymodel import ROTARY_RULE, causal_pairs, count_model, layer_shapes


def meta(*shape, dtype=torch.float32):
    return torch.empty(shape, device="meta", dtype=dtype)


def build(factory):
    with torch.device("meta"):
        return factory().eval()


@pytest.mark.parametrize(
    ("norm", "per_element"),
    [
        (lambda: nn.LayerNorm(16), 6),  # 4 + weight + bias
        (lambda: nn.LayerNorm(16, bias=False), 5),
        (lambda: nn.LayerNorm(16, elementwise_affine=False), 4),
        (lambda: nn.RMSNorm(16), 3),
    ],
)
def test_norm_formulas_per_element(norm, per_element):
    count = count_model(build(norm), (meta(2, 5, 16),))
    assert count.forward[""]["norm"] == per_element * 2 * 5 * 16
    assert sum(count.forward[""].values()) == count.forward[""]["norm"]


def test_batch_norm_eval_is_a_scale_and_shift_and_group_norm_a_layer_norm():
    bn = count_model(build(lambda: nn.BatchNorm2d(8)), (meta(2, 8, 4, 4),))
    assert bn.forward[""]["norm"] == 2 * (2 * 8 * 4 * 4)
    gn = count_model(build(lambda: nn.GroupNorm(2, 8)), (meta(2, 8, 4, 4),))
    assert gn.forward[""]["norm"] == 6 * (2 * 8 * 4 * 4)


def test_activations_and_softmax_are_elementwise():
    model = build(lambda: nn.Sequential(nn.GELU(), nn.SiLU(), nn.ReLU(), nn.Softmax(dim=-1)))
    count = count_model(model, (meta(3, 7),))
    assert count.forward[""]["elementwise"] == 3 * 21 + 4 * 21
    assert count.forward["3"]["elementwise"] == 4 * 21


class ToyRotaryEmbedding(nn.Module):
    """RoPE's table as older transformers build it: ``inv_freq @ positions``, a batched matmul."""

    def __init__(self, half: int):
        super().__init__()
        self.register_buffer("inv_freq", torch.ones(half))

    def forward(self, positions):  # [1, T] -> [1, T, half]
        return (self.inv_freq[None, :, None] @ positions[:, None, :].float()).transpose(1, 2)


class ToyLayer(nn.Module):
    """A rotary table, then the two batched matmuls of attention scores and values."""

    def __init__(self):
        super().__init__()
        self.rotary = ToyRotaryEmbedding(4)

    def forward(self, x, positions):  # x [B, T, 8]
        table = self.rotary(positions)
        scores = torch.bmm(x, x.transpose(1, 2))
        return torch.bmm(scores.softmax(-1), x) + table.sum()


def test_a_rotary_tables_batched_matmul_is_a_matmul_and_named():
    B, T = 2, 5
    count = count_model(build(ToyLayer), (meta(B, T, 8), meta(1, T, dtype=torch.int64)))
    assert count.forward["rotary"]["matmul"] == 2 * 4 * T and count.forward["rotary"]["attention"] == 0
    assert count.forward[""]["matmul"] == 2 * 4 * T  # the ancestor's share moves with it
    assert count.forward[""]["attention"] == 2 * (2 * B * T * T * 8)  # the layer's own bmm stay attention
    assert count.rules[ROTARY_RULE] == 1


class HandRMSNorm(nn.Module):
    """A hand-written RMSNorm (as in Llama): plain aten arithmetic, recognised by its class name."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def test_hand_written_rms_norm_counts_once():
    model = build(lambda: nn.Sequential(HandRMSNorm(16), nn.RMSNorm(16)))
    count = count_model(model, (meta(4, 16),))
    assert count.forward["0"]["norm"] == 3 * 64 and count.forward["1"]["norm"] == 3 * 64


class Attention(nn.Module):
    def __init__(self, causal):
        super().__init__()
        self.causal = causal

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)


@pytest.mark.parametrize(("L", "S"), [(6, 6), (4, 6), (6, 4)])
def test_causal_pairs_match_the_mask(L, S):
    assert causal_pairs(L, S) == int(torch.ones(L, S).tril().sum())


def test_causal_half_counts_half_the_pairs_and_exact_the_kept_ones():
    B, H, T, D = 2, 3, 10, 8
    q = meta(B, H, T, D)
    full = count_model(build(lambda: Attention(True)), (q, q, q))
    half = count_model(build(lambda: Attention(True)), (q, q, q), causal="half")
    exact = count_model(build(lambda: Attention(True)), (q, q, q), causal="exact")
    assert full.forward[""]["attention"] == 2 * B * H * T * T * 2 * D
    assert half.forward[""]["attention"] == 2 * B * H * (T * T // 2) * 2 * D
    assert exact.forward[""]["attention"] == 2 * B * H * (T * (T + 1) // 2) * 2 * D
    assert (full.causal_calls, half.causal_calls, exact.causal_calls) == (1, 1, 1)
    for mode in ("half", "exact"):
        plain = count_model(build(lambda: Attention(False)), (q, q, q), causal=mode)
        assert plain.forward[""]["attention"] == full.forward[""]["attention"] and plain.causal_calls == 0


def test_is_causal_with_fewer_queries_keeps_sdpa_top_left_triangle():
    B, H, L, S, D = 1, 2, 4, 6, 8
    q, k = meta(B, H, L, D), meta(B, H, S, D)
    exact = count_model(build(lambda: Attention(True)), (q, k, k), causal="exact")
    assert exact.forward[""]["attention"] == 2 * B * H * int(torch.ones(L, S).tril().sum()) * 2 * D


def test_causal_exact_backward_is_twice_the_kept_forward():
    B, H, T, D = 1, 2, 8, 4

    class Causal(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(H * D, 3 * H * D, bias=False)

        def forward(self, x):
            q, k, v = self.qkv(x).unflatten(-1, (3, H, D)).permute(2, 0, 3, 1, 4)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    count = count_model(build(Causal), (meta(B, T, H * D),), causal="exact", backward=True)
    kept = 2 * B * H * (T * (T + 1) // 2) * 2 * D
    assert count.forward[""]["attention"] == kept
    assert count.backward[""]["attention"] == 2 * kept


def test_backward_of_an_mlp_skips_the_input_gradient_of_the_first_layer():
    model = build(lambda: nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 4)))
    count = count_model(model, (meta(3, 8),), backward=True)
    fwd, bwd = count.forward, count.backward
    assert fwd["0"]["matmul"] == 2 * 3 * 8 * 16 and bwd["0"]["matmul"] == 2 * 3 * 8 * 16  # dW only
    assert bwd["3"]["matmul"] == 2 * (2 * 3 * 16 * 4)  # dX and dW
    assert bwd["1"]["elementwise"] == 2 * 3 * 16
    assert bwd["2"]["norm"] == 2 * 6 * 3 * 16  # input gradient + weight/bias gradients
    assert bwd[""]["matmul"] == bwd["0"]["matmul"] + bwd["3"]["matmul"]


def test_backward_is_attributed_past_modules_that_return_their_input():
    model = build(lambda: nn.Sequential(nn.Linear(8, 8), nn.Identity(), nn.Dropout(0.0), nn.Linear(8, 8)))
    count = count_model(model, (meta(2, 8),), backward=True)
    assert not any(count.backward.get("1", {}).values()) and not any(count.backward.get("2", {}).values())
    assert count.backward[""]["matmul"] == count.backward["0"]["matmul"] + count.backward["3"]["matmul"]


def test_training_runs_batch_norm_on_batch_statistics_and_restores_eval():
    model = build(lambda: nn.BatchNorm1d(4))
    count = count_model(model, (meta(5, 4),), backward=True)
    assert count.forward[""]["norm"] == 6 * 20 and not model.training


def test_analytic_backward_rule_matches_the_measured_backward_of_a_vit5():
    """matmul and attention: flopkit's rule (2x, the patch conv 1x) equals FlopCounterMode's measured
    backward on the meta device."""
    cfg = load_config("examples/vit5-tiny.yaml")
    module = cfg.meta_module.eval()
    batch = 2
    count = count_model(module, (model_input(cfg, module, batch, "meta"),), backward=True)
    nodes = {n.path: n for n in flop_tree(module, module.default_flop_tokens()).walk()}
    rule = backward_breakdown_at("", nodes)
    for cat in ("matmul", "attention"):
        assert count.backward[""][cat] == batch * rule[cat], cat
    conv = nodes["patch_embed"].own["matmul"] * batch
    assert count.backward["patch_embed"]["matmul"] == conv


def test_layer_shapes_record_first_call_shapes_dtypes_and_bytes():
    model = build(lambda: nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 6)))
    shapes = layer_shapes(model, (meta(2, 3, dtype=torch.int64),))
    assert shapes["0"].input_shapes == [[2, 3]] and shapes["0"].input_dtypes == ["int64"]
    assert shapes["1"].output_shapes == [[2, 3, 6]] and shapes["1"].output_bytes == 2 * 3 * 6 * 4
    assert shapes["1"].param_bytes == (4 * 6 + 6) * 4
    assert shapes[""].param_bytes == (10 * 4 + 4 * 6 + 6) * 4


@torch.library.custom_op("flopkit_test::double_matmul", mutates_args=())
def _double_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x @ w) @ w.t()


@_double_matmul.register_fake
def _(x, w):
    return torch.empty_like(x)


class UsesCustomOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.empty(8, 4))

    def forward(self, x):
        return torch.ops.flopkit_test.double_matmul(x, self.w)


def test_an_op_without_formula_is_listed_until_registered():
    from flopkit import register_formula

    x = meta(3, 8)
    before = count_model(build(UsesCustomOp), (x,))
    assert before.uncounted == {"flopkit_test.double_matmul": 1} and not before.breakdown("").get("matmul")

    def double_matmul_flops(x_shape, w_shape, *, out_shape=None, **kw):
        return 2 * 2 * x_shape[0] * w_shape[0] * w_shape[1]

    register_formula(torch.ops.flopkit_test.double_matmul, double_matmul_flops, "matmul")
    after = count_model(build(UsesCustomOp), (x,))
    assert after.forward[""]["matmul"] == 2 * 2 * 3 * 8 * 4 and not after.uncounted
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as plain:  # torch's own counter sees it too
        build(UsesCustomOp)(x)
    assert plain.get_total_flops() == 2 * 2 * 3 * 8 * 4


def test_grouped_mm_runs_on_meta_in_float32_and_is_counted():
    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.empty(4, 16, 8))  # 4 experts, [in, out]

        def forward(self, x, offs):
            return torch._grouped_mm(x, self.w, offs=offs)

    x = meta(10, 16)
    offs = torch.empty(4, dtype=torch.int32, device="meta")
    count = count_model(build(Experts), (x, offs))
    assert count.forward[""]["matmul"] == 2 * 10 * 16 * 8 and not count.uncounted
    back = count_model(build(Experts), (x, offs), backward=True)
    assert back.backward[""]["matmul"] == 2 * 10 * 16 * 8  # dW only: x needs no gradient


def test_docs_triton_kernel_example_is_counted_once_registered(tmp_path):
    """The register_formula example of docs/llm.md, run as written, then counted on meta."""
    pytest.importorskip("triton")
    import re
    import runpy
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "llm.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "triton_op" in b)
    example = tmp_path / "swiglu_example.py"  # a file: triton.jit reads the kernel's source
    example.write_text(block)
    runpy.run_path(str(example))

    class SwiGLU(nn.Module):
        def forward(self, x):
            return torch.ops.mylib.swiglu(x)

    count = count_model(SwiGLU(), (meta(3, 16),))
    assert count.forward[""]["elementwise"] == 2 * 3 * 8 and not count.uncounted


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 7), st.integers(1, 9), st.one_of(st.none(), st.integers(1, 10)), st.data(),
)  # fmt: skip
def test_padded_pairs_equal_the_mask_they_stand_for(q_len, kv_len, window, data):
    """Causal + window + padding (0/1) or packed documents (ids), against the explicit boolean mask."""
    from flopkit.flops.anymodel import padded_pairs

    values = torch.tensor(data.draw(st.lists(st.lists(st.integers(0, 3), min_size=kv_len, max_size=kv_len),
                                             min_size=1, max_size=3)))  # fmt: skip
    offset = kv_len - q_len
    q = torch.arange(offset, offset + q_len)[:, None]
    k = torch.arange(kv_len)[None, :]
    keep = (k <= q) & ((q - k) < window if window is not None else True)
    expected = 0
    for row in values:
        if int(values.max()) <= 1:
            allowed = (row != 0)[None, :].expand(q_len, kv_len)
        else:
            own = row[q.squeeze(1).clamp(0, kv_len - 1)][:, None]
            allowed = (row[None, :] == own) & (own != 0)
        expected += int((keep & allowed).sum())
    assert padded_pairs(values, q_len, None, window, causal=True) == expected
