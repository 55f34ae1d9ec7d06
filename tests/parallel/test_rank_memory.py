"""``flopkit memory`` per rank under TP, FSDP and HSDP: the memory estimator replays one rank's layer
shapes; its sharded gradients equal what FSDP2 and DTensor actually leave on rank 0."""

import json

import pytest
import torch
from _parallel_models import LLAMA
from click.testing import CliRunner
from flopkit.cli import app

from flopkit.models import build_model, load_model
from flopkit.parallel import ParallelConfig, count_sharded
from flopkit.parallel.memory import rank_memory

LLAMA_ARGS = ["--model", "hf:llama", *[a for k, v in LLAMA.items() for a in ("--model-arg", f"{k}={v}")]]


@pytest.mark.parametrize(("tp", "fsdp"), [(2, 1), (2, 2), (1, 4)])
def test_rank_gradients_equal_the_shards_fsdp2_and_dtensor_leave_on_rank0(tp, fsdp):
    result = rank_memory(
        load_model(model="hf:llama", model_args=LLAMA), tp=tp, fsdp=fsdp, batch=2, seq_len=8, training=True
    )
    ids = torch.zeros(2, 8, dtype=torch.long, device="meta")
    count = count_sharded(
        build_model("hf:llama", LLAMA), (), {"input_ids": ids}, ParallelConfig(fsdp=fsdp, tp=tp, batch=2)
    )
    # The memory estimator rounds every block up to 512 bytes, as CUDA's caching allocator does.
    assert result.gradients_bytes == sum(-(-b // 512) * 512 for b in count.param_shards.values())
    assert result.settings["tp"] == tp and any(("TP over" in a) == (tp > 1) for a in result.assumptions)


def test_tp_shrinks_the_activations_inside_the_split_layers():
    whole = rank_memory(
        load_model(model="hf:llama", model_args=LLAMA), batch=2, seq_len=8, training=True, tp=1
    )
    split = rank_memory(
        load_model(model="hf:llama", model_args=LLAMA), batch=2, seq_len=8, training=True, tp=2
    )
    assert split.saved_bytes < whole.saved_bytes


def test_memory_cli_takes_tp_fsdp_and_dp_replicate():
    result = CliRunner().invoke(
        app,
        ["memory", *LLAMA_ARGS, "--seq-len", "8", "--training", "--tp", "2", "--fsdp", "2", "--dp-replicate", "2",
         "--format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    text = json.dumps(data)
    assert '"tp": 2' in text and '"dp_replicate": 2' in text and "HSDP: 2 replicas" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["vit5-small", "--tp", "4"], "tp=4 must divide num_heads (6) of blocks.0.attn"),
        (["vit5-small", "--tp", "0"], "tp must be a positive integer, got 0"),
        (["vit5-small", "--tp-plan", "plan.yaml"], "tp_plan applies with tp > 1, got tp=1"),
    ],
)
def test_memory_cli_refuses_bad_sharding_in_one_line(args, message):
    result = CliRunner().invoke(app, ["memory", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1
