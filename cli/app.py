"""The click application: ``flopkit report|validate|layout|rope|presets|bench``.

Commands parse arguments, call the library and render; every number comes from ``flopkit``.
Heavy or optional imports (fvcore, matplotlib) happen inside the commands that need them.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from flopkit.config import Config, load_config
from flopkit.nn._flops import CATEGORIES, CONVENTIONS
from flopkit.report import FORMATS, percent, render_json, render_rows

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _config_options(fn):
    fn = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config field (repeatable), e.g. --set image_size=384.",
    )(fn)
    return fn


def _format_option(fn):
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Output format.",
    )(fn)


def _load(source: str, overrides: tuple[str, ...]) -> Config:
    config = load_config(source, overrides)
    config.check()
    return config


_MODEL_ONLY = {
    "model_args": "--model-arg",
    "input_shape": "--input-shape",
    "seq_len": "--seq-len",
    "named_inputs": "--input",
    "causal": "--causal-attention",
    "plot_path": "--plot",
}


def _model_options(fn):
    """The options of a command that takes ``--model SPEC`` (report, validate)."""
    options = [
        click.option(
            "--model",
            "spec",
            metavar="SPEC",
            help="Count any model instead of CONFIG: timm:NAME, hf:MODEL_TYPE (e.g. hf:bert, hf:gpt2, "
            "hf:llama), package.module:callable or file.py:callable. Built on the meta device.",
        ),
        click.option(
            "--model-arg",
            "model_args",
            multiple=True,
            metavar="KEY=VALUE",
            help="Argument for the model factory or the Hugging Face config (repeatable), values read "
            "like --set, e.g. --model-arg num_hidden_layers=4.",
        ),
        click.option(
            "--input-shape",
            metavar="C,H,W",
            help="Shape of one input sample, without the batch (--batch is prepended). Default: timm's "
            "pretrained_cfg input_size.",
        ),
        click.option(
            "--seq-len",
            metavar="N[,N...]",
            help="Text models: int64 ids [batch, N]. Several lengths give one row per length.",
        ),
        click.option(
            "--input",
            "named_inputs",
            multiple=True,
            metavar="NAME=SHAPE[:DTYPE]",
            help="A keyword input with its full shape (repeatable), e.g. attention_mask=1,128:int64.",
        ),
        click.option(
            "--causal-attention",
            "causal",
            type=click.Choice(["full", "half"]),
            default="full",
            show_default=True,
            help="Causal SDPA calls (is_causal=True): count all T^2 query-key pairs, or only the "
            "T(T+1)/2 the mask keeps.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _given(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _refuse_without_model(ctx: click.Context, *names: str) -> None:
    for name in names:
        if _given(ctx, name):
            raise click.UsageError(f"{_MODEL_ONLY[name]} applies only with --model")


def _refuse_with_model(ctx: click.Context, config: str | None, overrides: tuple[str, ...]) -> None:
    if config is not None:
        raise click.UsageError(f"give CONFIG ({config}) or --model, not both")
    if overrides:
        raise click.UsageError("--set changes a flopkit config; with --model use --model-arg KEY=VALUE")


def _model_settings(model_args, input_shape, seq_len, named_inputs) -> tuple:
    from flopkit.models import parse_input, parse_model_args, parse_seq_lens, parse_shape

    return (
        parse_model_args(model_args),
        parse_shape(input_shape) if input_shape is not None else None,
        parse_seq_lens(seq_len) if seq_len is not None else None,
        [parse_input(text) for text in named_inputs],
    )


class FlopkitGroup(click.Group):
    """A click group whose errors are one line on stderr with exit status 2, never a traceback.

    Click's own usage errors, config errors and the library's ValueError/TypeError/KeyError/
    FileNotFoundError/ImportError (a missing optional dependency) all end the same way;
    ``validate`` exits with 1 on a mismatch.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: D102
        try:
            code = super().main(args, prog_name or "flopkit", complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.exceptions.Abort:
            _error("aborted")
            code = 1
        except click.ClickException as exc:
            _error(exc.format_message())
            code = 2
        except (ValueError, TypeError, KeyError, OSError, ImportError) as exc:
            _error(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
            code = 2
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _error(message: str) -> None:
    click.echo(f"flopkit: error: {' '.join(str(message).split())}", err=True)


@click.group(cls=FlopkitGroup, context_settings=CONTEXT)
@click.version_option(package_name="flopkit", prog_name="flopkit")
def app() -> None:
    """Per-layer FLOP reports, validation against fvcore and torch, and token layout / RoPE
    inspection for ViT-5 models.

    CONFIG is a preset (vit5-small, vit5-base, vit5-large, vit5-xlarge) or a YAML/JSON file;
    see examples/. Errors print one line and exit with status 2.
    """


# ------------------------------------------------------------------------------------ report


def _flop_cells(breakdown: dict[str, int]) -> list[int]:
    return [breakdown[c] for c in CATEGORIES]


def _short(text: str, width: int = 44) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command(context_settings=CONTEXT)
@click.argument("config", required=False)
@_config_options
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch size.")
@click.option(
    "--depth", type=click.IntRange(min=0), default=2, show_default=True, help="Deepest module level shown."
)
@click.option(
    "--training",
    is_flag=True,
    help="Add backward FLOPs: measured on meta for --model, the rule per category (legend) for analytic modules.",
)
@click.option(
    "--convention",
    type=click.Choice(CONVENTIONS),
    default="flopkit",
    show_default=True,
    help="QK-norm over all heads (flopkit) or one head (nvsubquadratic, upstream's published counts).",
)
@click.option(
    "--columns",
    metavar="GROUPS",
    help="Extra column groups for --model: shapes (input/output shapes and dtypes), memory (parameter "
    "and output bytes), e.g. --columns shapes,memory.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="With several --seq-len lengths: write FLOPs against length (PNG).",
)
@_model_options
@_format_option
@click.pass_context
def report(
    ctx, config, overrides, batch, depth, training, convention, spec, model_args, input_shape, seq_len,
    named_inputs, causal, columns, plot_path, fmt,
) -> None:  # fmt: skip
    """Per-module FLOPs by category, parameters and share of the whole.

    \b
    Examples:
      flopkit report vit5-small
      flopkit report vit5-base --batch 64 --training --depth 3
      flopkit report examples/vit5-small-384.yaml --set num_registers=16 --format json
      flopkit report examples/attention-small.yaml --convention nvsubquadratic
      flopkit report --model examples/custom_model.py:build --input-shape 3,224,224 --batch 2
      flopkit report --model timm:resnet50 --columns shapes,memory
      flopkit report --model hf:gpt2 --seq-len 128,512,1024 --causal-attention half --plot gpt2.png
      flopkit report --model hf:llama --model-arg num_hidden_layers=2 --seq-len 2048 --training
    """
    from flopkit.flops.analytic import COUNTED_LEGEND, flop_rows, flop_tree, training_legend

    if spec is not None:
        _refuse_with_model(ctx, config, overrides)
        from .model_cmds import parse_columns, report_model

        report_model(
            spec, *_model_settings(model_args, input_shape, seq_len, named_inputs), batch=batch,
            causal=causal, depth=depth, training=training, convention=convention,
            columns=parse_columns(columns), plot_path=plot_path, fmt=fmt,
        )  # fmt: skip
        return
    _refuse_without_model(ctx, "model_args", "input_shape", "seq_len", "named_inputs", "causal", "plot_path")
    if config is None:
        raise click.UsageError("missing CONFIG (a preset name or a YAML/JSON file), or give --model")
    cfg = _load(config, overrides)
    module = cfg.meta_module
    tree = flop_tree(module, cfg.tokens(module), convention)
    rows = flop_rows(module, tree, depth=depth, batch=batch, training=training)
    total, params = rows[0].flops, rows[0].params
    from .model_cmds import attach_shapes, parse_columns, render_model_rows

    column_groups = parse_columns(columns)
    if fmt == "json" or column_groups:
        attach_shapes(rows, cfg, module, batch)
    legend = [
        COUNTED_LEGEND,
        f"convention: {convention}; batch: {batch}; per {'training step' if training else 'forward'}",
    ]
    if training:
        legend.append(training_legend())
    if fmt == "json":
        click.echo(
            render_json(
                {
                    "config": cfg.to_dict(),
                    "convention": convention,
                    "batch": batch,
                    "training": training,
                    "total_flops": total,
                    "total_params": params,
                    "rows": [{k: v for k, v in r.to_dict().items() if k != "source"} for r in rows],
                    "legend": legend,
                }
            )
        )
        return
    title = f"{config}: {total:,} FLOPs, {params:,} parameters"
    if column_groups:
        click.echo(render_model_rows(rows, fmt, title, legend, column_groups, training))
        return
    click.echo(_render_flop_rows(rows, fmt, title=title, legend=legend))


def _render_flop_rows(rows, fmt: str, title: str, legend: list[str], source: bool = False) -> str:
    total = rows[0].flops
    headers = ["module", "type", "params", *CATEGORIES, "total", "share"]
    if source:
        headers.append("source")
    headers.append("repr")
    body = []
    for r in [*rows[1:], rows[0]]:
        name = ("  " * (r.path.count(".")) + r.path) if r.path else "TOTAL"
        if fmt != "table":
            name = r.path or "TOTAL"
        if r.counted_in is not None:
            line: list[Any] = [name, r.type, r.params, *[""] * len(CATEGORIES), f"in {r.counted_in}", ""]
        else:
            line = [name, r.type, r.params, *_flop_cells(r.breakdown), r.flops, percent(r.flops, total)]
        if source:
            line.append(r.source)
        line.append(_short(r.repr) if fmt == "table" else r.repr)
        body.append(line)
    return render_rows(
        headers, body, fmt, title=None if fmt == "csv" else title, notes=[] if fmt == "csv" else legend
    )


# ---------------------------------------------------------------------------------- validate


@app.command(context_settings=CONTEXT)
@click.argument("config", required=False)
@_config_options
@click.option(
    "--against", default="fvcore,torch", show_default=True, help="Counters, comma-separated: fvcore, torch."
)
@click.option(
    "--rtol", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Relative tolerance."
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Batch size of the measured run.",
)
@click.option(
    "--depth", type=click.IntRange(min=0), default=2, show_default=True, help="Deepest module level shown."
)
@click.option("--convention", type=click.Choice(CONVENTIONS), default="flopkit", show_default=True)
@_model_options
@_format_option
@click.pass_context
def validate(
    ctx, config, overrides, against, rtol, batch, depth, convention, spec, model_args, input_shape, seq_len,
    named_inputs, causal, fmt,
) -> None:  # fmt: skip
    """Analytic FLOPs vs fvcore's FlopCountAnalysis and torch's FlopCounterMode, per module and
    category. Exit status 1 when a comparable count differs by more than --rtol.

    \b
    Examples:
      flopkit validate vit5-small
      flopkit validate examples/attention-small.yaml --against torch
      flopkit validate vit5-base --depth 3 --format markdown
      flopkit validate --model hf:bert --model-arg num_hidden_layers=2 --seq-len 128
      flopkit validate --model timm:resnet18 --depth 1
    """
    import torch

    from flopkit.config import model_input
    from flopkit.flops.analytic import flop_tree
    from flopkit.flops.measured import count_fvcore, count_torch
    from flopkit.flops.reconcile import reconcile

    if _given(ctx, "causal"):
        raise click.UsageError("--causal-attention applies to report: validate counts every query-key pair")

    counters = [c.strip() for c in against.split(",") if c.strip()]
    unknown = [c for c in counters if c not in ("fvcore", "torch")]
    if unknown or not counters:
        raise click.BadParameter(f"expected fvcore and/or torch, got {against!r}", param_hint="--against")
    if spec is not None:
        _refuse_with_model(ctx, config, overrides)
        if _given(ctx, "convention"):
            raise click.UsageError("--convention applies to flopkit configs; --model counts what runs")
        from .model_cmds import validate_model

        rec = validate_model(
            spec, *_model_settings(model_args, input_shape, seq_len, named_inputs), batch=batch,
            counters=counters, rtol=rtol, depth=depth, fmt=fmt, render=_render_validation,
        )  # fmt: skip
        if not rec.ok:
            ctx.exit(1)
        return
    _refuse_without_model(ctx, "model_args", "input_shape", "seq_len", "named_inputs")
    if config is None:
        raise click.UsageError("missing CONFIG (a preset name or a YAML/JSON file), or give --model")
    cfg = _load(config, overrides)
    meta = cfg.meta_module.eval()
    measurements = []
    if "fvcore" in counters:
        torch.manual_seed(0)
        cpu = cfg.build("cpu").eval()
        measurements.append(count_fvcore(cpu, model_input(cfg, cpu, batch, "cpu")))
    if "torch" in counters:
        with torch.device("meta"):
            measurements.append(count_torch(meta, model_input(cfg, meta, batch, "meta")))
    tree = flop_tree(meta, cfg.tokens(meta), convention)
    rec = reconcile(meta, tree, measurements, batch=batch, rtol=rtol, depth=depth)
    names = [m.counter for m in measurements]
    if fmt == "json":
        click.echo(render_json(_validation_json(cfg, rec, names, convention, batch)))
    else:
        click.echo(_render_validation(config, rec, names, fmt))
    if not rec.ok:
        ctx.exit(1)


def _validation_json(cfg, rec, names, convention, batch) -> dict[str, Any]:
    return {
        "config": cfg.to_dict(),
        "convention": convention,
        "batch": batch,
        "rtol": rec.rtol,
        "ok": rec.ok,
        "comparable": {k: list(v) for k, v in rec.comparable.items()},
        "totals": rec.totals,
        "raw_totals": rec.raw_totals,
        "skipped_ops": rec.skipped,
        "rows": [
            {
                "path": r.path,
                "type": r.type,
                "analytic": r.analytic,
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


def _render_validation(source: str, rec, names: list[str], fmt: str) -> str:
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
            raw = sum(v for op, v in rec.raw_totals[n].items() if _category_of(n, op) == cat)
            got = rec.totals[n][cat]
            if cat in rec.comparable[n]:
                delta = got - rec.totals["analytic"][cat]
                line += [raw, got, f"{delta:+,}"]
            else:
                line += [raw or "-", got or "-", "not comparable"]
        cat_body.append(line)
    skipped = []
    for n in names:
        ops = ", ".join(f"{op} x{k}" for op, k in sorted(rec.skipped[n].items(), key=lambda kv: -kv[1]))
        if ops:
            skipped.append(f"{n} saw but did not count: {ops}.")
    cats = render_rows(
        cat_headers, cat_body, fmt, title="whole model, by category", notes=[*rec.notes, *skipped]
    )
    verdict = (
        f"OK: every comparable count agrees ({'exactly' if rec.rtol == 0 else f'within rtol={rec.rtol:g}'})"
        if rec.ok
        else f"MISMATCH: a comparable count differs by more than rtol={rec.rtol:g}"
    )
    return f"{main}\n\n{cats}\n\n{verdict}"


def _category_of(counter: str, op: str) -> str | None:
    from flopkit.flops.anymodel import MEASURED_OPS
    from flopkit.flops.measured import FVCORE_OPS

    if counter == "fvcore":
        return FVCORE_OPS.get(op, (None, 0))[0]
    return MEASURED_OPS.get(op)


# ------------------------------------------------------------------------------------ layout


@app.command(context_settings=CONTEXT)
@click.argument("config")
@_config_options
@click.option("--tokens", "list_tokens", is_flag=True, help="List every token: index, kind, y, x.")
@_format_option
def layout(config, overrides, list_tokens, fmt) -> None:
    """The token layout: patch tokens and their grid, CLS, registers and their sqrt(R) grid, T.

    \b
    Examples:
      flopkit layout vit5-small
      flopkit layout vit5-small --set num_registers=16 --tokens --format csv
    """
    from flopkit.inspect.layout import layout_of, layout_ranges, layout_tokens

    cfg = _load(config, overrides)
    lay = layout_of(cfg.meta_module)
    ranges = layout_ranges(lay)
    tokens = layout_tokens(lay) if list_tokens else None
    if fmt == "json":
        data: dict[str, Any] = {"config": cfg.to_dict(), "num_tokens": lay.num_tokens, "ranges": ranges}
        if tokens is not None:
            data["tokens"] = tokens
        click.echo(render_json(data))
        return
    if tokens is not None:
        click.echo(render_rows(["index", "kind", "y", "x"], [list(t.values()) for t in tokens], fmt))
        return
    click.echo(
        render_rows(
            ["kind", "indices", "count", "grid"],
            [list(r.values()) for r in ranges],
            fmt,
            title=f"{config}: token layout [patches, CLS?, registers], T = {lay.describe()}",
        )
    )


# -------------------------------------------------------------------------------------- rope


@app.command(context_settings=CONTEXT)
@click.argument("config")
@_config_options
@click.option(
    "--tokens",
    "spec",
    default=None,
    metavar="SPEC",
    help="Tokens to list, e.g. 0:3,196:201 (default: a few of each kind).",
)
@click.option(
    "--pairing",
    type=click.Choice(["split_half", "interleaved"]),
    default=None,
    help="Pairing to check (default: the config's).",
)
@click.option(
    "--frequencies",
    "per_axis",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Frequencies shown per axis (the Y half then the X half of the head dim).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a heat map of cos and sin (PNG).",
)
@_format_option
def rope(config, overrides, spec, pairing, per_axis, plot_path, fmt) -> None:
    """The attention layer's 2D RoPE tables: per token its kind, position, base and first cos/sin
    cos/sin columns (Y and X angles); a summary; whether the pairing preserves vector norms.

    \b
    Examples:
      flopkit rope vit5-small --tokens 0:3,196:201
      flopkit rope vit5-small --pairing interleaved
      flopkit rope vit5-small --plot docs/rope-vit5-small.png
    """
    from flopkit.inspect.layout import attention_of
    from flopkit.inspect.rope import parse_token_spec, plot_rope_tables, rope_summary, rope_token_rows

    cfg = _load(config, overrides)
    attn = attention_of(cfg.meta_module)
    T = attn.num_tokens
    if spec is None:
        lay = attn.layout
        spec = f"0:{min(3, lay.num_patches)}" + (f",{lay.num_patches}:{T}" if lay.num_patches < T else "")
    tokens = parse_token_spec(spec, T)
    rows = rope_token_rows(attn, tokens, per_axis)
    summary = rope_summary(attn, pairing)
    written = plot_rope_tables(attn, plot_path) if plot_path else None
    if fmt == "json":
        data = {"config": cfg.to_dict(), "summary": summary, "tokens": rows}
        if written:
            data["plot"] = str(written)
        click.echo(render_json(data))
        return
    headers = ["index", "kind", "y", "x", "base"]
    channels = rows[0]["channels"]
    headers += [f"cos[{c}]" for c in channels] + [f"sin[{c}]" for c in channels]
    body = [
        [r["index"], r["kind"], r["y"], r["x"], "identity" if r["base"] is None else f"{r['base']:g}"]
        + [f"{v:.6f}" for v in r["cos"]]
        + [f"{v:.6f}" for v in r["sin"]]
        for r in rows
    ]
    click.echo(
        render_rows(
            headers, body, fmt, title=f"{config}: RoPE tables rope_cos / rope_sin [T, D], tokens {spec}"
        )
    )
    if fmt == "csv":
        return
    s = summary
    fmt_freq = ", ".join(f"{v:.4g}" for v in s["patch_frequencies"][:4])
    fmt_reg = ", ".join(f"{v:.4g}" for v in s["register_frequencies"][:4])
    lines = [
        ["T", f"{s['num_tokens']} ({s['layout']})"],
        ["D (head_dim)", s["head_dim"]],
        [
            "bases",
            f"patches {s['rope_base']:g}, registers {s['reg_rope_base']:g}, CLS identity (cos 1, sin 0)",
        ],
        ["frequencies", f"theta_j = base^(-4j/D), j = 0..{s['num_frequencies'] - 1}"],
        ["  patch theta", f"{fmt_freq}, ... {s['patch_frequencies'][-1]:.4g}"],
        ["  register theta", f"{fmt_reg}, ... {s['register_frequencies'][-1]:.4g}"],
        ["channels", s["channels"]],
    ]
    for p, r in s["norm_ratios"].items():
        mark = " (checked)" if p == s["pairing"] else ""
        keeps = abs(r["min"] - 1) < 1e-9 and abs(r["max"] - 1) < 1e-9
        lines.append(
            [
                f"|rope(x)|/|x| {p}{mark}",
                f"min {r['min']:.6f}, max {r['max']:.6f}: "
                + ("preserves norms" if keeps else "does NOT preserve norms"),
            ]
        )
    if written:
        lines.append(["plot", str(written)])
    click.echo("\n" + render_rows(["summary", ""], lines, fmt))


# ----------------------------------------------------------------------------------- presets


@app.command(context_settings=CONTEXT)
@_format_option
def presets(fmt) -> None:
    """The built-in presets with their main fields, parameters and forward GFLOPs (one image).

    \b
    Example:
      flopkit presets --format markdown
    """
    from flopkit.flops.analytic import flop_tree
    from flopkit.nn import PRESETS

    rows = []
    for name in PRESETS:
        module = load_config(name).meta_module
        row = {
            "preset": name,
            "hidden_dim": module.hidden_dim,
            "depth": module.depth,
            "num_heads": module.num_heads,
            "head_dim": module.hidden_dim // module.num_heads,
            "image_size": module.patch_embed.image_size[0],
            "patch_size": module.patch_embed.patch_size,
            "num_tokens": module.num_tokens,
            "params": sum(p.numel() for p in module.parameters()),
        }
        for conv in CONVENTIONS:
            row[f"flops_{conv}"] = sum(flop_tree(module, 1, conv).breakdown.values())
        rows.append(row)
    if fmt == "json":
        click.echo(render_json(rows))
        return
    headers = ["preset", "C", "depth", "H", "D", "image", "patch", "T", "params", "GFLOPs", "GFLOPs (nvsubq)"]
    body = [
        [*list(r.values())[:9], f"{r['flops_flopkit'] / 1e9:.3f}", f"{r['flops_nvsubquadratic'] / 1e9:.3f}"]
        for r in rows
    ]
    if fmt == "csv":
        body = [[*list(r.values())] for r in rows]
        headers = list(rows[0])
    click.echo(
        render_rows(
            headers, body, fmt, notes=[] if fmt == "csv" else ["forward, one image; GFLOPs = 1e9 FLOPs"]
        )
    )


# ------------------------------------------------------------------------------------- bench


@app.command(context_settings=CONTEXT)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args) -> None:
    """Run the kernel benchmarks in benchmarks/ (needs a CUDA GPU); extra ARGS go to each script.

    \b
    Example:
      flopkit bench
    """
    import subprocess
    from pathlib import Path

    import torch

    if not torch.cuda.is_available():
        raise click.UsageError("flopkit bench needs a CUDA GPU (torch.cuda.is_available() is False)")
    root = Path.cwd() / "benchmarks"
    scripts = sorted(root.glob("bench*.py")) if root.is_dir() else []
    if not scripts:
        raise click.UsageError(
            "no benchmarks found: run flopkit bench from the repository root (benchmarks/bench*.py)"
        )
    status = 0
    for script in scripts:
        click.echo(f"== {script.name}")
        status |= subprocess.call([sys.executable, str(script), *args])
    sys.exit(status)
