"""RoPE tables and token layout against first-principles computations written here."""

import math

import pytest
import torch

from flopkit.nn.rope import apply_rope, build_rope_tables, token_layout


def angle(pos_y, pos_x, d, base):
    """Angle vector for one grid position, from docs/vit5.md, with plain Python math."""
    theta = [base ** (-4 * j / d) for j in range(d // 4)]
    ys = [a for t in theta for a in (pos_y * t, pos_y * t)]
    xs = [a for t in theta for a in (pos_x * t, pos_x * t)]
    return ys + xs


@pytest.mark.parametrize(
    ("h", "w", "cls", "regs"), [(3, 4, True, 4), (2, 2, False, 9), (4, 3, True, 0), (1, 5, False, 1)]
)
def test_tables_match_first_principles(h, w, cls, regs):
    d = 16
    layout = token_layout(h, w, cls, regs)
    cos, sin = build_rope_tables(layout, d, rope_base=10000.0, reg_rope_base=100.0)
    assert cos.shape == sin.shape == (h * w + cls + regs, d)
    rows = []
    for y in range(h):
        for x in range(w):
            rows.append(angle(y, x, d, 10000.0))
    if cls:
        rows.append([0.0] * d)
    side = math.isqrt(regs)
    for r in range(regs):
        rows.append(angle(r // side, r % side, d, 100.0))
    expected = torch.tensor(rows, dtype=torch.float64)
    torch.testing.assert_close(cos.double(), expected.cos(), atol=1e-7, rtol=0)
    torch.testing.assert_close(sin.double(), expected.sin(), atol=1e-7, rtol=0)


def test_cls_row_is_identity():
    layout = token_layout(14, 14, True, 4)
    cos, sin = build_rope_tables(layout, 64)
    assert torch.equal(cos[196], torch.ones(64)) and torch.equal(sin[196], torch.zeros(64))


def test_register_rows_use_reg_rope_base_on_sqrt_grid():
    layout = token_layout(2, 2, True, 4)
    cos_a, sin_a = build_rope_tables(layout, 8, rope_base=10000.0, reg_rope_base=100.0)
    cos_b, _ = build_rope_tables(layout, 8, rope_base=10000.0, reg_rope_base=7.0)
    assert torch.equal(cos_a[:5], cos_b[:5]) and not torch.equal(cos_a[5:], cos_b[5:])
    # register 3 sits at (1, 1): first Y frequency is 1 * 100**0 = 1 rad
    assert sin_a[5 + 3, 0].item() == pytest.approx(math.sin(1.0), abs=1e-7)
    assert sin_a[5 + 3, 6].item() == pytest.approx(math.sin(100 ** (-4 / 8)), abs=1e-7)


def rot_split_half(x):
    d = x.shape[-1]
    q4, h = d // 4, d // 2
    out = torch.empty_like(x)
    for i in range(d):  # written per channel to be independent of the vectorised code
        if i < q4:
            out[..., i] = -x[..., i + q4]
        elif i < h:
            out[..., i] = x[..., i - q4]
        elif i < h + q4:
            out[..., i] = -x[..., i + q4]
        else:
            out[..., i] = x[..., i - q4]
    return out


def rot_interleaved(x):
    out = torch.empty_like(x)
    out[..., 0::2] = -x[..., 1::2]
    out[..., 1::2] = x[..., 0::2]
    return out


@pytest.mark.parametrize(
    ("pairing", "rot"), [("split_half", rot_split_half), ("interleaved", rot_interleaved)]
)
def test_apply_rope_formula(pairing, rot):
    cos, sin = build_rope_tables(token_layout(3, 3, True, 4), 16)
    x = torch.randn(2, 14, 16, dtype=torch.float64)
    expected = x * cos.double() + rot(x) * sin.double()
    torch.testing.assert_close(apply_rope(x, cos.double(), sin.double(), pairing), expected)


def norm_ratios(pairing):
    cos, sin = build_rope_tables(token_layout(14, 14, True, 4), 64)
    x = torch.randn(1000, 201, 64, dtype=torch.float64)
    y = apply_rope(x, cos.double(), sin.double(), pairing)
    return y.norm(dim=-1) / x.norm(dim=-1)


def test_interleaved_pairing_preserves_norms():
    assert (norm_ratios("interleaved") - 1).abs().max().item() < 1e-6


def test_split_half_pairing_does_not_preserve_norms():
    r = norm_ratios("split_half")
    assert (r - 1).abs().max().item() > 0.05


def test_apply_rope_rejects_unknown_pairing():
    with pytest.raises(ValueError, match="rope_pairing"):
        apply_rope(torch.randn(2, 8), torch.ones(8), torch.zeros(8), "halves")


# ---------------------------------------------------------------- layout
def test_layout_order_patches_cls_registers():
    layout = token_layout(2, 3, True, 4)
    toks = layout.tokens()
    assert [t[1] for t in toks] == ["patch"] * 6 + ["cls"] + ["register"] * 4
    assert [(y, x) for _, _, y, x in toks[:6]] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert layout.cls_index == 6 and layout.register_start == 7 and layout.num_tokens == 11
    assert [(y, x) for _, _, y, x in toks[7:]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert layout.describe() == "2*3 + 1 + 4 = 11"


def test_layout_without_cls_and_registers():
    layout = token_layout(4, 2, False, 0)
    assert layout.num_tokens == 8 and layout.cls_index is None and layout.register_start == 8


@pytest.mark.parametrize("regs", [2, 3, 5, 8])
def test_non_square_register_count_is_rejected(regs):
    with pytest.raises(ValueError, match=f"num_registers must be a perfect square.*got {regs}"):
        token_layout(2, 2, True, regs)


def test_head_dim_must_be_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        build_rope_tables(token_layout(2, 2), 10)
