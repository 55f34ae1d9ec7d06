"""The training step's physical floor: each kernel group at its limit, against the committed records.

CPU only, no GPU: reads two committed H100 records and prints, per preset, a table of kernel
groups (floor ms, measured ms, measured / floor) and the whole step against today's step times::

    python -m benchmarks.step_floor [--results benchmarks/results] [--out DIR]

The step is ``bench_train.py``'s: forward, cross-entropy, backward, bf16 weights under bf16
autocast, no optimizer, each preset at ``bench_train.BATCH`` (vit5-small 256, vit5-base 128).

- **Measured**, per kernel group: ``step_kernels_h100.json``, runs :data:`KERNEL_RUNS`, column
  ``flopkit`` (``torch.compile``, default mode): GPU ms per step of every kernel, grouped here by
  :func:`floor_group`. Step times and roofs: ``bench_train_h100.json``, run :data:`TRAIN_RUN`
  (flopkit and nvSubquadratic, same process; its
  ``roofs``: the copy bandwidth, bytes read + written, and the bf16 matmul rate at ``8192^3``).
- **GEMM floor**: the step's matmul FLOPs (``flopkit.count(preset, batch=B,
  training=True).by_category()["matmul"]``) at the measured matmul rate.
- **Attention floor**: the attention FLOPs as the kernels run them (forward + flash backward with
  its recompute of ``QK^T``: ``hardware_flops - matmul``) at the same rate. Optimistic: attention
  at ``T = 201``, ``D = 64`` does not reach the GEMM rate.
- **Memory-bound groups** at the copy bandwidth, bytes from the shapes (``N = B*T`` tokens, ``C``
  the width, ``F`` the MLP width, ``L`` the depth, ``s = 2`` bytes, bf16); the rule of
  docs/benchmarks.md (inputs read once, outputs written once: a norm moves ``2*N*C*s`` forward and
  ``3*N*C*s`` backward) applied to each op a ViT5 block runs (:func:`norm_ops`, :func:`copy_bytes`).
- **Other** (Inductor's kernels, the GEMMs' memsets, cross-entropy, the patch layout, adds): its
  measured time is taken as its own floor.

``--out DIR`` (default ``$OUT``; nothing is written without either) writes ``DIR/step_floor.json``,
a :mod:`benchmarks._harness` record whose roofs are the ones the floors divide by.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import _harness as H
from benchmarks import bench_train
from benchmarks.step_kernels import group as profiler_group

RESULTS = H.REPO_ROOT / "benchmarks" / "results"
STEP_KERNELS = "step_kernels_h100.json"
BENCH_TRAIN = "bench_train_h100.json"
TRAIN_RUN = "head-index_2026-12-07__base-small"
KERNEL_RUNS = {"vit5-small": "vit5-small_current_2026-12-07", "vit5-base": "head-index_2026-12-07"}
KERNEL_COLUMN = "flopkit"  # step_kernels' column of torch.compile's default mode
STEP_MODE = "reduce-overhead"  # today's best mode of both models (bench_train run TRAIN_RUN)
TARGET = 1.2  # issue 29: flopkit's step at 1.2x upstream's best
BYTES = 2  # bf16

GEMM = "GEMM (cuBLAS)"
ATTENTION = "attention (flash forward + backward)"
ATTENTION_SIDE = "attention side kernels (cuDNN `compute_dot_do_o`, `convert_dq_to_16bits`)"
GELU = "GELU forward + backward"
NORMS = "norms + residual (flopkit `_norm_*`)"
QK = "QK-norm + RoPE (flopkit `_qk_norm_rope_*`)"
OTHER = "other (measured = floor)"
GROUPS = (GEMM, ATTENTION, ATTENTION_SIDE, GELU, NORMS, QK, OTHER)


@dataclass(frozen=True)
class StepShapes:
    """The shapes that set a step's bytes: ``tokens = batch * T``."""

    batch: int
    tokens: int  # N = B * T
    seq: int  # T
    width: int  # C
    mlp_width: int  # F
    depth: int  # L
    heads: int  # H
    readout: int  # rows of the final norm per image (1: the CLS token)

    @classmethod
    def of(cls, preset: str, batch: int) -> StepShapes:
        """The shapes of ``preset``'s model (its meta module) at ``batch``."""
        from flopkit.config import load_config

        model = load_config(preset).meta_module
        return cls(
            batch=batch,
            tokens=batch * model.num_tokens,
            seq=model.num_tokens,
            width=model.hidden_dim,
            mlp_width=model.blocks[0].mlp.fc1.out_features,
            depth=model.depth,
            heads=model.num_heads,
            readout=model.num_readout_tokens,
        )


