"""Model specs for ``--model``: ``timm:NAME``, ``hf:MODEL_TYPE``, ``package.module:callable`` and
``file.py:callable``, built on the meta device, with the inputs to run them on.

* :func:`build_model` turns a spec and its ``--model-arg`` values into an ``nn.Module`` on the meta
  device (no parameter memory, so a 7B model builds in seconds), in eval mode.
* :func:`model_inputs` makes the meta-device inputs: one tensor (``--input-shape``, defaulting to
  timm's ``pretrained_cfg["input_size"]``), int64 token ids ``[batch, seq_len]`` (``--seq-len``),
  and keyword tensors (``--input NAME=SHAPE[:DTYPE]``).

Every problem raises :class:`ModelSpecError` (a ``ValueError``) with one line naming the spec;
an exception raised inside a user's factory or a library's constructor keeps its own message.
timm and transformers are optional: they are imported only when a spec names them.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "ModelSpecError",
    "ModelSpec",
    "ModelInputs",
    "INPUT_DTYPES",
    "parse_model_spec",
    "parse_model_args",
    "parse_shape",
    "parse_input",
    "parse_seq_lens",
    "build_model",
    "model_inputs",
    "default_input_shape",
    "is_text_model",
    "close_names",
    "real_inputs",
]


class ModelSpecError(ValueError):
    """A model spec, a model argument or an input that cannot be used; the message is one line."""


# --input NAME=SHAPE:DTYPE dtype names -> torch dtypes.
INPUT_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "long": torch.int64,
    "int32": torch.int32,
    "int": torch.int32,
    "bool": torch.bool,
}


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model`` value: ``kind`` is ``"timm"``, ``"hf"``, ``"module"`` or ``"file"``."""

    text: str
    kind: str
    target: str  # timm model name, HF model type, module path or file path
    name: str = ""  # the callable's name (module/file kinds)


def parse_model_spec(text: str) -> ModelSpec:
    """``"timm:resnet50"``, ``"hf:bert"``, ``"pkg.mod:fn"`` or ``"path/file.py:fn"`` -> :class:`ModelSpec`."""
    target, sep, name = text.rpartition(":")
    if text.startswith(("timm:", "hf:")):
        kind, _, rest = text.partition(":")
        if not rest:
            raise ModelSpecError(
                f"--model {text!r}: give a name after '{kind}:', e.g. timm:resnet50, hf:bert"
            )
        return ModelSpec(text, kind, rest)
    if not sep or not target or not name:
        raise ModelSpecError(
            f"--model must be timm:NAME, hf:MODEL_TYPE, package.module:callable or file.py:callable, "
            f"got {text!r}"
        )
    return ModelSpec(text, "file" if target.endswith(".py") else "module", target, name)


