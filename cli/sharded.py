"""``report --fsdp/--tp/--dp-replicate``: one rank of a sharded training step, rendered."""

from __future__ import annotations

from typing import Any

import click

from flopkit.formulas import CATEGORIES
from flopkit.report import render_json, render_rows

from ._options import given, model_settings, resolve_model

__all__ = ["report_sharded", "render_sharded", "SHARDED_REFUSED"]

# report options that a sharded report does not take: parameter name -> (option, why).
SHARDED_REFUSED = {
    "convention": ("--convention", "a sharded report is measured, not analytic"),
    "columns": ("--columns", "a sharded report has its own columns"),
    "plot_path": ("--plot", "a sharded report runs one --seq-len"),
    "causal": ("--causal-attention", "a sharded report counts attention on all query-key pairs"),
    "kv_cache": ("--kv-cache", "a sharded report counts a training step"),
    "generate": ("--generate", "a sharded report counts a training step"),
    "checkpointing": ("--checkpointing", "a sharded report does not model activation checkpointing"),
    "strict": ("--strict", "a sharded report lists its uncounted ops in the legend"),
}

# (phase, kind) columns of the per-module table.
COMM_COLUMNS = (
    ("forward", "all_gather", "AG fwd"),
    ("backward", "all_gather", "AG bwd"),
    ("backward", "reduce_scatter", "RS bwd"),
    ("forward", "all_reduce", "AR fwd"),
    ("backward", "all_reduce", "AR bwd"),
)


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _comm_cell(row, phase: str, kind: str) -> str:
    entry = row.collectives.get(phase, {}).get(kind)
    return f"{_bytes(entry['payload_bytes'])} ({entry['calls']})" if entry else ""


def render_sharded(result, fmt: str, label: str) -> str:
    """The per-module table (categories, forward, backward, collectives) and the step summary."""
    rows = result.rows
    headers = ["module", "type", "params", *CATEGORIES, "total", "forward", "backward"]
    headers += [name for _, _, name in COMM_COLUMNS]
    body: list[list[Any]] = []
    for r in [*rows[1:], rows[0]]:
        name = r.path or "TOTAL"
        if fmt == "table" and r.path:
            name = "  " * r.path.count(".") + r.path
        line: list[Any] = [name, r.type, r.params, *(r.breakdown[c] for c in CATEGORIES), r.flops]
        line += [r.forward, r.backward, *(_comm_cell(r, p, k) for p, k, _ in COMM_COLUMNS)]
        body.append(line)
    cfg = result.config
    title = (
        f"{label}, rank 0 of {cfg.describe()}: {rows[0].flops:,} FLOPs per step, "
        f"{rows[0].params:,} parameter elements held"
    )
    if fmt == "csv":
        return render_rows(headers, body, fmt)
    table = render_rows(headers, body, fmt, title=title)
    return "\n\n".join([table, _summary(result, fmt)])


