"""The meta replay against the same step run on real CPU tensors, traced the same way: the meta
kernels must allocate what real kernels allocate, in the same order, for ops without CUDA-specific
choices (no SDPA, no autocast)."""

import torch
from torch import nn

from flopkit.step_memory import memory
from flopkit.step_memory.step import StepHooks, create_optimizer_state, make_optimizer, run_step
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


def real_cpu_step(model: nn.Module, x: torch.Tensor) -> tuple[int, int, list[int]]:
    """Steady bytes, peak bytes and the live series of one traced SGD step on CPU tensors (SGD: AdamW's
    step counters are CPU scalars, which a CPU trace would count and a GPU never holds)."""
    model.train()
    optimizer = make_optimizer("sgd", list(model.parameters()))
    create_optimizer_state(optimizer)
    trace = AllocationTrace(device="cpu")
    trace.adopt([*model.parameters(), *model.buffers()], "parameters")
    trace.adopt([t for s in optimizer.state.values() for t in s.values() if t.dim() > 0], "optimizer_state")
    trace.adopt([x], "inputs")
    steady = trace.live
    start = len(trace.events)

    def phase(name):
        trace.phase = name

    with trace:
        run_step(model, (x,), {}, training=True, optimizer=optimizer, loss="ce", hooks=StepHooks(phase=phase))
    series = [e.live for e in trace.events[start:]]
    return steady, max([steady, *series]), series


def test_meta_replay_matches_a_traced_real_cpu_step():
    torch.manual_seed(0)
    model = mlp()
    x = torch.randn(64, 96)
    steady, peak, series = real_cpu_step(model, x)
    with torch.device("meta"):
        replica = mlp()
    predicted = memory(
        replica,
        args=(torch.empty(64, 96, device="meta"),),
        batch=64,
        training=True,
        optimizer="sgd",
        loss="ce",
        workspace_bytes=0,
    )
    assert predicted.steady_bytes == steady
    assert predicted.peak_bytes == peak
    step = [live for _, live, phase in predicted.timeline if phase != "setup"]
    assert step == series
