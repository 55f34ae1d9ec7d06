"""The peak and the timeline of a toy step against a hand-computed allocation sequence."""

import torch
from torch import nn

from flopkit.step_memory import fit_batch, memory

F32 = 4


def toy() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(256, 256, bias=False), nn.Linear(256, 256, bias=False))


def test_two_linear_training_step_peaks_where_the_hand_timeline_does():
    batch = 512
    x = torch.empty(batch, 256, device="meta")
    result = memory(
        toy(), args=(x,), batch=batch, training=True, optimizer="none", loss="mse", workspace_bytes=0, depth=1
    )
    w = 256 * 256 * F32  # 262,144 per weight
    act = batch * 256 * F32  # 524,288 per [512, 256] activation
    scalar = 512  # a 4-byte tensor: one 512-byte block
    steady = 2 * w + act  # both weights and the input
    # forward: h1 = x W1^T, h2 = h1 W2^T; loss: targets (zeros like h2), then ATen's mse_loss writes
    # the per-element losses to an h2-sized buffer and returns their mean as a 0-d view into it:
    # the buffer lives as long as the loss.
    after_forward = steady + act + act + act + act
    # backward: ones_like(loss), then MseLossBackward allocates grad_h2 while h2 and the targets
    # are still held by its node: the peak. Later steps free h2, targets, h1 before allocating the
    # weight gradients (2 w < 3 act).
    peak = after_forward + scalar + act
    assert result.steady_bytes == steady
    assert result.peak_bytes == peak
    assert result.peak_phase == "backward"
    assert result.timeline[-1][1] == steady  # zero_grad(set_to_none=True) gives everything back
    assert result.gradients_bytes == 2 * w
    assert result.saved_bytes == act + act + act  # x (an input, saved by layer 0), h1, h2 + targets
    assert result.peak_breakdown == {
        "parameters": 2 * w,
        "gradients": 0,
        "optimizer_state": 0,
        "activations": 3 * act,  # h1, h2 and the targets, saved for the backward
        "inputs": act,
        "temporaries": act + scalar + act,  # the loss's buffer, its gradient, grad_h2
        "workspace": 0,
    }
    assert sum(result.peak_breakdown.values()) == result.peak_bytes


def test_per_op_cublas_workspace_spikes_at_the_largest_gemm_output():
    batch = 512
    x = torch.empty(batch, 256, device="meta")
    result = memory(
        toy(), args=(x,), batch=batch, training=True, optimizer="none", loss="mse", workspace_bytes=0,
        cublas_workspace="per_op", depth=0,
    )  # fmt: skip
    w, act, scalar, workspace = 256 * 256 * F32, batch * 256 * F32, 512, 32 * 1024**2
    # Layer 2's MmBackward: h2 and the targets are gone, the loss (a view into mse_loss's h2-sized
    # buffer) and its ones_like gradient (held by torch.autograd.backward until it returns) are not;
    # grad_h1, then grad_W2 (the larger output), then the 32 MiB workspace around that GEMM.
    live = 2 * w + act + act + act + scalar + act + act  # weights, x, h1, loss, ones, grad_h2, grad_h1
    assert result.peak_bytes == live + w + workspace
    assert result.peak_op == "aten.mm (cuBLAS workspace)" and result.peak_phase == "backward"
    assert result.steady_bytes == 2 * w + act  # nothing kept beyond the given workspace_bytes=0


def test_adamw_state_and_foreach_temporaries_put_the_peak_in_the_optimizer_step():
    batch = 8  # activations negligible: the optimizer step decides the peak
    x = torch.empty(batch, 256, device="meta")
    result = memory(toy(), args=(x,), batch=batch, training=True, loss="mse", workspace_bytes=0)
    w = 256 * 256 * F32
    assert result.optimizer_bytes == 2 * 2 * w  # exp_avg and exp_avg_sq per weight
    assert result.peak_phase == "optimizer"
    # parameters, state, gradients, input, and _foreach_sqrt(exp_avg_sq): one more weight-sized list
    assert result.peak_bytes == 2 * w + 4 * w + 2 * w + batch * 256 * F32 + 2 * w


def test_checkpointing_blocks_lowers_the_saved_bytes():
    common = dict(batch=8, training=True, autocast="bf16", depth=0)
    plain = memory("vit5-small", **common)
    ckpt = memory("vit5-small", checkpointing="blocks", **common)
    assert ckpt.settings["checkpointed_blocks"] == 12
    assert ckpt.saved_bytes < plain.saved_bytes / 5
    assert ckpt.peak_bytes < plain.peak_bytes


def test_fsdp_halves_gradients_and_optimizer_state_and_lowers_the_peak():
    one = memory("vit5-small", batch=2, training=True, depth=0)
    two = memory("vit5-small", batch=2, training=True, depth=0, fsdp=2)
    # Half, but for the 512-byte rounding of each small shard (norm weights, LayerScale gammas).
    assert one.gradients_bytes / 2 <= two.gradients_bytes < 0.51 * one.gradients_bytes
    assert two.optimizer_bytes == 2 * two.gradients_bytes
    assert two.peak_bytes < one.peak_bytes


def test_fit_returns_the_largest_batch_under_the_budget():
    options = dict(training=True, optimizer="sgd", loss="mse", input_shape=(256,))
    budget = memory(toy(), batch=100, **options).peak_bytes
    found = fit_batch(toy(), budget, **options)
    assert found.batch == 100  # the peak grows with the batch, so 100 is the largest that fits
    assert found.result.peak_bytes <= budget
    assert found.tried[found.batch + 1] > budget


def test_fsdp_shards_match_fully_shard_over_a_fake_process_group():
    """FSDP2's own sharding (fully_shard per block and the root, 2 ranks of torch's fake process
    group, on the meta device) gives each parameter ceil(dim0 / 2) rows: the per-rank parameter
    bytes flopkit predicts, buffers (never sharded) added."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from flopkit.models import load_model
    from flopkit.step_memory.cuda import block_bytes

    loaded = load_model("examples/vit5-tiny.yaml")
    predicted = memory(loaded, batch=2, training=True, depth=0, fsdp=2)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        model = load_model("examples/vit5-tiny.yaml").module
        mesh = init_device_mesh("cpu", (2,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        shards = sum(block_bytes(p.to_local().untyped_storage().nbytes()) for p in model.parameters())
        buffers = sum(block_bytes(b.untyped_storage().nbytes()) for b in model.buffers())
    finally:
        dist.destroy_process_group()
    assert predicted.parameters_bytes == shards + buffers
    assert predicted.gradients_bytes == shards
