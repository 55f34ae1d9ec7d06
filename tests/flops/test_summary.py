"""flop_report and validate_config: the report and validate runs as data, called without the CLI."""

import pytest

from flopkit.config import load_config
from flopkit.flops.summary import flop_report, validate_config
from flopkit.formulas import training_breakdown

TINY = ["image_size=32", "hidden_dim=32", "num_heads=2", "depth=2", "num_classes=10"]


def test_flop_report_scales_by_batch_and_training_rule():
    model = load_config("vit5-small", TINY).meta_module
    one = flop_report(model)
    four = flop_report(model, batch=4, training=True)
    assert one.total_flops == model.flop_count() and one.total_params == sum(
        p.numel() for p in model.parameters()
    )
    expected = training_breakdown({k: 4 * v for k, v in one.rows[0].breakdown.items()})
    expected["matmul"] -= 4 * model.patch_embed.flop_breakdown()["matmul"]  # images need no gradient
    assert four.rows[0].breakdown == expected
    assert any(line.startswith("`training`") for line in four.legend)
    assert "source" not in four.to_dict()["rows"][0] and four.to_dict()["batch"] == 4


def test_flop_report_of_a_measured_model_refuses_a_separate_batch():
    model = load_config("vit5-small", TINY).meta_module
    with pytest.raises(ValueError, match="batch is its first entry"):
        flop_report(model, input_shape=(2, 3, 32, 32), batch=2)
    measured = flop_report(model, input_shape=(2, 3, 32, 32))
    assert measured.measured and measured.total_flops == model.flop_count(batch_size=2)


def test_validate_config_refuses_unknown_counters():
    with pytest.raises(ValueError, match="non-empty subset"):
        validate_config(load_config("vit5-small", TINY), ("ptflops",))


def test_hardware_flops_of_a_preset_add_flash_backward_and_block_recompute():
    model = load_config("vit5-small", TINY).meta_module
    T, C, depth = 2 * 2 + 1 + 4, 32, 2  # 16-pixel patches of a 32x32 image, CLS, 4 registers
    block_matmul = 2 * T * (4 * C * C + 8 * C * C)  # qkv + proj, and the MLP (x4)
    block_attention = 4 * T * T * C
    plain = flop_report(model, training=True)
    step = plain.rows[0].breakdown
    assert plain.hardware_flops == step["matmul"] + step["attention"] + depth * block_attention // 2
    ckpt = flop_report(model, training=True, checkpointing="blocks")
    assert ckpt.total_flops == plain.total_flops
    assert ckpt.hardware_flops == plain.hardware_flops + depth * (block_matmul + block_attention)
    rows = {r.path: r for r in ckpt.rows}
    assert rows[
        "blocks.0"
    ].hardware_flops == 3 * block_matmul + 3 * block_attention + block_attention // 2 + (
        block_matmul + block_attention
    )
    with pytest.raises(ValueError, match="training"):
        flop_report(model, checkpointing="blocks")
