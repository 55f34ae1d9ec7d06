"""A sharded step as a report: per-layer rows, totals, memory, compute against communication time,
MFU and HFU, and the legend that says which rule gave each number.

Rules (each stated in :meth:`ShardedReport.legend`):

* FLOPs: rank 0's, measured (:mod:`.run`); a TP-split matmul counts its shard only; work every TP
  rank repeats (norms, activations outside the split, layers outside the plan) counts in full on
  each. ``tp_duplicated = tp * per_rank - single_device``, per category, where ``single_device`` is
  the same micro-batch counted on one device; so the FLOPs of all ranks sum to
  ``dp * (single_device + tp_duplicated)`` with ``dp = dp_replicate * fsdp``.
* Time: compute at ``tflops`` (default: H100 SXM dense BF16 peak, 989 TFLOP/s); communication at
  ``gbps`` per direction per GPU (default NVLink 4: 900 GB/s total, 450 each way) on the ring
  algorithm's bytes per rank (:func:`~.run.wire_bytes`). FSDP's collectives overlap the compute;
  eager TP's all-reduces block it. So the step takes at least
  ``max(compute + tp_comm, dp_comm)``, and the bound is the larger side.
* MFU = single-device FLOPs of the rank's share (``single_device / tp``) over ``step_ms * tflops``;
  HFU = the FLOPs the rank runs (duplicated TP work included) over the same.
* Memory: this rank's parameter, gradient and optimizer-state shards, plus the unsharded FSDP units it
  holds at one time (measured over the step from FSDP2's own unshard/reshard calls).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flopkit.checks import InputError
from flopkit.formulas import CATEGORIES

from .plan import ParallelConfig
from .run import ShardedCount, collectives_by, count_sharded

__all__ = [
    "H100_BF16_TFLOPS",
    "NVLINK4_GBPS",
    "PHASES",
    "ShardedRow",
    "ShardedMemory",
    "StepTime",
    "ShardedReport",
    "sharded_memory",
    "step_time",
    "sharded_report",
]

H100_BF16_TFLOPS = 989.0
"""H100 SXM dense BF16 tensor-core peak (NVIDIA's datasheet: 1,979 TFLOP/s with 2:4 sparsity)."""

NVLINK4_GBPS = 450.0
"""NVLink 4 on an H100 SXM: 18 links, 900 GB/s in total, 450 GB/s in each direction."""

PHASES: tuple[str, ...] = ("forward", "backward")


@dataclass
class ShardedRow:
    """One module on rank 0: FLOPs by category (forward + backward), and its collectives
    (``collectives[phase][kind] = {"calls", "payload_bytes", "wire_bytes"}``), descendants included."""

    path: str
    type: str
    params: int  # parameter elements this rank holds
    breakdown: dict[str, int]
    forward: int
    backward: int
    collectives: dict[str, dict[str, dict[str, int]]]

    @property
    def flops(self) -> int:
        return self.forward + self.backward

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": self.type,
            "params": self.params,
            "breakdown": dict(self.breakdown),
            "flops": self.flops,
            "forward_flops": self.forward,
            "backward_flops": self.backward,
            "collectives": self.collectives,
        }


@dataclass
class ShardedMemory:
    """Bytes rank 0 holds: its shards of the parameters, gradients and optimizer states, and the
    unsharded FSDP units it holds at one time; ``activations`` when an estimate is given."""

    params: int
    grads: int
    optimizer: int
    unsharded_peak: int
    largest_unit: int
    activations: int | None = None  # saved for the backward (flopkit memory's replay of one rank)
    predicted_peak: int | None = None  # flopkit memory's peak of one rank's step (H100 allocator)

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.unsharded_peak + (self.activations or 0)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "total": self.total}


def sharded_memory(
    param_bytes: int,
    grad_bytes: int,
    optimizer_states: int,
    unit_bytes: dict[str, int],
    unsharded_peak: int,
    activations: int | None = None,
    predicted_peak: int | None = None,
) -> ShardedMemory:
    """Per-rank memory from the shards' bytes: ``optimizer_states`` tensors the size and dtype of each
    parameter shard (AdamW: 2; SGD with momentum: 1), ``unit_bytes`` the all-gathered size of each FSDP
    unit and ``unsharded_peak`` the most of them held at one time."""
    if optimizer_states < 0:
        raise ValueError(f"optimizer_states must be >= 0, got {optimizer_states}")
    return ShardedMemory(
        params=param_bytes,
        grads=grad_bytes,
        optimizer=optimizer_states * param_bytes,
        unsharded_peak=unsharded_peak,
        largest_unit=max(unit_bytes.values(), default=0),
        activations=activations,
        predicted_peak=predicted_peak,
    )


