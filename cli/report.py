"""``flopkit report``: per-module FLOPs by category."""

from __future__ import annotations

import click

from flopkit.flops.summary import flop_report
from flopkit.models import user_code
from flopkit.report import render_json

from ._options import (
    CONTEXT,
    batch_option,
    config_argument,
    convention_option,
    depth_option,
    format_option,
    model_option,
    resolve_model,
    set_option,
)
from ._render import render_flop_rows

__all__ = ["report"]


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise click.BadParameter(
            f"expected comma-separated positive integers, got {text!r}", param_hint="--input-shape"
        )
    return shape


@click.command(context_settings=CONTEXT)
@config_argument(required=False)
@set_option
@batch_option()
@depth_option
@click.option("--training", is_flag=True, help="Add backward FLOPs (rule per category in the legend).")
@convention_option
@model_option
@click.option(
    "--input-shape",
    default=None,
    metavar="B,C,H,W",
    help="Input shape for --model (default 1,3,224,224); the batch is its first entry.",
)
@format_option
def report(config, overrides, batch, depth, training, convention, model_spec, input_shape, fmt) -> None:
    """Per-module FLOPs by category, parameters and share of the whole.

    \b
    Examples:
      flopkit report vit5-small
      flopkit report vit5-base --batch 64 --training --depth 3
      flopkit report examples/vit5-small-384.yaml --set num_registers=16 --format json
      flopkit report examples/attention-small.yaml --convention nvsubquadratic
      flopkit report --model examples/custom_model.py:build --input-shape 2,3,224,224
    """
    if model_spec is None and input_shape is not None:
        raise click.BadParameter(
            "applies to --model only (a config's input follows from it)", param_hint="--input-shape"
        )
    if model_spec is not None and batch != 1:
        raise click.BadParameter(
            "with --model the batch is the first entry of --input-shape", param_hint="--batch"
        )
    loaded = resolve_model(config, overrides, model_spec)
    if loaded.is_config:
        result = flop_report(
            loaded.module,
            num_tokens=loaded.tokens(),
            convention=convention,
            depth=depth,
            batch=batch,
            training=training,
            info={"config": loaded.to_dict()},
        )
    else:
        shape = _parse_shape(input_shape or "1,3,224,224")
        with user_code(loaded.spec, f"the forward on input shape {list(shape)}"):
            result = flop_report(
                loaded.module,
                input_shape=shape,
                convention=convention,
                depth=depth,
                training=training,
                info={"model": loaded.spec, "input_shape": list(shape)},
            )
    if fmt == "json":
        click.echo(render_json(result.to_dict()))
        return
    title = f"{loaded.label}: {result.total_flops:,} FLOPs, {result.total_params:,} parameters"
    click.echo(render_flop_rows(result.rows, fmt, title, result.legend, source=result.measured))
