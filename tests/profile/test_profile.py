"""flopkit profile end to end on CPU: rows against report, attribution against the profiler's
own total, bytes against hand counts, the roofline plot and the errors."""

import json
import struct

import pytest
import torch
from click.testing import CliRunner
from flopkit.cli import app

from flopkit.config import load_config, model_input
from flopkit.flops.analytic import flop_rows, flop_tree
from flopkit.nn.vit5 import ViT5Block
from flopkit.profile import ModuleRanges, Roofs, classify_bound, plot_roofline, profile_model, roofline_points
from flopkit.profile.attribution import LOSS
from flopkit.profile.roofline import backward_bytes
from flopkit.profile.run import compile_regions, ranged_paths

TINY = {"image_size": 32, "patch_size": 16, "hidden_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 10}
FIXED_ROOFS = Roofs(matmul_tflops=0.1, copy_gbs=10.0, matmul_n=0, copy_bytes=0, dtype="float32")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the CPU runs are small, and a shared 2-core runner thrashes otherwise."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(*args):
    return CliRunner().invoke(app, list(args))


def tiny_config():
    overrides = [f"{k}={v}" for k, v in TINY.items()]
    cfg = load_config("vit5-small", overrides)
    cfg.check()
    return cfg


def tiny_profile(training=True, depth=2, batch=2):
    cfg = tiny_config()
    meta = cfg.meta_module
    rows = flop_rows(meta, flop_tree(meta, cfg.tokens(meta)), depth=depth, batch=batch, training=training)
    model = cfg.build("cpu")
    x = model_input(cfg, model, batch, "cpu")
    result = profile_model(
        model, x, rows, mfu_flops=1, training=training, steps=2, warmup=1, roofs=FIXED_ROOFS
    )
    return model, rows, result


def test_rows_are_reports_rows_with_its_flops_plus_the_loss():
    _, flop, result = tiny_profile()
    assert [r.path for r in result.rows] == [r.path for r in flop] + [LOSS]
    for fr, pr in zip(flop, result.rows, strict=False):
        assert pr.flops == (None if fr.counted_in else fr.flops)


def test_every_op_is_charged_and_rows_add_up_like_report():
    _, _, result = tiny_profile()
    by_path = {r.path: r for r in result.rows}
    assert result.attributed_share == pytest.approx(1.0)
    assert result.op_ms == pytest.approx(result.profiler_total_ms, rel=1e-9)
    blocks = [by_path[f"blocks.{i}"] for i in range(2)]
    assert by_path["blocks"].forward_ms == pytest.approx(sum(b.forward_ms for b in blocks))
    total = by_path[""].forward_ms + by_path[""].backward_ms + by_path[LOSS].ms
    assert total == pytest.approx(result.op_ms)
    assert all(b.backward_ms > 0 for b in blocks)


def test_minimum_bytes_of_the_head_are_its_weights_input_and_output():
    model, _, result = tiny_profile()
    head = next(r for r in result.rows if r.path == "head")
    B, C, K = 2, TINY["hidden_dim"], TINY["num_classes"]
    params, inputs, outputs = 4 * C * K, 4 * B * C, 4 * B * K
    assert head.bytes == params + inputs + outputs + (2 * params + 2 * inputs + outputs)
    assert backward_bytes(params, inputs, outputs) == 2 * params + 2 * inputs + outputs
    assert head.gbs == pytest.approx(head.bytes / (head.ms / 1e3) / 1e9)
    assert head.copy_pct == pytest.approx(100 * head.gbs / FIXED_ROOFS.copy_gbs)


def test_forward_only_has_no_backward_and_no_loss_row():
    _, flop, result = tiny_profile(training=False)
    assert [r.path for r in result.rows] == [r.path for r in flop]
    assert all(r.backward_ms == 0 for r in result.rows)


def test_module_ranges_leave_nothing_behind():
    cfg = tiny_config()
    model = cfg.build("cpu")
    block = model.blocks[0]
    modules = dict(model.named_modules())
    with ModuleRanges(modules, record_io=True) as ranges:
        assert "forward_residual" in vars(block.norm2)
        model(model_input(cfg, model, 1, "cpu")).sum().backward()
    assert "forward_residual" not in vars(block.norm2)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    # norm2 runs through forward_residual: its input is (x, residual, ls1.gamma), its output (y, h)
    T, C = model.num_tokens, TINY["hidden_dim"]
    assert ranges.io_bytes["blocks.0.norm2"] == {"inputs": 2 * 4 * T * C + 4 * C, "outputs": 2 * 4 * T * C}


def test_compile_regions_are_the_deepest_rows_and_children_of_containers():
    model = tiny_config().meta_module
    modules = dict(model.named_modules())
    depth1 = ["", "patch_embed", "blocks", "norm", "head"]
    assert ranged_paths(modules, depth1) == [*depth1, "blocks.0", "blocks.1"]
    assert compile_regions(modules, depth1) == ["patch_embed", "norm", "head", "blocks.0", "blocks.1"]
    depth2 = [p for p in modules if p.count(".") < 2]
    regions = compile_regions(modules, depth2)
    assert regions == ["patch_embed.proj", "blocks.0", "blocks.1", "norm", "head"]
    assert all(isinstance(modules[p], ViT5Block) for p in regions if p.startswith("blocks"))


@pytest.mark.parametrize(
    ("flops", "nbytes", "device_s", "host_s", "cuda", "bound"),
    [
        (1e12, 1e6, 1.0, 0.1, True, "compute"),  # 10 s of FLOPs vs 0.1 ms of bytes
        (1e9, 1e10, 1.0, 0.1, True, "memory"),  # 0.01 s of FLOPs vs 1 s of bytes
        (1e12, 1e6, 1.0, 2.0, True, "launch/host"),  # the host is slower than the kernels
        (1e12, 1e6, 1.0, 2.0, False, "compute"),  # no launch/host bound on the CPU
    ],
)
def test_bound(flops, nbytes, device_s, host_s, cuda, bound):
    assert classify_bound(flops, nbytes, device_s, host_s, FIXED_ROOFS, cuda) == bound


def test_plot_roofline_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    points = [("blocks.0", 200.0, 0.05, "compute"), ("norm", 0.3, 0.001, "memory")]
    path = plot_roofline(points, FIXED_ROOFS, tmp_path / "roofline.png", title="test")
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width > 400 and height > 300


def test_cli_vit5_small_training_adds_up_to_the_profilers_cpu_time_and_flops_equal_reports():
    result = run(
        "profile", "vit5-small", "--batch", "2", "--device", "cpu", "--training",
        "--steps", "1", "--warmup", "0", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in ("step_ms", "gpu_ms", "host_bound_share", "mfu"):
        assert isinstance(data[key], float)
    rows = {r["path"]: r for r in data["rows"]}
    for row in data["rows"]:
        assert {"path", "forward_ms", "backward_ms", "tflops", "gbs", "bound"} <= set(row)
    charged = (
        rows[""]["forward_ms"]
        + rows[""]["backward_ms"]
        + rows[LOSS]["forward_ms"]
        + rows[LOSS]["backward_ms"]
    )
    assert charged == pytest.approx(data["profiler_total_ms"], rel=0.05)
    report = run("report", "vit5-small", "--batch", "2", "--training", "--format", "json")
    for want in json.loads(report.stdout)["rows"]:
        got = rows[want["path"]]["flops"]
        assert got == (None if want["counted_in"] else want["flops"]), want["path"]
    # MFU under the rule in docs/benchmarks.md: the training step's matmul + attention FLOPs, as report counts them
    step = json.loads(report.stdout)["rows"][0]["breakdown"]
    assert data["mfu_flops"] == step["matmul"] + step["attention"]
    assert data["mfu"] == pytest.approx(
        data["mfu_flops"] / (data["step_ms"] / 1e3) / (data["roofs"]["matmul_tflops"] * 1e12)
    )


def test_cli_table_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "roofline.png"
    result = run(
        "profile", "vit5-small", *[f"--set={k}={v}" for k, v in TINY.items()], "--batch", "2",
        "--device", "cpu", "--steps", "1", "--warmup", "0", "--depth", "1", "--plot", str(plot),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "TOTAL" in result.stdout and "CPU op time" in result.stdout and "MFU" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["vit5-small", "--depth", "9"], "--depth"),
        (["vit5-small", "--compile", "--warmup", "0"], "--warmup"),
        (["vit5-small", "--input-shape", "1,3,224,224"], "--input-shape"),
        (["vit5-small", "--model", "examples/custom_model.py:build"], "not both"),
        (
            ["--model", "examples/custom_model.py:build", "--input-shape", "0,3,64"],
            "--input-shape",
        ),
        ([], "missing CONFIG"),
    ],
)
def test_cli_errors_are_one_line_with_status_2(args, message):
    result = run("profile", "--device", "cpu", *args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cli_cuda_without_a_gpu_is_one_line_with_status_2():
    result = run("profile", "vit5-small", "--device", "cuda")
    assert result.exit_code == 2
    assert "no CUDA GPU" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_compile_charges_each_compiled_region_and_restores_the_model():
    cfg = tiny_config()
    meta = cfg.meta_module
    rows = flop_rows(meta, flop_tree(meta, cfg.tokens(meta)), depth=2, batch=2)
    model = cfg.build("cpu")
    x = model_input(cfg, model, 2, "cpu")
    result = profile_model(model, x, rows, mfu_flops=1, compile=True, steps=1, warmup=1, roofs=FIXED_ROOFS)
    assert result.regions == ["patch_embed.proj", "blocks.0", "blocks.1", "norm", "head"]
    by_path = {r.path: r for r in result.rows}
    assert result.attributed_share == pytest.approx(1.0)
    assert all(by_path[p].forward_ms > 0 for p in result.regions)
    assert by_path[""].forward_ms == pytest.approx(result.op_ms)
    assert not any("forward" in vars(m) for m in model.modules())  # compiled forwards removed


def test_roofline_points_are_the_deepest_rows_with_flops():
    _, _, result = tiny_profile(depth=2)
    paths = [label for label, *_ in roofline_points(result.rows)]
    # patch_embed.proj is counted in patch_embed (no FLOPs of its own), so patch_embed is a point
    assert paths == ["patch_embed", "blocks.0", "blocks.1", "norm", "head"]


def test_the_better_of_two_roof_measurements_is_kept():
    other = Roofs(matmul_tflops=0.05, copy_gbs=20.0, matmul_n=0, copy_bytes=0, dtype="float32")
    best = FIXED_ROOFS.best(other)
    assert (best.matmul_tflops, best.copy_gbs) == (0.1, 20.0)
    assert best.ridge == pytest.approx(0.1e12 / 20e9)


def test_cli_csv_has_raw_numbers():
    result = run(
        "profile", "vit5-small", *[f"--set={k}={v}" for k, v in TINY.items()], "--batch", "2",
        "--device", "cpu", "--steps", "1", "--warmup", "0", "--depth", "1", "--format", "csv",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("path,type,flops,bytes,forward_ms")
    total = lines[-1].split(",")
    assert (
        total[0] == "" and total[1] == "ViT5" and int(total[2]) > 0 and float(total[-1]) == pytest.approx(1.0)
    )


USER_MODEL = """
import torch
from torch import nn


class Small(nn.Module):
    def __init__(self, fail=False):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.fail = fail

    def forward(self, x):
        if self.fail and not self.training and x.device.type == "cpu":
            raise RuntimeError("boom in the user's forward")
        return self.fc(x)


def build():
    return Small()


def build_failing():
    return Small(fail=True)
"""


def test_cli_user_model_at_the_default_depth_shows_all_of_a_shallow_model(tmp_path):
    (tmp_path / "small.py").write_text(USER_MODEL)
    args = [
        "--input-shape",
        "4",
        "--batch",
        "2",
        "--device",
        "cpu",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--format",
        "json",
    ]
    result = run("profile", "--model", f"{tmp_path / 'small.py'}:build", *args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [r["path"] for r in rows] == ["", "fc"] and rows[1]["flops"] == 2 * 2 * 4 * 3


def test_cli_user_model_error_is_one_line_naming_the_model(tmp_path):
    (tmp_path / "small.py").write_text(USER_MODEL)
    spec = f"{tmp_path / 'small.py'}:build_failing"
    result = run(
        "profile", "--model", spec, "--input-shape", "4", "--batch", "2", "--device", "cpu", "--warmup", "0"
    )
    assert result.exit_code == 2
    assert spec in result.stderr and "boom" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
