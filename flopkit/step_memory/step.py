"""One training or inference step, written once and run twice: replayed on the meta device by
:func:`flopkit.memory` and run for real on a GPU by ``benchmarks/memory_accuracy.py``, so that the
prediction and the measurement execute the same program.

A training step (:func:`run_step`): ``out = model(*inputs)`` (under autocast when asked), the
loss (:func:`loss_value`), ``loss.backward()``, ``optimizer.step()``,
``optimizer.zero_grad(set_to_none=True)``. An inference step: the forward under ``torch.no_grad``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flopkit.checks import InputError
from flopkit.losses import LOSSES, default_loss, loss_value, main_output, make_targets

__all__ = [
    "OPTIMIZERS",
    "LOSSES",
    "CHECKPOINTING",
    "StepHooks",
    "make_optimizer",
    "create_optimizer_state",
    "main_output",
    "default_loss",
    "make_targets",
    "loss_value",
    "repeated_blocks",
    "checkpoint_blocks",
    "make_kv_cache",
    "kv_cache_inputs",
    "run_step",
]

OPTIMIZERS = ("adamw", "sgd", "none")
CHECKPOINTING = ("none", "blocks")


def make_optimizer(name: str, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer | None:
    """``adamw``: ``AdamW(lr=1e-3, weight_decay=0.01, foreach=True)`` (CUDA's default
    implementation: state ``exp_avg`` and ``exp_avg_sq`` per parameter, a CPU step counter);
    ``sgd``: ``SGD(lr=1e-3, momentum=0.9, foreach=True)`` (one momentum buffer per parameter);
    ``none``: no optimizer (forward, loss and backward only)."""
    if name not in OPTIMIZERS:
        raise InputError("optimizer", repr(name), f"must be one of {', '.join(OPTIMIZERS)}")
    params = list(params)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, foreach=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9, foreach=True)
    return None


def create_optimizer_state(optimizer: torch.optim.Optimizer | None) -> None:
    """Create the optimizer's state as the first step does (zero gradients, one ``step``, gradients
    dropped), so that the next step is a steady-state one. The parameters change; on the meta device
    they have no values."""
    if optimizer is None:
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def repeated_blocks(model: nn.Module) -> list[str]:
    """Paths of the repeated blocks: the children of each outermost ``ModuleList``/``Sequential``
    (the model itself included) whose class occurs at least twice among its siblings and that are
    blocks, not single layers: they have children and parameters (a transformer's layers, a
    ResNet stage's bottlenecks)."""
    found: list[str] = []

    def is_block(module: nn.Module) -> bool:
        return any(True for _ in module.children()) and any(True for _ in module.parameters())

    def visit(module: nn.Module, prefix: str) -> None:
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
            kinds = [type(c) for c in module.children()]
            hits = [
                f"{prefix}.{name}" if prefix else name
                for name, child in module.named_children()
                if kinds.count(type(child)) >= 2 and is_block(child)
            ]
            if hits:
                found.extend(hits)
                return
        for name, child in module.named_children():
            visit(child, f"{prefix}.{name}" if prefix else name)

    visit(model, "")
    return found


def checkpoint_blocks(
    model: nn.Module,
    paths: Sequence[str],
    context_fn: Callable[[], tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]]
    | None = None,
) -> Callable[[], None]:
    """Run each module at ``paths`` under ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``
    (its saved tensors are recomputed in the backward); returns the function that undoes it.
    ``context_fn`` is passed on (the meta replay uses it to re-enter its autocast emulation during
    the recompute, which ``torch.autocast`` does by itself on a GPU)."""
    from torch.utils.checkpoint import checkpoint

    modules = dict(model.named_modules())
    wrapped = []
    for path in paths:
        module = modules[path]
        forward = module.forward

        @functools.wraps(forward)
        def checkpointed(*args, _forward=forward, **kwargs):
            extra = {"context_fn": context_fn} if context_fn is not None else {}
            return checkpoint(_forward, *args, use_reentrant=False, **extra, **kwargs)

        module.forward = checkpointed
        wrapped.append(module)

    def restore() -> None:
        for module in wrapped:
            del module.forward

    return restore


