"""``report --model`` and ``validate --model``: any model (timm, Hugging Face, a user's callable).

Parses the model options, calls :mod:`flopkit.models` and :mod:`flopkit.flops`, renders.
"""

from __future__ import annotations

from typing import Any

import click

from flopkit.formulas import CATEGORIES
from flopkit.report import percent, render_json, render_rows, short

from ._options import cli_text

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


def parse_values(texts: tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    """Split ``--input`` values: ``NAME=[[...]]`` (a JSON array of values: only ``attention_mask``)
    -> ``{name: int64 tensor}``; the rest (``NAME=SHAPE[:DTYPE]``) are returned as given."""
    import json

    import torch

    values, rest = {}, []
    for text in texts:
        name, sep, body = text.partition("=")
        if not sep or not body.strip().startswith("["):
            rest.append(text)
            continue
        name = name.strip()
        if name != "attention_mask":
            raise click.BadParameter(
                f"values are read for attention_mask only (padding for --causal-attention exact), got {name}",
                param_hint="--input",
            )
        try:
            tensor = torch.tensor(json.loads(body), dtype=torch.int64)
        except (ValueError, TypeError, RuntimeError):
            raise click.BadParameter(
                f"{name}: expected a JSON array of rows, e.g. [[1,1,0],[1,1,1]], got {body!r}",
                param_hint="--input",
            ) from None
        if tensor.dim() != 2 or tensor.shape[1] == 0 or bool((tensor < 0).any()):
            raise click.BadParameter(
                f"{name}: expected [batch, keys] rows of 0 (padding), 1 (token) or document ids (packed "
                f"sequences), got shape {list(tensor.shape)}",
                param_hint="--input",
            )
        values[name] = tensor
    return values, rest


def _shape_text(shapes: list[list[int]], dtypes: list[str]) -> str:
    return "; ".join(f"[{', '.join(map(str, s))}] {d}" for s, d in zip(shapes, dtypes, strict=True))


def render_model_rows(
    rows, fmt: str, title: str, legend: list[str], columns: tuple[str, ...], training: bool
) -> str:
    """The per-module table of ``report --model``: categories, total, share, forward/backward
    (``training``), shapes and memory (``columns``), source and repr."""
    total = rows[0].flops
    headers = ["module", "type", "params", *CATEGORIES, "total", "share"]
    if training:
        headers += ["forward", "backward", "hardware"]
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
            line += [r.flops - backward, backward, r.hardware_flops if r.hardware_flops is not None else "-"]
        s = r.shapes
        if "shapes" in columns:
            line += (
                [_shape_text(s.input_shapes, s.input_dtypes), _shape_text(s.output_shapes, s.output_dtypes)]
                if s is not None
                else ["-", "-"]
            )
        if "memory" in columns:
            line += [s.param_bytes, s.output_bytes] if s is not None else ["-", "-"]
        line += [r.source, short(r.repr) if fmt == "table" else r.repr]
        body.append(line)
    return render_rows(
        headers, body, fmt, title=None if fmt == "csv" else title, notes=[] if fmt == "csv" else legend
    )


def run_forward(spec: str, fn, *args, **kwargs):
    """Call ``fn`` (a count over the user's model); an error inside the model becomes one line naming
    the spec, with the original message (:func:`flopkit.models.user_code`)."""
    from flopkit.models import user_code

    with user_code(spec, "running the model"):
        return fn(*args, **kwargs)


def parse_generate(text: str) -> tuple[int, int]:
    """``"512:128"`` -> ``(512, 128)``: prompt tokens (>= 1) and decode steps (>= 1)."""
    prompt, sep, steps = text.partition(":")
    try:
        p, n = int(prompt), int(steps)
    except ValueError:
        p = n = None
    if not sep or p is None or n is None:
        raise click.BadParameter(f"expected P:N (prompt tokens:decode steps), e.g. 512:128, got {text!r}",
                                 param_hint="--generate")  # fmt: skip
    if p < 1 or n < 1:
        raise click.BadParameter(
            f"the prompt P and the decode steps N must be at least 1, got {text!r}", param_hint="--generate"
        )
    return p, n


def _check_combinations(*, kv_cache, generate, seq_lens, columns, plot_path, values, depth_given) -> None:
    """Refuse option combinations that cannot apply (the command's own rules), before any work; the
    library checks each argument itself (:func:`flopkit.count`)."""
    if generate is not None and kv_cache is not None:
        raise click.UsageError("--generate counts its own KV cache: give --generate P:N or --kv-cache L")
    if kv_cache is not None and seq_lens is not None and len(seq_lens) > 1:
        raise click.UsageError("--kv-cache takes one --seq-len (the new tokens per step)")
    if generate is not None:
        given = [f for f, v in (("--seq-len", seq_lens), ("--columns", columns), ("--plot", plot_path),
                                ("--input", values)) if v] + (["--depth"] if depth_given else [])  # fmt: skip
        if given:
            raise click.UsageError(f"--generate gives one row per phase: {given[0]} does not apply")
    if seq_lens is not None and len(seq_lens) > 1:
        if columns:
            raise click.UsageError("--columns applies to the per-module table, not to a --seq-len sweep")
        if values:
            raise click.UsageError("--input attention_mask values apply to one --seq-len")
    elif plot_path is not None:
        raise click.UsageError(
            "--plot draws FLOPs against length: give two or more lengths, --seq-len 128,512"
        )


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
    kv_cache: int | None = None,
    generate: str | None = None,
    checkpointing: str = "none",
    strict: bool = False,
    values: dict | None = None,
    depth_given: bool = False,
) -> None:
    """``flopkit report --model SPEC ...``: :func:`flopkit.count` (the per-module table),
    :func:`flopkit.count_sweep` (one row per ``--seq-len``) or :func:`flopkit.count_generation` (one
    row per phase of ``--generate``), rendered. ``loaded``: the :class:`~flopkit.models.LoadedModel`."""
    from flopkit.flops.count import count, count_generation, count_sweep
    from flopkit.progress import progress_for

    values = values or {}
    generation = parse_generate(generate) if generate is not None else None
    _check_combinations(kv_cache=kv_cache, generate=generation, seq_lens=seq_lens, columns=columns,
                        plot_path=plot_path, values=values, depth_given=depth_given)  # fmt: skip
    if plot_path is not None:
        _check_plot_path(plot_path)
    if generation is not None:
        if training:
            raise click.UsageError("--generate counts inference (decode); it does not apply with --training")
        result = count_generation(loaded, *generation, batch=batch, causal_attention=causal)
        _strict_counts(strict, result.uncounted)
        _render_generation(result, fmt)
        return
    if seq_lens is not None and len(seq_lens) > 1:
        with progress_for(fmt) as progress:
            sweep = count_sweep(
                loaded, seq_lens, batch=batch, named_inputs=named_inputs, training=training,
                convention=convention, causal_attention=causal, progress=progress,
            )  # fmt: skip
        _strict_counts(strict, sweep.uncounted)
        _render_sweep(sweep, fmt, plot_path)
        return
    result = count(
        loaded, batch=batch, input_shape=input_shape, seq_len=seq_lens[0] if seq_lens else None,
        named_inputs=named_inputs, training=training, convention=convention, causal_attention=causal,
        depth=depth, checkpointing=checkpointing, kv_cache=kv_cache, padding_mask=values.get("attention_mask"),
    )  # fmt: skip
    _strict_counts(strict, result.measurement.uncounted)
    result.legend = [cli_text(line) for line in result.legend]  # the library's arguments as options
    if fmt == "json":
        click.echo(render_json(result.to_dict()))
        return
    title = f"{loaded.label}: {result.total_flops:,} FLOPs, {result.total_params:,} parameters"
    click.echo(render_model_rows(result.rows, fmt, title, result.legend, columns, training))


