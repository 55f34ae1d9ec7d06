"""ViT5 classifier: parameters, FLOPs by hand for every preset, FlopCounterMode agreement,
forward semantics and errors."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from flopkit import LayerScale, Mlp, PatchEmbed, ViT5, ViT5Block
from flopkit.nn import PRESETS

# name: (C, depth, H)
SIZES = {
    "vit5-small": (384, 12, 6),
    "vit5-base": (768, 12, 12),
    "vit5-large": (1024, 24, 16),
    "vit5-xlarge": (1152, 28, 16),
}


def hand_vit5_flops(C, depth, H, image=224, patch=16, regs=4, classes=1000, one_head_qk=False, biases=False):
    """DESIGN.md §3 written out term by term; ``biases``: the official layout's bias adds (one per
    output element of the patch conv, attn.proj, both MLP linears and the head)."""
    N = (image // patch) ** 2
    T = N + 1 + regs
    D = C // H
    hidden = 4 * C
    patch_embed = 2 * 3 * patch * patch * C * N + N * C + (N * C if biases else 0)
    qk = 2 * 3 * T * (D if one_head_qk else H * D)
    attn = 8 * T * C * C + 4 * T * T * C + 4 * T * C + qk + (T * C if biases else 0)
    mlp = 2 * T * C * hidden + T * hidden + 2 * T * hidden * C + (T * hidden + T * C if biases else 0)
    block = attn + mlp + 2 * 3 * T * C + 2 * T * C
    return patch_embed + depth * block + 3 * C + 2 * C * classes + (classes if biases else 0)


@pytest.mark.parametrize("name", list(SIZES))
def test_official_preset_flops_by_hand(name):
    with torch.device("meta"):
        model = ViT5.from_preset(f"{name}-official")
    C, depth, H = SIZES[name]
    assert model.flop_count() == hand_vit5_flops(C, depth, H, biases=True)
    assert model.flop_count(convention="nvsubquadratic") == hand_vit5_flops(
        C, depth, H, one_head_qk=True, biases=True
    )


@pytest.mark.parametrize("name", list(SIZES))
def test_preset_flops_by_hand(name):
    with torch.device("meta"):
        model = ViT5.from_preset(name)
    C, depth, H = SIZES[name]
    assert model.flop_count() == hand_vit5_flops(C, depth, H)
    assert model.flop_count(convention="nvsubquadratic") == hand_vit5_flops(C, depth, H, one_head_qk=True)
    assert sum(model.flop_breakdown().values()) == model.flop_count()
    assert model.flop_count(batch_size=8) == 8 * model.flop_count()


def test_vit5_small_reproduces_published_upstream_gflops():
    with torch.device("meta"):
        p16 = ViT5.from_preset("vit5-small")
        p8 = ViT5.from_preset("vit5-small", patch_size=8)
    assert round(p16.flop_count(convention="nvsubquadratic") / 1e9, 2) == 9.41
    assert round(p8.flop_count(convention="nvsubquadratic") / 1e9, 2) == 45.16
    assert p16.flop_count() == 9_417_430_656


def test_vit5_small_parameter_count():
    with torch.device("meta"):
        model = ViT5.from_preset("vit5-small")
    assert sum(p.numel() for p in model.parameters()) == 22_010_112
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())


@pytest.mark.parametrize("name", ["vit5-small", "vit5-base"])
def test_matmul_and_attention_equal_flop_counter_on_meta(name):
    with torch.device("meta"):
        model = ViT5.from_preset(name)
        images = torch.empty(2, 3, 224, 224)
    with FlopCounterMode(display=False) as counter:
        model(images)
    bd = model.flop_breakdown(batch_size=2)
    assert counter.get_total_flops() == bd["matmul"] + bd["attention"]


def test_no_cls_mean_pool_and_non_square_image_on_meta_counter():
    kw = {
        "image_size": (64, 96),
        "patch_size": 16,
        "hidden_dim": 64,
        "depth": 2,
        "num_heads": 4,
        "has_cls": False,
        "num_registers": 0,
        "num_classes": 10,
    }
    with torch.device("meta"):
        model = ViT5(**kw)
        images = torch.empty(3, 3, 64, 96)
    assert model.num_tokens == 4 * 6
    with FlopCounterMode(display=False) as counter:
        model(images)
    bd = model.flop_breakdown(batch_size=3)
    assert counter.get_total_flops() == bd["matmul"] + bd["attention"]
    # final norm over the 24 pooled patch tokens
    assert model.norm.flop_count(model.num_readout_tokens) == 3 * 24 * 64


def test_forward_shapes_and_readout():
    model = ViT5(image_size=32, patch_size=8, hidden_dim=32, depth=2, num_heads=2, num_classes=5)
    images = torch.randn(2, 3, 32, 32)
    logits = model(images)
    assert logits.shape == (2, 5)
    tokens = model.forward_features(images)
    assert tokens.shape == (2, 16 + 1 + 4, 32)
    # readout is the CLS token, at index h*w
    expected = model.head(model.norm(tokens[:, 16]))
    torch.testing.assert_close(logits, expected)


def test_features_head_with_zero_classes():
    model = ViT5(image_size=32, patch_size=16, hidden_dim=32, depth=1, num_heads=2, num_classes=0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 32)
    assert model.flop_breakdown()["matmul"] > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_forward_keeps_dtype(dtype):
    model = ViT5(image_size=32, patch_size=16, hidden_dim=32, depth=1, num_heads=2, num_classes=3).to(dtype)
    out = model(torch.randn(2, 3, 32, 32, dtype=dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_backward_reaches_every_parameter():
    model = ViT5(image_size=32, patch_size=16, hidden_dim=32, depth=2, num_heads=2, num_classes=3)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_state_dict_round_trip():
    a = ViT5(image_size=32, patch_size=16, hidden_dim=32, depth=1, num_heads=2, num_classes=3)
    b = ViT5(image_size=32, patch_size=16, hidden_dim=32, depth=1, num_heads=2, num_classes=3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x))
    assert "blocks.0.attn.q_norm.weight" in a.state_dict()


def test_part_flops_by_hand():
    assert PatchEmbed(32, 8, 3, 16).flop_count(batch_size=2) == 2 * (2 * 3 * 64 * 16 * 16 + 16 * 16)
    assert LayerScale(24).flop_count(10) == 240
    assert Mlp(16, 64).flop_count(5) == 2 * 5 * 16 * 64 + 5 * 64 + 2 * 5 * 64 * 16
    blk = ViT5Block(64, 4, 3, 3, qk_norm=None)
    T = 14
    attn = 8 * T * 64 * 64 + 4 * T * T * 64 + 4 * T * 64
    assert blk.flop_count() == attn + blk.mlp.flop_count(T) + 2 * 3 * T * 64 + 2 * T * 64


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 225}, r"image_size height 225 must be divisible by patch_size 16"),
        ({"num_registers": 5}, r"num_registers must be a perfect square"),
        ({"num_heads": 5}, r"hidden_dim must be divisible by num_heads: hidden_dim=384, num_heads=5"),
        ({"depth": 0}, r"depth must be an integer >= 1, got 0"),
        ({"hidden_dimm": 3}, r"unknown ViT5 field 'hidden_dimm' \(did you mean 'hidden_dim'\?\)"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match), torch.device("meta"):
        ViT5.from_preset("vit5-small", **kwargs)


def test_unknown_preset_suggests_a_name():
    with pytest.raises(ValueError, match=r"did you mean 'vit5-small'"):
        ViT5.from_preset("vit5-smal")


def test_wrong_image_size_in_forward():
    model = ViT5(image_size=32, patch_size=16, hidden_dim=32, depth=1, num_heads=2)
    with pytest.raises(ValueError, match=r"images \[B, 3, 32, 32\]"):
        model(torch.randn(1, 3, 48, 48))


def test_presets_are_data():
    assert set(PRESETS) == set(SIZES) | {f"{name}-official" for name in SIZES}
    official = {
        "cls_first": True,
        "patch_bias": True,
        "proj_bias": True,
        "mlp_bias": True,
        "head_bias": True,
        "rope_pairing": "interleaved",
        "rope_tables": "official",
        "norm_cast_before_weight": True,
    }
    for name, (C, depth, H) in SIZES.items():
        assert PRESETS[name] == {"hidden_dim": C, "depth": depth, "num_heads": H}
        assert PRESETS[f"{name}-official"] == {**PRESETS[name], **official}


@pytest.mark.parametrize("image_size", [32, (32, 48)])
def test_patch_embed_gemm_equals_the_strided_convolution(image_size):
    # PatchEmbed runs its Conv2d as a GEMM over flattened patches; the function must be the conv's.
    torch.manual_seed(0)
    embed = PatchEmbed(image_size, patch_size=8, in_channels=3, hidden_dim=16).double()
    x = torch.randn(2, 3, *embed.image_size, dtype=torch.float64)
    conv = torch.nn.functional.conv2d(x, embed.proj.weight, stride=8).flatten(2).transpose(1, 2)
    torch.testing.assert_close(embed(x), conv + embed.pos_embed, rtol=1e-12, atol=1e-12)
    assert list(embed.state_dict()) == ["pos_embed", "proj.weight"]


def test_flop_count_arguments_mean_the_same_for_every_module():
    """num_tokens is tokens per sample, batch_size the samples, for every module."""
    with torch.device("meta"):
        model = ViT5.from_preset("vit5-small", depth=2)
    T = model.num_tokens
    block, norm = model.blocks[0], model.norm
    for module, tokens in (
        (model, None),
        (model.patch_embed, None),
        (block, T),
        (block.attn, T),
        (norm, T),
        (block.mlp, T),
        (block.ls1, T),
    ):
        one = module.flop_count(tokens)
        assert module.flop_count(tokens, batch_size=5) == 5 * one
        assert module.flop_breakdown(tokens, batch_size=5) == {
            k: 5 * v for k, v in module.flop_breakdown(tokens).items()
        }
    assert block.flop_count() == block.flop_count(T) and block.attn.flop_count() == block.attn.flop_count(T)
    assert model.patch_embed.flop_count() == model.patch_embed.flop_count(196)


def test_flop_count_refuses_a_token_count_its_image_size_fixes():
    with torch.device("meta"):
        model = ViT5.from_preset("vit5-small", depth=1)
    with pytest.raises(
        ValueError, match="fixes 201 tokens per sample; leave num_tokens out \\(batch_size=128"
    ):
        model.flop_count(128)
    with pytest.raises(ValueError, match="needs num_tokens"):
        model.norm.flop_count()
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        model.flop_count(batch_size=0)


class _CountAddmm:
    """Counts ``torch.addmm`` calls inside its ``with`` (a plain function stands in for it)."""

    def __enter__(self):
        self.calls, self._real = 0, torch.addmm

        def addmm(*args, **kwargs):
            self.calls += 1
            return self._real(*args, **kwargs)

        torch.addmm = addmm
        return self

    def __exit__(self, *exc):
        torch.addmm = self._real


def _block_pair(dtype=torch.float64, **kw):
    """A ViT5Block on the fast path (folds ls2 into fc2) and its use_triton=False twin, same weights
    (a random LayerScale, so a wrong fold cannot hide behind gamma = 1e-4)."""
    torch.manual_seed(0)
    args = dict(hidden_dim=32, num_heads=2, num_patches_h=2, num_patches_w=2, num_registers=4, **kw)
    fast, ref = ViT5Block(**args).to(dtype), ViT5Block(**args, use_triton=False).to(dtype)
    with torch.no_grad():
        for p in fast.parameters():
            p.copy_(torch.randn_like(p))
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def test_block_folds_ls2_into_fc2_exactly():
    """x + ls2(fc2(h)) as one addmm with gamma folded into W2: same values and gradients as the
    unfolded form (float64), and the fold does run (one addmm per block, none unfolded)."""
    fast, ref = _block_pair()
    x = torch.randn(3, fast.num_tokens, 32, dtype=torch.float64, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    with _CountAddmm() as addmm:
        out = fast(x)
    assert addmm.calls == 1
    expected = ref(xr)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    out.backward(g)
    expected.backward(g)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-11, atol=1e-11)
    for (name, p), q in zip(fast.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-11, atol=1e-11, msg=name)


@pytest.mark.parametrize(
    "case", ["mlp_bias", "no_layer_scale", "counter", "autocast_promotes", "reference_path"]
)
def test_block_keeps_ls2_unfolded(case):
    """Where the fold would change what runs (a bias, no LayerScale), the dtype (fp32 weights under
    bf16 autocast give an fp32 residual stream) or what a FLOP counter attributes, the block runs
    fc2, the LayerScale and the add as written."""
    kw = (
        {"mlp_bias": True}
        if case == "mlp_bias"
        else {"layer_scale_init": None}
        if case == "no_layer_scale"
        else {}
    )
    dtype = torch.float32 if case == "autocast_promotes" else torch.float64
    fast, ref = _block_pair(dtype, **kw)
    block = ref if case == "reference_path" else fast
    x = torch.randn(2, fast.num_tokens, 32, dtype=dtype)
    with _CountAddmm() as addmm:
        if case == "counter":
            with FlopCounterMode(display=False) as counter:
                block(x)
            assert counter.get_flop_counts()["ViT5Block.mlp.fc2"]
        elif case == "autocast_promotes":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = block(x)
            assert out.dtype == torch.float32
        else:
            block(x)
    assert addmm.calls == 0
