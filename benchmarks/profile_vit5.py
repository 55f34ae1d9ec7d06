"""GPU run of ``flopkit profile`` (issue 11): a ViT-5 training step, eager and ``--compile``.

Each variant runs ``flopkit profile PRESET --batch B --training [--compile] --format json --plot``
in its own process, renders the JSON as markdown with the command's own renderer, and checks the
acceptance criteria against the run and against ``flopkit report``:

- ``adds up``: the time charged to the model's rows and the loss is within ``--tolerance`` (3 %)
  of the profiler's own total (every kernel's duration, per step);
- ``flops``: every row's FLOPs equal ``report``'s (same preset, batch, ``--training``);
- ``overhead``: the step under the profiler (with the module ranges) is at most 10 % slower
  than the plain step.

Writes one record, ``profile_vit5_DEVICE.json`` and ``.md`` (every variant's profile, command
and checks; ``benchmarks/_harness.py``), and the plots ``profile_vit5_PRESET_VARIANT.png`` under
``--out`` (default ``$OUT``; without either it only prints), and prints a table last. Usage (on the
GPU machine, from the repository root)::

    python -m benchmarks.profile_vit5                      # vit5-base, batch 128, eager + compile
    python -m benchmarks.profile_vit5 --variants eager --batch 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._harness import ResultWriter

CLI = [sys.executable, "-c", "from flopkit.cli import main; main()"]


def acceptance(profile: dict[str, Any], report: dict[str, Any], tolerance: float = 0.03) -> dict[str, Any]:
    """The three checks of one profile (its ``--format json``) against ``report``'s JSON."""
    rows = {r["path"]: r for r in profile["rows"]}
    charged = sum(rows[p]["forward_ms"] + rows[p]["backward_ms"] for p in ("", "(loss)") if p in rows)
    total = profile["profiler_total_ms"]
    gap = abs(charged - total) / total if total else float("inf")
    mismatched = [
        r["path"]
        for r in report["rows"]
        if rows.get(r["path"], {}).get("flops", "missing") != (None if r["counted_in"] else r["flops"])
    ]
    return {
        "charged_ms": charged,
        "profiler_total_ms": total,
        "gap": gap,
        "adds_up": gap <= tolerance,
        "flops_equal": not mismatched,
        "flops_mismatched": mismatched,
        "overhead": profile["overhead"],
        "overhead_ok": profile["overhead"] <= 0.10,
    }


def _run(args: list[str]) -> str:
    done = subprocess.run(CLI + args, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"flopkit {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit5-base")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variants", default="eager,compile", help="comma-separated: eager, compile")
    parser.add_argument("--tolerance", type=float, default=0.03)
    parser.add_argument("--out", default=os.environ.get("OUT"), help="result folder (default $OUT)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp())
    from flopkit.cli.profile import render_profile

    common = [args.preset, "--batch", str(args.batch), "--training", "--depth", str(args.depth)]
    report = json.loads(_run(["report", *common, "--format", "json"]))
    summary = []
    record: dict[str, Any] = {"args": vars(args), "variants": {}}
    lines: list[str] = []
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if variant not in ("eager", "compile"):
            raise SystemExit(f"--variants: expected eager and/or compile, got {variant!r}")
        stem = f"profile_vit5_{Path(args.preset).stem if Path(args.preset).suffix else args.preset}_{variant}"
        png = (out or scratch) / f"{stem}.png"
        cmd = [
            "profile",
            *common,
            "--device",
            args.device,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--format",
            "json",
            "--plot",
            str(png),
            *(["--compile"] if variant == "compile" else []),
        ]
        print(f"== flopkit {' '.join(cmd)}", flush=True)
        data = json.loads(_run(cmd))
        data["command"] = "flopkit " + " ".join(cmd)
        checks = acceptance(data, report, args.tolerance)
        data["acceptance"] = checks
        markdown = render_profile(data, "markdown")
        print(render_profile(data, "table"), flush=True)
        record["variants"][variant] = data
        lines += [f"## {variant}", "", f"`{data['command']}`", "", markdown, ""]
        if out is not None:
            ResultWriter(out, "profile_vit5").save(record, lines)
        summary.append((variant, data, checks))
    print()
    header = (
        f"{'variant':8} {'step ms':>9} {'GPU busy':>9} {'host-bound':>10} {'MFU':>6} "
        f"{'charged/total ms':>20} {'gap':>6} {'overhead':>9}  flops=report"
    )
    print(header)
    print("-" * len(header))
    failed = False
    for variant, data, c in summary:
        ok = c["adds_up"] and c["flops_equal"] and c["overhead_ok"]
        failed |= not ok
        print(
            f"{variant:8} {data['step_ms']:9.2f} {data['gpu_ms']:9.2f} {100 * data['host_bound_share']:9.1f}% "
            f"{100 * data['mfu']:5.1f}% {c['charged_ms']:9.2f}/{c['profiler_total_ms']:<9.2f} "
            f"{100 * c['gap']:5.2f}% {100 * c['overhead']:+8.1f}%  {c['flops_equal']}"
            f"{'' if ok else '  FAIL'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
