"""Rendering of FLOP rows for the commands: :func:`flopkit.report.render_flop_rows`."""

from __future__ import annotations

from flopkit.report import render_flop_rows, short

__all__ = ["render_flop_rows", "short"]
