"""What a sharded training run is: the degrees (FSDP, TP, HSDP replicas), the tensor-parallel plan and
the FSDP units, all checked against the model before anything runs.

* :class:`ParallelConfig`: ``fsdp`` ranks share the parameters (FSDP2's shard dimension),
  ``dp_replicate`` groups of them hold replicas (HSDP), ``tp`` ranks split each matmul;
  ``world = dp_replicate * fsdp * tp``.
* The TP plan, module path -> ``"colwise"`` or ``"rowwise"``, comes from, in this order: a plan
  file (YAML/JSON mapping of module path globs), the model's own (a Hugging Face config's
  ``base_model_tp_plan``), flopkit's for ViT-5 modules (:func:`vit5_tp_plan`). A ``*`` in a glob
  matches one path component (``layers.*.mlp.up_proj``), as in Hugging Face's plans.
* FSDP units (:func:`fsdp_units`): one ``fully_shard`` per repeated block, then the root. The blocks
  are the modules whose class a Hugging Face model names in ``_no_split_modules``; otherwise the
  children of the largest ``ModuleList``/``Sequential`` whose children share one class.

Every check raises ``ValueError`` naming the argument, the value and the limit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

__all__ = [
    "TP_STYLES",
    "ParallelConfig",
    "TensorParallelPlan",
    "glob_to_regex",
    "expand_plan",
    "load_plan_file",
    "vit5_tp_plan",
    "resolve_tp_plan",
    "check_tp_divides",
    "fsdp_units",
    "tp_local_model",
]

TP_STYLES: tuple[str, ...] = ("colwise", "rowwise")
"""Styles a plan may name: torch's ``ColwiseParallel`` (weight rows split, input replicated, output
sharded on the last dim) and ``RowwiseParallel`` (weight columns split, input sharded on the last
dim, output all-reduced to replicated)."""

# flopkit's own style for a fused q/k/v projection: colwise, each of q, k and v split by heads.
FUSED_QKV = "colwise_qkv"


@dataclass(frozen=True)
class ParallelConfig:
    """Degrees of a sharded run; every rank runs ``batch`` samples (the per-rank micro-batch).

    ``world = dp_replicate * fsdp * tp``; the global batch is ``batch * dp_replicate * fsdp``.
    """

    fsdp: int = 1
    tp: int = 1
    dp_replicate: int = 1
    batch: int = 1

    def __post_init__(self) -> None:
        for name in ("fsdp", "tp", "dp_replicate", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.world == 1:
            raise ValueError(
                "fsdp, tp and dp_replicate are all 1: a sharded run needs a world of at least 2 ranks"
            )

    @property
    def world(self) -> int:
        """Ranks in the run: ``dp_replicate * fsdp * tp``."""
        return self.dp_replicate * self.fsdp * self.tp

    @property
    def data_parallel(self) -> int:
        """Ranks that see different samples: ``dp_replicate * fsdp``."""
        return self.dp_replicate * self.fsdp

    @property
    def global_batch(self) -> int:
        return self.batch * self.data_parallel

    def describe(self) -> str:
        """``"world 8 = dp_replicate 1 x fsdp 4 x tp 2"``."""
        return f"world {self.world} = dp_replicate {self.dp_replicate} x fsdp {self.fsdp} x tp {self.tp}"

    def to_dict(self) -> dict[str, int]:
        return {
            "world": self.world,
            "dp_replicate": self.dp_replicate,
            "fsdp": self.fsdp,
            "tp": self.tp,
            "batch_per_rank": self.batch,
            "global_batch": self.global_batch,
        }


@dataclass(frozen=True)
class TensorParallelPlan:
    """Module path -> style (one of :data:`TP_STYLES`, or the fused q/k/v style of
    :func:`vit5_tp_plan`), and where the plan came from."""

    styles: dict[str, str]
    source: str  # "file plan.yaml", "the model's base_model_tp_plan", "flopkit's ViT-5 plan"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "styles": dict(self.styles)}


def glob_to_regex(glob: str) -> re.Pattern[str]:
    """A module path glob as a regex: ``*`` matches one path component (no dot), all else literally."""
    parts = (re.escape(p) for p in glob.split("*"))
    return re.compile("[^.]+".join(parts) + r"\Z")


def expand_plan(model: nn.Module, globs: Mapping[str, str], source: str) -> dict[str, str]:
    """``{glob: style}`` -> ``{module path: style}`` over ``model``'s modules.

    Raises ValueError for a glob that matches no module (with close paths), a style not in
    :data:`TP_STYLES`, or a matched module that is not an ``nn.Linear`` or ``nn.Embedding``.
    """
    from flopkit.models import close_names

    modules = dict(model.named_modules())
    out: dict[str, str] = {}
    for glob, style in globs.items():
        if style not in TP_STYLES and style != FUSED_QKV:
            raise ValueError(
                f"tp_plan ({source}): {glob!r} has style {style!r}; flopkit applies {', '.join(TP_STYLES)}"
            )
        pattern = glob_to_regex(glob)
        hits = [path for path in modules if path and pattern.match(path)]
        if not hits:
            near = close_names(glob, [p for p in modules if p])
            hint = f" (closest: {', '.join(near)})" if near else ""
            raise ValueError(f"tp_plan ({source}): {glob!r} matches no module of the model{hint}")
        for path in hits:
            if not isinstance(modules[path], (nn.Linear, nn.Embedding)):
                raise ValueError(
                    f"tp_plan ({source}): {path} is a {type(modules[path]).__name__}; colwise and rowwise "
                    "split an nn.Linear or nn.Embedding"
                )
            out[path] = style
    return out


def load_plan_file(path: str | Path) -> dict[str, str]:
    """A plan file (YAML or JSON): a mapping of module path glob -> ``colwise`` | ``rowwise``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"tp_plan: no such file {str(path)!r}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"tp_plan {path}: not valid YAML/JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"tp_plan {path}: expected a mapping of module path -> colwise|rowwise")
    bad = [(k, v) for k, v in data.items() if not isinstance(k, str) or v not in TP_STYLES]
    if bad:
        key, value = bad[0]
        raise ValueError(
            f"tp_plan {path}: {key!r}: {value!r} is not one of {', '.join(TP_STYLES)} (a module path -> style)"
        )
    return data


