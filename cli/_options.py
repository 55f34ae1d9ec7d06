"""Options shared by the commands, and the one call from parsed options to a model."""

from __future__ import annotations

import click

from flopkit.formulas import CONVENTIONS
from flopkit.models import LoadedModel, load_model
from flopkit.report import FORMATS

__all__ = [
    "CONTEXT",
    "OPTION_NAMES",
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
]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# The library's argument names (flopkit.checks.InputError.argument) -> the option that sets them.
OPTION_NAMES = {
    "seq_len": "--seq-len",
    "named_inputs": "--input",
    "input_shape": "--input-shape",
    "model_args": "--model-arg",
    "batch": "--batch",
    "plot_path": "--plot",
    "dst": "DST",
    "loss": "--loss",
    "rtol": "--rtol",
}


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
    "model_args": "--model-arg",
    "input_shape": "--input-shape",
    "seq_len": "--seq-len",
    "named_inputs": "--input",
    "causal": "--causal-attention",
    "plot_path": "--plot",
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
            help="A keyword input with its full shape (repeatable), e.g. token_type_ids=1,128:int64.",
        ),
        click.option(
            "--causal-attention",
            "causal",
            type=click.Choice(["full", "half"]),
            default="full",
            show_default=True,
            help="Causal SDPA calls (is_causal=True): count all T^2 query-key pairs, or only the "
            "T(T+1)/2 the mask keeps.",
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
