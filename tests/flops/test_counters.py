"""Other counters as shipped: golden values of torch's FlopCounterMode quirks per torch version,
and validate --model's counter columns with the cause of each difference."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from flopkit.flops.counters import PLAIN_COUNTERS, run_plain_counter

B, H, KV, T, D = 1, 4, 2, 8, 16

# torch major.minor -> what FlopCounterMode does. Add a row when a new torch is supported.
QUIRKS = {
    "2.13": {
        "cpu_sdpa_flops": 0,  # SDPA on CPU runs _scaled_dot_product_flash_attention_for_cpu: no formula
        "gqa_sdpa_formula": 2 * B * H * T * T * 2 * D,  # sdpa_flop_count takes GQA shapes (no assertion)
    },
}


@pytest.fixture
def quirks():
    version = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    if version not in QUIRKS:
        pytest.skip(f"no golden FlopCounterMode quirks recorded for torch {version}: add them to QUIRKS")
    return QUIRKS[version]


def test_flop_counter_mode_counts_cpu_sdpa_as_golden(quirks):
    q = torch.randn(B, H, T, D)
    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == quirks["cpu_sdpa_flops"]


def test_flop_counter_mode_sdpa_formula_with_gqa_shapes_is_golden(quirks):
    try:
        got = sdpa_flop_count((B, H, T, D), (B, KV, T, D), (B, KV, T, D))
    except AssertionError:
        got = "AssertionError"
    assert got == quirks["gqa_sdpa_formula"]


def test_meta_device_sdpa_is_two_bmm_whatever_the_version():
    """flopkit's measured counts rely on this: on meta, SDPA runs its math decomposition."""
    q = torch.empty(B, H, T, D, device="meta")
    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 2 * B * H * T * T * 2 * D


def test_plain_counter_columns_of_a_linear_model():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4, bias=False))
    x = torch.randn(3, 8)
    for name in PLAIN_COUNTERS:
        column = run_plain_counter(name, model, (x,))
        if column.error is not None and "not installed" in column.error:
            continue
        assert column.error is None, column.error
        # matmul: 2*3*8*16 + 2*3*16*4; ptflops also counts the first Linear's bias adds as MACs
        bias = 2 * 3 * 16 if name == "ptflops" else 0
        assert column.flops["matmul"] == 2 * 3 * 8 * 16 + 2 * 3 * 16 * 4 + bias, name


def test_validate_model_gives_each_counter_a_column_and_each_difference_a_cause():
    pytest.importorskip("transformers")
    pytest.importorskip("ptflops")
    from click.testing import CliRunner
    from flopkit.cli import app

    C, I, L, S = 64, 128, 2, 16
    args = ["validate", "--model", "hf:bert", "--model-arg", f"num_hidden_layers={L}", "--model-arg",
            f"hidden_size={C}", "--model-arg", "num_attention_heads=4", "--model-arg", f"intermediate_size={I}",
            "--model-arg", "vocab_size=100", "--seq-len", str(S), "--depth", "0", "--format", "json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    columns = {c["counter"]: c for c in json.loads(result.stdout)["counters"]}
    assert set(columns) == set(PLAIN_COUNTERS)
    data = json.loads(result.stdout)
    flopkit = data["totals"]["analytic"]
    for name in ("flopcountermode", "ptflops"):  # SDPA on CPU: a fused kernel neither has a formula for
        assert columns[name]["flops"]["attention"] == 0
        assert "_scaled_dot_product_flash_attention_for_cpu" in columns[name]["causes"]["attention"]
    assert "aten::scaled_dot_product_attention" in columns["fvcore"]["causes"]["attention"]
    # ptflops: each Linear bias add as a MAC: q, k, v, o (4C), intermediate (I), output (C) per token
    # and layer, and the pooler's C on the one CLS row
    bias_adds = L * S * (4 * C + I + C) + C
    assert columns["ptflops"]["flops"]["matmul"] == flopkit["matmul"] + 2 * bias_adds
    assert "bias" in columns["ptflops"]["causes"]["matmul"]
    assert columns["flopcountermode"]["flops"]["matmul"] == flopkit["matmul"]
    assert "matmul" not in columns["flopcountermode"]["causes"]
    # every category that differs has its cause
    for column in columns.values():
        differing = {c for c in flopkit if column["flops"].get(c, 0) != flopkit[c]}
        assert differing == set(column["causes"]), column["counter"]
