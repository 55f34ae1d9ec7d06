"""flopkit.cli: the ``flopkit`` command (console script ``flopkit = "flopkit.cli:main"``)."""

from __future__ import annotations

from .app import app
from .profile import profile

app.add_command(profile)

__all__ = ["main", "app"]


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: errors print one line on stderr and exit with status 2 (``validate``: 1 on a
    mismatch), never a traceback."""
    app.main(args=argv, prog_name="flopkit")
