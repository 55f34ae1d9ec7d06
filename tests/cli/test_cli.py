"""The flopkit CLI through click's CliRunner (and once as the installed script)."""

import json
import os
import shutil
import sys
from pathlib import Path

import _early
import pytest
from click.testing import CliRunner
from flopkit.cli import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = str(EXAMPLES / "vit5-tiny.yaml")


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def run_json(*args: str):
    result = run(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def vit5_small_params() -> int:
    C, D, N, L, classes = 384, 64, 196, 12, 1000
    patch = 3 * 16 * 16 * C + N * C
    block = 12 * C * C + 4 * C + 2 * D  # qkv, proj, fc1, fc2; norm1, norm2, ls1, ls2; q/k norm
    return patch + C + 4 * C + L * block + C + C * classes


@pytest.mark.parametrize(
    ("convention", "total"), [("flopkit", 9_417_430_656), ("nvsubquadratic", 9_412_799_616)]
)
def test_report_json_totals_of_vit5_small(convention, total):
    data = run_json("report", "vit5-small", "--convention", convention)
    assert data["total_flops"] == total and data["convention"] == convention
    assert data["total_params"] == vit5_small_params() == 22_010_112
    root = data["rows"][0]
    assert root["path"] == "" and root["type"] == "ViT5" and root["flops"] == total
    assert sum(root["breakdown"].values()) == total
    assert set(root) >= {"path", "type", "repr", "params", "flops", "breakdown"}


def test_report_batch_depth_and_training():
    forward = run_json("report", "vit5-small", "--depth", "1")
    rows = {r["path"]: r for r in forward["rows"]}
    assert set(rows) == {"", "patch_embed", "blocks", "norm", "head"}
    assert rows["norm"]["breakdown"]["norm"] == 3 * 384  # the readout (CLS) token only
    train = run_json("report", "vit5-small", "--batch", "8", "--training", "--depth", "0")
    bd, fwd = train["rows"][0]["breakdown"], forward["rows"][0]["breakdown"]
    conv = 2 * 3 * 16 * 16 * 384 * 196  # the patch conv: its input is data, so no input gradient
    assert bd["matmul"] == 8 * (3 * fwd["matmul"] - conv) and bd["rope"] == 8 * 2 * fwd["rope"]
    assert train["batch"] == 8


def test_report_table_markdown_csv_render():
    table = run("report", "vit5-small")
    assert (
        table.exit_code == 0
        and "9,417,430,656" in table.stdout
        and "Not counted: residual adds" in table.stdout
    )
    md = run("report", "vit5-small", "--format", "markdown")
    assert "| module" in md.stdout
    csv = run("report", "vit5-small", "--format", "csv").stdout.splitlines()
    assert csv[0].startswith("module,type,params,matmul") and csv[-1].startswith("TOTAL,ViT5,22010112,")


def test_report_of_a_single_module_config():
    data = run_json("report", str(EXAMPLES / "attention-small.yaml"))
    T, C = 201, 384
    assert data["total_flops"] == 8 * T * C * C + 4 * T * T * C + 4 * T * C + 2 * 3 * T * C


def test_report_any_model_marks_analytic_and_measured_rows():
    data = run_json(
        "report",
        "--model",
        f"{EXAMPLES / 'custom_model.py'}:build",
        "--input-shape",
        "3,224,224",
        "--batch",
        "2",
    )
    rows = {r["path"]: r for r in data["rows"]}
    assert rows["stem"]["source"] == "measured" and rows["blocks.0"]["source"] == "analytic"
    assert rows["stem"]["breakdown"]["matmul"] == 2 * 2 * 3 * 256 * 192 * 196
    T, C = 196, 192
    assert rows["blocks.0"]["breakdown"]["attention"] == 2 * 4 * T * T * C


def test_validate_tiny_config_passes():
    result = run("validate", TINY, "--depth", "3")
    assert result.exit_code == 0, result.output
    assert "OK: every comparable count agrees (exactly)" in result.stdout
    assert "in parent" in result.stdout and "not comparable" in result.stdout


def test_validate_vit5_small_json_agrees_on_comparable_categories():
    data = run_json("validate", "vit5-small", "--against", "fvcore,torch")
    assert data["ok"] is True
    both = ["matmul", "attention", "norm", "rope"]
    assert data["comparable"] == {"fvcore": both, "torch": both}
    T, C = 201, 384
    for counter in ("fvcore", "torch"):
        assert data["totals"][counter]["matmul"] == 8_652_306_432
        assert data["totals"][counter]["attention"] == 12 * 4 * T * T * C
        # norm1, norm2, q_norm, k_norm (all heads) per block, and the final norm on the CLS token
        assert data["totals"][counter]["norm"] == 12 * 4 * 3 * T * C + 3 * C
        assert data["totals"][counter]["rope"] == 12 * 4 * T * C
    # The patch embedding runs as a GEMM over flattened patches, so fvcore sees it as a linear.
    assert data["raw_totals"]["fvcore"]["linear"] * 2 == 8_652_306_432


def test_layout_and_tokens():
    data = run_json("layout", "vit5-small", "--tokens")
    assert data["num_tokens"] == 201 and data["tokens"][196] == {
        "index": 196,
        "kind": "cls",
        "y": None,
        "x": None,
    }
    table = run("layout", "vit5-small").stdout
    assert "14*14 + 1 + 4 = 201" in table and "2x2" in table


def test_rope_report_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "rope.png"
    data = run_json("rope", TINY, "--tokens", "0:2,16:21", "--plot", str(png))
    assert [r["index"] for r in data["tokens"]] == [0, 1, 16, 17, 18, 19, 20]
    assert data["summary"]["pairing"] == "split_half" and data["summary"]["preserves_norm"] is False
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    interleaved = run_json("rope", TINY, "--pairing", "interleaved")
    assert interleaved["summary"]["preserves_norm"] is True


def test_presets_lists_all_four_with_params_and_flops():
    data = run_json("presets")
    by_name = {r["preset"]: r for r in data}
    sizes = ["vit5-small", "vit5-base", "vit5-large", "vit5-xlarge"]
    assert list(by_name) == sizes + [f"{name}-official" for name in sizes]
    assert by_name["vit5-small"]["params"] == 22_010_112
    assert by_name["vit5-small"]["flops_flopkit"] == 9_417_430_656


def test_official_preset_adds_exactly_the_bias_parameters_and_bias_adds():
    by_name = {r["preset"]: r for r in run_json("presets")}
    C, T, N, hidden, depth, classes = 384, 201, 196, 1536, 12, 1000
    # biases on the patch conv (C), per block proj (C) + fc1 (4C) + fc2 (C), and the head
    assert by_name["vit5-small-official"]["params"] == 22_010_112 + C + depth * (C + hidden + C) + classes
    # one add per output element: N*C for the conv, per block T*(C + 4C + C), and the head's classes
    extra = N * C + depth * T * (C + hidden + C) + classes
    assert by_name["vit5-small-official"]["flops_flopkit"] == 9_417_430_656 + extra


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "vit5-smal"], "unknown preset 'vit5-smal' (did you mean 'vit5-small'?)"),
        (
            ["report", "vit5-small", "--set", "hiden_dim=3"],
            "unknown key 'hiden_dim' (did you mean 'hidden_dim'?)",
        ),
        (["report", "vit5-small", "--set", "depth=x"], "depth must be an integer, got 'x'"),
        (["report", "vit5-small", "--set", "hidden_dim=100"], "hidden_dim must be divisible by num_heads"),
        (["layout", "vit5-small", "--set", "num_registers=5"], "num_registers must be a perfect square"),
        (["report", "vit5-small", "--set", "image_size=100"], "image_size height 100 must be divisible"),
        (["report", "missing.yaml"], "missing.yaml: no such file"),
        (["rope", "vit5-small", "--tokens", "0:999"], "outside the 201 tokens"),
        (["report", "vit5-small", "--format", "xml"], "Invalid value for '--format'"),
        (["layout", TINY, "--set", "qk_norm=layer"], "qk_norm must be one of null, 'rmsnorm', 'headnorm'"),
        (["report", "vit5-small", "--set", "hidden_dim=0"], "hidden_dim must be a positive integer, got 0"),
        (
            ["report", "vit5-small", "--set", "preset=vit5-base"],
            "the preset is chosen by CONFIG (vit5-small)",
        ),
        (["report", "vit5-small", "--set", "depth=1000000000"], "depth=1,000,000,000 is above the limit"),
        (
            ["report", "vit5-small", "--set", "hidden_dim=1000000000", "--set", "num_heads=8"],
            "torch cannot create a tensor of this config",
        ),
        (
            ["report", "vit5-small", "--set", "hidden_dim=100000000", "--set", "num_heads=8"],
            "is above the limit of 10,000,000,000,000 (10^13)",
        ),
        (["report", "vit5-small", "--set", "image_size=1600000"], "more than a tensor can hold (2^63 - 1)"),
        (["rope", "vit5-small", "--set", "image_size=16384", "--tokens", "0:"], "ask for a smaller range"),
        (["rope", "vit5-small", "--tokens", "5:2"], "range '5:2' is empty: start must be below stop"),
        (
            ["rope", "vit5-small", "--plot", "/missing/dir/x.png"],
            "--plot /missing/dir/x.png: directory /missing/dir does not exist",
        ),
        (["rope", "vit5-small", "--set", "image_size=16384"], "above its limit of 67,108,864"),
        (["validate", "vit5-small", "--convention", "nvsubquadratic"], "can never match a counter"),
        (["validate", "vit5-small", "--against", "torch,torch"], "expected fvcore and/or torch"),
        (
            [
                "validate",
                "vit5-small",
                "--set",
                "hidden_dim=12288",
                "--set",
                "depth=96",
                "--set",
                "num_heads=96",
            ],
            "fvcore traces the model on CPU, and 173,975,126,016 parameters",
        ),
        (["report", "vit5-small", "--input-shape", "3,224,224"], "--input-shape applies only with --model"),
        (["report", "vit5-small", "--model", "x.py:build"], "give a CONFIG (vit5-small) or --model"),
        (["report"], "missing CONFIG"),
        (
            ["layout", "vit5-small", "--set", "image_size=16384", "--tokens"],
            "--tokens: 1,048,581 tokens is above the 1,000,000 a report lists",
        ),
    ],
)
def test_errors_are_one_line_on_stderr_with_status_2(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert result.stdout == ""


def test_malformed_yaml_is_status_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: [vit5-small\n")
    result = run("report", str(bad))
    assert result.exit_code == 2 and "malformed YAML" in result.stderr


def test_bench_without_cuda_is_status_2(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    result = run("bench")
    assert result.exit_code == 2 and "needs a CUDA GPU" in result.stderr


def test_bench_outside_the_repository_is_status_2(monkeypatch, tmp_path):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.chdir(tmp_path)
    result = run("bench")
    assert result.exit_code == 2 and "no benchmarks found" in result.stderr


def test_every_command_help_shows_an_example():
    for command in ("report", "validate", "layout", "rope", "presets", "bench"):
        result = run(command, "--help")
        assert result.exit_code == 0 and "Example" in result.stdout and "flopkit " + command in result.stdout


def _script_path() -> str | None:
    """The ``flopkit`` console script on PATH or beside this interpreter, None without one."""
    beside = Path(sys.executable).with_name("flopkit")
    return shutil.which("flopkit") or (str(beside) if beside.exists() else None)


def _installed_script(*args: str) -> _early.Make:
    def make(out, environ):
        script = _script_path() or str(Path(sys.executable).with_name("flopkit"))
        return [script, *args], {"timeout": 60}

    return make


# Both start when the session is collected (tests/_early.py).
SCRIPT_REPORT = _early.early(
    "installed-script-report", _installed_script("report", "vit5-small", "--format", "json", "--depth", "0")
)
SCRIPT_TYPO = _early.early("installed-script-typo", _installed_script("report", "vit5-smal"))


@pytest.mark.early("installed-script-report", "installed-script-typo")
def test_installed_script_runs_as_a_subprocess():
    """The console script of an installed flopkit. CI installs it, and there a missing script fails;
    a checkout run from its root without an install (as on the GPU machine) has none to run, and
    the test skips saying so."""
    if _script_path() is None and not os.environ.get("CI"):
        pytest.skip("no flopkit console script: flopkit is not installed here (pip install -e .)")
    done = SCRIPT_REPORT.result()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["total_flops"] == 9_417_430_656
    bad = SCRIPT_TYPO.result()
    assert (
        bad.returncode == 2 and bad.stderr.startswith("flopkit: error: unknown preset") and bad.stdout == ""
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "vit5-small", "--seq-len", "128"], "--seq-len applies only with --model"),
        (["report", "vit5-small", "--model-arg", "a=1"], "--model-arg applies only with --model"),
        (
            ["report", "vit5-small", "--causal-attention", "half"],
            "--causal-attention applies only with --model",
        ),
        (["report", "vit5-small", "--plot", "x.png"], "--plot applies only with --model"),
        (["report", "vit5-small", "--model", "m.py:f"], "give a CONFIG (vit5-small) or --model (m.py:f)"),
        (["report", "--model", "m.py:f", "--set", "depth=2"], "(use --model-arg KEY=VALUE)"),
        (["report", "vit5-small", "--columns", "shapes,bytes"], "--columns"),
        (["report", "--model", "m.py:f", "--seq-len", "8,16", "--depth", "3"], "--depth applies to the"),
        (["validate", "--model", "m.py:f", "--causal-attention", "half"], "validate counts every"),
        (["validate", "vit5-small", "--input-shape", "3,8,8"], "--input-shape applies only with --model"),
    ],
)
def test_options_that_do_not_apply_are_refused(args, message):
    result = run(*args)
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_model_errors_are_one_line_naming_the_spec(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Net(nn.Module):\n    def forward(self, x):\n        raise ValueError('bad shape')\n\n"
        "def net():\n    return Net()\n\ndef boom(**kw):\n    raise KeyError('weights')\n"
    )
    result = run("report", "--model", f"{path}:boom")
    assert (
        result.exit_code == 2
        and f"--model {path}:boom: the factory raised KeyError: 'weights'" in result.stderr
    )
    result = run("report", "--model", f"{path}:net", "--input-shape", "4")
    assert result.exit_code == 2 and "running the model raised ValueError: bad shape" in result.stderr
    result = run("report", "--model", f"{path}:net", "--seq-len", "8,16", "--plot", "/missing/dir/x.png")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert all(len(r.splitlines()) == 1 for r in (result.stderr,))


