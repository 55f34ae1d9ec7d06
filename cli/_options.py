"""Options shared by the commands, and the one call from parsed options to a model."""

from __future__ import annotations

import click

from flopkit.formulas import CONVENTIONS
from flopkit.models import LoadedModel, load_model
from flopkit.report import FORMATS

__all__ = [
    "CONTEXT",
    "config_argument",
    "set_option",
    "format_option",
    "batch_option",
    "depth_option",
    "convention_option",
    "model_option",
    "resolve_model",
]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def config_argument(required: bool = True):
    """The CONFIG argument: a preset name or a YAML/JSON file."""
    return click.argument("config", required=required)


def set_option(fn):
    return click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config field (repeatable), e.g. --set image_size=384.",
    )(fn)


def format_option(fn):
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Output format.",
    )(fn)


def batch_option(help_text: str = "Batch size."):
    return click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help=help_text)


def depth_option(fn):
    return click.option(
        "--depth",
        type=click.IntRange(min=0),
        default=2,
        show_default=True,
        help="Deepest module level shown.",
    )(fn)


def convention_option(fn):
    return click.option(
        "--convention",
        type=click.Choice(CONVENTIONS),
        default="flopkit",
        show_default=True,
        help="QK-norm over all heads (flopkit) or one head (nvsubquadratic, upstream's published counts).",
    )(fn)


def model_option(fn):
    return click.option(
        "--model",
        "model_spec",
        metavar="SPEC",
        help="Count a user's nn.Module: package.module:factory or file.py:factory.",
    )(fn)


def resolve_model(
    config: str | None, overrides: tuple[str, ...], model_spec: str | None = None
) -> LoadedModel:
    """The model the options name, built once on the meta device (:func:`flopkit.models.load_model`)."""
    return load_model(config, overrides, model=model_spec)
