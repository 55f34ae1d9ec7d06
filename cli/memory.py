"""``flopkit memory``: a training or inference step's predicted GPU memory, per layer and at its peak."""

from __future__ import annotations

import functools

import click

from flopkit.report import render_json, render_rows

from ._options import (
    CONTEXT,
    batch_option,
    config_argument,
    depth_option,
    format_option,
    given,
    model_options,
    model_settings,
    refuse_without_model,
    resolve_model,
    set_option,
)

__all__ = ["memory"]


@click.command(context_settings=CONTEXT)
@config_argument(required=False)
@set_option
@batch_option()
@depth_option
@click.option("--training", is_flag=True, help="A training step (forward, loss, backward, optimizer step).")
@click.option(
    "--optimizer",
    type=click.Choice(["adamw", "sgd", "none"]),
    default=None,
    help="With --training: AdamW (default; foreach), SGD with momentum 0.9, or none.",
)
@click.option(
    "--loss",
    type=click.Choice(["ce", "mse"]),
    default=None,
    help="With --training: cross-entropy (default for class/vocabulary outputs) or mean square error.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default=None,
    help="Parameter dtype (default: as built, float32).",
)
@click.option(
    "--autocast",
    type=click.Choice(["bf16", "fp16", "none"]),
    default="none",
    show_default=True,
    help="torch.autocast('cuda') over the forward.",
)
@click.option(
    "--checkpointing",
    type=click.Choice(["none", "blocks"]),
    default="none",
    show_default=True,
    help="With --training: activation checkpointing of every repeated block.",
)
@click.option(
    "--kv-cache",
    "kv_cache",
    type=click.IntRange(min=1),
    default=None,
    metavar="L",
    help="Inference of --seq-len new tokens with a Hugging Face KV cache already holding L tokens.",
)
@click.option(
    "--fsdp",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="Per-rank memory with FSDP2 fully_shard per repeated block over N ranks.",
)
@click.option(
    "--tp",
    type=int,
    default=1,
    show_default=True,
    metavar="M",
    help="Per-rank memory with tensor parallelism over M ranks (the model's TP plan, flopkit's for "
    "ViT-5, or --tp-plan): the replay runs one rank's layer shapes.",
)
@click.option(
    "--dp-replicate",
    "dp_replicate",
    type=int,
    default=1,
    show_default=True,
    metavar="R",
    help="HSDP: R replicas of the --fsdp group (per-rank memory is the group's).",
)
@click.option(
    "--tp-plan",
    "tp_plan",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --tp: YAML/JSON plan, module path glob -> colwise|rowwise.",
)
@click.option(
    "--fit",
    "fit",
    metavar="SIZE",
    default=None,
    help="Find the largest batch whose predicted peak fits SIZE (e.g. 80GiB, 80GB); replaces --batch.",
)
@click.option(
    "--cublas-workspace",
    "cublas_workspace",
    type=click.Choice(["cached", "per-op"]),
    default="cached",
    show_default=True,
    help="cuBLAS workspace of the PyTorch build: cached (32 MiB kept per thread) or per-op (32 MiB "
    "around each GEMM, builds with TORCH_CUBLAS_WORKSPACE_CACHE off).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write memory over the step (PNG), the peak marked.",
)
@model_options
@format_option
@click.pass_context
def memory(
    ctx, config, overrides, batch, depth, training, optimizer, loss, dtype, autocast, checkpointing, kv_cache,
    fsdp, tp, dp_replicate, tp_plan, fit, cublas_workspace, plot_path, model_spec, model_args, input_shape,
    seq_len, named_inputs, causal, fmt,
) -> None:  # fmt: skip
    """Predicted GPU memory (H100, torch.cuda.max_memory_allocated) of one step, without a GPU:
    peak, steady state, parameters, gradients, optimizer state, activations, per layer.

    \b
    Examples:
      flopkit memory vit5-small --batch 128 --training --autocast bf16
      flopkit memory vit5-base --training --checkpointing blocks --fit 80GiB
      flopkit memory --model timm:resnet50 --batch 64 --training --optimizer sgd
      flopkit memory --model hf:gpt2 --seq-len 1024 --batch 8 --training --autocast bf16 --plot gpt2.png
      flopkit memory --model hf:llama --model-arg num_hidden_layers=4 --seq-len 1 --kv-cache 4096
      flopkit memory vit5-large --training --fsdp 8 --format json
      flopkit memory --model hf:llama --seq-len 4096 --training --autocast bf16 --tp 2 --fsdp 4
    """
    from flopkit.step_memory import fit_batch, format_bytes
    from flopkit.step_memory import memory as predict

    if model_spec is None:
        refuse_without_model(ctx, "model_args", "input_shape", "seq_len", "named_inputs")
    if given(ctx, "causal"):
        raise click.UsageError("--causal-attention applies to FLOP counts, not to memory")
    if fit is not None and given(ctx, "batch"):
        raise click.UsageError("--fit searches the batch: give --fit or --batch, not both")
    if fit is not None and plot_path is not None:
        raise click.UsageError("--plot draws one step: give it without --fit")
    if not training:
        for name, option in (
            ("optimizer", "--optimizer"),
            ("loss", "--loss"),
            ("checkpointing", "--checkpointing"),
        ):
            if given(ctx, name):
                raise click.UsageError(f"{option} applies only with --training")
    settings = model_settings(model_args, input_shape, seq_len, named_inputs)
    lengths = settings[2]
    if lengths is not None and len(lengths) > 1:
        raise click.UsageError("--seq-len: memory takes one length")
    if fit is not None:
        from flopkit.step_memory import parse_bytes

        parse_bytes(fit)  # a malformed size fails before the model is built
    sharded = any(given(ctx, name) for name in ("tp", "dp_replicate", "tp_plan"))
    if sharded:
        from flopkit.parallel.memory import _check_degrees, rank_fit_batch, rank_memory

        _check_degrees(tp, fsdp, dp_replicate, tp_plan)  # before the model is built
        shard = {"tp": tp, "dp_replicate": dp_replicate, "tp_plan": tp_plan}
        fit_batch = functools.partial(rank_fit_batch, **shard)
        predict = functools.partial(rank_memory, **shard)
    loaded = resolve_model(config, overrides, model_spec, settings[0])
    options = dict(
        input_shape=settings[1],
        seq_len=lengths[0] if lengths else None,
        named_inputs=settings[3],
        training=training,
        optimizer=optimizer,
        loss=loss,
        dtype=dtype,
        autocast=autocast,
        checkpointing=checkpointing,
        kv_cache=kv_cache,
        fsdp=fsdp,
        cublas_workspace=cublas_workspace.replace("-", "_"),
        depth=depth,
    )
    if fit is not None:
        found = fit_batch(loaded, fit, **options)
        if fmt == "json":
            click.echo(render_json(found.to_dict()))
            return
        line = (
            f"{loaded.label}: largest batch {found.batch} fits {format_bytes(found.budget_bytes)}: "
            f"predicted peak {format_bytes(found.result.peak_bytes)} ({found.result.peak_bytes:,} bytes)"
        )
        if fmt == "csv":
            click.echo(
                render_rows(
                    ["batch", "peak_bytes", "budget_bytes"],
                    [[found.batch, found.result.peak_bytes, found.budget_bytes]],
                    "csv",
                )
            )
            return
        click.echo(line)
        tried = ", ".join(f"{b}: {format_bytes(p)}" for b, p in sorted(found.tried.items()))
        click.echo(f"  batches tried (peak): {tried}")
        return
    result = predict(loaded, batch=batch, **options)
    if plot_path is not None:
        result.plot(plot_path)
    if fmt == "json":
        click.echo(render_json(result.to_dict()))
        return
    headers, rows = result.to_rows()
    if fmt == "table":
        rows = [[("  " * r[0].count(".") + r[0]) if r[0] != "TOTAL" else r[0], *r[1:]] for r in rows]
    if fmt == "csv":
        click.echo(render_rows(headers, rows, "csv"))
        return
    click.echo(render_rows(headers, rows, fmt, title=_title(result), notes=_notes(result)))


