"""One rank of a sharded training step, run for real by torch on fake tensors, with what it computes
and what it sends counted.

:func:`count_sharded` takes a model built on the meta device and:

1. starts torch's fake process group (``torch.testing._internal.distributed.fake_pg``: every
   collective returns at once) with ``world`` ranks, this process being rank 0, and a device mesh
   ``(dp_replicate, fsdp, tp)``;
2. applies torch's own APIs to the model, still on the meta device: ``parallelize_module`` with the
   TP plan on the ``tp`` mesh dimension, then ``fully_shard`` on each FSDP unit and on the root (on the
   ``fsdp`` dimension, or ``(dp_replicate, fsdp)`` for HSDP), with a ``MixedPrecisionPolicy``;
3. materialises the parameters as fake CPU tensors (``FakeTensorMode``: shapes, no memory) and runs a
   forward and a backward (``loss = sum of the outputs``) on a micro-batch, with attention on SDPA's
   math path (two ``bmm``, as on the meta device);
4. counts, on the way: FLOPs with ``FlopCounterMode`` on the local tensors only (a DTensor op is let
   through to DTensor first, so the counter sees the shard each rank multiplies; the global-shape
   ops DTensor runs to propagate shapes are not counted), and every collective the step issues
   (FSDP2's ``all_gather_into_tensor``/``reduce_scatter_tensor``/``all_reduce``, DTensor's functional
   collectives) with its buffer size, process group, module and phase.

Rank 0 is the rank reported; with uneven FSDP shards it holds the largest (``ceil``) one.
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .plan import FUSED_QKV, ParallelConfig, TensorParallelPlan, check_tp_divides, fsdp_units, resolve_tp_plan

__all__ = [
    "COLLECTIVE_KINDS",
    "CollectiveCall",
    "ShardedCount",
    "count_sharded",
    "wire_bytes",
    "fake_world",
    "clear_dtensor_caches",
    "apply_plan",
    "check_sharding",
    "collectives_by",
]

COLLECTIVE_KINDS: tuple[str, ...] = ("all_gather", "reduce_scatter", "all_reduce", "all_to_all", "broadcast")


def wire_bytes(kind: str, payload: int, group_size: int) -> int:
    """Bytes one rank sends (and receives) for a collective on ``payload`` bytes over ``group_size``
    ranks, with the ring algorithm (NCCL's bus-bandwidth model): all-gather, reduce-scatter and
    all-to-all ``payload * (n - 1) / n`` (the payload being the gathered or reduced buffer),
    all-reduce twice that, broadcast ``payload``. Rounded to whole bytes."""
    n = group_size
    if n <= 1:
        return 0
    if kind == "all_reduce":
        return round(2 * payload * (n - 1) / n)
    if kind == "broadcast":
        return payload
    return round(payload * (n - 1) / n)


@dataclass
class CollectiveCall:
    """One collective as this rank issued it."""

    kind: str  # one of COLLECTIVE_KINDS
    op: str  # the torch op, e.g. "c10d._allgather_base_"
    group: str  # the mesh dimension(s) it runs over: "fsdp", "tp", "dp_replicate"
    group_size: int
    payload_bytes: (
        int  # gathered output (all-gather), reduced input (reduce-scatter), the tensor (all-reduce)
    )
    wire_bytes: int  # sent per rank, ring algorithm (wire_bytes())
    module: str  # innermost module path it was issued in ("" the root); an FSDP unit for FSDP's
    phase: str  # "forward" or "backward"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ShardedCount:
    """What rank 0 computes, sends and holds in one training step (forward + backward)."""

    config: ParallelConfig
    plan: TensorParallelPlan | None
    units: list[str]  # FSDP units (fully_shard before the root), [] without FSDP
    forward: dict[str, dict[str, int]]  # module path -> category -> FLOPs (descendants included)
    backward: dict[str, dict[str, int]]
    collectives: list[CollectiveCall]
    local_params: dict[str, int]  # module path -> parameter elements this rank holds (descendants included)
    param_bytes: int  # this rank's parameter shards, in the parameters' dtype
    grad_bytes: int  # this rank's gradient shards (parameters that require grad)
    unit_bytes: dict[str, int]  # FSDP unit -> its all-gathered (unsharded) parameters, in param_dtype
    peak_unsharded_bytes: int  # the most unsharded FSDP parameters held at one time in the step
    param_dtype: torch.dtype
    reduce_dtype: torch.dtype
    types: dict[str, str] = field(default_factory=dict)  # module path -> class name
    param_shards: dict[str, int] = field(default_factory=dict)  # parameter name -> this rank's bytes of it

    def total(self, path: str = "") -> dict[str, int]:
        """Forward + backward FLOPs by category of the module at ``path``."""
        f, b = self.forward.get(path, {}), self.backward.get(path, {})
        return {c: f.get(c, 0) + b.get(c, 0) for c in {*f, *b}}


# ---------------------------------------------------------------------------------- the fake world


@contextlib.contextmanager
def fake_world(world: int) -> Iterator[None]:
    """torch's fake process group of ``world`` ranks for the block, this process rank 0."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError(
            "counting a sharded run starts its own fake process group, but torch.distributed is already "
            "initialized in this process; call it from a process without one"
        )
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()
        clear_dtensor_caches()


