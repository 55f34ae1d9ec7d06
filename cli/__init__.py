"""flopkit.cli: the ``flopkit`` command (console script ``flopkit = "flopkit.cli:main"``)."""

from __future__ import annotations

import sys

__all__ = ["main", "app"]

from .app import app  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; errors print one line on stderr and exit with status 2, never a traceback.

    ``validate`` exits with 1 on a mismatch; ``--help`` and success with 0.
    """
    import click

    from flopkit.config import ConfigError

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = app.main(args=args, prog_name="flopkit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        _error("aborted")
        code = 1
    except click.ClickException as exc:
        _error(_one_line(exc.format_message()))
        code = 2
    except (ConfigError, ValueError, TypeError, KeyError, FileNotFoundError, ImportError, OSError) as exc:
        _error(_one_line(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)))
        code = 2
    except Exception as exc:  # a YAML error or anything else a user's input can provoke
        if type(exc).__module__.startswith("yaml"):
            _error(_one_line(str(exc)))
            code = 2
        else:
            raise
    if argv is None:
        sys.exit(code or 0)
    return code or 0


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error(message: str) -> None:
    sys.stderr.write(f"flopkit: error: {message}\n")
