"""Model configs: presets, YAML/JSON files, ``key=value`` overrides and strict validation.

A config is either

* a **model**: a preset name (``vit5-small`` ...) or a file holding ``preset:`` and/or ViT5 fields
  (:data:`MODEL_FIELDS`); or
* a **weights file** (``.pth``, ``.pt``, ``.bin``, ``.ckpt``, ``.safetensors``) of either upstream
  ViT-5 layout or flopkit's: the model its tensors describe (:mod:`flopkit.checkpoints`); or
* a single **module**: a file holding ``module: ViT5Attention`` (or another name in :data:`MODULES`)
  plus that module's arguments and ``num_tokens``, so one layer can be inspected alone.

Every problem raises :class:`ConfigError` (a ``ValueError``) with a one-line message that names the
source and the offending key; one about an argument of :func:`load_config` (``overrides``) raises
:class:`ConfigInputError`, also a :class:`flopkit.checks.InputError` naming it. Other arguments a
message names are marked in backticks (`` `config` ``). Structural checks (``hidden_dim % num_heads``, a square register
count, image size vs patch size) are the modules' own: :meth:`Config.check` builds the module on
the meta device and reports their ``ValueError``.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flopkit.checkpoints import is_checkpoint_path
from flopkit.checks import MAX_ELEMENTS, MAX_LAYERS, InputError
from flopkit.formulas import CONVENTIONS
from flopkit.nn import PRESETS, Mlp, RMSNorm, ViT5, ViT5Attention, ViT5Block, ViT5Config
from flopkit.nn._checks import is_int
from flopkit.nn.attention import QK_NORMS
from flopkit.nn.rope import ROPE_PAIRINGS, ROPE_TABLES
from flopkit.nn.vit5_config import SIZE, file_fields

__all__ = [
    "ConfigError",
    "ConfigInputError",
    "Config",
    "MODEL_FIELDS",
    "MODULES",
    "load_config",
    "parse_overrides",
    "model_input",
    "MAX_PARAMETERS",
    "MAX_DEPTH",
    "MAX_CPU_PARAMETERS",
    "preset_summaries",
]


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line."""


class ConfigInputError(InputError, ConfigError):
    """A :class:`ConfigError` about one argument: :class:`flopkit.checks.InputError`'s ``argument``
    (``overrides``), ``value`` and ``detail``."""


# Sanity bounds, checked before a model is built.
MAX_PARAMETERS = 10**13
"""More parameters than any model trained so far by two orders of magnitude: a typo, not a model."""
MAX_DEPTH = MAX_LAYERS  # 4096, the same limit as a model spec's layer count (model_args)
"""Blocks are built one by one even on the meta device (about 1.3 ms each: 4,096 report in 6.5 s)."""
MAX_TENSOR_ELEMENTS = MAX_ELEMENTS
"""A tensor's element count is an int64: the attention map ``[B, H, T, T]`` must fit for B = 1."""
MAX_CPU_PARAMETERS = 10**9
"""``validate``'s fvcore run builds the model on CPU: 4 GiB of float32 parameters at most."""


MODEL_FIELDS: dict[str, Any] = file_fields()
"""The ViT5 fields a config file or an override may set, from :class:`~flopkit.nn.ViT5Config`."""

_LAYOUT_FIELDS: dict[str, Any] = {
    "hidden_dim": int,
    "num_heads": int,
    "num_patches_h": int,
    "num_patches_w": int,
    "num_registers": int,
    "has_cls": bool,
    "qk_norm": QK_NORMS,
    "rope_base": float,
    "reg_rope_base": float,
    "rope_pairing": ROPE_PAIRINGS,
    "cls_first": bool,
    "rope_tables": ROPE_TABLES,
}


@dataclass(frozen=True)
class ModuleSpec:
    """A module that a config may describe alone: its class, fields, and required fields."""

    cls: type[nn.Module]
    fields: dict[str, Any]
    required: tuple[str, ...]
    has_layout: bool  # token count fixed by the layout (T = h*w + cls + R)


