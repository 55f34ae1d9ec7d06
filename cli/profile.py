"""``flopkit profile``: measured time per layer next to report's FLOPs, the roofline, the step."""

from __future__ import annotations

import contextlib
from typing import Any

import click

from flopkit.profile.run import MAX_STEPS
from flopkit.report import render_json, render_rows
from flopkit.steps import LOSSES, build_run, check_run_fits, run_inputs

from ._options import (
    CONTEXT,
    cli_text,
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

__all__ = ["profile", "render_profile"]

DEVICES = ("auto", "cuda", "cpu")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


@click.command(context_settings=CONTEXT)
@config_argument(required=False)
@set_option
@model_options(causal=False)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=None,
    help="Batch size [default: 8].",
)
@click.option("--training", is_flag=True, help="Profile forward + loss + backward (no optimizer).")
@click.option(
    "--loss",
    type=click.Choice(LOSSES),
    default="auto",
    show_default=True,
    help="With --training: ce (cross-entropy over the output's last dimension, zero targets: a "
    "classifier's classes, a language model's next token), mse (mean square error against zero "
    "targets); auto: ce when the output ends in the model's class or vocabulary size, else mse.",
)
@click.option(
    "--compile", "compile_", is_flag=True, help="torch.compile each region (the deepest rows) on its own."
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPE_CHOICES),
    default="auto",
    show_default=True,
    help="Compute dtype (autocast for bfloat16/float16); auto: bfloat16 on CUDA, float32 on CPU.",
)
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="auto",
    show_default=True,
    help="auto: cuda when a GPU is available, else cpu.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1, max=MAX_STEPS),
    default=10,
    show_default=True,
    help="Steps timed plain, then the same number under the profiler.",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0, max=MAX_STEPS),
    default=3,
    show_default=True,
    help="Untimed steps first (compilation happens here).",
)
@depth_option
@convention_option
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the roofline (PNG): one point per layer, the measured roofs.",
)
@format_option
@click.pass_context
def profile(
    ctx, config, overrides, model_spec, model_args, input_shape, seq_len, named_inputs, batch, training,
    loss, compile_, dtype, device, steps, warmup, depth, convention, plot_path, fmt,
) -> None:  # fmt: skip
    """Measured time per layer, forward and backward, with report's FLOPs, achieved TFLOP/s and
    GB/s against the matmul rate and copy bandwidth measured in the same run, the bound of each
    layer, and the whole step (wall ms, GPU busy ms, host-bound share, MFU).

    \b
    Examples:
      flopkit profile vit5-base --batch 128 --training
      flopkit profile vit5-base --batch 128 --training --compile --plot roofline.png
      flopkit profile vit5-small --batch 2 --device cpu --training --steps 2 --warmup 1
      flopkit profile --model examples/custom_model.py:build --input-shape 3,224,224 --batch 8
      flopkit profile --model hf:gpt2 --model-arg n_layer=2 --seq-len 64 --device cpu --training
      flopkit profile --model timm:resnet18 --batch 32 --training
    """
    import torch

    from flopkit.checks import check_output_path
    from flopkit.models import user_code
    from flopkit.profile import DTYPES, deepest_level, plot_roofline, profile_model, roofline_points
    from flopkit.progress import progress_for

    if plot_path is not None:  # output paths first, before anything is read or built
        check_output_path(plot_path, "plot_path")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.BadParameter(
                "needs matplotlib: pip install 'flopkit[plot]'", param_hint="--plot"
            ) from None
    if model_spec is None:
        refuse_without_model(ctx, "model_args", "input_shape", "seq_len", "named_inputs")
    if given(ctx, "loss") and not training:
        raise click.UsageError("--loss applies to a training step: add --training")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(
            "no CUDA GPU is available (torch.cuda.is_available() is False); use --device cpu",
            param_hint="--device",
        )
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    if compile_ and warmup < 1:
        raise click.BadParameter(
            "--compile needs at least one warm-up step (it compiles there)", param_hint="--warmup"
        )
    settings = model_settings(model_args, input_shape, seq_len, named_inputs)
    if settings[2] is not None and len(settings[2]) > 1:
        raise click.BadParameter(
            f"profile runs one length, got {len(settings[2])} (a sweep is report --seq-len 128,512,...)",
            param_hint="--seq-len",
        )
    loaded = resolve_model(config, overrides, model_spec, settings[0])
    batch = batch or 8
    _, input_shape, seq_lens, named = settings
    inputs = run_inputs(loaded, batch, input_shape, seq_lens[0] if seq_lens else None, named)
    deepest = deepest_level(loaded.module)
    if depth > deepest:
        if given(ctx, "depth"):
            raise click.BadParameter(
                f"{depth} does not exist: {loaded.label}'s modules go {deepest} levels deep (0..{deepest})",
                param_hint="--depth",
            )
        depth = deepest  # the default depth on a shallow model: all of it
    flops = _flop_report(loaded, inputs, depth, training, convention)
    # The option a refusal names: the batch, or at batch 1 the size that set the input.
    if batch == 1 and (seq_lens or input_shape):
        argument, value = (
            ("seq_len", seq_lens[0]) if seq_lens else ("input_shape", ",".join(map(str, input_shape)))
        )
    else:
        argument, value = "batch", batch
    check_run_fits(
        loaded, inputs, training=training, dtype=DTYPES[dtype], device=device, argument=argument, value=value
    )
    model, real = build_run(loaded, inputs, device)
    totals = flops.rows[0].breakdown
    # A user's model: its own errors are one line naming the spec (configs' errors are flopkit's).
    guard = user_code(loaded.spec, "a profiled step") if not loaded.is_config else contextlib.nullcontext()
    try:
        with guard, progress_for(fmt) as progress:
            result = profile_model(
                model,
                (real.args, real.kwargs),
                flops.rows,
                mfu_flops=totals["matmul"] + totals["attention"],
                training=training,
                dtype=DTYPES[dtype],
                compile=compile_,
                steps=steps,
                warmup=warmup,
                loss=loss,
                progress=progress,
            )
    except torch.cuda.OutOfMemoryError:
        raise click.UsageError(
            f"out of memory on {device} at batch {batch} ({dtype}); lower --batch"
        ) from None
    source = loaded.label
    written = None
    if plot_path is not None:
        points = roofline_points(result.rows)
        title = f"{source}, batch {result.batch}, {'training' if training else 'forward'}, {result.dtype}"
        written = str(
            plot_roofline(points, result.roofs, plot_path, title=title + (", compiled" if compile_ else ""))
        )
    if loaded.is_config:
        described: dict[str, Any] = {"config": loaded.to_dict()}
    else:
        described = {**loaded.to_dict(), "inputs": inputs.describe()}
    data: dict[str, Any] = {"source": source, **described, "convention": convention, **result.to_dict()}
    # HFU: hardware FLOPs (flash-attention backward's recompute) over the same time and rate as MFU.
    data["hfu_flops"] = flops.hardware_flops
    data["hfu"] = result.mfu * flops.hardware_flops / result.mfu_flops if result.mfu_flops else 0.0
    data["legend"] = _legend(result, flops.legend)
    if written:
        data["plot"] = written
    click.echo(render_json(data) if fmt == "json" else render_profile(data, fmt))