def vit5_tp_plan(model: nn.Module) -> dict[str, str]:
    """flopkit's plan for every ViT-5 attention and MLP in ``model`` (Megatron's layout):
    ``attn.qkv`` colwise with q, k and v each split by heads, ``attn.proj`` rowwise, ``mlp.fc1``
    colwise, ``mlp.fc2`` rowwise. Empty when the model has none."""
    from flopkit.nn import Mlp, ViT5Attention

    plan: dict[str, str] = {}
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        if isinstance(module, ViT5Attention):
            plan[prefix + "qkv"] = FUSED_QKV
            plan[prefix + "proj"] = "rowwise"
        elif isinstance(module, Mlp):
            plan[prefix + "fc1"] = "colwise"
            plan[prefix + "fc2"] = "rowwise"
    return plan


def resolve_tp_plan(model: nn.Module, plan_file: str | Path | None = None) -> TensorParallelPlan:
    """The TP plan for ``model``: ``plan_file`` if given, else the Hugging Face config's
    ``base_model_tp_plan``, else flopkit's ViT-5 plan; ValueError when there is none."""
    if plan_file is not None:
        source = f"file {plan_file}"
        return TensorParallelPlan(expand_plan(model, load_plan_file(plan_file), source), source)
    hf_plan = getattr(getattr(model, "config", None), "base_model_tp_plan", None)
    if hf_plan:
        source = "the model's base_model_tp_plan"
        unsupported = {k: v for k, v in hf_plan.items() if v not in TP_STYLES}
        if unsupported:
            key, style = next(iter(unsupported.items()))
            raise ValueError(
                f"tp: {source} gives {key!r} the style {style!r}, which flopkit does not apply (it applies "
                f"{', '.join(TP_STYLES)}); give a plan file (tp_plan) instead"
            )
        return TensorParallelPlan(expand_plan(model, hf_plan, source), source)
    styles = vit5_tp_plan(model)
    if styles:
        return TensorParallelPlan(styles, "flopkit's ViT-5 plan")
    raise ValueError(
        f"tp: {type(model).__name__} defines no tensor-parallel plan (no base_model_tp_plan, no ViT-5 "
        "modules); give a plan file (tp_plan) mapping module paths to colwise|rowwise"
    )


