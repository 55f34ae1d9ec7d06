"""Whole reports as data: per-module FLOP rows with their legend, and validation runs.

What the ``report`` and ``validate`` commands print, computed here so that tests and other tools
call the same functions; the CLI only renders the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flopkit.formulas import (
    add_breakdowns,
    check_convention,
    counted_legend,
    flash_backward_extra,
    scale_breakdown,
    training_legend,
)
from flopkit.progress import SILENT, Progress

from .analytic import FlopRow, breakdown_at, flop_rows, flop_tree
from .llm import CHECKPOINTING, checkpoint_blocks, hardware_flops
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

    @property
    def hardware_flops(self) -> int | None:
        """matmul + attention as CUDA kernels run them (:func:`~flopkit.flops.llm.hardware_flops`)."""
        return self.rows[0].hardware_flops

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
            "hardware_flops": self.hardware_flops,
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
    checkpointing: str = "none",
) -> FlopReport:
    """Per-module FLOPs of ``module`` (on the meta device).

    A flopkit module is counted analytically on ``num_tokens`` tokens per sample (default: its own
    ``T``) times ``batch``. Any other module needs ``input_shape`` (batch included) and is measured
    by FlopCounterMode, with flopkit sub-modules counted analytically; ``batch`` must then be 1
    (the batch is the shape's first entry). ``inputs`` (``(args, kwargs)`` of meta tensors, batch
    included) replaces ``input_shape`` for a model with several or keyword inputs. Every row carries
    its hardware FLOPs (:func:`~flopkit.flops.llm.hardware_flops`; ``checkpointing="blocks"``
    recomputes each repeated block's forward in a training step).
    """
    check_convention(convention)
    if checkpointing not in CHECKPOINTING:
        raise ValueError(f"checkpointing must be one of {', '.join(CHECKPOINTING)}, got {checkpointing!r}")
    if checkpointing != "none" and not training:
        raise ValueError("checkpointing applies to a training step (training=True)")
    block_forward: dict[str, dict[str, int]] = {}
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
        if checkpointing == "blocks":
            nodes = {node.path: node for node in tree.walk()}
            block_forward = {
                b: scale_breakdown(breakdown_at(b, nodes), batch) for b in checkpoint_blocks(module)
            }
    else:
        if batch != 1:
            raise ValueError(
                "batch applies to a preset or config; with an input shape or inputs the batch is its first "
                f"entry ({input_shape[0] if input_shape is not None else 'of each tensor'})"
            )
        if inputs is None:
            with torch.device("meta"):
                rows, _ = mixed_rows(
                    module, torch.empty(input_shape), convention, depth, training, checkpointing=checkpointing
                )
            run = f"input shape: {list(input_shape)}"
        else:
            rows, _ = mixed_rows(module, inputs, convention, depth, training, checkpointing=checkpointing)
            shapes = [list(t.shape) for t in (*inputs[0], *inputs[1].values())]
            run = f"inputs: {', '.join(map(str, shapes))}"
        legend.append(MIXED_LEGEND)
    legend.append(f"convention: {convention}; {run}; per {'training step' if training else 'forward'}")
    if training:
        legend.append(training_legend())
    for row in rows:
        if row.hardware_flops is None:  # analytic rows: flopkit's attention runs SDPA (flash-style)
            forward = row.breakdown
            if row.backward is not None:
                forward = {c: v - row.backward.get(c, 0) for c, v in row.breakdown.items()}
            inside = any(row.path == b or row.path.startswith(b + ".") for b in block_forward)
            recompute = (
                forward
                if inside
                else add_breakdowns(*(f for b, f in block_forward.items() if row.path == "" or b.startswith(row.path + ".")))
            )  # fmt: skip
            row.hardware_flops = hardware_flops(
                row.breakdown,
                flash_backward_extra(forward["attention"]) if training else 0,
                recompute if block_forward else None,
            )
    if checkpointing == "blocks":
        legend.append(
            "hardware FLOPs: activation checkpointing of blocks recomputes the forward matmul + attention "
            f"of {len(block_forward) or 'each'} repeated block(s) in the backward"
        )
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

    from .anymodel import count_torch
    from .measured import count_fvcore

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
    plain: tuple[str, ...] = (),
    progress: Progress | None = None,
):
    """flopkit's report of any model (``mixed_rows``: analytic where flopkit has formulas, measured
    elsewhere) against FlopCounterMode on the meta device and fvcore on a CPU copy built from
    ``spec`` and ``model_args`` (real, seeded weights), per module and category.

    ``model`` is the meta-device model, ``inputs`` its :class:`~flopkit.models.ModelInputs`; an error
    inside the model names ``spec``. A CPU copy whose forward cannot fit the host's free memory is
    refused before it is built (:func:`flopkit.checks.check_fits`); ``progress`` shows each counter.
    Returns a :class:`~flopkit.flops.reconcile.Reconciliation`.

    ``plain``: counters (:data:`~flopkit.flops.counters.PLAIN_COUNTERS`) also run as shipped on the
    CPU copy, each difference from flopkit with its cause (the reconciliation's ``plain``).
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
        cpu = real = None
        if "fvcore" in counters or plain:
            if spec is None:
                raise ValueError("fvcore and the plain counters need a CPU copy of the model: give its spec")
            _check_cpu_run(model, inputs.args, inputs.kwargs, inputs.tensors[0].shape[0])
            progress.phase("fvcore: tracing a CPU copy")
            torch.manual_seed(0)
            cpu = build_model(spec, model_args, device="cpu")
            real = real_inputs(inputs)
        if "fvcore" in counters:
            measurements.append(count_fvcore_any(cpu, real.args, real.kwargs))
        if "torch" in counters:
            progress.phase("torch: FlopCounterMode on meta")
            measurements.append(count_model(model, inputs.args, inputs.kwargs).measurement())
        rec = reconcile_rows(model, rows, measurements, rtol=rtol)
        if plain:
            from .counters import compare_counters

            progress.phase("counters as shipped on the CPU copy")
            rec.plain = compare_counters(cpu, real.args, real.kwargs, dict(rows[0].breakdown), plain)
        progress.close()
    return rec