def _flop_report(loaded, inputs, depth, training, convention):
    """:func:`flopkit.count` of the run (the same counts ``report`` gives)."""
    from flopkit.flops.count import count

    if loaded.is_config:
        return count(
            loaded, batch=inputs.args[0].shape[0], training=training, convention=convention, depth=depth
        )
    return count(loaded, inputs, training=training, convention=convention, depth=depth)


def _legend(result, report_legend: list[str]) -> list[str]:
    """What the columns mean, then report's own legend for the FLOPs."""
    on_cuda = result.device.startswith("cuda")
    unit = "kernel time on the GPU" if on_cuda else "op self time on the CPU"
    lines = [
        f"Times are per step ({result.steps} profiled after {result.warmup} warm-up), {unit}, charged to the "
        "innermost module that ran the op (backward: the module whose forward op created the autograd node, "
        "by sequence number); a row includes its submodules, like its FLOPs. host ms: the host time of the "
        "row's ranges and backward nodes, under the profiler.",
        "FLOPs are flopkit report's (its legend follows); minimum bytes = parameters + inputs + outputs "
        "(backward: 2*params + 2*inputs + outputs).",
        f"Roofs measured at the start and the end of this run (the higher kept) in {result.dtype}: matmul {result.roofs.matmul_tflops:.4g} "
        f"TFLOP/s ({result.roofs.matmul_n}^3), copy {result.roofs.copy_gbs:.4g} GB/s (read + write of "
        f"{result.roofs.copy_bytes >> 20} MiB); bound = compute or memory by the roofline"
        + ("; launch/host when the layer's host time exceeds its GPU time." if on_cuda else "."),
        "MFU = (matmul + attention FLOPs of the step, as report --training counts them: 3x forward, less the patch conv's input gradient) / plain step "
        "wall time / measured matmul rate. HFU: the same with hardware FLOPs (SDPA backward at 5/2 of its "
        "forward: flash and memory-efficient kernels recompute QK^T).",
    ]
    if result.training:
        loss = (
            "cross-entropy over the output's last dimension against random targets (a classifier's "
            "classes, a language model's next token)"
            if result.loss == "ce"
            else "the mean square of the output"
        )
        lines.append(
            f"(loss): the loss, {result.loss}: {loss}; and the backward() call outside autograd nodes."
        )
    if result.compiled:
        lines.append(
            "--compile: each region compiled on its own (regional compilation): "
            + ", ".join(result.regions[:6])
            + (", ..." if len(result.regions) > 6 else "")
            + "; Inductor's kernels never span two rows, so each is charged to its region."
        )
    return [*lines, *(cli_text(line) for line in report_legend)]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_profile(data: dict[str, Any], fmt: str) -> str:
    """The profile's JSON form (what ``--format json`` prints) as a table, markdown or CSV."""
    headers = [
        "module",
        "type",
        "GFLOP",
        "min MB",
        "fwd ms",
        "bwd ms",
        "host ms",
        "TFLOP/s",
        "GB/s",
        "% matmul",
        "% copy",
        "bound",
        "share",
    ]
    rows = data["rows"]
    if fmt == "csv":  # raw numbers for machine readers: FLOPs, bytes, ms, rates, share as a fraction
        keys = ["path", "type", "flops", "bytes", "forward_ms", "backward_ms", "host_ms", "tflops", "gbs"]
        keys += ["matmul_pct", "copy_pct", "bound", "share"]
        return render_rows(keys, [[r[k] for k in keys] for r in [*rows[1:], rows[0]]], fmt)
    body = []
    for r in [*rows[1:], rows[0]]:
        path = r["path"]
        name = path or "TOTAL"
        if fmt == "table" and path and not path.startswith("("):
            name = "  " * path.count(".") + path
        flops = r["flops"]
        body.append(
            [
                name,
                r["type"],
                (f"in {r['counted_in']}" if r["counted_in"] else "-")
                if flops is None
                else f"{flops / 1e9:.3f}",
                _fmt(r["bytes"] / 1e6 if r["bytes"] is not None else None, ".2f"),
                f"{r['forward_ms']:.3f}",
                f"{r['backward_ms']:.3f}" if data["training"] else "-",
                f"{r['host_ms']:.3f}",
                _fmt(r["tflops"], ".3g"),
                _fmt(r["gbs"], ".4g"),
                _fmt(r["matmul_pct"], ".1f"),
                _fmt(r["copy_pct"], ".1f"),
                r["bound"] or "-",
                f"{100 * r['share']:.1f}%",
            ]
        )
    roofs = data["roofs"]
    busy = "GPU busy" if data["device"].startswith("cuda") else "CPU op time"
    title = (
        f"{data['source']}: profile, batch {data['batch']}, "
        f"{'training step' if data['training'] else 'forward'}, {data['dtype']} on {data['device']}"
        f"{', compiled' if data['compile'] else ''}"
    )
    table = render_rows(headers, body, fmt, title=title)
    summary = [
        ["step (wall)", f"{data['step_ms']:.3f} ms"],
        [busy, f"{data['gpu_ms']:.3f} ms"],
        ["host-bound share", f"{100 * data['host_bound_share']:.1f}%"],
        ["MFU", f"{100 * data['mfu']:.1f}% ({data['mfu_flops'] / 1e9:.2f} GFLOP per step)"],
        ["HFU", f"{100 * data['hfu']:.1f}% ({data['hfu_flops'] / 1e9:.2f} GFLOP per step)"],
        [
            "charged to layers + loss",
            f"{100 * data['attributed_share']:.2f}% of {data['op_ms']:.3f} ms "
            f"(profiler total {data['profiler_total_ms']:.3f} ms)",
        ],
        ["step under the profiler", f"{data['profiled_step_ms']:.3f} ms ({100 * data['overhead']:+.1f}%)"],
        ["matmul rate", f"{roofs['matmul_tflops']:.4g} TFLOP/s"],
        ["copy bandwidth", f"{roofs['copy_gbs']:.4g} GB/s"],
    ]
    if data.get("plot"):
        summary.append(["roofline", data["plot"]])
    return f"{table}\n\n" + render_rows(["step", ""], summary, fmt, notes=data["legend"])
