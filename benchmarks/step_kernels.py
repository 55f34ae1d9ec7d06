"""Where a compiled training step's GPU time goes, kernel by kernel, flopkit against nvSubquadratic.

Run on the device machine (see /work/.library/device/), from the repository root::

    python -m benchmarks.step_kernels --upstream PATH [--presets vit5-small,vit5-base] [--batch N] \
        [--modes eager,compile] [--models flopkit,flopkit-sdpa,upstream] [--steps 3] --out $OUT

Builds both models and the step exactly as ``bench_train.py`` does (bf16 weights under bf16
autocast, forward + cross-entropy + backward; ``torch.compile`` default mode unless ``--modes``
names others, each a column of its own), runs 5 warm-up steps, times ``--steps`` steps unprofiled
and then profiles as many back to back. It prints, per preset and model (``--models``,
``bench_train.py``'s names; default flopkit, and upstream when ``--upstream`` is given), the GPU
time per step by group (cuBLAS GEMMs, attention, flopkit's Triton kernels, Inductor's generated
kernels, other), the costliest kernels, and the GPU timeline (:func:`gaps`): the wall time per
step against the kernels' span and busy time, the idle gaps by length and the longest of them.
Each preset runs at ``bench_train.py``'s batch unless ``--batch`` is given. Writes
``step_kernels_DEVICE.json`` and ``.md`` under ``--out`` (``benchmarks/_harness.py``);
``--render FILE`` prints the tables of a saved JSON again (no GPU).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import bench_train  # the models and the step, built one way
from benchmarks._harness import ResultWriter, out_default
from flopkit.profile import busy_us

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
    if name.startswith("_dgelu_mm"):  # kernels.gelu_linear's backward: fc2's input-gradient GEMM
        return "GEMM + GELU' (flopkit Triton)"
    if name.startswith("_"):
        return "flopkit Triton kernels"
    return "other"


class Clocks:
    """Samples the GPU's SM clock, power draw and clock-event reasons with ``nvidia-smi`` every
    ``period_ms`` while the block runs (``summary()`` after it; empty where nvidia-smi is missing).
    Under sustained matmul load an H100 reaches its power cap and lowers its clock: the reason
    bit ``0x4`` (software power cap) is set."""

    FIELDS = "clocks.sm,power.draw,clocks_event_reasons.active"

    def __init__(self, period_ms: int = 100) -> None:
        self.period_ms = period_ms
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def __enter__(self) -> Clocks:
        index = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
        cmd = ["nvidia-smi", "-i", index, f"--query-gpu={self.FIELDS}", "--format=csv,noheader,nounits",
               f"-lms={self.period_ms}"]  # fmt: skip
        try:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.proc = None
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=10)
            self.lines = out.splitlines()

    def summary(self) -> dict:
        """Over the samples taken while the GPU was not idle (reason bit ``0x1`` clear): their count,
        the SM clock (MHz: median, min, max), the power (W: median, max) and the share of samples
        at the power cap."""
        busy = []
        for line in self.lines:
            try:
                mhz, watts, reasons = (part.strip() for part in line.split(","))
                busy.append((float(mhz), float(watts), int(reasons, 16)))
            except ValueError:
                continue
        busy = [b for b in busy if not b[2] & 0x1]
        if not busy:
            return {}
        mhz = [b[0] for b in busy]
        watts = [b[1] for b in busy]
        return {
            "samples": len(busy),
            "sm_mhz_median": statistics.median(mhz),
            "sm_mhz_min": min(mhz),
            "sm_mhz_max": max(mhz),
            "power_w_median": statistics.median(watts),
            "power_w_max": max(watts),
            "power_capped_share": sum(1 for b in busy if b[2] & 0x4) / len(busy),
        }


def profile_step(
    kind: str, preset: str, batch: int, upstream: str | None, mode: str = "compile", steps: int = STEPS
) -> dict:
    """Kernels and timeline of ``steps`` profiled steps back to back (after 5 warm-up steps and a
    timed, unprofiled loop of as many: ``wall_ms`` per step, as ``bench_train.py`` times it, with the
    GPU's clock and power sampled during it: ``clocks``, :class:`Clocks`). It compiles from scratch
    (``bench_train.cold_compile``: the compile caches would hand back code compiled from another
    version of the custom ops, whose bodies their keys do not cover)."""
    with bench_train.blas_backend(kind), bench_train.cold_compile():
        return _profile_step(kind, preset, batch, upstream, mode, steps)


def _profile_step(kind: str, preset: str, batch: int, upstream: str | None, mode: str, steps: int) -> dict:
    torch._dynamo.reset()
    model = bench_train.build_model(kind, preset, upstream)
    step = bench_train.make_step(bench_train.compile_model(model, mode), kind, batch)
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with Clocks() as clocks:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / steps * 1e3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    timeline = gaps(prof, steps) | {"wall_ms": wall, "steps": steps, "clocks": clocks.summary()}
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    kernels = sorted(
        ((e.key, e.device_time_total / steps / 1e3, e.count // steps) for e in events), key=lambda r: -r[1]
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
        "timeline": timeline,
    }


GAP_BINS_US = (2.0, 5.0, 20.0, 100.0)
"""Upper edges of the idle-gap histogram (microseconds); the last bin is everything longer."""


def gaps(prof, steps: int, top: int = 12) -> dict:
    """Where the GPU sits idle between the profiled steps' kernels, per step.

    The device activities (kernels, memsets, memcpys) of the profiler's trace, in start order:
    ``span_ms`` runs from the first start to the last end, ``busy_ms`` is the union of their
    intervals and ``idle_ms`` the rest, binned by gap length (``GAP_BINS_US``); ``largest`` lists the
    longest gaps (microseconds, per occurrence) with the activities on either side. A step whose
    wall time exceeds its summed kernel time by more than the kernels' overlap loses it here."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as fh:
            trace = json.load(fh)
    finally:
        os.unlink(path)
    acts = sorted(
        (e["ts"], e["ts"] + e.get("dur", 0.0), e["name"])
        for e in trace.get("traceEvents", [])
        if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy")
    )
    if not acts:
        return {}
    bins = [0.0] * (len(GAP_BINS_US) + 1)
    counts = [0] * (len(GAP_BINS_US) + 1)
    found: list[tuple[float, str, str]] = []
    end, last = acts[0][0], acts[0][2]
    for start, stop, name in acts:
        if start > end:
            gap = start - end
            i = next((i for i, edge in enumerate(GAP_BINS_US) if gap <= edge), len(GAP_BINS_US))
            bins[i] += gap
            counts[i] += 1
            found.append((gap, last[:60], name[:60]))
        if stop >= end:
            end, last = stop, name
    span = end - acts[0][0]
    busy = busy_us([(start, stop) for start, stop, _ in acts])
    per_step = _busy_per_step(acts, steps)
    labels = [f"<= {e:g} us" for e in GAP_BINS_US] + [f"> {GAP_BINS_US[-1]:g} us"]
    return {
        "span_ms": span / steps / 1e3,
        "busy_ms": busy / steps / 1e3,
        "idle_ms": (span - busy) / steps / 1e3,
        "idle_by_gap": {
            k: [b / steps / 1e3, round(c / steps, 1)] for k, b, c in zip(labels, bins, counts, strict=True)
        },
        "largest": [[round(g, 1), a, b] for g, a, b in sorted(found, reverse=True)[:top]],
        "busy_per_step_ms": per_step,
    }


def _busy_per_step(acts: list[tuple[float, float, str]], steps: int) -> list[float]:
    """Each step's busy time (ms), the activities split into ``steps`` runs of equal count (every
    step launches the same kernels); empty where the count does not divide."""
    if steps < 1 or len(acts) % steps:
        return []
    n = len(acts) // steps
    return [
        busy_us([(start, stop) for start, stop, _ in acts[i * n : (i + 1) * n]]) / 1e3 for i in range(steps)
    ]


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
        f"**{res['preset']}**, batch {res['batch']}, {', '.join(res.get('modes', ['compile']))}, GPU ms per step ({res.get('steps', STEPS)} profiled steps)",
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
    timed = [k for k in kinds if res["models"][k].get("timeline")]
    if timed:  # runs from 2026-12-07 on (--steps)
        tl = {k: res["models"][k]["timeline"] for k in timed}
        lines += [
            "",
            "GPU timeline per step, ms (wall: an unprofiled loop of as many steps, timed as bench_train.py times it; "
            "span: first kernel start to last end; idle: no kernel running):",
            "",
            "| | " + " | ".join(timed) + " |",
            "|---|" + "---:|" * len(timed),
        ]
        for key in ("wall_ms", "span_ms", "busy_ms", "idle_ms"):
            if all(key in tl[k] for k in timed):
                lines.append(f"| {key[:-3]} | " + " | ".join(f"{tl[k][key]:.2f}" for k in timed) + " |")
        if all(len(tl[k].get("busy_per_step_ms", [])) > 1 for k in timed):
            for label, i in (("busy, first step", 0), ("busy, last step", -1)):
                lines.append(
                    f"| {label} | " + " | ".join(f"{tl[k]['busy_per_step_ms'][i]:.2f}" for k in timed) + " |"
                )
        if all(tl[k].get("clocks") for k in timed):
            c = {k: tl[k]["clocks"] for k in timed}
            lines.append(
                "| SM clock in the wall loop, MHz: median (min-max) | "
                + " | ".join(
                    f"{c[k]['sm_mhz_median']:.0f} ({c[k]['sm_mhz_min']:.0f}-{c[k]['sm_mhz_max']:.0f})"
                    for k in timed
                )
                + " |"
            )
            lines.append(
                "| power in the wall loop, W: median (max); samples at the power cap | "
                + " | ".join(
                    f"{c[k]['power_w_median']:.0f} ({c[k]['power_w_max']:.0f}); {c[k]['power_capped_share']:.0%}"
                    for k in timed
                )
                + " |"
            )
        for label in tl[timed[0]]["idle_by_gap"]:
            cells = [tl[k]["idle_by_gap"].get(label, [0.0, 0]) for k in timed]
            lines.append(
                f"| idle in gaps {label} | " + " | ".join(f"{ms:.2f} ({n:g})" for ms, n in cells) + " |"
            )
        for kind in timed:
            lines += ["", f"**{kind}**, longest gaps:", "", "| us | after | before |", "|---:|---|---|"]
            lines += [f"| {g:.1f} | `{a}` | `{b}` |" for g, a, b in tl[kind]["largest"]]
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
    ap.add_argument("--steps", type=int, default=STEPS, help="profiled steps, back to back")
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
        run = {
            "preset": preset,
            "batch": batch,
            "modes": args.modes.split(","),
            "steps": args.steps,
            "models": {},
        }
        res["runs"].append(run)
        for mode in run["modes"]:
            for kind in kinds:
                name = kind if mode == "compile" else f"{kind} {mode}"
                run["models"][name] = profile_step(kind, preset, batch, args.upstream, mode, args.steps)
                writer.save(res)
    writer.finish(res, render(res, args.top))


if __name__ == "__main__":
    main()
