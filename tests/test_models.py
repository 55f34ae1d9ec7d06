"""flopkit.models: load_model (the one path from a preset, config file or spec to a model on meta),
model specs, model arguments and inputs, without timm or transformers (tests/models has those)."""

from pathlib import Path

import pytest
import torch
from torch import nn

from flopkit.models import (
    ModelError,
    ModelInputError,
    build_model,
    load_model,
    model_inputs,
    parse_input,
    parse_model_spec,
    parse_seq_lens,
    parse_shape,
    real_inputs,
    user_code,
)

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
        ({"config": "vit5-small", "model": FACTORY}, "give a `config` (vit5-small) or `model`"),
        ({"overrides": ["depth=2"], "model": FACTORY}, "`overrides` applies to a preset or config file"),
        ({}, "missing `config`"),
        ({"model": "no_colon"}, "package.module:callable or file.py:callable"),
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
    assert str(info.value) == "model=pkg:build: the forward raised ZeroDivisionError: division by zero"


FACTORY_FILE = """
import torch
from torch import nn

def mlp(width=8, depth=2):
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])

def broken():
    raise RuntimeError("weights missing")

def on_cpu():
    return nn.Linear(2, 2, device="cpu")

def not_a_module():
    return 3
"""


@pytest.fixture
def factories(tmp_path):
    path = tmp_path / "factories.py"
    path.write_text(FACTORY_FILE)
    return path


@pytest.mark.parametrize(
    ("text", "kind", "target", "name"),
    [
        ("timm:resnet50", "timm", "resnet50", ""),
        ("hf:bert", "hf", "bert", ""),
        ("pkg.mod:build", "module", "pkg.mod", "build"),
        ("models/net.py:build", "file", "models/net.py", "build"),
    ],
)
def test_parse_model_spec(text, kind, target, name):
    spec = parse_model_spec(text)
    assert (spec.kind, spec.target, spec.name) == (kind, target, name)


@pytest.mark.parametrize("text", ["resnet50", "timm:", "pkg.mod:", ":build"])
def test_bad_model_specs_say_the_accepted_forms(text):
    with pytest.raises(ModelInputError, match="^model=") as info:
        parse_model_spec(text)
    assert info.value.argument == "model"


def test_factory_gets_model_args_and_builds_on_meta(factories):
    model = build_model(f"{factories}:mlp", {"width": 4, "depth": 3})
    assert len(model) == 3 and model[0].weight.shape == (4, 4)
    assert all(p.is_meta for p in model.parameters()) and not model.training


def test_errors_inside_the_factory_name_the_spec_and_keep_the_message(factories):
    with pytest.raises(
        ModelError, match=r"^model=.*:broken: the factory raised RuntimeError: weights missing"
    ):
        build_model(f"{factories}:broken")
    with pytest.raises(ModelError, match="unexpected keyword argument 'widht'"):
        build_model(f"{factories}:mlp", {"widht": 4})
    with pytest.raises(ModelError, match="not created on the meta device"):
        build_model(f"{factories}:on_cpu")
    with pytest.raises(ModelError, match="the factory returned a int, not an nn.Module"):
        build_model(f"{factories}:not_a_module")


def test_unknown_callable_suggests_close_names(factories):
    with pytest.raises(ModelError, match=r"no callable 'mpl' \(did you mean mlp\?\)"):
        build_model(f"{factories}:mpl")


def test_shapes_inputs_and_lengths_parse_strictly():
    assert parse_shape("3,224,224") == (3, 224, 224) and parse_shape("3x32x32") == (3, 32, 32)
    for bad in ("3,a", "0,2", ""):
        with pytest.raises(ModelInputError, match="^input_shape="):
            parse_shape(bad)
    assert parse_input("attention_mask=1,128:int64") == ("attention_mask", (1, 128), torch.int64)
    assert parse_input("pixel_values=1,3,8,8") == ("pixel_values", (1, 3, 8, 8), torch.float32)
    with pytest.raises(ModelError, match=r"dtype must be one of .*did you mean int64"):
        parse_input("mask=1,4:int46")
    with pytest.raises(ModelError, match="NAME=SHAPE"):
        parse_input("1,4")
    assert parse_seq_lens("128,512") == [128, 512]
    with pytest.raises(ModelError, match="repeated"):
        parse_seq_lens("128,128")


class Images(nn.Module):
    pretrained_cfg = {"input_size": (3, 32, 32)}

    def forward(self, x):
        return x


class Text(nn.Module):
    main_input_name = "input_ids"

    def forward(self, input_ids, attention_mask=None):
        return input_ids


def test_default_input_comes_from_pretrained_cfg_and_batch_is_prepended():
    inputs = model_inputs(Images(), batch=4)
    assert inputs.args[0].shape == (4, 3, 32, 32) and inputs.args[0].is_meta
    assert inputs.origin == "the model's default input size"
    assert model_inputs(Images(), batch=2, input_shape=(3, 8, 8)).args[0].shape == (2, 3, 8, 8)


def test_text_models_take_int64_ids_and_keyword_inputs():
    inputs = model_inputs(Text(), batch=2, seq_len=16, named=[parse_input("attention_mask=2,16:int64")])
    assert inputs.kwargs["input_ids"].shape == (2, 16) and inputs.kwargs["input_ids"].dtype == torch.int64
    assert inputs.kwargs["attention_mask"].dtype == torch.int64
    with pytest.raises(ModelError, match="give `seq_len` N"):
        model_inputs(Text())
    with pytest.raises(ModelError, match="give `input_shape` C,H,W"):
        model_inputs(nn.Linear(2, 2))
    with pytest.raises(ModelError, match="use one"):
        model_inputs(Text(), input_shape=(3,), seq_len=4)


def test_real_inputs_keep_shapes_and_give_valid_ids():
    inputs = model_inputs(Text(), batch=2, seq_len=5, named=[parse_input("attention_mask=2,5:bool")])
    real = real_inputs(inputs)
    assert real.kwargs["input_ids"].device.type == "cpu" and int(real.kwargs["input_ids"].abs().sum()) == 0
    assert bool(real.kwargs["attention_mask"].all())
