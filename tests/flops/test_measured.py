"""Measured counters and reconciliation: each counter's view, converted, against hand counts."""

import torch
import torch.nn.functional as F
from torch import nn

from flopkit.config import load_config
from flopkit.flops.analytic import flop_tree
from flopkit.flops.measured import count_fvcore
from flopkit.flops.reconcile import reconcile
from flopkit.flops.summary import measure_config, validate_config

TINY = ["image_size=32", "hidden_dim=32", "num_heads=2", "depth=2", "num_classes=10"]


def _measure(config, counters=("fvcore", "torch")):
    return measure_config(config, counters, batch=2)


def test_fvcore_sdpa_handle_counts_qk_and_av_in_macs():
    class Attn(nn.Module):
        def forward(self, q):
            return F.scaled_dot_product_attention(q, q, q)

    B, H, T, D = 2, 3, 5, 8
    m = count_fvcore(Attn(), torch.randn(B, H, T, D))
    assert m.raw[""]["scaled_dot_product_attention"] == 2 * B * H * T * T * D
    assert m.flops[""]["attention"] == 4 * B * H * T * T * D


def test_fvcore_rms_norm_handle_counts_three_flops_per_element():
    norm = nn.RMSNorm(16)
    m = count_fvcore(norm, torch.randn(4, 7, 16))
    assert m.flops[""] == {"norm": 3 * 4 * 7 * 16}
    assert "norm" in m.categories


def test_torch_counter_on_meta_sees_attention_as_two_bmm():
    config = load_config("vit5-small", TINY)
    _, (fv, tc) = _measure(config)
    T, C = 2 * 2 + 1 + 4, 32
    assert tc.flops["blocks.0.attn"]["attention"] == 2 * 4 * T * T * C
    assert fv.flops["blocks.0.attn"]["attention"] == 2 * 4 * T * T * C


def test_tiny_model_reconciles_exactly_and_norm2_is_in_parent():
    rec = validate_config(load_config("vit5-small", TINY), batch=2, depth=3)
    assert rec.ok
    rows = {r.path: r for r in rec.rows}
    assert rows["blocks.0.norm2"].verdict == "in parent"
    assert rows["patch_embed.proj"].verdict == "counted in patch_embed"
    both = ("matmul", "attention", "norm", "rope")
    assert rec.comparable == {"fvcore": both, "torch": both}
    for counter in ("fvcore", "torch"):
        for cat in both:
            assert rec.totals[counter][cat] == rec.totals["analytic"][cat]


def test_linear_bias_adds_are_elementwise_so_matmul_compares_products_only(tmp_path):
    path = tmp_path / "attn.yaml"
    path.write_text(
        "module: ViT5Attention\nhidden_dim: 32\nnum_heads: 2\nnum_patches_h: 2\nnum_patches_w: 2\n"
        "qkv_bias: true\nout_proj_bias: true\n"
    )
    config = load_config(str(path))
    meta, measurements = _measure(config)
    rec = reconcile(meta, flop_tree(meta, config.tokens(meta)), measurements, batch=2)
    T, C = 9, 32
    assert rec.totals["analytic"]["matmul"] == 2 * 8 * T * C * C
    assert rec.totals["analytic"]["elementwise"] == 2 * T * (3 * C + C)
    assert rec.ok


def test_a_wrong_analytic_count_is_a_mismatch():
    config = load_config("vit5-small", TINY)
    meta, measurements = _measure(config, ("torch",))
    tree = flop_tree(meta, meta.num_tokens)
    tree.children[1].own["matmul"] += 1  # blocks.0 claims one FLOP too many
    rec = reconcile(meta, tree, measurements, batch=2)
    assert not rec.ok
    assert {r.path for r in rec.rows if not r.ok} == {"", "blocks", "blocks.0"}
