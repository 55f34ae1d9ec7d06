"""The analytic tree walk: sums match the modules' own counts, rows place them on module paths."""

from pathlib import Path

import pytest

from flopkit.config import load_config
from flopkit.flops.analytic import flop_rows, flop_tree

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def vit5_small_flops(convention: str) -> int:
    """vit5-small forward FLOPs for one image, written out from docs/conventions.md."""
    C, H, D, N, L, classes = 384, 6, 64, 196, 12, 1000
    T = N + 1 + 4
    patch = 2 * 3 * 16 * 16 * C * N + N * C
    qk_norm = 2 * 3 * T * (H * D if convention == "flopkit" else D)
    attn = 8 * T * C * C + 4 * T * T * C + 4 * T * C + qk_norm
    mlp = 2 * T * C * 4 * C + T * 4 * C + 2 * T * 4 * C * C
    block = 2 * 3 * T * C + attn + 2 * T * C + mlp
    return patch + L * block + 3 * C + 2 * C * classes


@pytest.mark.parametrize("convention", ["flopkit", "nvsubquadratic"])
def test_tree_total_of_vit5_small_matches_hand_formula(convention):
    model = load_config("vit5-small").meta_module
    tree = flop_tree(model, model.num_tokens, convention)
    assert sum(tree.breakdown.values()) == vit5_small_flops(convention)


def test_tree_root_equals_module_flop_breakdown_for_a_single_attention_layer():
    config = load_config(str(EXAMPLES / "attention-small.yaml"))
    attn = config.meta_module
    tree = flop_tree(attn, config.tokens(attn))
    assert tree.breakdown == attn.flop_breakdown(201)
    assert [c.path for c in tree.children] == ["qkv", "q_norm", "k_norm", "proj"]


def test_container_row_is_the_sum_of_its_blocks_and_batch_scales_every_row():
    model = load_config("vit5-small", ["depth=3"]).meta_module
    rows = {r.path: r for r in flop_rows(model, flop_tree(model, model.num_tokens), depth=2, batch=4)}
    assert rows["blocks"].flops == sum(rows[f"blocks.{i}"].flops for i in range(3))
    assert rows[""].flops == 4 * model.flop_count()


def test_module_inside_a_leaf_formula_is_marked_counted_in_its_parent():
    model = load_config("vit5-small").meta_module
    rows = {r.path: r for r in flop_rows(model, flop_tree(model, model.num_tokens), depth=2)}
    assert rows["patch_embed.proj"].counted_in == "patch_embed"
    assert rows["patch_embed"].breakdown["matmul"] == 2 * 3 * 256 * 384 * 196
