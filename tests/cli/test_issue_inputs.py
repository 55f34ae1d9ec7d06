"""Issue 25's cases through the CLI: one line on stderr and exit 2, or the right result."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from flopkit.cli import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = str(EXAMPLES / "vit5-tiny.yaml")


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("flopkit: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from flopkit.config import load_config

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(load_config(TINY).build("cpu").state_dict(), path)
    return path


def test_convert_into_a_missing_directory_is_one_line(checkpoint):
    result = run("convert", str(checkpoint), "/nonexistent_dir/out.safetensors")
    one_line_error(
        result, "DST /nonexistent_dir/out.safetensors", "directory /nonexistent_dir does not exist"
    )


def test_convert_checks_the_destination_before_reading_the_source(tmp_path):
    result = run("convert", str(tmp_path / "missing.pth"), "/nonexistent_dir/out.safetensors")
    one_line_error(result, "directory /nonexistent_dir does not exist")


def test_convert_into_a_writable_directory_works(checkpoint, tmp_path):
    result = run("convert", str(checkpoint), str(tmp_path / "out.safetensors"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.safetensors").stat().st_size > 0


def test_save_checkpoint_turns_a_safetensors_write_error_into_one_oserror(tmp_path, monkeypatch):
    import safetensors.torch

    from flopkit.checkpoints import save_checkpoint

    def fail(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(OSError, match="writing failed: Error while serializing"):
        save_checkpoint({"w": torch.ones(2)}, tmp_path / "out.safetensors")


def test_profile_with_an_unallocatable_batch_is_one_line_before_any_allocation():
    line = one_line_error(run("profile", "vit5-small", "--device", "cpu", "--batch", "1000000"))
    assert "--batch 1000000: a forward of vit5-small on [1000000, 3, 224, 224] float32 needs at least" in line
    assert "GiB free" in line


def test_report_seq_len_beyond_gpt2s_positions_names_1024():
    pytest.importorskip("transformers")
    line = one_line_error(run("report", "--model", "hf:gpt2", "--seq-len", "100000"))
    assert "--seq-len 100000: a length of 100,000 is more than the model's 1,024 positions" in line
    assert "(config.n_positions = 1024)" in line


def test_token_ids_given_whole_with_input_are_checked_against_the_positions_too():
    pytest.importorskip("transformers")
    one_line_error(
        run("report", "--model", "hf:gpt2", "--input", "input_ids=1,2000:int64"),
        "--input input_ids=1,2000: a length of 2,000 is more than the model's 1,024 positions",
    )


def test_validate_refuses_a_cpu_copy_that_cannot_fit_in_one_line_naming_the_batch():
    pytest.importorskip("transformers")
    line = one_line_error(
        run(
            "validate",
            "--model",
            "hf:gpt2",
            "--model-arg",
            "n_layer=1",
            "--seq-len",
            "1024",
            "--batch",
            "100000",
        )
    )
    assert line.startswith("flopkit: error: --batch 100000: fvcore's forward of a CPU copy needs at least")
    one_line_error(run("validate", "vit5-small", "--batch", "100000"), "--batch 100000: fvcore's forward")


def test_a_seq_len_sweep_stops_at_the_first_length_beyond_the_positions():
    pytest.importorskip("transformers")
    one_line_error(
        run("report", "--model", "hf:gpt2", "--model-arg", "n_layer=1", "--seq-len", "128,4096"),
        "--seq-len 4096",
        "1,024 positions",
    )


def test_raising_the_positions_with_a_model_arg_accepts_the_length():
    pytest.importorskip("transformers")
    result = run(
        "report", "--model", "hf:gpt2", "--model-arg", "n_layer=1", "--model-arg", "n_positions=2048",
        "--seq-len", "2048", "--depth", "0", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total_flops"] > 0


def test_an_input_the_forward_does_not_take_is_refused_with_suggestions():
    pytest.importorskip("transformers")
    line = one_line_error(
        run("report", "--model", "hf:gpt2", "--model-arg", "n_layer=1", "--seq-len", "16",
            "--input", "attention_mak=1,16:int64"),
    )  # fmt: skip
    assert "--input attention_mak: GPT2Model.forward takes no input 'attention_mak'" in line
    assert "did you mean attention_mask" in line


def test_an_input_name_is_checked_for_a_users_model_too(tmp_path):
    model = tmp_path / "model.py"
    model.write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__(); self.fc = torch.nn.Linear(4, 4)\n"
        "    def forward(self, x, scale=None):\n        return self.fc(x)\n"
        "def build():\n    return M()\n"
    )
    for command in ("report", "validate", "profile"):
        one_line_error(
            run(command, "--model", f"{model}:build", "--input-shape", "4", "--input", "mask=1,4"),
            "--input mask: M.forward takes no input 'mask'",
            "it takes scale, x",
        )


def test_an_output_path_for_plot_is_checked_first():
    for command in (["report", "--model", "x.py:y"], ["profile", "vit5-small"], ["rope", "vit5-small"]):
        one_line_error(
            run(*command, "--plot", "/nonexistent_dir/p.png"), "directory /nonexistent_dir does not exist"
        )


def test_profile_loss_needs_training():
    one_line_error(run("profile", TINY, "--loss", "ce"), "--loss applies to a training step")


def test_profile_takes_one_seq_len():
    pytest.importorskip("transformers")
    one_line_error(run("profile", "--model", "hf:gpt2", "--seq-len", "8,16"), "profile runs one length")


def test_profile_refuses_model_options_without_a_model():
    one_line_error(run("profile", TINY, "--seq-len", "8"), "--seq-len applies only with --model")


WARNING_MODEL = """import warnings
import torch
class M(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.fc = torch.nn.Linear(width, 2)
    def forward(self, x):
        warnings.warn("this model warns on every call")
        return self.fc(x)
def build(width=4):
    return M(width)
"""


def test_python_warnings_never_add_lines_to_an_error(tmp_path):
    model = tmp_path / "warns.py"
    model.write_text(WARNING_MODEL)
    one_line_error(
        run("report", "--model", f"{model}:build", "--input-shape", "5"), "running the model raised"
    )


def test_python_warnings_of_a_successful_run_are_one_note(tmp_path):
    model = tmp_path / "warns.py"
    model.write_text(WARNING_MODEL)
    result = run("report", "--model", f"{model}:build", "--input-shape", "4", "--format", "json")
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)
    assert result.stderr.splitlines() == [
        "flopkit: note: 1 Python warning(s) silenced (first: this model warns on every call); "
        "PYTHONWARNINGS=default shows them"
    ]


def test_a_model_arg_eps_or_head_count_out_of_range_is_one_line_naming_it():
    pytest.importorskip("transformers")
    one_line_error(
        run("report", "--model", "hf:gpt2", "--model-arg", "layer_norm_epsilon=.nan", "--seq-len", "8"),
        "--model-arg layer_norm_epsilon=nan: an epsilon must be a finite number > 0",
    )
    one_line_error(
        run("profile", "--model", "hf:gpt2", "--model-arg", "n_head=0", "--seq-len", "8"),
        "--model-arg n_head=0: a head count or width must be a positive integer",
    )


@pytest.mark.parametrize("rtol", ["nan", "inf"])
def test_validate_refuses_a_tolerance_that_fails_or_passes_everything(rtol):
    one_line_error(
        run("validate", TINY, "--rtol", rtol),
        f"--rtol {rtol}: a relative tolerance must be a finite number >= 0",
    )


def test_reconcile_refuses_a_nan_tolerance_from_python():
    from flopkit.checks import InputError
    from flopkit.config import load_config
    from flopkit.flops.summary import validate_config

    with pytest.raises(InputError, match="^rtol=nan: a relative tolerance"):
        validate_config(load_config(TINY), rtol=float("nan"))


def test_an_mlp_ratio_too_large_for_a_tensor_is_one_line():
    one_line_error(
        run("report", "vit5-small", "--set", "mlp_ratio=1e308"), "mlp_ratio=1e+308 gives an MLP width of inf"
    )
    one_line_error(
        run("report", "vit5-small", "--set", "mlp_ratio=1e20"), "more than a tensor dimension can hold"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--input-shape", "4", "--batch", str(10**20)], "--batch 100000000000000000000: an input of shape"),
        (["--input-shape", str(10**20)], "--input-shape 100000000000000000000: an input of shape [1, 10"),
        (
            ["--input-shape", "4", "--input", f"x={10**11},{10**11}"],
            "--input x=100000000000,100000000000: an input",
        ),
    ],
)
def test_an_input_larger_than_a_tensor_can_hold_is_one_line_naming_its_option(tmp_path, options, message):
    model = tmp_path / "m.py"
    model.write_text(WARNING_MODEL.replace("warnings.warn", "str"))
    one_line_error(
        run("report", "--model", f"{model}:build", *options),
        message,
        "more than a tensor can hold (2^63 - 1)",
    )
