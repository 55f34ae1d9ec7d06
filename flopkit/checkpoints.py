"""Real ViT-5 checkpoints: read, recognise, convert and load both upstream layouts.

Two upstream layouts hold the same network under different names:

* **nvsubquadratic** (NVIDIA BioNeMo ``ViT5ClassificationNet``): ``patch_embed.weight``,
  ``pos_embed``, ``blocks.{i}.sequence_mixer.qkv.weight``, ``blocks.{i}.mlp.layer1.weight``,
  ``blocks.{i}.ls_attn.gamma``, ``out_norm.weight``, ``out_proj.weight`` ...; flopkit's defaults.
* **official** (wangf3014/ViT-5 ``models_vit5.py``): ``patch_embed.proj.weight`` + ``.bias``,
  ``pos_embed``, ``blocks.{i}.gamma_1``, ``blocks.{i}.attn.rope.freqs`` (a derived buffer),
  ``blocks.{i}.mlp.fc1.bias``, ``head.bias`` ...; flopkit's :data:`~flopkit.nn.vit5.OFFICIAL_LAYOUT`.

Everything here works on ``{name: tensor}`` dicts: :func:`read_checkpoint` unwraps a file,
:func:`detect_source` recognises the layout from its keys, :func:`to_flopkit` /
:func:`from_flopkit` rename (exact inverses), :func:`infer_config` reads the architecture off the
tensor shapes, and :func:`load_vit5` builds a :class:`~flopkit.nn.ViT5` with the weights.
Every problem is a :class:`CheckpointError` (a ``ValueError``) that names the tensor.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from flopkit.nn import PRESETS, ViT5, ViT5Config
from flopkit.nn.vit5_config import OFFICIAL_LAYOUT

__all__ = [
    "CheckpointError",
    "SOURCES",
    "LAYOUTS",
    "CHECKPOINT_SUFFIXES",
    "SHAPE_FIELDS",
    "is_checkpoint_path",
    "read_checkpoint",
    "detect_source",
    "to_flopkit",
    "from_flopkit",
    "official_rope_freqs",
    "infer_config",
    "matching_preset",
    "load_vit5",
    "save_checkpoint",
    "convert_checkpoint",
]

LAYOUTS = ("flopkit", "nvsubquadratic", "official")
SOURCES = ("auto", *LAYOUTS)
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
# Wrappers a training script saves around the weights, in the order they are looked for; the
# EMA copies are taken only with ``ema=True``.
_WRAPPERS = ("model", "state_dict", "module", "net", "network")
_EMA_WRAPPERS = ("model_ema", "state_dict_ema", "ema", "ema_state_dict")
_CONFIG_KEY = "flopkit_config"  # the ViT5 fields a flopkit-written checkpoint carries beside its weights


# Fields the tensors' shapes fix: a checkpoint's model cannot take another value for them
# (image_size can differ: the FLOPs at another resolution, with an interpolated position embedding).
SHAPE_FIELDS = (
    "patch_size",
    "in_channels",
    "hidden_dim",
    "depth",
    "num_heads",
    "num_registers",
    "has_cls",
    "num_classes",
    "mlp_ratio",
    "qk_norm",
    "qkv_bias",
    "proj_bias",
    "mlp_bias",
    "patch_bias",
    "head_bias",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, recognised or loaded; the message names the tensor."""


