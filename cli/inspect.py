"""``flopkit layout`` and ``flopkit rope``: the token layout and the RoPE tables."""

from __future__ import annotations

from typing import Any

import click

from flopkit.nn.rope import ROPE_PAIRINGS
from flopkit.report import render_json, render_rows

from ._options import CONTEXT, config_argument, format_option, resolve_model, set_option

__all__ = ["layout", "rope"]


@click.command(context_settings=CONTEXT)
@config_argument()
@set_option
@click.option("--tokens", "list_tokens", is_flag=True, help="List every token: index, kind, y, x.")
@format_option
def layout(config, overrides, list_tokens, fmt) -> None:
    """The token layout: patch tokens and their grid, CLS, registers and their sqrt(R) grid, T.

    \b
    Examples:
      flopkit layout vit5-small
      flopkit layout vit5-small --set num_registers=16 --tokens --format csv
    """
    from flopkit.inspect.layout import layout_of, layout_ranges, layout_tokens

    loaded = resolve_model(config, overrides)
    lay = layout_of(loaded.module)
    ranges = layout_ranges(lay)
    tokens = layout_tokens(lay) if list_tokens else None
    if fmt == "json":
        data: dict[str, Any] = {"config": loaded.to_dict(), "num_tokens": lay.num_tokens, "ranges": ranges}
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
            title=f"{loaded.label}: token layout {lay.order()}, T = {lay.describe()}",
        )
    )


@click.command(context_settings=CONTEXT)
@config_argument()
@set_option
@click.option(
    "--tokens",
    "spec",
    default=None,
    metavar="SPEC",
    help="Tokens to list, e.g. 0:3,196:201 (default: a few of each kind).",
)
@click.option(
    "--pairing",
    type=click.Choice(ROPE_PAIRINGS),
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
@format_option
def rope(config, overrides, spec, pairing, per_axis, plot_path, fmt) -> None:
    """The attention layer's 2D RoPE tables: per token its kind, position, base and first
    cos/sin columns (Y and X angles); a summary; whether the pairing preserves vector norms.

    \b
    Examples:
      flopkit rope vit5-small --tokens 0:3,196:201
      flopkit rope vit5-small --pairing interleaved
      flopkit rope vit5-small --plot docs/rope-vit5-small.png
    """
    from flopkit.inspect.layout import attention_of
    from flopkit.inspect.rope import (
        check_plot_path,
        default_token_spec,
        parse_token_spec,
        plot_rope_tables,
        rope_summary,
        rope_token_rows,
    )

    if plot_path is not None:  # an empty path is refused too, never ignored
        check_plot_path(plot_path)
    loaded = resolve_model(config, overrides)
    attn = attention_of(loaded.module)
    spec = spec if spec is not None else default_token_spec(attn.layout)
    rows = rope_token_rows(attn, parse_token_spec(spec, attn.num_tokens), per_axis)
    summary = rope_summary(attn, pairing)
    written = plot_rope_tables(attn, plot_path) if plot_path is not None else None
    if fmt == "json":
        data = {"config": loaded.to_dict(), "summary": summary, "tokens": rows}
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
    title = f"{loaded.label}: RoPE tables rope_cos / rope_sin [T, D], tokens {spec}"
    click.echo(render_rows(headers, body, fmt, title=title))
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
        verdict = "preserves norms" if r["preserves_norm"] else "does NOT preserve norms"
        lines.append([f"|rope(x)|/|x| {p}{mark}", f"min {r['min']:.6f}, max {r['max']:.6f}: {verdict}"])
    if written:
        lines.append(["plot", str(written)])
    click.echo("\n" + render_rows(["summary", ""], lines, fmt))
