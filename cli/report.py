"""``flopkit report``: per-module FLOPs by category, for a flopkit config or any model."""

from __future__ import annotations

import click

from flopkit.flops.summary import flop_report
from flopkit.report import render_json

from ._options import (
    CONTEXT,
    batch_option,
    config_argument,
    convention_option,
    depth_option,
    format_option,
    given,
    model_options,
    model_settings,
    refuse_without_model,
    resolve_model,
    set_option,
)
from ._render import render_flop_rows

__all__ = ["report"]


@click.command(context_settings=CONTEXT)
@config_argument(required=False)
@set_option
@batch_option()
@depth_option
@click.option(
    "--training",
    is_flag=True,
    help="Add backward FLOPs: measured on meta for --model, the rule per category (legend) for "
    "flopkit's analytic modules.",
)
@convention_option
@click.option(
    "--columns",
    metavar="GROUPS",
    help="Extra column groups: shapes (input/output shapes and dtypes), memory (parameter and output "
    "bytes), e.g. --columns shapes,memory.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="With several --seq-len lengths: write FLOPs against length (PNG).",
)
@model_options
@format_option
@click.pass_context
def report(
    ctx, config, overrides, batch, depth, training, convention, columns, plot_path, model_spec, model_args,
    input_shape, seq_len, named_inputs, causal, fmt,
) -> None:  # fmt: skip
    """Per-module FLOPs by category, parameters and share of the whole.

    \b
    Examples:
      flopkit report vit5-small
      flopkit report vit5-base --batch 64 --training --depth 3
      flopkit report examples/vit5-small-384.yaml --set num_registers=16 --format json
      flopkit report examples/attention-small.yaml --convention nvsubquadratic
      flopkit report --model examples/custom_model.py:build --input-shape 3,224,224 --batch 2
      flopkit report --model timm:resnet50 --columns shapes,memory
      flopkit report --model hf:gpt2 --seq-len 128,512,1024 --causal-attention half --plot gpt2.png
      flopkit report --model hf:llama --model-arg num_hidden_layers=2 --seq-len 2048 --training
    """
    from flopkit.checks import check_output_path

    from .model_cmds import attach_shapes, parse_columns, render_model_rows, report_model

    if plot_path is not None:  # output paths first, before anything is read or built
        check_output_path(plot_path, "plot_path")
    column_groups = parse_columns(columns)
    if model_spec is None:
        refuse_without_model(
            ctx, "model_args", "input_shape", "seq_len", "named_inputs", "causal", "plot_path"
        )
    settings = model_settings(model_args, input_shape, seq_len, named_inputs)
    if settings[2] is not None and len(settings[2]) > 1 and given(ctx, "depth"):
        raise click.UsageError("--depth applies to the per-module table, not to a --seq-len sweep")
    loaded = resolve_model(config, overrides, model_spec, settings[0])
    if not loaded.is_config:
        report_model(
            loaded, *settings[1:], batch=batch, causal=causal, depth=depth, training=training,
            convention=convention, columns=column_groups, plot_path=plot_path, fmt=fmt,
        )  # fmt: skip
        return
    result = flop_report(
        loaded.module,
        num_tokens=loaded.tokens(),
        convention=convention,
        depth=depth,
        batch=batch,
        training=training,
        info={"config": loaded.to_dict()},
    )
    if fmt == "json" or column_groups:
        attach_shapes(result.rows, loaded.config, loaded.module, batch)
    if fmt == "json":
        click.echo(render_json(result.to_dict()))
        return
    title = f"{loaded.label}: {result.total_flops:,} FLOPs, {result.total_params:,} parameters"
    if column_groups:
        click.echo(render_model_rows(result.rows, fmt, title, result.legend, column_groups, training))
        return
    click.echo(render_flop_rows(result.rows, fmt, title, result.legend, source=result.measured))
