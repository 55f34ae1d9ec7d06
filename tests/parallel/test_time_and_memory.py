"""The step's pricing: ring bytes, compute against communication time, the bound, MFU/HFU, memory."""

import pytest
import torch

import flopkit
from flopkit.parallel import sharded_memory, step_time, wire_bytes


@pytest.mark.parametrize(
    ("kind", "payload", "n", "sent"),
    [
        ("all_gather", 800, 8, 700),
        ("reduce_scatter", 800, 4, 600),
        ("all_reduce", 800, 2, 800),
        ("all_reduce", 800, 8, 1400),
        ("all_gather", 800, 1, 0),
    ],
)
def test_ring_bytes_per_rank(kind, payload, n, sent):
    assert wire_bytes(kind, payload, n) == sent


def test_fsdp_traffic_longer_than_compute_plus_tp_is_the_bound():
    # 989e12 FLOPs at 989 TFLOP/s: 1000 ms; 450e9 bytes at 450 GB/s: 1000 ms
    t = step_time(989 * 10**12, 989 * 10**12, {"fsdp": 2 * 450 * 10**9, "tp": 0}, step_ms=4000.0)
    assert t.compute_ms == pytest.approx(1000.0) and t.comm_ms["fsdp"] == pytest.approx(2000.0)
    assert t.bound.startswith("data-parallel communication") and t.lower_bound_ms == pytest.approx(2000.0)
    assert t.mfu == pytest.approx(0.25) and t.hfu == pytest.approx(0.25)
    assert t.ridge == pytest.approx(989e12 / 450e9)


def test_tp_all_reduces_add_to_compute():
    t = step_time(989 * 10**12, 494.5 * 10**12, {"tp": 900 * 10**9, "fsdp": 450 * 10**9})
    # tp 2000 ms > compute 1000 ms; fsdp 1000 ms < compute + tp
    assert t.bound.startswith("tensor-parallel") and t.lower_bound_ms == pytest.approx(3000.0)
    assert t.mfu is None
    assert step_time(989 * 10**12, 0, {"fsdp": 10**9}).bound == "compute"


def test_rates_must_be_positive():
    with pytest.raises(ValueError, match="gbps must be positive, got 0"):
        step_time(1, 1, {}, gbps=0)
    with pytest.raises(ValueError, match="step_ms must be positive, got -1"):
        step_time(1, 1, {}, step_ms=-1)


def test_memory_is_the_shards_the_optimizer_states_and_the_units_held():
    m = sharded_memory(100, 100, 2, {"": 10, "layers.0": 40, "layers.1": 40}, 90)
    assert (m.params, m.grads, m.optimizer, m.unsharded_peak, m.largest_unit) == (100, 100, 200, 90, 40)
    assert m.total == 490


def test_flopkit_sharded_counts_a_preset_per_rank():
    result = flopkit.sharded("vit5-small", ["depth=1"], fsdp=2, tp=2, batch=2, step_ms=1.0)
    cfg = result.config
    assert (cfg.world, cfg.global_batch) == (4, 4)
    # each TP rank runs half the split matmuls plus the whole patch embedding and head
    assert 0 < result.tp_duplicated["matmul"] < result.single_device["matmul"]
    assert result.time.hfu >= result.time.mfu > 0
    assert result.memory.params == result.count.param_bytes and result.count.param_dtype == torch.bfloat16


def test_the_micro_batch_must_match_the_inputs():
    from flopkit.parallel import sharded_report

    with torch.device("meta"):
        model = flopkit.ViT5(image_size=32, hidden_dim=64, depth=1, num_heads=4, num_classes=10)
        images = torch.empty(4, 3, 32, 32)
    with pytest.raises(
        ValueError, match="batch=2 is the per-rank micro-batch, but the inputs' leading dimension is 4"
    ):
        sharded_report(model, (images,), fsdp=2, batch=2)
