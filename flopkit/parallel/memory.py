"""Per-rank memory of a sharded step: :func:`flopkit.memory` (the step replayed with CUDA's
semantics) run on what one rank holds.

* FSDP over ``fsdp`` ranks: the memory estimator's own ``fsdp`` (parameters, gradients and optimizer
  state at ``ceil(dim0 / fsdp)`` rows, each unit's unsharded parameters while it runs).
* TP over ``tp`` ranks: the replay runs :func:`~.plan.tp_local_model`, the model with one rank's layer
  shapes (colwise outputs and rowwise inputs split by the plan), so parameters, gradients, optimizer
  state and the activations inside the split layers are one rank's; the activations outside them
  (norms, residual stream, layers outside the plan) are whole, as on every TP rank.
* HSDP (``dp_replicate`` replicas of the FSDP group): the replicas hold the same per-rank shards, so
  per-rank memory is the FSDP group's.

Not included: TP's and FSDP's communication buffers beyond the unsharded parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from .plan import TensorParallelPlan, resolve_tp_plan, tp_local_model

__all__ = ["tp_rank_model", "rank_memory", "rank_fit_batch"]


def _check_degrees(tp: int, fsdp: int, dp_replicate: int, tp_plan: str | None) -> None:
    for name, value in (("tp", tp), ("fsdp", fsdp), ("dp_replicate", dp_replicate)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if tp_plan is not None and tp == 1:
        raise ValueError("tp_plan applies with tp > 1, got tp=1")


def tp_rank_model(model: Any, tp: int, tp_plan: str | None = None) -> tuple[Any, TensorParallelPlan | None]:
    """``model`` (a :class:`~flopkit.models.LoadedModel` or a meta-device module) with one TP rank's
    layer shapes, and the plan that gave them (``model`` itself and None for ``tp=1``)."""
    from flopkit.models import LoadedModel

    if tp == 1:
        return model, None
    module = model.module if isinstance(model, LoadedModel) else model
    if not isinstance(module, nn.Module):
        raise TypeError(f"model must be a LoadedModel or an nn.Module, got {type(model).__name__}")
    plan = resolve_tp_plan(module, tp_plan)
    local = tp_local_model(module, plan, tp)
    if isinstance(model, LoadedModel):
        return dataclasses.replace(model, module=local), plan
    return local, plan


def _notes(tp: int, fsdp: int, dp_replicate: int, plan: TensorParallelPlan | None) -> list[str]:
    notes = []
    if plan is not None:
        notes.append(
            f"TP over {tp} ranks ({plan.source}, {len(plan.styles)} layers): the replay runs one rank's layer "
            "shapes (colwise outputs and rowwise inputs / tp; activations outside the split layers whole, as "
            "on every TP rank); TP's all-reduce buffers not included"
        )
    if dp_replicate > 1:
        notes.append(
            f"HSDP: {dp_replicate} replicas of the FSDP group over {fsdp} ranks hold the same shards; per-rank "
            f"memory is the FSDP group's (world {dp_replicate * fsdp * tp})"
        )
    return notes


def rank_memory(
    model: Any,
    *,
    tp: int = 1,
    fsdp: int = 1,
    dp_replicate: int = 1,
    tp_plan: str | None = None,
    **options: Any,
):
    """:func:`flopkit.memory` of one rank of ``model`` sharded ``dp_replicate x fsdp x tp`` (see the
    module docstring); ``options`` are :func:`flopkit.memory`'s (``batch`` per rank, ``training``,
    ``autocast``, ...). Returns its ``MemoryResult``, with ``tp`` and ``dp_replicate`` in ``settings``
    and the rule in ``assumptions``."""
    from flopkit.step_memory import memory

    _check_degrees(tp, fsdp, dp_replicate, tp_plan)
    target, plan = tp_rank_model(model, tp, tp_plan)
    result = memory(target, fsdp=fsdp, **options)
    result.settings.update({"tp": tp, "dp_replicate": dp_replicate})
    result.assumptions.extend(_notes(tp, fsdp, dp_replicate, plan))
    return result


def rank_fit_batch(
    model: Any,
    budget: int | str,
    *,
    tp: int = 1,
    fsdp: int = 1,
    dp_replicate: int = 1,
    tp_plan: str | None = None,
    **options: Any,
):
    """:func:`flopkit.fit_batch` for one rank of the sharded step (the largest per-rank batch)."""
    from flopkit.step_memory import fit_batch

    _check_degrees(tp, fsdp, dp_replicate, tp_plan)
    target, plan = tp_rank_model(model, tp, tp_plan)
    found = fit_batch(target, budget, fsdp=fsdp, **options)
    found.result.settings.update({"tp": tp, "dp_replicate": dp_replicate})
    found.result.assumptions.extend(_notes(tp, fsdp, dp_replicate, plan))
    return found
