"""Token layout and RoPE reports, checked against the layout rules of docs/vit5.md."""

import math

import pytest

from flopkit.config import load_config
from flopkit.inspect.layout import attention_of, layout_ranges, layout_tokens
from flopkit.inspect.rope import pairing_norm_ratios, parse_token_spec, plot_rope_tables, rope_token_rows


def small_attention(*overrides):
    return attention_of(load_config("vit5-small", list(overrides)).meta_module)


def test_layout_ranges_of_vit5_small():
    ranges = {r["kind"]: r for r in layout_ranges(small_attention().layout)}
    assert ranges["patch"]["range"] == "0-195" and ranges["cls"]["range"] == "196"
    assert ranges["register"]["range"] == "197-200" and ranges["register"]["grid"].startswith("2x2")
    assert ranges["total T"]["count"] == 201


def test_every_token_listed_with_row_major_grid_positions():
    tokens = layout_tokens(small_attention("num_registers=9", "has_cls=false").layout)
    assert len(tokens) == 196 + 9
    assert tokens[15] == {"index": 15, "kind": "patch", "y": 1, "x": 1}
    assert tokens[196 + 5] == {"index": 201, "kind": "register", "y": 1, "x": 2}


def test_token_spec_ranges_are_half_open_and_checked():
    assert parse_token_spec("0:3,196:201", 201) == [0, 1, 2, 196, 197, 198, 199, 200]
    assert parse_token_spec("7", 201) == [7]
    with pytest.raises(ValueError, match="outside the 201 tokens"):
        parse_token_spec("200:202", 201)


def test_rope_rows_use_rope_base_for_patches_identity_for_cls_reg_base_for_registers():
    rows = {r["index"]: r for r in rope_token_rows(small_attention(), [1, 196, 200])}
    assert rows[1]["base"] == 10000.0 and rows[196]["base"] is None and rows[200]["base"] == 100.0
    assert rows[196]["cos"] == [1.0] * 4 and rows[196]["sin"] == [0.0] * 4
    # patch 1 is (y=0, x=1): channel D/2 = 32 holds x * theta_0 = 1 rad
    assert rows[1]["channels"][2] == 32 and rows[1]["cos"][2] == pytest.approx(math.cos(1.0), abs=1e-6)
    # register 3 is (1, 1) on the 2x2 grid; channel 2 holds y * theta_1 = 100**(-4/64)
    assert rows[200]["sin"][1] == pytest.approx(math.sin(100 ** (-4 / 64)), abs=1e-6)


def test_interleaved_pairing_preserves_norms_and_split_half_does_not():
    attn = small_attention()
    lo, hi = pairing_norm_ratios(attn, "interleaved")
    assert lo == pytest.approx(1.0, abs=1e-12) and hi == pytest.approx(1.0, abs=1e-12)
    lo, hi = pairing_norm_ratios(attn, "split_half")
    assert lo < 0.95 and hi > 1.05


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = plot_rope_tables(small_attention("image_size=64"), tmp_path / "rope.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_token_spec_shows_three_patches_then_cls_and_registers():
    from flopkit.inspect.rope import default_token_spec

    assert default_token_spec(small_attention().layout) == "0:3,196:201"
    assert default_token_spec(small_attention("has_cls=false", "num_registers=0").layout) == "0:3"


def test_summary_says_per_pairing_whether_norms_are_preserved():
    from flopkit.inspect.rope import rope_summary

    ratios = rope_summary(small_attention("image_size=64"))["norm_ratios"]
    assert ratios["interleaved"]["preserves_norm"] is True
    assert ratios["split_half"]["preserves_norm"] is False
    assert ratios["split_half"]["min"] < 0.99 < 1.01 < ratios["split_half"]["max"]


def test_plot_path_is_checked_before_any_work(tmp_path):
    from flopkit.inspect.rope import check_plot_path

    assert check_plot_path(tmp_path / "rope.png") == tmp_path / "rope.png"
    with pytest.raises(ValueError, match="is a directory"):
        check_plot_path(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        check_plot_path(tmp_path / "missing" / "rope.png")
