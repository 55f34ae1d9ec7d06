"""One entry point from what a user names to a model built on the meta device, and its inputs.

* :func:`load_model` is what every command calls: a preset name or a YAML/JSON ``config`` (with
  ``overrides``), or a ``model`` spec (with ``model_args``). The model is built once, on the meta
  device.
* :func:`build_model` turns a spec (``timm:NAME``, ``hf:MODEL_TYPE``, ``package.module:callable``,
  ``file.py:callable``) and its ``model_args`` into an ``nn.Module`` on the meta device (no
  parameter memory, so a 7B model builds in seconds), in eval mode.
* :func:`model_inputs` makes the meta-device inputs: one tensor (``input_shape``, defaulting to
  timm's ``pretrained_cfg["input_size"]``), int64 token ids ``[batch, seq_len]`` (``seq_len``),
  and keyword tensors (``named``: ``(name, shape, dtype)``, parsed from ``NAME=SHAPE[:DTYPE]`` by
  :func:`parse_input`).

Every problem raises :class:`ModelError` (a ``ValueError``) with one line naming the spec; one about
a single argument raises :class:`ModelInputError`, which is also a
:class:`flopkit.checks.InputError` naming the Python argument (``model``, ``model_args``,
``input_shape``, ``seq_len``, ``named_inputs``, ``batch``). An exception raised inside a user's
factory, a library's constructor or the forward (:func:`user_code`) keeps its type and message.
timm and transformers are optional: they are imported only when a spec names them.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flopkit.checks import InputError
from flopkit.config import Config, load_config

__all__ = [
    "ModelError",
    "ModelInputError",
    "LoadedModel",
    "load_model",
    "load_factory",
    "user_code",
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


class ModelError(ValueError):
    """A model spec, a model argument or an input that cannot be used; the message is one line and
    names the spec. Arguments it names are marked in backticks (`` `seq_len` ``), as
    :func:`flopkit.checks.name_arguments` reads them."""


class ModelInputError(InputError, ModelError):
    """A :class:`ModelError` about one argument: :class:`flopkit.checks.InputError`'s ``argument``
    (the Python name: ``model``, ``model_args``, ``seq_len``, ...), ``value`` and ``detail``."""


# Keyword inputs with one entry per token: given as named inputs, their last dimension is a length.
TOKEN_INPUTS = ("input_ids", "position_ids", "token_type_ids", "attention_mask")

# Named-input dtype names (NAME=SHAPE:DTYPE) -> torch dtypes.
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
    """A parsed model spec (``model``): ``kind`` is ``"timm"``, ``"hf"``, ``"module"`` or ``"file"``."""

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
            raise ModelInputError(
                "model", repr(text), f"give a name after '{kind}:', e.g. timm:resnet50, hf:bert"
            )
        return ModelSpec(text, kind, rest)
    if not sep or not target or not name:
        raise ModelInputError(
            "model",
            repr(text),
            "must be timm:NAME, hf:MODEL_TYPE, package.module:callable or file.py:callable",
        )
    return ModelSpec(text, "file" if target.endswith(".py") else "module", target, name)


def parse_model_args(items: Iterable[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict, values read as YAML scalars like a config's ``overrides``
    (``4``, ``true``, ``null``)."""
    from flopkit.config import ConfigInputError, parse_overrides

    try:
        return parse_overrides(items, argument="model_args")
    except ConfigInputError as exc:
        raise ModelInputError(exc.argument, exc.value, exc.detail) from None