@dataclass(frozen=True)
class NormOp:
    """One flopkit norm kernel of a step: ``calls`` launches on ``rows`` rows of ``C`` each way,
    reading and writing ``forward`` / ``backward`` bf16 tensors of ``[rows, C]``."""

    op: str
    where: str
    calls: int
    rows: int
    forward: int
    backward: int


def norm_ops(shapes: StepShapes) -> tuple[NormOp, ...]:
    """The norm kernels a ViT5 training step runs (``ViT5Block.forward``, ``ViT5._run_blocks``,
    ``ViT5.forward_head``) and the tensors each must move (inputs read once, outputs written once)."""
    n, L = shapes.tokens, shapes.depth
    return (
        NormOp("rms_norm", "norm1 of block 0", 1, n, 2, 3),  # x -> y; dy, x -> dx
        # the previous MLP branch added to the residual: branch, x -> y, h; dy, dh, h -> dx
        NormOp("rms_norm_residual", "norm1 of blocks 1..L-1", L - 1, n, 4, 4),
        # ls1 as the scale, h = x + attn * gamma: the backward also reads attn for d(gamma) and
        # writes d(attn) = dx * gamma beside dx
        NormOp("rms_norm_residual, LayerScale", "norm2 of every block", L, n, 4, 6),
        NormOp("rms_norm", "final norm, readout rows", 1, shapes.batch * shapes.readout, 2, 3),
    )


def copy_bytes(shapes: StepShapes, fused_gelu: bool = False) -> dict[str, int]:
    """Bytes each memory-bound group must move per step (bf16, every layer, forward + backward).

    - GELU: ``2*N*F*s`` forward (read h, write g), ``3*N*F*s`` backward (read dg and h, write dh).
      ``fused_gelu`` (``kernels.gelu_linear``: ``_gelu_deriv_kernel`` reads h and writes g and
      ``gelu'(h)``; the backward GEMM reads ``gelu'`` in its epilogue and writes dh in place of dg):
      ``3*N*F*s``, the forward pass, the group's only kernel. The backward's read of ``gelu'`` is
      part of the GEMM group's measured time, whose floor is its FLOPs at the matmul rate (a read
      that can overlap the product adds nothing to it).
    - norms + residual: :func:`norm_ops`.
    - QK-norm + RoPE over q and k (``kernels.qk_norm_rope``, docs/benchmarks.md): ``4*N*C*s``
      forward (read q, k; write q, k), ``8*N*C*s`` backward (read dq, dk, dv, q, k; write d(qkv)).
    - attention side kernels, as cuDNN splits its flash backward: ``compute_dot_do_o`` reads dO
      and O (``2*N*C*s``) and writes ``rowsum(dO * O)`` (fp32, ``B*H*T``); ``convert_dq_to_16bits``
      reads the fp32 dQ accumulator and writes dQ in bf16 (``3*N*C*s``). A backward fused
      otherwise would need neither; these are the floor of the kernels cuDNN runs.
    """
    s, n, c, L = BYTES, shapes.tokens, shapes.width, shapes.depth
    return {
        GELU: (3 if fused_gelu else (2 + 3)) * n * shapes.mlp_width * s * L,
        NORMS: sum(o.calls * o.rows * (o.forward + o.backward) for o in norm_ops(shapes)) * c * s,
        QK: (4 + 8) * n * c * s * L,
        ATTENTION_SIDE: ((2 + 3) * n * c * s + 4 * shapes.batch * shapes.heads * shapes.seq) * L,
    }


def floor_group(kernel: str) -> str:
    """The group of a profiled kernel's name: step_kernels' groups, with GELU, cuDNN's attention
    side kernels and the QK-norm + RoPE kernels taken out, and Inductor's kernels under other.
    ``kernels.gelu_linear``'s backward GEMM (``_dgelu_mm*``) is the MLP's input-gradient GEMM and
    counts as GEMM: its FLOPs are in the GEMM floor, and its epilogue's read of ``gelu'``, which can
    overlap the product, adds nothing to it (:func:`copy_bytes`)."""
    if kernel.startswith("_dgelu_mm"):
        return GEMM
    if "gelu" in kernel.lower():
        return GELU
    if "dot_do_o" in kernel or "convert_dq" in kernel:
        return ATTENTION_SIDE
    if kernel.startswith("_qk_norm_rope"):
        return QK
    return {
        "GEMM (cuBLAS)": GEMM,
        "attention (cuDNN)": ATTENTION,
        "attention (flopkit Triton)": ATTENTION,
        "flopkit Triton kernels": NORMS,
    }.get(profiler_group(kernel), OTHER)


