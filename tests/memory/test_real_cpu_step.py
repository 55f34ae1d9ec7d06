"""The meta replay against the same step run on real CPU tensors, traced the same way: the meta
kernels must allocate what real kernels allocate, in the same order, for ops without CUDA-specific
choices (no SDPA, no autocast)."""

import pytest
import torch
from torch import nn

from flopkit.step_memory import memory
from flopkit.step_memory.step import StepHooks, make_optimizer, run_step
from flopkit.step_memory.trace import AllocationTrace


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(96, 192),
        nn.LayerNorm(192),
        nn.GELU(),
        nn.Linear(192, 96),
        nn.LayerNorm(96),
        nn.Linear(96, 10),
    )


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2's sharded parameters and state), else the tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


def real_cpu_step(
    model: nn.Module, x: torch.Tensor, loss: str = "ce"
) -> tuple[int, int, list[tuple[int, str]]]:
    """Steady bytes, peak bytes and the live series of one traced SGD step on CPU tensors, after a
    first step (SGD: AdamW's step counters are CPU scalars, which a CPU trace would count and a GPU
    never holds)."""
    model.train()
    optimizer = make_optimizer("sgd", list(model.parameters()))
    run_step(model, (x,), {}, training=True, optimizer=optimizer, loss=loss)
    trace = AllocationTrace(device="cpu")
    trace.adopt([local(t) for t in (*model.parameters(), *model.buffers())], "parameters")
    trace.adopt([local(t) for s in optimizer.state.values() for t in s.values()], "optimizer_state")
    trace.adopt([x], "inputs")
    steady = trace.live
    start = len(trace.events)

    def phase(name):
        trace.phase = name

    with trace:
        run_step(model, (x,), {}, training=True, optimizer=optimizer, loss=loss, hooks=StepHooks(phase=phase))
    series = [(e.live, e.phase) for e in trace.events[start:]]
    return steady, max([steady, *(live for live, _ in series)]), series


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_meta_replay_matches_a_traced_real_cpu_step(loss):
    torch.manual_seed(0)
    model = mlp()
    x = torch.randn(64, 96)
    steady, peak, series = real_cpu_step(model, x, loss)
    with torch.device("meta"):
        replica = mlp()
    predicted = memory(
        replica,
        args=(torch.empty(64, 96, device="meta"),),
        batch=64,
        training=True,
        optimizer="sgd",
        loss=loss,
        workspace_bytes=0,
    )
    assert predicted.steady_bytes == steady
    assert predicted.peak_bytes == peak
    # Once the backward is done every gradient is a shard and FSDP2's buffers are gone.
    after_backward = [live for live, phase in series if phase == "backward"][-1]
    assert [live for _, live, phase in predicted.timeline if phase == "backward"][-1] == after_backward
    step = [(live, phase) for _, live, phase in predicted.timeline if phase != "setup"]
    assert step == series


def blocks_of_mlps() -> nn.Module:
    return nn.Sequential(
        *[nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256)) for _ in range(4)]
    )


def test_fsdp_prediction_equals_a_traced_fsdp2_step():
    """FSDP2 itself (fully_shard on each block and the root, rank 0 of 2 of torch's fake process
    group, CPU tensors) traced like the replay: the predicted per-rank steady state and peak are its
    bytes exactly (all-gather outputs, unsharded parameters, reduce-scatter buffers, shards)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    torch.manual_seed(0)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        model = blocks_of_mlps()
        mesh = init_device_mesh("cpu", (2,))
        for block in model:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        steady, peak, series = real_cpu_step(model, torch.randn(512, 256), "mse")
    finally:
        dist.destroy_process_group()
    with torch.device("meta"):
        replica = blocks_of_mlps()
    predicted = memory(
        replica,
        args=(torch.empty(512, 256, device="meta"),),
        batch=512,
        training=True,
        optimizer="sgd",
        loss="mse",
        fsdp=2,
        workspace_bytes=0,
        depth=0,
    )
    assert predicted.steady_bytes == steady
    assert predicted.peak_bytes == peak
    # Once the backward is done every gradient is a shard and FSDP2's buffers are gone.
    after_backward = [live for live, phase in series if phase == "backward"][-1]
    assert [live for _, live, phase in predicted.timeline if phase == "backward"][-1] == after_backward
