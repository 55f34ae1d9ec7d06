"""RMSNorm, PerHeadRMSNorm and HeadNorm: semantics against float64 formulas written here,
FLOP counts against hand counts, state dicts, safetensors loading, errors."""

import pytest
import torch
from _references import norm64, rel_err
from safetensors.torch import save_file

from flopkit import HeadNorm, PerHeadRMSNorm, RMSNorm

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rms64(x, w=None, eps=1e-6):
    return norm64(x.double(), None if w is None else w.double(), eps=eps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm_matches_float64_formula_and_keeps_dtype(dtype):
    norm = RMSNorm(48)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 48).to(dtype)
    y = norm(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert rel_err(y, rms64(x, norm.weight)) < TOL[dtype]


def test_rmsnorm_is_drop_in_for_torch_rmsnorm():
    ours, theirs = RMSNorm((4, 6), eps=1e-5), torch.nn.RMSNorm((4, 6), eps=1e-5)
    with torch.no_grad():
        theirs.weight.normal_()
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == ["weight"]
    x = torch.randn(7, 4, 6)
    torch.testing.assert_close(ours(x), theirs(x))


def test_rmsnorm_without_affine_has_no_parameters():
    norm = RMSNorm(8, elementwise_affine=False)
    assert list(norm.parameters()) == []
    x = torch.randn(4, 8)
    assert rel_err(norm(x), rms64(x)) < 1e-6


def test_rmsnorm_eps_none_uses_dtype_epsilon_like_torch():
    ours, theirs = RMSNorm(16, eps=None), torch.nn.RMSNorm(16)
    x = torch.randn(3, 16) * 1e-4
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize(
    ("shape", "tokens", "expected"), [(384, 201, 3 * 201 * 384), ((4, 6), 10, 3 * 10 * 24)]
)
def test_rmsnorm_flop_count_by_hand(shape, tokens, expected):
    norm = RMSNorm(shape)
    assert norm.flop_count(tokens) == expected
    assert norm.flop_breakdown(tokens) == {
        "matmul": 0,
        "attention": 0,
        "norm": expected,
        "rope": 0,
        "elementwise": 0,
    }


def test_rmsnorm_forward_residual_returns_sum_and_its_norm():
    norm = RMSNorm(32)
    x, r = torch.randn(4, 32), torch.randn(4, 32)
    y, h = norm.forward_residual(x, r)
    torch.testing.assert_close(h, x + r)
    assert rel_err(y, rms64(x + r)) < 1e-6


def test_rmsnorm_rejects_wrong_trailing_shape():
    with pytest.raises(ValueError, match=r"normalized_shape=\(8,\)"):
        RMSNorm(8)(torch.randn(2, 7))


@pytest.mark.parametrize("bad", [0, -3, (4, 0)])
def test_rmsnorm_rejects_non_positive_shape(bad):
    with pytest.raises(ValueError, match="normalized_shape"):
        RMSNorm(bad)


# ---------------------------------------------------------------- PerHeadRMSNorm
@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_per_head_rmsnorm_normalizes_each_head_with_shared_weight(flat, dtype):
    H, D = 3, 8
    norm = PerHeadRMSNorm(H, D)
    with torch.no_grad():
        norm.norm.weight.normal_()
    x = torch.randn(2, 5, H, D).to(dtype)
    inp = x.flatten(-2) if flat else x
    y = norm(inp)
    assert y.shape == inp.shape and y.dtype == dtype
    expected = rms64(x, norm.norm.weight)  # head by head, same weight for every head
    assert rel_err(y.reshape(x.shape), expected) < TOL[dtype]


def test_per_head_rmsnorm_state_dict_key_and_flops():
    norm = PerHeadRMSNorm(6, 64)
    assert list(norm.state_dict()) == ["norm.weight"]
    assert norm.state_dict()["norm.weight"].shape == (64,)
    assert norm.flop_count(201) == 3 * 201 * 6 * 64
    assert norm.flop_count(1) == 3 * 384


def test_per_head_rmsnorm_rejects_wrong_width():
    with pytest.raises(ValueError, match="num_heads\\*head_dim = 3\\*8 = 24"):
        PerHeadRMSNorm(3, 8)(torch.randn(2, 25))


# ---------------------------------------------------------------- HeadNorm
def headnorm64(x, w, b, mode, eps):
    return norm64(x.double(), w.double(), None if b is None else b.double(), eps, centre=mode == "layer")


@pytest.mark.parametrize("mode", ["rms", "layer"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_headnorm_matches_per_head_formula(mode, bias, dtype):
    H, D = 4, 16
    norm = HeadNorm(H, D, mode=mode, bias=bias)
    w = torch.randn(H, D)
    b = torch.randn(H, D) if bias else None
    norm.load_weight(w, b)
    x = torch.randn(3, 7, H * D).to(dtype)
    y = norm(x)
    assert y.shape == x.shape and y.dtype == dtype
    expected = headnorm64(x.view(3, 7, H, D), w, b, mode, 1e-5)
    assert rel_err(y.view(3, 7, H, D), expected) < TOL[dtype]
    assert rel_err(norm.forward_torch(x).view(3, 7, H, D), expected) < TOL[dtype]


def test_headnorm_load_weight_repeats_shared_weight_and_adds_offset():
    norm = HeadNorm(3, 4, weight_offset=1.0)
    w = torch.arange(4.0)
    norm.load_weight(w)
    torch.testing.assert_close(norm.weight.data, (w + 1).expand(3, 4))


def test_headnorm_intermediates_returns_dict():
    norm = HeadNorm(2, 8)
    x = torch.randn(5, 16)
    out = norm(x, intermediates=True)
    assert set(out) == {"hidden_states"}
    torch.testing.assert_close(out["hidden_states"], norm(x))
    assert set(norm.forward_torch(x, intermediates=True)) == {"hidden_states"}


@pytest.mark.parametrize(
    ("mode", "bias", "per_elem"),
    [("rms", False, 3), ("layer", False, 5), ("layer", True, 6), ("rms", True, 4)],
)
@pytest.mark.parametrize("tokens", [1, 197])
def test_headnorm_flop_count_by_hand(mode, bias, per_elem, tokens):
    norm = HeadNorm(12, 64, mode=mode, bias=bias)
    assert norm.flop_count(tokens) == per_elem * tokens * 12 * 64
    assert sum(norm.flop_breakdown(tokens).values()) == norm.flop_count(tokens)


@pytest.mark.parametrize("weight_shape", [(8,), (2, 8)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_headnorm_from_safetensors(tmp_path, weight_shape, with_bias):
    tensors = {"layers.0.q_norm.weight": torch.randn(weight_shape)}
    if with_bias:
        tensors["layers.0.q_norm.bias"] = torch.randn(weight_shape)
    path = tmp_path / "norm.safetensors"
    save_file(tensors, str(path))
    norm = HeadNorm.from_safetensors(path, "layers.0.q_norm", num_heads=2, head_dim=8, mode="layer")
    torch.testing.assert_close(norm.weight.data, tensors["layers.0.q_norm.weight"].expand(2, 8))
    assert (norm.bias is not None) == with_bias
    if with_bias:
        torch.testing.assert_close(norm.bias.data, tensors["layers.0.q_norm.bias"].expand(2, 8))
    x = torch.randn(3, 16)
    b = tensors.get("layers.0.q_norm.bias")
    expected = headnorm64(
        x.view(3, 2, 8), norm.weight.data, b.expand(2, 8) if b is not None else None, "layer", 1e-5
    )
    assert rel_err(norm(x).view(3, 2, 8), expected) < 1e-6


def test_headnorm_from_safetensors_missing_key(tmp_path):
    path = tmp_path / "n.safetensors"
    save_file({"other.weight": torch.ones(8)}, str(path))
    with pytest.raises(KeyError, match="q_norm.weight"):
        HeadNorm.from_safetensors(path, "q_norm", 1, 8)


def test_headnorm_errors():
    with pytest.raises(ValueError, match="mode"):
        HeadNorm(2, 8, mode="batch")
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\) or \(2, 8\)"):
        HeadNorm(2, 8).load_weight(torch.ones(3, 8))
    with pytest.raises(ValueError, match="num_heads"):
        HeadNorm(0, 8)


def test_norms_state_dict_round_trip():
    for make in (lambda: RMSNorm(12), lambda: PerHeadRMSNorm(3, 4), lambda: HeadNorm(3, 4, bias=True)):
        a, b = make(), make()
        with torch.no_grad():
            for p in a.parameters():
                p.normal_()
        b.load_state_dict(a.state_dict())
        x = torch.randn(2, 12)
        torch.testing.assert_close(a(x), b(x))


def test_extra_repr_names_configuration():
    assert "eps=1e-06" in repr(RMSNorm(8))
    assert "num_heads=3, head_dim=4" in repr(PerHeadRMSNorm(3, 4))
    assert "mode='layer'" in repr(HeadNorm(3, 4, mode="layer"))
