"""The logic of benchmarks/parity_checkpoints.py (the GPU parity run): its metrics, pass rule,
weight perturbation and argument checks; and, where the official code is importable, a tiny CPU run."""

import math
import os

import pytest
import torch

from benchmarks import parity_checkpoints as P
from benchmarks import upstream_models as U


def test_rel_max_and_rel_norm_by_hand():
    b = torch.tensor([1.0, -4.0, 2.0])
    a = torch.tensor([1.5, -4.0, 1.0])
    assert P.rel_max(a, b) == pytest.approx(1.0 / 4.0)
    assert P.rel_norm(a, b) == pytest.approx(math.sqrt(0.25 + 1.0) / math.sqrt(1 + 16 + 4))


def test_worst_grad_names_the_worst_tensor_and_rejects_mismatched_sets():
    theirs = {"a": torch.ones(4), "b": torch.ones(4)}
    mine = {"a": torch.ones(4) * 1.01, "b": torch.ones(4) * 1.2}
    value, name = P.worst_grad(mine, theirs)
    assert name == "b" and value == pytest.approx(0.2)
    with pytest.raises(KeyError, match="differ in their tensors"):
        P.worst_grad({"a": torch.ones(1)}, theirs)


def test_loss_gap_is_the_largest_relative_step_difference():
    assert P.loss_gap([2.0, 1.01, 0.5], [2.0, 1.0, 0.5]) == pytest.approx(0.01)
    assert P.loss_gap([float("nan")], [1.0]) == math.inf
    with pytest.raises(ValueError, match="differ in length"):
        P.loss_gap([1.0], [1.0, 2.0])


def test_pass_rule():
    assert P.passes(1e-2, 1e-2, 0.009, grad_floor=1e-2)
    assert not P.passes(3e-2, 1e-2, None, grad_floor=1e-2)  # logits beyond bf16 tolerance
    assert not P.passes(1e-2, 1e-2, 0.011, grad_floor=1e-2)  # losses beyond 1 %
    assert P.passes(1e-2, 0.15, None, grad_floor=0.08)  # gradients within twice upstream's own bf16 error
    assert not P.passes(1e-2, 0.2, None, grad_floor=0.08)


def test_perturb_moves_layerscale_biases_and_norm_weights_off_their_init():
    layer = torch.nn.Module()
    layer.gamma_1 = torch.nn.Parameter(torch.full((64,), 1e-4))
    layer.fc = torch.nn.Linear(8, 64)
    layer.norm_weight = torch.nn.Parameter(torch.ones(64))
    before = layer.fc.weight.detach().clone()
    P.perturb(layer, seed=0)
    assert abs(float(layer.gamma_1.mean()) - 0.1) < 0.01
    assert abs(float(layer.fc.bias.std()) - 0.02) < 0.01
    assert 0.05 < float(layer.norm_weight.std()) < 0.15
    assert torch.equal(layer.fc.weight, before)  # matrices keep upstream's own init


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give --nvsubq-src and/or --official-src"),
        (["--official-src", "x", "--batch", "0"], "--batch must be positive"),
    ],
)
def test_bad_arguments_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        P.parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_tiny_cpu_run_against_the_official_code(tmp_path, monkeypatch):
    reason = U.upstream_unavailable("official")
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("OUT", str(tmp_path))
    args = ["--official-src", os.environ[U.OFFICIAL_ENV], "--device", "cpu", "--modes", "eager"]
    rows = P.main([*args, "--batch", "1", "--pool", "1", "--steps", "2"])
    assert [(r["source"], r["mode"]) for r in rows] == [("official", "eager")]
    row = rows[0]
    # one image per batch is too noisy for the 1 % loss rule; logits and gradients must hold anyway
    assert row["logits_vs_upstream_bf16"] <= P.LOGIT_TOL
    assert row["grad_vs_upstream_bf16"] <= max(P.GRAD_TOL, 2 * row["upstream_grad_bf16_vs_fp32"])
    assert math.isfinite(row["loss_gap_max"]) and len(row["loss_last"]) == 2
    assert len(list(tmp_path.glob("parity_checkpoints_*.json"))) == 1
