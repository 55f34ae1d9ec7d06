"""``flopkit report``: per-module FLOPs by category, for a flopkit config or any model."""

from __future__ import annotations

import click

from flopkit.flops.llm import CHECKPOINTING
from flopkit.report import render_flop_rows, render_json

from ._options import (
    CONTEXT,
    batch_option,
    cli_text,
    config_argument,
    convention_option,
    depth_option,
    format_option,
    given,
    model_options,
    model_settings,
    parallel_options,
    parallel_settings,
    refuse_without_model,
    resolve_model,
    set_option,
)

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
@click.option(
    "--kv-cache",
    "kv_cache",
    type=int,
    metavar="L",
    help="Decode: the new tokens (--seq-len, default 1) attend to L cached ones plus themselves; the "
    "cache is the model's own (Hugging Face's DynamicCache), filled by an uncounted prefill on meta.",
)
@click.option(
    "--generate",
    metavar="P:N",
    help="A generation: a prefill of P prompt tokens, then N decode steps (step k: one token against "
    "P+k cached); rows per phase, totals and FLOPs per token.",
)
@click.option(
    "--checkpointing",
    type=click.Choice(CHECKPOINTING),
    default="none",
    show_default=True,
    help="With --training: activation checkpointing; blocks recomputes each repeated layer's forward "
    "in the backward (counted in hardware_flops, not in model FLOPs).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Exit 2 when the model runs ops that have no FLOP formula (they would count as zero).",
)
@model_options
@parallel_options
@format_option
@click.pass_context
def report(
    ctx, config, overrides, batch, depth, training, convention, columns, plot_path, kv_cache, generate,
    checkpointing, strict, model_spec, model_args, input_shape, seq_len, named_inputs, causal, fmt,
    **parallel,
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
      flopkit report --model hf:llama --kv-cache 8192 --causal-attention exact
      flopkit report --model hf:mixtral --generate 512:128 --causal-attention exact
      flopkit report --model hf:llama --seq-len 4 --causal-attention exact \\
          --input 'attention_mask=[[1,1,1,1],[0,0,1,1]]' --batch 2
      flopkit report vit5-large --fsdp 8 --format json
      flopkit report --model hf:llama --seq-len 4096 --tp 2 --fsdp 4 --step-ms 900

    \b
    With --fsdp/--tp/--dp-replicate/--world: one rank of a training step on a micro-batch of --batch
    samples, sharded with torch's fully_shard and parallelize_module on a fake process group: FLOPs
    and collectives per layer, memory, compute against communication time, MFU/HFU (--step-ms).
    """
    from flopkit.checks import check_output_path
    from flopkit.flops.count import count

    from .model_cmds import parse_columns, parse_values, render_model_rows, report_model

    if plot_path is not None:  # output paths first, before anything is read or built
        check_output_path(plot_path, "plot_path")
    sharding = parallel_settings(ctx, parallel)
    if sharding:
        from .sharded import report_sharded

        report_sharded(
            ctx, config, overrides, batch, depth, model_spec, model_args, input_shape, seq_len, named_inputs,
            fmt, sharding,
        )  # fmt: skip
        return
    column_groups = parse_columns(columns)
    if model_spec is None:
        refuse_without_model(
            ctx, "model_args", "input_shape", "seq_len", "named_inputs", "causal", "plot_path",
            "kv_cache", "generate", "strict",
        )  # fmt: skip
    if checkpointing != "none" and not training:
        raise click.UsageError("--checkpointing applies to a training step: add --training")
    values, named_inputs = parse_values(named_inputs)
    settings = model_settings(model_args, input_shape, seq_len, named_inputs)
    if settings[2] is not None and len(settings[2]) > 1 and given(ctx, "depth"):
        raise click.UsageError("--depth applies to the per-module table, not to a --seq-len sweep")
    loaded = resolve_model(config, overrides, model_spec, settings[0])
    if not loaded.is_config:
        report_model(
            loaded, *settings[1:], batch=batch, causal=causal, depth=depth, training=training,
            convention=convention, columns=column_groups, plot_path=plot_path, fmt=fmt, kv_cache=kv_cache,
            generate=generate, checkpointing=checkpointing, strict=strict, values=values,
            depth_given=given(ctx, "depth"),
        )  # fmt: skip
        return
    result = count(
        loaded,
        batch=batch,
        training=training,
        convention=convention,
        depth=depth,
        checkpointing=checkpointing,
    )
    result.legend = [cli_text(line) for line in result.legend]  # the library's arguments as options
    if fmt == "json":
        click.echo(render_json(result.to_dict()))
        return
    title = f"{loaded.label}: {result.total_flops:,} FLOPs, {result.total_params:,} parameters"
    if column_groups:
        result.attach_shapes()
        click.echo(render_model_rows(result.rows, fmt, title, result.legend, column_groups, training))
        return
    click.echo(render_flop_rows(result.rows, fmt, title, result.legend, source=result.measured))
