"""benchmarks/multi_gpu.py on CPU: ViT5 under DDP and FSDP2 with 2 gloo processes matches one process.

The end-to-end runs spawn 2 ranks (about 4 s each on 2 cores, most of it DDP importing
torch._dynamo); the single-process reference the distributed losses are held against is computed
here, with a plain training loop, not taken from the script. On CPU the modules run the PyTorch
references of the norms and RoPE; ``--custom-ops`` sends them through the ``flopkit::`` custom ops
and their registered autograd. ``--compile`` (about 40 s on CPU) is left to a manual run.
"""

import json
import subprocess
import sys
from pathlib import Path

import _early
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from benchmarks import multi_gpu as M

ROOT = Path(__file__).resolve().parents[1]

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this build",
)

SMALL = M.RunConfig(depth=2, image_size=32, batch=4, steps=3, device="cpu", dtype="float32")
SMALL_ARGS = ["--device", "cpu", "--nproc", "2", "--depth", "2", "--image-size", "32", "--batch", "4"]
SMALL_ARGS += ["--steps", "3"]


def _script(*extra: str) -> _early.Make:
    def make(out: Path, environ) -> tuple[list[str], dict]:
        return [sys.executable, str(ROOT / "benchmarks" / "multi_gpu.py"), *SMALL_ARGS, *extra], {
            "timeout": 180,
            "cwd": ROOT,
            # The script imports flopkit from this checkout, installed or not.
            "env": _early.checkout_env(environ, OUT=str(out)),
        }

    return make


# Each run starts when the session is collected (tests/_early.py): 2 ranks on the idle core.
RUNS = {
    "eager": _early.early("multi_gpu-eager", _script()),
    "custom-ops": _early.early("multi_gpu-custom-ops", _script("--custom-ops")),
    "no-grad-sync": _early.early("multi_gpu-no-grad-sync", _script("--no-grad-sync")),
}


def run_script(name: str) -> tuple[subprocess.CompletedProcess, dict]:
    run = RUNS[name]
    proc = run.result()
    with open(run.out / "multi_gpu.json") as fh:
        return proc, json.load(fh)


def single_process_run(cfg: M.RunConfig, rows: slice = slice(None)) -> tuple[list[float], dict]:
    """One process, plain AdamW loop on ``rows`` of every batch: losses and final parameters."""
    model = M.build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.05)
    losses = []
    for images, labels in M.make_batches(cfg):
        loss = F.cross_entropy(model(images[rows]), labels[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


@needs_gloo
@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([], id="eager", marks=pytest.mark.early("multi_gpu-eager")),
        pytest.param(["--custom-ops"], id="custom-ops", marks=pytest.mark.early("multi_gpu-custom-ops")),
    ],
)
def test_ddp_and_fsdp2_losses_match_one_process_on_two_gloo_ranks(extra):
    proc, out = run_script("custom-ops" if extra else "eager")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref_losses, _ = single_process_run(SMALL)
    assert out["ok"] and out["world_size"] == 2
    assert out["config"]["custom_ops"] == bool(extra)
    assert [r["mode"] for r in out["results"]] == ["ddp", "fsdp2"]
    for row in out["results"]:
        assert row["error"] is None and row["ok"]
        assert row["losses"] == pytest.approx(ref_losses, rel=1e-5)
        assert row["param_rel"] < 1e-4
    # the steps moved the model: the losses are not one repeated number
    assert max(ref_losses) - min(ref_losses) > 1e-2
    assert proc.stdout.rstrip().splitlines()[-1].startswith("| fsdp2 |")


@needs_gloo
@pytest.mark.early("multi_gpu-no-grad-sync")
def test_skipping_the_gradient_average_fails_the_check_with_exit_1():
    proc, out = run_script("no-grad-sync")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert not out["ok"]
    assert all(not r["ok"] and r["error"] is None and r["param_rel"] > 0.5 for r in out["results"])


def test_a_rank_training_on_its_share_alone_is_far_outside_both_tolerances():
    """The tolerances separate float rounding from a missing gradient average, fp32 and bf16."""
    cfg = M.RunConfig(device="cpu", dtype="float32")
    init = {n: p.detach().clone() for n, p in M.build_model(cfg).named_parameters()}
    ref_losses, ref_params = single_process_run(cfg)
    half_losses, half_params = single_process_run(cfg, slice(0, cfg.batch // 2))
    rel, max_abs = M.param_distance(half_params, ref_params, init)
    for dtype in (torch.float32, torch.bfloat16):
        loss_tol, param_tol = M.TOLERANCES[dtype]
        assert rel > 5 * param_tol
        result = M.compare("ddp", 2, half_losses, ref_losses, rel, max_abs, dtype)
        assert not result.ok and result.loss_rel > loss_tol
        assert M.compare("ddp", 2, ref_losses, ref_losses, 0.0, 0.0, dtype).ok


def test_param_distance_is_the_error_over_the_distance_moved():
    init = {"a": torch.zeros(2), "b": torch.zeros(1)}
    ref = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])}  # moved by 5
    mine = {"a": torch.tensor([3.0, 0.5]), "b": torch.tensor([4.0])}
    assert M.param_distance(mine, ref, init) == pytest.approx((0.1, 0.5))
    with pytest.raises(KeyError, match="parameter sets differ"):
        M.param_distance({"a": torch.zeros(2)}, ref, init)


def test_shards_are_equal_contiguous_and_cover_the_batch():
    batch = torch.arange(12).reshape(6, 2)
    parts = [M.shard(batch, r, 3) for r in range(3)]
    assert all(p.shape == (2, 2) for p in parts)
    assert torch.equal(torch.cat(parts), batch)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch", "7"], "--batch must be divisible by the number of processes (2), got 7"),
        (["--nproc", "1"], "--nproc must be >= 2, got 1"),
        (["--modes", "ddp,zero3"], "--modes must be a comma list of ddp, fsdp2, got 'ddp,zero3'"),
        (["--preset", "vit5-tiny"], "unknown preset 'vit5-tiny'"),
        (["--image-size", "30"], "image_size height 30 must be divisible by patch_size 16"),
        (["--lr", "0"], "--lr must be positive, got 0.0"),
    ],
)
def test_bad_arguments_are_refused_with_status_2_before_any_process_starts(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        M.parse_args(["--device", "cpu", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_nproc_must_agree_with_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    cfg, world, _ = M.parse_args(["--device", "cpu", "--batch", "8"])
    assert world == 4 and cfg.batch == 8
    with pytest.raises(SystemExit):
        M.parse_args(["--device", "cpu", "--nproc", "2"])
    assert "disagrees with torchrun's WORLD_SIZE=4" in capsys.readouterr().err
