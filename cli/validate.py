"""``flopkit validate``: analytic FLOPs against fvcore and torch's FlopCounterMode."""

from __future__ import annotations

from typing import Any

import click

from flopkit.flops.summary import COUNTERS, validate_config
from flopkit.formulas import CATEGORIES, CONVENTIONS
from flopkit.report import render_json, render_rows

from ._options import (
    CONTEXT,
    batch_option,
    cli_text,
    config_argument,
    depth_option,
    format_option,
    given,
    model_options,
    model_settings,
    refuse_without_model,
    resolve_model,
    set_option,
)

__all__ = ["validate"]


def _only_flopkit_convention(ctx, param, value: str) -> str:
    if value != "flopkit":
        raise click.BadParameter(
            f"validate compares what runs, the flopkit convention; {value} counts one head of QK-norm "
            f"and can never match a counter (use report --convention {value})",
            ctx=ctx,
            param=param,
        )
    return value


@click.command(context_settings=CONTEXT)
@config_argument(required=False)
@set_option
@click.option(
    "--against", default="fvcore,torch", show_default=True, help="Counters, comma-separated: fvcore, torch."
)
@click.option(
    "--rtol", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Relative tolerance."
)
@batch_option("Batch size of the measured run.")
@depth_option
@click.option(
    "--convention",
    type=click.Choice(CONVENTIONS),
    default="flopkit",
    show_default=True,
    callback=_only_flopkit_convention,
    help="Only flopkit: the counters measure QK-norm over every head.",
)
@model_options
@format_option
@click.pass_context
def validate(
    ctx, config, overrides, against, rtol, batch, depth, convention, model_spec, model_args, input_shape,
    seq_len, named_inputs, causal, fmt,
) -> None:  # fmt: skip
    """Analytic FLOPs vs fvcore's FlopCountAnalysis and torch's FlopCounterMode, per module and
    category. Verdict OK (equal), EXPLAINED (each difference is what a named counter blind spot
    hides, e.g. fvcore's fused nn.MultiheadAttention op; exit 0) or MISMATCH (exit status 1: a
    comparable count differs by more than --rtol).

    \b
    Examples:
      flopkit validate vit5-small
      flopkit validate examples/attention-small.yaml --against torch
      flopkit validate vit5-base --depth 3 --format markdown
      flopkit validate --model hf:bert --model-arg num_hidden_layers=2 --seq-len 128
      flopkit validate --model timm:resnet18 --depth 1
    """
    from flopkit.progress import progress_for

    counters = tuple(c.strip() for c in against.split(",") if c.strip())
    if not counters or any(c not in COUNTERS for c in counters) or len(set(counters)) != len(counters):
        raise click.BadParameter(f"expected fvcore and/or torch, got {against!r}", param_hint="--against")
    if given(ctx, "causal"):
        raise click.UsageError("--causal-attention applies to report: validate counts every query-key pair")
    if model_spec is None:
        refuse_without_model(ctx, "model_args", "input_shape", "seq_len", "named_inputs")
    settings = model_settings(model_args, input_shape, seq_len, named_inputs)
    loaded = resolve_model(config, overrides, model_spec, settings[0])
    if not loaded.is_config:
        from .model_cmds import validate_model

        with progress_for(fmt) as progress:
            rec = validate_model(
                loaded, *settings[1:], batch=batch, counters=list(counters), rtol=rtol, depth=depth, fmt=fmt,
                render=_render_validation, progress=progress,
            )  # fmt: skip
        if not rec.ok:
            ctx.exit(1)
        return
    with progress_for(fmt) as progress:
        rec = validate_config(loaded.config, counters, batch=batch, rtol=rtol, depth=depth, progress=progress)
    if fmt == "json":
        data = {"config": loaded.to_dict(), "convention": convention, "batch": batch, **rec.to_dict()}
        click.echo(render_json(data))
    else:
        click.echo(_render_validation(loaded.label, rec, fmt))
    if not rec.ok:
        ctx.exit(1)


