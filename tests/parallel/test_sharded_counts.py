"""flopkit's per-rank counts of a sharded step against what each rank of a real run does.

flopkit counts rank 0 on fake tensors, recording collectives at the dispatcher. Here the same tiny
ViT-5 and Llama models run for real (CPU tensors, torch's fake process group: collectives return
at once, values are not exchanged) on every rank of 2- and 4-rank worlds, with counters of their
own:

* FLOPs: torch's ``FlopCounterMode`` whose mode lets DTensor ops through to DTensor (so it sees the
  local op each rank runs) and skips ops on FakeTensors (DTensor runs each op once more on
  global-shape fake tensors to propagate shapes); attention on SDPA's math path, so that
  FlopCounterMode sees it as two ``bmm``. Compared with flopkit's ``matmul + attention`` (the
  categories FlopCounterMode's own formulas cover).
* Collectives: the Python calls FSDP2 and DTensor make are wrapped (``dist.all_gather_single``,
  ``dist.reduce_scatter_single``, ``dist.all_reduce`` and the functional ``all_reduce``,
  ``all_gather_single``, ``reduce_scatter_single``; their older names where the installed torch
  predates these), recording each buffer's bytes.

The sharding itself is applied with flopkit's ``apply_plan`` (torch's ``parallelize_module`` and
``fully_shard``); the numerics of the TP plans are checked by ``test_tp_numerics.py``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections import Counter

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from _parallel_models import LLAMA
from torch.distributed.tensor import DTensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils import flop_counter
from torch.utils._pytree import tree_leaves

from flopkit.models import build_model
from flopkit.nn import ViT5
from flopkit.parallel import ParallelConfig, count_sharded
from flopkit.parallel.plan import fsdp_units
from flopkit.parallel.run import _meshes, apply_plan, check_sharding, clear_dtensor_caches

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

VIT = {"image_size": 32, "patch_size": 16, "hidden_dim": 64, "depth": 2, "num_heads": 4, "num_classes": 10}
BATCH, SEQ = 2, 8


def build(name: str, device: str) -> torch.nn.Module:
    if name == "llama":
        return build_model("hf:llama", LLAMA, device=device)
    with torch.device(device):
        return ViT5(**VIT)


def inputs(name: str, device: str) -> tuple[tuple, dict]:
    if name == "llama":
        return (), {"input_ids": torch.zeros(BATCH, SEQ, dtype=torch.long, device=device)}
    return (torch.randn(BATCH, 3, 32, 32, device=device),), {}


def llama_duplicated_flops(tp: int) -> int:
    """Work every TP rank repeats in Llama: the rotary table (positions times inverse frequencies,
    no gradient), measured on its own with FlopCounterMode. Transformers before 5.2x build it with a
    batched matmul; later ones with a broadcast product, which counts 0."""
    model = build("llama", "cpu")
    hidden = torch.zeros(1, SEQ, LLAMA["hidden_size"])
    positions = torch.arange(SEQ).unsqueeze(0)  # the one row of positions the model builds
    with flop_counter.FlopCounterMode(display=False) as counter:
        model.rotary_emb(hidden, positions)
    return (tp - 1) * counter.get_total_flops()


def vit_duplicated_flops(tp: int) -> int:
    """Matmul work every TP rank repeats in ViT-5 under flopkit's plan: the patch convolution and the
    head are outside the plan. Per step: the convolution's forward and weight gradient (the images need
    no gradient), the head's forward, input and weight gradients."""
    C, P, N, K = (
        VIT["hidden_dim"],
        VIT["patch_size"],
        (VIT["image_size"] // VIT["patch_size"]) ** 2,
        VIT["num_classes"],
    )
    conv = 2 * 3 * P * P * C * N * BATCH
    head = 2 * C * K * BATCH
    return (tp - 1) * (2 * conv + 3 * head)


class _LocalOps(flop_counter._FlopCounterMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(issubclass(t, DTensor) for t in types):
            return NotImplemented
        if any(isinstance(a, torch._subclasses.FakeTensor) for a in tree_leaves((args, kwargs))):
            return func(*args, **(kwargs or {}))
        return super().__torch_dispatch__(func, types, args, kwargs)


class LocalFlopCounter(flop_counter.FlopCounterMode):
    def __enter__(self):
        self.flop_counts.clear()
        self.mod_tracker.__enter__()
        self.mode = _LocalOps(self)
        self.mode.__enter__()
        return self


class WrappedCollectives:
    """Wraps the Python collective calls of FSDP2 (``torch.distributed``) and DTensor (functional
    collectives); records ``(phase, kind) -> [calls, payload bytes]``."""

    def __init__(self) -> None:
        self.phase = "forward"
        self.seen: dict[tuple[str, str], list[int]] = {}

    def add(self, kind: str, nbytes: int) -> None:
        entry = self.seen.setdefault((self.phase, kind), [0, 0])
        entry[0] += 1
        entry[1] += nbytes

    @contextlib.contextmanager
    def wrapping(self):
        # (module, function names, newest first) -> (kind, the argument whose bytes are the payload;
        # None: the result). torch 2.13 names the collectives *_single and keeps the older names as
        # deprecated aliases that call them; torch 2.11 has only the older names. One name is
        # wrapped per entry, the first the installed torch has, so no call is counted twice.
        candidates = {
            (dist, ("all_gather_single", "all_gather_into_tensor")): ("all_gather", "output_tensor"),
            (dist, ("reduce_scatter_single", "reduce_scatter_tensor")): ("reduce_scatter", "input"),
            (dist, ("all_reduce",)): ("all_reduce", "tensor"),
            (funcol, ("all_reduce",)): ("all_reduce", "self"),
            (funcol, ("reduce_scatter_single", "reduce_scatter_tensor")): ("reduce_scatter", "self"),
            (funcol, ("all_gather_single", "all_gather_tensor")): ("all_gather", None),
        }
        targets = {}
        for (module, names), target in candidates.items():
            name = next((n for n in names if hasattr(module, n)), None)
            assert name is not None, f"{module.__name__} has none of {names}"
            targets[module, name] = target

        def wrap(fn, kind, arg):
            signature = inspect.signature(fn)

            def call(*args, **kwargs):
                out = fn(*args, **kwargs)
                tensor = out if arg is None else signature.bind(*args, **kwargs).arguments[arg]
                self.add(kind, tensor.numel() * tensor.element_size())
                return out

            return call

        saved = []
        for (module, name), (kind, arg) in targets.items():
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, wrap(getattr(module, name), kind, arg))
        try:
            yield self
        finally:
            for module, name, fn in saved:
                setattr(module, name, fn)


def real_rank_step(name: str, config: ParallelConfig, rank: int, dtype: torch.dtype):
    """One training step of rank ``rank``: its FlopCounterMode total and its wrapped collectives."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    torch.manual_seed(0)
    model = build(name, "cpu").train()
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=config.world)
    try:
        plan = check_sharding(model, config)
        tp_mesh, dp_mesh, _ = _meshes(config)
        units = fsdp_units(model) if dp_mesh is not None else []
        apply_plan(model, plan, units, tp_mesh, dp_mesh, dtype, torch.float32)
        args, kwargs = inputs(name, "cpu")
        recorder = WrappedCollectives()
        autocast = (
            torch.autocast("cpu", dtype=dtype)
            if dp_mesh is None and dtype != torch.float32
            else contextlib.nullcontext()
        )
        with recorder.wrapping(), sdpa_kernel(SDPBackend.MATH), LocalFlopCounter(display=False) as counter:
            with autocast:
                out = model(*args, **kwargs)
                out = out if isinstance(out, torch.Tensor) else out.last_hidden_state
            recorder.phase = "backward"
            out.sum().backward()
    finally:
        dist.destroy_process_group()
        clear_dtensor_caches()
    return counter.get_total_flops(), recorder.seen


def single_device_flops(name: str) -> int:
    torch.manual_seed(0)
    model = build(name, "cpu").train()
    args, kwargs = inputs(name, "cpu")
    with sdpa_kernel(SDPBackend.MATH), flop_counter.FlopCounterMode(display=False) as counter:
        out = model(*args, **kwargs)
        out = out if isinstance(out, torch.Tensor) else out.last_hidden_state
        out.sum().backward()
    return counter.get_total_flops()


def flopkit_rank0(name: str, config: ParallelConfig, dtype: torch.dtype):
    model = build(name, "meta")
    args, kwargs = inputs(name, "meta")
    return count_sharded(model, args, kwargs, config, param_dtype=dtype)


CONFIGS = [
    pytest.param(ParallelConfig(fsdp=2, batch=BATCH), torch.float32, id="fsdp2"),
    pytest.param(ParallelConfig(tp=2, batch=BATCH), torch.float32, id="tp2"),
    pytest.param(ParallelConfig(fsdp=2, tp=2, batch=BATCH), torch.bfloat16, id="fsdp2xtp2-bf16"),
    pytest.param(ParallelConfig(tp=4, batch=BATCH), torch.float32, id="tp4"),
    pytest.param(ParallelConfig(dp_replicate=2, fsdp=2, batch=BATCH), torch.float32, id="hsdp2x2"),
]


@pytest.mark.parametrize("name", ["vit5", "llama"])
@pytest.mark.parametrize(("config", "dtype"), CONFIGS)
def test_each_rank_runs_flopkits_flops_and_rank0_sends_its_collectives(name, config, dtype):
    count = flopkit_rank0(name, config, dtype)
    top = count.total("")
    flopkit_flops = top["matmul"] + top["attention"]
    flopkit_calls: dict[tuple[str, str], list[int]] = {}
    for call in count.collectives:
        entry = flopkit_calls.setdefault((call.phase, call.kind), [0, 0])
        entry[0] += 1
        entry[1] += call.payload_bytes
    per_rank = []
    for rank in range(config.world):
        flops, seen = real_rank_step(name, config, rank, dtype)
        per_rank.append(flops)
        assert flops == flopkit_flops, f"rank {rank}"
        if rank == 0:
            assert seen == flopkit_calls
    # The ranks together: every data-parallel replica runs the single-device step once, plus the work
    # each TP rank repeats (in Llama, whose matmuls the plan all splits, only the rotary table).
    duplicated = (vit_duplicated_flops if name == "vit5" else llama_duplicated_flops)(config.tp)
    assert sum(per_rank) == config.data_parallel * (single_device_flops(name) + duplicated)


def test_tp_splits_collectives_as_megatron_does():
    """Per block under TP: one forward all-reduce per rowwise layer (attention out, MLP out) and one
    backward all-reduce per colwise layer's input gradient; the all-reduced tensor is [B, T, C]."""
    count = flopkit_rank0("vit5", ParallelConfig(tp=2, batch=BATCH), torch.float32)
    tokens = (VIT["image_size"] // VIT["patch_size"]) ** 2 + 1 + 4
    activation = BATCH * tokens * VIT["hidden_dim"] * 4
    forward = [c for c in count.collectives if c.phase == "forward"]
    backward = [c for c in count.collectives if c.phase == "backward"]
    assert [c.module for c in forward] == [
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc2",
        "blocks.1.attn.proj",
        "blocks.1.mlp.fc2",
    ]
    assert sorted(c.module for c in backward) == [
        "blocks.0.attn.qkv",
        "blocks.0.mlp.fc1",
        "blocks.1.attn.qkv",
        "blocks.1.mlp.fc1",
    ]
    assert all(c.kind == "all_reduce" and c.payload_bytes == activation for c in count.collectives)
    assert all(c.wire_bytes == activation for c in count.collectives)  # 2 (n-1)/n with n = 2


def test_fsdp_all_gathers_each_unit_and_reduce_scatters_its_gradients():
    count = flopkit_rank0("llama", ParallelConfig(fsdp=4, batch=BATCH), torch.bfloat16)
    C, I, V = LLAMA["hidden_size"], LLAMA["intermediate_size"], LLAMA["vocab_size"]
    layer = 4 * C * C + 3 * C * I + 2 * C
    assert count.units == ["layers.0", "layers.1"]
    assert count.unit_bytes == {"": (V * C + C) * 2, "layers.0": layer * 2, "layers.1": layer * 2}
    by = Counter((c.phase, c.kind, c.module) for c in count.collectives)
    assert by[("forward", "all_gather", "layers.0")] == by[("forward", "all_gather", "layers.1")] == 1
    # gradients reduce in float32: the unsharded size at 4 bytes
    scatter = {c.module: c.payload_bytes for c in count.collectives if c.kind == "reduce_scatter"}
    assert scatter == {"": (V * C + C) * 4, "layers.0": layer * 4, "layers.1": layer * 4}
    # rank 0 holds a quarter of every parameter, in float32
    assert count.param_bytes == (V * C + C + 2 * layer) * 4 // 4
