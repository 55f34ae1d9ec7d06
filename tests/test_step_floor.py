"""benchmarks/step_floor.py on the committed H100 records: every floor is positive and below what
was measured, the GEMM floor is the hand-counted matmul FLOPs at the measured rate, the bytes are
the hand formulas, and the op inventory matches the kernels the profiler saw."""

import json
import sys
from pathlib import Path

import _early
import pytest

from benchmarks import _harness as H
from benchmarks import step_floor as F

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def floors():
    return F.step_floor(ROOT / "benchmarks" / "results")


def _kernels(preset):
    record = json.loads((ROOT / "benchmarks" / "results" / F.STEP_KERNELS).read_text())
    return record["runs"][F.KERNEL_RUNS[preset]]["data"]["models"][F.KERNEL_COLUMN]["kernels"]


def _calls(preset, fragment):
    return sum(calls for name, _, calls in _kernels(preset) if fragment in name)


def test_every_group_has_a_positive_floor_at_most_its_measured_time(floors):
    by_preset, _ = floors
    assert set(by_preset) == {"vit5-small", "vit5-base"}
    for f in by_preset.values():
        # flopkit's attention kernels run no cuDNN side kernels: no such group.
        assert [g.group for g in f.groups] == [g for g in F.GROUPS if g != F.ATTENTION_SIDE]
        for g in f.groups:
            assert g.floor_ms > 0, (f.preset, g.group)
            # A floor may sit up to 1 % above a measured time: the roof is measured once per
            # process (vit5-base's GEMMs ran 18.93 ms against a floor of 18.97 at 694 TFLOP/s).
            assert g.floor_ms <= 1.01 * g.measured_ms, (f.preset, g.group)


def test_the_step_floor_is_below_the_measured_gpu_time(floors):
    for f in floors[0].values():
        assert f.floor_ms == pytest.approx(sum(g.floor_ms for g in f.groups))
        assert f.floor_ms <= f.kernels_ms and f.floor_ms <= f.flopkit_gpu_ms <= f.flopkit_ms
        assert sum(g.measured_ms for g in f.groups) == pytest.approx(f.kernels_ms)  # no kernel lost


@pytest.mark.parametrize("preset, batch, width", [("vit5-small", 256, 384), ("vit5-base", 128, 768)])
def test_gemm_floor_is_the_hand_counted_matmul_flops_at_the_measured_rate(floors, preset, batch, width):
    by_preset, roofs = floors
    T, patches, depth, classes = 201, 196, 12, 1000
    # Per image: qkv, proj, fc1, fc2 (2 * T * 12 C^2) forward, input and weight gradients;
    # the patch GEMM (3 * 16 * 16 -> C) without an input gradient; the head on the CLS row.
    matmul = batch * (3 * 24 * T * width**2 * depth + 2 * 2 * patches * 768 * width + 3 * 2 * width * classes)
    f = by_preset[preset]
    assert f.matmul_flops == matmul
    assert f.groups[0].floor_ms == pytest.approx(matmul / (roofs["matmul_tflops"] * 1e12) * 1e3, rel=1e-12)


def test_attention_floor_counts_the_flash_backward_recompute(floors):
    f = floors[0]["vit5-base"]
    # forward QK^T and PV (4 B H T^2 D), backward 8 B H T^2 D plus the recomputed QK^T (2)
    assert f.attention_flops == (4 + 8 + 2) * 128 * 12 * 201**2 * 64 * 12


def test_vit5_base_bytes_are_the_hand_formulas(floors):
    f = floors[0]["vit5-base"]
    n, c, mlp, depth = 128 * 201, 768, 3072, 12
    # The fused MLP (kernels.gelu_linear, the default since vit5-base's record): read h, write g
    # and gelu'(h); its backward's read of gelu' runs in the GEMM group.
    assert f.bytes[F.GELU] == 3 * n * mlp * 2 * depth
    small = floors[0]["vit5-small"]  # a record from before: read h, write g; read dg, h, write dh
    assert small.bytes[F.GELU] == (2 + 3) * 256 * 201 * 1536 * 2 * depth
    assert f.bytes[F.QK] == (4 + 8) * n * c * 2 * depth
    norms = (2 + 3) + (depth - 1) * (4 + 4) + depth * (4 + 6)  # norm1 of block 0, other norm1s, norm2s
    assert f.bytes[F.NORMS] == norms * n * c * 2 + (2 + 3) * 128 * c * 2  # + the final norm on CLS


