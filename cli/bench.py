"""``flopkit bench``: the GPU kernel benchmarks in ``benchmarks/``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from ._options import CONTEXT

__all__ = ["bench"]


@click.command(context_settings=CONTEXT)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args) -> None:
    """Run the kernel benchmarks in benchmarks/ (needs a CUDA GPU); extra ARGS go to each script.

    \b
    Example:
      flopkit bench
    """
    import torch

    if not torch.cuda.is_available():
        raise click.UsageError("flopkit bench needs a CUDA GPU (torch.cuda.is_available() is False)")
    root = Path.cwd() / "benchmarks"
    scripts = sorted(root.glob("bench*.py")) if root.is_dir() else []
    if not scripts:
        raise click.UsageError(
            "no benchmarks found: run flopkit bench from the repository root (benchmarks/bench*.py)"
        )
    status = 0
    for script in scripts:
        click.echo(f"== {script.name}")
        status |= subprocess.call([sys.executable, str(script), *args])
    sys.exit(status)
