"""Input checks shared by every command and the Python API, run before any work.

Each check raises :class:`InputError` (a ``ValueError``) that names the argument, the value and the
limit it broke. Library errors name Python arguments (``seq_len``, ``named_inputs``, ``batch``);
a message that refers to another argument marks its name in backticks (`` `training` ``). The CLI
shows both under its own option names through :meth:`InputError.render` and
:func:`name_arguments`, with its one table from argument to option.

* :func:`check_output_path`: a file to write: its directory exists and is writable, and it is not
  a directory (checked first, before anything is read or computed).
* :func:`check_seq_len`: a sequence length within the model's positions (a Hugging Face config's
  ``max_position_embeddings``, ``n_positions``, ...).
* :func:`check_input_names`: keyword inputs that the model's ``forward`` takes.
* :func:`check_fits`: a run whose lower bound on memory (:func:`peak_bytes_lower_bound`) fits the
  free memory of its device.
* :func:`check_positive_int`, :func:`check_eps`: module arguments (``num_heads``, ``head_dim``,
  ``eps``).
"""

from __future__ import annotations

import inspect
import math
import os
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "InputError",
    "name_arguments",
    "is_int",
    "check_positive_int",
    "check_eps",
    "check_finite",
    "check_tolerance",
    "check_output_path",
    "MAX_ELEMENTS",
    "check_tensor_shape",
    "check_model_args",
    "POSITION_FIELDS",
    "position_limit",
    "check_seq_len",
    "forward_input_names",
    "check_input_names",
    "available_bytes",
    "peak_bytes_lower_bound",
    "check_fits",
]


_ARGUMENT_MARK = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def name_arguments(text: str, names: Mapping[str, str]) -> str:
    """``text`` with every argument it marks in backticks (`` `seq_len` ``) shown as ``names[argument]``;
    marked names ``names`` lacks keep their backticks."""
    return _ARGUMENT_MARK.sub(lambda m: names.get(m.group(1), m.group(0)), text)


class InputError(ValueError):
    """An argument whose value breaks a limit: ``argument`` (the Python name), ``value``, and the
    rest of the sentence in ``detail``. ``str()`` reads ``"{argument}={value}: {detail}"``
    (``"{argument}: {detail}"`` when ``value`` is None). Other arguments that ``detail`` names are
    marked in backticks (:func:`name_arguments`)."""

    def __init__(self, argument: str, value: Any, detail: str) -> None:
        self.argument, self.value, self.detail = argument, value, detail
        super().__init__(self.as_option(argument))

    def as_option(self, name: str) -> str:
        """The message with the argument shown as ``name``: an option that starts with a dash or is
        upper case is followed by a space (``NAME 100000: ...``), a Python argument by ``=``."""
        if self.value is None:
            return f"{name}: {self.detail}"
        sep = " " if name.startswith("-") or name.isupper() else "="
        return f"{name}{sep}{self.value}: {self.detail}"

    def render(self, names: Mapping[str, str]) -> str:
        """The message with its argument, and every argument ``detail`` marks, under ``names`` (a
        command line's table from argument to option); arguments it lacks keep their Python name."""
        return name_arguments(self.as_option(names.get(self.argument, self.argument)), names)


def is_int(value: object) -> bool:
    """A Python int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError("{name} must be a positive integer, got {value!r}")`` unless ``value > 0``."""
    if not is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_eps(name: str, value: object, allow_none: bool = False) -> None:
    """``value`` must be a finite float > 0 (``None`` too when ``allow_none``: the dtype's epsilon).

    A zero, negative or NaN epsilon makes ``rsqrt(mean(x**2) + eps)`` infinite or NaN on some rows,
    silently.
    """
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a finite number > 0{none}, got {value!r}")


def check_finite(name: str, value: object, positive: bool = False) -> None:
    """``value`` must be a finite real number (and > 0 with ``positive``): NaN and infinity
    propagate silently through every output they touch."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {value!r}")


def check_tolerance(value: object, argument: str = "rtol") -> None:
    """A relative tolerance: a finite number >= 0 (NaN fails every comparison, infinity passes
    every one)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0:
        raise InputError(argument, value, "a relative tolerance must be a finite number >= 0")


MAX_ELEMENTS = 2**63 - 1
"""A tensor's element count (and each size) is an int64."""