# flopkit name -> upstream name. Block entries hold "{i}"-free suffixes under "blocks.{i}.".
_TOP: dict[str, dict[str, str]] = {
    "nvsubquadratic": {
        "patch_embed.proj.weight": "patch_embed.weight",
        "patch_embed.proj.bias": "patch_embed.bias",
        "patch_embed.pos_embed": "pos_embed",
        "cls_token": "cls_token",
        "reg_token": "reg_token",
        "norm.weight": "out_norm.weight",
        "head.weight": "out_proj.weight",
        "head.bias": "out_proj.bias",
    },
    "official": {
        "patch_embed.proj.weight": "patch_embed.proj.weight",
        "patch_embed.proj.bias": "patch_embed.proj.bias",
        "patch_embed.pos_embed": "pos_embed",
        "cls_token": "cls_token",
        "reg_token": "reg_token",
        "norm.weight": "norm.weight",
        "head.weight": "head.weight",
        "head.bias": "head.bias",
    },
}
_BLOCK: dict[str, dict[str, str]] = {
    "nvsubquadratic": {
        "norm1.weight": "input_norm.weight",
        "attn.qkv.weight": "sequence_mixer.qkv.weight",
        "attn.qkv.bias": "sequence_mixer.qkv.bias",
        "attn.proj.weight": "sequence_mixer.proj.weight",
        "attn.proj.bias": "sequence_mixer.proj.bias",
        "attn.q_norm.weight": "sequence_mixer.q_norm.weight",
        "attn.k_norm.weight": "sequence_mixer.k_norm.weight",
        "ls1.gamma": "ls_attn.gamma",
        "norm2.weight": "mlp_norm.weight",
        "mlp.fc1.weight": "mlp.layer1.weight",
        "mlp.fc1.bias": "mlp.layer1.bias",
        "mlp.fc2.weight": "mlp.layer2.weight",
        "mlp.fc2.bias": "mlp.layer2.bias",
        "ls2.gamma": "ls_mlp.gamma",
    },
    "official": {
        "norm1.weight": "norm1.weight",
        "attn.qkv.weight": "attn.qkv.weight",
        "attn.qkv.bias": "attn.qkv.bias",
        "attn.proj.weight": "attn.proj.weight",
        "attn.proj.bias": "attn.proj.bias",
        "attn.q_norm.weight": "attn.q_norm.weight",
        "attn.k_norm.weight": "attn.k_norm.weight",
        "ls1.gamma": "gamma_1",
        "norm2.weight": "norm2.weight",
        "mlp.fc1.weight": "mlp.fc1.weight",
        "mlp.fc1.bias": "mlp.fc1.bias",
        "mlp.fc2.weight": "mlp.fc2.weight",
        "mlp.fc2.bias": "mlp.fc2.bias",
        "ls2.gamma": "gamma_2",
    },
}
# Derived buffers the official model saves (``VisionRotaryEmbedding.freqs``): checked, not loaded.
_OFFICIAL_ROPE_BUFFERS = {"attn.rope.freqs": "rope_base", "attn.rope_reg.freqs": "reg_rope_base"}
# A key that only one layout has, to recognise it by.
_MARKERS = {
    "nvsubquadratic": ("sequence_mixer.qkv.weight", "out_proj.weight", "input_norm.weight"),
    "official": ("gamma_1", "attn.rope.freqs", "patch_embed.proj.weight"),
    "flopkit": ("ls1.gamma", "patch_embed.pos_embed", "attn.qkv.weight"),
}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_BLOCK_ANYWHERE = re.compile(r"(?:^|\.)(blocks\.\d+\.)")


# ---------------------------------------------------------------------------------------- reading
def is_checkpoint_path(source: str | Path) -> bool:
    """True when ``source`` names a weights file (by suffix: ``.pth .pt .bin .ckpt .safetensors``)."""
    return Path(str(source)).suffix.lower() in CHECKPOINT_SUFFIXES


