"""Profile real steps of a model: time per layer (forward, backward), roofline, step summary.

:func:`profile_model` runs, in order:

1. the roofs (:func:`~flopkit.profile.roofline.measure_roofs`) on the device, in the run's dtype
   (measured again after step 4; each roof is the better of the two, as a ceiling should be);
2. ``warmup`` plain steps (with ``compile``, the compilation happens here), then ``steps`` plain
   steps timed on the host, back to back, between two device synchronisations: the step's wall
   time;
3. one step with the module ranges on, recording the bytes of each module's inputs and outputs;
4. ``1 + steps`` steps under ``torch.profiler`` (the first is the profiler's own warm-up), with
   the module ranges on; their wall time gives the profiling overhead.

Each profiled op is charged to a module and a phase by :func:`~flopkit.profile.attribution.attribute`
(the mechanism is in that module's docstring), and the rows add their submodules' time, as the
FLOP rows of ``flopkit report`` add their submodules' FLOPs. A training step is forward, loss and
backward (no optimizer); the loss is :func:`flopkit.steps.make_loss`'s: cross-entropy on zero
targets when the output has a class or vocabulary dimension (a classifier's logits, a language
model's next-token logits), else the mean square error against zero targets.

With ``compile`` each *region* is compiled on its own with ``torch.compile`` (regional
compilation): the rows that have no row under them (at the default depth: the patch projection,
each block, the final norm, the head). The module ranges sit outside the compiled code, so every
fused kernel Inductor generates belongs to exactly one region, and is charged to it; Inductor
never fuses across two rows, so no kernel has to be split between rows.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flopkit.flops.analytic import FlopRow, depth_of, top_paths
from flopkit.progress import SILENT, Progress

from .attribution import (
    LOSS,
    UNATTRIBUTED,
    Attribution,
    ModuleRanges,
    attribute,
    events_from_profiler,
    loss_range,
)
from .roofline import Roofs, backward_bytes, classify_bound, measure_roofs

__all__ = [
    "ProfileRow",
    "ProfileResult",
    "profile_model",
    "busy_us",
    "compile_regions",
    "deepest_level",
    "DTYPES",
    "MAX_STEPS",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_STEPS = 10_000
"""Most timed (and warm-up) steps a profile runs: more is a typo, and would run for days."""


@dataclass
class ProfileRow:
    """One module (or the pseudo rows ``(loss)``, ``(unattributed)``), per step.

    ``flops`` is the row's count from ``flopkit report`` (forward, or forward + backward with
    training); ``None`` for a module counted in its parent, and the pseudo rows. ``bytes`` is the
    minimum moved: parameters + inputs + outputs forward, plus
    :func:`~flopkit.profile.roofline.backward_bytes` with training. Times are per step, in ms.
    """

    path: str
    type: str
    flops: int | None
    bytes: int | None
    forward_ms: float
    backward_ms: float
    host_ms: float
    tflops: float | None
    gbs: float | None
    matmul_pct: float | None
    copy_pct: float | None
    bound: str | None
    share: float
    counted_in: str | None = None

    @property
    def ms(self) -> float:
        return self.forward_ms + self.backward_ms

    @property
    def intensity(self) -> float | None:
        """FLOP per minimum byte."""
        return self.flops / self.bytes if self.flops and self.bytes else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": self.type,
            "flops": self.flops,
            "bytes": self.bytes,
            "intensity": self.intensity,
            "forward_ms": self.forward_ms,
            "backward_ms": self.backward_ms,
            "host_ms": self.host_ms,
            "tflops": self.tflops,
            "gbs": self.gbs,
            "matmul_pct": self.matmul_pct,
            "copy_pct": self.copy_pct,
            "bound": self.bound,
            "share": self.share,
            "counted_in": self.counted_in,
        }


@dataclass
class ProfileResult:
    """A profile: rows (report's rows, then ``(loss)``/``(unattributed)``), roofs and the step.

    ``step_ms``: wall time of a plain step; ``profiled_step_ms``: the same under the profiler with
    the module ranges (``overhead`` = their ratio - 1); ``gpu_ms``: time the device was busy per
    step (union of kernel intervals; on CPU, the ops' CPU time); ``op_ms``: time charged to rows
    per step (kernel time on CUDA, op self time on CPU), of which ``attributed_share`` went to
    modules and the loss; ``profiler_total_ms``: the same total as the profiler itself sums it
    (every kernel's duration on CUDA, every op's self CPU time on CPU), the check on ``op_ms``; ``host_bound_share`` = ``1 - gpu_ms / profiled_step_ms``, the share of
    the step the device waits for the host; ``mfu`` = ``mfu_flops`` per plain step over the
    measured matmul rate.
    """

    rows: list[ProfileRow]
    roofs: Roofs
    device: str
    dtype: str
    batch: int
    training: bool
    compiled: bool
    steps: int
    warmup: int
    step_ms: float
    profiled_step_ms: float
    gpu_ms: float
    op_ms: float
    profiler_total_ms: float
    attributed_share: float
    host_bound_share: float
    mfu_flops: int
    mfu: float
    regions: list[str] = field(default_factory=list)
    device_name: str = ""
    loss: str = ""  # "ce" or "mse" for a training step (flopkit.steps.make_loss), else ""

    @property
    def overhead(self) -> float:
        return self.profiled_step_ms / self.step_ms - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "device_name": self.device_name,
            "dtype": self.dtype,
            "batch": self.batch,
            "training": self.training,
            "compile": self.compiled,
            "compile_regions": self.regions,
            "loss": self.loss or None,
            "steps": self.steps,
            "warmup": self.warmup,
            "step_ms": self.step_ms,
            "profiled_step_ms": self.profiled_step_ms,
            "overhead": self.overhead,
            "gpu_ms": self.gpu_ms,
            "op_ms": self.op_ms,
            "profiler_total_ms": self.profiler_total_ms,
            "attributed_share": self.attributed_share,
            "host_bound_share": self.host_bound_share,
            "mfu_flops": self.mfu_flops,
            "mfu": self.mfu,
            "roofs": self.roofs.to_dict(),
            "rows": [r.to_dict() for r in self.rows],
        }


def busy_us(intervals: Sequence[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals: the time at least one kernel ran."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def _is_container(module: nn.Module) -> bool:
    """A module that is never called (``ModuleList``, ``ModuleDict``): no ``forward`` of its own."""
    return type(module).forward is nn.Module.forward


def ranged_paths(modules: dict[str, nn.Module], paths: Sequence[str]) -> list[str]:
    """The modules that get a profiler range: the rows, and the children of any row that is a
    container (so that ``blocks`` gets the time of ``blocks.0``, ``blocks.1``... at ``depth=1``)."""
    out = list(paths)
    todo = [p for p in paths if _is_container(modules[p])]
    while todo:
        path = todo.pop()
        for name, child in modules[path].named_children():
            child_path = f"{path}.{name}" if path else name
            if child_path not in out:
                out.append(child_path)
                if _is_container(child):
                    todo.append(child_path)
    return out


def compile_regions(modules: dict[str, nn.Module], paths: Sequence[str]) -> list[str]:
    """The paths to compile one by one: the ranged modules (:func:`ranged_paths`) with no other
    ranged module under them, skipping containers."""
    ranged = ranged_paths(modules, paths)
    return [p for p in ranged if not top_paths(p, ranged) and not _is_container(modules[p])]


def _compile(modules: dict[str, nn.Module], regions: Sequence[str]) -> Callable[[], None]:
    """Replace each region's ``forward`` by a compiled one (shared per class, so identical blocks
    share one graph); returns the function that restores them."""
    compiled: dict[type, Callable] = {}
    for path in regions:
        module = modules[path]
        cls = type(module)
        if cls not in compiled:
            compiled[cls] = torch.compile(cls.forward)
        module.forward = functools.partial(compiled[cls], module)

    def restore() -> None:
        for path in regions:
            del modules[path].forward

    return restore


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_model(
    model: nn.Module,
    inputs: torch.Tensor | tuple[tuple, dict],
    flop_rows: Sequence[FlopRow],
    *,
    mfu_flops: int,
    training: bool = False,
    dtype: torch.dtype = torch.float32,
    compile: bool = False,
    steps: int = 10,
    warmup: int = 3,
    roofs: Roofs | None = None,
    loss: str = "auto",
    progress: Progress | None = None,
) -> ProfileResult:
    """Profile ``model`` on ``inputs`` (already on the device: one tensor, or ``(args, kwargs)``)
    and return one row per FLOP row.

    ``flop_rows`` are ``flopkit report``'s rows for this model and batch (their FLOPs are copied,
    not recounted); ``mfu_flops`` the FLOPs the MFU counts per step. ``dtype`` other than float32
    runs under ``torch.autocast``. ``roofs`` skips the measurement (tests). ``loss`` is one of
    :data:`flopkit.steps.LOSSES` (training only). ``progress`` shows each phase's steps.
    """
    from flopkit.steps import LOSSES, make_loss

    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    args, kwargs = (
        ((inputs,), {}) if isinstance(inputs, torch.Tensor) else (tuple(inputs[0]), dict(inputs[1]))
    )
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    if not tensors:
        raise ValueError("inputs: give at least one tensor")
    progress = progress or SILENT
    if steps < 1 or steps > MAX_STEPS:
        raise ValueError(f"steps must be in 1..{MAX_STEPS:,}, got {steps}")
    if warmup > MAX_STEPS:
        raise ValueError(f"warmup must be at most {MAX_STEPS:,}, got {warmup}")
    if warmup < 0 or (compile and warmup < 1):
        raise ValueError(
            f"warmup must be >= {1 if compile else 0}{' with compile' if compile else ''}, got {warmup}"
        )
    device = tensors[0].device
    cuda = device.type == "cuda"
    modules = dict(model.named_modules())
    paths = [r.path for r in flop_rows]
    missing = [p for p in paths if p not in modules]
    if missing:
        raise ValueError(f"flop_rows name modules the model does not have: {missing[:3]}")
    measured = roofs is None
    roofs = roofs or measure_roofs(device, dtype)
    model.train(training)
    autocast = (
        torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    )
    regions = compile_regions(modules, paths) if compile else []
    restore = _compile(modules, regions) if compile else (lambda: None)
    # One compiled function per region class; they share dynamo's cache entry, whose default
    # limit (8) a deep ``depth`` could exceed.
    limits = torch._dynamo.config.patch(recompile_limit=64) if compile else contextlib.nullcontext()
    batch = tensors[0].shape[0]
    loss_fn: Callable[[Any], torch.Tensor] | None = None
    loss_kind = ""

    def step() -> None:
        if training:
            for p in model.parameters():
                p.grad = None
            with autocast:
                output = model(*args, **kwargs)
            with loss_range():
                value = loss_fn(output)
            with loss_range(backward=True):
                value.backward()
        else:
            with torch.no_grad(), autocast:
                model(*args, **kwargs)
        progress.advance()

    def timed(n: int, after: Callable[[], None] = lambda: None) -> float:
        """Wall ms per step over ``n`` steps, leaving out ``after`` (the profiler's ``step()``,
        whose last call stops the trace and processes it); the device is synchronised before
        that last call so that the steps' own work is all inside the measurement."""
        _sync(device)
        start = time.perf_counter()
        for i in range(n):
            step()
            if i == n - 1:
                _sync(device)
            after_start = time.perf_counter()
            after()
            start += time.perf_counter() - after_start
        return (time.perf_counter() - start) / n * 1e3

    with limits:
        try:
            if training:
                with torch.no_grad(), autocast:
                    loss_kind, loss_fn = make_loss(model(*args, **kwargs), model, loss)
            progress.phase("warm-up" + (" (compiling)" if compile else ""), warmup)
            for _ in range(warmup):
                step()
            progress.phase("timed steps", steps)
            step_ms = timed(steps)
            progress.phase("profiled steps", steps + 2)
            inside = [p for p in modules if any(p.startswith(f"{r}.") or (r == "" and p) for r in regions)]
            watched = {p: m for p, m in modules.items() if p not in inside}  # compiled code stays hook-free
            with ModuleRanges(watched, record_io=True) as every_module:
                step()
            io = {k: dict(v) for k, v in every_module.io_bytes.items()}
            ranged = ranged_paths(modules, paths)
            with ModuleRanges({p: modules[p] for p in ranged}):
                captured: list[tuple[Attribution, float, float]] = []
                activities = [torch.profiler.ProfilerActivity.CPU]
                if cuda:
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                schedule = torch.profiler.schedule(wait=0, warmup=1, active=steps)

                def ready(prof) -> None:
                    events = prof.events()
                    attribution = attribute(events_from_profiler(events, device.type))
                    captured.append(
                        (attribution, _device_busy_us(events, cuda, attribution), _total_us(events, cuda))
                    )

                with torch.profiler.profile(
                    activities=activities, schedule=schedule, on_trace_ready=ready, acc_events=True
                ) as prof:
                    step()
                    # Drain the warm-up step before recording starts: a GPU-bound step leaves
                    # its kernels queued, and they would run inside the recorded window with
                    # their launches outside it (counted in the total, charged to no layer).
                    _sync(device)
                    prof.step()
                    profiled_ms = timed(steps, prof.step)
        finally:
            progress.close()
            restore()
    attribution, busy, profiler_us = captured[0]
    if measured:  # a ceiling: the better of the measurements before and after the steps
        roofs = roofs.best(measure_roofs(device, dtype))
    rows = _rows(model, flop_rows, attribution, io, roofs, steps, training, cuda)
    op_ms = attribution.total_us / steps / 1e3
    gpu_ms = busy / steps / 1e3
    return ProfileResult(
        rows=rows,
        roofs=roofs,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        batch=batch,
        training=training,
        compiled=compile,
        steps=steps,
        warmup=warmup,
        step_ms=step_ms,
        profiled_step_ms=profiled_ms,
        gpu_ms=gpu_ms,
        op_ms=op_ms,
        profiler_total_ms=profiler_us / steps / 1e3,
        attributed_share=attribution.attributed_us / attribution.total_us if attribution.total_us else 0.0,
        host_bound_share=max(0.0, 1.0 - gpu_ms / step_ms),
        mfu_flops=mfu_flops,
        mfu=mfu_flops / (step_ms / 1e3) / (roofs.matmul_tflops * 1e12),
        regions=regions,
        loss=loss_kind,
        device_name=torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
    )


