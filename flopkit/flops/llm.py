"""Language-model workloads: a decode step against a KV cache, a whole generation (prefill, then
decode steps), mixture-of-experts parameters, and hardware FLOPs beside model FLOPs.

* :func:`build_kv_cache` fills the model's own cache (Hugging Face's ``DynamicCache``, with its
  sliding-window layers where the config has them) by one uncounted forward of ``cached_tokens``
  ids on the meta device: every key/value tensor has the shape the model itself produces (GQA, MQA,
  multi-head latent attention), no shape is re-derived here.
* :func:`count_generation` counts a prefill of ``P`` tokens and ``N`` decode steps, step ``k``
  feeding one token against ``P + k`` cached ones. Steps are not all run: a step's FLOPs are, per
  category, concave and piecewise linear in the cache length (attention over ``min(L + 1, window)``
  keys, everything else constant), so steps are counted at the ends of each linear piece (bisection)
  and summed in closed form, which is exact for such counts.
* :func:`moe_parameters`: total and active parameters (each token at exactly its top-k routed
  experts; shared experts always on).
* :func:`hardware_flops`: the MFU numerator's categories (matmul and attention) of a training step,
  plus what CUDA kernels run beyond the model's FLOPs: flash-attention backward at 5/2 of its
  forward, and a second forward of each checkpointed block.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flopkit import formulas

__all__ = [
    "CHECKPOINTING",
    "HARDWARE_CATEGORIES",
    "cache_argument",
    "build_kv_cache",
    "accepts_argument",
    "DecodeStep",
    "Generation",
    "count_generation",
    "sum_over_cache_lengths",
    "MoEParameters",
    "moe_parameters",
    "checkpoint_blocks",
    "hardware_flops",
]

CHECKPOINTING = ("none", "blocks")
"""Activation checkpointing: ``none``, or ``blocks`` (each repeated layer's forward runs again in
the backward)."""

HARDWARE_CATEGORIES = ("matmul", "attention")
"""What hardware FLOPs (and the MFU numerator) count: the tensor-core work."""


def accepts_argument(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` names a parameter ``name`` (a catch-all ``**kwargs`` does not count)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def cache_argument(model: nn.Module) -> str | None:
    """The keyword through which ``model.forward`` takes a KV cache (``cache`` in recent Hugging Face
    models, ``past_key_values`` before), or None when it takes none."""
    for name in ("cache", "past_key_values"):
        if accepts_argument(model, name):
            return name
    return None


def build_kv_cache(model: nn.Module, batch: int, cached_tokens: int, label: str = "the model") -> Any:
    """The model's own KV cache holding ``cached_tokens`` positions of ``batch`` sequences: one
    forward of int64 ids ``[batch, cached_tokens]`` on the meta device with ``use_cache=True``, not
    counted. Raises :class:`~flopkit.models.ModelError` (naming ``label``) when the model takes or
    returns no cache."""
    from flopkit.models import ModelError

    from .anymodel import grouped_experts
    from .measured import GroupedMMAnyDtype

    if cached_tokens < 1:
        raise ValueError(f"cached_tokens must be a positive number of tokens, got {cached_tokens}")
    argument = cache_argument(model)
    if argument is None or not accepts_argument(model, "use_cache"):
        raise ModelError(f"{label} takes no KV cache (its forward has no past_key_values/cache argument)")
    ids = torch.empty((batch, cached_tokens), dtype=torch.int64, device="meta")
    with torch.no_grad(), GroupedMMAnyDtype(), grouped_experts(model):
        out = model(input_ids=ids, use_cache=True)
    # Read back under the name the forward takes (the old name warns in recent transformers).
    cache = out.get(argument) if hasattr(out, "get") else getattr(out, argument, None)
    length = getattr(cache, "get_seq_length", None)
    if cache is None or length is None or int(length()) != cached_tokens:
        raise ModelError(
            f"{label} returned no KV cache for use_cache=True (an encoder, or a decoder built without "
            "cache support: check its config's is_decoder/use_cache)"
        )
    return cache


@dataclass
class DecodeStep:
    """One counted forward: ``new_tokens`` per sequence against ``cached_tokens`` in the cache."""

    cached_tokens: int
    new_tokens: int
    breakdown: dict[str, int]

    @property
    def flops(self) -> int:
        return sum(self.breakdown.values())


@dataclass
class Generation:
    """A prefill of ``prompt_tokens`` and ``steps`` decode steps (batch ``batch``): FLOPs by category
    of each phase, the decode steps evaluated, and per-token figures."""

    batch: int
    prompt_tokens: int
    steps: int
    prefill: dict[str, int]
    decode: dict[str, int]  # the sum over all decode steps
    first_step: DecodeStep
    last_step: DecodeStep
    evaluated: list[int] = field(default_factory=list)  # cache lengths actually counted

    @property
    def total(self) -> dict[str, int]:
        return formulas.add_breakdowns(self.prefill, self.decode)

    def per_token(self, part: str = "total") -> float:
        """FLOPs per token (per sequence) of ``part``: ``prefill`` (per prompt token), ``decode``
        (per generated token) or ``total`` (per token, prompt and generated)."""
        flops = sum(getattr(self, part).values())
        tokens = {
            "prefill": self.prompt_tokens,
            "decode": self.steps,
            "total": self.prompt_tokens + self.steps,
        }
        return flops / (self.batch * tokens[part])

    def to_dict(self) -> dict[str, Any]:
        def row(name: str, tokens: int, cached: str, breakdown: dict[str, int]) -> dict[str, Any]:
            flops = sum(breakdown.values())
            return {
                "phase": name,
                "tokens": tokens,
                "cached_tokens": cached,
                "breakdown": dict(breakdown),
                "flops": flops,
                "flops_per_token": flops / (self.batch * tokens),
            }

        first, last = self.first_step, self.last_step
        return {
            "batch": self.batch,
            "prompt_tokens": self.prompt_tokens,
            "decode_steps": self.steps,
            "rows": [
                row("prefill", self.prompt_tokens, "0", self.prefill),
                row("decode step 1", 1, str(first.cached_tokens), first.breakdown),
                row(f"decode step {self.steps}", 1, str(last.cached_tokens), last.breakdown),
                row(
                    f"decode ({self.steps} steps)",
                    self.steps,
                    f"{first.cached_tokens}..{last.cached_tokens}",
                    self.decode,
                ),
                row("total", self.prompt_tokens + self.steps, "", self.total),
            ],  # fmt: skip
            "total_flops": sum(self.total.values()),
            "evaluated_cache_lengths": list(self.evaluated),
        }


def sum_over_cache_lengths(
    step: Callable[[int], dict[str, int]], first: int, last: int
) -> tuple[dict[str, int], dict[int, dict[str, int]]]:
    """``sum(step(L) for L in first..last)`` by category, and ``step``'s value at each length it was
    called at, for ``step`` concave and piecewise linear in ``L`` per category (a decode step's
    FLOPs: attention over ``min(L + 1, window)`` keys): a range whose ends lie on the line through
    its first two points is linear (a concave function cannot leave a line it meets at both ends)
    and is summed in closed form; other ranges are halved. A non-concave ``step`` (a chunked
    attention's sawtooth) breaks the assumption."""
    memo: dict[int, dict[str, int]] = {}

    def at(n: int) -> dict[str, int]:
        if n not in memo:
            memo[n] = step(n)
        return memo[n]

    def total(a: int, b: int) -> dict[str, int]:
        fa = at(a)
        if a == b:
            return dict(fa)
        fa1, fb, n = at(a + 1), at(b), b - a
        slope = {c: fa1[c] - fa[c] for c in fa}
        if all(fb[c] - fa[c] == n * slope[c] for c in fa):
            return {c: (n + 1) * fa[c] + slope[c] * n * (n + 1) // 2 for c in fa}
        mid = (a + b) // 2
        return formulas.add_breakdowns(total(a, mid), total(mid + 1, b))

    return total(first, last), dict(sorted(memo.items()))


def count_generation(
    model: nn.Module,
    prompt_tokens: int,
    steps: int,
    *,
    batch: int = 1,
    causal: str = "exact",
    count: Callable[[nn.Module, tuple, dict, str], dict[str, int]] | None = None,
    label: str = "the model",
) -> Generation:
    """FLOPs of generating with ``model`` (meta device): a prefill of ``prompt_tokens`` tokens, then
    ``steps`` decode steps, step ``k`` feeding one token against ``prompt_tokens + k`` cached.

    ``count(model, args, kwargs, causal)`` returns one forward's FLOPs by category (default: the
    whole model's measured count, :func:`~flopkit.flops.mixed.mixed_rows`' first row).
    """
    if prompt_tokens < 1:
        raise ValueError(f"prompt_tokens must be at least 1, got {prompt_tokens}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1 (decode steps), got {steps}")
    if batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch}")
    if count is None:
        count = _whole_model_count
    argument = cache_argument(model)
    if argument is None:
        from flopkit.models import ModelError

        raise ModelError(f"{label} takes no KV cache (its forward has no past_key_values/cache argument)")
    ids = torch.empty((batch, prompt_tokens), dtype=torch.int64, device="meta")
    prefill = count(model, (), {"input_ids": ids}, causal)

    def step(cached: int) -> dict[str, int]:
        cache = build_kv_cache(model, batch, cached, label)
        new = torch.empty((batch, 1), dtype=torch.int64, device="meta")
        return count(model, (), {"input_ids": new, argument: cache}, causal)

    first, last = prompt_tokens, prompt_tokens + steps - 1
    decode, evaluated = sum_over_cache_lengths(step, first, last)
    return Generation(
        batch, prompt_tokens, steps, prefill, decode,
        DecodeStep(first, 1, evaluated[first]), DecodeStep(last, 1, evaluated[last]), list(evaluated),
    )  # fmt: skip


def _whole_model_count(model: nn.Module, args: tuple, kwargs: dict, causal: str) -> dict[str, int]:
    from .mixed import mixed_rows

    rows, _ = mixed_rows(model, (args, kwargs), "flopkit", 0, False, causal)
    return dict(rows[0].breakdown)


# ------------------------------------------------------------------------------ mixture of experts


@dataclass
class MoEParameters:
    """Total and active parameters of a model with routed experts (active: the non-expert weights,
    shared experts included, plus ``top_k / num_experts`` of each routed-expert group)."""

    total: int
    active: int
    groups: list[dict[str, Any]] = field(default_factory=list)  # path, experts, top_k, params

    def to_dict(self) -> dict[str, Any]:
        return {"total_params": self.total, "active_params": self.active, "expert_groups": self.groups}


def _top_k(path: str, modules: dict[str, nn.Module], config: Any) -> int | None:
    parts = path.split(".")
    for i in range(len(parts), -1, -1):
        module = modules.get(".".join(parts[:i]))
        for attr in ("top_k", "num_experts_per_tok"):
            value = getattr(module, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    value = getattr(config, "num_experts_per_tok", None)
    return value if isinstance(value, int) and value > 0 else None


def moe_parameters(model: nn.Module) -> MoEParameters | None:
    """Routed-expert groups of ``model`` and its total and active parameters, or None when it has
    none. A group is a module holding ``num_experts`` experts as stacked tensors (``[E, out, in]``
    weights and their ``[E, out]`` biases: Hugging Face's fused experts) or as an ``nn.ModuleList``
    named ``experts``; ``top_k`` comes from the module or its parents (``top_k``,
    ``num_experts_per_tok``) or the model's config."""
    modules = dict(model.named_modules())
    config = getattr(model, "config", None)
    total = sum(p.numel() for p in model.parameters())
    groups = []
    claimed: set[str] = set()
    for path, module in modules.items():
        if any(path == c or path.startswith(c + ".") for c in claimed) or "shared" in path.rsplit(".", 1)[-1]:
            continue
        experts = getattr(module, "num_experts", None)
        params = 0
        if isinstance(experts, int) and experts > 1:
            own = list(module.parameters(recurse=False))
            # Stacked expert weights are [E, out, in]; a router's [E, hidden] weight is not an expert.
            if any(p.dim() >= 3 and p.shape[0] == experts for p in own):
                params = sum(p.numel() for p in own if p.dim() >= 2 and p.shape[0] == experts)
        elif isinstance(module, nn.ModuleList) and path.rsplit(".", 1)[-1] == "experts" and len(module) > 1:
            experts = len(module)
            params = sum(p.numel() for p in module.parameters())
        if not params:
            continue
        top_k = _top_k(path, modules, config)
        if top_k is None:
            continue
        claimed.add(path)
        groups.append({"path": path, "experts": experts, "top_k": top_k, "params": params})
    if not groups:
        return None
    inactive = sum(g["params"] - g["params"] // g["experts"] * g["top_k"] for g in groups)
    return MoEParameters(total, total - inactive, groups)


# ------------------------------------------------------------------------------ hardware FLOPs


def checkpoint_blocks(model: nn.Module) -> list[str]:
    """The paths of the blocks activation checkpointing recomputes: the entries of the top-most
    ``nn.ModuleList`` (or ``nn.Sequential``) whose entries all share one class (the repeated
    layers: a transformer's ``layers.0`` ... ``layers.N``)."""
    blocks: list[str] = []
    for path, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 1:
            continue
        if any(path.startswith(b.rsplit(".", 1)[0] + ".") for b in blocks):
            continue
        if len({type(m) for m in module}) == 1 and any(True for _ in module[0].parameters()):
            prefix = f"{path}." if path else ""
            blocks += [f"{prefix}{name}" for name, _ in module.named_children()]
    return blocks


def hardware_flops(
    total: dict[str, int], attention_extra: int = 0, recomputed_forward: dict[str, int] | None = None
) -> int:
    """Hardware FLOPs of a row: matmul and attention of ``total`` (a training step's forward and
    backward, or a forward), plus ``attention_extra`` (the flash-attention backward's recompute of
    QK^T, :data:`flopkit.formulas.HARDWARE_ATTENTION_BACKWARD`) and, under activation checkpointing,
    the matmul and attention of ``recomputed_forward``, run a second time in the backward."""
    recompute = sum((recomputed_forward or {}).get(c, 0) for c in HARDWARE_CATEGORIES)
    return sum(total.get(c, 0) for c in HARDWARE_CATEGORIES) + attention_extra + recompute
