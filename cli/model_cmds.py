"""``report --model`` and ``validate --model``: any model (timm, Hugging Face, a user's callable).

Parses the model options, calls :mod:`flopkit.models` and :mod:`flopkit.flops`, renders.
"""

from __future__ import annotations

from typing import Any

import click

from flopkit.formulas import CATEGORIES
from flopkit.report import percent, render_json, render_rows

COLUMN_GROUPS = ("shapes", "memory")


def parse_columns(text: str | None) -> tuple[str, ...]:
    """``"shapes,memory"`` -> ``("shapes", "memory")``; each one of :data:`COLUMN_GROUPS`."""
    if not text:
        return ()
    groups = tuple(c.strip() for c in text.split(",") if c.strip())
    bad = [g for g in groups if g not in COLUMN_GROUPS]
    if bad or not groups:
        raise click.BadParameter(
            f"expected a comma-separated list of {', '.join(COLUMN_GROUPS)}, got {text!r}",
            param_hint="--columns",
        )
    return groups


def attach_shapes(rows, cfg, module, batch: int) -> None:
    """Give each row of a flopkit config's report the shapes of its module's first call (one
    meta-device forward on the config's input)."""
    from flopkit.config import model_input
    from flopkit.flops.anymodel import layer_shapes

    shapes = layer_shapes(module, (model_input(cfg, module, batch, "meta"),))
    for row in rows:
        row.shapes = shapes.get(row.path)


def _shape_text(shapes: list[list[int]], dtypes: list[str]) -> str:
    return "; ".join(f"[{', '.join(map(str, s))}] {d}" for s, d in zip(shapes, dtypes, strict=True))


def _short(text: str, width: int = 44) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_model_rows(
    rows, fmt: str, title: str, legend: list[str], columns: tuple[str, ...], training: bool
) -> str:
    """The per-module table of ``report --model``: categories, total, share, forward/backward
    (``training``), shapes and memory (``columns``), source and repr."""
    total = rows[0].flops
    headers = ["module", "type", "params", *CATEGORIES, "total", "share"]
    if training:
        headers += ["forward", "backward"]
    if "shapes" in columns:
        headers += ["input", "output"]
    if "memory" in columns:
        headers += ["param bytes", "output bytes"]
    headers += ["source", "repr"]
    body = []
    for r in [*rows[1:], rows[0]]:
        name = r.path or "TOTAL"
        if fmt == "table" and r.path:
            name = "  " * r.path.count(".") + r.path
        line: list[Any] = [name, r.type, r.params, *[r.breakdown[c] for c in CATEGORIES], r.flops]
        line.append(percent(r.flops, total))
        if training:
            backward = sum(r.backward.values()) if r.backward is not None else 0
            line += [r.flops - backward, backward]
        s = r.shapes
        if "shapes" in columns:
            line += (
                [_shape_text(s.input_shapes, s.input_dtypes), _shape_text(s.output_shapes, s.output_dtypes)]
                if s is not None
                else ["-", "-"]
            )
        if "memory" in columns:
            line += [s.param_bytes, s.output_bytes] if s is not None else ["-", "-"]
        line += [r.source, _short(r.repr) if fmt == "table" else r.repr]
        body.append(line)
    return render_rows(
        headers, body, fmt, title=None if fmt == "csv" else title, notes=[] if fmt == "csv" else legend
    )


def model_legend(convention: str, inputs, count, training: bool, batch: int, analytic: bool) -> list[str]:
    """Legend lines of a ``--model`` report; ``analytic``: some rows come from flopkit modules."""
    from flopkit.flops.anymodel import ANYMODEL_LEGEND, causal_legend
    from flopkit.flops.mixed import MIXED_LEGEND
    from flopkit.formulas import counted_legend, training_legend

    legend = [counted_legend(), MIXED_LEGEND] if analytic else []
    legend += [
        ANYMODEL_LEGEND,
        causal_legend(count.causal, count.causal_calls, count.masked_calls),
        f"convention: {convention}; batch: {batch}; inputs: {inputs.describe()} ({inputs.origin}); per "
        + ("training step" if training else "forward"),
    ]
    if training:
        legend.append(
            "--training on a model: measured rows count the backward with FlopCounterMode on the meta "
            "device (loss = sum of the outputs; inputs do not require grad, so the first layer computes no "
            "input gradient); analytic rows use the rule below."
        )
        legend.append(training_legend())
    return legend


