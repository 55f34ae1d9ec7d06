"""Rendering of FLOP rows, shared by the commands that print per-module tables."""

from __future__ import annotations

from typing import Any

from flopkit.flops.analytic import FlopRow
from flopkit.formulas import CATEGORIES
from flopkit.report import percent, render_rows

__all__ = ["render_flop_rows", "short"]


def short(text: str, width: int = 44) -> str:
    """``text`` cut to ``width`` characters with an ellipsis."""
    return text if len(text) <= width else text[: width - 1] + "…"


def render_flop_rows(
    rows: list[FlopRow], fmt: str, title: str, legend: list[str], source: bool = False
) -> str:
    """Per-module rows (``rows[0]`` the whole model, printed last as TOTAL) as table, markdown or csv."""
    total = rows[0].flops
    headers = ["module", "type", "params", *CATEGORIES, "total", "share"]
    if source:
        headers.append("source")
    headers.append("repr")
    body = []
    for r in [*rows[1:], rows[0]]:
        name = r.path or "TOTAL"
        if fmt == "table" and r.path:
            name = "  " * r.path.count(".") + r.path
        if r.counted_in is not None:
            line: list[Any] = [name, r.type, r.params, *[""] * len(CATEGORIES), f"in {r.counted_in}", ""]
        else:
            line = [
                name,
                r.type,
                r.params,
                *(r.breakdown[c] for c in CATEGORIES),
                r.flops,
                percent(r.flops, total),
            ]
        if source:
            line.append(r.source)
        line.append(short(r.repr) if fmt == "table" else r.repr)
        body.append(line)
    return render_rows(
        headers, body, fmt, title=None if fmt == "csv" else title, notes=[] if fmt == "csv" else legend
    )