def test_report_columns_show_shapes_and_memory_for_a_config():
    result = run("report", "vit5-small", "--columns", "shapes,memory", "--depth", "1")
    assert result.exit_code == 0, result.output
    head = result.stdout.splitlines()[1]
    assert all(h in head for h in ("input", "output", "param bytes", "output bytes"))
    assert "[1, 3, 224, 224] float32" in result.stdout


def test_report_json_rows_always_carry_shapes():
    rows = {r["path"]: r for r in run_json("report", "vit5-small", "--batch", "2")["rows"]}
    # PatchEmbed takes the CLS and register tokens too and returns the whole token sequence.
    assert rows["patch_embed"]["input_shapes"] == [[2, 3, 224, 224], [1, 1, 384], [1, 4, 384]]
    assert rows["patch_embed"]["output_shapes"] == [[2, 201, 384]]
    assert rows["patch_embed.proj"]["output_shapes"] == [[2, 196, 384]]


def test_training_on_a_config_reports_the_backward_with_the_patch_conv_at_one_x():
    rows = {r["path"]: r for r in run_json("report", "vit5-small", "--training", "--depth", "1")["rows"]}
    conv = 2 * 3 * 16 * 16 * 384 * 196
    assert rows["patch_embed"]["backward"]["matmul"] == conv
    assert rows["head"]["backward"]["matmul"] == 2 * (2 * 384 * 1000)


