"""``flopkit report`` with --fsdp/--tp/--dp-replicate/--world: the acceptance commands and the
one-line errors (status 2) for plans that cannot run."""

import json

import pytest
from click.testing import CliRunner
from flopkit.cli import app

LLAMA_ARGS = [
    "--model", "hf:llama", "--model-arg", "num_hidden_layers=2", "--model-arg", "hidden_size=64",
    "--model-arg", "intermediate_size=96", "--model-arg", "num_attention_heads=4",
    "--model-arg", "num_key_value_heads=4", "--model-arg", "vocab_size=100", "--seq-len", "8",
]  # fmt: skip


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_vit5_large_fsdp8_json_is_one_rank_of_the_whole_step():
    result = run("report", "vit5-large", "--fsdp", "8", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["parallel"] == {
        "world": 8, "dp_replicate": 1, "fsdp": 8, "tp": 1, "batch_per_rank": 1, "global_batch": 8,
    }  # fmt: skip
    # FSDP shards memory, not work: each rank runs the single-device step on its sample
    assert data["flops_per_rank"]["breakdown"] == data["single_device_flops"]["breakdown"]
    assert set(data["tp_duplicated_flops"].values()) == {0}
    assert len(data["fsdp_units"]) == 24 and data["param_dtype"] == "bfloat16"
    memory = data["memory"]
    # rank 0 holds ceil(dim0 / 8) rows of every parameter, in float32; AdamW two states of each
    from flopkit.models import load_model

    shapes = [p.shape for p in load_model("vit5-large").module.parameters()]
    rank0 = sum(-(-s[0] // 8) * (s.numel() // s[0]) * 4 for s in shapes)
    assert memory["params"] == memory["grads"] == memory["optimizer"] // 2 == rank0
    assert memory["activations"] > 0 and memory["predicted_peak"] > memory["params"]
    kinds = {(c["phase"], c["kind"], c["group"]) for c in data["collectives"]}
    assert kinds == {
        ("forward", "all_gather", "fsdp"),
        ("backward", "all_gather", "fsdp"),
        ("backward", "reduce_scatter", "fsdp"),
    }
    assert data["rows"][0]["path"] == "" and data["time"]["bound"]
    # the blocks' ModuleList is never called itself: its row sums its 24 blocks
    rows = {r["path"]: r for r in data["rows"]}
    assert rows["blocks"]["flops"] == sum(rows[f"blocks.{i}"]["flops"] for i in range(24)) > 0


def test_table_shows_layers_collectives_and_mfu_with_a_step_time():
    result = run("report", *LLAMA_ARGS, "--tp", "2", "--fsdp", "2", "--step-ms", "10", "--depth", "1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "rank 0 of world 4 = dp_replicate 1 x fsdp 2 x tp 2" in out
    assert "layers" in out and "AR fwd" in out and "RS bwd" in out
    assert "forward all-reduce over tp (2)" in out and "MFU / HFU" in out


def test_world_alone_gives_fsdp_the_remaining_ranks():
    result = run("report", *LLAMA_ARGS, "--world", "4", "--tp", "2", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["parallel"]["fsdp"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["vit5-small", "--fsdp", "0"], "fsdp must be a positive integer, got 0"),
        (["vit5-small", "--tp", "4"], "tp=4 must divide num_heads (6) of blocks.0.attn"),
        ([*LLAMA_ARGS, "--tp", "3"], "tp=3 must divide the model's num_attention_heads (4)"),
        (["vit5-small", "--world", "6", "--tp", "4"], "6 is not dp-replicate x fsdp x tp"),
        (["vit5-small", "--fsdp", "2", "--convention", "nvsubquadratic"], "--convention does not apply"),
        (["vit5-small", "--fsdp", "2", "--tflops", "0"], "tflops must be positive, got 0.0"),
        (["vit5-small", "--step-ms", "5"], "--step-ms applies with --fsdp, --tp, --dp-replicate or --world"),
    ],
)
def test_bad_sharding_is_one_line_with_status_2(args, message):
    result = run("report", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_a_plan_file_naming_a_missing_module_is_one_line_with_status_2(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("layers.*.mlp.up_proj: colwise\nlayers.*.mlp.nope: rowwise\n")
    result = run("report", *LLAMA_ARGS, "--tp", "2", "--tp-plan", str(plan))
    assert result.exit_code == 2
    assert "'layers.*.mlp.nope' matches no module of the model" in result.stderr
    assert result.stderr.count("\n") == 1
