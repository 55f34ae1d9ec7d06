"""The one op table (flopkit.flops.ops): every counter's view comes from it, each op in it once."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from flopkit.config import load_config, model_input
from flopkit.flops import ops
from flopkit.flops.anymodel import count_model, count_torch, register_formula
from flopkit.formulas import CATEGORIES, FLOP_FORMULAS, FLOPS_PER_MAC

TINY = ["image_size=32", "hidden_dim=32", "num_heads=2", "depth=2", "num_classes=10"]


def test_every_entry_is_counted_or_says_why_not():
    for name, entry in ops.OPS.items():
        assert entry.name == name
        assert entry.category in (*CATEGORIES, None), name
        # a flopkit:: custom op names the registered formula that counts it
        assert entry.custom is None or entry.custom in FLOP_FORMULAS, name
        # an op without a category moves data or is arithmetic left out by convention, not both
        if entry.category is None:
            assert entry.movement != entry.convention, name
            assert entry.formula is None and not entry.fvcore, name


def test_flopkit_formulas_only_where_torch_has_none():
    mapping = ops.torch_mapping()
    assert {str(p) for p in mapping} >= {"aten.native_layer_norm", "aten.gelu", "aten._softmax"}
    grouped = getattr(torch.ops.aten, "_grouped_mm", None)
    # _grouped_mm's formula goes into torch's registry too (register_flopkit_formulas), for a plain counter
    # (a user's register_formula also puts its op there: only flopkit's aten formulas are checked)
    aten = [p for p in mapping if str(p).startswith("aten.") and p is not grouped]
    assert aten and not [str(p) for p in aten if p in flop_registry]


def test_fvcore_view_counts_macs_for_its_own_handles_and_flops_for_flopkit_s():
    table = ops.fvcore_table()
    for name in ("linear", "addmm", "mm", "matmul", "bmm", "einsum", "conv", "_convolution"):
        assert table[name] == ("matmul", FLOPS_PER_MAC), name
    assert table["scaled_dot_product_attention"] == ("attention", FLOPS_PER_MAC)
    for name in ("layer_norm", "group_norm", "batch_norm", "instance_norm", "rms_norm", "rms_norm_residual"):
        assert table[name] == ("norm", 1), name
    assert table[ops.qk_part("flopkit::", "rope")] == ("rope", 1)
    assert ops.category_of("fvcore", "gelu") is None


def test_torch_view_and_the_not_counted_lists():
    assert ops.category_of("torch", "aten.bmm") == "attention"
    assert ops.category_of("torch", "aten.native_layer_norm") == "norm"
    assert ops.category_of("torch", ops.RMS_NORM_OP) == "norm"
    assert ops.not_flops("aten.view") and ops.not_flops("aten.mm") and not ops.not_flops("aten.mul")
    assert ops.is_convention("aten.mul") and not ops.is_convention("aten.view")
    assert not ops.not_flops("mylib.unknown") and not ops.is_convention("mylib.unknown")


def test_in_place_forms_are_classified_as_their_ops():
    """An op's in-place form (``aten.X_``), where this torch has one, is in the table as ``aten.X``
    is: counted in the same category, moved, or left out by convention; never an unknown op.
    (``clamp_`` from an older transformers' mask code reached the "not counted" list as unknown.)"""
    missing = []
    for name, entry in ops.OPS.items():
        base = name.removeprefix("aten.")
        if base == name or base.endswith("_") or not hasattr(torch.ops.aten, base + "_"):
            continue
        twin = ops.OPS.get(f"aten.{base}_")
        if twin is None:
            missing.append(base + "_")
            continue
        assert (twin.category, twin.movement, twin.convention) == (
            entry.category,
            entry.movement,
            entry.convention,
        ), twin.name
    assert not missing


def test_in_place_matmuls_count_what_their_out_of_place_forms_count():
    a, b, c = torch.randn(4, 6), torch.randn(6, 5), torch.randn(4, 5)
    x, b1, b2 = torch.randn(3, 4, 5), torch.randn(3, 4, 6), torch.randn(3, 6, 5)
    counts = []
    for fn in (
        lambda: c.addmm_(a, b),
        lambda: torch.addmm(c, a, b),
        lambda: x.baddbmm_(b1, b2),
        lambda: torch.baddbmm(x, b1, b2),
    ):
        with FlopCounterMode(display=False, custom_mapping=ops.torch_mapping()) as counter:
            fn()
        counts.append(counter.get_total_flops())
    assert counts == [2 * 4 * 6 * 5] * 2 + [2 * 3 * 4 * 6 * 5] * 2


def test_register_formula_adds_to_the_same_table():
    lib = torch.library.Library("flopkit_ops_test", "FRAGMENT")
    lib.define("scale(Tensor x) -> Tensor")
    lib.impl("scale", lambda x: x * 2, "CompositeExplicitAutograd")
    lib.impl("scale", lambda x: torch.empty_like(x), "Meta")

    def flops(x, *, out_shape=None, **kw):
        return 7 * x.numel()

    class M(torch.nn.Module):
        def forward(self, x):
            return torch.ops.flopkit_ops_test.scale(x)

    register_formula(torch.ops.flopkit_ops_test.scale, flops, "elementwise")
    try:
        assert ops.category_of("torch", "flopkit_ops_test.scale") == "elementwise"
        assert ops.torch_mapping()[torch.ops.flopkit_ops_test.scale] is flops
        count = count_model(M(), (torch.empty(3, 5, device="meta"),))
        assert count.forward[""]["elementwise"] == 7 * 15
    finally:
        ops.OPS.pop("flopkit_ops_test.scale")
        flop_registry.pop(torch.ops.flopkit_ops_test.scale, None)
        del lib


@pytest.mark.parametrize("preset", ["vit5-small"])
def test_count_torch_is_count_model_s_forward(preset):
    config = load_config(preset, TINY)
    meta = config.meta_module.eval()
    with torch.device("meta"):
        x = model_input(config, meta, 2, "meta")
        m = count_torch(meta, x)
        forward = count_model(meta, (x,))
    assert m.counter == "torch" and m.flops == forward.forward and m.raw == forward.raw
    assert m.categories == {"matmul", "attention", "norm", "rope", "elementwise"}
    # GELU and SDPA's softmax counted (elementwise); LayerScale and residual adds left out by convention
    assert set(m.skipped) <= {"aten.mul", "aten.add"}