def check_tensor_shape(shape: tuple[int, ...], argument: str, value: Any) -> None:
    """A tensor of ``shape`` must be one torch can describe: every size and the element count at
    most :data:`MAX_ELEMENTS` (``argument`` and ``value`` name the option that set it)."""
    count = math.prod(shape)
    if count > MAX_ELEMENTS or any(s > MAX_ELEMENTS for s in shape):
        raise InputError(
            argument,
            value,
            f"an input of shape {list(shape)} has {count:.3g} elements, more than a tensor can hold (2^63 - 1)",
        )


def check_output_path(path: str | os.PathLike, argument: str = "path") -> Path:
    """``path`` as a Path, after checking that a file can be written there: it is not a directory,
    its directory exists and is a directory, and that directory is writable."""
    out = Path(path)
    if str(path) == "":
        raise InputError(argument, "''", "is empty; give a file name")
    if out.is_dir():
        raise InputError(argument, str(path), "is a directory; give a file name inside it")
    parent = out.parent
    if not parent.exists():
        raise InputError(argument, str(path), f"directory {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise InputError(argument, str(path), f"{parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(argument, str(path), f"directory {parent} is not writable")
    return out


MAX_LAYERS = 4096
"""The most layers a model argument may ask for: flopkit.config's limit on ``depth`` (building
4,096 blocks on the meta device takes seconds; 10^20 would never end)."""

# Model arguments whose name says what they must be (timm, Hugging Face and user factories alike).
_EPS_NAME = re.compile(r"(^|_)(eps|epsilon)$")
_COUNT_NAME = re.compile(
    r"(^|_)(heads|n_head|head_dim|hidden_size|n_embd|d_model|embed_dim|intermediate_size|dim|width)$"
)
_DEPTH_NAME = re.compile(r"(^|_)(layers|n_layer|depth)$")


def check_model_args(model_args: Mapping[str, Any], argument: str = "model_args") -> None:
    """Arguments for a model's factory or config whose names say what they are: an epsilon
    (``eps``, ``layer_norm_epsilon``, ``rms_norm_eps``) must be a finite number > 0; a head count or
    width (``num_attention_heads``, ``n_head``, ``head_dim``, ``hidden_size``, ``embed_dim``) a
    positive int; a layer count (``num_hidden_layers``, ``n_layer``, ``depth``) an int in
    0..:data:`MAX_LAYERS`. Values of
    other types are left to the model, whose own error names them."""
    for key, value in model_args.items():
        shown = f"{key}={value}"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if _EPS_NAME.search(key) and number and (not math.isfinite(value) or value <= 0):
            raise InputError(argument, shown, "an epsilon must be a finite number > 0")
        if _COUNT_NAME.search(key) and is_int(value) and value <= 0:
            raise InputError(argument, shown, "a head count or width must be a positive integer")
        if _DEPTH_NAME.search(key) and is_int(value) and not 0 <= value <= MAX_LAYERS:
            raise InputError(
                argument,
                shown,
                f"a layer count must be an integer in 0..{MAX_LAYERS:,} (a model is built layer by layer, "
                "even on the meta device)",
            )


# Hugging Face config fields that bound the sequence length, in the order they are read.
POSITION_FIELDS = (
    "max_position_embeddings",
    "n_positions",
    "max_sequence_length",
    "n_ctx",
    "max_seq_len",
    "seq_length",
)


def position_limit(model: nn.Module) -> tuple[int, str] | None:
    """``(positions, field)``: the longest sequence the model has positions for, and the config
    field that says so (:data:`POSITION_FIELDS`), or None when the model names no limit."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    aliases = getattr(config, "attribute_map", None) or {}
    for name in POSITION_FIELDS:
        value = getattr(config, name, None)
        if is_int(value) and value > 0:
            return value, aliases.get(name, name)  # the field the config stores (GPT-2: n_positions)
    return None


def check_seq_len(model: nn.Module, seq_len: int, argument: str = "seq_len", shown: Any = None) -> None:
    """``seq_len`` must be a positive int within the model's positions (:func:`position_limit`).
    ``shown`` is the value the error quotes (default ``seq_len``; a named input quotes its text)."""
    shown = seq_len if shown is None else shown
    if not is_int(seq_len) or seq_len < 1:
        raise InputError(argument, shown, "must be a positive integer")
    limit = position_limit(model)
    if limit is not None and seq_len > limit[0]:
        positions, name = limit
        raise InputError(
            argument,
            shown,
            f"a length of {seq_len:,} is more than the model's {positions:,} positions (config.{name} = {positions}); give a length "
            f"<= {positions}, or raise the limit with the model argument {name}={seq_len}",
        )


def _typed_dict_keys(annotation: Any) -> set[str]:
    """The keys of ``Unpack[SomeTypedDict]`` (a ``**kwargs`` annotation), else an empty set."""
    for arg in typing.get_args(annotation) or (annotation,):
        keys = getattr(arg, "__annotations__", None)
        if isinstance(keys, Mapping) and getattr(arg, "__total__", None) is not None:
            return set(keys)
    return set()


def forward_input_names(model: nn.Module) -> set[str] | None:
    """The keyword inputs ``model.forward`` takes, or None when it takes any (a plain ``**kwargs``).

    A Hugging Face model's ``**kwargs`` carry options (``TransformersKwargs``), not model inputs:
    only its named parameters, and the keys of a typed ``**kwargs``, count.
    """
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None
    names: set[str] = set()
    for name, param in signature.parameters.items():
        if param.kind == param.VAR_KEYWORD:
            typed = _typed_dict_keys(param.annotation)
            if not typed and not type(model).__module__.startswith("transformers."):
                return None
            names |= typed
        elif param.kind != param.VAR_POSITIONAL and param.kind != param.POSITIONAL_ONLY:
            names.add(name)
    return names


def check_input_names(model: nn.Module, names: Iterable[str], argument: str = "named_inputs") -> None:
    """Every name in ``names`` must be a keyword input of ``model.forward``
    (:func:`forward_input_names`)."""
    import difflib

    accepted = forward_input_names(model)
    if accepted is None:
        return
    for name in names:
        if name not in accepted:
            close = difflib.get_close_matches(name, sorted(accepted), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            shown = ", ".join(sorted(accepted)[:12]) + (", ..." if len(accepted) > 12 else "")
            raise InputError(
                argument,
                name,
                f"{type(model).__name__}.forward takes no input {name!r}{hint}; it takes {shown}",
            )


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def available_bytes(device: str | torch.device) -> int | None:
    """Free memory of ``device``: ``torch.cuda.mem_get_info`` on CUDA, the host's available RAM
    (``MemAvailable``, else free pages) on CPU; None when it cannot be read (meta: unbounded)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    found = _meminfo_available()
    if found is not None:
        return found
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _tensor_bytes(tree: Any) -> int:
    from torch.utils._pytree import tree_leaves

    return sum(t.numel() * t.element_size() for t in tree_leaves(tree) if isinstance(t, torch.Tensor))


def _is_parameter(t: torch.Tensor) -> bool:
    """A parameter, or a view of one (``weight.t()``): already counted with the parameters."""
    return isinstance(t, nn.Parameter) or isinstance(getattr(t, "_base", None), nn.Parameter)


def peak_bytes_lower_bound(
    model: nn.Module,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    training: bool = False,
    activation_itemsize: int | None = None,
) -> int:
    """A lower bound on the memory a forward (and with ``training`` a backward) of ``model`` needs.

    ``model`` and the inputs live on the meta device (nothing is allocated). The bound is the
    parameters and buffers (twice the parameters with ``training``: their gradients exist at the end
    of the backward), plus the largest single op of the forward, its inputs and outputs together
    (they are alive at once; parameters and their views are not counted twice). ``activation_itemsize`` (2 for bfloat16 autocast) scales the op's
    floating-point bytes from their meta dtype.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    kwargs = dict(kwargs or {})
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())

    def scaled(tree: Any) -> int:
        from torch.utils._pytree import tree_leaves

        total = 0
        for t in tree_leaves(tree):
            if isinstance(t, torch.Tensor) and not _is_parameter(t):
                size = t.element_size()
                if activation_itemsize is not None and t.dtype.is_floating_point:
                    size = min(size, activation_itemsize)
                total += t.numel() * size
        return total

    class LargestOp(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, a=(), kw=None):
            out = func(*a, **(kw or {}))
            if not getattr(func, "is_view", False):  # a view allocates nothing
                LargestOp.largest = max(LargestOp.largest, scaled((a, kw)) + scaled(out))
            return out

    with torch.no_grad(), LargestOp():
        model(*args, **kwargs)
    return params * (2 if training else 1) + buffers + LargestOp.largest


def check_fits(
    nbytes: int, device: str | torch.device, argument: str = "batch", value: Any = None, what: str = "the run"
) -> None:
    """Refuse ``nbytes`` (a lower bound, so the run cannot fit) above the free memory of ``device``
    (:func:`available_bytes`), naming ``argument`` and its ``value``."""
    free = available_bytes(device)
    if free is not None and nbytes > free:
        raise InputError(
            argument,
            value,
            f"{what} needs at least {nbytes / 2**30:,.2f} GiB on {torch.device(device)}, more than the "
            f"{free / 2**30:,.2f} GiB free; lower it",
        )
