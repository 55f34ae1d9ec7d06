"""``flopkit presets``: the built-in presets."""

from __future__ import annotations

import click

from flopkit.config import preset_summaries
from flopkit.report import render_json, render_rows

from ._options import CONTEXT, format_option

__all__ = ["presets"]


@click.command(context_settings=CONTEXT)
@format_option
def presets(fmt) -> None:
    """The built-in presets with their main fields, parameters and forward GFLOPs (one image).

    \b
    Example:
      flopkit presets --format markdown
    """
    rows = preset_summaries()
    if fmt == "json":
        click.echo(render_json(rows))
        return
    if fmt == "csv":
        click.echo(render_rows(list(rows[0]), [list(r.values()) for r in rows], fmt))
        return
    headers = ["preset", "C", "depth", "H", "D", "image", "patch", "T", "params", "GFLOPs", "GFLOPs (nvsubq)"]
    body = [
        [*list(r.values())[:9], f"{r['flops_flopkit'] / 1e9:.3f}", f"{r['flops_nvsubquadratic'] / 1e9:.3f}"]
        for r in rows
    ]
    click.echo(render_rows(headers, body, fmt, notes=["forward, one image; GFLOPs = 1e9 FLOPs"]))
