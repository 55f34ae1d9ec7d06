"""The losses a training step takes of a model's output, defined once for ``memory`` and ``profile``.

* ``ce``: ``F.cross_entropy(out.float().flatten(0, -2), targets.flatten())``, int64 targets of
  ``out.shape[:-1]``; the default where the output has a class or vocabulary dimension.
* ``mse``: ``F.mse_loss(out.float(), targets)``, float32 targets of ``out``'s shape.

The targets are zeros: valid class ids for any class count, and the values never change the
memory or the time of a step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from flopkit.checks import InputError

__all__ = ["LOSSES", "main_output", "default_loss", "make_targets", "loss_value"]

LOSSES = ("ce", "mse")


def main_output(out: Any) -> torch.Tensor:
    """The tensor a loss is taken of: the output itself, a Hugging Face output's ``logits`` (else
    ``last_hidden_state``), or the first tensor of a tuple or dict."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        for name in ("logits", "last_hidden_state"):
            if isinstance(out.get(name), torch.Tensor):
                return out[name]
        values = list(out.values())
    elif isinstance(out, (tuple, list)):
        values = list(out)
    else:
        raise TypeError(f"the model returned a {type(out).__name__}: no tensor to take a loss of")
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"the model returned a {type(out).__name__} with no tensor to take a loss of")


def default_loss(model: nn.Module, out: Any) -> str:
    """``ce`` where the output has a class or vocabulary dimension (a Hugging Face ``logits``, or a
    last dimension equal to the model's ``num_classes``), else ``mse``."""
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        return "ce"
    tensor = main_output(out)
    classes = getattr(model, "num_classes", None)
    if isinstance(classes, int) and classes > 0 and tensor.dim() >= 2 and tensor.shape[-1] == classes:
        return "ce"
    return "mse"


def make_targets(output: torch.Tensor, loss: str) -> torch.Tensor:
    """Targets for ``loss`` on ``output``'s device: int64 zeros ``output.shape[:-1]`` for ``ce``,
    float32 zeros of ``output``'s shape for ``mse``."""
    if loss == "ce":
        return torch.zeros(output.shape[:-1], dtype=torch.int64, device=output.device)
    if loss == "mse":
        return torch.zeros(output.shape, dtype=torch.float32, device=output.device)
    raise InputError("loss", repr(loss), f"must be one of {', '.join(LOSSES)}")


def loss_value(output: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """``ce``: ``F.cross_entropy(out.float().flatten(0, -2), targets.flatten())``;
    ``mse``: ``F.mse_loss(out.float(), targets)``."""
    if loss == "ce":
        return nn.functional.cross_entropy(output.float().flatten(0, -2), targets.flatten())
    if loss == "mse":
        return nn.functional.mse_loss(output.float(), targets)
    raise InputError("loss", repr(loss), f"must be one of {', '.join(LOSSES)}")
