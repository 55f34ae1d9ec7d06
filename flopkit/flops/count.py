"""``flopkit.count``: the FLOPs of a preset, a config file, a model spec or any ``nn.Module``, as one
result object that ``report``, ``validate`` and ``profile`` all read.

One pipeline, whatever the model:

* a preset name or a YAML/JSON config file (or a flopkit module such as :class:`~flopkit.nn.ViT5`
  given without inputs) is counted analytically: each module's own ``flop_count`` over the tree,
  times the batch (:func:`~flopkit.flops.analytic.flop_rows`);
* a model spec (``timm:resnet50``, ``hf:gpt2``, ``package.module:callable``, ``file.py:callable``)
  or any other ``nn.Module`` runs once on the meta device under torch's ``FlopCounterMode`` with
  flopkit's formulas, flopkit sub-modules swapped in analytically
  (:func:`~flopkit.flops.mixed.mixed_rows`).

:class:`FlopCount` holds the per-module rows (``rows[0]`` is the whole model), the legend that
names every rule applied (convention, causal pairs, routing, what is not counted), and the
measured run behind them. Its accessors follow fvcore's ``FlopCountAnalysis``: :meth:`~FlopCount.total`,
:meth:`~FlopCount.by_module`, :meth:`~FlopCount.by_category`, :meth:`~FlopCount.by_operator`,
:meth:`~FlopCount.unsupported_ops`, plus :meth:`~FlopCount.to_rows` and :meth:`~FlopCount.to_json`.

:func:`count_sweep` counts one model at several sequence lengths and :func:`count_generation` a
prefill plus decode steps against the model's own KV cache.

The conventions behind every number are in docs/conventions.md.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flopkit import formulas
from flopkit.checks import InputError, check_seq_len, is_int
from flopkit.formulas import CATEGORIES, check_convention

from .analytic import FlopRow, depth_of, is_analytic
from .llm import CHECKPOINTING

__all__ = [
    "ModelLike",
    "InputsLike",
    "FlopCount",
    "count",
    "FlopSweep",
    "count_sweep",
    "GenerationCount",
    "count_generation",
    "load",
]

ModelLike = nn.Module | str | os.PathLike
"""What :func:`count` takes: an ``nn.Module``, a preset name, a YAML/JSON config path, or a model
spec (``timm:NAME``, ``hf:MODEL_TYPE``, ``package.module:callable``, ``file.py:callable``)."""

InputsLike = torch.Tensor | tuple | Mapping | Any
"""A model's inputs: one tensor, a tuple of positional tensors, a mapping of keyword tensors, or a
:class:`~flopkit.models.ModelInputs` (positional and keyword)."""


# ------------------------------------------------------------------------------------------------
# The result


@dataclass
class FlopCount:
    """FLOPs of one forward (or training step) of one model, per module and category.

    ``rows`` (``rows[0]`` is the whole model) are :class:`~flopkit.flops.analytic.FlopRow` in
    ``named_modules`` order down to the requested depth; each row's ``breakdown`` is FLOPs by
    category (:data:`flopkit.formulas.CATEGORIES`), forward plus backward with ``training``.
    ``legend`` names every rule the numbers follow. ``info`` is what the count was given (the config,
    or the spec, its arguments and inputs); ``details`` what the measured run found (attention rules,
    mixture-of-experts parameters, ops without a formula). ``measured`` is true when the rows come
    from a measured run (each row then has a ``source``: ``analytic``, ``measured`` or both).
    """

    rows: list[FlopRow]
    legend: list[str]
    convention: str
    batch: int
    training: bool
    label: str
    info: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    measured: bool = False
    measurement: Any = None  # the ModelCount behind measured rows (None for an analytic count)
    _measure: Callable[[], Any] | None = field(default=None, repr=False)
    _shapes: Callable[[], dict] | None = field(default=None, repr=False)

    # -- fvcore-style accessors ----------------------------------------------------------------

    def total(self, path: str = "") -> int:
        """FLOPs of the module at ``path`` (``""``: the whole model), descendants included."""
        return self._row(path).flops

    def by_module(self, depth: int | None = None) -> dict[str, int]:
        """``{path: FLOPs}`` for every row (``""`` is the whole model), down to ``depth`` levels."""
        return {r.path: r.flops for r in self.rows if depth is None or depth_of(r.path) <= depth}

    def by_category(self, path: str = "") -> dict[str, int]:
        """``{category: FLOPs}`` of the module at ``path`` (every category, zeros included)."""
        return {c: self._row(path).breakdown.get(c, 0) for c in CATEGORIES}

    def by_operator(self, path: str = "") -> dict[str, int]:
        """``{op: FLOPs}`` of the forward at ``path``, as the measured run counted it (FlopCounterMode
        on the meta device with flopkit's formulas; aten op names, ``flopkit.*`` for flopkit's ops).

        For an analytic count this runs the model once on the meta device the first time it is
        asked; under the ``nvsubquadratic`` convention or with ``training`` its sum differs from
        :meth:`total` (the operators are the forward as it runs, in flopkit's convention). With
        ``causal_attention="half"`` or ``"exact"`` the pairs the rule drops are one negative entry,
        ``flopkit.measured.causal_masked``, beside the ``bmm`` that counted all of them."""
        measurement = self._measurement()
        if path not in measurement.raw and all(r.path != path for r in self.rows):
            raise KeyError(f"path {path!r} is not a module of {self.label}")
        return {op: int(v) for op, v in sorted(measurement.raw.get(path, Counter()).items()) if v}

    def unsupported_ops(self) -> dict[str, int]:
        """``{op: calls}`` of the ops the forward ran that have no FLOP formula (counted as zero).
        Plain pointwise arithmetic that flopkit's convention leaves out is not listed
        (``details["convention_uncounted_ops"]``)."""
        return dict(sorted(self._measurement().uncounted.items()))

    # -- totals kept under their older names ---------------------------------------------------

    @property
    def total_flops(self) -> int:
        return self.rows[0].flops

    @property
    def total_params(self) -> int:
        return self.rows[0].params

    @property
    def hardware_flops(self) -> int | None:
        """matmul + attention as CUDA kernels run them (:func:`~flopkit.flops.llm.hardware_flops`)."""
        return self.rows[0].hardware_flops

    # -- export --------------------------------------------------------------------------------

    def attach_shapes(self) -> FlopCount:
        """Give each row the input and output shapes, dtypes and bytes of its module's first call
        (``row.shapes``). A measured count has them already; an analytic one runs the model once on
        the meta device the first time. Returns ``self``."""
        if self._shapes is not None and any(r.shapes is None for r in self.rows):
            shapes = self._shapes()
            for row in self.rows:
                row.shapes = shapes.get(row.path)
            self._shapes = None
        return self

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per row (:meth:`FlopRow.to_dict`, shapes included); an analytic count's rows
        carry no ``source``."""
        self.attach_shapes()
        rows = [r.to_dict() for r in self.rows]
        if not self.measured:
            rows = [{k: v for k, v in r.items() if k != "source"} for r in rows]
        return rows

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain data: what was counted (``info``), the totals, ``rows`` and ``legend``."""
        head = {**self.info}
        if not self.measured:
            head.update(convention=self.convention, batch=self.batch, training=self.training)
        return {
            **head,
            "total_flops": self.total_flops,
            "hardware_flops": self.hardware_flops,
            "total_params": self.total_params,
            **self.details,
            "rows": self.to_rows(),
            "legend": list(self.legend),
        }

    def to_table(self, fmt: str = "table") -> str:
        """The per-module rows as ``report`` prints them (``fmt``: ``table``, ``markdown`` or ``csv``),
        the whole model last, with the legend below."""
        from flopkit.report import render_flop_rows

        title = f"{self.label}: {self.total_flops:,} FLOPs, {self.total_params:,} parameters"
        return render_flop_rows(self.rows, fmt, title, self.legend, source=self.measured)

    def to_json(self, indent: int = 2) -> str:
        """:meth:`to_dict` as JSON."""
        import json

        return json.dumps(self.to_dict(), indent=indent)

    # -- internals -----------------------------------------------------------------------------

    def _row(self, path: str) -> FlopRow:
        for row in self.rows:
            if row.path == path:
                return row
        raise KeyError(f"path {path!r} is not among the counted modules of {self.label} (depth-limited?)")

    def _measurement(self):
        if self.measurement is None:
            if self._measure is None:
                raise ValueError(f"{self.label}: no measured run to read operators from")
            self.measurement = self._measure()
        return self.measurement


# ------------------------------------------------------------------------------------------------
# Loading


def _is_spec(text: str) -> bool:
    """A model spec (``kind:target``) rather than a preset name or a config file."""
    if os.path.exists(text):
        return False
    head, sep, _ = text.partition(":")
    return bool(sep) and bool(head)


def load(
    model: ModelLike,
    *,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    model_args: Mapping[str, Any] | None = None,
):
    """``model`` as a :class:`~flopkit.models.LoadedModel` on the meta device: a preset or config
    file (with ``overrides``), a spec (with ``model_args``), or an ``nn.Module`` (a meta copy that
    shares no storage with it: its weights are never touched)."""
    from flopkit.models import LoadedModel, load_model

    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        if overrides or model_args:
            what = "overrides" if overrides else "model_args"
            raise InputError(
                what,
                dict(overrides or model_args),
                "applies to a preset, config or spec, not to an nn.Module",
            )
        return LoadedModel(label=type(model).__name__, module=meta_copy(model))
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str):
        raise TypeError(
            f"model must be an nn.Module, a preset, a config path or a model spec, got {type(model).__name__}"
        )
    if _is_spec(model):
        return load_model(model=model, model_args=model_args, overrides=overrides)
    return load_model(model, overrides, model_args=model_args)


def meta_copy(model: nn.Module) -> nn.Module:
    """``model`` on the meta device: itself when it is already there, else a deep copy whose
    parameters and buffers are meta tensors of the same shapes and dtypes (no weight is copied)."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "meta" for t in tensors):
        return model
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def _as_inputs(inputs: InputsLike):
    """``inputs`` as :class:`~flopkit.models.ModelInputs` of meta tensors (values are not kept:
    give a padding mask's values as ``padding_mask``)."""
    from flopkit.models import ModelInputs

    def meta(t):
        return torch.empty_like(t, device="meta") if isinstance(t, torch.Tensor) else t

    if isinstance(inputs, ModelInputs):
        return ModelInputs(
            tuple(map(meta, inputs.args)), {k: meta(v) for k, v in inputs.kwargs.items()}, inputs.origin
        )
    if isinstance(inputs, torch.Tensor):
        return ModelInputs((meta(inputs),), {}, "given inputs")
    if isinstance(inputs, Mapping):
        return ModelInputs((), {k: meta(v) for k, v in inputs.items()}, "given inputs")
    if isinstance(inputs, (tuple, list)):
        return ModelInputs(tuple(map(meta, inputs)), {}, "given inputs")
    raise InputError(
        "inputs",
        type(inputs).__name__,
        "expected a tensor, a tuple of tensors, a mapping of keyword tensors or ModelInputs",
    )


# ------------------------------------------------------------------------------------------------
# count


def count(
    model: ModelLike,
    inputs: InputsLike | None = None,
    *,
    batch: int = 1,
    input_shape: Sequence[int] | None = None,
    seq_len: int | None = None,
    named_inputs: Sequence[tuple[str, tuple[int, ...], torch.dtype]] = (),
    overrides: Mapping[str, Any] | Sequence[str] = (),
    model_args: Mapping[str, Any] | None = None,
    training: bool = False,
    convention: str = "flopkit",
    causal_attention: str = "full",
    depth: int | None = None,
    checkpointing: str = "none",
    kv_cache: int | None = None,
    padding_mask: torch.Tensor | None = None,
) -> FlopCount:
    """FLOPs of ``model`` per module and category, as a :class:`FlopCount`.

    Args:
        model: a preset (``"vit5-small"``), a YAML/JSON config path, a model spec (``"timm:resnet50"``,
            ``"hf:gpt2"``, ``"pkg.mod:build"``, ``"file.py:build"``) or an ``nn.Module`` (any device;
            it is counted on a meta copy).
        inputs: the forward's inputs (a tensor ``[batch, ...]``, a tuple, a mapping of keyword
            tensors or :class:`~flopkit.models.ModelInputs`); their batch is their first dimension.
            Without them a spec or module gets inputs from ``input_shape`` (per sample, ``(3, 224,
            224)``), ``seq_len`` (int64 ids ``[batch, seq_len]``), ``named_inputs`` (``(name, shape,
            dtype)``), or the model's default input size; a flopkit module is counted analytically on
            its own token count.
        batch: samples per forward (not with ``inputs``).
        overrides: config fields to change (a preset or config file only).
        model_args: keyword arguments of the spec's factory (a spec only).
        training: add the backward (loss = sum of the outputs for a measured model; the per-category
            rule of docs/conventions.md for analytic modules).
        convention: ``"flopkit"`` or ``"nvsubquadratic"`` (docs/conventions.md).
        causal_attention: ``"full"`` (every query-key pair), ``"half"`` (causal SDPA at T²/2) or
            ``"exact"`` (the pairs the mask keeps); measured models only.
        depth: rows down to this many levels (None: every module).
        checkpointing: ``"none"`` or ``"blocks"`` (each repeated block's forward again in the
            backward; counted in ``hardware_flops`` only). Needs ``training``.
        kv_cache: decode against this many cached tokens (the model's own cache, filled by an
            uncounted prefill); the new tokens are ``seq_len`` (default 1).
        padding_mask: real ``[batch, keys]`` attention-mask values (1 token, 0 padding, or document
            ids of packed sequences); needs ``causal_attention="exact"``.

    Raises:
        flopkit.checks.InputError: an argument that cannot apply, naming it, before any work.
    """
    check_convention(convention)
    _check_causal(causal_attention)
    if checkpointing not in CHECKPOINTING:
        raise InputError("checkpointing", checkpointing, f"expected one of {', '.join(CHECKPOINTING)}")
    if checkpointing != "none" and not training:
        raise InputError("checkpointing", checkpointing, "applies to a training step: add `training`")
    if depth is not None and depth < 0:
        raise InputError("depth", depth, "must be 0 or more")
    _check_positive("batch", batch, "must be a positive integer")
    loaded = load(model, overrides=overrides, model_args=model_args)
    given = {
        "inputs": inputs, "input_shape": input_shape, "seq_len": seq_len, "named_inputs": list(named_inputs) or None,
        "kv_cache": kv_cache, "padding_mask": padding_mask,
    }  # fmt: skip
    if causal_attention != "full":
        given["causal_attention"] = causal_attention
    analytic = loaded.is_config or (
        is_analytic(loaded.module) and all(v is None for k, v in given.items() if k != "causal_attention")
    )
    if analytic:
        extra = [k for k, v in given.items() if v is not None]
        if extra:
            raise InputError(
                extra[0],
                _shown(given[extra[0]]),
                f"applies to a model counted by measurement (a spec or an nn.Module), not to {loaded.label}",
            )
        return _count_analytic(loaded, batch, training, convention, depth, checkpointing)
    return _count_measured(
        loaded, inputs, batch=batch, input_shape=input_shape, seq_len=seq_len, named_inputs=named_inputs,
        training=training, convention=convention, causal=causal_attention, depth=depth,
        checkpointing=checkpointing, kv_cache=kv_cache, padding_mask=padding_mask,
    )  # fmt: skip


def _check_positive(name: str, value: Any, detail: str) -> None:
    """``value`` must be an int (not a bool) of at least 1; else :class:`InputError` naming ``name``."""
    if not is_int(value) or value < 1:
        raise InputError(name, value, detail)


def _check_causal(rule: Any) -> None:
    """``rule`` must be one of :data:`flopkit.formulas.ATTENTION_RULES`."""
    if rule not in formulas.ATTENTION_RULES:
        raise InputError("causal_attention", rule, f"expected one of {', '.join(formulas.ATTENTION_RULES)}")


def _shown(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return f"tensor{list(value.shape)}"
    return value


def _count_analytic(loaded, batch, training, convention, depth, checkpointing) -> FlopCount:
    from .summary import analytic_rows

    module = loaded.module
    tokens = loaded.tokens() if loaded.is_config else module.default_flop_tokens()
    rows, legend = analytic_rows(module, tokens, convention, depth, batch, training, checkpointing)
    info = {"config": loaded.to_dict()} if loaded.is_config else {"model": loaded.label}

    def measure():
        from .anymodel import count_model

        return count_model(module, (_analytic_input(loaded, batch),), {})

    def shapes():
        from .anymodel import layer_shapes

        return layer_shapes(module, (_analytic_input(loaded, batch),))

    return FlopCount(
        rows, legend, convention, batch, training, loaded.label, info, {}, False, None, measure, shapes
    )


def _analytic_input(loaded, batch: int) -> torch.Tensor:
    """The meta-device input an analytic count stands for: a config's, or for a flopkit module its
    own (images for a ViT5, ``[batch, T, hidden]`` for a block or an attention layer)."""
    if loaded.is_config:
        from flopkit.config import model_input

        return model_input(loaded.config, loaded.module, batch, "meta")
    module = loaded.module
    embed = getattr(module, "patch_embed", None)
    if embed is not None:
        return torch.empty((batch, embed.in_channels, *embed.image_size), device="meta")
    attn = getattr(module, "attn", module)
    hidden = getattr(attn, "hidden_dim", None)
    if hidden is None:
        raise ValueError(f"{loaded.label}: give inputs to count it by measurement and see its operators")
    return torch.empty((batch, module.default_flop_tokens(), hidden), device="meta")


def _check_cache(
    model: nn.Module, label: str, kv_cache: int | None, *, training: bool, input_shape, seq_len
) -> None:
    from flopkit.flops.llm import cache_argument

    if kv_cache is None:
        return
    _check_positive("kv_cache", kv_cache, "expected a positive number of cached tokens")
    if training:
        raise InputError("kv_cache", kv_cache, "counts inference (decode); it does not apply with `training`")
    if input_shape is not None:
        raise InputError("kv_cache", kv_cache, "feeds token ids: give `seq_len`, not `input_shape`")
    if cache_argument(model) is None:
        raise InputError(
            "kv_cache",
            kv_cache,
            f"{label} takes no KV cache (its forward has no past_key_values/cache argument)",
        )


def _check_padding(model, label, mask, *, causal, batch, keys) -> None:
    from flopkit.flops.llm import accepts_argument

    if mask is None:
        return
    shown = f"attention_mask{list(mask.shape)}"  # the mask's values are the model's attention_mask
    if causal != "exact":
        raise InputError(
            "padding_mask", shown, "mask values change which query-key pairs are kept: they apply with "
            "`causal_attention` exact"
        )  # fmt: skip
    if not accepts_argument(model, "attention_mask"):
        raise InputError("padding_mask", shown, f"{label} takes no attention_mask")
    if keys is None:
        raise InputError("padding_mask", shown, "mask values need `seq_len` N (the tokens they mask)")
    if mask.dim() != 2 or list(mask.shape) != [batch, keys]:
        raise InputError(
            "padding_mask",
            shown,
            f"must be [batch, cached + new tokens] = [{batch}, {keys}], got {list(mask.shape)}",
        )


def _count_measured(
    loaded, inputs, *, batch, input_shape, seq_len, named_inputs, training, convention, causal, depth,
    checkpointing, kv_cache, padding_mask,
) -> FlopCount:  # fmt: skip
    from flopkit.flops.llm import build_kv_cache, cache_argument, moe_parameters
    from flopkit.models import model_inputs, user_code

    from .mixed import mixed_rows

    model, label = loaded.module, loaded.label
    _check_cache(model, label, kv_cache, training=training, input_shape=input_shape, seq_len=seq_len)
    if inputs is not None:
        for name, value in (
            ("input_shape", input_shape),
            ("seq_len", seq_len),
            ("named_inputs", list(named_inputs) or None),
        ):
            if value is not None:
                raise InputError(name, value, "the inputs are given: give inputs or their shapes, not both")
        if batch != 1:
            raise InputError("batch", batch, "the batch of given inputs is their first dimension")
        ins = _as_inputs(inputs)
        tensors = ins.tensors
        batch = tensors[0].shape[0] if tensors and tensors[0].dim() else 1
        if kv_cache is not None:
            raise InputError("kv_cache", kv_cache, "builds its own decode inputs: give seq_len, not inputs")
    else:
        if seq_len is None and kv_cache is not None:
            seq_len = 1
        ins = model_inputs(
            model, batch=batch, input_shape=tuple(input_shape) if input_shape is not None else None,
            seq_len=seq_len, named=named_inputs, spec=label,
        )  # fmt: skip
    keys = None if seq_len is None else seq_len + (kv_cache or 0)
    if kv_cache is not None:  # the cache and the new tokens share the model's positions
        check_seq_len(model, keys, "kv_cache", kv_cache)
    _check_padding(model, label, padding_mask, causal=causal, batch=batch, keys=keys)
    if kv_cache is not None:
        with user_code(label, "running the model"):
            cache = build_kv_cache(model, batch, kv_cache, label)
        ins.kwargs[cache_argument(model)] = cache
        ins.origin += (
            f"; a KV cache of {kv_cache} token(s) ({type(cache).__name__}, filled by an uncounted prefill)"
        )
    described = ins.describe()  # before the run: a decode step appends to the cache
    with user_code(label, "running the model"):
        rows, measured = mixed_rows(
            model, (ins.args, ins.kwargs), convention, depth, training, causal,
            padding_mask=padding_mask, checkpointing=checkpointing,
        )  # fmt: skip
    legend = measured_legend(
        convention, measured, training, batch, any(r.source != "measured" for r in rows), checkpointing,
        f"inputs: {described} ({ins.origin})",
    )  # fmt: skip
    moe = moe_parameters(model)
    tokens = batch * (seq_len or 1)
    if moe is not None:
        legend.append(moe_legend(moe, rows[0].flops, tokens if seq_len else None, training))
    info = {
        **({"model": loaded.spec, "model_args": loaded.model_args} if loaded.spec else {"model": label}),
        "batch": batch,
        "inputs": described,
        "kv_cache": kv_cache,
        "convention": convention,
        "causal_attention": causal,
        "attention_rules": dict(measured.rules),
        "training": training,
        "checkpointing": checkpointing,
    }
    details = {
        **(moe.to_dict() if moe is not None else {}),
        **({"flops_per_token": rows[0].flops / tokens} if seq_len else {}),
        "uncounted_ops": dict(measured.uncounted),
        "convention_uncounted_ops": dict(measured.convention_uncounted),
    }
    return FlopCount(rows, legend, convention, batch, training, label, info, details, True, measured)


# ------------------------------------------------------------------------------------------------
# Legends of a measured count


def measured_legend(
    convention: str,
    measured,
    training: bool,
    batch: int,
    analytic: bool,
    checkpointing: str = "none",
    inputs: str = "",
) -> list[str]:
    """The legend of a measured count: what the measured rows count, the attention rule applied,
    what ran uncounted, the run, and with ``training`` the backward's rules. ``analytic``: some rows
    come from flopkit modules; ``inputs``: the run's inputs as the last legend line names them."""
    from flopkit.formulas import counted_legend, training_legend

    from .anymodel import ANYMODEL_LEGEND, causal_legend, skipped_legend
    from .mixed import MIXED_LEGEND

    legend = [counted_legend(), MIXED_LEGEND] if analytic else []
    legend += [
        ANYMODEL_LEGEND,
        causal_legend(measured.causal, measured.causal_calls, measured.masked_calls, measured.rules),
        *skipped_legend(measured.uncounted, measured.convention_uncounted),
        f"convention: {convention}; batch: {batch}; {inputs}; per "
        + ("training step" if training else "forward"),
    ]
    if training:
        legend.append(
            "`training` on a model: measured rows count the backward with FlopCounterMode on the meta "
            "device (loss = sum of the outputs; inputs do not require grad, so the first layer computes no "
            "input gradient); analytic rows use the rule below."
        )
        legend.append(training_legend())
        legend.append(hardware_legend(checkpointing))
    return legend


def hardware_legend(checkpointing: str) -> str:
    """What ``hardware_flops`` adds to the model's FLOPs."""
    from flopkit.formulas import HARDWARE_ATTENTION_BACKWARD

    num, den = HARDWARE_ATTENTION_BACKWARD
    text = (
        "hardware = matmul + attention as CUDA kernels run them (the HFU numerator; MFU uses model "
        f"FLOPs): SDPA backward at {num}/{den} of its forward (flash and memory-efficient kernels recompute "
        "QK^T) where the model's count is 2x"
    )
    if checkpointing == "blocks":
        text += "; `checkpointing` blocks: each repeated layer's forward matmul + attention once more"
    return text


def moe_legend(moe, flops: int, tokens: int | None, training: bool) -> str:
    """The mixture-of-experts legend line: routing assumption, active and total parameters."""
    groups = "; ".join(f"{g['path']}: top-{g['top_k']} of {g['experts']}" for g in moe.groups[:3])
    more = f" and {len(moe.groups) - 3} more" if len(moe.groups) > 3 else ""
    text = (
        f"mixture of experts ({groups}{more}): each token runs exactly its top-k routed experts (exact "
        "whatever the router picks; shared experts always on); parameters "
        f"{moe.active:,} active of {moe.total:,} total"
    )
    if tokens:
        text += f"; {flops / tokens:,.0f} active FLOPs per token" + (" (training step)" if training else "")
    return text


# ------------------------------------------------------------------------------------------------
# Several lengths


@dataclass
class FlopSweep:
    """One model counted at several sequence lengths: ``points`` holds, per length, ``seq_len``,
    ``breakdown``, ``total_flops``, ``forward_flops`` and ``backward_flops``."""

    label: str
    model_args: dict[str, Any]
    batch: int
    causal_attention: str
    training: bool
    params: int
    points: list[dict[str, Any]]
    legend: list[str]
    uncounted: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.label,
            "model_args": self.model_args,
            "batch": self.batch,
            "causal_attention": self.causal_attention,
            "training": self.training,
            "params": self.params,
            "rows": [dict(p) for p in self.points],
            "legend": list(self.legend),
        }

    def plot(self, path: str | os.PathLike) -> str:
        """FLOPs by category against length (log-log), written to ``path`` (PNG, needs matplotlib)."""
        from pathlib import Path

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        label = self.label + (
            f" ({', '.join(f'{k}={v}' for k, v in self.model_args.items())})" if self.model_args else ""
        )
        lens = [p["seq_len"] for p in self.points]
        fig, ax = plt.subplots(figsize=(6, 4))
        for cat in CATEGORIES:
            values = [p["breakdown"][cat] for p in self.points]
            if any(values):
                ax.plot(lens, values, marker="o", label=cat)
        ax.plot(lens, [p["total_flops"] for p in self.points], marker="o", color="black", label="total")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel("FLOPs")
        ax.set_title(f"{label} (causal attention: {self.causal_attention})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(Path(path), dpi=120)
        plt.close(fig)
        return str(path)


def count_sweep(
    model: ModelLike,
    seq_lens: Sequence[int],
    *,
    batch: int = 1,
    named_inputs: Sequence[tuple[str, tuple[int, ...], torch.dtype]] = (),
    model_args: Mapping[str, Any] | None = None,
    training: bool = False,
    convention: str = "flopkit",
    causal_attention: str = "full",
    progress=None,
) -> FlopSweep:
    """The whole model's FLOPs at each of ``seq_lens`` (int64 ids ``[batch, n]``): one
    :func:`count` per length; every length is checked before the first is counted."""
    from flopkit.models import model_inputs
    from flopkit.progress import SILENT

    if not seq_lens:
        raise InputError("seq_lens", list(seq_lens), "give at least one length")
    loaded = load(model, model_args=model_args)
    if loaded.is_config:
        raise InputError(
            "seq_lens", list(seq_lens), f"a sweep counts a model by measurement, not {loaded.label}"
        )
    for n in seq_lens:
        model_inputs(loaded.module, batch=batch, seq_len=n, named=named_inputs, spec=loaded.label)
    progress = progress or SILENT
    points, last = [], None
    for n in progress.iterate(list(seq_lens), "seq-len sweep"):
        last = count(
            loaded, batch=batch, seq_len=n, named_inputs=named_inputs, training=training,
            convention=convention, causal_attention=causal_attention, depth=0,
        )  # fmt: skip
        top = last.rows[0]
        backward = sum(top.backward.values()) if top.backward is not None else 0
        points.append({
            "seq_len": n, "breakdown": dict(top.breakdown), "total_flops": top.flops,
            "forward_flops": top.flops - backward, "backward_flops": backward,
        })  # fmt: skip
    legend = measured_legend(
        convention, last.measurement, training, batch, any(r.source != "measured" for r in last.rows),
        inputs="int64 ids [batch, seq_len]",
    )  # fmt: skip
    return FlopSweep(
        loaded.label, dict(loaded.model_args), batch, causal_attention, training, last.total_params, points,
        legend, last.measurement.uncounted,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------
# A generation


@dataclass
class GenerationCount:
    """A prefill and its decode steps (:class:`~flopkit.flops.llm.Generation`) with the legend and
    what ran uncounted over every counted forward."""

    label: str
    model_args: dict[str, Any]
    causal_attention: str
    generation: Any
    legend: list[str]
    uncounted: Counter
    moe: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.label, "model_args": self.model_args, "causal_attention": self.causal_attention,
            **self.generation.to_dict(), **(self.moe.to_dict() if self.moe is not None else {}),
            "uncounted_ops": dict(self.uncounted), "legend": list(self.legend),
        }  # fmt: skip


def count_generation(
    model: ModelLike,
    prompt_tokens: int,
    steps: int,
    *,
    batch: int = 1,
    model_args: Mapping[str, Any] | None = None,
    causal_attention: str = "exact",
) -> GenerationCount:
    """FLOPs of a generation: a prefill of ``prompt_tokens``, then ``steps`` decode steps, step ``k``
    feeding one token against ``prompt_tokens + k`` cached (:func:`flopkit.flops.llm.count_generation`:
    steps summed exactly over the linear pieces of their cost)."""
    from flopkit.flops import llm
    from flopkit.models import user_code

    from .anymodel import causal_legend, skipped_legend
    from .mixed import mixed_rows

    for name, value in (("prompt_tokens", prompt_tokens), ("steps", steps), ("batch", batch)):
        _check_positive(name, value, "must be at least 1")
    _check_causal(causal_attention)
    loaded = load(model, model_args=model_args)
    if loaded.is_config or llm.cache_argument(loaded.module) is None:
        raise InputError(
            "prompt_tokens", prompt_tokens,
            f"{loaded.label} takes no KV cache (its forward has no past_key_values/cache argument)",
        )  # fmt: skip
    check_seq_len(loaded.module, prompt_tokens, "prompt_tokens")
    check_seq_len(loaded.module, prompt_tokens + steps, "steps", steps)  # the last step's positions
    counts = []

    def one(model, args, kwargs, causal):
        rows, measured = mixed_rows(model, (args, kwargs), "flopkit", 0, False, causal)
        counts.append(measured)
        return dict(rows[0].breakdown)

    with user_code(loaded.label, "running the model"):
        gen = llm.count_generation(
            loaded.module,
            prompt_tokens,
            steps,
            batch=batch,
            causal=causal_attention,
            count=one,
            label=loaded.label,
        )
    rules, uncounted, convention = Counter(), Counter(), Counter()
    causal_calls = masked_calls = 0
    for c in counts:
        causal_calls += c.causal_calls
        masked_calls += c.masked_calls
        rules.update(c.rules)
        uncounted.update(c.uncounted)
        convention.update(c.convention_uncounted)
    moe = llm.moe_parameters(loaded.module)
    shown = ", ".join(map(str, gen.evaluated[:8])) + (" ..." if len(gen.evaluated) > 8 else "")
    legend = [
        f"generation: a prefill of {prompt_tokens} token(s), then {steps} decode step(s); step k feeds one token "
        f"against {prompt_tokens}+k cached (the model's own cache, filled by an uncounted prefill on the meta device)",
        f"decode total: steps counted at cache lengths {shown} and summed exactly "
        "(per category a step's FLOPs are concave and piecewise linear in the cache length: linear pieces "
        "are summed in closed form)",
        causal_legend(causal_attention, causal_calls, masked_calls, rules),
        *skipped_legend(uncounted, convention),
        f"batch: {batch}; FLOPs per token = FLOPs / (batch x tokens of the phase)",
    ]
    if moe is not None:
        legend.append(moe_legend(moe, 0, None, False))
    return GenerationCount(
        loaded.label, dict(loaded.model_args), causal_attention, gen, legend, uncounted, moe
    )
