"""Progress on long work (profile steps, validate's counters, seq-len sweeps), on stderr.

A bar shows only when stderr is a terminal and the output is for a reader (not JSON or CSV), so
pipes, redirected output and machine-readable formats stay exactly as they were. One library
(tqdm) draws every bar.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

__all__ = ["Progress", "progress_for", "SILENT"]

T = TypeVar("T")


class Progress:
    """Phases of a long run, each a bar of ``total`` steps: :meth:`phase`, :meth:`advance`,
    :meth:`close` (or use it as a context manager). Disabled, every call does nothing."""

    def __init__(self, enabled: bool = False, stream: IO[str] | None = None) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self._bar: Any = None

    def phase(self, name: str, total: int | None = None) -> None:
        """Close the current bar and start one named ``name`` of ``total`` steps."""
        self.close()
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=name, file=self.stream, leave=False, dynamic_ncols=True)

    def advance(self, n: int = 1) -> None:
        """``n`` more steps of the current phase are done."""
        if self._bar is not None:
            self._bar.update(n)

    def iterate(self, items: Iterable[T], name: str, total: int | None = None) -> Iterator[T]:
        """``items``, one step of a phase named ``name`` each."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        self.phase(name, total)
        for item in items:
            yield item
            self.advance()
        self.close()

    def close(self) -> None:
        """Remove the current bar (bars leave no line behind)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SILENT = Progress(enabled=False)


def progress_for(fmt: str = "table", stream: IO[str] | None = None) -> Progress:
    """A :class:`Progress` that draws only when ``stream`` (default stderr) is a terminal and
    ``fmt`` is for a reader (``table`` or ``markdown``)."""
    stream = stream if stream is not None else sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return Progress(enabled=tty and fmt not in ("json", "csv"), stream=stream)
