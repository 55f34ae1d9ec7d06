"""The pieces of a training step that every measured run shares: the output tensor and the loss.

``profile --training`` (and the memory command) run forward, loss and backward on random data; the
loss is chosen here once:

* ``"ce"``: cross-entropy over the output's last dimension (classes, or a vocabulary: next-token
  prediction, one target per position) against random targets:
  ``F.cross_entropy(out.float().flatten(0, -2), targets.flatten())``;
* ``"mse"``: the mean square of the output (a regression to zero);
* ``"auto"``: ``"ce"`` when the output has a class or vocabulary dimension (:func:`has_class_dim`),
  else ``"mse"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["LOSSES", "output_tensor", "class_count", "has_class_dim", "resolve_loss", "make_loss"]

LOSSES = ("auto", "ce", "mse")


def output_tensor(output: Any) -> torch.Tensor:
    """The tensor a loss reads from a forward's output: a tensor itself, a model output's ``logits``
    (else ``last_hidden_state``), or the first floating-point tensor of a tuple, list or dict."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("logits", "last_hidden_state"):
        value = output.get(name) if isinstance(output, dict) else getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    from torch.utils._pytree import tree_leaves

    for leaf in tree_leaves(output):
        if isinstance(leaf, torch.Tensor) and leaf.dtype.is_floating_point:
            return leaf
    raise ValueError(
        f"the model's output has no floating-point tensor to take a loss of: {type(output).__name__}"
    )


def class_count(model: nn.Module) -> set[int]:
    """The class or vocabulary sizes the model declares: ``num_classes`` (timm, flopkit's ViT5), a
    Hugging Face config's ``vocab_size`` and ``num_labels``."""
    sizes = {getattr(model, "num_classes", None)}
    config = getattr(model, "config", None)
    sizes |= {getattr(config, "vocab_size", None), getattr(config, "num_labels", None)}
    return {s for s in sizes if isinstance(s, int) and not isinstance(s, bool) and s > 1}


def has_class_dim(output: torch.Tensor, model: nn.Module) -> bool:
    """True when ``output`` (``[B, ..., K]``) ends in one of the model's class or vocabulary sizes."""
    return output.dim() >= 2 and output.shape[-1] in class_count(model)


def resolve_loss(loss: str, output: torch.Tensor, model: nn.Module) -> str:
    """``"ce"`` or ``"mse"`` for ``loss`` (one of :data:`LOSSES`) on ``output``."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if loss == "auto":
        return "ce" if has_class_dim(output, model) else "mse"
    if loss == "ce" and (output.dim() < 2 or output.shape[-1] < 2 or not output.dtype.is_floating_point):
        raise ValueError(
            f"loss='ce' needs a floating-point output [..., classes] with 2 or more classes, got "
            f"{list(output.shape)} {str(output.dtype).removeprefix('torch.')}"
        )
    return loss


def make_loss(
    output: Any, model: nn.Module, loss: str = "auto", seed: int = 0
) -> tuple[str, Callable[[Any], torch.Tensor]]:
    """``(kind, fn)``: the loss that ``fn(output)`` computes for outputs shaped like ``output``, with
    ``kind`` ``"ce"`` or ``"mse"`` (:func:`resolve_loss`). ``ce``'s random targets are drawn once,
    from ``seed``."""
    out = output_tensor(output)
    kind = resolve_loss(loss, out, model)
    if kind == "mse":
        return kind, lambda o: output_tensor(o).float().square().mean()
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, out.shape[-1], tuple(out.shape[:-1]), generator=gen).to(out.device)
    flat = targets.flatten()
    return kind, lambda o: F.cross_entropy(output_tensor(o).float().flatten(0, -2), flat)
