"""Options shared by the commands, and the one call from parsed options to a model."""

from __future__ import annotations

import click

from flopkit.formulas import ATTENTION_RULES, CONVENTIONS
from flopkit.models import LoadedModel, load_model
from flopkit.report import FORMATS

__all__ = [
    "CONTEXT",
    "OPTION_NAMES",
    "cli_text",
    "config_argument",
    "set_option",
    "format_option",
    "batch_option",
    "depth_option",
    "convention_option",
    "model_option",
    "model_options",
    "given",
    "refuse_without_model",
    "model_settings",
    "resolve_model",
    "PARALLEL_OPTIONS",
    "parallel_options",
    "sharded_run",
    "parallel_settings",
]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# The one table from the library's argument names (a Python function's parameters, named by
# flopkit.checks.InputError.argument and marked `name` in its messages) to the option that sets them.
OPTION_NAMES = {
    "config": "CONFIG",
    "overrides": "--set",
    "model": "--model",
    "model_args": "--model-arg",
    "input_shape": "--input-shape",
    "seq_len": "--seq-len",
    "named_inputs": "--input",
    "causal": "--causal-attention",
    "kv_cache": "--kv-cache",
    "generate": "--generate",
    "strict": "--strict",
    "batch": "--batch",
    "depth": "--depth",
    "training": "--training",
    "optimizer": "--optimizer",
    "loss": "--loss",
    "dtype": "--dtype",
    "autocast": "--autocast",
    "checkpointing": "--checkpointing",
    "cublas_workspace": "--cublas-workspace",
    "budget": "--fit",
    "fsdp": "--fsdp",
    "tp": "--tp",
    "dp_replicate": "--dp-replicate",
    "world": "--world",
    "tp_plan": "--tp-plan",
    "param_dtype": "--param-dtype",
    "reduce_dtype": "--reduce-dtype",
    "tflops": "--tflops",
    "gbps": "--gbps",
    "step_ms": "--step-ms",
    "optimizer_states": "--optimizer-states",
    "counters": "--against",
    "tokens": "--tokens",
    "pairing": "--pairing",
    "plot_path": "--plot",
    "dst": "DST",
    "rtol": "--rtol",
    "padding_mask": "--input",
    "inputs": "--input",
    "causal_attention": "--causal-attention",
    "seq_lens": "--seq-len",
    "convention": "--convention",
    "prompt_tokens": "--generate",
    "steps": "--generate",
}


def cli_text(text: str) -> str:
    """A library message with every argument it marks (`` `seq_len` ``) shown as its option."""
    from flopkit.checks import name_arguments

    return name_arguments(text, OPTION_NAMES)


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
        help="Count any model instead of CONFIG: timm:NAME, hf:MODEL_TYPE (e.g. hf:bert, hf:gpt2, "
        "hf:llama), package.module:callable or file.py:callable. Built on the meta device.",
    )(fn)


# Options that apply only with --model: parameter name -> option name.
MODEL_ONLY = {
    name: OPTION_NAMES[name]
    for name in (
        "model_args",
        "input_shape",
        "seq_len",
        "named_inputs",
        "causal",
        "plot_path",
        "kv_cache",
        "generate",
        "strict",
    )
}


