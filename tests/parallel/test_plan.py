"""Sharding plans: degrees, TP plans (the model's, flopkit's ViT-5 plan, a plan file), FSDP units, and
the checks that refuse a plan before any counting."""

import pytest
import torch
from _parallel_models import LLAMA

from flopkit.models import build_model
from flopkit.nn import ViT5
from flopkit.parallel import ParallelConfig, count_sharded, fsdp_units, resolve_tp_plan
from flopkit.parallel.plan import check_tp_divides, glob_to_regex


@pytest.fixture(scope="module")
def llama():
    return build_model("hf:llama", LLAMA)


@pytest.fixture(scope="module")
def vit():
    with torch.device("meta"):
        return ViT5(image_size=32, hidden_dim=64, depth=2, num_heads=4, num_classes=10)


def test_world_is_the_product_and_the_global_batch_counts_data_parallel_ranks_only():
    cfg = ParallelConfig(fsdp=4, tp=2, dp_replicate=3, batch=5)
    assert cfg.world == 24 and cfg.data_parallel == 12 and cfg.global_batch == 60


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fsdp": 0}, "fsdp must be a positive integer, got 0"),
        ({"tp": -2}, "tp must be a positive integer, got -2"),
        ({"dp_replicate": 1.5}, "dp_replicate must be a positive integer, got 1.5"),
        ({"fsdp": 1}, "a sharded run needs a world of at least 2 ranks"),
    ],
)
def test_bad_degrees_name_the_argument_and_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ParallelConfig(**kwargs)


def test_a_star_is_one_path_component():
    pattern = glob_to_regex("layers.*.mlp.up_proj")
    assert pattern.match("layers.12.mlp.up_proj")
    assert not pattern.match("layers.1.x.mlp.up_proj") and not pattern.match("layers.1.mlp.up_proj2")


def test_llama_uses_its_own_plan_and_vit5_flopkits(llama, vit):
    plan = resolve_tp_plan(llama)
    assert plan.source == "the model's base_model_tp_plan"
    assert plan.styles["layers.1.self_attn.q_proj"] == "colwise"
    assert plan.styles["layers.0.mlp.down_proj"] == "rowwise" and len(plan.styles) == 2 * 7
    vplan = resolve_tp_plan(vit)
    assert vplan.source == "flopkit's ViT-5 plan"
    assert {k: v for k, v in vplan.styles.items() if k.startswith("blocks.0.")} == {
        "blocks.0.attn.qkv": "colwise_qkv",
        "blocks.0.attn.proj": "rowwise",
        "blocks.0.mlp.fc1": "colwise",
        "blocks.0.mlp.fc2": "rowwise",
    }


def test_fsdp_units_are_the_repeated_blocks(llama, vit):
    assert fsdp_units(llama) == ["layers.0", "layers.1"]  # _no_split_modules: LlamaDecoderLayer
    assert fsdp_units(vit) == ["blocks.0", "blocks.1"]  # the largest ModuleList of one class


def test_tp_must_divide_heads_and_split_dimensions(llama, vit):
    with pytest.raises(ValueError, match=r"tp=3 must divide the model's num_attention_heads \(4\)"):
        check_tp_divides(llama, resolve_tp_plan(llama), 3)
    with pytest.raises(ValueError, match=r"tp=8 must divide num_heads \(4\) of blocks.0.attn"):
        check_tp_divides(vit, resolve_tp_plan(vit), 8)


def test_plan_file_errors_name_the_file_and_the_entry(tmp_path, llama):
    missing = tmp_path / "missing.yaml"
    missing.write_text("layers.*.mlp.up_proj: colwise\nlayers.*.mlp.upproj: rowwise\n")
    with pytest.raises(
        ValueError, match=r"'layers.\*.mlp.upproj' matches no module of the model \(closest: "
    ):
        resolve_tp_plan(llama, missing)
    style = tmp_path / "style.yaml"
    style.write_text("layers.*.mlp.up_proj: sideways\n")
    with pytest.raises(ValueError, match="'sideways' is not one of colwise, rowwise"):
        resolve_tp_plan(llama, style)
    norm = tmp_path / "norm.yaml"
    norm.write_text("layers.*.input_layernorm: colwise\n")
    with pytest.raises(ValueError, match="layers.0.input_layernorm is a LlamaRMSNorm"):
        resolve_tp_plan(llama, norm)


def test_a_plan_file_splitting_only_the_mlp_all_reduces_only_there(tmp_path, llama):
    plan = tmp_path / "mlp.yaml"
    plan.write_text(
        "layers.*.mlp.gate_proj: colwise\nlayers.*.mlp.up_proj: colwise\nlayers.*.mlp.down_proj: rowwise\n"
    )
    ids = torch.zeros(2, 8, dtype=torch.long, device="meta")
    count = count_sharded(llama, (), {"input_ids": ids}, ParallelConfig(tp=2, batch=2), tp_plan=str(plan))
    assert [c.module for c in count.collectives if c.phase == "forward"] == [
        "layers.0.mlp.down_proj",
        "layers.1.mlp.down_proj",
    ]
    C, I, T = LLAMA["hidden_size"], LLAMA["intermediate_size"], 2 * 8
    # attention projections whole, the MLP's three matmuls halved; forward
    assert count.forward["layers.0"]["matmul"] == 2 * T * (4 * C * C + 3 * C * I // 2)


@pytest.mark.parametrize("name", ["llama", "vit"])
def test_the_tp_local_model_holds_what_a_tp_rank_holds(name, llama, vit, request):
    from flopkit.parallel.plan import tp_local_model

    model = request.getfixturevalue(name)
    plan = resolve_tp_plan(model)
    local = tp_local_model(model, plan, 2)
    if name == "llama":
        args, kwargs = (), {"input_ids": torch.zeros(2, 8, dtype=torch.long, device="meta")}
    else:
        args, kwargs = (torch.empty(2, 3, 32, 32, device="meta"),), {}
    count = count_sharded(model, args, kwargs, ParallelConfig(tp=2, batch=2), param_dtype=torch.float32)
    assert sum(p.numel() for p in local.parameters()) == count.local_params[""]
    # and it runs on one rank's shapes: the local heads
    with torch.no_grad():
        out = local(*args, **kwargs)
    out = out if isinstance(out, torch.Tensor) else out.last_hidden_state
    assert out.shape[-1] == (10 if name == "vit" else LLAMA["hidden_size"])


def test_per_head_qk_norm_weights_are_refused_under_tp():
    with torch.device("meta"):
        model = ViT5(image_size=32, hidden_dim=64, depth=1, num_heads=4, num_classes=10, qk_norm="headnorm")
    with pytest.raises(ValueError, match=r"blocks.0.attn has per-head QK-norm weights \(HeadNorm\)"):
        check_tp_divides(model, resolve_tp_plan(model), 2)