def run_forward(spec: str, fn, *args, **kwargs):
    """Call ``fn`` (a count over the user's model); an error inside the model becomes one line naming
    the spec, with the original message (:func:`flopkit.models.user_code`)."""
    from flopkit.models import user_code

    with user_code(spec, "running the model"):
        return fn(*args, **kwargs)


def report_model(
    loaded,
    input_shape: tuple[int, ...] | None,
    seq_lens: list[int] | None,
    named_inputs: list,
    *,
    batch: int,
    causal: str,
    depth: int,
    training: bool,
    convention: str,
    columns: tuple[str, ...],
    plot_path: str | None,
    fmt: str,
) -> None:
    """``flopkit report --model SPEC ...``: the per-module table, or one row per ``--seq-len``.
    ``loaded``: the :class:`~flopkit.models.LoadedModel` of the spec."""
    from flopkit.flops.mixed import mixed_rows
    from flopkit.models import model_inputs

    if plot_path is not None:
        _check_plot_path(plot_path)
    model, spec, model_args = loaded.module, loaded.spec, loaded.model_args
    if seq_lens is not None and len(seq_lens) > 1:
        if columns:
            raise click.UsageError("--columns applies to the per-module table, not to a --seq-len sweep")
        _sweep(
            model,
            spec,
            model_args,
            batch,
            seq_lens,
            named_inputs,
            causal,
            training,
            convention,
            plot_path,
            fmt,
        )
        return
    if plot_path is not None:
        raise click.UsageError(
            "--plot draws FLOPs against length: give two or more lengths, --seq-len 128,512"
        )
    inputs = model_inputs(
        model,
        batch=batch,
        input_shape=input_shape,
        seq_len=seq_lens[0] if seq_lens else None,
        named=named_inputs,
        spec=f"--model {spec}",
    )
    rows, count = run_forward(
        spec, mixed_rows, model, (inputs.args, inputs.kwargs), convention, depth, training, causal
    )
    legend = model_legend(convention, inputs, count, training, batch, _has_analytic(rows))
    if fmt == "json":
        data = {
            "model": spec,
            "model_args": model_args,
            "batch": batch,
            "inputs": inputs.describe(),
            "convention": convention,
            "causal_attention": causal,
            "training": training,
            "total_flops": rows[0].flops,
            "total_params": rows[0].params,
            "rows": [r.to_dict() for r in rows],
            "legend": legend,
        }
        click.echo(render_json(data))
        return
    title = f"{spec}: {rows[0].flops:,} FLOPs, {rows[0].params:,} parameters"
    click.echo(render_model_rows(rows, fmt, title, legend, columns, training))


def _has_analytic(rows) -> bool:
    return any(r.source != "measured" for r in rows)


def _sweep(
    model, spec, model_args, batch, seq_lens, named_inputs, causal, training, convention, plot_path, fmt
):
    from flopkit.models import model_inputs
    from flopkit.progress import progress_for

    for n in seq_lens:  # every length is checked before the first is counted
        model_inputs(model, batch=batch, seq_len=n, named=named_inputs, spec=f"--model {spec}")
    results = []
    with progress_for(fmt) as progress:
        for n in progress.iterate(seq_lens, "seq-len sweep"):
            results.append(_sweep_row(model, spec, batch, n, named_inputs, causal, training, convention))
    inputs, rows, count = results[-1].pop("_last")
    for r in results:
        r.pop("_last", None)
    label = spec + (f" ({', '.join(f'{k}={v}' for k, v in model_args.items())})" if model_args else "")
    written = _plot_sweep(results, label, causal, plot_path) if plot_path else None
    legend = model_legend(convention, inputs, count, training, batch, _has_analytic(rows))
    legend[-1 if not training else -3] = (
        f"convention: {convention}; batch: {batch}; int64 ids [batch, seq_len]; per "
        + ("training step" if training else "forward")
    )
    if fmt == "json":
        data = {
            "model": spec,
            "model_args": model_args,
            "batch": batch,
            "causal_attention": causal,
            "training": training,
            "params": rows[0].params,
            "rows": results,
            "legend": legend,
        }
        if written:
            data["plot"] = str(written)
        click.echo(render_json(data))
        return
    headers = ["seq_len", *CATEGORIES, "total", "FLOPs / token"]
    if training:
        headers += ["forward", "backward"]
    body = []
    for r in results:
        line = [r["seq_len"], *[r["breakdown"][c] for c in CATEGORIES], r["total_flops"]]
        line.append(f"{r['total_flops'] / (r['seq_len'] * batch):,.0f}")
        if training:
            line += [r["forward_flops"], r["backward_flops"]]
        body.append(line)
    if written and fmt != "csv":
        legend.append(f"plot: {written}")
    click.echo(
        render_rows(
            headers,
            body,
            fmt,
            title=None
            if fmt == "csv"
            else f"{spec}: FLOPs by sequence length ({rows[0].params:,} parameters)",
            notes=[] if fmt == "csv" else legend,
        )
    )