def model_options(fn=None, *, causal: bool = True):
    """``--model`` and the options that go with it: ``--model-arg``, ``--input-shape``,
    ``--seq-len``, ``--input``, and ``--causal-attention`` unless ``causal=False``. Use as
    ``@model_options`` or ``@model_options(causal=False)``."""
    if fn is None:
        return lambda f: model_options(f, causal=causal)
    options = [
        model_option,
        click.option(
            "--model-arg",
            "model_args",
            multiple=True,
            metavar="KEY=VALUE",
            help="Argument for the model factory or the Hugging Face config (repeatable), values read "
            "like --set, e.g. --model-arg num_hidden_layers=4.",
        ),
        click.option(
            "--input-shape",
            metavar="C,H,W",
            help="Shape of one input sample, without the batch (--batch is prepended). Default: the "
            "timm model's pretrained_cfg input_size.",
        ),
        click.option(
            "--seq-len",
            metavar="N[,N...]",
            help="Text models: int64 ids [batch, N]. Several lengths give one row per length (report).",
        ),
        click.option(
            "--input",
            "named_inputs",
            multiple=True,
            metavar="NAME=SHAPE[:DTYPE]",
            help="A keyword input with its full shape (repeatable), e.g. token_type_ids=1,128:int64; "
            "attention_mask takes values with --causal-attention exact, e.g. "
            "'attention_mask=[[1,1,1],[0,1,1]]' (0 = padding).",
        ),
        click.option(
            "--causal-attention",
            "causal",
            type=click.Choice(ATTENTION_RULES),
            default="full",
            show_default=True,
            help="Causal attention: count all Tq*Tk query-key pairs (full), half of them (half), or "
            "exactly the pairs the mask keeps (exact: causal T(T+1)/2, aligned after a KV cache, the "
            "config's sliding window, attention_mask padding given as --input 'attention_mask=[[1,1,0]]').",
        ),
    ]
    if not causal:
        options.pop()
    for option in reversed(options):
        fn = option(fn)
    return fn