MODULES: dict[str, ModuleSpec] = {
    "ViT5Attention": ModuleSpec(
        ViT5Attention,
        {**_LAYOUT_FIELDS, "qkv_bias": bool, "out_proj_bias": bool, "scale": float},
        ("hidden_dim", "num_heads", "num_patches_h", "num_patches_w"),
        True,
    ),
    "ViT5Block": ModuleSpec(
        ViT5Block,
        {**_LAYOUT_FIELDS, "mlp_ratio": float},
        ("hidden_dim", "num_heads", "num_patches_h", "num_patches_w"),
        True,
    ),
    "Mlp": ModuleSpec(
        Mlp, {"in_features": int, "hidden_features": int}, ("in_features", "hidden_features"), False
    ),
    "RMSNorm": ModuleSpec(RMSNorm, {"normalized_shape": int, "eps": float}, ("normalized_shape",), False),
}


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    hint = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _type_name(kind: Any) -> str:
    if isinstance(kind, tuple):
        return "one of " + ", ".join("null" if v is None else repr(v) for v in kind)
    return {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        SIZE: "an integer or [height, width]",
    }[kind]


def _coerce(key: str, value: Any, kind: Any, source: str) -> Any:
    """Check ``value`` against ``kind``; numbers given as strings (YAML reads ``1e4`` as a string)
    are accepted for float fields only."""
    ok = True
    if isinstance(kind, tuple):
        if isinstance(value, str) and value.lower() in ("none", "null"):
            value = None
        ok = value in kind
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == SIZE:
        pair = isinstance(value, (list, tuple)) and len(value) == 2
        items = value if pair else [value]
        ok = (pair or isinstance(value, int)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in items
        )
        value = tuple(value) if ok and pair else value
    elif kind is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                ok = False
        ok = ok and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    if not ok:
        raise ConfigError(f"{source}: {key} must be {_type_name(kind)}, got {value!r}")
    return value