@pytest.mark.parametrize("preset", ["vit5-small", "vit5-base"])
def test_the_op_inventory_matches_the_profiled_kernel_calls(preset):
    shapes = F.StepShapes.of(preset, 256 if preset == "vit5-small" else 128)
    ops = F.norm_ops(shapes)
    assert (
        _calls(preset, "_norm_fwd_kernel") == _calls(preset, "_norm_bwd_kernel") == sum(o.calls for o in ops)
    )
    assert _calls(preset, "_qk_norm_rope_fwd") == _calls(preset, "_qk_norm_rope_bwd") == shapes.depth
    if _calls(preset, "_gelu_deriv_kernel"):  # the fused MLP: its forward pass and backward GEMM
        assert _calls(preset, "_gelu_deriv_kernel") == _calls(preset, "_dgelu_mm") == shapes.depth
        assert _calls(preset, "GeluCUDAKernel") == _calls(preset, "GeluBackwardCUDAKernel") == 0
    else:
        assert _calls(preset, "GeluCUDAKernel") == _calls(preset, "GeluBackwardCUDAKernel") == shapes.depth
    assert _calls(preset, "_attn_fwd") == _calls(preset, "_attn_bwd_head") == shapes.depth
    assert _calls(preset, "dot_do_o") == _calls(preset, "convert_dq") == 0


# Starts when the session is collected (tests/_early.py).
SCRIPT = _early.early(
    "step_floor",
    lambda out, environ: (
        [sys.executable, "-m", "benchmarks.step_floor", "--out", str(out)],
        {"cwd": ROOT, "env": _early.checkout_env(environ), "timeout": 300},
    ),
)


@pytest.mark.early("step_floor")
def test_script_prints_the_tables_and_writes_a_harness_record():
    done = SCRIPT.result()
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("| floor (sum of the groups) |") == 2
    record = json.loads((SCRIPT.out / "step_floor.json").read_text())
    H.validate_record(record)
    assert record["benchmark"] == "step_floor" and set(record["presets"]) == {"vit5-small", "vit5-base"}
    assert record["roofs"]["matmul_tflops"] == pytest.approx(692.7785787694407)  # TRAIN_RUN's


def test_the_docs_tables_are_what_the_script_prints(floors):
    section = (ROOT / "docs" / "benchmarks.md").read_text().split("## The step's physical floor", 1)[1]
    section = section.split("\n## ", 1)[0]
    printed = [line for line in F.render(*floors) if line.startswith(("|", "**"))]
    assert printed and [line for line in section.splitlines() if line.startswith(("|", "**"))] == printed


def test_flopkit_attention_kernels_group_as_attention():
    """flopkit's attention kernels (kernels/_sdpa_triton.py) count as attention, not as norms."""
    from benchmarks.step_kernels import group

    for name in ("_attn_fwd", "_attn_bwd_dq", "_attn_bwd_dkdv", "_attn_bwd_head", "_attn_bwd_atomic"):
        assert group(name) == "attention (flopkit Triton)"
        assert F.floor_group(name) == F.ATTENTION
    assert F.floor_group("_norm_bwd_kernel") == F.NORMS


def test_the_fused_gelu_ops_group_and_move_their_own_bytes():
    """``kernels.gelu_linear``'s backward GEMM counts as GEMM and its forward pass as GELU; a step
    that runs them has GELU's three passes over ``[N, F]`` (the forward's; the backward's read of
    ``gelu'`` runs in the GEMM group) for the modules' five."""
    from benchmarks.step_kernels import group

    assert group("_dgelu_mm_tma_kernel") == "GEMM + GELU' (flopkit Triton)"
    assert F.floor_group("_dgelu_mm_tma_kernel") == F.floor_group("_dgelu_mm_kernel") == F.GEMM
    assert F.floor_group("_gelu_deriv_kernel") == F.GELU
    shapes = F.StepShapes.of("vit5-base", 128)
    plain, fused = F.copy_bytes(shapes)[F.GELU], F.copy_bytes(shapes, fused_gelu=True)[F.GELU]
    assert plain == 5 * 128 * 201 * 3072 * 2 * 12 and fused * 5 == plain * 3