def close_names(word: str, names: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``names`` closest to ``word`` (difflib ratio >= 0.6), best first."""
    return difflib.get_close_matches(word, list(names), n=n, cutoff=0.6)


def _suggest(word: str, names: Iterable[str]) -> str:
    hits = close_names(word, names)
    return f" (did you mean {', '.join(hits)}?)" if hits else ""


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _user_error(spec: ModelSpec, exc: BaseException, what: str = "the factory") -> ModelError:
    return ModelInputError("model", spec.text, f"{what} raised {_describe(exc)}")


def _import_optional(name: str, extra: str, spec: ModelSpec):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ModelInputError(
            "model", spec.text, f"needs {name} ({exc}); install it with pip install 'flopkit[{extra}]'"
        ) from None
    except Exception as exc:  # a broken install (e.g. a torchvision built for another torch)
        raise ModelInputError(
            "model",
            spec.text,
            f"importing {name} failed: {type(exc).__name__}: {' '.join(str(exc).split())}",
        ) from None


def _load_callable(spec: ModelSpec) -> Callable[..., Any]:
    if spec.kind == "file":
        path = Path(spec.target)
        if not path.is_file():
            raise ModelInputError("model", spec.text, f"no such file {spec.target}")
        mod_name = f"_flopkit_user_{path.stem}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            raise _user_error(spec, exc, f"importing {spec.target}") from None
    else:
        try:
            module = importlib.import_module(spec.target)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (spec.target == exc.name or spec.target.startswith(exc.name + ".")):
                raise ModelInputError("model", spec.text, f"cannot import {spec.target!r}: {exc}") from None
            raise _user_error(spec, exc, f"importing {spec.target}") from None
        except Exception as exc:  # the user's module failed while importing
            raise _user_error(spec, exc, f"importing {spec.target}") from None
    factory = getattr(module, spec.name, None)
    if not callable(factory):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ModelInputError(
            "model", spec.text, f"{spec.target} has no callable {spec.name!r}{_suggest(spec.name, public)}"
        )
    return factory


def _build_timm(spec: ModelSpec, kwargs: dict[str, Any]) -> nn.Module:
    timm = _import_optional("timm", "timm", spec)
    names = timm.list_models()
    if spec.target not in names and not timm.is_model(spec.target):
        raise ModelInputError(
            "model", spec.text, f"timm has no model {spec.target!r}{_suggest(spec.target, names)}"
        )
    return timm.create_model(spec.target, pretrained=False, **kwargs)


def _build_hf(spec: ModelSpec, kwargs: dict[str, Any]) -> nn.Module:
    transformers = _import_optional("transformers", "hf", spec)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    types = list(CONFIG_MAPPING.keys())
    if spec.target not in types:
        raise ModelInputError(
            "model",
            spec.text,
            f"transformers has no model type {spec.target!r}{_suggest(spec.target, types)}",
        )
    defaults = transformers.AutoConfig.for_model(spec.target)
    for key in kwargs:
        if not hasattr(defaults, key):
            known = [k for k in defaults.to_dict() if not k.startswith("_")]
            raise ModelInputError(
                "model_args", key, f"{type(defaults).__name__} has no field {key!r}{_suggest(key, known)}"
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
    field of ``AutoConfig.for_model(type)``), or as keyword arguments to the callable; those whose
    names say what they are (an epsilon, a head count, a width, a layer count) are checked first
    (:func:`flopkit.checks.check_model_args`). ``device="cpu"``
    allocates and initialises real weights (``validate``'s fvcore run needs them).
    """
    from flopkit.checks import check_model_args

    spec = parse_model_spec(spec) if isinstance(spec, str) else spec
    kwargs = dict(model_args or {})
    check_model_args(kwargs)
    with torch.device(device):
        try:
            if spec.kind == "timm":
                model = _build_timm(spec, kwargs)
            elif spec.kind == "hf":
                model = _build_hf(spec, kwargs)
            else:
                model = _load_callable(spec)(**kwargs)
        except ModelError:
            raise
        except Exception as exc:
            what = {"timm": "timm.create_model", "hf": "transformers"}.get(spec.kind, "the factory")
            raise _user_error(spec, exc, what) from None
    if not isinstance(model, nn.Module):
        raise ModelInputError(
            "model", spec.text, f"the factory returned a {type(model).__name__}, not an nn.Module"
        )
    on_cpu = [n for n, p in (*model.named_parameters(), *model.named_buffers()) if p.device.type != device]
    if on_cpu and device == "meta":
        raise ModelInputError(
            "model",
            spec.text,
            f"{on_cpu[0]} was not created on the meta device (the factory moves it to a device or loads "
            "weights); build tensors without an explicit device",
        )
    return model.eval()


def load_factory(spec: str) -> Callable[..., Any]:
    """``"package.module:factory"`` or ``"path/to/file.py:factory"`` -> the factory callable."""
    parsed = parse_model_spec(spec)
    if parsed.kind not in ("module", "file"):
        raise ModelInputError("model", spec, f"a {parsed.kind}: spec names a model, not a factory")
    return _load_callable(parsed)


@dataclass
class LoadedModel:
    """A model built on the meta device and where it came from.

    ``config`` is set for presets and config files, ``spec`` (and ``model_args``) for a model spec;
    ``label`` is what reports print as the model's name.
    """

    label: str
    module: nn.Module
    config: Config | None = None
    spec: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)

    @property
    def is_config(self) -> bool:
        return self.config is not None

    def tokens(self) -> int:
        """Tokens per sample a FLOP walk starts from (a ViT5's ``T``, a module config's ``num_tokens``)."""
        if self.config is None:
            raise ModelInputError("model", self.spec, "the token count follows from the model's inputs")
        return self.config.tokens(self.module)

    def to_dict(self) -> dict[str, Any]:
        """What a JSON report records about the model."""
        if self.config is not None:
            return self.config.to_dict()
        return {"model": self.spec, **({"model_args": self.model_args} if self.model_args else {})}


