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
    assert any(line.startswith("--training") for line in four.legend)
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