def _summary(result, fmt: str) -> str:
    mem, time = result.memory, result.time
    per_rank, single, dup = result.per_rank, result.single_device, result.tp_duplicated
    lines: list[list[Any]] = [
        ["FLOPs per rank (forward + backward)", f"{sum(per_rank.values()):,}"],
        ["single device, same micro-batch", f"{sum(single.values()):,}"],
        ["TP duplicated work (tp x rank - single)", f"{sum(dup.values()):,} ({_nonzero(dup)})"],
    ]
    for entry in result.collective_totals():
        lines.append(
            [
                f"{entry['phase']} {entry['kind'].replace('_', '-')} over {entry['group']} ({entry['group_size']})",
                f"{entry['calls']} calls, {_bytes(entry['payload_bytes'])} payload, {_bytes(entry['wire_bytes'])} sent",
            ]
        )
    lines += [
        ["parameter shards", _bytes(mem.params)],
        ["gradient shards", _bytes(mem.grads)],
        ["optimizer states", _bytes(mem.optimizer)],
        [
            "unsharded FSDP units at a time (peak)",
            f"{_bytes(mem.unsharded_peak)} (largest unit {_bytes(mem.largest_unit)})",
        ],
        *(
            [["activations saved for the backward", _bytes(mem.activations)]]
            if mem.activations is not None
            else []
        ),
        [
            "memory without activations" if mem.activations is None else "memory (sum of the above)",
            _bytes(mem.total),
        ],
        *(
            [["predicted peak (flopkit memory, one rank)", _bytes(mem.predicted_peak)]]
            if mem.predicted_peak is not None
            else []
        ),
        ["compute time", f"{time.compute_ms:.3f} ms at {time.tflops:g} TFLOP/s"],
    ]
    for group, ms in time.comm_ms.items():
        lines.append([f"communication time ({group})", f"{ms:.3f} ms at {time.gbps:g} GB/s"])
    intensity = f"{time.intensity:,.0f}" if time.intensity is not None else "-"
    lines += [
        ["FLOPs per byte sent (machine ridge)", f"{intensity} ({time.ridge:,.0f})"],
        ["step lower bound", f"{time.lower_bound_ms:.3f} ms"],
        ["bound", time.bound],
    ]
    if time.step_ms is not None:
        lines.append(["MFU / HFU", f"{100 * time.mfu:.1f}% / {100 * time.hfu:.1f}% at {time.step_ms:g} ms"])
    return render_rows(["per rank", "value"], lines, fmt, notes=result.legend())


def _nonzero(breakdown: dict[str, int]) -> str:
    parts = [f"{c} {v:,}" for c, v in breakdown.items() if v]
    return ", ".join(parts) or "none"


def report_sharded(
    ctx,
    config,
    overrides,
    batch,
    depth,
    model_spec,
    model_args,
    input_shape,
    seq_len,
    named_inputs,
    fmt,
    sharding,
) -> None:
    """``flopkit report ... --fsdp N --tp M``: checks every option, then runs and renders."""
    from flopkit.parallel import ParallelConfig, sharded_report, step_time

    for name, (option, why) in SHARDED_REFUSED.items():
        if given(ctx, name):
            raise click.UsageError(f"{option} does not apply with --fsdp/--tp/--dp-replicate: {why}")
    # Every number is checked before the model is built.
    degrees = ParallelConfig(
        fsdp=sharding["fsdp"], tp=sharding["tp"], dp_replicate=sharding["dp_replicate"], batch=batch
    )
    step_time(0, 0, {}, sharding["tflops"], sharding["gbps"], sharding["step_ms"])
    if sharding["optimizer_states"] < 0:
        raise click.BadParameter(
            f"must be >= 0, got {sharding['optimizer_states']}", param_hint="--optimizer-states"
        )
    settings = model_settings(model_args, input_shape, seq_len, named_inputs)
    if settings[2] is not None and len(settings[2]) > 1:
        raise click.UsageError("a sharded report takes one --seq-len")
    if model_spec is None and (input_shape or seq_len or named_inputs or model_args):
        raise click.UsageError("--model-arg, --input-shape, --seq-len and --input apply only with --model")
    loaded = resolve_model(config, overrides, model_spec, settings[0])
    from flopkit.parallel.run import check_sharding

    check_sharding(
        loaded.module, degrees, sharding["tp_plan"]
    )  # the plan against the model, before running it
    if loaded.is_config:
        from flopkit.config import model_input

        args, kwargs, label = (model_input(loaded.config, loaded.module, batch, "meta"),), {}, loaded.label
    else:
        from flopkit.models import model_inputs

        inputs = model_inputs(
            loaded.module,
            batch=batch,
            input_shape=settings[1],
            seq_len=settings[2][0] if settings[2] else None,
            named=settings[3],
            spec=model_spec,
        )
        args, kwargs, label = inputs.args, inputs.kwargs, model_spec
    from .model_cmds import run_forward

    info = {"model": loaded.to_dict(), "batch": batch}
    result = run_forward(
        label, sharded_report, loaded.module, args, kwargs, batch=batch, depth=depth, info=info, **sharding
    )
    if fmt == "json":
        click.echo(render_json(result.to_dict()))
        return
    click.echo(render_sharded(result, fmt, label))
