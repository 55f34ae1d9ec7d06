"""`flopkit memory` through click: the acceptance commands and the one-line errors (exit 2)."""

import json

import pytest
from click.testing import CliRunner
from flopkit.cli import app

FIELDS = (
    "peak_bytes", "steady_bytes", "parameters_bytes", "gradients_bytes", "optimizer_bytes",
    "activations_bytes", "workspace_bytes",
)  # fmt: skip


def run(*args: str):
    return CliRunner().invoke(app, ["memory", *args])


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_vit5_small_training_bf16_json_has_every_field():
    result = run("vit5-small", "--batch", "128", "--training", "--autocast", "bf16", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert all(isinstance(data[f], int) and data[f] > 0 for f in FIELDS)
    assert data["peak"]["phase"] in ("forward", "loss", "backward", "optimizer")
    assert data["peak_bytes"] == sum(data["peak_breakdown"].values())
    assert data["sdpa_backends"] == {"flopkit": 12}  # ViT5Attention on the Triton path: flopkit's kernels
    assert {row["path"] for row in data["layers"]} >= {"", "patch_embed", "blocks", "blocks.0", "head"}
    # AdamW: two float32 states per trainable parameter, as many bytes as the gradients twice.
    assert data["optimizer_bytes"] == 2 * data["gradients_bytes"]


def test_gpt2_training_json_runs():
    result = run(
        "--model",
        "hf:gpt2",
        "--model-arg",
        "n_layer=2",
        "--seq-len",
        "1024",
        "--training",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["loss"] == "mse"  # GPT2Model's last_hidden_state has no vocabulary dimension
    assert data["peak_bytes"] > data["steady_bytes"] > data["parameters_bytes"]


def test_table_names_the_peak():
    result = run("vit5-small", "--batch", "2", "--depth", "1")
    assert result.exit_code == 0, result.output
    assert "predicted peak" in result.stdout and "inference" in result.stdout


def test_unknown_optimizer_is_one_line_exit_2():
    assert "--optimizer" in error_line(run("vit5-small", "--training", "--optimizer", "lion"))


def test_fsdp_zero_is_one_line_exit_2():
    assert "--fsdp" in error_line(run("vit5-small", "--training", "--fsdp", "0"))


def test_fit_below_the_steady_state_is_one_line_exit_2():
    line = error_line(run("vit5-small", "--training", "--fit", "100MiB"))
    assert "below the steady state" in line


def test_training_a_model_without_trainable_parameters_is_one_line_exit_2(tmp_path):
    source = tmp_path / "frozen.py"
    source.write_text(
        "import torch\n\n\ndef build():\n    m = torch.nn.Linear(8, 8)\n    m.requires_grad_(False)\n    return m\n"
    )
    line = error_line(run("--model", f"{source}:build", "--input-shape", "8", "--training"))
    assert "no trainable parameters" in line


def test_optimizer_without_training_is_refused():
    assert "--training" in error_line(run("vit5-small", "--optimizer", "sgd"))


def test_fit_prints_the_batch_and_its_peak():
    # Just above the 390.59 MiB steady state: the search doubles past the fit and bisects back (4
    # predictions; 1GiB took 10, docs/memory.md's transcript covers a long search).
    result = run("vit5-small", "--training", "--autocast", "bf16", "--fit", "500MiB")
    assert result.exit_code == 0, result.output
    assert "largest batch" in result.stdout and "predicted peak" in result.stdout


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "step.png"
    result = run("vit5-small", "--batch", "2", "--training", "--plot", str(path), "--format", "csv")
    assert result.exit_code == 0, result.output
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kv_cache_is_part_of_the_steady_state():
    pytest.importorskip("transformers")
    from flopkit.step_memory import memory

    batch, cached, layers, heads, head_dim = 2, 16, 2, 12, 64
    result = memory(
        "hf:gpt2", model_args={"n_layer": layers}, batch=batch, seq_len=1, kv_cache=cached, depth=0
    )
    cache = layers * 2 * batch * heads * cached * head_dim * 4  # keys and values, float32
    ids = 512  # int64 [2, 1], one block
    assert result.steady_bytes == result.parameters_bytes + ids + cache + result.workspace_bytes
    # The new token's keys and values are concatenated to each layer's cache: new tensors.
    assert result.peak_bytes > result.steady_bytes
