"""The pieces that every measured run shares (``profile``, the memory command): its inputs, the
check that it fits the device, the model built on the device, and the training step's loss.

* :func:`run_inputs`: the run's inputs on the meta device, from a preset/config or a model spec
  with its input arguments (the same inputs ``report`` counts);
* :func:`check_run_fits`: refuse, before anything is allocated, a run whose lower bound on memory
  exceeds the device's free memory (:mod:`flopkit.checks`);
* :func:`build_run`: the model with seeded weights on the device, and the inputs as real tensors;
* :func:`make_loss`: the loss of a training step, chosen once:

* ``"ce"``: cross-entropy over the output's last dimension (classes, or a vocabulary: next-token
  prediction, one target per position) against random targets:
  ``F.cross_entropy(out.float().flatten(0, -2), targets.flatten())``;
* ``"mse"``: the mean square of the output (a regression to zero);
* ``"auto"``: ``"ce"`` when the output has a class or vocabulary dimension (:func:`has_class_dim`),
  else ``"mse"``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

__all__ = [
    "LOSSES",
    "run_inputs",
    "check_run_fits",
    "build_run",
    "output_tensor",
    "class_count",
    "has_class_dim",
    "resolve_loss",
    "make_loss",
]

if TYPE_CHECKING:
    from flopkit.models import LoadedModel, ModelInputs

LOSSES = ("auto", "ce", "mse")


def run_inputs(
    loaded: LoadedModel,
    batch: int,
    input_shape: tuple[int, ...] | None = None,
    seq_len: int | None = None,
    named: Iterable[tuple[str, tuple[int, ...], torch.dtype]] = (),
) -> ModelInputs:
    """The run's inputs on the meta device: a config's image batch ``[batch, C, H, W]``, or what the
    input arguments give a model spec (:func:`flopkit.models.model_inputs`, which checks the length
    against the model's positions and the keyword names against its forward)."""
    from flopkit.config import model_input
    from flopkit.models import ModelInputs, model_inputs

    if loaded.is_config:
        return ModelInputs((model_input(loaded.config, loaded.module, batch, "meta"),), {}, "the config")
    return model_inputs(
        loaded.module,
        batch=batch,
        input_shape=input_shape,
        seq_len=seq_len,
        named=named,
        spec=loaded.spec,
    )


def check_run_fits(
    loaded: LoadedModel,
    inputs: ModelInputs,
    *,
    training: bool,
    dtype: torch.dtype,
    device: str | torch.device,
    argument: str = "batch",
    value: Any = None,
) -> int:
    """Refuse (:class:`flopkit.checks.InputError` naming ``argument`` and ``value``) a run whose lower
    bound on memory exceeds the free memory of ``device``; returns the bound in bytes. Nothing is
    allocated: the bound comes from a forward on the meta device."""
    from flopkit.checks import check_fits, peak_bytes_lower_bound
    from flopkit.models import user_code

    itemsize = torch.empty((), dtype=dtype).element_size() if dtype != torch.float32 else None
    guard = user_code(loaded.spec, "the forward") if not loaded.is_config else contextlib.nullcontext()
    with guard:
        needed = peak_bytes_lower_bound(
            loaded.module, inputs.args, inputs.kwargs, training=training, activation_itemsize=itemsize
        )
    what = f"a {'training step' if training else 'forward'} of {loaded.label} on {inputs.describe()}"
    check_fits(needed, device, argument, value, what)
    return needed


def build_run(loaded: LoadedModel, inputs: ModelInputs, device: str | torch.device, seed: int = 0):
    """``(model, inputs)``: the model with seeded weights on ``device`` (a config's build, or the spec
    built again there) and ``inputs`` as real tensors (floats from a seeded normal, ids zero)."""
    from flopkit.models import build_model, real_inputs

    torch.manual_seed(seed)
    device = str(device)
    if loaded.is_config:
        model = loaded.config.build(device)
    else:
        model = build_model(loaded.spec, loaded.model_args, device)
    return model, real_inputs(inputs, device, seed)


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


def make_loss(output: Any, model: nn.Module, loss: str = "auto") -> tuple[str, Callable[[Any], torch.Tensor]]:
    """``(kind, fn)``: the loss that ``fn(output)`` computes for outputs shaped like ``output``, with
    ``kind`` ``"ce"`` or ``"mse"`` (:func:`resolve_loss`), as :mod:`flopkit.losses` defines them
    (the same losses ``flopkit.memory`` replays)."""
    from flopkit import losses

    out = output_tensor(output)
    kind = resolve_loss(loss, out, model)
    targets = losses.make_targets(out, kind)
    return kind, lambda o: losses.loss_value(output_tensor(o), targets, kind)
