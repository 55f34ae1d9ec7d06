"""timm models by name (``timm:NAME``), shrunk with --model-arg, counted on the meta device and
checked against hand counts and an independent count. Skipped when timm is not installed; CI runs
them in a second environment (see .ci/run)."""

import json

import pytest
import torch
from click.testing import CliRunner
from flopkit.cli import app
from torch import nn

timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'flopkit[timm]')")

B = 2


def run_json(*args):
    result = CliRunner().invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_vit_report_counts_every_category():
    C, H, P, N = 192, 3, 16, 4  # vit_tiny at 32x32: 2x2 patches
    T = N + 1  # + class token
    data = run_json("report", "--model", "timm:vit_tiny_patch16_224", "--model-arg", "depth=1",
                    "--model-arg", "img_size=32", "--batch", str(B))  # fmt: skip
    total = data["rows"][0]["breakdown"]
    assert total["matmul"] == B * (2 * 3 * P * P * C * N + 2 * T * 12 * C * C + 2 * C * 1000)
    assert total["attention"] == B * 4 * T * T * C
    assert total["norm"] == B * 3 * 6 * T * C  # norm1, norm2, final norm
    assert total["elementwise"] == B * (T * 4 * C + 4 * H * T * T)  # GELU, softmax
    assert data["inputs"] == "[2, 3, 32, 32] float32"  # the size the patch embedding was built for


def test_default_input_comes_from_pretrained_cfg():
    data = run_json("report", "--model", "timm:resnet18", "--depth", "0")
    assert data["rows"][0]["input_shapes"] == [[1, 3, 224, 224]]


def test_cnn_matches_hooks_on_a_real_copy_and_fvcore():
    data = run_json("report", "--model", "timm:resnet18", "--input-shape", "3,32,32", "--batch", str(B),
                    "--depth", "0")  # fmt: skip
    total = data["rows"][0]["breakdown"]
    model = timm.create_model("resnet18", pretrained=False).eval()
    seen = {"bn": 0, "relu": 0}

    def hook(module, args, output):
        seen["bn" if isinstance(module, nn.BatchNorm2d) else "relu"] += output.numel()

    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.ReLU)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(B, 3, 32, 32))
    assert total["norm"] == 2 * seen["bn"] and total["elementwise"] == seen["relu"]
    check = run_json("validate", "--model", "timm:resnet18", "--input-shape", "3,32,32", "--batch", str(B),
                     "--depth", "1")  # fmt: skip
    assert check["ok"] and check["totals"]["fvcore"]["matmul"] == total["matmul"]


def test_unknown_name_suggests_close_names():
    result = CliRunner().invoke(app, ["report", "--model", "timm:resnet5O"])
    assert result.exit_code == 2 and "did you mean resnet50" in result.stderr


def test_profile_takes_a_timm_model():
    data = run_json("profile", "--model", "timm:resnet18", "--batch", "2", "--training", "--device", "cpu",
                    "--steps", "1", "--warmup", "0", "--input-shape", "3,64,64")  # fmt: skip
    report = run_json(
        "report", "--model", "timm:resnet18", "--batch", "2", "--training", "--input-shape", "3,64,64"
    )
    assert data["rows"][0]["flops"] == report["total_flops"]
    assert data["loss"] == "ce"  # [B, 1000] logits: the classifier's classes