def parse_model_args(items: Iterable[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict, values read as YAML scalars like ``--set`` (``4``, ``true``, ``null``)."""
    from flopkit.config import ConfigError, parse_overrides

    try:
        return parse_overrides(items)
    except ConfigError as exc:
        raise ModelSpecError(str(exc).replace("--set", "--model-arg")) from None


def close_names(word: str, names: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``names`` closest to ``word`` (difflib ratio >= 0.6), best first."""
    return difflib.get_close_matches(word, list(names), n=n, cutoff=0.6)


def _suggest(word: str, names: Iterable[str]) -> str:
    hits = close_names(word, names)
    return f" (did you mean {', '.join(hits)}?)" if hits else ""


def _user_error(spec: ModelSpec, exc: BaseException) -> ModelSpecError:
    message = " ".join(str(exc).split()) or type(exc).__name__
    return ModelSpecError(f"--model {spec.text}: {type(exc).__name__}: {message}")


def _import_optional(name: str, extra: str, spec: ModelSpec):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ModelSpecError(
            f"--model {spec.text}: needs {name} ({exc}); install it with pip install 'flopkit[{extra}]'"
        ) from None
    except Exception as exc:  # a broken install (e.g. a torchvision built for another torch)
        raise ModelSpecError(
            f"--model {spec.text}: importing {name} failed: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())}"
        ) from None


def _load_callable(spec: ModelSpec) -> Callable[..., Any]:
    if spec.kind == "file":
        path = Path(spec.target)
        if not path.is_file():
            raise ModelSpecError(f"--model {spec.text}: no such file {spec.target}")
        mod_name = f"_flopkit_user_{path.stem}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            raise _user_error(spec, exc) from None
    else:
        try:
            module = importlib.import_module(spec.target)
        except ImportError as exc:
            raise ModelSpecError(f"--model {spec.text}: cannot import {spec.target!r}: {exc}") from None
        except Exception as exc:
            raise _user_error(spec, exc) from None
    factory = getattr(module, spec.name, None)
    if not callable(factory):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ModelSpecError(
            f"--model {spec.text}: {spec.target} has no callable {spec.name!r}{_suggest(spec.name, public)}"
        )
    return factory


def _build_timm(spec: ModelSpec, kwargs: dict[str, Any]) -> nn.Module:
    timm = _import_optional("timm", "timm", spec)
    names = timm.list_models()
    if spec.target not in names and not timm.is_model(spec.target):
        raise ModelSpecError(
            f"--model {spec.text}: timm has no model {spec.target!r}{_suggest(spec.target, names)}"
        )
    return timm.create_model(spec.target, pretrained=False, **kwargs)


def _build_hf(spec: ModelSpec, kwargs: dict[str, Any]) -> nn.Module:
    transformers = _import_optional("transformers", "hf", spec)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    types = list(CONFIG_MAPPING.keys())
    if spec.target not in types:
        raise ModelSpecError(
            f"--model {spec.text}: transformers has no model type {spec.target!r}{_suggest(spec.target, types)}"
        )
    defaults = transformers.AutoConfig.for_model(spec.target)
    for key in kwargs:
        if not hasattr(defaults, key):
            known = [k for k in defaults.to_dict() if not k.startswith("_")]
            raise ModelSpecError(
                f"--model-arg {key}: {type(defaults).__name__} has no field {key!r}{_suggest(key, known)}"
            )
    # Through the constructor, so that derived fields (Llama's head_dim, ...) follow the arguments.
    config = transformers.AutoConfig.for_model(spec.target, **kwargs)
    return transformers.AutoModel.from_config(config)


def build_model(
    spec: ModelSpec | str, model_args: Mapping[str, Any] | None = None, device: str = "meta"
) -> nn.Module:
    """Build the model named by ``spec`` on ``device`` (default meta: no parameter memory), in eval
    mode.

    ``model_args`` go to ``timm.create_model``, to the Hugging Face config (each key must be a
    field of ``AutoConfig.for_model(type)``), or as keyword arguments to the callable. ``device="cpu"``
    allocates and initialises real weights (``validate``'s fvcore run needs them).
    """
    spec = parse_model_spec(spec) if isinstance(spec, str) else spec
    kwargs = dict(model_args or {})
    with torch.device(device):
        try:
            if spec.kind == "timm":
                model = _build_timm(spec, kwargs)
            elif spec.kind == "hf":
                model = _build_hf(spec, kwargs)
            else:
                model = _load_callable(spec)(**kwargs)
        except ModelSpecError:
            raise
        except Exception as exc:
            raise _user_error(spec, exc) from None
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"--model {spec.text}: returned a {type(model).__name__}, not an nn.Module")
    on_cpu = [n for n, p in (*model.named_parameters(), *model.named_buffers()) if p.device.type != device]
    if on_cpu and device == "meta":
        raise ModelSpecError(
            f"--model {spec.text}: {on_cpu[0]} was not created on the meta device (the factory moves it to "
            "a device or loads weights); build tensors without an explicit device"
        )
    return model.eval()


# ---------------------------------------------------------------------------------------- inputs


def parse_shape(text: str, option: str = "--input-shape") -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``1x3x224x224``) -> ``(1, 3, 224, 224)``; every size a positive int."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ModelSpecError(f"{option}: expected comma-separated positive integers, got {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise ModelSpecError(f"{option}: expected comma-separated positive integers, got {text!r}")
    return shape


def parse_input(text: str) -> tuple[str, tuple[int, ...], torch.dtype]:
    """``"attention_mask=1,128:int64"`` -> ``("attention_mask", (1, 128), torch.int64)``; dtype float32 by
    default."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise ModelSpecError(
            f"--input: expected NAME=SHAPE[:DTYPE], e.g. attention_mask=1,128:int64, got {text!r}"
        )
    shape_text, _, dtype_text = rest.partition(":")
    dtype_text = dtype_text.strip() or "float32"
    if dtype_text not in INPUT_DTYPES:
        raise ModelSpecError(
            f"--input {name}: dtype must be one of {', '.join(INPUT_DTYPES)}, got {dtype_text!r}"
            f"{_suggest(dtype_text, INPUT_DTYPES)}"
        )
    return name, parse_shape(shape_text, f"--input {name}"), INPUT_DTYPES[dtype_text]


def parse_seq_lens(text: str) -> list[int]:
    """``"128,512,2048"`` -> ``[128, 512, 2048]`` (positive, in the order given, no repeats)."""
    lens = list(parse_shape(text, "--seq-len"))
    if len(set(lens)) != len(lens):
        raise ModelSpecError(f"--seq-len: repeated length in {text!r}")
    return lens


def default_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """``(C, H, W)`` for an image model: the image size its patch embedding was built for (a timm
    ViT built with ``img_size=...``, whose ``pretrained_cfg`` still names the pretrained size), else
    timm's ``pretrained_cfg["input_size"]`` (or ``default_cfg``), else None."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    conv = getattr(embed, "proj", None)
    if isinstance(size, (tuple, list)) and len(size) == 2 and isinstance(conv, nn.Conv2d):
        return (conv.in_channels, int(size[0]), int(size[1]))
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, Mapping) and cfg.get("input_size"):
            return tuple(int(s) for s in cfg["input_size"])
    return None