def _render_generation(result, fmt: str) -> None:
    result.legend = [cli_text(line) for line in result.legend]
    data = result.to_dict()
    if fmt == "json":
        click.echo(render_json(data))
        return
    headers = ["phase", "tokens", "cached", *CATEGORIES, "total", "FLOPs / token"]
    body = [
        [r["phase"], r["tokens"], r["cached_tokens"], *[r["breakdown"][c] for c in CATEGORIES], r["flops"],
         f"{r['flops_per_token']:,.0f}"]
        for r in data["rows"]
    ]  # fmt: skip
    gen = result.generation
    title = f"{result.label}: generation {gen.prompt_tokens}:{gen.steps}, {data['total_flops']:,} FLOPs"
    click.echo(render_rows(headers, body, fmt, title=None if fmt == "csv" else title,
                           notes=[] if fmt == "csv" else result.legend))  # fmt: skip


def _render_sweep(sweep, fmt: str, plot_path: str | None) -> None:
    written = sweep.plot(plot_path) if plot_path else None
    sweep.legend = legend = [cli_text(line) for line in sweep.legend]
    if fmt == "json":
        data = sweep.to_dict()
        if written:
            data["plot"] = written
        click.echo(render_json(data))
        return
    headers = ["seq_len", *CATEGORIES, "total", "FLOPs / token"]
    if sweep.training:
        headers += ["forward", "backward"]
    body = []
    for p in sweep.points:
        line = [p["seq_len"], *[p["breakdown"][c] for c in CATEGORIES], p["total_flops"]]
        line.append(f"{p['total_flops'] / (p['seq_len'] * sweep.batch):,.0f}")
        if sweep.training:
            line += [p["forward_flops"], p["backward_flops"]]
        body.append(line)
    if written and fmt != "csv":
        legend.append(f"plot: {written}")
    title = f"{sweep.label}: FLOPs by sequence length ({sweep.params:,} parameters)"
    click.echo(render_rows(headers, body, fmt, title=None if fmt == "csv" else title,
                           notes=[] if fmt == "csv" else legend))  # fmt: skip


def _strict_counts(strict: bool, uncounted) -> None:
    if strict and uncounted:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(uncounted.items()))
        raise click.UsageError(f"--strict: ops without a FLOP formula ran (counted as 0): {ops}")


def _check_plot_path(path: str) -> None:
    """Refuse a ``--plot`` target in a missing directory, or without matplotlib, before any work."""
    from flopkit.checks import check_output_path

    check_output_path(path, "plot_path")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.UsageError("--plot needs matplotlib: pip install 'flopkit[plot]'") from None


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
        spec=spec,
    )
    from flopkit.flops.counters import PLAIN_COUNTERS

    # The counters as shipped run on the CPU copy fvcore needs anyway (--against torch alone builds none).
    plain = PLAIN_COUNTERS if "fvcore" in counters else ()
    rec = validate_any(
        model,
        inputs,
        tuple(counters),
        rtol,
        depth,
        spec=spec,
        model_args=model_args,
        plain=plain,
        progress=progress,
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
                    "notes": [cli_text(n) for n in rec.notes],
                    "counters": [c.to_dict() for c in rec.plain],
                }
            )
        )
    else:
        click.echo(render(spec, rec, fmt))
    return rec
