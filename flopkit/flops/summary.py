"""Whole reports as data: per-module FLOP rows with their legend, and validation runs.

What the ``report`` and ``validate`` commands print, computed here so that tests and other tools
call the same functions; the CLI only renders the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flopkit.formulas import check_convention, counted_legend, training_legend
from flopkit.progress import SILENT, Progress

from .analytic import FlopRow, flop_rows, flop_tree
from .mixed import MIXED_LEGEND, mixed_rows

__all__ = ["FlopReport", "flop_report", "COUNTERS", "measure_config", "validate_config"]

COUNTERS = ("fvcore", "torch")


@dataclass
class FlopReport:
    """Per-module rows (``rows[0]`` is the whole model) and the legend that explains them."""

    rows: list[FlopRow]
    legend: list[str]
    convention: str
    batch: int
    training: bool
    info: dict[str, Any] = field(default_factory=dict)  # what the run was given (config, input shape)
    measured: bool = False  # rows come from a measured run (any nn.Module), each marked with its source

    @property
    def total_flops(self) -> int:
        return self.rows[0].flops

    @property
    def total_params(self) -> int:
        return self.rows[0].params

    def to_dict(self) -> dict[str, Any]:
        rows = [r.to_dict() for r in self.rows]
        if not self.measured:
            rows = [{k: v for k, v in r.items() if k != "source"} for r in rows]
        return {
            **self.info,
            "convention": self.convention,
            "batch": self.batch,
            "training": self.training,
            "total_flops": self.total_flops,
            "total_params": self.total_params,
            "rows": rows,
            "legend": self.legend,
        }


def flop_report(
    module: nn.Module,
    *,
    num_tokens: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    inputs: tuple[tuple, dict] | None = None,
    convention: str = "flopkit",
    depth: int | None = None,
    batch: int = 1,
    training: bool = False,
    info: dict[str, Any] | None = None,
) -> FlopReport:
    """Per-module FLOPs of ``module`` (on the meta device).

    A flopkit module is counted analytically on ``num_tokens`` tokens per sample (default: its own
    ``T``) times ``batch``. Any other module needs ``input_shape`` (batch included) and is measured
    by FlopCounterMode, with flopkit sub-modules counted analytically; ``batch`` must then be 1
    (the batch is the shape's first entry). ``inputs`` (``(args, kwargs)`` of meta tensors, batch
    included) replaces ``input_shape`` for a model with several or keyword inputs.
    """
    check_convention(convention)
    legend = [counted_legend()]
    if input_shape is not None and inputs is not None:
        raise ValueError("give input_shape or inputs, not both")
    measured = input_shape is not None or inputs is not None
    if not measured:
        tree = flop_tree(
            module, module.default_flop_tokens() if num_tokens is None else num_tokens, convention
        )
        rows = flop_rows(module, tree, depth=depth, batch=batch, training=training)
        run = f"batch: {batch}"
    else:
        if batch != 1:
            raise ValueError(
                "batch applies to a preset or config; with an input shape or inputs the batch is its first "
                f"entry ({input_shape[0] if input_shape is not None else 'of each tensor'})"
            )
        if inputs is None:
            with torch.device("meta"):
                rows, _ = mixed_rows(module, torch.empty(input_shape), convention, depth, training)
            run = f"input shape: {list(input_shape)}"
        else:
            rows, _ = mixed_rows(module, inputs, convention, depth, training)
            shapes = [list(t.shape) for t in (*inputs[0], *inputs[1].values())]
            run = f"inputs: {', '.join(map(str, shapes))}"
        legend.append(MIXED_LEGEND)
    legend.append(f"convention: {convention}; {run}; per {'training step' if training else 'forward'}")
    if training:
        legend.append(training_legend())
    return FlopReport(rows, legend, convention, batch, training, dict(info or {}), measured)


def measure_config(
    config, counters: tuple[str, ...] = COUNTERS, batch: int = 1, progress: Progress | None = None
) -> tuple[nn.Module, list]:
    """Run ``counters`` on the model of ``config`` (a :class:`flopkit.config.Config`) with a batch of
    ``batch``; returns the meta module and one :class:`~flopkit.flops.measured.Measurement` per counter.

    fvcore runs a JIT trace on a CPU build (seeded weights, real tensors); torch's FlopCounterMode
    runs on the meta device. Both run inside ``flopkit.kernels.route_through_custom_ops()``.
    """
    from flopkit.config import model_input

    from .measured import count_fvcore, count_torch

    unknown = [c for c in counters if c not in COUNTERS]
    if unknown or not counters:
        raise ValueError(f"counters must be a non-empty subset of {COUNTERS}, got {tuple(counters)}")
    progress = progress or SILENT
    meta = config.meta_module.eval()
    measurements = []
    if "fvcore" in counters:
        config.check_cpu_build()
        _check_cpu_run(meta, (model_input(config, meta, batch, "meta"),), {}, batch)
        progress.phase("fvcore: tracing a CPU copy")
        torch.manual_seed(0)
        cpu = config.build("cpu").eval()
        measurements.append(count_fvcore(cpu, model_input(config, cpu, batch, "cpu")))
    if "torch" in counters:
        progress.phase("torch: FlopCounterMode on meta")
        with torch.device("meta"):
            measurements.append(count_torch(meta, model_input(config, meta, batch, "meta")))
    progress.close()
    return meta, measurements


def _check_cpu_run(meta: nn.Module, args: tuple, kwargs: dict, batch: int) -> None:
    """Refuse, before building it, a CPU copy whose forward cannot fit the host's free memory."""
    from flopkit.checks import check_fits, peak_bytes_lower_bound

    needed = peak_bytes_lower_bound(meta, args, kwargs)
    check_fits(needed, "cpu", "batch", batch, "fvcore's forward of a CPU copy")