def is_text_model(model: nn.Module) -> bool:
    """True for a Hugging Face model whose main input is ``input_ids`` (a text model)."""
    return getattr(model, "main_input_name", None) == "input_ids"


@dataclass
class ModelInputs:
    """Positional and keyword tensors (meta device) for one forward, and how they were chosen."""

    args: tuple[torch.Tensor, ...] = ()
    kwargs: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: str = ""

    def describe(self) -> str:
        """``"x [2, 3, 224, 224] float32"`` style, one entry per tensor."""
        parts = [f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in self.args]
        parts += [
            f"{k}={list(t.shape)} {str(t.dtype).removeprefix('torch.')}" for k, t in self.kwargs.items()
        ]
        return ", ".join(parts)

    @property
    def tensors(self) -> list[torch.Tensor]:
        return [*self.args, *self.kwargs.values()]


def _meta_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def model_inputs(
    model: nn.Module,
    *,
    batch: int = 1,
    input_shape: tuple[int, ...] | None = None,
    seq_len: int | None = None,
    named: Iterable[tuple[str, tuple[int, ...], torch.dtype]] = (),
    spec: str = "--model",
) -> ModelInputs:
    """Meta-device inputs for ``model``.

    * ``input_shape`` (per sample, without the batch: ``(3, 224, 224)``) -> one float tensor
      ``[batch, *input_shape]``; default timm's ``pretrained_cfg`` input size.
    * ``seq_len`` -> int64 ids ``[batch, seq_len]`` passed as the model's main input (``input_ids``
      for a Hugging Face model, else positionally).
    * ``named`` -> keyword tensors with exactly the given shapes and dtypes (``--input``).

    A Hugging Face text model with neither gets an error naming ``--seq-len``; any other model with
    neither an input shape nor a timm default gets one naming ``--input-shape``.
    """
    if batch < 1:
        raise ModelSpecError(f"--batch must be a positive integer, got {batch}")
    if input_shape is not None and seq_len is not None:
        raise ModelSpecError("--input-shape and --seq-len both give the main input: use one")
    kwargs = {name: _meta_tensor(shape, dtype) for name, shape, dtype in named}
    main = getattr(model, "main_input_name", None)
    if seq_len is not None:
        if seq_len < 1:
            raise ModelSpecError(f"--seq-len must be positive, got {seq_len}")
        ids = _meta_tensor((batch, seq_len), torch.int64)
        if main in kwargs:
            raise ModelSpecError(f"--input {main} and --seq-len both give {main}: use one")
        if main:
            return ModelInputs(
                (), {main: ids, **kwargs}, f"--seq-len {seq_len}: int64 {main} [batch, seq_len]"
            )
        return ModelInputs((ids,), kwargs, f"--seq-len {seq_len}: int64 ids [batch, seq_len]")
    if input_shape is None:
        if main is not None and main in kwargs:
            return ModelInputs((), kwargs, "--input")
        if is_text_model(model):
            raise ModelSpecError(f"{spec} is a text model: give --seq-len N (int64 input_ids [batch, N])")
        input_shape = default_input_shape(model)
        if input_shape is None:
            if kwargs:
                return ModelInputs((), kwargs, "--input")
            raise ModelSpecError(
                f"{spec} has no default input size: give --input-shape C,H,W (per sample, without the batch)"
            )
        origin = "timm pretrained_cfg input_size"
    else:
        origin = "--input-shape"
    tensor = _meta_tensor((batch, *input_shape), torch.float32)
    if main and main not in kwargs and main != "input_ids":
        return ModelInputs((), {main: tensor, **kwargs}, origin)
    return ModelInputs((tensor,), kwargs, origin)


def real_inputs(inputs: ModelInputs, device: str = "cpu", seed: int = 0) -> ModelInputs:
    """The same inputs as real tensors on ``device``: floats from a seeded normal, integers zero (valid
    token ids and positions), booleans true (attend everywhere)."""
    gen = torch.Generator().manual_seed(seed)

    def real(t: torch.Tensor) -> torch.Tensor:
        if t.dtype.is_floating_point:
            return torch.randn(t.shape, generator=gen, dtype=t.dtype).to(device)
        if t.dtype == torch.bool:
            return torch.ones(t.shape, dtype=torch.bool, device=device)
        return torch.zeros(t.shape, dtype=t.dtype, device=device)

    return ModelInputs(
        tuple(real(t) for t in inputs.args), {k: real(t) for k, t in inputs.kwargs.items()}, inputs.origin
    )
