"""The official ViT-5 layout as options: norm cast order, CLS position, official RoPE tables, biases."""

import pytest
import torch

from flopkit import Mlp, PatchEmbed, RMSNorm, ViT5Attention
from flopkit.config import load_config
from flopkit.nn.rope import build_rope_tables, token_layout


def normalised(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    x32 = x.float()
    return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)


def test_cast_before_weight_casts_then_multiplies_in_bf16():
    x = torch.randn(64, 96, dtype=torch.bfloat16) * 3
    norm = RMSNorm(96, cast_before_weight=True, use_triton=False).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96) * 0.5 + 1)
    y = norm(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, normalised(x).to(torch.bfloat16) * norm.weight)
    default = RMSNorm(96, use_triton=False).to(torch.bfloat16)
    default.load_state_dict(norm.state_dict())
    assert torch.equal(default(x), (normalised(x) * norm.weight.float()).to(torch.bfloat16))
    assert not torch.equal(default(x), y)  # the two orders round differently


def test_cast_orders_agree_exactly_in_float32():
    x = torch.randn(16, 64)
    late = RMSNorm(64, cast_before_weight=True, use_triton=False)
    with torch.no_grad():
        late.weight.uniform_(0.5, 1.5)
    early = RMSNorm(64, use_triton=False)
    early.load_state_dict(late.state_dict())
    assert torch.equal(late(x), early(x))


def test_cast_before_weight_residual_step():
    x, res = torch.randn(8, 32, dtype=torch.bfloat16), torch.randn(8, 32, dtype=torch.bfloat16)
    norm = RMSNorm(32, cast_before_weight=True, use_triton=False).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    y, h = norm.forward_residual(x, res)
    assert torch.equal(h, x + res)
    assert torch.equal(y, normalised(h).to(torch.bfloat16) * norm.weight)


def test_fused_qk_kernel_is_skipped_only_where_the_cast_order_matters():
    attn = ViT5Attention(64, 2, 4, 4, qk_norm="rmsnorm", norm_cast_before_weight=True)
    assert attn._fused_weights(any_cast_order=False) is None  # bf16/fp16: the fused kernel weights first
    assert attn._fused_weights(any_cast_order=True) is not None  # float32: both orders are equal
    assert ViT5Attention(64, 2, 4, 4, qk_norm="rmsnorm")._fused_weights() is not None


def test_cls_first_layout():
    layout = token_layout(3, 4, has_cls=True, num_registers=4, cls_first=True)
    kinds = [kind for _, kind, _, _ in layout.tokens()]
    assert kinds == ["cls"] + ["patch"] * 12 + ["register"] * 4
    assert [i for i, *_ in layout.tokens()] == list(range(17))
    assert (layout.cls_index, layout.patch_start, layout.register_start) == (0, 1, 13)
    assert layout.describe() == "1 + 3*4 + 4 = 17" and layout.order() == "[CLS, patches, registers]"
    default = token_layout(3, 4)
    assert (default.cls_index, default.patch_start, default.order()) == (12, 0, "[patches, CLS, registers]")


@pytest.mark.parametrize("tables", ["flopkit", "official"])
def test_cls_first_tables_put_the_identity_row_first(tables):
    layout = token_layout(5, 5, cls_first=True)
    cos, sin = build_rope_tables(layout, 32, tables=tables)
    ref_cos, ref_sin = build_rope_tables(token_layout(5, 5), 32, tables=tables)
    assert torch.equal(cos[0], torch.ones(32)) and torch.equal(sin[0], torch.zeros(32))
    assert torch.equal(cos[1:26], ref_cos[:25]) and torch.equal(cos[26:], ref_cos[26:])
    assert torch.equal(sin[1:26], ref_sin[:25])


def test_official_tables_are_the_same_angles_to_float32_rounding():
    layout = token_layout(16, 16)
    official = build_rope_tables(layout, 64, tables="official")
    exact = build_rope_tables(layout, 64, dtype=torch.float64)
    for got, want in zip(official, exact, strict=True):
        # angles up to 15 rad in float32: |error| <= a few ulp(15) ~ 1e-6
        assert float((got.double() - want).abs().max()) < 5e-6
    with pytest.raises(ValueError, match="rope_tables must be one of"):
        build_rope_tables(layout, 64, tables="eva")


def test_bias_flops_are_one_add_per_output_element():
    N, C = 14 * 14, 96
    plain, biased = PatchEmbed(224, 16, 3, C), PatchEmbed(224, 16, 3, C, bias=True)
    assert biased.flop_breakdown()["elementwise"] - plain.flop_breakdown()["elementwise"] == N * C
    assert biased.flop_breakdown()["matmul"] == plain.flop_breakdown()["matmul"]
    T, h = 50, 4 * C
    assert Mlp(C, h, bias=True).flop_count(T) - Mlp(C, h).flop_count(T) == T * h + T * C
    attn = ViT5Attention(C, 2, 4, 4, qkv_bias=True, out_proj_bias=True)
    assert attn.flop_count() - ViT5Attention(C, 2, 4, 4).flop_count() == attn.num_tokens * (3 * C + C)


def test_options_are_config_fields():
    config = load_config("vit5-small", ["cls_first=true", "rope_tables=official", "mlp_bias=true"])
    model = config.meta_module
    assert model.layout.cls_first and model.blocks[0].attn.rope_tables == "official"
    assert model.blocks[0].mlp.fc1.bias is not None
    with pytest.raises(ValueError, match="rope_tables must be one of 'flopkit', 'official'"):
        load_config("vit5-small", ["rope_tables=eva"])
