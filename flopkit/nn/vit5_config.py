"""``ViT5Config``: every hyper-parameter of the ViT-5 classifier, once, and the presets as data.

The one source for :class:`~flopkit.nn.ViT5`'s constructor, the presets, config files and
``key=value`` overrides (:mod:`flopkit.config` reads each field's ``kind`` from here), and the
fields a flopkit checkpoint records (:mod:`flopkit.checkpoints`).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from ._checks import check_finite, is_int
from .attention import QK_NORMS
from .rope import ROPE_PAIRINGS, ROPE_TABLES

__all__ = ["ViT5Config", "PRESETS", "OFFICIAL_LAYOUT", "SIZE", "file_fields"]

SIZE = "size"
"""The ``kind`` of a field that takes an integer or a ``[height, width]`` pair."""


def _kind(kind: Any) -> dict[str, Any]:
    """Field metadata: the type a config file or an override gives (see :func:`file_fields`)."""
    return {"kind": kind}


@dataclass(frozen=True)
class ViT5Config:
    """The ViT-5 classifier's hyper-parameters (defaults: ViT-5-Base at 224 px, nvSubquadratic's
    layout). Frozen; :meth:`replace` gives a changed copy.

    Fields with a ``kind`` in their metadata can be set from a config file or an override; the
    others (``norm_eps``, ``layer_scale_init``, the dropouts, ``use_triton``) from Python only.
    Raises ``ValueError`` naming the field and its value for an impossible size; structural checks
    (``hidden_dim % num_heads``, a square register count, image size vs patch size) are the
    modules' own and run when the model is built.
    """

    image_size: int | tuple[int, int] = field(default=224, metadata=_kind(SIZE))
    patch_size: int = field(default=16, metadata=_kind(int))
    in_channels: int = field(default=3, metadata=_kind(int))
    num_classes: int = field(default=1000, metadata=_kind(int))
    hidden_dim: int = field(default=768, metadata=_kind(int))
    depth: int = field(default=12, metadata=_kind(int))
    num_heads: int = field(default=12, metadata=_kind(int))
    mlp_ratio: float = field(default=4.0, metadata=_kind(float))
    num_registers: int = field(default=4, metadata=_kind(int))
    has_cls: bool = field(default=True, metadata=_kind(bool))
    qk_norm: Any = field(default="rmsnorm", metadata=_kind(QK_NORMS))  # or a callable(head_dim)
    layer_scale_init: float | None = 1e-4
    rope_base: float = field(default=10000.0, metadata=_kind(float))
    reg_rope_base: float = field(default=100.0, metadata=_kind(float))
    rope_pairing: str = field(default="split_half", metadata=_kind(ROPE_PAIRINGS))
    norm_eps: float = 1e-6
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    use_triton: bool = True
    cls_first: bool = field(default=False, metadata=_kind(bool))
    qkv_bias: bool = field(default=False, metadata=_kind(bool))
    proj_bias: bool = field(default=False, metadata=_kind(bool))
    mlp_bias: bool = field(default=False, metadata=_kind(bool))
    patch_bias: bool = field(default=False, metadata=_kind(bool))
    head_bias: bool = field(default=False, metadata=_kind(bool))
    rope_tables: str = field(default="flopkit", metadata=_kind(ROPE_TABLES))
    norm_cast_before_weight: bool = field(default=False, metadata=_kind(bool))

    def __post_init__(self) -> None:
        for name, low in (
            ("hidden_dim", 1),
            ("num_heads", 1),
            ("depth", 1),
            ("num_classes", 0),
            ("in_channels", 1),
        ):
            value = getattr(self, name)
            if not is_int(value) or value < low:
                kind = "a positive integer" if name in ("hidden_dim", "num_heads") else f"an integer >= {low}"
                raise ValueError(f"{name} must be {kind}, got {value!r}")
        if self.layer_scale_init is not None:
            check_finite("layer_scale_init", self.layer_scale_init)

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """Every field name, in constructor order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ViT5Config:
        """A preset (``vit5-small|base|large|xlarge``, ``*-official``) with ``overrides``."""
        if name not in PRESETS:
            raise ValueError(
                f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}{_hint(name, PRESETS)}"
            )
        return cls.from_fields({**PRESETS[name], **overrides})

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> ViT5Config:
        """Like ``ViT5Config(**fields)``, with an unknown field named (and a close match suggested)
        as a ``ValueError``."""
        known = cls.fields()
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise ValueError(f"unknown ViT5 field {unknown[0]!r}{_hint(unknown[0], known)}")
        return cls(**fields)

    def replace(self, **overrides: Any) -> ViT5Config:
        """A copy with ``overrides`` applied (unknown fields raise, as in :meth:`from_fields`)."""
        return type(self).from_fields({**self.to_dict(), **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Every field and its value (a shallow copy)."""
        return {name: getattr(self, name) for name in self.fields()}

    def changed_fields(self) -> dict[str, Any]:
        """The fields whose value differs from the default."""
        default = type(self)()
        return {k: v for k, v in self.to_dict().items() if v != getattr(default, k)}


def file_fields() -> dict[str, Any]:
    """Field name -> ``kind`` for the fields a config file or an override may set: ``int``,
    ``float``, ``bool``, :data:`SIZE` or a tuple of allowed values."""
    return {f.name: f.metadata["kind"] for f in dataclasses.fields(ViT5Config) if "kind" in f.metadata}


def _hint(word: str, choices: Any) -> str:
    match = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


# Presets are data: the fields that differ from ViT5Config's defaults (patch 16, image 224, R = 4,
# CLS, MLP x4, GELU, LayerScale 1e-4, RMSNorm eps 1e-6, QK-norm RMSNorm).
PRESETS: dict[str, dict[str, Any]] = {
    "vit5-small": {"hidden_dim": 384, "depth": 12, "num_heads": 6},
    "vit5-base": {"hidden_dim": 768, "depth": 12, "num_heads": 12},
    "vit5-large": {"hidden_dim": 1024, "depth": 24, "num_heads": 16},
    "vit5-xlarge": {"hidden_dim": 1152, "depth": 28, "num_heads": 16},
}
# The official ViT-5 layout (wangf3014/ViT-5 ``models_vit5.py``): what differs from nvSubquadratic's.
OFFICIAL_LAYOUT: dict[str, Any] = {
    "cls_first": True,
    "patch_bias": True,
    "proj_bias": True,
    "mlp_bias": True,
    "head_bias": True,
    "rope_pairing": "interleaved",
    "rope_tables": "official",
    "norm_cast_before_weight": True,
}
PRESETS.update({f"{name}-official": {**fields, **OFFICIAL_LAYOUT} for name, fields in list(PRESETS.items())})
