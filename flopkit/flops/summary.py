"""The analytic rows behind :func:`flopkit.count` for flopkit modules, and validation runs: the
same count against fvcore and torch's ``FlopCounterMode``, reconciled per module and category.

What the ``report`` and ``validate`` commands print is computed here and in
:mod:`flopkit.flops.count`; the CLI only renders the results.
"""

from __future__ import annotations

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
from .llm import checkpoint_blocks, hardware_flops

__all__ = ["analytic_rows", "COUNTERS", "measure_config", "validate_config", "validate_model"]

COUNTERS = ("fvcore", "torch")


def analytic_rows(
    module: nn.Module,
    num_tokens: int,
    convention: str = "flopkit",
    depth: int | None = None,
    batch: int = 1,
    training: bool = False,
    checkpointing: str = "none",
) -> tuple[list[FlopRow], list[str]]:
    """Per-module rows of a flopkit module counted analytically on ``num_tokens`` tokens per sample
    times ``batch``, and the legend that explains them (:func:`flopkit.count`'s analytic path).

    Every row carries its hardware FLOPs (:func:`~flopkit.flops.llm.hardware_flops`: flopkit's
    attention runs SDPA, whose flash-style backward recomputes QK^T; ``checkpointing="blocks"``
    recomputes each repeated block's forward in a training step).
    """
    check_convention(convention)
    tree = flop_tree(module, num_tokens, convention)
    rows = flop_rows(module, tree, depth=depth, batch=batch, training=training)
    block_forward: dict[str, dict[str, int]] = {}
    if checkpointing == "blocks":
        nodes = {node.path: node for node in tree.walk()}
        block_forward = {b: scale_breakdown(breakdown_at(b, nodes), batch) for b in checkpoint_blocks(module)}
    legend = [
        counted_legend(),
        f"convention: {convention}; batch: {batch}; per {'training step' if training else 'forward'}",
    ]
    if training:
        legend.append(training_legend())
    for row in rows:
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
    return rows, legend


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
    """flopkit's count of any model (:func:`flopkit.count`: analytic where flopkit has formulas,
    measured elsewhere) against FlopCounterMode on the meta device and fvcore on a CPU copy built from
    ``spec`` and ``model_args`` (real, seeded weights), per module and category.

    ``model`` is the meta-device model, ``inputs`` its :class:`~flopkit.models.ModelInputs`; an error
    inside the model names ``spec``. A CPU copy whose forward cannot fit the host's free memory is
    refused before it is built (:func:`flopkit.checks.check_fits`); ``progress`` shows each counter.
    Returns a :class:`~flopkit.flops.reconcile.Reconciliation`.

    ``plain``: counters (:data:`~flopkit.flops.counters.PLAIN_COUNTERS`) also run as shipped on the
    CPU copy, each difference from flopkit with its cause (the reconciliation's ``plain``).
    """
    from flopkit.checks import check_tolerance
    from flopkit.models import LoadedModel, build_model, real_inputs, user_code

    from .anymodel import count_model
    from .count import count
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
        loaded = LoadedModel(label=label, module=model, spec=spec, model_args=dict(model_args or {}))
        rows = count(loaded, inputs, depth=depth).rows
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
