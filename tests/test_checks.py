"""flopkit.checks: one input-checking layer; each error names the argument, the value and the limit."""

import math
import os
import re

import pytest
import torch
from torch import nn

from flopkit import HeadNorm, LayerScale, PerHeadRMSNorm, RMSNorm, ViT5, ViT5Attention
from flopkit.checks import (
    InputError,
    check_eps,
    check_fits,
    check_input_names,
    check_output_path,
    check_seq_len,
    forward_input_names,
    peak_bytes_lower_bound,
    position_limit,
)


@pytest.mark.parametrize("eps", [-1, 0, 0.0, -1e-6, math.nan, math.inf, "1e-6", True])
def test_rms_norm_refuses_an_eps_that_is_not_a_positive_finite_number(eps):
    with pytest.raises(ValueError, match=r"eps must be a finite number > 0 or None, got"):
        RMSNorm(384, eps=eps)


def test_rms_norm_eps_minus_one_is_refused_as_in_the_issue():
    with pytest.raises(ValueError, match=r"eps must be a finite number > 0 or None, got -1"):
        RMSNorm(384, eps=-1)


def test_rms_norm_keeps_torchs_eps_none_and_accepts_a_positive_eps():
    assert RMSNorm(8, eps=None).eps is None and RMSNorm(8, eps=1e-5).eps == 1e-5


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: HeadNorm(2, 4, eps=0), "eps must be a finite number > 0, got 0"),
        (lambda: HeadNorm(2, 4, eps=math.nan), "eps must be a finite number > 0, got nan"),
        (lambda: PerHeadRMSNorm(2, 4, eps=-1e-6), "eps must be a finite number > 0, got -1e-06"),
        (lambda: PerHeadRMSNorm(0, 4), "num_heads must be a positive integer, got 0"),
        (lambda: PerHeadRMSNorm(2, -4), "head_dim must be a positive integer, got -4"),
        (lambda: HeadNorm(2.0, 4), "num_heads must be a positive integer, got 2.0"),
    ],
)
def test_norm_module_arguments_are_checked(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ViT5Attention(384, 6, 14, 14, scale=math.nan), "scale must be a finite number > 0, got nan"),
        (lambda: ViT5Attention(384, 6, 14, 14, scale=-1.0), "scale must be a finite number > 0, got -1.0"),
        (lambda: ViT5Attention(384, 0, 14, 14), "num_heads must be a positive integer, got 0"),
        (
            lambda: ViT5Attention(36, 6, 14, 14),
            "head_dim = hidden_dim / num_heads = 6 must be divisible by 4",
        ),
        (
            lambda: ViT5(image_size=32, hidden_dim=32, depth=1, num_heads=2, layer_scale_init=math.inf),
            "layer_scale_init must be a finite number, got inf",
        ),
        (lambda: LayerScale(8, math.nan), "init_values must be a finite number, got nan"),
    ],
)
def test_attention_and_model_arguments_are_checked(build, message):
    with pytest.raises(ValueError, match=re.escape(message)), torch.device("meta"):
        build()


def test_a_positive_scale_and_a_zero_layer_scale_are_accepted():
    with torch.device("meta"):
        assert ViT5Attention(384, 6, 14, 14, scale=0.1).scale == 0.1
        assert float(LayerScale(8, 0.0).init_values) == 0.0


def test_check_eps_allows_none_only_when_asked():
    check_eps("eps", None, allow_none=True)
    with pytest.raises(ValueError, match="eps must be a finite number > 0, got None"):
        check_eps("eps", None)


def test_output_path_in_a_writable_directory_is_accepted(tmp_path):
    assert check_output_path(tmp_path / "out.png", "plot_path") == tmp_path / "out.png"


def test_output_path_errors_name_the_argument_the_value_and_the_limit(tmp_path):
    missing = tmp_path / "missing" / "out.safetensors"
    with pytest.raises(InputError, match=r"^dst=.*out.safetensors: directory .*missing does not exist"):
        check_output_path(missing, "dst")
    with pytest.raises(InputError, match="is a directory"):
        check_output_path(tmp_path, "dst")
    with pytest.raises(InputError, match="^plot_path='': is empty; give a file name"):
        check_output_path("", "plot_path")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(InputError, match="is not a directory"):
        check_output_path(a_file / "out.png", "plot_path")


def test_output_path_in_a_read_only_directory_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(InputError, match="is not writable"):
        check_output_path(tmp_path / "out.png", "plot_path")


def test_input_error_reads_as_a_python_argument_or_as_a_cli_option():
    error = InputError("seq_len", 100000, "more than the model's 1,024 positions")
    assert str(error) == "seq_len=100000: more than the model's 1,024 positions"
    assert error.as_option("--seq-len") == "--seq-len 100000: more than the model's 1,024 positions"
    assert isinstance(error, ValueError)


