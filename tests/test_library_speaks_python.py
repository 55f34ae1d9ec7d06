"""The library speaks Python: nothing under flopkit/ names a command-line option (issue 24).

Library errors, docstrings and comments name Python arguments (``seq_len``, ``model_args``); the CLI
(cli/) maps them to its options with one table (``cli._options.OPTION_NAMES``).
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A command-line option: two dashes and a lower-case word (--seq-len, --model-arg).
FLAG = re.compile(r"--[a-z][a-z-]+")

# Paths (relative to the repository root) not yet converted. Remove an entry once its files speak
# Python; the set must end up empty.
PENDING: set[str] = set()  # paths under flopkit/ not yet converted (none)

_TEXT_TOKENS = {tokenize.STRING, tokenize.COMMENT} | {
    getattr(tokenize, name) for name in ("FSTRING_MIDDLE",) if hasattr(tokenize, name)
}


def flags_in_source(source: str) -> list[tuple[int, str]]:
    """``(line, option)`` for every option named in a string literal, docstring or comment."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in _TEXT_TOKENS:
            found += [(token.start[0], m.group(0)) for m in FLAG.finditer(token.string)]
    return found


def _pending(path: Path) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == p or rel.startswith(p + "/") for p in PENDING)


def library_files() -> list[Path]:
    return sorted(p for p in (ROOT / "flopkit").rglob("*.py") if not _pending(p))


def test_the_scan_finds_options_in_strings_docstrings_and_comments():
    source = (
        'def f(x):\n    """Give --seq-len N."""\n    # see --model-arg\n'
        '    raise ValueError(f"--input {x}: bad")\n    return x--y\n'
    )
    assert flags_in_source(source) == [(2, "--seq-len"), (3, "--model-arg"), (4, "--input")]


def test_pending_paths_exist():
    for path in PENDING:
        assert (ROOT / path).exists(), f"{path} is gone: drop it from PENDING"


def test_library_names_no_cli_option():
    assert library_files(), "no library files found"
    hits = [
        f"{path.relative_to(ROOT)}:{line}: {flag}"
        for path in library_files()
        for line, flag in flags_in_source(path.read_text())
    ]
    if hits:
        pytest.fail(
            "flopkit/ names command-line options (name the Python argument; the CLI maps it, "
            "cli/_options.py OPTION_NAMES):\n" + "\n".join(hits)
        )


def test_errors_read_in_python_and_render_under_the_cli_options():
    from flopkit.checks import InputError, name_arguments

    error = InputError("overrides", "preset=x", "chosen by `config`, not by `overrides`; see `nothing`")
    assert str(error) == "overrides=preset=x: chosen by `config`, not by `overrides`; see `nothing`"
    names = {"overrides": "--set", "config": "CONFIG"}
    assert error.render(names) == "--set preset=x: chosen by CONFIG, not by --set; see `nothing`"
    assert InputError("tokens", None, "range '5:2' is empty").render({"tokens": "--tokens"}) == (
        "--tokens: range '5:2' is empty"
    )
    assert name_arguments("give `seq_len` N", {"seq_len": "--seq-len"}) == "give --seq-len N"


def _cli_options() -> set[str]:
    import click
    from flopkit.cli import app

    def walk(command: click.Command):
        yield command
        for sub in getattr(command, "commands", {}).values():
            yield from walk(sub)

    return {
        opt
        for command in walk(app)
        for param in command.params
        for opt in (*param.opts, *param.secondary_opts)
    }


def test_one_table_maps_python_arguments_to_options_the_cli_has():
    from flopkit.cli._options import MODEL_ONLY, OPTION_NAMES, PARALLEL_OPTIONS

    options = _cli_options()
    unknown = {arg: opt for arg, opt in OPTION_NAMES.items() if not opt.isupper() and opt not in options}
    assert not unknown, f"OPTION_NAMES names options no command has: {unknown}"
    assert all(not arg.startswith("-") and arg.isidentifier() for arg in OPTION_NAMES)
    # the per-purpose lists read the one table
    assert MODEL_ONLY.items() <= OPTION_NAMES.items() and PARALLEL_OPTIONS.items() <= OPTION_NAMES.items()