def clear_dtensor_caches() -> None:
    """Forget what DTensor cached about meshes: a mesh compares equal to one of an earlier (destroyed)
    world with the same layout, so cached sharding decisions would send a later world's collectives
    to process groups that no longer exist."""
    import sys

    if "torch.distributed.tensor" not in sys.modules:
        return
    from torch.distributed.tensor import DTensor, _redistribute
    from torch.distributed.tensor._collective_utils import MeshTopoInfo
    from torch.distributed.tensor._sharding_prop import ShardingPropagator

    propagator = DTensor._op_dispatcher.sharding_propagator
    for cached in (
        propagator.propagate_op_sharding,
        ShardingPropagator._propagate_tensor_meta_cached,
        getattr(_redistribute, "_gen_transform_infos", None),
        MeshTopoInfo.build_from_mesh,
    ):
        if cached is not None and hasattr(cached, "cache_clear"):
            cached.cache_clear()
    native = getattr(torch._C, "_clear_DTensor_sharding_propagator_cache", None)
    if native is not None:  # the C++ dispatch fast path's own cache
        native()
    planners = getattr(_redistribute, "_planner_cache", None)
    if isinstance(planners, dict):
        planners.clear()


def _meshes(config: ParallelConfig):
    """``(tp mesh or None, data-parallel mesh or None, {process group name: mesh dimension})``."""
    from torch.distributed.device_mesh import init_device_mesh

    names = ("dp_replicate", "fsdp", "tp")
    mesh = init_device_mesh("cpu", (config.dp_replicate, config.fsdp, config.tp), mesh_dim_names=names)
    groups = {mesh.get_group(name).group_name: name for name in names}
    tp = mesh["tp"] if config.tp > 1 else None
    if config.dp_replicate > 1:
        dp = mesh["dp_replicate", "fsdp"]
    elif config.fsdp > 1:
        dp = mesh["fsdp"]
    else:
        dp = None
    return tp, dp, groups


def _fused_qkv_style():
    """``ColwiseParallel`` for a fused ``[3C, C]`` q/k/v projection: each of q, k and v split by heads,
    so rank ``r`` holds rows ``[q_r; k_r; v_r]`` and its output ``[..., 3 * C / tp]`` views as
    ``(3, H / tp, D)``. The DTensor's global rows are in that rank-major order (a permutation of the
    module's q, k, v rows); the local shards, what each rank multiplies, are exactly Megatron's."""
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel

    class FusedQKVColwise(ColwiseParallel):
        def _partition_linear_fn(self, name, module, device_mesh):
            rank, size = device_mesh.get_local_rank(), device_mesh.size()
            for pname, param in list(module.named_parameters()):
                parts = param.detach().chunk(3, dim=0)
                local = torch.cat([part.chunk(size, dim=0)[rank] for part in parts], dim=0)
                dt = DTensor.from_local(
                    local, device_mesh, [Shard(0)], run_check=False, shape=param.shape, stride=param.stride()
                )
                module.register_parameter(pname, nn.Parameter(dt, requires_grad=param.requires_grad))

    return FusedQKVColwise()


