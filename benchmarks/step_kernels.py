"""Where a compiled training step's GPU time goes, kernel by kernel, flopkit against nvSubquadratic.

Run on the device machine (see /work/.library/device/), from the repository root::

    python -m benchmarks.step_kernels --upstream PATH [--presets vit5-small,vit5-base] [--batch N] \
        [--modes eager,compile] [--models flopkit,flopkit-sdpa,upstream] --out $OUT

Builds both models and the step exactly as ``bench_train.py`` does (bf16 weights under bf16
autocast, forward + cross-entropy + backward; ``torch.compile`` default mode unless ``--modes``
names others, each a column of its own), runs 5 warm-up
steps, then profiles 3 and prints, per preset and model (``--models``, ``bench_train.py``'s
names; default flopkit, and upstream when ``--upstream`` is given), the GPU time per step by group (cuBLAS
GEMMs, attention, flopkit's Triton kernels, Inductor's generated kernels, other) and the costliest
kernels. Each preset runs at ``bench_train.py``'s batch unless ``--batch`` is given. Writes
``step_kernels_DEVICE.json`` and ``.md`` under ``--out`` (``benchmarks/_harness.py``);
``--render FILE`` prints the tables of a saved JSON again (no GPU).
"""

from __future__ import annotations

import argparse
import collections
import json

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import bench_train  # the models and the step, built one way
from benchmarks._harness import ResultWriter, out_default

STEPS = 3


def group(name: str) -> str:
    if "sdpa" in name or "fmha" in name or "flash" in name or "dot_do_o" in name or "convert_dq" in name:
        return "attention (cuDNN)"
    if name.startswith("_attn_"):  # kernels/_sdpa_triton.py
        return "attention (flopkit Triton)"
    if "fprop" in name or "dgrad" in name or "wgrad" in name or "nhwc" in name or "convolve" in name:
        return "convolution (cuDNN)"
    if "nvjet" in name or "gemm" in name.lower() or "cutlass" in name or "splitKreduce" in name:
        return "GEMM (cuBLAS)"
    if name.startswith("triton_"):
        return "Inductor kernels"
    if name.startswith("_"):
        return "flopkit Triton kernels"
    return "other"


def profile_step(kind: str, preset: str, batch: int, upstream: str | None, mode: str = "compile") -> dict:
    torch._dynamo.reset()
    model = bench_train.build_model(kind, preset, upstream)
    step = bench_train.make_step(bench_train.compile_model(model, mode), kind, batch)
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(STEPS):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    kernels = sorted(
        ((e.key, e.device_time_total / STEPS / 1e3, e.count // STEPS) for e in events), key=lambda r: -r[1]
    )
    groups = collections.Counter()
    for name, t, _ in kernels:
        groups[group(name)] += t
    del model, step
    torch.cuda.empty_cache()
    return {
        "total_ms": sum(t for _, t, _ in kernels),
        "launches": sum(n for _, _, n in kernels),
        "groups": dict(groups.most_common()),
        "kernels": kernels,
    }


def render(res: dict, top: int) -> list[str]:
    """The markdown tables of a result, one section per preset (a record of one preset, as written
    before ``--presets``, renders as one section; a gathered record, one per run)."""
    runs = res.get("runs") or [res]
    if isinstance(runs, dict):  # gathered from before the harness: {run name: {"data": record}}
        runs = [dict(r["data"], preset=f"{r['data']['preset']} (run {name})") for name, r in runs.items()]
    lines: list[str] = []
    for run in runs:
        lines += _render_run(run, top) + [""]
    return lines[:-1]


def _render_run(res: dict, top: int) -> list[str]:
    """The tables of one preset's run (groups recomputed from the kernel list)."""
    kinds = list(res["models"])
    for m in res["models"].values():
        groups = collections.Counter()
        for name, t, _ in m["kernels"]:
            groups[group(name)] += t
        m["groups"] = dict(groups.most_common())
    lines = [
        f"**{res['preset']}**, batch {res['batch']}, {', '.join(res.get('modes', ['compile']))}, GPU ms per step ({STEPS} profiled steps)",
        "",
        "| group | " + " | ".join(kinds) + " |",
        "|---|" + "---:|" * len(kinds),
    ]
    names = sorted({g for m in res["models"].values() for g in m["groups"]})
    for g in names:
        lines.append(
            f"| {g} | " + " | ".join(f"{res['models'][k]['groups'].get(g, 0.0):.2f}" for k in kinds) + " |"
        )
    lines.append("| total | " + " | ".join(f"{res['models'][k]['total_ms']:.2f}" for k in kinds) + " |")
    if all("launches" in res["models"][k] for k in kinds):  # runs from 2026-12-07 on
        lines.append(
            "| kernels per step | " + " | ".join(str(res["models"][k]["launches"]) for k in kinds) + " |"
        )
    for kind in kinds:
        lines += [
            "",
            f"**{kind}**, costliest kernels:",
            "",
            "| ms/step | calls | kernel |",
            "|---:|---:|---|",
        ]
        for name, t, n in res["models"][kind]["kernels"][:top]:
            lines.append(f"| {t:.3f} | {n} | `{name[:100]}` |")
    if not any(k.startswith("upstream") for k in res["models"]):
        lines += ["", "upstream: skipped (no --upstream PATH given)"]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", default=None, help="nvSubquadratic source tree (has nvsubquadratic/)")
    ap.add_argument("--presets", "--preset", default="vit5-small", help="comma-separated")
    ap.add_argument("--batch", type=int, default=None, help="default: bench_train.py's batch per preset")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--modes", default="compile", help="of eager, compile, reduce-overhead (bench_train's)")
    ap.add_argument("--models", default=None, help=f"comma list of {', '.join(bench_train.MODELS)}")
    ap.add_argument("--out", default=out_default())
    ap.add_argument("--render", default=None, help="re-render a step_kernels.json (no GPU needed)")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as fh:
            print("\n".join(render(json.load(fh), args.top)))
        return
    kinds = args.models.split(",") if args.models else ["flopkit"] + (["upstream"] if args.upstream else [])
    unknown = [k for k in kinds if k not in bench_train.MODELS]
    if unknown:
        ap.error(
            f"--models: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(bench_train.MODELS)}"
        )
    if "upstream" in kinds and not args.upstream:
        ap.error("--models: upstream needs --upstream PATH")
    writer = ResultWriter(args.out, "step_kernels")
    res: dict = {"runs": []}
    for preset in args.presets.split(","):
        batch = args.batch or bench_train.BATCH[preset]
        run = {"preset": preset, "batch": batch, "modes": args.modes.split(","), "models": {}}
        res["runs"].append(run)
        for mode in run["modes"]:
            for kind in kinds:
                name = kind if mode == "compile" else f"{kind} {mode}"
                run["models"][name] = profile_step(kind, preset, batch, args.upstream, mode)
                writer.save(res)
    writer.finish(res, render(res, args.top))


if __name__ == "__main__":
    main()