@dataclass
class Config:
    """A validated config: a ViT5 (``module is None``) or one module with ``num_tokens``.

    ``fields`` holds only what differs from the preset / module defaults, as given.
    """

    source: str
    preset: str | None = None
    module: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    num_tokens: int | None = None
    _meta: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def is_model(self) -> bool:
        return self.module is None

    def to_dict(self) -> dict[str, Any]:
        """The config as data (what a JSON report records)."""
        out: dict[str, Any] = {}
        if self.preset is not None:
            out["preset"] = self.preset
        if self.module is not None:
            out["module"] = self.module
        out.update(self.fields)
        if self.num_tokens is not None:
            out["num_tokens"] = self.num_tokens
        return out

    def build(self, device: torch.device | str = "meta") -> nn.Module:
        """Build the module under ``torch.device(device)``: on the meta device (the default) no
        parameter memory is allocated and nothing is initialised.

        Raises ConfigError for a field combination the module rejects.
        """
        try:
            with torch.device(device):
                return self._construct()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{self.source}: {_one_line(exc)}") from None
        except RuntimeError as exc:  # torch refusing a tensor size (e.g. its storage size overflows)
            raise ConfigError(
                f"{self.source}: torch cannot create a tensor of this config: {_one_line(exc)}"
            ) from None

    def _construct(self) -> nn.Module:
        if self.is_model:
            if self.preset is not None:
                return ViT5.from_preset(self.preset, **self.fields)
            return ViT5(**self.fields)
        return MODULES[self.module].cls(**self.fields)

    def tokens(self, module: nn.Module) -> int:
        """The per-sample count a flop walk starts from: tokens for a module, 1 (image) for a ViT5."""
        if self.is_model:
            return module.default_flop_tokens()
        if self.num_tokens is not None:
            return self.num_tokens
        return module.num_tokens

    @property
    def meta_module(self) -> nn.Module:
        """The module built on the meta device (built once, by :meth:`check`)."""
        return self._meta if self._meta is not None else self.check()

    def check(self) -> nn.Module:
        """Check the size bounds, build on the meta device, check ``num_tokens`` against the layout;
        returns the module (kept as :attr:`meta_module`)."""
        if self.is_model:
            self._check_model_size()
        module = self.build("meta")
        fixed = not self.is_model and MODULES[self.module].has_layout
        if fixed and self.num_tokens is not None and self.num_tokens != module.num_tokens:
            raise ConfigError(
                f"{self.source}: num_tokens={self.num_tokens} does not match the token layout "
                f"h*w + cls + R = {_layout(module).describe()}"
            )
        if fixed:
            self._check_attention_map(_attention(module), self.tokens(module))
        self._meta = module
        return module

    def model_fields(self) -> dict[str, Any]:
        """The ViT5 arguments of a model config: the preset's fields, then the config's."""
        return {**(PRESETS[self.preset] if self.preset is not None else {}), **self.fields}

    def parameter_count(self) -> int:
        """Parameters of the model, from a one-block probe built on the meta device (no memory):
        everything outside the blocks plus ``depth`` times one block."""
        if not self.is_model:
            return sum(p.numel() for p in self.meta_module.parameters())
        return self._probe()[1]

    def _probe(self) -> tuple[nn.Module, int]:
        """A one-block build of the model on the meta device and the full model's parameter count."""
        fields = self.model_fields()
        depth = fields.get("depth", _VIT5_DEFAULTS["depth"])
        probe = Config(self.source, fields={**fields, "depth": 1}).build("meta")
        block = sum(p.numel() for p in probe.blocks[0].parameters())
        return probe, sum(p.numel() for p in probe.parameters()) + (depth - 1) * block

    def _check_model_size(self) -> None:
        depth = self.model_fields().get("depth", _VIT5_DEFAULTS["depth"])
        if is_int(depth) and depth > MAX_DEPTH:
            raise ConfigError(
                f"{self.source}: depth={depth:,} is above the limit of {MAX_DEPTH:,} blocks "
                f"(a model is built block by block, even on the meta device)"
            )
        probe, params = self._probe()
        self._check_attention_map(_attention(probe), probe.num_tokens)
        if params > MAX_PARAMETERS:
            raise ConfigError(
                f"{self.source}: {params:,} parameters (about {params / 1e12:.3g} T) is above the limit of "
                f"{MAX_PARAMETERS:,} (10^13); check hidden_dim, depth, mlp_ratio, num_classes and image_size"
            )

    def _check_attention_map(self, attn: ViT5Attention, num_tokens: int) -> None:
        entries = attn.num_heads * num_tokens * num_tokens
        if entries > MAX_TENSOR_ELEMENTS:
            raise ConfigError(
                f"{self.source}: {num_tokens:,} tokens need an attention map of H*T^2 = {entries:.3g} entries "
                f"per sample, more than a tensor can hold (2^63 - 1); use a smaller image_size or a larger "
                f"patch_size"
            )

    def check_cpu_build(self) -> None:
        """ConfigError when building the model on CPU (fvcore's traced run) would need more than
        :data:`MAX_CPU_PARAMETERS` parameters."""
        params = self.parameter_count()
        if params > MAX_CPU_PARAMETERS:
            raise ConfigError(
                f"{self.source}: fvcore traces the model on CPU, and {params:,} parameters "
                f"({4 * params / 2**30:,.0f} GiB in float32) is above the limit of {MAX_CPU_PARAMETERS:,}; "
                f"drop fvcore from `counters` (torch's counter runs on the meta device, no memory) or use a "
                f"smaller config"
            )


def _one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split())