def make_kv_cache(
    model: nn.Module, batch: int, length: int, dtype: torch.dtype, device: torch.device | str
) -> Any:
    """A Hugging Face ``DynamicCache`` already holding ``length`` tokens for each layer of ``model``:
    keys and values ``[batch, kv_heads, length, head_dim]`` of ``dtype`` (zeros)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_hidden_layers"):
        raise InputError(
            "kv_cache",
            length,
            f"needs a Hugging Face decoder (hf:gpt2, hf:llama, ...), got {type(model).__name__}",
        )
    from transformers import DynamicCache

    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    cache = DynamicCache(config=config)
    shape = (batch, kv_heads, length, head_dim)
    for layer in range(config.num_hidden_layers):
        cache.update(
            torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(shape, dtype=dtype, device=device),
            layer,
        )
    return cache


def kv_cache_inputs(
    model: nn.Module, batch: int, length: int, dtype: torch.dtype, device: torch.device | str
) -> dict[str, Any]:
    """The keyword inputs of a decoding step with a cache of ``length`` tokens
    (:func:`make_kv_cache`): under the name the model's forward takes (``cache`` in recent
    transformers, ``past_key_values`` before), with ``use_cache=True`` where it takes that."""
    import inspect

    params = inspect.signature(model.forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    inputs: dict[str, Any] = {name: make_kv_cache(model, batch, length, dtype, device)}
    if "use_cache" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        inputs["use_cache"] = True
    return inputs


@dataclass
class StepHooks:
    """What the meta replay observes of a step; the defaults do nothing (the GPU run).

    ``phase(name)`` is called as each phase starts; ``autocast()`` returns the context of the
    forward's autocast region (``torch.autocast("cuda", dtype)`` on a GPU); ``saving()`` wraps the
    forward and loss (the replay's saved-tensor hooks); ``after_backward(grads)`` sees the
    gradients once the backward is done.
    """

    phase: Callable[[str], None] = lambda name: None
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    saving: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    after_backward: Callable[[list[torch.Tensor]], None] = lambda grads: None
    state: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _both(*contexts: contextlib.AbstractContextManager) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for ctx in contexts:
            stack.enter_context(ctx)
        yield


def run_step(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    training: bool,
    optimizer: torch.optim.Optimizer | None,
    loss: str | None,
    hooks: StepHooks | None = None,
) -> str | None:
    """One step of ``model`` on ``args``/``kwargs`` (already on the device). Training: forward,
    loss (``loss``, or :func:`default_loss` when None), backward, optimizer step, ``zero_grad
    (set_to_none=True)``; inference: the forward under ``torch.no_grad()``, its output dropped.
    Returns the loss used (None for inference)."""
    hooks = hooks or StepHooks()
    if not training:
        hooks.phase("inference")
        with torch.no_grad(), hooks.autocast():
            out = model(*args, **kwargs)
        del out
        return None
    hooks.phase("forward")
    with _both(hooks.saving(), hooks.autocast()):
        out = model(*args, **kwargs)
    with hooks.saving():
        hooks.phase("loss")
        loss = loss or default_loss(model, out)
        output = main_output(out)
        del out
        targets = make_targets(output, loss)
        value = loss_value(output, targets, loss)
        del output, targets
    hooks.phase("backward")
    value.backward()
    del value
    params = [p for p in model.parameters() if p.requires_grad]
    hooks.after_backward([p.grad for p in params if p.grad is not None])
    if optimizer is not None:
        hooks.phase("optimizer")
        optimizer.step()
        hooks.phase("zero_grad")
        optimizer.zero_grad(set_to_none=True)
    else:
        hooks.phase("zero_grad")
        for p in params:
            p.grad = None
    return loss