def read_checkpoint(
    path_or_state_dict: str | Path | Mapping[str, Any], *, ema: bool = False, shapes_only: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(tensors, flopkit_config)`` from a file or an in-memory state dict.

    ``shapes_only``: a ``.safetensors`` file's weights come back as meta tensors (shape and dtype,
    no data read), except the small official RoPE buffers; a torch file is memory-mapped anyway,
    so only the tensors used are read.

    Files: ``.safetensors`` (read with ``safetensors``), else a ``torch.save`` file read with
    ``weights_only=True`` (no code runs). A ``model`` / ``state_dict`` / ``module`` wrapper is
    unwrapped (an EMA wrapper such as ``model_ema`` with ``ema=True``), and a ``module.`` (DDP),
    ``_orig_mod.`` (``torch.compile``) or other common prefix before ``blocks.`` is removed.
    ``flopkit_config`` is the ViT5 fields a flopkit-written file records, else None.
    """
    config: dict[str, Any] | None = None
    if isinstance(path_or_state_dict, (str, Path)):
        path = Path(path_or_state_dict)
        if not path.exists():
            raise CheckpointError(f"{path}: no such file")
        if path.is_dir():
            raise CheckpointError(f"{path}: is a directory, expected a .pth/.pt/.safetensors file")
        if path.suffix.lower() == ".safetensors":
            data, config = _read_safetensors(path, shapes_only)
        else:
            data = _torch_load(path)
        where = str(path)
    else:
        data, where = path_or_state_dict, "state dict"
    if not isinstance(data, Mapping):
        raise CheckpointError(
            f"{where}: expected a mapping of tensor names to tensors, got {type(data).__name__}"
        )
    if isinstance(data.get(_CONFIG_KEY), Mapping):
        config = dict(data[_CONFIG_KEY])
    tensors = _unwrap(data, where, ema)
    return _strip_prefix(tensors), config


def _torch_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``; memory-mapped when the file's format allows it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # legacy (pre-zip) files cannot be memory-mapped
            raise CheckpointError(f"{path}: cannot read as a torch checkpoint: {_first_line(exc)}") from None
    except Exception as exc:  # torch raises several types for a bad or foreign file
        raise CheckpointError(f"{path}: cannot read as a torch checkpoint: {_first_line(exc)}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read as a torch checkpoint: {_first_line(exc)}") from None


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_safetensors(
    path: Path, shapes_only: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    try:
        from safetensors import safe_open
    except ImportError:
        raise ImportError(
            "reading .safetensors needs the safetensors package: pip install safetensors"
        ) from None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {}
            for name in f.keys():  # noqa: SIM118 (the handle is not iterable)
                if shapes_only and not name.endswith(tuple(_OFFICIAL_ROPE_BUFFERS)):
                    piece = f.get_slice(name)
                    dtype = _SAFETENSORS_DTYPES.get(piece.get_dtype(), torch.float32)
                    tensors[name] = torch.empty(piece.get_shape(), dtype=dtype, device="meta")
                else:
                    tensors[name] = f.get_tensor(name)
    except Exception as exc:  # safetensors raises its own error type for a malformed header
        raise CheckpointError(f"{path}: cannot read as safetensors: {_first_line(exc)}") from None
    config = json.loads(meta[_CONFIG_KEY]) if _CONFIG_KEY in meta else None
    return tensors, config


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _unwrap(data: Mapping[str, Any], where: str, ema: bool) -> dict[str, torch.Tensor]:
    wrappers = _EMA_WRAPPERS if ema else _WRAPPERS
    for name in wrappers:
        inner = data.get(name)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            return _unwrap(inner, f"{where}[{name!r}]", ema=False)
    if ema:
        raise CheckpointError(f"{where}: ema=True but no EMA weights (looked for {', '.join(_EMA_WRAPPERS)})")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{where}: no tensors found (top-level keys: {', '.join(map(str, list(data)[:8]))}); "
            f"expected a state dict or one wrapped in {', '.join(_WRAPPERS)}"
        )
    return tensors


def _strip_prefix(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the prefix (``module.``, ``_orig_mod.``, ``model.`` ...) that sits before ``blocks.``;
    tensors outside it belong to something else in the training wrapper and are left out."""
    found = next((m for k in tensors if (m := _BLOCK_ANYWHERE.search(k))), None)
    if found is None:
        return tensors
    prefix = found.string[: found.start(1)]
    if not prefix:
        return tensors
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


# ------------------------------------------------------------------------------- recognising
def detect_source(tensors: Mapping[str, torch.Tensor]) -> str:
    """``"nvsubquadratic"``, ``"official"`` or ``"flopkit"`` from the keys; CheckpointError if none fits."""
    names = list(tensors)
    scores = {
        layout: sum(any(n.endswith(m) for n in names) for m in markers)
        for layout, markers in _MARKERS.items()
    }
    best = max(scores, key=scores.get)
    ties = [layout for layout, s in scores.items() if s == scores[best]]
    if scores[best] == 0 or len(ties) > 1:
        raise CheckpointError(
            "cannot tell the checkpoint's layout from its keys (first: "
            f"{', '.join(names[:4])}); give source='nvsubquadratic', 'official' or 'flopkit'"
        )
    return best


def _resolve_source(tensors: Mapping[str, torch.Tensor], source: str) -> str:
    if source not in SOURCES:
        raise CheckpointError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    return detect_source(tensors) if source == "auto" else source