@dataclass(frozen=True)
class GroupFloor:
    """One kernel group of a step: its work, its floor and its measured GPU time."""

    group: str
    work: str  # what the floor divides, in words
    floor_ms: float
    measured_ms: float

    @property
    def ratio(self) -> float:
        return self.measured_ms / self.floor_ms


@dataclass(frozen=True)
class PresetFloor:
    """A preset's step: the group floors and the step times they are held against (ms)."""

    preset: str
    batch: int
    groups: tuple[GroupFloor, ...]
    kernels_ms: float  # sum of the profiled kernels (step_kernels, KERNEL_COLUMN)
    flopkit_ms: float  # bench_train ms/step, STEP_MODE
    flopkit_gpu_ms: float  # bench_train GPU ms/step, STEP_MODE
    upstream_best_ms: float  # bench_train, nvSubquadratic's fastest mode
    upstream_best_mode: str
    matmul_flops: int
    attention_flops: int
    bytes: dict[str, int]

    @property
    def floor_ms(self) -> float:
        return sum(g.floor_ms for g in self.groups)

    @property
    def target_ms(self) -> float:
        """The step time of ``TARGET`` x upstream's best."""
        return self.upstream_best_ms / TARGET


def load_record(path: str | Path) -> dict[str, Any]:
    with open(path) as fh:
        return json.load(fh)


def preset_floor(
    preset: str,
    kernels: Sequence[Sequence[Any]],
    steps: Sequence[Mapping[str, Any]],
    roofs: Mapping[str, Any],
    batch: int,
) -> PresetFloor:
    """The floor of ``preset``'s step at ``batch``: ``kernels`` are step_kernels' ``[name, ms,
    calls]`` rows of one profiled column, ``steps`` bench_train's step rows, ``roofs`` its roofs."""
    import flopkit

    count = flopkit.count(preset, batch=batch, training=True)
    matmul = count.by_category()["matmul"]
    attention = count.hardware_flops - matmul
    shapes = StepShapes.of(preset, batch)
    moved = copy_bytes(shapes, fused_gelu=any(name.startswith("_gelu_deriv") for name, _, _ in kernels))
    measured = dict.fromkeys(GROUPS, 0.0)
    for name, ms, _calls in kernels:
        measured[floor_group(name)] += ms
    tflops, gbs = roofs["matmul_tflops"], roofs["copy_gbs"]
    groups = [
        GroupFloor(
            GEMM, f"{matmul / 1e12:.2f} TFLOP at {tflops:.0f} TFLOP/s", matmul / tflops / 1e9, measured[GEMM]
        ),
        GroupFloor(
            ATTENTION,
            f"{attention / 1e12:.3f} TFLOP at {tflops:.0f} TFLOP/s (optimistic)",
            attention / tflops / 1e9,
            measured[ATTENTION],
        ),
    ]
    # cuDNN's side kernels are a group of their own only in steps that run them (flopkit's attention
    # kernels compute rowsum(dO * O) inside the backward and write dq in bf16).
    side = (ATTENTION_SIDE,) if measured[ATTENTION_SIDE] else ()
    for name in (*side, GELU, NORMS, QK):
        groups.append(
            GroupFloor(
                name, f"{moved[name] / 1e9:.2f} GB at {gbs:.0f} GB/s", moved[name] / gbs / 1e6, measured[name]
            )
        )
    groups.append(GroupFloor(OTHER, "measured", measured[OTHER], measured[OTHER]))
    mine = [r for r in steps if r["preset"] == preset and r["batch"] == batch]
    flopkit_row = next(r for r in mine if r["model"] == "flopkit" and r["mode"] == STEP_MODE)
    upstream_row = min((r for r in mine if r["model"] == "upstream"), key=lambda r: r["ms"])
    return PresetFloor(
        preset=preset,
        batch=batch,
        groups=tuple(groups),
        kernels_ms=sum(ms for _, ms, _ in kernels),
        flopkit_ms=flopkit_row["ms"],
        flopkit_gpu_ms=flopkit_row["gpu_ms"],
        upstream_best_ms=upstream_row["ms"],
        upstream_best_mode=upstream_row["mode"],
        matmul_flops=matmul,
        attention_flops=attention,
        bytes=moved,
    )