def parse_overrides(items: Iterable[str], argument: str = "overrides") -> dict[str, Any]:
    """``["key=value", ...]`` -> dict; values are read as YAML scalars (``true``, ``384``, ``null``).
    A malformed item raises :class:`ConfigInputError` naming ``argument``."""
    out: dict[str, Any] = {}
    items = list(items)
    if not items:
        return out
    import yaml

    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigInputError(argument, repr(item), "expected key=value")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def _read_file(path: Path) -> dict[str, Any]:
    text = _read_text(path)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs, path))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: malformed JSON: {exc.msg} (line {exc.lineno})") from None
    else:
        import yaml

        try:
            data = yaml.load(text, Loader=_unique_key_loader(path))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError(f"{path}: malformed YAML: {problem}{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _unique_keys(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    """A JSON object's pairs as a dict; ConfigError on a key given twice."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"{path}: key {key!r} is given twice")
        out[key] = value
    return out


def _unique_key_loader(path: Path):
    """A YAML safe loader whose mappings refuse a key given twice (PyYAML keeps the last)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"{path}: key {key!r} is given twice (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1})"
                )
            seen[key] = key_node.start_mark.line
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return UniqueKeyLoader


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a YAML or JSON text file (byte {exc.object[exc.start]:#04x} at offset {exc.start} "
            f"is not UTF-8)"
        ) from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML or JSON file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def _looks_like_path(source: str) -> bool:
    return Path(source).suffix.lower() in (".yaml", ".yml", ".json") or "/" in source


def load_config(source: str, overrides: Mapping[str, Any] | Iterable[str] = ()) -> Config:
    """Read a preset name or a YAML/JSON file, apply overrides, validate; returns a :class:`Config`.

    ``overrides`` is a mapping or ``["key=value", ...]`` (:func:`parse_overrides`).
    """
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    for key in ("preset", "module"):
        if key in overrides:
            raise ConfigInputError(
                "overrides",
                f"{key}={overrides[key]}",
                f"the {key} is chosen by `config` ({source}), not by `overrides`; give {overrides[key]} as "
                "`config` or edit the file",
            )
    if is_checkpoint_path(source):
        config = _checkpoint_config(source, overrides)
        config.check()
        return config
    if source in PRESETS:
        data: dict[str, Any] = {"preset": source}
    elif _looks_like_path(source) or Path(source).exists():
        data = _read_file(Path(source))
    else:
        raise ConfigError(
            f"unknown preset {source!r}{_did_you_mean(source, PRESETS)}; expected one of "
            f"{', '.join(PRESETS)}, or a .yaml/.json file"
        )
    data = {**data, **overrides}
    config = _validate(data, source)
    config.check()
    return config


def _checkpoint_config(path: str, overrides: Mapping[str, Any]) -> Config:
    """The model a weights file holds (architecture read off its tensors), with ``overrides``."""
    from flopkit.checkpoints import SHAPE_FIELDS, CheckpointError, infer_config

    try:
        fields = infer_config(path)
    except CheckpointError as exc:
        raise ConfigError(_one_line(exc)) from None
    for key, value in overrides.items():
        if key in SHAPE_FIELDS and fields.get(key) is not None and value != fields[key]:
            raise ConfigError(
                f"{path}: `overrides` {key}={value} contradicts the checkpoint's tensors, which fix "
                f"{key}={fields[key]} (image_size, RoPE and layout options can be set)"
            )
    if fields.get("num_heads") is None and "num_heads" not in overrides:
        raise ConfigError(
            f"{path}: no QK-norm weight to read the head count from; give `overrides` num_heads=H"
        )
    # Overrides go through the same validation as any config's (a preset stands in for the fields).
    checked = _validate({"preset": next(iter(PRESETS)), **overrides}, path).fields
    return Config(source=path, fields={**fields, **checked})


def _validate(data: dict[str, Any], source: str) -> Config:
    data = dict(data)
    preset = data.pop("preset", None)
    module = data.pop("module", None)
    num_tokens = data.pop("num_tokens", None)
    if module is not None and preset is not None:
        raise ConfigError(f"{source}: give either preset (a model) or module (one layer), not both")
    if module is not None:
        if module not in MODULES:
            raise ConfigError(
                f"{source}: unknown module {module!r}{_did_you_mean(str(module), MODULES)}; "
                f"expected one of {', '.join(MODULES)}"
            )
        spec = MODULES[module]
        allowed, required = spec.fields, spec.required
    else:
        if preset is not None and preset not in PRESETS:
            raise ConfigError(
                f"{source}: unknown preset {preset!r}{_did_you_mean(str(preset), PRESETS)}; "
                f"expected one of {', '.join(PRESETS)}"
            )
        allowed = MODEL_FIELDS
        required = () if preset is not None else ("hidden_dim", "depth", "num_heads")
        if num_tokens is not None:
            raise ConfigError(
                f"{source}: num_tokens applies to a module config; a model's T follows its layout"
            )
    keys = ["preset", "module", "num_tokens", *allowed]
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{source}: unknown key {key!r}{_did_you_mean(str(key), keys)}")
    fields = {key: _coerce(key, value, allowed[key], source) for key, value in data.items()}
    missing = [key for key in required if key not in fields]
    if missing:
        raise ConfigError(f"{source}: missing required key {missing[0]!r} (give it, or a preset)")
    if num_tokens is not None:
        num_tokens = _coerce("num_tokens", num_tokens, int, source)
        if num_tokens <= 0:
            raise ConfigError(f"{source}: num_tokens must be positive, got {num_tokens}")
    elif module is not None and not MODULES[module].has_layout:
        raise ConfigError(f"{source}: module {module} needs num_tokens (the rows it runs on)")
    return Config(source=source, preset=preset, module=module, fields=fields, num_tokens=num_tokens)


def model_input(config: Config, module: nn.Module, batch: int, device: torch.device | str) -> torch.Tensor:
    """A random input of the right shape: images ``[B, C_in, H, W]`` for a model, else ``[B, T, C]``."""
    if config.is_model:
        h, w = module.patch_embed.image_size
        shape: tuple[int, ...] = (batch, module.patch_embed.in_channels, h, w)
    elif isinstance(module, Mlp):
        shape = (batch, config.tokens(module), module.in_features)
    elif isinstance(module, RMSNorm):
        shape = (batch, config.tokens(module), *module.normalized_shape)
    else:
        attn = module if isinstance(module, ViT5Attention) else module.attn
        shape = (batch, config.tokens(module), attn.hidden_dim)
    return torch.randn(shape, device=device)


def _attention(module: nn.Module) -> ViT5Attention:
    """The (first) attention layer of a ViT5, ViT5Block or ViT5Attention."""
    if isinstance(module, ViT5):
        return module.blocks[0].attn
    if isinstance(module, ViT5Block):
        return module.attn
    return module


def _layout(module: nn.Module):
    """The :class:`~flopkit.nn.rope.TokenLayout` of a ViT5, ViT5Block or ViT5Attention."""
    return _attention(module).layout


_VIT5_DEFAULTS = ViT5Config().to_dict()


def preset_summaries() -> list[dict[str, Any]]:
    """One row per built-in preset: its main fields, ``T``, parameters and forward FLOPs per image
    under each convention (``flops_flopkit``, ``flops_nvsubquadratic``), built on the meta device."""
    rows = []
    for name in PRESETS:
        model = load_config(name).meta_module
        row: dict[str, Any] = {
            "preset": name,
            "hidden_dim": model.hidden_dim,
            "depth": model.depth,
            "num_heads": model.num_heads,
            "head_dim": model.hidden_dim // model.num_heads,
            "image_size": model.patch_embed.image_size[0],
            "patch_size": model.patch_embed.patch_size,
            "num_tokens": model.num_tokens,
            "params": sum(p.numel() for p in model.parameters()),
        }
        for convention in CONVENTIONS:
            row[f"flops_{convention}"] = model.flop_count(convention=convention)
        rows.append(row)
    return rows