@dataclass
class StepTime:
    """Compute against communication time of rank 0's step (see the module docstring)."""

    tflops: float
    gbps: float
    flops: int
    compute_ms: float
    comm_ms: dict[str, float]  # mesh dimension -> ms ("fsdp", "tp", "dp_replicate")
    wire_bytes: int
    bound: str
    lower_bound_ms: float
    step_ms: float | None = None
    mfu: float | None = None
    hfu: float | None = None

    @property
    def intensity(self) -> float | None:
        """FLOPs per byte sent: above ``ridge`` the step can hide its communication."""
        return self.flops / self.wire_bytes if self.wire_bytes else None

    @property
    def ridge(self) -> float:
        """The machine's FLOPs per byte of interconnect: ``tflops / gbps``."""
        return self.tflops * 1e12 / (self.gbps * 1e9)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "intensity_flops_per_byte": self.intensity,
            "ridge_flops_per_byte": self.ridge,
        }


def step_time(
    flops: int,
    model_flops: float,
    wire_by_group: dict[str, int],
    tflops: float = H100_BF16_TFLOPS,
    gbps: float = NVLINK4_GBPS,
    step_ms: float | None = None,
) -> StepTime:
    """Rank 0's compute time (``flops`` at ``tflops``), communication time per mesh dimension (its
    ring bytes at ``gbps``), the bound, and with a measured ``step_ms`` the MFU (``model_flops``) and
    HFU (``flops``)."""
    for name, value in (("tflops", tflops), ("gbps", gbps)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if step_ms is not None and not step_ms > 0:
        raise ValueError(f"step_ms must be positive, got {step_ms}")
    compute_ms = flops / (tflops * 1e12) * 1e3
    comm_ms = {group: wire / (gbps * 1e9) * 1e3 for group, wire in sorted(wire_by_group.items())}
    tp_ms = comm_ms.get("tp", 0.0)
    dp_ms = sum(v for k, v in comm_ms.items() if k != "tp")
    if dp_ms > compute_ms + tp_ms:
        bound = "data-parallel communication (FSDP/HSDP collectives take longer than compute + TP)"
    elif tp_ms > compute_ms:
        bound = "tensor-parallel communication (TP all-reduces take longer than compute)"
    else:
        bound = "compute"
    peak = tflops * 1e12
    return StepTime(
        tflops=tflops,
        gbps=gbps,
        flops=flops,
        compute_ms=compute_ms,
        comm_ms=comm_ms,
        wire_bytes=sum(wire_by_group.values()),
        bound=bound,
        lower_bound_ms=max(compute_ms + tp_ms, dp_ms),
        step_ms=step_ms,
        mfu=model_flops / (step_ms * 1e-3 * peak) if step_ms else None,
        hfu=flops / (step_ms * 1e-3 * peak) if step_ms else None,
    )


def _collectives_of(count: ShardedCount, path: str) -> dict[str, dict[str, dict[str, int]]]:
    inside = [
        c for c in count.collectives if path == "" or c.module == path or c.module.startswith(path + ".")
    ]
    out: dict[str, dict[str, dict[str, int]]] = {}
    for (phase, kind), entry in sorted(collectives_by(inside, "phase", "kind").items()):
        out.setdefault(phase, {})[kind] = entry
    return out


@dataclass
class ShardedReport:
    """Rank 0 of a sharded training step: rows (``rows[0]`` the whole model), totals, memory, time."""

    count: ShardedCount
    rows: list[ShardedRow]
    single_device: dict[str, int]  # the same micro-batch on one device, forward + backward, by category
    memory: ShardedMemory
    time: StepTime
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> ParallelConfig:
        return self.count.config

    @property
    def per_rank(self) -> dict[str, int]:
        return self.rows[0].breakdown

    @property
    def tp_duplicated(self) -> dict[str, int]:
        """FLOPs each TP group runs beyond the single-device count, by category:
        ``tp * per_rank - single_device``."""
        tp = self.config.tp
        return {c: tp * self.per_rank.get(c, 0) - self.single_device.get(c, 0) for c in CATEGORIES}

    def collective_totals(self) -> list[dict[str, Any]]:
        """One entry per (phase, kind, mesh dimension): calls, payload and ring bytes."""
        grouped = collectives_by(self.count.collectives, "phase", "kind", "group", "group_size")
        return [
            {"phase": p, "kind": k, "group": g, "group_size": n, **v}
            for (p, k, g, n), v in sorted(grouped.items(), key=lambda kv: (PHASES.index(kv[0][0]), kv[0][1:]))
        ]

    def legend(self) -> list[str]:
        cfg, count = self.config, self.count
        plan = count.plan
        lines = [
            f"{cfg.describe()}; {cfg.batch} sample(s) per rank, global batch {cfg.global_batch}; rank 0 "
            "shown (the largest shard when a dimension does not split evenly); one training step (forward + "
            "backward, loss = sum of the outputs).",
            "applied with torch's APIs on a fake process group and fake tensors: "
            + (
                f"parallelize_module with {plan.source} ({len(plan.styles)} modules) on the tp dimension; "
                if plan
                else ""
            )
            + (
                f"fully_shard on {len(count.units)} repeated blocks then the root"
                f"{' (HSDP: replicate x shard)' if cfg.dp_replicate > 1 else ''}, MixedPrecisionPolicy(param_dtype="
                f"{_dtype(count.param_dtype)}, reduce_dtype={_dtype(count.reduce_dtype)})"
                if count.units or cfg.data_parallel > 1
                else f"autocast to {_dtype(count.param_dtype)} (no FSDP)"
            )
            + ".",
            "FLOPs: measured by FlopCounterMode on each rank's local tensors (a TP-split matmul counts its "
            "shard); attention on SDPA's math path; categories as in a model spec's FLOP report (measured: residual adds, "
            "LayerScale and RoPE written as tensor arithmetic are not counted; flopkit's own norm ops count "
            "their forward only, their backward op having no FlopCounterMode formula). tp_duplicated = tp x "
            "per rank - single device (same micro-batch, same counter): work every TP rank repeats; all "
            "ranks together run dp x (single device + tp_duplicated).",
            "collectives: payload = the gathered buffer (all-gather), the reduced input (reduce-scatter), "
            "the tensor (all-reduce); wire = bytes each rank sends with the ring algorithm (all-gather and "
            "reduce-scatter payload x (n-1)/n, all-reduce twice that). FSDP's are attributed to the unit "
            "that issued them (backward all-gathers include the prefetch of the next unit).",
            f"time: compute at {self.time.tflops:g} TFLOP/s, communication at {self.time.gbps:g} GB/s per "
            "direction (defaults: H100 SXM dense BF16 peak 989 TFLOP/s; NVLink 4, 450 GB/s each way). FSDP "
            "collectives overlap compute, eager TP all-reduces do not: step >= max(compute + tp, fsdp/hsdp); "
            "the bound is the larger side.",
            "memory: parameter, gradient and optimizer-state shards of rank 0 (optimizer states the size and "
            "dtype of the parameter shards), plus the unsharded FSDP units held at one time in the step "
            "(FSDP2's unshard/reshard, measured)"
            + (
                f"; activations (saved for the backward) and the predicted peak from flopkit memory's replay of "
                f"one rank (training, {self.info.get('memory_settings', 'AdamW')}; the replay runs autocast on "
                "float32 parameters, so its unsharded units are float32 where MixedPrecisionPolicy gathers "
                "param_dtype, and its peak adds temporaries, the loss and the optimizer step)"
                if self.memory.activations is not None
                else "; activations not included (memory=False)"
            )
            + ".",
        ]
        if self.time.step_ms is not None:
            lines.append(
                f"MFU = single-device FLOPs / tp over step_ms x peak; HFU = FLOPs rank 0 runs (TP's duplicated "
                f"work included) over the same; step {self.time.step_ms:g} ms."
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        count = self.count
        forward = sum(count.forward.get("", {}).values())
        return {
            **self.info,
            "parallel": self.config.to_dict(),
            "tp_plan": count.plan.to_dict() if count.plan else None,
            "fsdp_units": count.units,
            "param_dtype": _dtype(count.param_dtype),
            "reduce_dtype": _dtype(count.reduce_dtype),
            "flops_per_rank": {
                "breakdown": dict(self.per_rank),
                "total": self.rows[0].flops,
                "forward": forward,
                "backward": self.rows[0].flops - forward,
            },
            "single_device_flops": {
                "breakdown": dict(self.single_device),
                "total": sum(self.single_device.values()),
            },
            "tp_duplicated_flops": self.tp_duplicated,
            "all_ranks_flops": self.config.world * self.rows[0].flops,
            "collectives": self.collective_totals(),
            "memory": self.memory.to_dict(),
            "unit_bytes": dict(count.unit_bytes),
            "time": self.time.to_dict(),
            "rows": [r.to_dict() for r in self.rows],
            "legend": self.legend(),
        }


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _children(paths, path: str) -> list[str]:
    depth = path.count(".") + 1 if path else 0
    return [p for p in paths if p and (p.count(".") == depth) and (not path or p.startswith(path + "."))]


def _counts_of(count: ShardedCount, path: str) -> tuple[dict[str, int], dict[str, int]]:
    """Forward and backward FLOPs of ``path``; a container that is never called (a ModuleList)
    has the sum of its children's."""
    if path in count.forward or path in count.backward:
        return count.forward.get(path, {}), count.backward.get(path, {})
    f: dict[str, int] = {}
    b: dict[str, int] = {}
    for child in _children(count.types, path):
        cf, cb = _counts_of(count, child)
        for c, v in cf.items():
            f[c] = f.get(c, 0) + v
        for c, v in cb.items():
            b[c] = b.get(c, 0) + v
    return f, b


def _rows(count: ShardedCount, depth: int | None) -> list[ShardedRow]:
    paths = [p for p in count.types if depth is None or (p.count(".") + 1 if p else 0) <= depth]
    rows = []
    for path in paths:
        f, b = _counts_of(count, path)
        breakdown = {c: f.get(c, 0) + b.get(c, 0) for c in CATEGORIES}
        rows.append(
            ShardedRow(
                path=path,
                type=count.types[path],
                params=count.local_params.get(path, 0),
                breakdown=breakdown,
                forward=sum(f.values()),
                backward=sum(b.values()),
                collectives=_collectives_of(count, path),
            )
        )
    return rows


def sharded_report(
    model: nn.Module,
    args: tuple = (),
    kwargs: dict | None = None,
    *,
    fsdp: int = 1,
    tp: int = 1,
    dp_replicate: int = 1,
    batch: int = 1,
    tp_plan: str | None = None,
    param_dtype: torch.dtype = torch.bfloat16,
    reduce_dtype: torch.dtype = torch.float32,
    optimizer_states: int = 2,
    tflops: float = H100_BF16_TFLOPS,
    gbps: float = NVLINK4_GBPS,
    step_ms: float | None = None,
    depth: int | None = 2,
    memory: bool = True,
    info: dict[str, Any] | None = None,
) -> ShardedReport:
    """Rank 0 of one training step of ``model`` (meta device; not modified) on
    ``model(*args, **kwargs)`` (meta inputs: one rank's micro-batch of ``batch`` samples), sharded
    ``dp_replicate x fsdp x tp``: FLOPs and collectives per layer, memory, time, MFU and HFU
    (``step_ms``). ``memory``: also replay one rank's step with :func:`flopkit.memory` (activations
    and the predicted peak; :func:`.memory.rank_memory`). Every argument is checked before any counting.
    """
    from flopkit.flops.anymodel import count_model

    config = ParallelConfig(fsdp=fsdp, tp=tp, dp_replicate=dp_replicate, batch=batch)
    # The rates and the step time are checked before the (longer) sharded run.
    step_time(0, 0, {}, tflops, gbps, step_ms)
    if optimizer_states < 0:
        raise ValueError(f"optimizer_states must be >= 0, got {optimizer_states}")
    kwargs = kwargs or {}
    leading = {t.shape[0] for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.dim()}
    if leading and batch not in leading:
        raise ValueError(
            f"batch={batch} is the per-rank micro-batch, but the inputs' leading dimension is "
            f"{', '.join(map(str, sorted(leading)))}"
        )
    count = count_sharded(
        model, args, kwargs, config, tp_plan=tp_plan, param_dtype=param_dtype, reduce_dtype=reduce_dtype
    )
    single = count_model(model, args, kwargs, backward=True)
    single_total = {
        c: single.forward.get("", {}).get(c, 0) + (single.backward or {}).get("", {}).get(c, 0)
        for c in CATEGORIES
    }
    rows = _rows(count, depth)
    wire = {g: v["wire_bytes"] for (g,), v in collectives_by(count.collectives, "group").items()}
    time = step_time(rows[0].flops, sum(single_total.values()) / tp, wire, tflops, gbps, step_ms)
    activations = predicted = None
    info = dict(info or {})
    if memory:
        predicted_step = _rank_step_memory(
            model, args, kwargs, config, tp_plan, param_dtype, optimizer_states
        )
        activations, predicted = predicted_step.saved_bytes, predicted_step.peak_bytes
        info["memory_settings"] = ", ".join(
            f"{k} {v}" for k, v in predicted_step.settings.items() if k in ("optimizer", "autocast", "loss")
        )
    held = sharded_memory(
        count.param_bytes,
        count.grad_bytes,
        optimizer_states,
        count.unit_bytes,
        count.peak_unsharded_bytes,
        activations,
        predicted,
    )
    return ShardedReport(count, rows, single_total, held, time, info)


_OPTIMIZERS = {0: "none", 1: "sgd", 2: "adamw"}


def _rank_step_memory(model, args, kwargs, config, tp_plan, param_dtype, optimizer_states):
    """flopkit memory's replay of one rank's training step: the optimizer with ``optimizer_states``
    states (AdamW 2, SGD with momentum 1, none 0), autocast to ``param_dtype`` when it is 16-bit."""
    from .memory import rank_memory

    if optimizer_states not in _OPTIMIZERS:
        raise ValueError(
            f"optimizer_states must be 0, 1 or 2 to replay the step's memory (none, SGD, AdamW), got "
            f"{optimizer_states}; pass memory=False for other optimizers"
        )
    autocast = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(param_dtype)
    return rank_memory(
        model,
        tp=config.tp,
        fsdp=config.fsdp,
        dp_replicate=config.dp_replicate,
        tp_plan=tp_plan,
        args=args,
        kwargs=kwargs,
        batch=config.batch,
        training=True,
        optimizer=_OPTIMIZERS[optimizer_states],
        autocast=autocast,
    )


def sharded(
    model: Any,
    overrides: Any = (),
    *,
    model_args: dict[str, Any] | None = None,
    batch: int = 1,
    seq_len: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    **options: Any,
) -> ShardedReport:
    """:func:`sharded_report` of ``model`` as :func:`flopkit.count` takes it (a preset or config
    file with ``overrides``, a spec with ``model_args``, or an ``nn.Module``: a meta copy), on a
    micro-batch of ``batch`` samples per rank (``seq_len`` tokens for a text model, ``input_shape``
    per sample otherwise). ``options``: :func:`sharded_report`'s (``fsdp``, ``tp``, ``dp_replicate``,
    ``tp_plan``, ``step_ms``, ...).

    ``flopkit.sharded("vit5-large", fsdp=8)``;
    ``flopkit.sharded("hf:llama", model_args={...}, seq_len=4096, tp=2, fsdp=4)``.
    """
    from flopkit.flops.count import load
    from flopkit.models import model_inputs

    ParallelConfig(
        fsdp=options.get("fsdp", 1),
        tp=options.get("tp", 1),
        dp_replicate=options.get("dp_replicate", 1),
        batch=batch,
    )
    loaded = load(model, overrides=overrides, model_args=model_args)
    if loaded.is_config:
        if seq_len is not None or input_shape is not None:
            raise InputError(
                "seq_len" if seq_len is not None else "input_shape",
                seq_len if seq_len is not None else input_shape,
                "applies to a model spec or module; a config fixes its input",
            )
        from flopkit.config import model_input

        args, kwargs = (model_input(loaded.config, loaded.module, batch, "meta"),), {}
    else:
        inputs = model_inputs(
            loaded.module, batch=batch, input_shape=input_shape, seq_len=seq_len, spec=loaded.label
        )
        args, kwargs = inputs.args, inputs.kwargs
    info = {"model": loaded.to_dict()}
    return sharded_report(loaded.module, args, kwargs, batch=batch, info=info, **options)