def given(ctx: click.Context, name: str) -> bool:
    """Whether the option ``name`` was given on the command line (or by the environment)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def refuse_without_model(ctx: click.Context, *names: str) -> None:
    """A usage error for the first of the ``--model``-only options ``names`` that was given."""
    for name in names:
        if given(ctx, name):
            raise click.UsageError(f"{MODEL_ONLY[name]} applies only with --model")


def model_settings(model_args, input_shape, seq_len, named_inputs) -> tuple:
    """Parsed ``--model-arg`` values, ``--input-shape``, ``--seq-len`` lengths and ``--input`` tensors."""
    from flopkit.models import parse_input, parse_model_args, parse_seq_lens, parse_shape

    return (
        parse_model_args(model_args),
        parse_shape(input_shape) if input_shape is not None else None,
        parse_seq_lens(seq_len) if seq_len is not None else None,
        [parse_input(text) for text in named_inputs],
    )


def resolve_model(
    config: str | None,
    overrides: tuple[str, ...],
    model_spec: str | None = None,
    model_args: dict | None = None,
) -> LoadedModel:
    """The model the options name, built once on the meta device (:func:`flopkit.models.load_model`)."""
    return load_model(config, overrides, model=model_spec, model_args=model_args)


# Options of a sharded run: parameter name -> option name.
# What a sharded report prices its step with (refused without a sharding option), beside the degrees.
PRICING_ARGUMENTS = (
    "tp_plan",
    "param_dtype",
    "reduce_dtype",
    "tflops",
    "gbps",
    "step_ms",
    "optimizer_states",
)
PARALLEL_OPTIONS = {
    name: OPTION_NAMES[name] for name in ("fsdp", "tp", "dp_replicate", "world", *PRICING_ARGUMENTS)
}
PARALLEL_DTYPES = ("bfloat16", "float16", "float32")


def parallel_options(fn):
    """``--fsdp``, ``--tp``, ``--dp-replicate``, ``--world``, ``--tp-plan`` and what a sharded report
    prices its step with: ``--param-dtype``, ``--reduce-dtype``, ``--tflops``, ``--gbps``, ``--step-ms``,
    ``--optimizer-states``."""
    from flopkit.parallel.report import H100_BF16_TFLOPS, NVLINK4_GBPS

    options = [
        click.option(
            "--fsdp", type=int, default=None, help="FSDP2 shard degree (ranks sharing the parameters)."
        ),
        click.option(
            "--tp", type=int, default=None, help="Tensor-parallel degree (ranks splitting each matmul)."
        ),
        click.option(
            "--dp-replicate",
            "dp_replicate",
            type=int,
            default=None,
            help="HSDP replica groups (each of --fsdp ranks); the world is dp-replicate x fsdp x tp.",
        ),
        click.option(
            "--world",
            type=int,
            default=None,
            help="Ranks in all: must equal dp-replicate x fsdp x tp; without --fsdp, fsdp = world / "
            "(dp-replicate x tp).",
        ),
        click.option(
            "--tp-plan",
            "tp_plan",
            type=click.Path(dir_okay=False),
            default=None,
            help="YAML/JSON plan: module path glob -> colwise|rowwise ('*' is one path component). Default: "
            "the model's base_model_tp_plan, or flopkit's for ViT-5.",
        ),
        click.option(
            "--param-dtype",
            type=click.Choice(PARALLEL_DTYPES),
            default="bfloat16",
            show_default=True,
            help="FSDP2 MixedPrecisionPolicy param_dtype (all-gathers and compute); autocast without FSDP.",
        ),
        click.option(
            "--reduce-dtype",
            type=click.Choice(PARALLEL_DTYPES),
            default="float32",
            show_default=True,
            help="FSDP2 MixedPrecisionPolicy reduce_dtype (gradient reduce-scatter / all-reduce).",
        ),
        click.option(
            "--tflops",
            type=float,
            default=H100_BF16_TFLOPS,
            show_default=True,
            help="Compute rate per GPU (default: H100 SXM dense BF16 peak).",
        ),
        click.option(
            "--gbps",
            type=float,
            default=NVLINK4_GBPS,
            show_default=True,
            help="Interconnect GB/s per direction per GPU (default: NVLink 4, 900 GB/s total).",
        ),
        click.option(
            "--step-ms", "step_ms", type=float, default=None, help="Measured step time: gives MFU and HFU."
        ),
        click.option(
            "--optimizer-states",
            type=int,
            default=2,
            show_default=True,
            help="Optimizer tensors per parameter, each its shard's size and dtype (AdamW 2, SGD momentum 1).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def sharded_run(ctx: click.Context) -> bool:
    """Whether any of ``--fsdp``, ``--tp``, ``--dp-replicate``, ``--world`` was given."""
    return any(given(ctx, name) for name in ("fsdp", "tp", "dp_replicate", "world"))


def parallel_settings(ctx: click.Context, params: dict) -> dict:
    """The library's arguments from the parsed sharding options (``--world`` resolved to the degrees);
    pricing options given without a sharding option are refused."""
    import torch

    if not sharded_run(ctx):
        for name in PRICING_ARGUMENTS:
            if given(ctx, name):
                raise click.UsageError(
                    f"{PARALLEL_OPTIONS[name]} applies with --fsdp, --tp, --dp-replicate or --world"
                )
        return {}
    tp = params["tp"] if params["tp"] is not None else 1
    replicate = params["dp_replicate"] if params["dp_replicate"] is not None else 1
    fsdp = params["fsdp"]
    world = params["world"]
    if world is not None:
        if fsdp is None and tp > 0 and replicate > 0 and world % (tp * replicate) == 0:
            fsdp = world // (tp * replicate)
        elif fsdp is None or world != replicate * (fsdp or 1) * tp:
            raise click.BadParameter(
                f"{world} is not dp-replicate x fsdp x tp = {replicate} x {fsdp if fsdp is not None else 1} x {tp}",
                param_hint="--world",
            )
    return {
        "fsdp": fsdp if fsdp is not None else 1,
        "tp": tp,
        "dp_replicate": replicate,
        "tp_plan": params["tp_plan"],
        "param_dtype": getattr(torch, params["param_dtype"]),
        "reduce_dtype": getattr(torch, params["reduce_dtype"]),
        "tflops": params["tflops"],
        "gbps": params["gbps"],
        "step_ms": params["step_ms"],
        "optimizer_states": params["optimizer_states"],
    }
