"""Configs: presets, files, overrides, and one-line errors for every way a config can be wrong."""

import warnings
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flopkit import ViT5
from flopkit.config import ConfigError, load_config, parse_overrides

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_preset_name_builds_the_preset_on_meta():
    config = load_config("vit5-small")
    model = config.meta_module
    assert config.to_dict() == {"preset": "vit5-small"}
    assert model.hidden_dim == 384 and next(model.parameters()).is_meta
    assert sum(p.numel() for p in model.parameters()) == 22_010_112


def test_yaml_file_with_preset_and_override_then_set_wins():
    config = load_config(str(EXAMPLES / "vit5-small-384.yaml"), ["image_size=448"])
    assert config.to_dict() == {"preset": "vit5-small", "image_size": 448}
    assert config.meta_module.num_tokens == 28 * 28 + 1 + 4


def test_json_file_and_full_field_file():
    assert load_config(str(EXAMPLES / "vit5-base-interleaved.json")).meta_module.num_registers == 16
    tiny = load_config(str(EXAMPLES / "vit5-tiny.yaml")).meta_module
    assert (tiny.hidden_dim, tiny.depth, tiny.num_classes) == (64, 2, 10)


def test_set_values_are_read_as_yaml_scalars():
    assert parse_overrides(["has_cls=false", "depth=3", "qk_norm=null", "rope_base=1e4"]) == {
        "has_cls": False,
        "depth": 3,
        "qk_norm": None,
        "rope_base": "1e4",
    }
    assert load_config("vit5-small", ["rope_base=1e4"]).fields["rope_base"] == 10000.0


def test_module_config_describes_one_attention_layer():
    config = load_config(str(EXAMPLES / "attention-small.yaml"))
    attn = config.meta_module
    assert type(attn).__name__ == "ViT5Attention" and config.tokens(attn) == 201


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hiden_dim=384"], "unknown key 'hiden_dim' (did you mean 'hidden_dim'?)"),
        (["depth=twelve"], "depth must be an integer, got 'twelve'"),
        (["has_cls=1"], "has_cls must be true or false, got 1"),
        (["rope_pairing=spiral"], "rope_pairing must be one of 'split_half', 'interleaved'"),
        (["hidden_dim=100"], "hidden_dim must be divisible by num_heads"),
        (["num_registers=3"], "num_registers must be a perfect square"),
        (["image_size=225"], "image_size height 225 must be divisible by patch_size 16"),
    ],
)
def test_invalid_fields_raise_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("vit5-small", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"did you mean 'vit5-base'\?"):
        load_config("vit5-bas")


def test_missing_file_and_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: vit5-small\n  depth: [\n")
    with pytest.raises(ConfigError, match=r"malformed YAML: .*\(line 2\)"):
        load_config(str(bad))


def test_module_num_tokens_must_match_the_layout(tmp_path):
    path = tmp_path / "attn.yaml"
    path.write_text(
        (EXAMPLES / "attention-small.yaml").read_text().replace("num_tokens: 201", "num_tokens: 200")
    )
    with pytest.raises(ConfigError, match=r"num_tokens=200 does not match .* = 201"):
        load_config(str(path))


def test_image_size_may_be_height_width_for_a_non_square_grid():
    config = load_config("vit5-small", parse_overrides(["image_size=[224, 160]"]))
    model = config.meta_module
    assert model.patch_embed.grid_size == (14, 10)
    assert model.num_tokens == 14 * 10 + 1 + 4
    with pytest.raises(
        ConfigError, match=r"image_size must be an integer or \[height, width\], got \[224, 'x'\]"
    ):
        load_config("vit5-small", parse_overrides(["image_size=[224, x]"]))


class _DeviceRecorder(TorchDispatchMode):
    """Records the device of every tensor an aten op produces."""

    def __init__(self):
        super().__init__()
        self.devices = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.devices.add(t.device.type)
        return out


def test_building_a_config_creates_no_tensor_off_the_meta_device():
    with _DeviceRecorder() as recorder:
        model = load_config("vit5-base").meta_module
    assert recorder.devices == {"meta"}
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {b.device.type for b in model.buffers()} == {"meta"}


def test_parameter_count_from_the_one_block_probe_equals_the_built_model():
    for overrides in (
        [],
        ["depth=3", "num_classes=0"],
        ["has_cls=false", "num_registers=0", "mlp_ratio=2.5"],
    ):
        config = load_config("vit5-small", overrides)
        assert config.parameter_count() == sum(p.numel() for p in config.meta_module.parameters())


def test_size_bounds_are_checked_before_building(monkeypatch):
    import flopkit.config as config_module

    built = []
    real = config_module.Config.build
    monkeypatch.setattr(
        config_module.Config,
        "build",
        lambda self, device="meta": built.append(self.fields) or real(self, device),
    )
    with pytest.raises(ConfigError, match="above the limit of 4,096 blocks"):
        load_config("vit5-small", ["depth=5000"])
    assert built == []  # refused before any build
    with pytest.raises(ConfigError, match=r"\(10\^13\)"):
        load_config("vit5-small", ["hidden_dim=100000000", "num_heads=8"])
    assert [f["depth"] for f in built] == [1]  # only the one-block probe


def test_vit5_build_refuses_zero_width_before_any_layer():
    with (
        pytest.raises(ValueError, match="hidden_dim must be a positive integer, got 0"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("error")
        with torch.device("meta"):
            ViT5(hidden_dim=0)
