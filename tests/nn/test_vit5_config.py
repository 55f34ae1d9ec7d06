"""ViT5Config: the one source of ViT5's fields, presets and the config-file fields."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from flopkit import ViT5, ViT5Config
from flopkit.config import MODEL_FIELDS, load_config
from flopkit.nn import PRESETS


def test_config_and_keyword_construction_build_the_same_model():
    fields = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "num_classes": 5,
    }
    with torch.device("meta"):
        by_config = ViT5(ViT5Config(**fields))
        by_keywords = ViT5(**fields)
        overridden = ViT5(ViT5Config(**{**fields, "depth": 5}), depth=2)
    shapes = {k: v.shape for k, v in by_keywords.state_dict().items()}
    assert {k: v.shape for k, v in by_config.state_dict().items()} == shapes
    assert {k: v.shape for k, v in overridden.state_dict().items()} == shapes
    assert by_config.config == by_keywords.config == overridden.config == ViT5Config(**fields)


def test_the_config_is_frozen_and_replace_returns_a_copy():
    config = ViT5Config.from_preset("vit5-small")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.depth = 3  # type: ignore[misc]
    deeper = config.replace(depth=24)
    assert (config.depth, deeper.depth, deeper.hidden_dim) == (12, 24, 384)


def test_unknown_fields_name_the_field_and_a_close_match():
    with pytest.raises(ValueError, match=r"unknown ViT5 field 'hidden_dimm' \(did you mean 'hidden_dim'\?\)"):
        ViT5(hidden_dimm=3)
    with pytest.raises(ValueError, match="unknown preset 'vit5-smal'.*did you mean 'vit5-small'"):
        ViT5Config.from_preset("vit5-smal")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("hidden_dim", 0, "hidden_dim must be a positive integer, got 0"),
        ("num_heads", 2.0, "num_heads must be a positive integer, got 2.0"),
        ("depth", 0, "depth must be an integer >= 1, got 0"),
        ("num_classes", -1, "num_classes must be an integer >= 0, got -1"),
        ("in_channels", True, "in_channels must be an integer >= 1, got True"),
    ],
)
def test_impossible_sizes_raise_before_any_module_is_built(field, value, message):
    with pytest.raises(ValueError, match=message):
        ViT5Config(**{field: value})


def test_presets_are_configs_that_differ_from_the_defaults_in_their_listed_fields_only():
    for name, fields in PRESETS.items():
        assert ViT5Config.from_preset(name).changed_fields() == {
            k: v for k, v in fields.items() if v != getattr(ViT5Config(), k)
        }


def test_config_file_fields_come_from_the_dataclass():
    kinds = {f.name: f.metadata.get("kind") for f in dataclasses.fields(ViT5Config)}
    assert set(MODEL_FIELDS) <= set(kinds)
    assert {k: v for k, v in kinds.items() if v is not None} == MODEL_FIELDS
    # A settable field reaches the model; a Python-only one is refused by name.
    assert load_config("vit5-small", ["mlp_ratio=2"]).meta_module.config.mlp_ratio == 2.0
    with pytest.raises(ValueError, match="unknown key 'use_triton'"):
        load_config("vit5-small", ["use_triton=false"])


def test_the_modules_do_not_import_checkpoint_loading_or_configs():
    """Checkpoint loading and config files sit above the model: nothing under flopkit/nn imports
    them, so there is no import circle through ViT5."""
    nn_dir = Path(__file__).resolve().parents[2] / "flopkit" / "nn"
    imported = set()
    for path in nn_dir.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert not {
        m for m in imported if m.startswith(("flopkit.checkpoints", "flopkit.config", "flopkit.models"))
    }