def _title(result) -> str:
    from flopkit.step_memory import format_bytes

    s = result.settings
    step = "training" if s["training"] else "inference"
    return (
        f"{result.label}, batch {s['batch']}, {step}: predicted peak {format_bytes(result.peak_bytes)} "
        f"({result.peak_bytes:,} bytes) in the {result.peak_phase} at {result.peak_path or '(model)'}"
    )


def _notes(result) -> list[str]:
    from flopkit.step_memory import format_bytes

    parts = ", ".join(
        f"{name.replace('_', ' ')} {format_bytes(size)}"
        for name, size in result.peak_breakdown.items()
        if size
    )
    s = result.settings
    lines = [
        f"steady state {format_bytes(result.steady_bytes)}; parameters and buffers "
        f"{format_bytes(result.parameters_bytes)}, gradients {format_bytes(result.gradients_bytes)}, optimizer "
        f"state {format_bytes(result.optimizer_bytes)} ({s['optimizer'] or 'none'}), workspace "
        f"{format_bytes(result.workspace_bytes)}, saved for backward {format_bytes(result.saved_bytes)}",
        f"at the peak: {parts}",
        "activation bytes: blocks autograd saves in the module's forward (each block once, parameters "
        "excluded); output bytes: its outputs' blocks; every block rounded up to 512 bytes",
        *result.assumptions,
    ]
    return lines
