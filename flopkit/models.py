"""One entry point from what a user names to a model built on the meta device.

Every command that takes a model calls :func:`load_model`: a preset name or a YAML/JSON config
(with ``--set`` overrides), or ``--model SPEC`` naming a factory (``package.module:callable`` or
``file.py:callable``). The model is built once, on the meta device, with no parameter memory.

Errors are :class:`ModelError` (a ``ValueError``) with a one-line message naming the spec; an
exception raised inside the user's factory keeps its type and message.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flopkit.config import Config, load_config

__all__ = ["ModelError", "LoadedModel", "load_model", "load_factory", "build_from_factory", "user_code"]


class ModelError(ValueError):
    """A model spec that cannot be used; the message is one line and names the spec."""


@dataclass
class LoadedModel:
    """A model built on the meta device and where it came from.

    ``config`` is set for presets and config files, ``spec`` for ``--model``; ``label`` is what
    reports print as the model's name.
    """

    label: str
    module: nn.Module
    config: Config | None = None
    spec: str | None = None

    @property
    def is_config(self) -> bool:
        return self.config is not None

    def tokens(self) -> int:
        """Tokens per sample a FLOP walk starts from (a ViT5's ``T``, a module config's ``num_tokens``)."""
        if self.config is None:
            raise ModelError(f"--model {self.spec}: the token count follows from --input-shape")
        return self.config.tokens(self.module)

    def to_dict(self) -> dict[str, Any]:
        """What a JSON report records about the model."""
        return self.config.to_dict() if self.config is not None else {"model": self.spec}


def load_model(
    config: str | None = None,
    overrides: Mapping[str, Any] | Iterable[str] = (),
    *,
    model: str | None = None,
) -> LoadedModel:
    """Resolve ``config`` (a preset or a YAML/JSON file, with ``overrides``) or ``model`` (a factory
    spec) to a :class:`LoadedModel` built once on the meta device.

    Exactly one of ``config`` and ``model`` must be given; ``overrides`` apply to ``config`` only.
    """
    overrides = dict(overrides) if isinstance(overrides, Mapping) else list(overrides)
    if model is not None:
        if config is not None:
            raise ModelError(f"give a CONFIG ({config}) or --model ({model}), not both")
        if overrides:
            raise ModelError(f"--set applies to a preset or config file, not to --model {model}")
        module = build_from_factory(model)
        return LoadedModel(label=model, module=module, spec=model)
    if config is None:
        raise ModelError("missing CONFIG: a preset name or a YAML/JSON file (or --model SPEC)")
    cfg = load_config(config, overrides)
    return LoadedModel(label=config, module=cfg.meta_module, config=cfg)


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """``"package.module:factory"`` or ``"path/to/file.py:factory"`` -> the factory callable.

    Raises :class:`ModelError` for a malformed spec, a missing file or module, or a missing name;
    an exception raised while importing the user's module is reported with its type and message.
    """
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ModelError(f"--model must look like package.module:factory or file.py:factory, got {spec!r}")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise ModelError(f"--model {spec}: no such file {target}")
            mod_name = f"_flopkit_user_{path.stem}"
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = module
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ModelError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name is not None and (target == exc.name or target.startswith(exc.name + ".")):
            raise ModelError(f"--model {spec}: cannot import {target!r}: {exc}") from None
        raise ModelError(f"--model {spec}: importing {target} raised {_describe(exc)}") from None
    except Exception as exc:  # the user's module failed while importing
        raise ModelError(f"--model {spec}: importing {target} raised {_describe(exc)}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ModelError(f"--model {spec}: {target} has no callable {name!r}")
    return factory


def build_from_factory(spec: str) -> nn.Module:
    """Call the factory of ``spec`` under ``torch.device("meta")`` and check it returns a module."""
    factory = load_factory(spec)
    try:
        with torch.device("meta"):
            module = factory()
    except Exception as exc:  # anything the user's code raises
        raise ModelError(f"--model {spec}: the factory raised {_describe(exc)}") from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"--model {spec}: the factory returned a {type(module).__name__}, not an nn.Module")
    return module.eval()


@contextlib.contextmanager
def user_code(spec: str, what: str = "the forward"):
    """Within the block, any exception (from the user's model code) becomes a :class:`ModelError`
    naming ``spec`` and keeping the original type and message."""
    try:
        yield
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"--model {spec}: {what} raised {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
