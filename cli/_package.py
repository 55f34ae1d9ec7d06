"""flopkit.cli: the ``flopkit`` command (console script ``flopkit = "flopkit.cli:main"``).

One module per command group; each defines plain ``click`` commands that parse arguments, call the
library and render. Adding a command is one entry in :data:`COMMANDS`.
"""

from __future__ import annotations

import gc
import sys
import warnings

import click

from flopkit.checks import InputError

from . import bench, convert, inspect, memory, presets, profile, report, validate
from ._options import CONTEXT, OPTION_NAMES, cli_text

__all__ = ["main", "app", "COMMANDS"]

COMMANDS: list[click.Command] = [
    report.report,
    validate.validate,
    inspect.layout,
    inspect.rope,
    presets.presets,
    profile.profile,
    bench.bench,
    convert.convert,
    memory.memory,
]


class FlopkitGroup(click.Group):
    """A click group whose errors are one line on stderr with exit status 2, never a traceback.

    Click's usage errors, config and model errors and the library's ValueError/TypeError/KeyError/
    OSError/ImportError (a missing optional dependency) all end the same way; ``validate`` exits
    with 1 on a mismatch.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: D102
        # Python warnings (torch's, a user's model's) would break the one-line contract: they are
        # collected and, after a successful run, counted in one note. -W / PYTHONWARNINGS turn
        # this off and show them as Python would.
        collect = not sys.warnoptions
        with warnings.catch_warnings(record=collect) as caught:
            if collect:
                warnings.simplefilter("default")
            code = self._run(args, prog_name, complete_var, **extra)
        if collect and caught and code == 0:
            click.echo(
                f"flopkit: note: {len(caught)} Python warning(s) silenced (first: "
                f"{_one_line(caught[0].message)}); PYTHONWARNINGS=default shows them",
                err=True,
            )
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)

    def _run(self, args, prog_name, complete_var, **extra) -> int:
        """The command's exit status; every error is one line on stderr (:func:`_error`)."""
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
        except InputError as exc:  # the library names Python arguments; show the options
            _error(exc.render(OPTION_NAMES))
            code = 2
        except (ValueError, TypeError, KeyError, OSError, ImportError) as exc:
            _error(cli_text(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)))
            code = 2
        return code if isinstance(code, int) else 0


def _one_line(message: object, width: int = 120) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _error(message: str) -> None:
    click.echo(f"flopkit: error: {' '.join(str(message).split())}", err=True)


@click.group(cls=FlopkitGroup, context_settings=CONTEXT)
@click.version_option(package_name="flopkit", prog_name="flopkit")
def app() -> None:
    """Per-layer FLOP reports, validation against fvcore and torch, and token layout / RoPE
    inspection for ViT-5 models.

    CONFIG is a preset (vit5-small, vit5-base, vit5-large, vit5-xlarge, and their -official
    layouts), a YAML/JSON file (see examples/) or a ViT-5 weights file (.pth/.pt/.safetensors). Errors print one line and exit with status 2.
    """


for _command in COMMANDS:
    app.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: errors print one line on stderr and exit with status 2 (``validate``: 1 on a
    mismatch), never a traceback."""
    # Everything imported so far (torch's hundreds of thousands of objects) stays alive for the whole
    # run: freezing it keeps the garbage collector's full passes from re-scanning it while a model is
    # built (about 0.2 s per pass for vit5-xlarge on the meta device).
    gc.freeze()
    app.main(args=argv, prog_name="flopkit")
