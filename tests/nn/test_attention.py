"""ViT5Attention: forward against a naive implementation written here, FLOPs by hand and
against torch's FlopCounterMode on the meta device, state-dict keys, errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from flopkit import HeadNorm, PerHeadRMSNorm, ViT5Attention


def naive_rope(x, cos, sin, pairing):
    d = x.shape[-1]
    if pairing == "interleaved":
        rot = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    else:
        q4, h = d // 4, d // 2
        rot = torch.cat((-x[..., q4:h], x[..., :q4], -x[..., h + q4 :], x[..., h : h + q4]), dim=-1)
    return x * cos + rot * sin


def naive_attention(attn, x, cos, sin):
    """float64 attention with an explicit softmax, from the module's weights and given tables."""
    x = x.double()
    B, T, C = x.shape
    H, D = attn.num_heads, attn.head_dim
    qkv = x @ attn.qkv.weight.double().T
    if attn.qkv.bias is not None:
        qkv = qkv + attn.qkv.bias.double()
    q, k, v = qkv.view(B, T, 3, H, D).unbind(2)
    if attn.qk_norm:
        wq, wk = attn.q_norm.weight.double(), attn.k_norm.weight.double()
        q = q / torch.sqrt((q * q).mean(-1, keepdim=True) + 1e-6) * wq
        k = k / torch.sqrt((k * k).mean(-1, keepdim=True) + 1e-6) * wk
    c, s = cos.double()[:, None], sin.double()[:, None]
    q, k = naive_rope(q, c, s, attn.rope_pairing), naive_rope(k, c, s, attn.rope_pairing)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    p = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)
    out = (p @ v).transpose(1, 2).reshape(B, T, C)
    return out @ attn.proj.weight.double().T


@pytest.mark.parametrize("pairing", ["split_half", "interleaved"])
@pytest.mark.parametrize(
    ("h", "w", "cls", "regs", "qk"),
    [(3, 4, True, 4, "rmsnorm"), (2, 2, False, 0, None), (4, 2, True, 1, "headnorm")],
)
def test_forward_matches_naive_float64(pairing, h, w, cls, regs, qk):
    attn = ViT5Attention(32, 4, h, w, num_registers=regs, has_cls=cls, qk_norm=qk, rope_pairing=pairing)
    if qk:
        with torch.no_grad():
            attn.q_norm.weight.normal_()
            attn.k_norm.weight.normal_()
    T = h * w + cls + regs
    x = torch.randn(2, T, 32)
    out = attn(x)
    ref = naive_attention(attn, x, attn.rope_cos, attn.rope_sin)
    assert out.shape == x.shape
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_keeps_dtype_and_is_finite(dtype):
    attn = ViT5Attention(64, 4, 3, 3, qk_norm="rmsnorm").to(dtype)
    x = torch.randn(2, 14, 64, dtype=dtype)
    y = attn(x)
    assert y.dtype == dtype and torch.isfinite(y).all()


def test_state_dict_keys_match_upstream():
    attn = ViT5Attention(384, 6, 14, 14, qk_norm="rmsnorm")
    sd = attn.state_dict()
    assert set(sd) == {"qkv.weight", "proj.weight", "q_norm.weight", "k_norm.weight"}
    assert sd["q_norm.weight"].shape == (64,)
    biased = ViT5Attention(384, 6, 14, 14, qkv_bias=True, out_proj_bias=True)
    assert set(biased.state_dict()) == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    # rope tables are buffers but not persistent: checkpoints do not carry them
    assert "rope_cos" not in sd and attn.rope_cos.shape == (201, 64)


def test_state_dict_round_trip():
    a = ViT5Attention(48, 3, 2, 3, qk_norm="rmsnorm")
    b = ViT5Attention(48, 3, 2, 3, qk_norm="rmsnorm")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 11, 48)
    torch.testing.assert_close(a(x), b(x))


