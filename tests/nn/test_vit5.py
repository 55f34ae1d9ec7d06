"""ViT5 classifier: parameters, FLOPs by hand for every preset, FlopCounterMode agreement,
forward semantics and errors."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from flopkit import LayerScale, Mlp, PatchEmbed, ViT5, ViT5Block
from flopkit.nn import PRESETS, ScalableLinear

# name: (C, depth, H)
SIZES = {
    "vit5-small": (384, 12, 6),
    "vit5-base": (768, 12, 12),
    "vit5-large": (1024, 24, 16),
    "vit5-xlarge": (1152, 28, 16),
}


def hand_vit5_flops(C, depth, H, image=224, patch=16, regs=4, classes=1000, one_head_qk=False, biases=False):
    """docs/conventions.md written out term by term; ``biases``: the official layout's bias adds (one per
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


def _count_calls(module):
    """A list that grows by one each time ``module`` runs (a forward hook)."""
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def _randomized(*models):
    """Give the models one set of random weights (LayerScales far from 1e-4, so that a wrong fold
    or a lost branch cannot hide)."""
    torch.manual_seed(0)
    first = models[0]
    with torch.no_grad():
        for p in first.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    for m in models[1:]:
        m.load_state_dict(first.state_dict())
    return models


def _block_pair(dtype=torch.float64, **kw):
    """A ViT5Block on the fast path and its use_triton=False twin, same weights."""
    args = dict(hidden_dim=32, num_heads=2, num_patches_h=2, num_patches_w=2, num_registers=4, **kw)
    return _randomized(ViT5Block(**args).to(dtype), ViT5Block(**args, use_triton=False).to(dtype))


def _assert_same_grads(a, b, tol):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=tol, atol=tol, msg=name)


def test_block_folds_ls2_into_fc2_exactly():
    """ls2(fc2(h)) as h @ (W2.T * gamma): the same values and gradients as the unfolded form
    (float64), and ls2 never runs as a module on the fast path."""
    fast, ref = _block_pair()
    calls, ref_calls = _count_calls(fast.ls2), _count_calls(ref.ls2)
    x = torch.randn(3, fast.num_tokens, 32, dtype=torch.float64, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    out, expected = fast(x), ref(xr)
    assert (len(calls), len(ref_calls)) == (0, 1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    out.backward(g)
    expected.backward(g)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-11, atol=1e-11)
    _assert_same_grads(fast, ref, 1e-11)


def test_block_pending_branch_is_the_unsummed_output():
    """block(x, b, pending=True) returns (r, branch) with r + branch = ref(x + b)."""
    fast, ref = _block_pair()
    x, b = torch.randn(2, 2, fast.num_tokens, 32, dtype=torch.float64)
    r, branch = fast(x, b, pending=True)
    torch.testing.assert_close(r + branch, ref(x + b), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast(x, b), ref(x + b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("has_cls", [True, False])
def test_vit5_pending_chain_matches_the_reference(has_cls):
    """ViT5's fast path (branches handed on unsummed, ls2 folded) against use_triton=False in float64:
    logits, features and every gradient."""
    kw = dict(
        image_size=32, patch_size=8, hidden_dim=32, depth=3, num_heads=2, num_classes=5, has_cls=has_cls
    )
    fast, ref = _randomized(ViT5(**kw).double(), ViT5(**kw, use_triton=False).double())
    norm1_calls = _count_calls(fast.blocks[1].norm1)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    out, expected = fast(images), ref(images)
    assert not norm1_calls  # the second block's norm1 ran fused with the first block's output sum
    torch.testing.assert_close(out, expected, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(
        fast.forward_features(images), ref.forward_features(images), rtol=1e-11, atol=1e-11
    )
    g = torch.randn_like(out)
    out.backward(g)
    expected.backward(g)
    _assert_same_grads(fast, ref, 1e-10)


@pytest.mark.parametrize(
    "case", ["mlp_bias", "no_layer_scale", "counter", "autocast_changes_dtype", "reference_path"]
)
def test_block_keeps_ls2_unfolded(case):
    """Where the fold would change what runs (a bias, no LayerScale), the output dtype (a bfloat16
    residual with float32 weights under bfloat16 autocast: the unfolded branch is float32, so is the
    sum) or what a FLOP counter attributes, the block runs fc2 and the LayerScale as written."""
    kw = (
        {"mlp_bias": True}
        if case == "mlp_bias"
        else {"layer_scale_init": None}
        if case == "no_layer_scale"
        else {}
    )
    dtype = torch.float32 if case == "autocast_changes_dtype" else torch.float64
    fast, ref = _block_pair(dtype, **kw)
    block = ref if case == "reference_path" else fast
    calls = _count_calls(block.ls2)
    x = torch.randn(2, fast.num_tokens, 32, dtype=dtype)
    if case == "counter":
        with FlopCounterMode(display=False) as counter:
            block(x)
        assert counter.get_flop_counts()["ViT5Block.mlp.fc2"]
    elif case == "autocast_changes_dtype":  # (in a block, ls1's float32 scale already promotes x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            branch = block.mlp_branch(x.bfloat16(), torch.bfloat16)
        assert branch.dtype == torch.float32
    else:
        block(x)
    assert len(calls) == 1


def test_block_folds_under_autocast_when_the_sum_keeps_its_dtype():
    """float32 weights and residual under bfloat16 autocast: the folded branch is bfloat16 where the
    unfolded one is float32, but the block's output is float32 either way, so the fold runs."""
    fast, ref = _block_pair(torch.float32)
    calls = _count_calls(fast.ls2)
    x = torch.randn(2, fast.num_tokens, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = fast(x), ref(x)
    assert not calls and out.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)


def test_scalable_linear_folds_a_scale_and_keeps_nn_linear_state():
    torch.manual_seed(0)
    lin, plain = ScalableLinear(6, 4, bias=False).double(), torch.nn.Linear(6, 4, bias=False).double()
    plain.load_state_dict(lin.state_dict())
    x, scale = torch.randn(3, 5, 6, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(lin(x, scale), plain(x) * scale, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(lin(x), plain(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="without a bias"):
        ScalableLinear(6, 4)(x, scale)