def _device_busy_us(events, cuda: bool, attribution: Attribution) -> float:
    """Busy time of the device: the union of kernel intervals (CUDA), else the ops' CPU time."""
    if not cuda:
        return attribution.total_us

    return busy_us([(e.time_range.start, e.time_range.end) for e in events if _is_kernel(e)])


def _is_kernel(event) -> bool:
    """A device-side activity (kernel, memcpy, memset), not the GPU copy of a host range."""
    from torch.autograd import DeviceType

    return (
        event.device_type == DeviceType.CUDA
        and not event.is_user_annotation
        and getattr(event, "activity_type", None) != "gpu_user_annotation"
        and not event.name.startswith(("flopkit.", "ProfilerStep#"))
    )


def _total_us(events, cuda: bool) -> float:
    """The profiler's own total, independent of the attribution: the duration of every kernel
    (CUDA), or the self CPU time of every op that is not a user range (CPU)."""
    from torch.autograd import DeviceType

    if cuda:
        return sum(e.time_range.elapsed_us() for e in events if _is_kernel(e))
    return sum(
        e.self_cpu_time_total
        for e in events
        if e.device_type == DeviceType.CPU and not e.is_user_annotation and not e.is_async
    )


def _param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _rows(
    model: nn.Module,
    flop_rows: Sequence[FlopRow],
    attribution: Attribution,
    io: dict[str, dict[str, int]],
    roofs: Roofs,
    steps: int,
    training: bool,
    cuda: bool,
) -> list[ProfileRow]:
    modules = dict(model.named_modules())
    total_ms = attribution.total_us / steps / 1e3

    def module_bytes(path: str) -> int | None:
        """Own boundary bytes of a module that ran; for one that never ran (a ``ModuleList``), the
        sum of its children's."""
        if path in io:
            params = _param_bytes(modules[path])
            inputs, outputs = io[path]["inputs"], io[path]["outputs"]
            forward = params + inputs + outputs
            return forward + (backward_bytes(params, inputs, outputs) if training else 0)
        prefix = f"{path}." if path else ""
        parts = [module_bytes(prefix + name) for name, _ in modules[path].named_children()]
        return sum(parts) if parts and None not in parts else None

    rows = []
    for r in flop_rows:
        fwd = attribution.subtree(r.path, "forward") / steps / 1e3
        bwd = attribution.subtree(r.path, "backward") / steps / 1e3
        host = attribution.host_subtree(r.path) / steps / 1e3
        flops = None if r.counted_in is not None else r.flops
        nbytes = module_bytes(r.path)
        seconds = (fwd + bwd) / 1e3
        tflops = flops / seconds / 1e12 if flops and seconds > 0 else None
        gbs = nbytes / seconds / 1e9 if nbytes and seconds > 0 else None
        bound = None
        if seconds > 0 and flops is not None and nbytes:
            bound = classify_bound(flops, nbytes, seconds, host / 1e3, roofs, cuda)
        rows.append(
            ProfileRow(
                path=r.path,
                type=r.type,
                flops=flops,
                bytes=nbytes,
                forward_ms=fwd,
                backward_ms=bwd,
                host_ms=host,
                tflops=tflops,
                gbs=gbs,
                matmul_pct=100 * tflops / roofs.matmul_tflops if tflops is not None else None,
                copy_pct=100 * gbs / roofs.copy_gbs if gbs is not None else None,
                bound=bound,
                share=(fwd + bwd) / total_ms if total_ms else 0.0,
                counted_in=r.counted_in,
            )
        )
    for pseudo, kind in ((LOSS, "loss"), (UNATTRIBUTED, "-")):
        fwd = attribution.forward.get(pseudo, 0.0) / steps / 1e3
        bwd = attribution.backward.get(pseudo, 0.0) / steps / 1e3
        if pseudo == LOSS and not training or pseudo == UNATTRIBUTED and fwd + bwd == 0:
            continue
        host = attribution.host_subtree(pseudo) / steps / 1e3
        rows.append(
            ProfileRow(
                pseudo,
                kind,
                None,
                None,
                fwd,
                bwd,
                host,
                None,
                None,
                None,
                None,
                None,
                (fwd + bwd) / total_ms if total_ms else 0.0,
            )
        )
    return rows


def deepest_level(model: nn.Module) -> int:
    """The depth of the deepest module path (``blocks.0.attn.q_norm`` is 4)."""
    return max(depth_of(p) for p, _ in model.named_modules())
