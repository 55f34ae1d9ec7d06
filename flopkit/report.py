"""Rows -> text: an aligned table, GitHub markdown, CSV or JSON (tabulate for the first two).

A report is a list of column names and a list of rows (lists of cells). Integers are printed
with thousands separators in ``table`` and ``markdown`` and raw in ``csv``/``json``, so machine
readers never parse ``1,234``.
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from collections.abc import Sequence
from typing import Any

from flopkit.formulas import CATEGORIES

__all__ = ["FORMATS", "render_rows", "render_json", "percent", "render_flop_rows", "short"]

FORMATS = ("table", "markdown", "json", "csv")


def percent(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def _cell(value: Any, fmt: str) -> Any:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, int) and fmt in ("table", "markdown"):
        return f"{value:,}"
    return value


def render_rows(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    fmt: str = "table",
    *,
    title: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """Render ``rows`` under ``headers`` as ``table``, ``markdown`` or ``csv``.

    ``title`` and ``notes`` (legend lines) are printed around a table or markdown; CSV is rows only.
    """
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows([[_cell(v, fmt) for v in row] for row in rows])
        return buf.getvalue().rstrip("\n")
    if fmt not in ("table", "markdown"):
        raise ValueError(f"format must be one of {FORMATS} here, got {fmt!r}")
    import tabulate as tabulate_module

    cells = [[_cell(v, fmt) for v in row] for row in rows]
    table = tabulate_module.tabulate(
        cells,
        headers=list(headers),
        tablefmt="github" if fmt == "markdown" else "simple",
        disable_numparse=True,
        preserve_whitespace=True,  # module paths are indented by depth
        colalign=[_align(i, rows) for i in range(len(headers))],
    )
    parts = []
    if title:
        parts.append(f"**{title}**\n" if fmt == "markdown" else title)
    parts.append(table)
    if notes:
        if fmt == "markdown":
            lines = [f"- {n}" for n in notes]
        else:
            lines = [textwrap.fill(n, 110, initial_indent="  ", subsequent_indent="    ") for n in notes]
        parts.append(("\n" if fmt == "markdown" else "") + "\n".join(lines))
    return "\n".join(parts)


def _is_number(value: Any) -> bool:
    """An int/float, or a rendered number such as ``"1,234"``, ``"+0"``, ``"8.2%"``, ``"9.42 G"``."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    digits = str(value).rstrip("%GKMT ").lstrip("+-").replace(",", "").replace(".", "")
    return digits.isdigit()


def _align(column: int, rows: Sequence[Sequence[Any]]) -> str:
    """Right-align a column whose cells are numbers, ignoring blanks and words ("-", "in patch_embed")."""
    values = [row[column] for row in rows if column < len(row)]
    values = [v for v in values if v not in (None, "", "-") and not (isinstance(v, str) and v[:1].isalpha())]
    return "right" if values and all(_is_number(v) for v in values) else "left"


def render_json(data: Any) -> str:
    return json.dumps(data, indent=2)


def short(text: str, width: int = 44) -> str:
    """``text`` cut to ``width`` characters with an ellipsis."""
    return text if len(text) <= width else text[: width - 1] + "…"


def render_flop_rows(rows: list, fmt: str, title: str, legend: list[str], source: bool = False) -> str:
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
