"""How much host work a compiled training step issues, and what the GELU op adds to it.

Run on the device machine (see /work/.library/device/), from the repository root::

    python -m benchmarks.compile_host [--upstream PATH] [--batches 8,256] [--steps 20] --out $OUT

A compiled step (``torch.compile`` default mode, the step of ``bench_train.py``) launches a few
hundred kernels from Inductor's generated Python. When that host work approaches the GPU work the
step becomes host-bound. Per model and batch this prints: the wall time per step (median of five
loops of ``--steps`` steps, 20 by default), the host time to issue one step (the median of 9 single steps, each started
on an idle GPU, so the host never waits on a full launch queue) and the GPU kernel time (the union
of kernel intervals under the profiler). At batch 8 the GPU work is small and the wall time is the
host's. Rows: flopkit as shipped (``Mlp`` runs ``kernels.gelu``: PyTorch's GELU kernels through the
``flopkit::gelu`` op), flopkit with ``nn.GELU`` traced by Inductor (its own Triton GELU kernels),
and nvSubquadratic's model when ``--upstream`` is given. Writes ``compile_host_DEVICE.json`` and
``.md`` under ``--out`` (``benchmarks/_harness.py``).
"""

from __future__ import annotations

import argparse
import time
import types

import torch

from benchmarks import bench_train  # the models and the step, built one way
from benchmarks._harness import ResultWriter, host_samples_ms, median, out_default


def _inductor_gelu(model: torch.nn.Module) -> torch.nn.Module:
    for block in model.blocks:
        block.mlp._activation = types.MethodType(lambda self, h: self.act(h), block.mlp)
    return model


def measure(kind: str, batch: int, upstream: str | None, steps: int = 20) -> dict:
    torch._dynamo.reset()
    torch.manual_seed(0)
    if kind == "upstream":
        model = bench_train.build_upstream("vit5-small", upstream)
    else:
        model = bench_train.build_flopkit("vit5-small")
        if kind == "flopkit, Inductor's GELU":
            model = _inductor_gelu(model)
    step = bench_train.make_step(torch.compile(model), "upstream" if kind == "upstream" else "flopkit", batch)
    for _ in range(8):
        step()
    torch.cuda.synchronize()
    walls = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t0) / steps * 1e3)
    # each step started on an idle GPU; the sample ends when the host returns (no sync after it)
    issue = host_samples_ms(step, reps=9, warmup=0, before=torch.cuda.synchronize)
    torch.cuda.synchronize()
    gpu = bench_train.kernel_ms(step, 3)
    del model, step
    torch.cuda.empty_cache()
    return {
        "model": kind,
        "batch": batch,
        "wall_ms": median(walls),
        "wall_runs": [round(w, 3) for w in walls],
        "issue_ms": median(issue),
        "issue_runs": [round(h, 3) for h in issue],
        "gpu_ms": gpu,
    }


def render(res: dict) -> list[str]:
    lines = [
        "vit5-small, torch.compile default mode, ms per training step",
        "",
        "| model | batch | wall | host to issue one step | GPU kernels | host-bound |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        bound = max(0.0, 1 - r["gpu_ms"] / r["wall_ms"])
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['wall_ms']:.2f} | {r['issue_ms']:.2f} | "
            f"{r['gpu_ms']:.2f} | {100 * bound:.0f} % |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", default=None, help="nvSubquadratic source tree (has nvsubquadratic/)")
    ap.add_argument("--batches", default="8,256")
    ap.add_argument("--steps", type=int, default=20, help="steps per timed loop")
    ap.add_argument("--out", default=out_default())
    args = ap.parse_args()
    kinds = ["flopkit", "flopkit, Inductor's GELU"] + (["upstream"] if args.upstream else [])
    writer = ResultWriter(args.out, "compile_host")
    res: dict = {"args": vars(args), "rows": []}
    for batch in (int(b) for b in args.batches.split(",")):
        for kind in kinds:
            res["rows"].append(measure(kind, batch, args.upstream, args.steps))
            print(res["rows"][-1], flush=True)
            writer.save(res)
    writer.finish(res, render(res))


if __name__ == "__main__":
    main()