def apply_plan(
    model: nn.Module,
    plan: TensorParallelPlan | None,
    units: list[str],
    tp_mesh,
    dp_mesh,
    param_dtype: torch.dtype,
    reduce_dtype: torch.dtype,
) -> None:
    """Tensor parallelism, then FSDP2, on ``model`` in place (torch's APIs, nothing of flopkit's)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    if tp_mesh is not None and plan is not None:
        styles = {
            path: _fused_qkv_style()
            if style == FUSED_QKV
            else (ColwiseParallel() if style == "colwise" else RowwiseParallel())
            for path, style in plan.styles.items()
        }
        parallelize_module(model, tp_mesh, styles)
    if dp_mesh is not None:
        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
        modules = dict(model.named_modules())
        for path in units:
            fully_shard(modules[path], mesh=dp_mesh, mp_policy=policy)
        fully_shard(model, mesh=dp_mesh, mp_policy=policy)


# ---------------------------------------------------------------------------------- counting


class _Propagation:
    """True while DTensor propagates shapes: it runs each op once more on global-shape fake tensors
    (``ShardingPropagator._propagate_tensor_meta_non_cached``), which is no work of this rank."""

    active = 0

    @classmethod
    @contextlib.contextmanager
    def watched(cls) -> Iterator[None]:
        from torch.distributed.tensor._sharding_prop import ShardingPropagator

        original = getattr(ShardingPropagator, "_propagate_tensor_meta_non_cached", None)
        if original is None:
            raise RuntimeError(
                f"torch {torch.__version__}: DTensor's ShardingPropagator has no _propagate_tensor_meta_non_cached, "
                "so its global-shape propagation cannot be told from the rank's own work"
            )

        def propagate(self, *args, **kwargs):
            cls.active += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                cls.active -= 1

        ShardingPropagator._propagate_tensor_meta_non_cached = propagate
        try:
            yield
        finally:
            ShardingPropagator._propagate_tensor_meta_non_cached = original


def _local_counter_cls():
    """A ``FlopCounterMode`` that counts the ops on local tensors only: it lets DTensor ops through
    to DTensor (which runs the local op, seen next) and skips DTensor's shape propagation."""
    from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode

    from flopkit.flops.measured import has_dtensor

    class _LocalMode(_FlopCounterMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if has_dtensor(types):
                return NotImplemented
            if _Propagation.active:
                return func(*args, **(kwargs or {}))
            return super().__torch_dispatch__(func, types, args, kwargs)

    class LocalFlopCounterMode(FlopCounterMode):
        def __enter__(self):
            self.flop_counts.clear()
            self.mod_tracker.__enter__()
            self.mode = _LocalMode(self)
            self.mode.__enter__()
            return self

    return LocalFlopCounterMode


def _collective_table() -> dict[Any, tuple[str, Any]]:
    """torch op -> (kind, ``args -> (payload bytes, process group or group name)``)."""
    c10d = torch.ops.c10d
    fc = torch.ops._c10d_functional
    fca = torch.ops._c10d_functional_autograd

    def nbytes(t) -> int:
        if isinstance(t, (list, tuple)):
            return sum(nbytes(x) for x in t)
        return t.numel() * t.element_size()

    table: dict[Any, tuple[str, Any]] = {}

    def add(packet, overload: str, kind: str, reader) -> None:
        op = getattr(packet, overload, None) if packet is not None else None
        if op is not None:
            table[op] = (kind, reader)

    add(getattr(c10d, "_allgather_base_", None), "default", "all_gather", lambda a: (nbytes(a[0]), a[2]))
    add(getattr(c10d, "allgather_", None), "default", "all_gather", lambda a: (nbytes(a[0]), a[2]))
    add(getattr(c10d, "allgather_into_tensor_coalesced_", None), "default", "all_gather",
        lambda a: (nbytes(a[0]), a[2]))  # fmt: skip
    add(getattr(c10d, "_reduce_scatter_base_", None), "default", "reduce_scatter",
        lambda a: (nbytes(a[1]), a[2]))  # fmt: skip
    add(getattr(c10d, "reduce_scatter_", None), "default", "reduce_scatter", lambda a: (nbytes(a[1]), a[2]))
    add(getattr(c10d, "reduce_scatter_tensor_coalesced_", None), "default", "reduce_scatter",
        lambda a: (nbytes(a[1]), a[2]))  # fmt: skip
    add(getattr(c10d, "allreduce_", None), "default", "all_reduce", lambda a: (nbytes(a[0]), a[1]))
    add(getattr(c10d, "allreduce_coalesced_", None), "default", "all_reduce", lambda a: (nbytes(a[0]), a[1]))
    add(getattr(c10d, "broadcast_", None), "default", "broadcast", lambda a: (nbytes(a[0]), a[1]))
    add(getattr(c10d, "alltoall_base_", None), "default", "all_to_all", lambda a: (nbytes(a[1]), a[2]))
    for packet in (fc, fca):
        add(getattr(packet, "all_reduce", None), "default", "all_reduce", lambda a: (nbytes(a[0]), a[2]))
        add(getattr(packet, "all_reduce_", None), "default", "all_reduce", lambda a: (nbytes(a[0]), a[2]))
        add(getattr(packet, "all_reduce_coalesced", None), "default", "all_reduce",
            lambda a: (nbytes(a[0]), a[2]))  # fmt: skip
        add(getattr(packet, "all_gather_into_tensor", None), "default", "all_gather",
            lambda a: (nbytes(a[0]) * a[1], a[2]))  # fmt: skip
        add(getattr(packet, "all_gather_into_tensor_coalesced", None), "default", "all_gather",
            lambda a: (nbytes(a[0]) * a[1], a[2]))  # fmt: skip
        add(getattr(packet, "reduce_scatter_tensor", None), "default", "reduce_scatter",
            lambda a: (nbytes(a[0]), a[3]))  # fmt: skip
        add(getattr(packet, "reduce_scatter_tensor_coalesced", None), "default", "reduce_scatter",
            lambda a: (nbytes(a[0]), a[3]))  # fmt: skip
        add(getattr(packet, "all_to_all_single", None), "default", "all_to_all",
            lambda a: (nbytes(a[0]), a[3]))  # fmt: skip
        add(getattr(packet, "broadcast", None), "default", "broadcast", lambda a: (nbytes(a[0]), a[2]))
    return table


class _StepObserver:
    """Records collectives (a dispatch mode inside the counters), the phase, the FLOPs at the start of
    the backward, and which FSDP units are unsharded at a time (their ``unshard``, ``reshard`` and
    ``post_backward`` wrapped on the instance)."""

    def __init__(self, groups: dict[str, str], unit_groups: dict[str, list]) -> None:
        self.groups = groups
        self.unit_groups = unit_groups
        self.calls: list[CollectiveCall] = []
        self.phase = "forward"
        self.unit: str | None = None
        self.tracker = None
        self.forward_snapshot: dict[str, Counter] = {}
        self.unit_bytes: dict[str, int] = {}
        self.live: set[str] = set()
        self.peak_unsharded = 0

    # -- the phase and the forward FLOPs
    def backward_starts(self, raw: dict[str, Counter]) -> None:
        self.phase = "backward"
        self.forward_snapshot = raw

    # -- FSDP units
    def _wrap(self, path: str, group) -> list[tuple[Any, str]]:
        observer = self
        originals = []

        def within(name: str, after=None):
            original = getattr(group, name)
            originals.append((group, name))

            def call(*args, **kwargs):
                outer, observer.unit = observer.unit, path
                try:
                    return original(*args, **kwargs)
                finally:
                    observer.unit = outer
                    if after is not None:
                        after()

            setattr(group, name, call)

        def unsharded():
            if path in self.unit_bytes:
                observer.live.add(path)
                held = sum(observer.unit_bytes[p] for p in observer.live)
                observer.peak_unsharded = max(observer.peak_unsharded, held)

        within("unshard", unsharded)
        within("post_backward")
        within("reshard", lambda: observer.live.discard(path))
        return originals

    @contextlib.contextmanager
    def recording(self, tracker) -> Iterator[None]:
        from torch.utils._python_dispatch import TorchDispatchMode

        from flopkit.flops.measured import has_dtensor

        self.tracker = tracker
        table = _collective_table()
        observer = self

        class _Collectives(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if has_dtensor(types):
                    return NotImplemented
                out = func(*args, **(kwargs or {}))
                entry = table.get(func)
                if entry is not None:
                    observer.record(func, entry, args)
                return out

        wrapped = [
            w for path, groups in self.unit_groups.items() for g in groups for w in self._wrap(path, g)
        ]
        try:
            with _Collectives():
                yield
        finally:
            for group, name in wrapped:
                with contextlib.suppress(AttributeError):
                    delattr(group, name)

    def _group(self, handle) -> tuple[str, int]:
        import torch.distributed as dist
        from torch.distributed.distributed_c10d import _resolve_process_group

        pg = _resolve_process_group(handle) if isinstance(handle, str) else dist.ProcessGroup.unbox(handle)
        return self.groups.get(pg.group_name, "world"), dist.get_world_size(pg)

    def _innermost(self) -> str:
        from flopkit.flops.anymodel import GLOBAL

        parents = [p for p in self.tracker.parents if p != GLOBAL]
        return max(parents, key=lambda p: (p.count(".") + (1 if p else 0), len(p)), default="")

    def record(self, func, entry, args) -> None:
        kind, reader = entry
        payload, handle = reader(args)
        label, size = self._group(handle)
        if size <= 1:
            return  # a group of one rank (a mesh dimension of size 1) moves nothing
        module = self.unit if self.unit is not None else self._innermost()
        call = CollectiveCall(
            kind,
            str(func.overloadpacket),
            label,
            size,
            payload,
            wire_bytes(kind, payload, size),
            module,
            self.phase,
        )
        self.calls.append(call)
        if kind == "all_gather" and self.unit is not None and self.phase == "forward":
            self.unit_bytes.setdefault(self.unit, 0)
            # One all-gather per unshard; the first forward one is the unit's whole parameter set.
            if not self.unit_bytes[self.unit]:
                self.unit_bytes[self.unit] = payload


def _fake_inputs(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Meta tensors -> CPU tensors of the same shapes (fake inside FakeTensorMode): floats empty,
    integers zero (valid token ids)."""

    def convert(t):
        if not isinstance(t, torch.Tensor):
            return t
        if t.dtype.is_floating_point:
            return torch.empty(t.shape, dtype=t.dtype, device="cpu")
        return torch.zeros(t.shape, dtype=t.dtype, device="cpu")

    return tuple(convert(a) for a in args), {k: convert(v) for k, v in kwargs.items()}


def _unit_groups(model: nn.Module, paths: list[str]) -> dict[str, list]:
    modules = dict(model.named_modules())
    out = {}
    for path in [*paths, ""]:
        state = modules[path]._get_fsdp_state()
        groups = getattr(state, "_fsdp_param_groups", None)
        if groups is None:
            group = getattr(state, "_fsdp_param_group", None)
            groups = [group] if group is not None else []
        out[path] = list(groups)
    return out


def _local_bytes(model: nn.Module) -> tuple[dict[str, int], dict[str, int], int]:
    """Parameter elements per module (descendants included), this rank's bytes of each parameter, and
    its gradient bytes (parameters that require grad)."""
    per_module: dict[str, int] = {}
    for path, module in model.named_modules():
        per_module[path] = sum(getattr(p, "_local_tensor", p).numel() for p in module.parameters())
    shards: dict[str, int] = {}
    grads = 0
    for name, p in model.named_parameters():
        local = getattr(p, "_local_tensor", p)
        shards[name] = local.numel() * local.element_size()
        grads += shards[name] if p.requires_grad else 0
    return per_module, shards, grads


def check_sharding(model: nn.Module, config: ParallelConfig, plan_file=None) -> TensorParallelPlan | None:
    """The TP plan (None without TP), after every check against ``model`` (see :mod:`.plan`)."""
    if config.tp == 1:
        if plan_file is not None:
            raise ValueError("tp_plan applies with tp > 1, got tp=1")
        return None
    plan = resolve_tp_plan(model, plan_file)
    check_tp_divides(model, plan, config.tp)
    return plan


def count_sharded(
    model: nn.Module,
    args: tuple = (),
    kwargs: dict | None = None,
    config: ParallelConfig | None = None,
    *,
    tp_plan: str | None = None,
    param_dtype: torch.dtype = torch.bfloat16,
    reduce_dtype: torch.dtype = torch.float32,
) -> ShardedCount:
    """Rank 0's FLOPs, collectives and parameter memory in one training step of ``model`` (meta
    device, not modified: a copy is sharded) on ``model(*args, **kwargs)`` (meta inputs: one rank's
    micro-batch) under ``config``; see the module docstring.

    ``tp_plan``: a plan file (else the model's own plan or flopkit's ViT-5 plan). With FSDP,
    ``param_dtype`` and ``reduce_dtype`` form FSDP2's ``MixedPrecisionPolicy`` (all-gathers and compute
    in ``param_dtype``, gradient reduction in ``reduce_dtype``); with TP alone the step runs under
    autocast to ``param_dtype``.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from flopkit.flops.anymodel import RMS_NORM_BACKWARD_OP, matmul_paths
    from flopkit.flops.anymodel import categories_by_path as _categories
    from flopkit.flops.anymodel import run_counters as _run

    config = config or ParallelConfig()
    kwargs = kwargs or {}
    plan = check_sharding(model, config, tp_plan)
    units = fsdp_units(model) if config.data_parallel > 1 else []
    model = copy.deepcopy(model)
    types = {path: type(m).__name__ for path, m in model.named_modules()}
    batched_matmuls = matmul_paths(model)  # experts and rotary tables: their bmm is a matmul
    with fake_world(config.world):
        tp_mesh, dp_mesh, groups = _meshes(config)
        apply_plan(model, plan, units, tp_mesh, dp_mesh, param_dtype, reduce_dtype)
        unit_groups = _unit_groups(model, units) if dp_mesh is not None else {}
        observer = _StepObserver(groups, unit_groups)
        with FakeTensorMode(allow_non_fake_inputs=True), _Propagation.watched():
            model.to_empty(device="cpu")
            local_params, shards, grad_bytes = _local_bytes(model)
            fake_args, fake_kwargs = _fake_inputs(args, kwargs)
            autocast = (
                torch.autocast("cpu", dtype=param_dtype)
                if dp_mesh is None and param_dtype != next(model.parameters()).dtype
                else contextlib.nullcontext()
            )
            model.train()
            with sdpa_kernel(SDPBackend.MATH), autocast:
                raw, _ = _run(
                    model, fake_args, fake_kwargs, "full", True, None, None,
                    counter_cls=_local_counter_cls(), observer=observer,
                )  # fmt: skip
    total = _categories(raw, batched_matmuls)
    snapshot = observer.forward_snapshot
    # F.rms_norm's backward is counted at its forward call (the 2x rule): it belongs to the backward.
    for ops in snapshot.values():
        ops.pop(RMS_NORM_BACKWARD_OP, None)
    forward = _categories(snapshot, batched_matmuls)
    backward = {
        path: {c: v - forward.get(path, {}).get(c, 0) for c, v in cats.items()}
        for path, cats in total.items()
    }
    return ShardedCount(
        config=config,
        plan=plan,
        units=units,
        forward=forward,
        backward=backward,
        collectives=observer.calls,
        local_params=local_params,
        param_bytes=sum(shards.values()),
        grad_bytes=grad_bytes,
        param_shards=shards,
        unit_bytes=dict(observer.unit_bytes),
        peak_unsharded_bytes=observer.peak_unsharded,
        param_dtype=param_dtype,
        reduce_dtype=reduce_dtype,
        types=types,
    )


def collectives_by(calls: list[CollectiveCall], *keys: str) -> dict[tuple, dict[str, int]]:
    """``{(key values...): {"calls": n, "payload_bytes": b, "wire_bytes": w}}`` over ``calls``."""
    out: dict[tuple, dict[str, int]] = defaultdict(lambda: {"calls": 0, "payload_bytes": 0, "wire_bytes": 0})
    for call in calls:
        entry = out[tuple(getattr(call, k) for k in keys)]
        entry["calls"] += 1
        entry["payload_bytes"] += call.payload_bytes
        entry["wire_bytes"] += call.wire_bytes
    return dict(out)
