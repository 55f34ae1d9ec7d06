"""``flopkit convert SRC DST``: rewrite a ViT-5 checkpoint in another layout's keys."""

from __future__ import annotations

from pathlib import Path

import click

from flopkit.checkpoints import LAYOUTS, SOURCES, convert_checkpoint, is_checkpoint_path, matching_preset
from flopkit.checks import check_output_path

from ._options import CONTEXT

__all__ = ["convert"]


@click.command(context_settings=CONTEXT)
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option(
    "--from",
    "source",
    type=click.Choice(SOURCES),
    default="auto",
    show_default=True,
    help="Layout of SRC; auto recognises it from the keys.",
)
@click.option(
    "--to",
    "target",
    type=click.Choice(LAYOUTS),
    default="flopkit",
    show_default=True,
    help="Layout to write.",
)
@click.option("--ema", is_flag=True, help="Take the EMA weights of a training checkpoint (model_ema, ...).")
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
def convert(src: str, dst: str, source: str, target: str, ema: bool, force: bool) -> None:
    """Convert a ViT-5 checkpoint (.pth/.pt/.safetensors) between the nvSubquadratic, official and
    flopkit layouts; the output format follows DST's suffix.

    The architecture is read off the tensors' shapes; a flopkit output records it, so
    `flopkit report DST` and `load_vit5(DST)` rebuild the same model.

    \b
    Example:
      flopkit convert vit5_small.pth vit5_small_flopkit.safetensors --from official
    """
    out = check_output_path(dst, "dst")  # first: a bad destination fails before SRC is read
    if not is_checkpoint_path(out):
        raise click.BadParameter("must end in .pth, .pt, .bin, .ckpt or .safetensors", param_hint="DST")
    if out.exists() and not force:
        raise click.BadParameter(f"{dst} exists; give --force to overwrite it", param_hint="DST")
    if out.resolve() == Path(src).resolve():
        raise click.BadParameter("must differ from SRC", param_hint="DST")
    found, fields = convert_checkpoint(src, out, source, target, ema=ema)
    preset = matching_preset(fields)
    shape = ", ".join(
        f"{k}={fields[k]}" for k in ("hidden_dim", "depth", "num_heads", "image_size", "num_classes")
    )
    click.echo(
        f"{src} ({found}) -> {dst} ({target}): ViT5 {shape}" + (f" = preset {preset}" if preset else "")
    )