# ------------------------------------------------------------------------------- renaming
def to_flopkit(tensors: Mapping[str, torch.Tensor], source: str = "auto") -> dict[str, torch.Tensor]:
    """Rename an upstream state dict to flopkit's keys (tensors are shared, not copied).

    The official layout's derived RoPE buffers (``attn.rope.freqs``) are dropped here; use
    :func:`infer_config` to read the bases from them. An unknown key is a CheckpointError.
    """
    source = _resolve_source(tensors, source)
    if source == "flopkit":
        return dict(tensors)
    top = {v: k for k, v in _TOP[source].items()}
    block = {v: k for k, v in _BLOCK[source].items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        match = _BLOCK_KEY.match(name)
        if match and source == "official" and match.group(2) in _OFFICIAL_ROPE_BUFFERS:
            continue
        if match and match.group(2) in block:
            out[f"blocks.{match.group(1)}.{block[match.group(2)]}"] = tensor
        elif not match and name in top:
            out[top[name]] = tensor
        else:
            raise CheckpointError(
                f"unexpected tensor {name!r} {tuple(tensor.shape)} in a {source} checkpoint"
            )
    return out


def official_rope_freqs(head_dim: int, base: float) -> torch.Tensor:
    """The official ``VisionRotaryEmbedding(head_dim // 2, theta=base).freqs`` buffer, ``[D/4]`` float32."""
    half = head_dim // 2
    return 1.0 / (float(base) ** (torch.arange(0, half, 2)[: half // 2].float() / half))


def from_flopkit(
    tensors: Mapping[str, torch.Tensor],
    target: str,
    *,
    rope_base: float = 10000.0,
    reg_rope_base: float = 100.0,
) -> dict[str, torch.Tensor]:
    """Rename a flopkit state dict to ``target``'s keys: the exact inverse of :func:`to_flopkit`.

    For ``"official"`` the derived ``attn.rope.freqs`` / ``attn.rope_reg.freqs`` buffers are
    added from ``rope_base`` / ``reg_rope_base`` and the head size (read off ``q_norm``).
    """
    if target not in LAYOUTS:
        raise CheckpointError(f"target must be one of {', '.join(LAYOUTS)}, got {target!r}")
    if target == "flopkit":
        return dict(tensors)
    top, block = _TOP[target], _BLOCK[target]
    out: dict[str, torch.Tensor] = {}
    head_dim = None
    for name, tensor in tensors.items():
        match = _BLOCK_KEY.match(name)
        if match and match.group(2) in block:
            out[f"blocks.{match.group(1)}.{block[match.group(2)]}"] = tensor
            if match.group(2) == "attn.q_norm.weight":
                head_dim = tensor.shape[-1]
        elif not match and name in top:
            out[top[name]] = tensor
        else:
            raise CheckpointError(f"tensor {name!r} has no place in the {target} layout")
    if target == "official":
        _check_official_exportable(tensors)
        if head_dim is None:
            raise CheckpointError(
                "the official layout needs QK-norm (blocks.0.attn.q_norm.weight) to size its RoPE"
            )
        depth = 1 + max(int(_BLOCK_KEY.match(n).group(1)) for n in tensors if _BLOCK_KEY.match(n))
        for i in range(depth):
            out[f"blocks.{i}.attn.rope.freqs"] = official_rope_freqs(head_dim, rope_base)
            if "reg_token" in tensors:  # upstream builds no register RoPE without registers
                out[f"blocks.{i}.attn.rope_reg.freqs"] = official_rope_freqs(head_dim, reg_rope_base)
    return out


# What an upstream layout's code can express: a checkpoint whose fields differ would compute a
# different function there, so converting it is refused rather than silently wrong.
_EXPRESSIBLE: dict[str, dict[str, tuple[Any, ...]]] = {
    "official": {
        "has_cls": (True,),
        "qk_norm": ("rmsnorm",),
        "rope_pairing": ("interleaved",),
        "patch_bias": (True,),
        "proj_bias": (True,),
        "mlp_bias": (True,),
        "head_bias": (True,),
        "norm_cast_before_weight": (True,),
    },
    "nvsubquadratic": {
        "has_cls": (True,),  # its readout='gap' pools before the norm, flopkit after
        "qk_norm": (None, "rmsnorm"),
        "rope_pairing": ("split_half",),
        "patch_bias": (False,),
        "head_bias": (False,),
        "norm_cast_before_weight": (False,),
    },
}


def _check_expressible(fields: Mapping[str, Any], target: str) -> None:
    defaults = ViT5Config().to_dict()
    for key, allowed in _EXPRESSIBLE.get(target, {}).items():
        have = fields.get(key, defaults[key])
        if have not in allowed:
            needed = " or ".join(repr(v) for v in allowed)
            raise CheckpointError(
                f"the {target} layout needs {key}={needed}, this checkpoint has {key}={have!r}: "
                f"{target}'s code would compute a different function with these weights"
            )


def _check_official_exportable(tensors: Mapping[str, torch.Tensor]) -> None:
    """The official model always has a CLS token and these biases; say which one is missing."""
    needed = ["cls_token", "patch_embed.proj.bias", "head.bias"]
    needed += [f"blocks.0.{k}" for k in ("attn.proj.bias", "mlp.fc1.bias", "mlp.fc2.bias")]
    for key in needed:
        if key not in tensors:
            raise CheckpointError(
                f"the official layout needs {key!r}, which this checkpoint lacks: it is not an "
                "official-layout model (convert it to flopkit instead)"
            )


# ------------------------------------------------------------------------------- architecture
def _shape(tensors: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in tensors:
        raise CheckpointError(f"missing tensor {key!r} (flopkit name); cannot infer the architecture")
    return tuple(tensors[key].shape)


def _official_base(freqs: torch.Tensor, head_dim: int, key: str) -> float:
    """The base ``b`` of ``freqs_j = b**(-4j/D)``, read off ``freqs[1]`` and checked against all of them."""
    if freqs.numel() < 2:
        raise CheckpointError(
            f"{key}: needs at least 2 frequencies to read the RoPE base, got {freqs.numel()}"
        )
    base = float(f"{float(freqs[1].double() ** (-head_dim / 4)):.6g}")
    if not torch.allclose(official_rope_freqs(head_dim, base), freqs.float().cpu(), rtol=1e-6, atol=0):
        raise CheckpointError(f"{key}: frequencies are not base**(-4j/D) for any base (read {base:g})")
    return base


def infer_config(
    path_or_state_dict: str | Path | Mapping[str, Any], source: str = "auto", *, ema: bool = False
) -> dict[str, Any]:
    """ViT5 fields of a checkpoint: the layout's options plus everything the shapes tell.

    Width, depth, heads (from the QK-norm weight; from the RoPE buffers in an official file),
    MLP ratio, registers, CLS, patch size, image size (a square patch grid, from the position
    embedding), input channels, classes, and which biases exist. RoPE bases: from the official
    file's buffers, else the defaults (10000, 100). A flopkit-written file's recorded fields win.
    """
    raw, recorded = read_checkpoint(path_or_state_dict, ema=ema, shapes_only=True)
    source = _resolve_source(raw, source)
    tensors = to_flopkit(raw, source)
    fields = _shape_fields(tensors)
    if source == "nvsubquadratic" and not fields["has_cls"]:
        # Its "gap" readout averages the patches and then normalises; flopkit normalises each patch
        # and then averages (docs/vit5.md): loading would silently compute another function.
        raise CheckpointError(
            "no tensor 'cls_token': an nvSubquadratic readout='gap' model (mean over patches, then "
            "out_norm), which flopkit's ViT5 (norm, then mean) does not compute; only readout='cls' loads"
        )
    if source == "official":
        fields.update(OFFICIAL_LAYOUT)
        fields["cls_first"] = True
        head_dim = fields["hidden_dim"] // fields["num_heads"]
        for suffix, field in _OFFICIAL_ROPE_BUFFERS.items():
            key = f"blocks.0.{suffix}"
            if key in raw:
                fields[field] = _official_base(raw[key], head_dim, key)
    for name, flag in (("patch_bias", "patch_embed.proj.bias"), ("head_bias", "head.bias")):
        fields[name] = flag in tensors
    for name, flag in (
        ("qkv_bias", "attn.qkv.bias"),
        ("proj_bias", "attn.proj.bias"),
        ("mlp_bias", "mlp.fc1.bias"),
    ):
        fields[name] = f"blocks.0.{flag}" in tensors
    if recorded:
        fields.update(recorded)
    return fields


def _shape_fields(t: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    C, in_channels, ph, pw = _conv_shape(t)
    n = _shape(t, "patch_embed.pos_embed")
    if len(n) != 3 or n[0] != 1 or n[2] != C:
        raise CheckpointError(f"tensor 'patch_embed.pos_embed' has shape {n}, expected (1, N, {C})")
    side = math.isqrt(n[1])
    if side * side != n[1]:
        raise CheckpointError(
            f"tensor 'patch_embed.pos_embed' holds {n[1]} patches, not a square grid; pass image_size=[H, W]"
        )
    blocks = sorted({int(m.group(1)) for k in t if (m := _BLOCK_KEY.match(k))})
    if not blocks:
        raise CheckpointError("no tensors 'blocks.{i}.*': not a ViT-5 checkpoint")
    if blocks != list(range(len(blocks))):
        missing = sorted(set(range(blocks[-1] + 1)) - set(blocks))
        raise CheckpointError(f"missing block {missing[0]}: found blocks {blocks[0]}..{blocks[-1]} with gaps")
    fields: dict[str, Any] = {
        "image_size": side * ph,
        "patch_size": ph,
        "in_channels": in_channels,
        "hidden_dim": C,
        "depth": len(blocks),
        "num_registers": _shape(t, "reg_token")[1] if "reg_token" in t else 0,
        "has_cls": "cls_token" in t,
        "num_classes": _shape(t, "head.weight")[0] if "head.weight" in t else 0,
        "mlp_ratio": _shape(t, "blocks.0.mlp.fc1.weight")[0] / C,
        "layer_scale_init": 1e-4 if "blocks.0.ls1.gamma" in t else None,
    }
    if "blocks.0.attn.q_norm.weight" in t:
        q = _shape(t, "blocks.0.attn.q_norm.weight")
        head_dim = q[-1]
        if C % head_dim:
            raise CheckpointError(
                f"tensor 'blocks.0.attn.q_norm.weight' {q}: {head_dim} does not divide width {C}"
            )
        fields["num_heads"] = C // head_dim
        fields["qk_norm"] = "rmsnorm" if len(q) == 1 else "headnorm"
    else:
        fields["qk_norm"] = None
        fields["num_heads"] = None  # not in the shapes: the caller must give it
    return fields


def _conv_shape(t: Mapping[str, torch.Tensor]) -> tuple[int, int, int, int]:
    shape = _shape(t, "patch_embed.proj.weight")
    if len(shape) != 4 or shape[2] != shape[3]:
        raise CheckpointError(f"tensor 'patch_embed.proj.weight' has shape {shape}, expected (C, C_in, P, P)")
    return shape  # type: ignore[return-value]


def matching_preset(fields: Mapping[str, Any]) -> str | None:
    """The preset whose model these fields build (extra fields at their defaults), else None."""
    defaults = ViT5Config().to_dict()
    resolved = {**defaults, **fields}
    for name, preset in PRESETS.items():
        if {**defaults, **preset} == resolved:
            return name
    return None


# ------------------------------------------------------------------------------- loading
def load_vit5(
    path_or_state_dict: str | Path | Mapping[str, Any],
    source: str = "auto",
    *,
    ema: bool = False,
    **overrides: Any,
) -> ViT5:
    """A :class:`~flopkit.nn.ViT5` with the checkpoint's architecture and weights (float32, CPU).

    ``overrides`` are ViT5 fields that the shapes cannot tell (``num_heads`` without QK-norm,
    ``rope_base`` in an nvSubquadratic file) or runtime ones (``use_triton``, dropouts).
    Every tensor must match: a missing, unexpected or wrongly shaped one is a CheckpointError
    naming it (flopkit's name, with the upstream name beside it).
    """
    raw, recorded = read_checkpoint(path_or_state_dict, ema=ema)
    source = _resolve_source(raw, source)
    fields = infer_config(raw, source)
    if recorded:
        fields.update(recorded)
    fields.update(overrides)
    if fields.get("num_heads") is None:
        raise CheckpointError(
            "this checkpoint has no QK-norm weight to read the head count from; pass num_heads="
        )
    try:
        model = ViT5(**fields)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot build the checkpoint's ViT5 ({fields}): {exc}") from None
    tensors = to_flopkit(raw, source)
    expected = model.state_dict()
    upstream = {} if source == "flopkit" else _upstream_names(source)
    for key, value in expected.items():
        if key not in tensors:
            raise CheckpointError(
                f"missing tensor {key!r}{_alias(key, upstream)}, shape {tuple(value.shape)}"
            )
        if tensors[key].shape != value.shape:
            raise CheckpointError(
                f"tensor {key!r}{_alias(key, upstream)} has shape {tuple(tensors[key].shape)}, "
                f"expected {tuple(value.shape)}"
            )
    for key in tensors:
        if key not in expected:
            raise CheckpointError(
                f"unexpected tensor {key!r}{_alias(key, upstream)} for {model.extra_repr()}"
            )
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    return model


def _upstream_names(source: str) -> dict[str, str]:
    return {**_TOP[source], **{f"*.{k}": v for k, v in _BLOCK[source].items()}}


def _alias(key: str, upstream: Mapping[str, str]) -> str:
    match = _BLOCK_KEY.match(key)
    name = (
        f"blocks.{match.group(1)}.{upstream[f'*.{match.group(2)}']}"
        if match and f"*.{match.group(2)}" in upstream
        else upstream.get(key)
    )
    return f" (upstream {name!r})" if name and name != key else ""


# ------------------------------------------------------------------------------- writing
def save_checkpoint(
    tensors: Mapping[str, torch.Tensor], path: str | Path, config: Mapping[str, Any] | None = None
) -> Path:
    """Write ``tensors`` to ``.safetensors`` (by suffix) or a ``torch.save`` file.

    ``config`` (flopkit's ViT5 fields) is recorded beside the weights, in the safetensors
    metadata or as a ``flopkit_config`` entry, so that the file builds the same model back.
    """
    from flopkit.checks import check_output_path

    path = check_output_path(path, "path")
    if not is_checkpoint_path(path):
        raise CheckpointError(f"{path}: output must end in {', '.join(CHECKPOINT_SUFFIXES)}")
    data = {k: v.contiguous() for k, v in tensors.items()}
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        metadata = {_CONFIG_KEY: json.dumps(dict(config))} if config else None
        try:
            save_file(data, str(path), metadata=metadata)
        except SafetensorError as exc:  # not an OSError: one line instead of a traceback
            raise OSError(f"{path}: writing failed: {' '.join(str(exc).split())}") from None
    else:
        torch.save({"state_dict": data, _CONFIG_KEY: dict(config)} if config else data, path)
    return path


def convert_checkpoint(
    src: str | Path | Mapping[str, Any],
    dst: str | Path,
    source: str = "auto",
    target: str = "flopkit",
    *,
    ema: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Convert ``src`` (any layout) to ``target``'s keys and write ``dst``; returns ``(source, fields)``.

    Converting to flopkit records the inferred ViT5 fields in the file. Converting to an
    upstream layout checks the weights fit it (the official one needs its biases and CLS).
    ``dst`` is checked first (:func:`flopkit.checks.check_output_path`).
    """
    from flopkit.checks import check_output_path

    check_output_path(dst, "dst")  # before reading: a bad destination fails at once
    if target not in LAYOUTS:
        raise CheckpointError(f"target must be one of {', '.join(LAYOUTS)}, got {target!r}")
    raw, recorded = read_checkpoint(src, ema=ema)
    source = _resolve_source(raw, source)
    fields = {**infer_config(raw, source), **(recorded or {})}
    tensors = to_flopkit(raw, source)
    _check_expressible(fields, target)
    if target == "flopkit":
        save_checkpoint(tensors, dst, fields)
    else:
        out = from_flopkit(
            tensors,
            target,
            rope_base=fields.get("rope_base", 10000.0),
            reg_rope_base=fields.get("reg_rope_base", 100.0),
        )
        save_checkpoint(out, dst)
    return source, fields