def _sweep_row(model, spec, batch, n, named_inputs, causal, training, convention) -> dict:
    """One length of a ``--seq-len`` sweep: the whole model's FLOPs (``_last``: the inputs, rows and
    count, which the legend reads from the last length)."""
    from flopkit.flops.mixed import mixed_rows
    from flopkit.models import model_inputs

    inputs = model_inputs(model, batch=batch, seq_len=n, named=named_inputs, spec=f"--model {spec}")
    rows, count = run_forward(
        spec, mixed_rows, model, (inputs.args, inputs.kwargs), convention, 0, training, causal
    )
    top = rows[0]
    backward = sum(top.backward.values()) if top.backward is not None else 0
    return {
        "seq_len": n,
        "breakdown": dict(top.breakdown),
        "total_flops": top.flops,
        "forward_flops": top.flops - backward,
        "backward_flops": backward,
        "_last": (inputs, rows, count),
    }


def _check_plot_path(path: str) -> None:
    """Refuse a ``--plot`` target in a missing directory, or without matplotlib, before any work."""
    from flopkit.checks import check_output_path

    check_output_path(path, "plot_path")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.UsageError("--plot needs matplotlib: pip install 'flopkit[plot]'") from None


def _plot_sweep(results: list[dict], spec: str, causal: str, path: str):
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = Path(path)
    lens = [r["seq_len"] for r in results]
    fig, ax = plt.subplots(figsize=(6, 4))
    for cat in CATEGORIES:
        values = [r["breakdown"][cat] for r in results]
        if any(values):
            ax.plot(lens, values, marker="o", label=cat)
    ax.plot(lens, [r["total_flops"] for r in results], marker="o", color="black", label="total")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("FLOPs")
    ax.set_title(f"{spec} (causal attention: {causal})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    plt.close(fig)
    return target


def validate_model(
    loaded,
    input_shape: tuple[int, ...] | None,
    seq_lens: list[int] | None,
    named_inputs: list,
    *,
    batch: int,
    counters: list[str],
    rtol: float,
    depth: int,
    fmt: str,
    render,
    progress=None,
):
    """``flopkit validate --model SPEC``: :func:`flopkit.flops.summary.validate_model` on the model
    of ``loaded``, rendered. Returns the reconciliation."""
    from flopkit.flops.summary import validate_model as validate_any
    from flopkit.models import model_inputs

    if seq_lens is not None and len(seq_lens) > 1:
        raise click.UsageError("validate takes one --seq-len (a sweep is report --seq-len 128,512,...)")
    model, spec, model_args = loaded.module, loaded.spec, loaded.model_args
    inputs = model_inputs(
        model,
        batch=batch,
        input_shape=input_shape,
        seq_len=seq_lens[0] if seq_lens else None,
        named=named_inputs,
        spec=f"--model {spec}",
    )
    rec = validate_any(
        model, inputs, tuple(counters), rtol, depth, spec=spec, model_args=model_args, progress=progress
    )
    if fmt == "json":
        click.echo(
            render_json(
                {
                    "model": spec,
                    "model_args": model_args,
                    "batch": batch,
                    "inputs": inputs.describe(),
                    "rtol": rec.rtol,
                    "ok": rec.ok,
                    "verdict": rec.verdict,
                    "hidden": rec.hidden,
                    "blind_spots": rec.blind_spots,
                    "comparable": {k: list(v) for k, v in rec.comparable.items()},
                    "totals": rec.totals,
                    "raw_totals": rec.raw_totals,
                    "skipped_ops": rec.skipped,
                    "rows": [
                        {
                            "path": r.path,
                            "type": r.type,
                            "flopkit": r.analytic,
                            "compared": r.compared,
                            "measured": r.measured,
                            "deltas": r.deltas,
                            "status": r.status,
                            "verdict": r.verdict,
                        }
                        for r in rec.rows
                    ],
                    "notes": rec.notes,
                }
            )
        )
    else:
        click.echo(render(spec, rec, fmt))
    return rec
