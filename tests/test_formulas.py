"""The FLOP-formula registry: each formula against a hand count or an independent implementation."""

import ast
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from flopkit import formulas
from flopkit.formulas import BACKWARD_MULTIPLIERS, CATEGORIES, FLOP_FORMULAS

FORMULAS_PY = Path(formulas.__file__)


def test_formulas_is_a_leaf_importing_only_the_standard_library():
    tree = ast.parse(FORMULAS_PY.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "formulas.py must not import relatively (it is a leaf)"
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "collections", "dataclasses"}


def test_every_registered_formula_has_a_known_category_and_a_docstring():
    expected = {
        "linear",
        "bias_add",
        "patch_conv",
        "position_add",
        "rms_norm",
        "layer_norm",
        "head_norm",
        "per_head_rms_norm",
        "rope",
        "sdpa",
        "qk_norm_rope",
        "layer_scale",
        "activation",
        # measured models (flopkit.flops.anymodel): norms, activations and softmax, and their backward
        "group_norm",
        "batch_norm",
        "norm_backward",
        "activation_backward",
        "softmax",
        "softmax_backward",
        "grouped_mm",  # mixture-of-experts' torch._grouped_mm
    }
    assert set(FLOP_FORMULAS) == expected
    for f in FLOP_FORMULAS.values():
        assert f.category in CATEGORIES
        assert f.doc


def test_registering_a_name_twice_or_an_unknown_category_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        formulas.flop_formula("linear", "matmul")(lambda: 0)
    with pytest.raises(ValueError, match="category must be one of"):
        formulas.flop_formula("new_op", "softmax")


@pytest.mark.parametrize(("rows", "i", "o"), [(1, 1, 1), (201, 384, 1152), (7, 3, 5)])
def test_linear_equals_flop_counter_on_a_real_matmul(rows, i, o):
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.linear(torch.ones(rows, i), torch.ones(o, i))
    assert formulas.linear(rows, i, o) == counter.get_total_flops()
    assert formulas.linear_breakdown(rows, i, o, bias=True) == {
        "matmul": 2 * rows * i * o,
        "attention": 0,
        "norm": 0,
        "rope": 0,
        "elementwise": rows * o,
    }


def test_patch_conv_equals_flop_counter_on_the_convolution():
    conv = torch.nn.Conv2d(3, 8, 4, stride=4, bias=False)
    with FlopCounterMode(display=False) as counter:
        conv(torch.ones(1, 3, 8, 12))
    assert formulas.patch_conv(2 * 3, 3, 4 * 4, 8) == counter.get_total_flops()


@pytest.mark.parametrize(("B", "H", "Tq", "Tk", "D", "Dv"), [(1, 6, 201, 201, 64, 64), (2, 3, 5, 9, 8, 16)])
def test_sdpa_equals_torch_sdpa_flop_count(B, H, Tq, Tk, D, Dv):
    expected = sdpa_flop_count([B, H, Tq, D], [B, H, Tk, D], [B, H, Tk, Dv])
    assert formulas.sdpa(B, H, Tq, Tk, D, Dv) == expected


def test_norm_formulas_by_hand():
    assert formulas.rms_norm(10, 64) == 3 * 640
    assert formulas.layer_norm(10, 64) == 6 * 640
    assert formulas.layer_norm(10, 64, bias=False) == 5 * 640
    assert formulas.head_norm(10, 4, 16, "rms") == 3 * 640
    assert formulas.head_norm(10, 4, 16, "layer", bias=True) == 6 * 640
    assert formulas.per_head_rms_norm(10, 4, 16) == 3 * 640
    with pytest.raises(ValueError, match="mode must be one of"):
        formulas.head_norm(1, 1, 1, "batch")


def test_measured_norm_and_elementwise_formulas_by_hand():
    assert formulas.group_norm(640) == 6 * 640 == formulas.layer_norm(10, 64)
    assert formulas.group_norm(640, weight=False, bias=False) == 4 * 640
    assert formulas.batch_norm(640) == 2 * 640  # eval: one scale, one shift
    assert formulas.batch_norm(640, training=True, bias=False) == 5 * 640
    assert formulas.norm_backward(600) == 1200 and formulas.norm_backward(600, param_grad=False) == 600
    assert formulas.activation_backward(640) == 2 * 640
    assert formulas.softmax(640) == formulas.softmax_backward(640) == 4 * 640


def test_qk_norm_rows_follow_the_convention():
    assert formulas.qk_norm_rows(201, 6) == 201 * 6
    assert formulas.qk_norm_rows(201, 6, "nvsubquadratic") == 201
    with pytest.raises(ValueError, match="convention must be one of"):
        formulas.qk_norm_rows(201, 6, "upstream")


