"""Model specs, model arguments and inputs (flopkit.models), without timm or transformers."""

import pytest
import torch
from torch import nn

from flopkit.models import (
    ModelSpecError,
    build_model,
    model_inputs,
    parse_input,
    parse_model_spec,
    parse_seq_lens,
    parse_shape,
    real_inputs,
)

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
    with pytest.raises(ModelSpecError, match="--model"):
        parse_model_spec(text)


def test_factory_gets_model_args_and_builds_on_meta(factories):
    model = build_model(f"{factories}:mlp", {"width": 4, "depth": 3})
    assert len(model) == 3 and model[0].weight.shape == (4, 4)
    assert all(p.is_meta for p in model.parameters()) and not model.training


def test_errors_inside_the_factory_name_the_spec_and_keep_the_message(factories):
    with pytest.raises(ModelSpecError, match=r"--model .*:broken: RuntimeError: weights missing"):
        build_model(f"{factories}:broken")
    with pytest.raises(ModelSpecError, match="unexpected keyword argument 'widht'"):
        build_model(f"{factories}:mlp", {"widht": 4})
    with pytest.raises(ModelSpecError, match="not created on the meta device"):
        build_model(f"{factories}:on_cpu")
    with pytest.raises(ModelSpecError, match="returned a int, not an nn.Module"):
        build_model(f"{factories}:not_a_module")


def test_unknown_callable_suggests_close_names(factories):
    with pytest.raises(ModelSpecError, match=r"no callable 'mpl' \(did you mean mlp\?\)"):
        build_model(f"{factories}:mpl")


def test_shapes_inputs_and_lengths_parse_strictly():
    assert parse_shape("3,224,224") == (3, 224, 224) and parse_shape("3x32x32") == (3, 32, 32)
    for bad in ("3,a", "0,2", ""):
        with pytest.raises(ModelSpecError, match="--input-shape"):
            parse_shape(bad)
    assert parse_input("attention_mask=1,128:int64") == ("attention_mask", (1, 128), torch.int64)
    assert parse_input("pixel_values=1,3,8,8") == ("pixel_values", (1, 3, 8, 8), torch.float32)
    with pytest.raises(ModelSpecError, match=r"dtype must be one of .*did you mean int64"):
        parse_input("mask=1,4:int46")
    with pytest.raises(ModelSpecError, match="NAME=SHAPE"):
        parse_input("1,4")
    assert parse_seq_lens("128,512") == [128, 512]
    with pytest.raises(ModelSpecError, match="repeated"):
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
    assert "pretrained_cfg" in inputs.origin
    assert model_inputs(Images(), batch=2, input_shape=(3, 8, 8)).args[0].shape == (2, 3, 8, 8)


def test_text_models_take_int64_ids_and_keyword_inputs():
    inputs = model_inputs(Text(), batch=2, seq_len=16, named=[parse_input("attention_mask=2,16:int64")])
    assert inputs.kwargs["input_ids"].shape == (2, 16) and inputs.kwargs["input_ids"].dtype == torch.int64
    assert inputs.kwargs["attention_mask"].dtype == torch.int64
    with pytest.raises(ModelSpecError, match="--seq-len"):
        model_inputs(Text())
    with pytest.raises(ModelSpecError, match="--input-shape"):
        model_inputs(nn.Linear(2, 2))
    with pytest.raises(ModelSpecError, match="use one"):
        model_inputs(Text(), input_shape=(3,), seq_len=4)


def test_real_inputs_keep_shapes_and_give_valid_ids():
    inputs = model_inputs(Text(), batch=2, seq_len=5, named=[parse_input("mask=2,5:bool")])
    real = real_inputs(inputs)
    assert real.kwargs["input_ids"].device.type == "cpu" and int(real.kwargs["input_ids"].abs().sum()) == 0
    assert bool(real.kwargs["mask"].all())
