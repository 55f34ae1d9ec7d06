"""Where a compiled training step's GPU time goes, kernel by kernel, flopkit against nvSubquadratic.

Run on the device machine (see /work/.library/device/), from the repository root::

    python benchmarks/step_kernels.py --upstream PATH [--preset vit5-small] [--batch 256] \
        [--modes eager,compile] --out $OUT

Builds both models and the step exactly as ``bench_train.py`` does (bf16 weights under bf16
autocast, forward + cross-entropy + backward; ``torch.compile`` default mode unless ``--modes``
names others, each a column of its own), runs 5 warm-up
steps, then profiles 3 and prints, per model, the GPU time per step by group (cuBLAS GEMMs,
attention, flopkit's Triton kernels, Inductor's generated kernels, other) and the costliest
kernels. Writes ``step_kernels.json`` and ``step_kernels.md`` under ``--out``; ``--render FILE``
prints the tables of a saved JSON again (no GPU).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
import bench_train  # noqa: E402  (the models and the step, built one way)
from _results import write_results  # noqa: E402

STEPS = 3


def group(name: str) -> str:
    if "sdpa" in name or "fmha" in name or "flash" in name or "dot_do_o" in name or "convert_dq" in name:
        return "attention (cuDNN)"
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
    if kind == "flopkit":
        model = bench_train.build_flopkit(preset)
    else:
        model = bench_train.build_upstream(preset, upstream)
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
        "groups": dict(groups.most_common()),
        "kernels": kernels,
    }


def render(res: dict, top: int) -> list[str]:
    """The markdown tables of a result (groups recomputed from the kernel list)."""
    kinds = list(res["models"])
    for m in res["models"].values():
        groups = collections.Counter()
        for name, t, _ in m["kernels"]:
            groups[group(name)] += t
        m["groups"] = dict(groups.most_common())
    lines = [
        f"step_kernels: {res['device']}, torch {res['torch']}, {res['date']}; {res['preset']}, batch "
        f"{res['batch']}, {', '.join(res.get('modes', ['compile']))}, GPU ms per step ({STEPS} profiled steps)",
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
    ap.add_argument("--preset", default="vit5-small")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--modes", default="compile", help="of eager, compile, reduce-overhead (bench_train's)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--render", default=None, help="re-render a step_kernels.json (no GPU needed)")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as fh:
            print("\n".join(render(json.load(fh), args.top)))
        return
    res = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "preset": args.preset,
        "batch": args.batch,
        "modes": args.modes.split(","),
        "models": {},
    }
    kinds = ["flopkit"] + (["upstream"] if args.upstream else [])
    for mode in res["modes"]:
        for kind in kinds:
            name = kind if mode == "compile" else f"{kind} {mode}"
            res["models"][name] = profile_step(kind, args.preset, args.batch, args.upstream, mode)
    write_results(args.out, "step_kernels", res, render(res, args.top))


if __name__ == "__main__":
    main()
