"""CLI start-up on CPU: what ``flopkit report`` costs beyond ``import torch``, phase by phase.

Replaces the wall-clock assert that used to sit in the test suite (timings belong here, not in
tests). Each run is a fresh interpreter that times, in-process: ``import torch``; ``import flopkit``
and its CLI; building the model on the meta device (``flopkit.models.load_model``); the per-module
rows (``flopkit.count``); rendering. Prints medians over the runs as a table (last), and writes them
to ``cli_startup_DEVICE.json`` and ``.md`` under ``--out`` (default ``$OUT``; nothing without either;
``benchmarks/_harness.py``). CPU only; from the repository root::

    python -m benchmarks.cli_startup                    # vit5-xlarge and the 175B config, 7 runs
    python -m benchmarks.cli_startup --runs 11 vit5-small

The end-to-end figure to quote is ``farm-bench --vs 'python -c "import torch"' -- flopkit report
vit5-xlarge`` (whole processes); this script says where the difference goes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks._harness import ResultWriter, environment, median

PHASES = ("torch", "flopkit", "build", "rows", "render")

# One fresh process per run; prints one JSON object of phase -> seconds.
PROBE = """
import gc, json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import flopkit, flopkit.cli
from flopkit.flops.count import count
from flopkit.models import load_model
gc.freeze()  # as flopkit.cli.main does
t2 = time.perf_counter()
loaded = load_model(sys.argv[1], sys.argv[2:])
t3 = time.perf_counter()
report = count(loaded, depth=2)
t4 = time.perf_counter()
report.to_table()
t5 = time.perf_counter()
print(json.dumps({"torch": t1 - t0, "flopkit": t2 - t1, "build": t3 - t2, "rows": t4 - t3, "render": t5 - t4}))
"""

CONFIGS = {
    "vit5-xlarge": ["vit5-xlarge"],
    "175B": ["vit5-small", "hidden_dim=12288", "depth=96", "num_heads=96"],
}


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median of each phase over ``runs``, plus ``beyond_torch``: the median of the per-run sums of
    every phase after ``import torch``."""
    out = {phase: median(r[phase] for r in runs) for phase in PHASES}
    out["beyond_torch"] = median(sum(r[p] for p in PHASES if p != "torch") for r in runs)
    return out


def measure(args: list[str], runs: int) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True
        )
        samples.append(json.loads(done.stdout))
    return summarize(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", default=list(CONFIGS), help="names in CONFIGS or presets")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", default=os.environ.get("OUT"), help="result folder (default $OUT)")
    opts = parser.parse_args()
    results = {name: measure(CONFIGS.get(name, [name]), opts.runs) for name in opts.configs}
    lines = [f"medians over {opts.runs} fresh processes, seconds", ""]
    lines.append("| config | " + " | ".join((*PHASES, "beyond_torch")) + " |")
    lines.append("|---|" + "---:|" * (len(PHASES) + 1))
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[p]:.3f}" for p in (*PHASES, "beyond_torch")) + " |")
    if opts.out:
        # a CPU benchmark: the record's device is the CPU even where a GPU is present
        env = {**environment(), "gpu": None}
        ResultWriter(opts.out, "cli_startup", env=env).finish({"runs": opts.runs, "results": results}, lines)
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
