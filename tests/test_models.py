"""load_model: the one path from a preset, config file or factory spec to a model on meta."""

from pathlib import Path

import pytest

from flopkit.models import ModelError, load_model, user_code

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FACTORY = f"{EXAMPLES / 'custom_model.py'}:build"


def test_a_preset_loads_with_its_config_on_meta():
    loaded = load_model("vit5-small", ["depth=2"])
    assert loaded.label == "vit5-small" and loaded.is_config
    assert loaded.to_dict() == {"preset": "vit5-small", "depth": 2}
    assert loaded.tokens() == 201 and len(loaded.module.blocks) == 2
    assert all(p.is_meta for p in loaded.module.parameters())


def test_a_factory_spec_builds_the_users_module_on_meta():
    loaded = load_model(model=FACTORY)
    assert loaded.label == FACTORY and not loaded.is_config and loaded.to_dict() == {"model": FACTORY}
    assert type(loaded.module).__name__ == "HybridClassifier" and not loaded.module.training
    assert all(p.is_meta for p in loaded.module.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"config": "vit5-small", "model": FACTORY}, "give a CONFIG (vit5-small) or --model"),
        ({"overrides": ["depth=2"], "model": FACTORY}, "--set applies to a preset or config file"),
        ({}, "missing CONFIG"),
        ({"model": "no_colon"}, "must look like package.module:factory"),
        ({"model": "missing_file.py:build"}, "no such file missing_file.py"),
    ],
)
def test_bad_specs_are_one_line_model_errors(kwargs, message):
    with pytest.raises(ModelError, match="^[^\n]*$") as info:
        load_model(**kwargs)
    assert message in str(info.value)


def test_user_code_names_the_spec_and_keeps_type_and_message():
    with pytest.raises(ModelError) as info, user_code("pkg:build"):
        raise ZeroDivisionError("division by zero")
    assert str(info.value) == "--model pkg:build: the forward raised ZeroDivisionError: division by zero"
