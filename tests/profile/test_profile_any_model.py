"""profile takes every spec report takes (hf:, timm:, module:callable, file.py:callable) with the same
input options, and chooses the training loss with flopkit.steps."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from flopkit.cli import app
from torch import nn
from torch.nn import functional as F

from flopkit.steps import has_class_dim, make_loss, output_tensor, resolve_loss

TINY = str(Path(__file__).resolve().parents[2] / "examples" / "vit5-tiny.yaml")
FAST = ("--device", "cpu", "--steps", "1", "--warmup", "0", "--format", "json")
SMALL_GPT2 = ("--model-arg", "n_layer=1", "--model-arg", "n_embd=64", "--model-arg", "n_head=2")


def run_json(*args: str) -> dict:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_profile_hf_gpt2_training_has_reports_flops_per_row():
    pytest.importorskip("transformers")
    common = ("--model", "hf:gpt2", *SMALL_GPT2, "--seq-len", "16", "--batch", "2", "--training")
    profile = run_json("profile", *common, *FAST)
    report = run_json("report", *common, "--format", "json")
    assert profile["rows"][0]["flops"] == report["total_flops"]
    assert profile["inputs"] == "input_ids=[2, 16] int64" and profile["batch"] == 2
    assert profile["loss"] == "mse"  # hf:TYPE is the base model: hidden states, no vocabulary dimension
    assert {r["path"] for r in profile["rows"]} >= {"", "wte", "h", "(loss)"}


def test_the_acceptance_command_runs():
    pytest.importorskip("transformers")
    result = CliRunner().invoke(
        app,
        ["profile", "--model", "hf:gpt2", "--model-arg", "n_layer=2", "--seq-len", "64", "--device", "cpu",
         "--training", "--steps", "1", "--warmup", "0"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "hf:gpt2: profile, batch 8, training step, float32 on cpu" in result.stdout


def test_a_language_model_with_a_vocabulary_defaults_to_next_token_cross_entropy(tmp_path):
    pytest.importorskip("transformers")
    factory = tmp_path / "lm.py"
    factory.write_text(
        "import transformers\n"
        "def build():\n"
        "    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=500)\n"
        "    return transformers.GPT2LMHeadModel(config)\n"
    )
    data = run_json(
        "profile", "--model", f"{factory}:build", "--seq-len", "8", "--batch", "2", "--training", *FAST
    )
    assert data["loss"] == "ce"
    assert any("(loss): the loss, ce: cross-entropy" in line for line in data["legend"])


def test_a_keyword_input_reaches_the_profiled_forward(tmp_path):
    factory = tmp_path / "m.py"
    factory.write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__(); self.fc = torch.nn.Linear(4, 3)\n"
        "    def forward(self, x, scale):\n        return self.fc(x) * scale\n"
        "def build():\n    return M()\n"
    )
    data = run_json("profile", "--model", f"{factory}:build", "--input-shape", "4", "--input", "scale=2,3",
                    "--batch", "2", *FAST)  # fmt: skip
    assert data["inputs"] == "[2, 4] float32, scale=[2, 3] float32"
    assert data["rows"][0]["flops"] == 2 * 2 * 4 * 3  # measured: addmm's product (bias add, mul uncounted)


@pytest.mark.parametrize(("loss", "expected"), [("auto", "ce"), ("ce", "ce"), ("mse", "mse")])
def test_a_classifier_config_takes_the_loss_asked_for(loss, expected):
    data = run_json("profile", TINY, "--batch", "2", "--training", "--loss", loss, *FAST)
    assert data["loss"] == expected


def test_forward_only_has_no_loss():
    assert run_json("profile", TINY, "--batch", "2", *FAST)["loss"] is None


class _Classifier(nn.Module):
    num_classes = 5

    def forward(self, x):
        return x


def test_make_loss_ce_is_cross_entropy_over_the_last_dimension():
    out = torch.randn(2, 3, 5)
    kind, fn = make_loss(out, _Classifier(), "auto")
    targets = torch.zeros(2, 3, dtype=torch.int64)  # flopkit.losses: zero targets, valid for any class count
    assert kind == "ce"
    assert torch.equal(fn(out), F.cross_entropy(out.flatten(0, -2), targets.flatten()))


def test_make_loss_mse_is_the_mean_square():
    out = torch.randn(2, 7)
    kind, fn = make_loss(out, _Classifier(), "auto")
    assert kind == "mse" and torch.allclose(fn(out), F.mse_loss(out, torch.zeros_like(out)))


def test_the_loss_reads_logits_then_hidden_states_then_the_first_float_tensor():
    logits, hidden = torch.ones(1, 2), torch.zeros(1, 3)
    assert output_tensor({"last_hidden_state": hidden, "logits": logits}) is logits
    assert output_tensor({"last_hidden_state": hidden}) is hidden
    assert output_tensor((torch.arange(3), hidden)) is hidden
    with pytest.raises(ValueError, match="no floating-point tensor"):
        output_tensor((torch.arange(3),))


def test_ce_on_an_output_without_classes_is_refused():
    assert not has_class_dim(torch.zeros(4), _Classifier())
    with pytest.raises(ValueError, match=r"loss='ce' needs a floating-point output \[..., classes\]"):
        resolve_loss("ce", torch.zeros(4), _Classifier())
    with pytest.raises(ValueError, match="loss must be one of auto, ce, mse, got 'l1'"):
        resolve_loss("l1", torch.zeros(4, 2), _Classifier())


def test_a_run_that_cannot_fit_is_refused_from_python_before_anything_is_built(monkeypatch):
    import flopkit.checks
    from flopkit.checks import InputError
    from flopkit.models import load_model
    from flopkit.steps import check_run_fits, run_inputs

    loaded = load_model(TINY)
    inputs = run_inputs(loaded, 4)
    assert [list(t.shape) for t in inputs.tensors] == [[4, 3, 64, 64]]
    params = sum(p.numel() * 4 for p in loaded.module.parameters())
    needed = check_run_fits(loaded, inputs, training=True, dtype=torch.float32, device="cpu", value=4)
    assert needed > 2 * params + 4 * 3 * 64 * 64 * 4  # gradients, and the input with a first output
    monkeypatch.setattr(flopkit.checks, "available_bytes", lambda device: needed - 1)
    with pytest.raises(
        InputError, match=r"^batch=4: a training step of .*vit5-tiny.yaml on \[4, 3, 64, 64\]"
    ):
        check_run_fits(loaded, inputs, training=True, dtype=torch.float32, device="cpu", value=4)