def _split_dim(module: nn.Module, style: str) -> tuple[str, int]:
    """The dimension a style splits: (its name, its size)."""
    if isinstance(module, nn.Embedding):
        return (
            ("embedding_dim", module.embedding_dim)
            if style != "rowwise"
            else (
                "num_embeddings",
                module.num_embeddings,
            )
        )
    if style == "rowwise":
        return "in_features", module.in_features
    return "out_features", module.out_features


def check_tp_divides(model: nn.Module, plan: TensorParallelPlan, tp: int) -> None:
    """ValueError unless ``tp`` divides every attention's heads, the hidden size and every split
    dimension of the plan's modules."""
    from flopkit.nn import HeadNorm, ViT5Attention

    config = getattr(model, "config", None)
    for field in ("num_attention_heads", "num_key_value_heads", "hidden_size"):
        value = getattr(config, field, None)
        if isinstance(value, int) and value % tp:
            raise ValueError(f"tp={tp} must divide the model's {field} ({value})")
    for path, module in model.named_modules():
        if isinstance(module, ViT5Attention):
            for field, value in (("num_heads", module.num_heads), ("hidden_dim", module.hidden_dim)):
                if value % tp:
                    raise ValueError(f"tp={tp} must divide {field} ({value}) of {path or 'the model'}")
            if isinstance(getattr(module, "q_norm", None), HeadNorm):
                raise ValueError(
                    f"tp={tp}: {path or 'the model'} has per-head QK-norm weights (HeadNorm), which flopkit's "
                    "ViT-5 plan does not split; use qk_norm='rmsnorm' or tp=1"
                )
    modules = dict(model.named_modules())
    for path, style in plan.styles.items():
        field, size = _split_dim(modules[path], style)
        if size % tp:
            raise ValueError(f"tp={tp} must divide {field} ({size}) of {path}, split {style} by the plan")


def fsdp_units(model: nn.Module) -> list[str]:
    """Module paths that get their own ``fully_shard`` before the root: the repeated blocks (see the
    module docstring). Empty when the model has none (the root is then the only unit)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    if names:
        paths = [p for p, m in model.named_modules() if p and type(m).__name__ in names]
        # Outermost only: a block class nested in another block is sharded with it.
        paths = [p for p in paths if not any(p.startswith(q + ".") for q in paths)]
        if paths:
            return paths
    best: list[str] = []
    best_params = -1
    for path, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 2:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1:
            continue
        params = sum(p.numel() for p in module.parameters())
        if params > best_params:
            prefix = f"{path}." if path else ""
            best, best_params = [f"{prefix}{name}" for name, _ in module.named_children()], params
    return best


def tp_local_model(model: nn.Module, plan: TensorParallelPlan, tp: int) -> nn.Module:
    """A copy of ``model`` (meta device) whose planned layers have one TP rank's shapes: a colwise
    ``Linear(i, o)`` becomes ``Linear(i, o / tp)``, a rowwise one ``Linear(i / tp, o)`` (its bias
    whole, as ``RowwiseParallel`` keeps it replicated); an ``Embedding(n, d)`` becomes ``(n, d / tp)``
    colwise and ``(n / tp, d)`` rowwise. Running it gives the shapes, and so the activations, one rank
    holds (a rowwise layer's output is the partial sum, the all-reduced tensor's shape). Checks
    ``tp`` first (:func:`check_tp_divides`)."""
    import copy

    import torch

    check_tp_divides(model, plan, tp)
    local = copy.deepcopy(model)
    modules = dict(local.named_modules())
    for path, style in plan.styles.items():
        module = modules[path]
        parent_path, _, name = path.rpartition(".")
        parent = modules[parent_path]
        weight = next(module.parameters())
        with torch.device(weight.device):
            if isinstance(module, nn.Embedding):
                n, d = module.num_embeddings, module.embedding_dim
                shape = (n, d // tp) if style != "rowwise" else (n // tp, d)
                new = nn.Embedding(*shape, dtype=weight.dtype)
            else:
                i, o = module.in_features, module.out_features
                i, o = (i // tp, o) if style == "rowwise" else (i, o // tp)
                # Keep a Linear subclass (ViT-5's ScalableLinear fc2) that takes Linear's arguments.
                cls = type(module) if type(module).__init__ is nn.Linear.__init__ else nn.Linear
                new = cls(i, o, bias=module.bias is not None, dtype=weight.dtype)
        new.train(module.training)
        setattr(parent, name, new)
    return local
