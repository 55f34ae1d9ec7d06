"""Known counter blind spots: each entry makes validate read EXPLAINED, with exactly the FLOPs it hides."""

from collections import Counter

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from flopkit.flops.blind_spots import (
    KNOWN_BLIND_SPOTS,
    blind_spot,
    hidden_calls,
    hidden_flops,
    hidden_op,
    parse_hidden_op,
)
from flopkit.flops.measured import Measurement
from flopkit.flops.reconcile import reconcile_rows
from flopkit.flops.summary import validate_model
from flopkit.models import model_inputs

B, T, E, H = 2, 16, 64, 4


class WithMultiheadAttention(nn.Module):
    """A standard nn.MultiheadAttention (batch_first: fvcore's trace takes the fused inference path)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(E, H, batch_first=True)
        self.fc = nn.Linear(E, 10)

    def forward(self, x):
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.fc(y)


class WithBaddbmm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(B, E, 8))
        self.b = nn.Parameter(torch.zeros(B, T, 8))

    def forward(self, x):
        return torch.baddbmm(self.b, x, self.w)


def build_mha() -> nn.Module:
    return WithMultiheadAttention()


def build_baddbmm() -> nn.Module:
    return WithBaddbmm()


# op -> (factory spec, the FLOPs one forward hides from fvcore, by hand)
HIDDEN_BY_HAND = {
    "aten::_native_multi_head_attention": (
        f"{__name__}:build_mha",
        {
            "matmul": 4 * 2 * B * T * E * E,  # q, k, v and output projections
            "attention": 2 * 2 * B * T * T * E,  # QK^T and AV
            "elementwise": 4 * B * T * E,  # their bias adds
        },
    ),
    "aten::baddbmm": (f"{__name__}:build_baddbmm", {"attention": 2 * B * T * E * 8}),
}


def test_every_known_blind_spot_has_a_test_case():
    assert {s.op for s in KNOWN_BLIND_SPOTS} == set(HIDDEN_BY_HAND)
    assert all(s.cause and s.counter in ("fvcore", "torch") for s in KNOWN_BLIND_SPOTS)


@pytest.mark.parametrize("op", sorted(HIDDEN_BY_HAND))
def test_a_blind_spot_reads_explained_with_the_flops_it_hides(op):
    from flopkit.models import build_model

    spec, by_hand = HIDDEN_BY_HAND[op]
    model = build_model(spec)
    rec = validate_model(model, model_inputs(model, batch=B, input_shape=(T, E)), spec=spec)
    assert rec.verdict == "EXPLAINED" and rec.ok
    assert rec.blind_spots == {"fvcore": {op: 1}}
    assert {c: v for c, v in rec.hidden["fvcore"].items() if v} == by_hand
    assert rec.rows[0].status["torch"] == "ok"
    assert rec.rows[0].status["fvcore"].startswith("EXPLAINED") and op in rec.rows[0].status["fvcore"]
    assert any(line.startswith(f"fvcore blind spot: {op} x1") for line in rec.notes)


def test_hidden_op_names_round_trip_and_sum_by_category():
    name = hidden_op("aten::baddbmm", "attention")
    assert parse_hidden_op(name) == ("aten::baddbmm", "attention")
    assert parse_hidden_op("aten::bmm") is None
    ops = {name: 10, hidden_op("aten::baddbmm", "calls"): 2, "aten::bmm": 5}
    assert hidden_flops(ops) == {"attention": 10}
    assert hidden_calls(ops) == Counter({"aten::baddbmm": 2})
    assert blind_spot("fvcore", "aten::baddbmm") is not None and blind_spot("torch", "aten::baddbmm") is None


def _measurement(counter, matmul, hidden_matmul=0):
    raw = {"": Counter({"addmm": matmul // 2})}
    if hidden_matmul:
        raw[""][hidden_op("aten::_native_multi_head_attention", "matmul")] = hidden_matmul
        raw[""][hidden_op("aten::_native_multi_head_attention", "calls")] = 1
    return Measurement(counter, {"": {"matmul": matmul}}, raw, {""}, Counter(), {"matmul"})


class _Row:
    path, type, counted_in = "", "M", None

    def __init__(self, matmul):
        self.breakdown = {"matmul": matmul, "attention": 0, "norm": 0, "rope": 0, "elementwise": 0}


@pytest.mark.parametrize(
    ("measured", "hidden", "verdict"),
    [
        (100, 0, "OK"),
        (60, 40, "EXPLAINED"),
        (60, 30, "MISMATCH"),  # the blind spot hides less than the difference
        (60, 0, "MISMATCH"),  # a difference no blind spot accounts for
        (120, 0, "MISMATCH"),  # a counter that counts more
    ],
)
def test_only_a_difference_a_blind_spot_makes_up_exactly_is_explained(measured, hidden, verdict):
    rec = reconcile_rows(nn.Identity(), [_Row(100)], [_measurement("fvcore", measured, hidden)])
    assert rec.verdict == verdict and rec.ok == (verdict != "MISMATCH")


def test_validate_cli_on_multihead_attention_is_explained_with_exit_0(tmp_path):
    from flopkit.cli import app

    result = CliRunner().invoke(
        app, ["validate", "--model", f"{__name__}:build_mha", "--input-shape", f"{T},{E}", "--batch", str(B)]
    )
    assert result.exit_code == 0, result.output
    assert (
        "fvcore: EXPLAINED matmul+attention (blind spot: aten::_native_multi_head_attention)" in result.stdout
    )
    assert result.stdout.rstrip().splitlines()[-1].startswith("EXPLAINED: every difference is work that")
    assert "MISMATCH" not in result.stdout