def hand_flops(T, C, H, qk_rows_per_norm):
    return 8 * T * C * C + 4 * T * T * C + 4 * T * C + 2 * 3 * qk_rows_per_norm * (C // H)


@pytest.mark.parametrize(("C", "H", "h", "w"), [(384, 6, 14, 14), (768, 12, 7, 9)])
def test_flop_count_by_hand(C, H, h, w):
    attn = ViT5Attention(C, H, h, w, qk_norm="rmsnorm")
    T = h * w + 1 + 4
    assert attn.flop_count() == hand_flops(T, C, H, T * H)
    assert attn.flop_count(T, batch_size=3) == 3 * attn.flop_count()
    assert attn.flop_count(convention="nvsubquadratic") == hand_flops(T, C, H, T)
    bd = attn.flop_breakdown()
    assert sum(bd.values()) == attn.flop_count()
    assert bd["attention"] == 4 * T * T * C and bd["rope"] == 4 * T * C and bd["matmul"] == 8 * T * C * C
    no_norm = ViT5Attention(C, H, h, w)
    assert no_norm.flop_count() == hand_flops(T, C, H, 0)


def test_flop_count_with_biases_and_per_head_norms():
    T, C, H = 3 * 3 + 1 + 4, 32, 4
    attn = ViT5Attention(
        C, H, 3, 3, qkv_bias=True, out_proj_bias=True, qk_norm=lambda d: PerHeadRMSNorm(H, d)
    )
    expected = 8 * T * C * C + 3 * T * C + T * C + 4 * T * T * C + 4 * T * C + 2 * 3 * T * C
    assert attn.flop_count() == expected
    # a per-head module already covers every head: the upstream convention does not change it
    assert attn.flop_count(convention="nvsubquadratic") == expected
    ln = ViT5Attention(C, H, 3, 3, qk_norm=lambda d: HeadNorm(H, d, mode="layer", bias=True))
    assert ln.flop_breakdown()["norm"] == 2 * 6 * T * C


@pytest.mark.parametrize("qk", [None, "rmsnorm", "headnorm"])
@pytest.mark.parametrize(("h", "w", "cls", "regs"), [(14, 14, True, 4), (3, 5, False, 0)])
def test_matmul_and_attention_equal_flop_counter_on_meta(qk, h, w, cls, regs):
    with torch.device("meta"):
        attn = ViT5Attention(96, 4, h, w, num_registers=regs, has_cls=cls, qk_norm=qk, qkv_bias=True)
        x = torch.empty(3, h * w + cls + regs, 96)
    with FlopCounterMode(display=False) as counter:
        attn(x)
    bd = attn.flop_breakdown()
    assert counter.get_total_flops() == 3 * (bd["matmul"] + bd["attention"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"hidden_dim": 100, "num_heads": 6},
            r"hidden_dim must be divisible by num_heads: hidden_dim=100, num_heads=6",
        ),
        (
            {"hidden_dim": 60, "num_heads": 6},
            r"head_dim = hidden_dim / num_heads = 10 must be divisible by 4",
        ),
        ({"num_registers": 3}, r"num_registers must be a perfect square .* got 3"),
        ({"num_patches_h": 0}, r"num_patches_h must be a positive integer, got 0"),
        ({"hidden_dim": -8}, r"hidden_dim must be a positive integer, got -8"),
        ({"num_heads": 0}, r"num_heads must be a positive integer, got 0"),
        ({"rope_pairing": "rotate"}, r"rope_pairing must be one of"),
        ({"qk_norm": "layernorm"}, r"qk_norm must be None, 'rmsnorm', 'headnorm'"),
        ({"attn_dropout": 1.5}, r"attn_dropout must be in \[0, 1\)"),
    ],
)
def test_constructor_errors_name_argument_and_expected_value(kwargs, match):
    args = {"hidden_dim": 64, "num_heads": 4, "num_patches_h": 2, "num_patches_w": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        ViT5Attention(**args)


def test_wrong_token_count_names_expected_layout():
    attn = ViT5Attention(64, 4, 14, 14)
    with pytest.raises(
        ValueError, match=r"T = 201 \(h\*w \+ cls \+ R = 14\*14 \+ 1 \+ 4 = 201\).*got \(2, 200, 64\)"
    ):
        attn(torch.randn(2, 200, 64))


def test_extra_repr_is_complete():
    r = repr(ViT5Attention(384, 6, 14, 14, qk_norm="rmsnorm"))
    for part in (
        "hidden_dim=384",
        "num_heads=6",
        "grid=14x14",
        "has_cls=True",
        "num_registers=4",
        "num_tokens=201",
        "qk_norm=rmsnorm",
        "rope_base=10000",
        "reg_rope_base=100",
        "rope_pairing=split_half",
        "scale=0.125",
    ):
        assert part in r


def test_init_fns_are_applied():
    attn = ViT5Attention(
        32,
        4,
        2,
        2,
        qkv_bias=True,
        init_fn_qkv_proj=torch.nn.init.ones_,
        init_fn_out_proj=torch.nn.init.zeros_,
    )
    assert torch.equal(attn.qkv.weight, torch.ones_like(attn.qkv.weight))
    assert torch.equal(attn.qkv.bias, torch.zeros_like(attn.qkv.bias))
    assert torch.equal(attn.proj.weight, torch.zeros_like(attn.proj.weight))


@settings(max_examples=25, deadline=None)
@given(
    heads=st.integers(1, 4),
    head_dim=st.sampled_from([4, 8, 12]),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    cls=st.booleans(),
    reg_side=st.integers(0, 2),
    bias=st.booleans(),
    batch=st.integers(1, 3),
)
def test_property_analytic_matches_flop_counter_for_any_layout(
    heads, head_dim, h, w, cls, reg_side, bias, batch
):
    C = heads * head_dim
    with torch.device("meta"):
        attn = ViT5Attention(
            C, heads, h, w, num_registers=reg_side**2, has_cls=cls, qkv_bias=bias, qk_norm="rmsnorm"
        )
        x = torch.empty(batch, attn.num_tokens, C)
    with FlopCounterMode(display=False) as counter:
        attn(x)
    bd = attn.flop_breakdown()
    assert counter.get_total_flops() == batch * (bd["matmul"] + bd["attention"])
    assert attn.num_tokens == h * w + cls + reg_side**2