def validate_config(
    config,
    counters: tuple[str, ...] = COUNTERS,
    batch: int = 1,
    rtol: float = 0.0,
    depth: int | None = None,
    progress: Progress | None = None,
):
    """:func:`measure_config`, then reconcile the measurements with the analytic count (flopkit's
    convention, what runs); returns a :class:`~flopkit.flops.reconcile.Reconciliation`."""
    from flopkit.checks import check_tolerance

    from .reconcile import reconcile

    check_tolerance(rtol)  # before the counters run
    meta, measurements = measure_config(config, counters, batch, progress)
    tree = flop_tree(meta, config.tokens(meta))
    return reconcile(meta, tree, measurements, batch=batch, rtol=rtol, depth=depth)


def validate_model(
    model: nn.Module,
    inputs,
    counters: tuple[str, ...] = COUNTERS,
    rtol: float = 0.0,
    depth: int | None = None,
    spec: str | None = None,
    model_args: dict[str, Any] | None = None,
    progress: Progress | None = None,
):
    """flopkit's report of any model (``mixed_rows``: analytic where flopkit has formulas, measured
    elsewhere) against FlopCounterMode on the meta device and fvcore on a CPU copy built from
    ``spec`` and ``model_args`` (real, seeded weights), per module and category.

    ``model`` is the meta-device model, ``inputs`` its :class:`~flopkit.models.ModelInputs`; an error
    inside the model names ``spec``. A CPU copy whose forward cannot fit the host's free memory is
    refused before it is built (:func:`flopkit.checks.check_fits`); ``progress`` shows each counter. Returns a :class:`~flopkit.flops.reconcile.Reconciliation`.
    """
    from flopkit.checks import check_tolerance
    from flopkit.models import build_model, real_inputs, user_code

    from .anymodel import count_model
    from .measured import count_fvcore_any
    from .reconcile import reconcile_rows

    unknown = [c for c in counters if c not in COUNTERS]
    if unknown or not counters:
        raise ValueError(f"counters must be a non-empty subset of {COUNTERS}, got {tuple(counters)}")
    check_tolerance(rtol)  # before the counters run
    label = spec or type(model).__name__
    progress = progress or SILENT
    with user_code(label, "running the model"):
        progress.phase("flopkit: counting on meta")
        rows, _ = mixed_rows(model, (inputs.args, inputs.kwargs), "flopkit", depth)
        measurements = []
        if "fvcore" in counters:
            if spec is None:
                raise ValueError("fvcore needs a CPU copy of the model: give its spec")
            _check_cpu_run(model, inputs.args, inputs.kwargs, inputs.tensors[0].shape[0])
            progress.phase("fvcore: tracing a CPU copy")
            torch.manual_seed(0)
            cpu = build_model(spec, model_args, device="cpu")
            real = real_inputs(inputs)
            measurements.append(count_fvcore_any(cpu, real.args, real.kwargs))
        if "torch" in counters:
            progress.phase("torch: FlopCounterMode on meta")
            measurements.append(count_model(model, inputs.args, inputs.kwargs).measurement())
        progress.close()
    return reconcile_rows(model, rows, measurements, rtol=rtol)