class _Config:
    max_position_embeddings = 512


class _WithPositions(nn.Module):
    config = _Config()

    def forward(self, input_ids, attention_mask=None):
        return input_ids


def test_seq_len_within_the_positions_passes_and_beyond_is_refused():
    model = _WithPositions()
    assert position_limit(model) == (512, "max_position_embeddings")
    check_seq_len(model, 512)
    with pytest.raises(
        InputError, match=r"seq_len=513: a length of 513 is more than the model's 512 positions"
    ):
        check_seq_len(model, 513)
    check_seq_len(nn.Linear(2, 2), 10**9)  # no config: no limit to check


def test_seq_len_of_gpt2_names_its_1024_positions_and_the_field_it_stores():
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        model = transformers.AutoModel.from_config(transformers.AutoConfig.for_model("gpt2", n_layer=1))
    assert position_limit(model) == (1024, "n_positions")
    with pytest.raises(InputError, match="1,024 positions.*n_positions=100000"):
        check_seq_len(model, 100000)


def test_input_names_are_the_forwards_parameters():
    model = _WithPositions()
    assert forward_input_names(model) == {"input_ids", "attention_mask"}
    check_input_names(model, ["attention_mask"])
    with pytest.raises(InputError, match="named_inputs=attention_mak: .*did you mean attention_mask"):
        check_input_names(model, ["attention_mak"])


def test_a_forward_with_plain_kwargs_takes_any_input():
    class Open(nn.Module):
        def forward(self, x, **kwargs):
            return x

    assert forward_input_names(Open()) is None
    check_input_names(Open(), ["anything"])


def test_a_hugging_face_forward_takes_only_its_named_inputs():
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        model = transformers.AutoModel.from_config(
            transformers.AutoConfig.for_model("bert", num_hidden_layers=1)
        )
    names = forward_input_names(model)
    assert {"input_ids", "attention_mask", "token_type_ids"} <= names
    with pytest.raises(InputError, match="BertModel.forward takes no input 'pixel_values'"):
        check_input_names(model, ["pixel_values"])


def test_peak_lower_bound_of_a_linear_is_its_parameters_and_its_largest_op():
    with torch.device("meta"):
        model, x = nn.Linear(4, 8), torch.empty(2, 4)
    params = 4 * (8 * 4 + 8)
    addmm = 4 * (2 * 4 + 2 * 8)  # input and output alive together (weight and bias are parameters)
    assert peak_bytes_lower_bound(model, (x,)) == params + addmm
    assert peak_bytes_lower_bound(model, (x,), training=True) == 2 * params + addmm
    assert peak_bytes_lower_bound(model, (x,), activation_itemsize=2) == params + addmm // 2


def test_check_fits_refuses_more_than_the_free_memory(monkeypatch):
    import flopkit.checks as checks

    monkeypatch.setattr(checks, "available_bytes", lambda device: 2**30)
    check_fits(2**30, "cpu", "batch", 8)
    with pytest.raises(
        InputError, match=r"batch=9: the run needs at least 1.00 GiB on cpu, more than the 1.00 GiB free"
    ):
        check_fits(2**30 + 1, "cpu", "batch", 9)


def test_available_bytes_of_the_host_is_positive():
    from flopkit.checks import available_bytes

    assert available_bytes("cpu") > 0 and available_bytes("meta") is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"n_head": 0}, "model_args=n_head=0: a head count or width must be a positive integer"),
        ({"num_attention_heads": -2}, "num_attention_heads=-2: a head count"),
        ({"head_dim": 0}, "head_dim=0: a head count"),
        ({"hidden_size": 0}, "hidden_size=0: a head count or width"),
        ({"layer_norm_epsilon": math.nan}, "layer_norm_epsilon=nan: an epsilon must be a finite number > 0"),
        ({"rms_norm_eps": -1e-6}, "rms_norm_eps=-1e-06: an epsilon"),
        ({"eps": 0}, "eps=0: an epsilon"),
        ({"num_hidden_layers": -1}, "num_hidden_layers=-1: a layer count must be an integer in 0..4,096"),
        ({"n_layer": 10**20}, "n_layer=100000000000000000000: a layer count must be an integer in 0..4,096"),
    ],
)
def test_model_args_whose_names_say_what_they_are_are_checked(args, message):
    from flopkit.checks import check_model_args

    with pytest.raises(InputError, match=re.escape(message)):
        check_model_args(args)


def test_model_args_of_other_names_or_types_are_left_to_the_model():
    from flopkit.checks import check_model_args

    check_model_args({"n_layer": 0, "num_classes": 0, "n_inner": None, "eps": "x", "drop_rate": -1.0})