def step_floor(results: str | Path = RESULTS) -> tuple[dict[str, PresetFloor], dict[str, Any]]:
    """Every preset of :data:`KERNEL_RUNS` from the records under ``results``; returns the floors
    and the roofs they divide by (bench_train run :data:`TRAIN_RUN`)."""
    kernel_record = load_record(Path(results) / STEP_KERNELS)
    train = load_record(Path(results) / BENCH_TRAIN)["runs"][TRAIN_RUN]
    floors = {}
    for preset, run in KERNEL_RUNS.items():
        data = kernel_record["runs"][run]["data"]
        batch = bench_train.BATCH[preset]
        if data["preset"] != preset or data["batch"] != batch:
            raise ValueError(
                f"step_kernels run {run}: {data['preset']} b{data['batch']}, not {preset} b{batch}"
            )
        kernels = data["models"][KERNEL_COLUMN]["kernels"]
        floors[preset] = preset_floor(preset, kernels, train["steps"], train["roofs"], batch)
    return floors, train["roofs"]


def render(floors: Mapping[str, PresetFloor], roofs: Mapping[str, Any]) -> list[str]:
    """The markdown tables: per preset, the groups and the whole step."""
    lines = [
        f"Roofs: bench_train run `{TRAIN_RUN}`, copy {roofs['copy_gbs']:.0f} GB/s, bf16 matmul "
        f"{roofs['matmul_tflops']:.0f} TFLOP/s. Measured groups: step_kernels column `{KERNEL_COLUMN}` "
        f"(torch.compile, default mode), GPU ms per step.",
    ]
    for f in floors.values():
        lines += [
            "",
            f"**{f.preset}**, batch {f.batch} (step_kernels run `{KERNEL_RUNS[f.preset]}`)",
            "",
            "| group | work at the roof | floor ms | measured ms | measured / floor | above floor ms |",
            "|---|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {g.group} | {g.work} | {g.floor_ms:.2f} | {g.measured_ms:.2f} | {g.ratio:.2f} | {g.measured_ms - g.floor_ms:.2f} |"
            for g in f.groups
        ]
        lines += [
            f"| all kernels | | {f.floor_ms:.2f} | {f.kernels_ms:.2f} | {f.kernels_ms / f.floor_ms:.2f} | {f.kernels_ms - f.floor_ms:.2f} |",
            "",
            "| whole step | ms | / floor |",
            "|---|---:|---:|",
            f"| floor (sum of the groups) | {f.floor_ms:.2f} | 1.00 |",
            f"| flopkit, GPU ms per step (step_kernels, compile) | {f.kernels_ms:.2f} | {f.kernels_ms / f.floor_ms:.2f} |",
            f"| flopkit, GPU ms per step (bench_train, {STEP_MODE}) | {f.flopkit_gpu_ms:.2f} | {f.flopkit_gpu_ms / f.floor_ms:.2f} |",
            f"| flopkit, ms/step (bench_train, {STEP_MODE}) | {f.flopkit_ms:.2f} | {f.flopkit_ms / f.floor_ms:.2f} |",
            f"| upstream's best, ms/step (bench_train, {f.upstream_best_mode}) | {f.upstream_best_ms:.2f} | {f.upstream_best_ms / f.floor_ms:.2f} |",
            f"| {TARGET}x upstream's best: {f.upstream_best_ms:.2f} / {TARGET} | {f.target_ms:.2f} | {f.target_ms / f.floor_ms:.2f} |",
        ]  # fmt: skip
    return lines


def to_data(floors: Mapping[str, PresetFloor]) -> dict[str, Any]:
    """The record's own keys: where the numbers come from and every preset's floors."""
    presets = {}
    for preset, f in floors.items():
        row = asdict(f)
        row["groups"] = [{**asdict(g), "ratio": g.ratio} for g in f.groups]
        presets[preset] = {**row, "floor_ms": f.floor_ms, "target_ms": f.target_ms}
    return {
        "sources": {
            "step_kernels": {"file": STEP_KERNELS, "runs": KERNEL_RUNS, "column": KERNEL_COLUMN},
            "bench_train": {"file": BENCH_TRAIN, "run": TRAIN_RUN, "mode": STEP_MODE},
        },
        "target": TARGET,
        "presets": presets,
    }


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description="The training step's floor per kernel group, from the committed H100 records (CPU only).",
        epilog="example: python -m benchmarks.step_floor --out /tmp/floor",
    )
    ap.add_argument(
        "--results", default=str(RESULTS), help="folder of the two records (default: %(default)s)"
    )
    ap.add_argument("--out", default=os.environ.get("OUT"), help="write DIR/step_floor.json (default: $OUT)")
    args = ap.parse_args(argv)
    floors, roofs = step_floor(args.results)
    lines = render(floors, roofs)
    if args.out:
        record = H.make_record("step_floor", to_data(floors), env=H.environment(), roofs=dict(roofs))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with open(Path(args.out) / "step_floor.json", "w") as fh:
            json.dump(record, fh, indent=1)
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
