"""flopkit.count: one result object for presets, config files, specs and any nn.Module."""

import json

import pytest
import torch
from torch import nn

import flopkit
from flopkit import formulas
from flopkit.checks import InputError
from flopkit.config import load_config
from flopkit.flops.count import FlopCount, _is_spec, meta_copy
from flopkit.flops.summary import validate_config
from flopkit.formulas import CATEGORIES, training_breakdown

TINY = ["image_size=32", "hidden_dim=32", "num_heads=2", "depth=2", "num_classes=10"]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))


def test_a_preset_is_counted_analytically_and_scales_by_batch_and_training_rule():
    model = load_config("vit5-small", TINY).meta_module
    one = flopkit.count("vit5-small", overrides=TINY)
    four = flopkit.count("vit5-small", overrides=TINY, batch=4, training=True)
    assert isinstance(one, FlopCount) and not one.measured
    assert one.total() == model.flop_count() and one.total_params == sum(
        p.numel() for p in model.parameters()
    )
    expected = training_breakdown({k: 4 * v for k, v in one.by_category().items()})
    expected["matmul"] -= 4 * model.patch_embed.flop_breakdown()["matmul"]  # images need no gradient
    assert four.rows[0].breakdown == expected
    data = four.to_dict()
    assert "source" not in data["rows"][0] and data["batch"] == 4 and data["training"] is True
    assert data["config"]["preset"] == "vit5-small"


def test_a_flopkit_module_without_inputs_is_analytic_and_with_inputs_measured():
    model = load_config("vit5-small", TINY).meta_module
    analytic = flopkit.count(model, batch=2)
    assert not analytic.measured and analytic.total() == model.flop_count(batch_size=2)
    measured = flopkit.count(model, torch.empty(2, 3, 32, 32))
    assert measured.measured and measured.total() == model.flop_count(batch_size=2)
    with pytest.raises(InputError) as err:
        flopkit.count(model, torch.empty(2, 3, 32, 32), batch=2)
    assert err.value.argument == "batch"


def test_a_plain_model_by_module_category_operator_and_unsupported_ops():
    model = _mlp()
    result = flopkit.count(model, torch.randn(3, 8))
    first, second = 2 * 3 * 8 * 16, 2 * 3 * 16 * 4
    gelu = formulas.activation(3 * 16)
    assert result.total() == first + gelu + second
    assert result.by_module() == {"": first + gelu + second, "0": first, "1": gelu, "2": second}
    assert result.by_module(depth=0) == {"": first + gelu + second}
    assert result.by_category() == {
        **dict.fromkeys(CATEGORIES, 0),
        "matmul": first + second,
        "elementwise": gelu,
    }
    assert result.by_operator() == {"aten.addmm": first + second, "aten.gelu": gelu}
    assert result.by_operator("2") == {"aten.addmm": second}
    assert result.unsupported_ops() == {}
    with pytest.raises(KeyError, match="nope"):
        result.by_operator("nope")
    assert json.loads(result.to_json())["total_flops"] == result.total()
    assert [r["path"] for r in result.to_rows()] == ["", "0", "1", "2"]


def test_an_op_without_a_formula_is_listed_as_unsupported():
    class Cumulative(nn.Module):
        def forward(self, x):
            return torch.cumprod(x, dim=-1)

    result = flopkit.count(Cumulative(), torch.randn(2, 5))
    assert result.total() == 0 and result.unsupported_ops() == {"aten.cumprod": 1}


def test_counting_a_real_model_leaves_its_weights_alone():
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    copy = meta_copy(model)
    assert all(p.device.type == "meta" for p in copy.parameters())
    flopkit.count(model, torch.randn(3, 8), training=True)
    assert all(
        p.device.type == "cpu" and torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True)
    )
    assert meta_copy(copy) is copy  # already on meta: no copy


def test_an_analytic_preset_reads_its_operators_from_one_meta_run():
    result = flopkit.count("vit5-small", overrides=TINY)
    ops = result.by_operator()
    assert ops["aten.mm"] == result.by_category()["matmul"]  # every linear layer, the patch conv as mm
    assert result.unsupported_ops() == {}


def test_hardware_flops_of_a_preset_add_flash_backward_and_block_recompute():
    T, C, depth = 2 * 2 + 1 + 4, 32, 2  # 16-pixel patches of a 32x32 image, CLS, 4 registers
    block_matmul = 2 * T * (4 * C * C + 8 * C * C)  # qkv + proj, and the MLP (x4)
    block_attention = 4 * T * T * C
    plain = flopkit.count("vit5-small", overrides=TINY, training=True)
    step = plain.rows[0].breakdown
    assert plain.hardware_flops == step["matmul"] + step["attention"] + depth * block_attention // 2
    ckpt = flopkit.count("vit5-small", overrides=TINY, training=True, checkpointing="blocks")
    assert ckpt.total_flops == plain.total_flops
    assert ckpt.hardware_flops == plain.hardware_flops + depth * (block_matmul + block_attention)
    rows = {r.path: r for r in ckpt.rows}
    assert rows[
        "blocks.0"
    ].hardware_flops == 3 * block_matmul + 3 * block_attention + block_attention // 2 + (
        block_matmul + block_attention
    )


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"checkpointing": "blocks"}, "checkpointing"),
        ({"causal_attention": "quarter"}, "causal_attention"),
        ({"convention": "mine"}, None),
        ({"batch": 0}, "batch"),
        ({"depth": -1}, "depth"),
        ({"seq_len": 16}, "seq_len"),
        ({"kv_cache": 8}, "kv_cache"),
        ({"causal_attention": "exact"}, "causal_attention"),
    ],
)
def test_arguments_that_cannot_apply_to_a_preset_name_themselves(kwargs, argument):
    with pytest.raises(ValueError) as err:
        flopkit.count("vit5-small", overrides=TINY, **kwargs)
    if argument is not None:
        assert isinstance(err.value, InputError) and err.value.argument == argument


def test_a_model_without_a_cache_refuses_kv_cache_before_any_work():
    with pytest.raises(InputError) as err:
        flopkit.count(_mlp(), kv_cache=4, input_shape=(8,))
    assert err.value.argument == "kv_cache"


def test_spec_strings_are_told_from_presets_and_config_files():
    assert _is_spec("timm:resnet50") and _is_spec("hf:gpt2") and _is_spec("examples/custom_model.py:build")
    assert not _is_spec("vit5-small") and not _is_spec("examples/vit5-tiny.yaml")


def test_a_spec_is_counted_like_the_cli_counts_it():
    result = flopkit.count("examples/custom_model.py:build", input_shape=(3, 224, 224), batch=2)
    assert result.measured and result.info["model"] == "examples/custom_model.py:build"
    assert result.total() == sum(result.by_category().values()) > 0


def test_validate_config_refuses_unknown_counters():
    with pytest.raises(ValueError, match="non-empty subset"):
        validate_config(load_config("vit5-small", TINY), ("ptflops",))


def test_to_table_is_what_report_prints():
    from click.testing import CliRunner
    from flopkit.cli import app

    result = flopkit.count("vit5-small", overrides=TINY, depth=2)  # the command's default depth
    printed = CliRunner().invoke(app, ["report", "vit5-small", *sum((["--set", t] for t in TINY), [])])
    assert printed.exit_code == 0 and printed.stdout.strip() == result.to_table().strip()
    csv_lines = result.to_table("csv").splitlines()
    assert csv_lines[0].startswith("module,type,params") and csv_lines[-1].startswith("TOTAL,ViT5")