@pytest.mark.parametrize("norm", [True, False])
def test_qk_norm_rope_is_its_breakdown_and_splits_into_norm_and_rope(norm):
    B, T, H, D = 2, 201, 6, 64
    parts = formulas.qk_norm_rope_breakdown(B, T, H, D, norm)
    elems = B * T * H * D
    assert parts["rope"] == 4 * elems
    assert parts["norm"] == (6 * elems if norm else 0)
    assert formulas.qk_norm_rope(B, T, H, D, norm) == parts["rope"] + parts["norm"]


def test_elementwise_formulas_by_hand():
    assert formulas.layer_scale(201, 384) == 201 * 384
    assert formulas.activation(201 * 1536) == 201 * 1536
    assert formulas.bias_add(201, 384) == 201 * 384
    assert formulas.position_add(196, 384) == 196 * 384
    assert formulas.rope(201, 6, 64) == 4 * 201 * 384
    assert formulas.rope(201, 6, 64, num_tensors=1) == 2 * 201 * 384


def test_training_adds_backward_per_category():
    forward = dict.fromkeys(CATEGORIES, 10)
    assert formulas.training_breakdown(forward) == {
        "matmul": 30,
        "attention": 30,
        "norm": 30,
        "rope": 20,
        "elementwise": 30,
    }
    assert set(BACKWARD_MULTIPLIERS) == set(CATEGORIES)


def test_breakdown_helpers():
    a = {"matmul": 1, "norm": 2}
    assert formulas.add_breakdowns(a, {"rope": 3}) == {**dict.fromkeys(CATEGORIES, 0), **a, "rope": 3}
    assert formulas.scale_breakdown(a, 4) == {"matmul": 4, "norm": 8}


def test_legends_state_the_formulas_numbers():
    legend = formulas.counted_legend()
    assert "2*T*i*o" in legend and "4*T^2*C" in legend and "3 per normalised element" in legend
    assert "4*T*C" in legend
    assert "rope 2x" in formulas.training_legend() and "matmul 3x" in formulas.training_legend()


def test_kernel_ops_count_with_the_registry(monkeypatch):
    # The flopkit:: ops' registered FLOP formulas call flopkit.formulas: change it, the count follows.
    import torch
    from flopkit.kernels import _norm_ops
    from torch.utils.flop_counter import FlopCounterMode

    assert _norm_ops  # importing it registers the flopkit:: norm ops
    monkeypatch.setattr(formulas, "rms_norm", lambda num_rows, dim: 7 * num_rows * dim)
    x = torch.randn(3, 5, 8)
    with FlopCounterMode(display=False) as counter:
        torch.ops.flopkit.rms_norm(x, None, 1e-6)
    assert counter.get_total_flops() == 7 * x.numel()


def test_legends_follow_the_formulas_they_describe(monkeypatch):
    monkeypatch.setattr(formulas, "norm_flops_per_element", lambda mode="rms", bias=False: 7)
    monkeypatch.setitem(formulas.BACKWARD_MULTIPLIERS, "rope", 5)
    assert "7 per normalised element" in formulas.counted_legend()
    assert "rope 6x" in formulas.training_legend()
    assert "a Linear bias add, T*o, is elementwise" in formulas.counted_legend()


@pytest.mark.parametrize(
    ("a", "b"),
    [((12, 8), (3, 8, 5)), ((3, 4, 8), (8, 15)), ((4, 12), (12, 5)), ((3, 4, 8), (3, 8, 5))],
    ids=["2d-3d", "3d-2d", "2d-2d", "3d-3d"],
)
def test_grouped_mm_equals_the_matmuls_of_its_groups(a, b):
    """Each form of torch._grouped_mm against the per-group matmuls it stands for (3 groups, the
    jagged dimension split 5 + 3 + 4 = 12 or 5 + 6 + 4 = 15)."""
    sizes = [5, 3, 4] if 12 in (*a, *b) else [5, 6, 4]
    if len(a) == 2 and len(b) == 3:
        expected = sum(2 * m * a[1] * b[2] for m in sizes)
    elif len(a) == 3 and len(b) == 2:
        expected = sum(2 * a[1] * a[2] * n for n in sizes)
    elif len(a) == 2:
        expected = sum(2 * a[0] * k * b[1] for k in sizes)
    else:
        expected = a[0] * 2 * a[1] * a[2] * b[2]
    assert formulas.grouped_mm(a, b) == expected


@pytest.mark.parametrize("window", [None, 1, 3, 7])
@pytest.mark.parametrize(("q_len", "kv_len"), [(1, 1), (5, 5), (3, 9), (9, 3), (1, 12)])
def test_kept_pairs_equal_the_mask_bottom_right_and_top_left(q_len, kv_len, window):
    q = torch.arange(q_len)[:, None]
    k = torch.arange(kv_len)[None, :]
    for offset in (kv_len - q_len, 0):
        keep = k <= q + offset
        if window is not None:
            keep &= (q + offset - k) < window
        assert formulas.kept_query_key_pairs(q_len, kv_len, offset, window) == int(keep.sum())
    assert formulas.kept_query_key_pairs(4, 4) == 4 * 5 // 2