def load_model(
    config: str | None = None,
    overrides: Mapping[str, Any] | Iterable[str] = (),
    *,
    model: str | None = None,
    model_args: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Resolve ``config`` (a preset or a YAML/JSON file, with ``overrides``) or ``model`` (a spec,
    with ``model_args``) to a :class:`LoadedModel` built once on the meta device.

    Exactly one of ``config`` and ``model`` must be given; ``overrides`` apply to ``config`` only,
    ``model_args`` to ``model`` only.
    """
    overrides = dict(overrides) if isinstance(overrides, Mapping) else list(overrides)
    if model is not None:
        if config is not None:
            raise ModelError(f"give a `config` ({config}) or `model` ({model}), not both")
        if overrides:
            raise ModelError(
                f"`overrides` applies to a preset or config file, not to `model` {model} (use `model_args` KEY=VALUE)"
            )
        module = build_model(model, model_args)
        return LoadedModel(label=model, module=module, spec=model, model_args=dict(model_args or {}))
    if model_args:
        raise ModelError("`model_args` applies to `model` only (a config takes `overrides`)")
    if config is None:
        raise ModelError("missing `config`: a preset name or a YAML/JSON file (or `model` SPEC)")
    cfg = load_config(config, overrides)
    return LoadedModel(label=config, module=cfg.meta_module, config=cfg)


@contextlib.contextmanager
def user_code(spec: str, what: str = "the forward"):
    """Within the block, any exception (from the user's model code) becomes a :class:`ModelError`
    naming ``spec`` and keeping the original type and message."""
    from flopkit.checks import InputError

    try:
        yield
    except (ModelError, InputError):  # flopkit's own errors already name what they are about
        raise
    except Exception as exc:
        message = _describe(exc)
        if "nonzero" in message:
            message = message[:200] + (
                "... (data-dependent indexing, as a mixture-of-experts loop over the experts each token "
                "was routed to, cannot run on the meta device: Hugging Face's fused experts count in their "
                "grouped_mm or batched_mm form, the default)"
            )
        if "meta tensor" in message:
            message += (
                " (flopkit runs the model on the meta device, where tensors have no values: leave out "
                "inputs the model reads, such as an attention mask it checks for padding; a full mask "
                "costs the same FLOPs)"
            )
        raise ModelInputError("model", spec, f"{what} raised {message}") from None


# ---------------------------------------------------------------------------------------- inputs


def parse_shape(text: str, argument: str = "input_shape", shown: str | None = None) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``1x3x224x224``) -> ``(1, 3, 224, 224)``; every size a positive int.
    Errors name ``argument`` and quote ``shown`` (default: ``text``)."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    shown = repr(text) if shown is None else shown
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ModelInputError(argument, shown, "expected comma-separated positive integers") from None
    if not shape or any(s <= 0 for s in shape):
        raise ModelInputError(argument, shown, "expected comma-separated positive integers")
    return shape


def parse_input(text: str) -> tuple[str, tuple[int, ...], torch.dtype]:
    """``"attention_mask=1,128:int64"`` -> ``("attention_mask", (1, 128), torch.int64)``; dtype float32 by
    default."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise ModelInputError(
            "named_inputs", repr(text), "expected NAME=SHAPE[:DTYPE], e.g. attention_mask=1,128:int64"
        )
    shape_text, _, dtype_text = rest.partition(":")
    dtype_text = dtype_text.strip() or "float32"
    if dtype_text not in INPUT_DTYPES:
        raise ModelInputError(
            "named_inputs",
            name,
            f"dtype must be one of {', '.join(INPUT_DTYPES)}, got {dtype_text!r}{_suggest(dtype_text, INPUT_DTYPES)}",
        )
    return name, parse_shape(shape_text, "named_inputs", f"{name}={shape_text}"), INPUT_DTYPES[dtype_text]


def parse_seq_lens(text: str) -> list[int]:
    """``"128,512,2048"`` -> ``[128, 512, 2048]`` (positive, in the order given, no repeats)."""
    lens = list(parse_shape(text, "seq_len"))
    if len(set(lens)) != len(lens):
        raise ModelInputError("seq_len", repr(text), "repeated length")
    return lens


def default_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """``(C, H, W)`` for an image model: the image size its patch embedding was built for (a timm
    ViT built with ``img_size=...``, whose ``pretrained_cfg`` still names the pretrained size), else
    timm's ``pretrained_cfg["input_size"]`` (or ``default_cfg``), else a Hugging Face vision config's
    ``num_channels`` and ``image_size``, else None."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    conv = getattr(embed, "proj", None)
    if isinstance(size, (tuple, list)) and len(size) == 2 and isinstance(conv, nn.Conv2d):
        return (conv.in_channels, int(size[0]), int(size[1]))
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, Mapping) and cfg.get("input_size"):
            return tuple(int(s) for s in cfg["input_size"])
    # A Hugging Face vision model (hf:vit, hf:convnext, ...): its config's image size and channels.
    config = getattr(model, "config", None)
    size, channels = getattr(config, "image_size", None), getattr(config, "num_channels", None)
    if getattr(model, "main_input_name", None) == "pixel_values" and isinstance(channels, int) and size:
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (channels, int(height), int(width))
    return None


def is_text_model(model: nn.Module) -> bool:
    """True for a Hugging Face model whose main input is ``input_ids`` (a text model)."""
    return getattr(model, "main_input_name", None) == "input_ids"


@dataclass
class ModelInputs:
    """Positional and keyword tensors (meta device) for one forward, and how they were chosen
    (``origin``: the argument that chose them marked in backticks, `` `seq_len` 128: ...``)."""

    args: tuple[torch.Tensor, ...] = ()
    kwargs: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: str = ""

    def describe(self) -> str:
        """``"x [2, 3, 224, 224] float32"`` style, one entry per tensor."""
        parts = [f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in self.args]
        parts += [
            f"{k}={list(t.shape)} {str(t.dtype).removeprefix('torch.')}"
            if isinstance(t, torch.Tensor)
            else f"{k}={_describe_object(t)}"
            for k, t in self.kwargs.items()
        ]
        return ", ".join(parts)

    @property
    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (*self.args, *self.kwargs.values()) if isinstance(t, torch.Tensor)]


def _describe_object(value: Any) -> str:
    """A non-tensor input in a report: a KV cache as its class and cached length."""
    length = getattr(value, "get_seq_length", None)
    if callable(length):
        return f"{type(value).__name__}({int(length())} cached)"
    return type(value).__name__


def _meta_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def model_inputs(
    model: nn.Module,
    *,
    batch: int = 1,
    input_shape: tuple[int, ...] | None = None,
    seq_len: int | None = None,
    named: Iterable[tuple[str, tuple[int, ...], torch.dtype]] = (),
    spec: str | None = None,
) -> ModelInputs:
    """Meta-device inputs for ``model``.

    * ``input_shape`` (per sample, without the batch: ``(3, 224, 224)``) -> one float tensor
      ``[batch, *input_shape]``; default timm's ``pretrained_cfg`` input size.
    * ``seq_len`` -> int64 ids ``[batch, seq_len]`` passed as the model's main input (``input_ids``
      for a Hugging Face model, else positionally).
    * ``named`` -> keyword tensors with exactly the given shapes and dtypes (errors call them
      ``named_inputs``).

    ``spec`` is the model's name in errors (its spec or label). A Hugging Face text model with
    neither gets an error naming ``seq_len``; any other model with neither an input shape nor a timm
    default gets one naming ``input_shape``. A ``seq_len`` beyond
    the model's positions and a ``named`` input its ``forward`` does not take raise
    :class:`flopkit.checks.InputError` (:func:`~flopkit.checks.check_seq_len`,
    :func:`~flopkit.checks.check_input_names`).
    """
    from flopkit.checks import check_input_names, check_seq_len, check_tensor_shape

    if batch < 1:
        raise ModelInputError("batch", batch, "must be a positive integer")
    if input_shape is not None and seq_len is not None:
        raise ModelError("`input_shape` and `seq_len` both give the main input: use one")
    named = list(named)
    for name, shape, _ in named:
        check_tensor_shape(shape, "named_inputs", f"{name}={','.join(map(str, shape))}")
    sample = (seq_len,) if seq_len is not None else tuple(input_shape or ())
    if math.prod(sample) > batch:  # the larger factor is the one to name
        shown = seq_len if seq_len is not None else ",".join(map(str, sample))
        check_tensor_shape((batch, *sample), "seq_len" if seq_len is not None else "input_shape", shown)
    check_tensor_shape((batch, *sample), "batch", batch)
    check_input_names(model, [name for name, _, _ in named])
    if seq_len is not None:
        check_seq_len(model, seq_len)
    main = getattr(model, "main_input_name", None)
    for name, shape, dtype in named:  # token inputs given whole: their length is the last dim
        if (name == main or name in TOKEN_INPUTS) and not dtype.is_floating_point and len(shape) >= 2:
            check_seq_len(model, shape[-1], "named_inputs", f"{name}={','.join(map(str, shape))}")
    kwargs = {name: _meta_tensor(shape, dtype) for name, shape, dtype in named}
    if seq_len is not None:
        if seq_len < 1:
            raise ModelInputError("seq_len", seq_len, "must be positive")
        ids = _meta_tensor((batch, seq_len), torch.int64)
        if main in kwargs:
            raise ModelError(f"`named_inputs` {main} and `seq_len` both give {main}: use one")
        if main:
            return ModelInputs(
                (), {main: ids, **kwargs}, f"`seq_len` {seq_len}: int64 {main} [batch, seq_len]"
            )
        return ModelInputs((ids,), kwargs, f"`seq_len` {seq_len}: int64 ids [batch, seq_len]")
    if input_shape is None:
        if main is not None and main in kwargs:
            return ModelInputs((), kwargs, "`named_inputs`")
        if is_text_model(model):
            raise _about_model(spec, "is a text model: give `seq_len` N (int64 input_ids [batch, N])")
        input_shape = default_input_shape(model)
        if input_shape is None:
            if kwargs:
                return ModelInputs((), kwargs, "`named_inputs`")
            raise _about_model(
                spec, "has no default input size: give `input_shape` C,H,W (per sample, without the batch)"
            )
        origin = "the model's default input size"
    else:
        origin = "`input_shape`"
    tensor = _meta_tensor((batch, *input_shape), torch.float32)
    if main and main not in kwargs and main != "input_ids":
        return ModelInputs((), {main: tensor, **kwargs}, origin)
    return ModelInputs((tensor,), kwargs, origin)


def _about_model(spec: str | None, detail: str) -> ModelError:
    """An error about the model named ``spec`` (None: "the model")."""
    if spec is None:
        return ModelError(f"the model {detail}")
    return ModelInputError("model", spec, detail)


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