def test_config_file_errors_name_the_file(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("preset: vit5-small\ndepth: 3\ndepth: 4\n")
    dup_json = tmp_path / "dup.json"
    dup_json.write_text('{"preset": "vit5-small", "depth": 3, "depth": 4}')
    binary = tmp_path / "model.yaml"
    binary.write_bytes(b"preset: vit5-small\n\xff\xfe\x00\x01")
    for path, message in (
        (dup, f"{dup}: key 'depth' is given twice (lines 2 and 3)"),
        (dup_json, f"{dup_json}: key 'depth' is given twice"),
        (binary, f"{binary}: not a YAML or JSON text file (byte 0xff at offset 19 is not UTF-8)"),
    ):
        result = run("report", str(path))
        assert result.exit_code == 2 and result.stderr == f"flopkit: error: {message}\n"


def test_exceptions_in_a_model_factory_name_the_factory_and_keep_the_message(tmp_path):
    user = tmp_path / "user_model.py"
    user.write_text(
        "import torch\n"
        "def broken():\n    raise RuntimeError('weights went missing')\n"
        "def not_a_module():\n    return 3\n"
        "class Fails(torch.nn.Module):\n"
        "    def forward(self, x):\n        raise KeyError('no such head')\n"
        "def fails_in_forward():\n    return Fails()\n"
    )
    cases = {
        "broken": "the factory raised RuntimeError: weights went missing",
        "not_a_module": "the factory returned a int, not an nn.Module",
        "missing": "has no callable 'missing'",
        "fails_in_forward": "running the model raised KeyError: 'no such head'",
    }
    for name, message in cases.items():
        result = run("report", "--model", f"{user}:{name}", "--input-shape", "3,224,224")
        assert result.exit_code == 2, result.output
        assert (
            result.stderr.startswith(f"flopkit: error: --model {user}:{name}: ") and message in result.stderr
        )
        assert result.stderr.count("\n") == 1
    importer = tmp_path / "bad_import.py"
    importer.write_text("import no_such_package_xyz\n")
    result = run("report", "--model", f"{importer}:build")
    assert (
        result.exit_code == 2
        and "raised ModuleNotFoundError: No module named 'no_such_package_xyz'" in result.stderr
    )


def test_175b_config_reports_on_meta():
    data = run_json(
        "report",
        "vit5-small",
        "--set",
        "hidden_dim=12288",
        "--set",
        "depth=96",
        "--set",
        "num_heads=96",
        "--depth",
        "0",
    )
    C, L, T, N = 12288, 96, 201, 196
    block = 12 * C * C + 4 * C + 2 * (C // 96)  # qkv, proj, fc1, fc2; norms, layer scales; q/k norms
    assert data["total_params"] == 3 * 256 * C + N * C + C + 4 * C + L * block + C + 1000 * C
    assert data["total_params"] == 173_975_126_016
    attn = 8 * T * C * C + 4 * T * T * C + 4 * T * C + 2 * 3 * T * C
    mlp = 16 * T * C * C + 4 * T * C
    assert (
        data["total_flops"]
        == 2 * 3 * 256 * C * N + N * C + L * (attn + mlp + 2 * 3 * T * C + 2 * T * C) + 3 * C + 2 * C * 1000
    )


MYSTERY_MODEL = """
import torch
from torch import nn


@torch.library.custom_op("flopkit_strict::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        return torch.ops.flopkit_strict.mystery(self.proj(x))


def build():
    return Model()
"""


def test_report_lists_ops_without_a_formula_and_strict_refuses_them(tmp_path):
    path = tmp_path / "mystery_model.py"
    path.write_text(MYSTERY_MODEL)
    args = ["report", "--model", f"{path}:build", "--input-shape", "4"]
    result = CliRunner().invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["uncounted_ops"] == {"flopkit_strict.mystery": 1}
    assert any("NOT COUNTED" in line and "flopkit_strict.mystery x1" in line for line in data["legend"])
    strict = CliRunner().invoke(app, [*args, "--strict"])
    assert strict.exit_code == 2 and "flopkit_strict.mystery x1" in strict.stderr
    assert len(strict.stderr.strip().splitlines()) == 1
