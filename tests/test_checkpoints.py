"""Checkpoints without upstream code: key names, round trips, architecture inference, file
formats and wrappers, errors that name the tensor, FLOPs of a checkpoint, and the CLI."""

import json
import math

import pytest
import torch
from click.testing import CliRunner
from flopkit.cli import app

from flopkit import ViT5
from flopkit.checkpoints import (
    CheckpointError,
    convert_checkpoint,
    detect_source,
    from_flopkit,
    infer_config,
    load_vit5,
    matching_preset,
    official_rope_freqs,
    read_checkpoint,
    to_flopkit,
)
from flopkit.config import load_config
from flopkit.nn.vit5 import OFFICIAL_LAYOUT

# Small but non-default in every inferable field: width 96, 3 heads (D = 32), depth 3, 9 registers,
# a 6x6 grid of 8-pixel patches on one input channel, 7 classes, MLP x2.
SHAPES = {
    "image_size": 48,
    "patch_size": 8,
    "in_channels": 1,
    "hidden_dim": 96,
    "depth": 3,
    "num_heads": 3,
    "num_registers": 9,
    "num_classes": 7,
    "mlp_ratio": 2.0,
}


def randomised(model: ViT5) -> ViT5:
    """Every parameter random, so that a swapped or dropped tensor changes the logits."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.dim() == 1 else 0.0))
    return model.eval()


def nvsubq_model() -> ViT5:
    return randomised(ViT5(**SHAPES, use_triton=False))


def official_model() -> ViT5:
    return randomised(ViT5(**SHAPES, **OFFICIAL_LAYOUT, use_triton=False))


def images(model: ViT5, batch: int = 2) -> torch.Tensor:
    h, w = model.patch_embed.image_size
    return torch.randn(batch, model.patch_embed.in_channels, h, w)


# ------------------------------------------------------------------------------- key names
def test_nvsubquadratic_names_are_the_ones_upstream_uses():
    upstream = from_flopkit(nvsubq_model().state_dict(), "nvsubquadratic")
    for key in (
        "patch_embed.weight",
        "pos_embed",
        "cls_token",
        "reg_token",
        "blocks.0.input_norm.weight",
        "blocks.0.sequence_mixer.qkv.weight",
        "blocks.0.sequence_mixer.proj.weight",
        "blocks.0.sequence_mixer.q_norm.weight",
        "blocks.0.ls_attn.gamma",
        "blocks.0.mlp_norm.weight",
        "blocks.0.mlp.layer1.weight",
        "blocks.2.mlp.layer2.weight",
        "blocks.0.ls_mlp.gamma",
        "out_norm.weight",
        "out_proj.weight",
    ):
        assert key in upstream, key
    assert len(upstream) == len(nvsubq_model().state_dict())


def test_official_names_are_the_ones_upstream_uses_with_its_rope_buffers():
    upstream = from_flopkit(official_model().state_dict(), "official", reg_rope_base=100.0)
    for key in (
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "pos_embed",
        "blocks.0.gamma_1",
        "blocks.0.gamma_2",
        "blocks.1.attn.proj.bias",
        "blocks.0.mlp.fc1.bias",
        "head.bias",
    ):
        assert key in upstream, key
    # VisionRotaryEmbedding(D/2, theta).freqs = theta ** -(arange(0, D/2, 2) / (D/2))
    D = 32
    expected = torch.tensor([100.0 ** (-(2 * j) / (D // 2)) for j in range(D // 4)], dtype=torch.float32)
    torch.testing.assert_close(upstream["blocks.2.attn.rope_reg.freqs"], expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("build", "layout"), [(nvsubq_model, "nvsubquadratic"), (official_model, "official")]
)
def test_round_trip_flopkit_upstream_flopkit_is_identical(build, layout):
    mine = build().state_dict()
    upstream = from_flopkit(mine, layout)
    assert detect_source(upstream) == layout
    back = to_flopkit(upstream)
    assert back.keys() == mine.keys()
    assert all(torch.equal(back[k], mine[k]) for k in mine)
    again = from_flopkit(back, layout)
    assert again.keys() == upstream.keys() and all(torch.equal(again[k], upstream[k]) for k in upstream)


# ------------------------------------------------------------------------------- inference
@pytest.mark.parametrize(
    ("build", "layout"), [(nvsubq_model, "nvsubquadratic"), (official_model, "official")]
)
def test_architecture_is_read_off_the_shapes(build, layout):
    fields = infer_config(from_flopkit(build().state_dict(), layout))
    assert {k: fields[k] for k in SHAPES} == SHAPES
    assert fields["has_cls"] is True and fields["qk_norm"] == "rmsnorm"
    official = layout == "official"
    for bias in ("patch_bias", "proj_bias", "mlp_bias", "head_bias"):
        assert fields[bias] is official
    assert fields["qkv_bias"] is False
    assert fields.get("cls_first", False) is official
    assert fields.get("rope_pairing", "split_half") == ("interleaved" if official else "split_half")


def test_official_rope_bases_are_read_from_its_buffers():
    model = ViT5(**SHAPES, **{**OFFICIAL_LAYOUT, "rope_base": 500.0, "reg_rope_base": 30.0})
    fields = infer_config(from_flopkit(model.state_dict(), "official", rope_base=500.0, reg_rope_base=30.0))
    assert (fields["rope_base"], fields["reg_rope_base"]) == (500.0, 30.0)


@pytest.mark.parametrize(
    ("build", "layout"), [(nvsubq_model, "nvsubquadratic"), (official_model, "official")]
)
def test_loaded_model_computes_what_the_original_computes(build, layout):
    model = build()
    loaded = load_vit5(from_flopkit(model.state_dict(), layout), use_triton=False).eval()
    x = images(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert str(loaded) == str(model)


def preset_checkpoint(name: str) -> tuple[ViT5, dict[str, torch.Tensor]]:
    """The preset (on meta: no memory) and an upstream-layout state dict of its shapes (zeros:
    weights do not matter for FLOPs)."""
    preset = load_config(name).meta_module
    layout = "official" if name.endswith("official") else "nvsubquadratic"
    zeros = {k: torch.zeros(v.shape) for k, v in preset.state_dict().items()}
    return preset, from_flopkit(zeros, layout)


@pytest.mark.parametrize("name", ["vit5-small", "vit5-small-official"])
def test_checkpoint_reports_the_flops_of_its_preset(tmp_path, name):
    preset, upstream = preset_checkpoint(name)
    path = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file(upstream, str(path))
    config = load_config(str(path))
    assert matching_preset(config.fields) == name
    module = config.meta_module
    assert module.flop_count() == preset.flop_count()
    assert module.flop_count(convention="nvsubquadratic") == preset.flop_count(convention="nvsubquadratic")
    assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in preset.parameters())


def test_cls_position_does_not_change_the_function():
    # CLS is RoPE-identity and attention is permutation-equivariant, so moving CLS first with the same
    # weights gives the same logits: an independent check of the cls_first token plumbing.
    last = randomised(ViT5(**SHAPES, use_triton=False))
    first = ViT5(**SHAPES, cls_first=True, use_triton=False).eval()
    first.load_state_dict(last.state_dict())
    x = images(last)
    with torch.no_grad():
        torch.testing.assert_close(first(x), last(x), rtol=1e-5, atol=1e-6)
    assert first.layout.cls_index == 0 and last.layout.cls_index == 36


# ------------------------------------------------------------------------------- files
@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"model": sd, "epoch": 3},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {
            "state_dict": {f"model._orig_mod.{k}": v for k, v in sd.items()},
            "loss.weight": torch.ones(1),
        },
    ],
    ids=["bare", "model", "ddp", "lightning-compiled"],
)
def test_torch_files_with_wrappers_and_prefixes(tmp_path, wrap):
    model = official_model()
    path = tmp_path / "w.pth"
    torch.save(wrap(from_flopkit(model.state_dict(), "official")), path)
    x = images(model)
    with torch.no_grad():
        assert torch.equal(load_vit5(path, use_triton=False).eval()(x), model(x))


def test_ema_weights_are_taken_only_when_asked(tmp_path):
    plain, ema = nvsubq_model(), nvsubq_model()
    path = tmp_path / "train.pt"
    torch.save(
        {
            "model": from_flopkit(plain.state_dict(), "nvsubquadratic"),
            "model_ema": from_flopkit(ema.state_dict(), "nvsubquadratic"),
        },
        path,
    )
    x = images(plain)
    with torch.no_grad():
        assert torch.equal(load_vit5(path, use_triton=False).eval()(x), plain(x))
        assert torch.equal(load_vit5(path, ema=True, use_triton=False).eval()(x), ema(x))
    torch.save({"model": from_flopkit(plain.state_dict(), "nvsubquadratic")}, path)
    with pytest.raises(CheckpointError, match="ema=True but no EMA weights"):
        load_vit5(path, ema=True)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("layout", ["nvsubquadratic", "official"])
def test_convert_files_both_ways_round_trips(tmp_path, suffix, layout):
    model = official_model() if layout == "official" else nvsubq_model()
    src = tmp_path / f"up{suffix}"
    torch.save(from_flopkit(model.state_dict(), layout), tmp_path / "up.pth")
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in from_flopkit(model.state_dict(), layout).items()}, str(src))
    mine, back = tmp_path / f"mine{suffix}", tmp_path / f"back{suffix}"
    assert convert_checkpoint(src, mine)[0] == layout
    assert convert_checkpoint(mine, back, target=layout)[0] == "flopkit"
    original, _ = read_checkpoint(src)
    returned, _ = read_checkpoint(back)
    assert returned.keys() == original.keys()
    assert all(torch.equal(returned[k], original[k]) for k in original)
    # the flopkit file records its fields: it rebuilds the same model, official options included
    x = images(model)
    with torch.no_grad():
        assert torch.equal(load_vit5(mine, use_triton=False).eval()(x), model(x))


# ------------------------------------------------------------------------------- errors
def checkpoint(layout="nvsubquadratic"):
    model = official_model() if layout == "official" else nvsubq_model()
    return from_flopkit(model.state_dict(), layout)


def test_missing_tensor_is_named_with_its_upstream_name():
    sd = checkpoint()
    del sd["blocks.1.sequence_mixer.k_norm.weight"]
    with pytest.raises(
        CheckpointError,
        match=r"missing tensor 'blocks.1.attn.k_norm.weight' \(upstream "
        r"'blocks.1.sequence_mixer.k_norm.weight'\), shape \(32,\)",
    ):
        load_vit5(sd)


def test_wrong_shape_is_named_with_both_shapes():
    sd = checkpoint("official")
    sd["blocks.2.mlp.fc1.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError, match=r"'blocks.2.mlp.fc1.bias' has shape \(5,\), expected \(192,\)"):
        load_vit5(sd)


def test_unexpected_tensor_is_named():
    sd = checkpoint()
    sd["blocks.0.sequence_mixer.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="unexpected tensor 'blocks.0.sequence_mixer.extra.weight'"):
        load_vit5(sd)


def test_an_extra_block_of_the_right_names_is_unexpected_only_if_shapes_disagree():
    sd = checkpoint()
    sd["blocks.0.sequence_mixer.qkv.bias"] = torch.zeros(7)  # a bias implies qkv_bias=True, of size 3C
    with pytest.raises(
        CheckpointError, match=r"'blocks.0.attn.qkv.bias'.* has shape \(7,\), expected \(288,\)"
    ):
        load_vit5(sd)


def test_unrecognised_keys_ask_for_the_source():
    with pytest.raises(CheckpointError, match="cannot tell the checkpoint's layout"):
        detect_source({"encoder.layer.0.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="source must be one of"):
        load_vit5(checkpoint(), source="timm")


def test_non_square_patch_grid_is_refused_with_a_hint():
    sd = checkpoint()
    sd["pos_embed"] = torch.zeros(1, 35, 96)
    with pytest.raises(CheckpointError, match="35 patches, not a square grid; pass image_size"):
        infer_config(sd)


def test_without_qk_norm_the_head_count_must_be_given():
    model = randomised(ViT5(**{**SHAPES, "qk_norm": None}, use_triton=False))
    sd = from_flopkit(model.state_dict(), "nvsubquadratic")
    with pytest.raises(CheckpointError, match="pass num_heads="):
        load_vit5(sd)
    x = images(model)
    with torch.no_grad():
        assert torch.equal(load_vit5(sd, num_heads=3, use_triton=False).eval()(x), model(x))


def test_official_rope_buffers_that_fit_no_base_are_refused():
    sd = checkpoint("official")
    sd["blocks.0.attn.rope.freqs"] = torch.tensor([1.0, 0.5, 0.4, 0.1, 0.01, 0.001, 0.0001, 1e-5])
    with pytest.raises(CheckpointError, match=r"blocks.0.attn.rope.freqs: frequencies are not base"):
        infer_config(sd)


def test_missing_file_and_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth: cannot read as a torch checkpoint"):
        read_checkpoint(bad)


def test_split_half_weights_are_not_written_as_official():
    with pytest.raises(CheckpointError, match="official layout needs rope_pairing='interleaved'"):
        convert_checkpoint(checkpoint(), "/tmp/never-written.pth", target="official")


def test_official_rope_freqs_formula():
    # theta ** -(2j / (D/2)) for j < D/4
    torch.testing.assert_close(
        official_rope_freqs(16, 10000.0),
        torch.tensor([1.0, 10000**-0.25, 0.01, 10000**-0.75]),
        rtol=1e-6,
        atol=0,
    )


# ------------------------------------------------------------------------------- CLI
def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_convert_then_report_matches_the_preset(tmp_path):
    src = tmp_path / "official.pth"
    torch.save({"model": preset_checkpoint("vit5-small-official")[1]}, src)
    dst = tmp_path / "mine.safetensors"
    result = run("convert", src, dst)
    assert result.exit_code == 0, result.output
    assert "(official) -> " in result.output and "= preset vit5-small-official" in result.output
    for path in (src, dst):
        report = json.loads(run("report", path, "--format", "json").stdout)
        expected = json.loads(run("report", "vit5-small-official", "--format", "json").stdout)
        assert (report["total_flops"], report["total_params"]) == (
            expected["total_flops"],
            expected["total_params"],
        )
        assert [r["flops"] for r in report["rows"]] == [r["flops"] for r in expected["rows"]]


def test_cli_convert_errors_are_one_line_with_status_2(tmp_path):
    src = tmp_path / "nv.pth"
    torch.save(checkpoint(), src)
    (tmp_path / "exists.pth").write_bytes(b"")
    for args, message in (
        ((src, tmp_path / "exists.pth"), "exists; give --force"),
        ((src, tmp_path / "out.txt"), "must end in .pth"),
        ((src, tmp_path / "o.pth", "--to", "official"), "official layout needs rope_pairing='interleaved'"),
        ((tmp_path / "missing.pth", tmp_path / "o.pth"), "missing.pth: no such file"),
    ):
        result = run("convert", *args)
        assert result.exit_code == 2, result.output
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_cli_layout_of_an_official_checkpoint_shows_cls_first(tmp_path):
    path = tmp_path / "official.pth"
    torch.save(checkpoint("official"), path)
    result = run("layout", path)
    assert result.exit_code == 0, result.output
    assert "token layout [CLS, patches, registers], T = 1 + 6*6 + 9 = 46" in result.output


def test_finetune_example_runs_and_writes_a_loadable_checkpoint(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "finetune_checkpoint", Path(__file__).resolve().parents[1] / "examples" / "finetune_checkpoint.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    src, out = tmp_path / "official.pth", tmp_path / "tuned.safetensors"
    torch.save(checkpoint("official"), src)
    losses = example.main([str(src), str(out), "--num-classes", "4", "--steps", "2", "--batch-size", "2"])
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    tuned = load_vit5(out)
    assert tuned.num_classes == 4 and tuned.cls_first and tuned.head.bias is not None


def test_nvsubquadratic_gap_readout_is_refused_not_silently_changed():
    sd = checkpoint()
    del sd["cls_token"]
    with pytest.raises(CheckpointError, match="readout='gap' model"):
        load_vit5(sd)


def test_shapes_only_reads_no_weights_of_a_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "official.safetensors"
    save_file({k: v.contiguous() for k, v in checkpoint("official").items()}, str(path))
    tensors, _ = read_checkpoint(path, shapes_only=True)
    assert tensors["blocks.0.attn.qkv.weight"].device.type == "meta"
    assert tuple(tensors["blocks.0.attn.qkv.weight"].shape) == (288, 96)
    assert tensors["blocks.0.attn.rope.freqs"].device.type == "cpu"  # read: it gives the RoPE base
    assert infer_config(path)["rope_base"] == 10000.0


def test_cli_set_on_a_checkpoint_applies_image_size_and_refuses_what_the_tensors_fix(tmp_path):
    path = tmp_path / "nv.pth"
    torch.save(checkpoint(), path)
    result = run("report", path, "--set", "num_heads=6")
    assert result.exit_code == 2
    assert "--set num_heads=6 contradicts the checkpoint's tensors, which fix num_heads=3" in result.stderr
    at_96 = json.loads(run("report", path, "--set", "image_size=96", "--format", "json").stdout)
    expected = ViT5(**{**SHAPES, "image_size": 96}).flop_count()
    assert at_96["total_flops"] == expected


def test_official_without_registers_has_no_register_rope_buffer():
    model = randomised(ViT5(**{**SHAPES, "num_registers": 0}, **OFFICIAL_LAYOUT, use_triton=False))
    upstream = from_flopkit(model.state_dict(), "official")
    assert "blocks.0.attn.rope.freqs" in upstream and "blocks.0.attn.rope_reg.freqs" not in upstream
    x = images(model)
    with torch.no_grad():
        assert torch.equal(load_vit5(upstream, use_triton=False).eval()(x), model(x))


def test_headnorm_qk_weights_are_not_written_as_nvsubquadratic():
    model = ViT5(**{**SHAPES, "qk_norm": "headnorm"})
    with pytest.raises(CheckpointError, match="nvsubquadratic layout needs qk_norm=None or 'rmsnorm'"):
        convert_checkpoint(model.state_dict(), "/tmp/never-written.pth", target="nvsubquadratic")