def _render_validation(source: str, rec, fmt: str) -> str:
    from flopkit.flops.ops import category_of

    names = rec.counters
    sets = {tuple(rec.comparable[n]) for n in names}
    shared = len(sets) == 1
    headers = ["module", "type", "analytic (all)"]
    if shared:
        headers.append(f"analytic ({'+'.join(next(iter(sets)))})")
    for n in names:
        if not shared:
            headers.append(f"analytic ({'+'.join(rec.comparable[n])})")
        headers += [f"{n}", f"Δ {n}"]
    headers.append("verdict")
    body = []
    for r in [*rec.rows[1:], rec.rows[0]]:
        name = r.path or "TOTAL"
        if fmt == "table" and r.path:
            name = "  " * r.path.count(".") + r.path
        line: list[Any] = [name, r.type, sum(r.analytic.values())]
        if shared:
            line.append(r.compared[names[0]])
        for n in names:
            if not shared:
                line.append(r.compared[n])
            if n in r.measured:
                delta = r.measured[n] - r.compared[n]
                line += [r.measured[n], f"{delta:+,}" if fmt != "csv" else delta]
            else:
                line += ["-", "-"]
        line.append(r.verdict)
        body.append(line)
    if fmt == "csv":
        return render_rows(headers, body, fmt)
    main = render_rows(
        headers, body, fmt, title=f"validate {source}: analytic vs measured, per module (FLOPs)"
    )
    cat_headers = ["category", "analytic"]
    for n in names:
        cat_headers += [f"{n} raw", f"{n} (FLOPs)", f"Δ {n}"]
    cat_body = []
    for cat in CATEGORIES:
        line = [cat, rec.totals["analytic"][cat]]
        for n in names:
            raw = sum(v for op, v in rec.raw_totals[n].items() if category_of(n, op) == cat)
            got = rec.totals[n][cat]
            if cat in rec.comparable[n]:
                line += [raw, got, f"{got - rec.totals['analytic'][cat]:+,}"]
            else:
                line += [raw or "-", got or "-", "not comparable"]
        cat_body.append(line)
    skipped = []
    for n in names:
        ops = ", ".join(f"{op} x{k}" for op, k in sorted(rec.skipped[n].items(), key=lambda kv: -kv[1]))
        if ops:
            skipped.append(f"{n} saw but did not count: {ops}.")
    cats = render_rows(
        cat_headers,
        cat_body,
        fmt,
        title="whole model, by category",
        notes=[*map(cli_text, rec.notes), *skipped],
    )
    plain = f"\n\n{render_plain_counters(rec, fmt)}" if rec.plain else ""
    within = "exactly" if rec.rtol == 0 else f"within rtol={rec.rtol:g}"
    verdict = {
        "OK": f"OK: every comparable count agrees ({within})",
        "EXPLAINED": "EXPLAINED: every difference is work that a named counter blind spot hides "
        f"({', '.join(op for calls in rec.blind_spots.values() for op in calls)}; see its note); the "
        f"rest agrees ({within})",
        "MISMATCH": f"MISMATCH: a comparable count differs by more than rtol={rec.rtol:g}",
    }[rec.verdict]
    return f"{main}\n\n{cats}{plain}\n\n{verdict}"


def render_plain_counters(rec, fmt: str) -> str:
    """One column per counter run as shipped (CPU, real tensors), FLOPs by category against
    flopkit's forward, and the cause of every difference."""
    names = {"fvcore": "fvcore", "flopcountermode": "FlopCounterMode", "ptflops": "ptflops (aten)"}
    flopkit = rec.totals["analytic"]
    headers = ["category", "flopkit", *[names.get(c.counter, c.counter) for c in rec.plain]]
    body = []
    for cat in [*CATEGORIES, "total"]:
        ours = sum(flopkit.values()) if cat == "total" else flopkit[cat]
        line: list[Any] = [cat, ours]
        for c in rec.plain:
            if c.error is not None:
                line.append("-")
                continue
            theirs = c.total if cat == "total" else c.flops.get(cat, 0)
            line.append(f"{theirs:,}" + ("" if theirs == ours else f" ({theirs - ours:+,})"))
        body.append(line)
    notes = []
    for c in rec.plain:
        label = names.get(c.counter, c.counter)
        if c.error is not None:
            notes.append(f"{label}: {c.error}")
            continue
        unit = "counts multiply-accumulates (x2 here)" if c.unit == "MAC" else "counts FLOPs"
        notes.append(f"{label} {unit}; " + ("agrees in every category" if not c.causes else "differs:"))
        notes += [f"  {label} {cat}: {cause}" for cat, cause in c.causes.items()]
    title = "counters as shipped (CPU copy, real tensors; no flopkit handles), forward FLOPs by category"
    return render_rows(headers, body, fmt, title=title, notes=notes)
