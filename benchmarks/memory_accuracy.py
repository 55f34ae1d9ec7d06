"""Predicted against measured GPU memory: ``flopkit.memory`` vs ``torch.cuda.max_memory_allocated()``.

For each case the same step (:func:`flopkit.step_memory.step.run_step`) runs twice on the GPU: a warm-up
step (creates the optimizer state, the cuBLAS workspaces, the allocator's cache), then, after
``torch.cuda.reset_peak_memory_stats()``, the measured step. Its ``max_memory_allocated()`` is the
measured peak; ``memory_allocated()`` before it the measured steady state. The prediction is
``flopkit.memory(...)`` for the same model, inputs and settings, computed on the meta device.

Cases: ViT-5 small and base presets with and without the Triton path, timm ``resnet50`` and
``vit_base_patch16_224`` (when timm imports), HF ``gpt2``, a small ``llama`` and ``bert``, timm
``resnet18`` (BatchNorm); each in fp32 and bf16 autocast, each with and without checkpointing of the
repeated blocks (training, AdamW). Then inference with a KV cache (gpt2, llama) and ``--fit``: the
predicted largest batch under a budget against the measured one.

Run from the repository root: ``python -m benchmarks.memory_accuracy`` (``--quick``: a few cases;
``--device cpu --quick``: a smoke test of the plumbing, where the "measured" column is the
prediction's own replay; ``--fit-only``: the ``--fit`` check alone, a record with no rows).
Writes the harness record ``memory_accuracy_DEVICE.{json,md}`` under
``--out`` (default ``$OUT``, else ``.``).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

import flopkit.step_memory as fm
from benchmarks._harness import ResultWriter, out_default
from flopkit.step_memory.step import (
    StepHooks,
    checkpoint_blocks,
    kv_cache_inputs,
    make_optimizer,
    repeated_blocks,
    run_step,
)

GiB = 1024**3


@dataclass
class Case:
    """One model and setting. ``source`` is a preset or a --model spec; ``options`` go to
    ``flopkit.memory`` unchanged."""

    name: str
    source: str
    batch: int
    options: dict[str, Any] = field(default_factory=dict)
    model_args: dict[str, Any] = field(default_factory=dict)
    triton: bool | None = None  # ViT-5 presets: the Triton path on (True) or off (False)
    needs: str | None = None  # an optional package the case needs


LLAMA = dict(
    num_hidden_layers=4,
    hidden_size=1024,
    intermediate_size=2816,
    num_attention_heads=16,
    num_key_value_heads=4,
    vocab_size=32000,
)
BERT = dict(num_hidden_layers=6)


def models(quick: bool) -> list[Case]:
    """The model list (training cases are made from it in each setting)."""
    cases = [
        Case("vit5-small torch", "vit5-small", 32, triton=False),
        Case("vit5-small triton", "vit5-small", 32, triton=True),
        Case("vit5-base torch", "vit5-base", 16, triton=False),
        Case("vit5-base triton", "vit5-base", 16, triton=True),
        Case("timm resnet50", "timm:resnet50", 16, needs="timm"),
        Case("timm resnet18 (BatchNorm)", "timm:resnet18", 32, needs="timm"),
        Case("timm vit_base_patch16_224", "timm:vit_base_patch16_224", 16, needs="timm"),
        Case("hf gpt2", "hf:gpt2", 4, {"seq_len": 512}, needs="transformers"),
        Case("hf llama (4 layers)", "hf:llama", 4, {"seq_len": 512}, LLAMA, needs="transformers"),
        Case("hf bert (6 layers)", "hf:bert", 8, {"seq_len": 256}, BERT, needs="transformers"),
    ]
    return cases[:3] if quick else cases


SETTINGS = [
    ("fp32", {}),
    ("bf16 autocast", {"autocast": "bf16"}),
    ("fp32 ckpt", {"checkpointing": "blocks"}),
    ("bf16 autocast ckpt", {"autocast": "bf16", "checkpointing": "blocks"}),
]


def has(package: str | None) -> bool:
    if package is None:
        return True
    try:
        __import__(package)
    except Exception:
        return False
    return True


def build(case: Case, device: str):
    """The model on ``device`` with real weights, and a function batch -> (args, kwargs)."""
    from flopkit.models import build_model, load_model, model_inputs, real_inputs

    if ":" in case.source:
        meta = build_model(case.source, case.model_args)
        model = build_model(case.source, case.model_args, device=device) if device != "meta" else meta
        opts = case.options

        def inputs(batch: int):
            found = model_inputs(meta, batch=batch, seq_len=opts.get("seq_len"), spec=case.source)
            if device == "meta":
                return found.args, found.kwargs
            real = real_inputs(found, device)
            return real.args, real.kwargs

        return model, inputs
    from flopkit.config import model_input

    loaded = load_model(case.source)
    model = loaded.config.build(device)
    if case.triton is not None:
        for m in model.modules():
            if hasattr(m, "use_triton"):
                m.use_triton = case.triton
    return model, lambda batch: ((model_input(loaded.config, model, batch, device),), {})


def measure(case: Case, batch: int, options: dict[str, Any], device: str) -> dict[str, int]:
    """Steady and peak allocated bytes of the second of two identical steps, on ``device``."""
    model, make_inputs = build(case, device)
    training = options.get("training", True)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(options.get("autocast") or "none")
    model.train(training)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(options.get("optimizer") or "adamw", params) if training else None
    restore = (
        checkpoint_blocks(model, repeated_blocks(model))
        if options.get("checkpointing") == "blocks"
        else (lambda: None)
    )
    hooks = StepHooks(
        autocast=(lambda: torch.autocast("cuda", dtype=autocast))
        if autocast is not None
        else StepHooks().autocast
    )
    args, kwargs = make_inputs(batch)
    kv = options.get("kv_cache")

    def step():
        extra = {}
        if kv is not None:
            dtype = autocast or next(model.parameters()).dtype
            extra = kv_cache_inputs(model, batch, kv, dtype, device)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_step(
            model,
            args,
            {**kwargs, **extra},
            training=training,
            optimizer=optimizer,
            loss=options.get("loss"),
            hooks=hooks,
        )
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        del extra
        return before, peak

    try:
        step()
        steady, peak = step()
    finally:
        restore()
    return {"steady": steady, "peak": peak}


# The cuBLAS workspace of the PyTorch build under test (probe_workspace); empty: flopkit's defaults.
BUILD: dict[str, Any] = {}


def probe_workspace() -> dict[str, Any]:
    """How this PyTorch build holds the cuBLAS workspace, measured before anything else runs a GEMM:
    the bytes kept after GEMMs on this thread (inference) and after a backward too (the autograd
    engine's thread: training), and the transient peak of one GEMM beyond its output (``per_op``
    builds allocate the workspace around each GEMM). A property of the build, not of any model."""
    sync, allocated = torch.cuda.synchronize, torch.cuda.memory_allocated
    sync()
    base = allocated()
    a = torch.randn(256, 256, device="cuda", requires_grad=True)
    w = torch.randn(256, 256, device="cuda", requires_grad=True)
    b = torch.randn(256, device="cuda", requires_grad=True)
    own = allocated() - base
    with torch.no_grad():
        out = a @ w  # cuBLAS: a cached workspace is made here, at this thread's first GEMM
        del out
        out = torch.nn.functional.linear(a, w, b)  # addmm with a bias: the cuBLASLt path
        del out
        sync()
        inference = allocated() - base - own
        torch.cuda.reset_peak_memory_stats()
        before = allocated()
        out = a @ w  # a second GEMM: only a per-operation workspace shows above its output
        sync()
        transient = torch.cuda.max_memory_allocated() - before - out.untyped_storage().nbytes()
        del out
    sync()
    torch.nn.functional.linear(a @ w, w, b).sum().backward()
    a.grad = w.grad = b.grad = None
    sync()
    training = allocated() - base - own
    mode = "per_op" if transient >= 1024**2 else "cached"
    return {
        "cublas_workspace": mode,
        "kept_inference": inference,
        "kept_training": training,
        "transient": transient,
    }


def predict(case: Case, batch: int, options: dict[str, Any]) -> fm.MemoryResult:
    """``flopkit.memory`` for the case: a preset is loaded on meta with the case's Triton setting (the
    prediction replays the Triton path's custom ops when it is on), with the build's cuBLAS
    workspace when it was probed."""
    from flopkit.models import load_model

    if BUILD:
        kept = BUILD["kept_training"] if options.get("training") else BUILD["kept_inference"]
        options = {**options, "cublas_workspace": BUILD["cublas_workspace"], "workspace_bytes": kept}

    seq_len = case.options.get("seq_len")
    if ":" in case.source:
        return fm.memory(
            case.source, batch=batch, seq_len=seq_len, model_args=case.model_args, depth=0, **options
        )
    loaded = load_model(case.source)
    if case.triton is not None:
        for m in loaded.module.modules():
            if hasattr(m, "use_triton"):
                m.use_triton = case.triton
    return fm.memory(loaded, batch=batch, depth=0, **options)


def row(case: Case, setting: str, batch: int, options: dict[str, Any], device: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = predict(case, batch, options)
    t_pred = time.perf_counter() - t0
    if device == "cuda":
        measured = measure(case, batch, options, device)
        gc.collect()  # the case's model and optimizer died with measure's frame
        torch.cuda.empty_cache()
    else:  # smoke mode: no GPU, the harness checks itself against the prediction
        measured = {"steady": result.steady_bytes, "peak": result.peak_bytes}
    error = (result.peak_bytes - measured["peak"]) / measured["peak"]
    return {
        "model": case.name,
        "setting": setting,
        "batch": batch,
        "predicted_peak": result.peak_bytes,
        "measured_peak": measured["peak"],
        "error": error,
        "predicted_steady": result.steady_bytes,
        "measured_steady": measured["steady"],
        # What the measured steady state leaves for the workspace once the predicted parameters,
        # optimizer state and inputs are taken out: checks the cuBLAS assumption case by case.
        "predicted_workspace": result.workspace_bytes,
        "measured_workspace": measured["steady"] - (result.steady_bytes - result.workspace_bytes),
        "peak_phase": result.peak_phase,
        "peak_module": result.peak_path,
        "sdpa": result.sdpa_backends,
        "predict_s": round(t_pred, 2),
    }


def fit_check(device: str, budget_gib: float) -> dict[str, Any]:
    """``--fit``: predicted largest batch of vit5-small (Triton path, training, bf16 autocast) under ``budget``
    against the measured largest (measured peaks stepped from the predicted batch)."""
    case = Case("vit5-small", "vit5-small", 1)  # as built: the Triton path on an H100
    options = {"training": True, "autocast": "bf16"}
    budget = int(budget_gib * GiB)
    build = {}
    if BUILD:
        build = {"cublas_workspace": BUILD["cublas_workspace"], "workspace_bytes": BUILD["kept_training"]}
    found = fm.fit_batch("vit5-small", budget, **options, **build)
    out: dict[str, Any] = {
        "budget_bytes": budget,
        "predicted_batch": found.batch,
        "predicted_peak": found.result.peak_bytes,
    }
    if device != "cuda":
        out["measured_batch"] = found.batch
        return out
    peaks: dict[int, int] = {}

    def peak(b: int) -> int:
        if b not in peaks:
            peaks[b] = measure(case, b, options, device)["peak"]
            gc.collect()
            torch.cuda.empty_cache()
        return peaks[b]

    b = found.batch
    if peak(b) <= budget:
        while peak(b + 1) <= budget:
            b += 1
    else:
        while b > 1 and peak(b) > budget:
            b -= 1
    out.update(measured_batch=b, measured_peaks={str(k): v for k, v in sorted(peaks.items())})
    return out


CHILD_MARK = "memory_accuracy child rows: "


def run_cases(plan: list, device: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Predict and measure each ``(case, setting, options, batch)`` of ``plan`` in this process."""
    rows, failures = [], []
    for case, name, options, batch in plan:
        options = dict(options)
        training = options.pop("training", False)
        options["training"] = training
        try:
            r = row(case, name, batch, options, device)
            rows.append(r)
            print(f"{r['model']:28s} {r['setting']:28s} pred {r['predicted_peak'] / GiB:7.3f} GiB  "
                  f"meas {r['measured_peak'] / GiB:7.3f} GiB  {100 * r['error']:+6.2f}%", flush=True)  # fmt: skip
        except Exception as exc:
            failures.append({"model": case.name, "setting": name, "error": f"{type(exc).__name__}: {exc}"})
            traceback.print_exc()
    return rows, failures


def run_isolated(plan: list, quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each model's training settings in one fresh process, each inference case in its own: what a
    process holds from an earlier case (a cuBLAS workspace of the autograd thread, made by a
    training step, stays allocated for the process's life) is not the next case's memory."""
    import subprocess

    groups: dict[tuple[str, bool], list[int]] = {}
    for i, (case, name, options, _) in enumerate(plan):
        training = options.get("training", False)
        groups.setdefault((case.name, training) if training else (f"{case.name} {name}", False), []).append(i)
    rows, failures = [], []
    for (label, _), indexes in groups.items():
        cmd = [sys.executable, "-m", "benchmarks.memory_accuracy", "--child", ",".join(map(str, indexes)),
               "--build", json.dumps(BUILD)] + (["--quick"] if quick else [])  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        sys.stderr.write(done.stderr[-4000:])
        lines = [line for line in done.stdout.splitlines() if line.startswith(CHILD_MARK)]
        for line in done.stdout.splitlines():
            if not line.startswith(CHILD_MARK):
                print(line, flush=True)
        if done.returncode != 0 or not lines:
            failures.append({"model": label, "error": f"child process exited {done.returncode}"})
            continue
        got, failed = json.loads(lines[-1][len(CHILD_MARK) :])
        rows += got
        failures += failed
    return rows, failures


def case_plan(quick: bool) -> tuple[list[tuple[Case, str, dict[str, Any], int]], list[dict[str, Any]]]:
    """The cases to run, ``(case, setting, options, batch)`` each, and the models skipped for want of
    a package."""
    settings = SETTINGS[:2] if quick else SETTINGS
    plan: list[tuple[Case, str, dict[str, Any], int]] = []
    failures: list[dict[str, Any]] = []
    for case in models(quick):
        if not has(case.needs):
            failures.append({"model": case.name, "error": f"skipped: {case.needs} not importable"})
            continue
        for name, options in settings:
            plan.append((case, name, {"training": True, **options}, case.batch))
    if not quick:
        for case in models(False):
            if case.source in ("hf:gpt2", "hf:llama") and has(case.needs):
                # 512 cached + 512 new tokens: gpt2's 1024 positions
                plan.append((case, "inference kv-cache 512", {"kv_cache": 512}, 8))
                plan.append((case, "inference kv-cache 512 bf16", {"kv_cache": 512, "autocast": "bf16"}, 8))
        plan.append((models(False)[0], "inference", {}, 64))
    return plan, failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--quick", action="store_true", help="three models, two settings")
    ap.add_argument("--fit-budget", type=float, default=8.0, help="GiB for the --fit check")
    ap.add_argument(
        "--fit-only",
        action="store_true",
        help="the --fit check alone: a record with no cases",
    )
    ap.add_argument("--out", default=out_default())
    ap.add_argument(
        "--shared-process",
        action="store_true",
        help="run every case in this process (default on CUDA: each model's cases in a fresh process)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)  # plan indexes run by a child process
    ap.add_argument("--build", help=argparse.SUPPRESS)  # the parent's probed cuBLAS workspace (JSON)
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("memory_accuracy: no CUDA device (use --device cpu --quick for a smoke test)")
    if a.device == "cuda" and a.child is None:
        BUILD.update(probe_workspace())  # first: the workspaces appear at a thread's first GEMM
        print(f"cuBLAS workspace of this build: {BUILD}", flush=True)
    # --fit-only: no cases, so nothing imported to find them and nothing skipped either.
    plan, failures = ([], []) if a.fit_only else case_plan(a.quick)
    if a.child is not None:  # one group of the plan, in this fresh process; rows as JSON on stdout
        BUILD.update(json.loads(a.build or "{}"))
        picked = [plan[int(i)] for i in a.child.split(",")]
        print(CHILD_MARK + json.dumps(run_cases(picked, a.device)), flush=True)
        return
    if a.device == "cuda" and not a.shared_process and plan:
        rows, more = run_isolated(plan, a.quick)
    else:
        rows, more = run_cases(plan, a.device)
    failures += more
    fit = None
    try:
        fit = fit_check(a.device, a.fit_budget)
    except Exception as exc:
        failures.append({"model": "fit", "error": f"{type(exc).__name__}: {exc}"})
        traceback.print_exc()
    errors = [abs(r["error"]) for r in rows]
    lines = ["## flopkit memory: predicted vs measured max_memory_allocated", ""]
    if rows:
        lines += [
            "| model | setting | batch | predicted peak (GiB) | measured peak (GiB) | error | predicted steady | measured steady | workspace pred/meas (MiB) | peak in | SDPA |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
    for r in rows:
        sdpa = ", ".join(f"{k} x{v}" for k, v in r["sdpa"].items()) or "-"
        lines.append(
            f"| {r['model']} | {r['setting']} | {r['batch']} | {r['predicted_peak'] / GiB:.3f} | "
            f"{r['measured_peak'] / GiB:.3f} | {100 * r['error']:+.2f}% | {r['predicted_steady'] / GiB:.3f} | "
            f"{r['measured_steady'] / GiB:.3f} | {r['predicted_workspace'] / 2**20:.0f}/"
            f"{r['measured_workspace'] / 2**20:.1f} | {r['peak_phase']} {r['peak_module']} | {sdpa} |"
        )
    if errors:
        lines += [
            "",
            f"cases: {len(errors)}; within 5%: {sum(e <= 0.05 for e in errors)}; median |error| "
            f"{100 * statistics.median(errors):.2f}%; max |error| {100 * max(errors):.2f}%",
        ]
    if fit is not None:
        lines.append(
            f"--fit {a.fit_budget:g}GiB (vit5-small, training, bf16 autocast): predicted batch "
            f"{fit['predicted_batch']}, measured largest batch {fit['measured_batch']}"
        )
    lines.append(
        "cuBLAS workspace of this build (probed, used by the predictions): "
        + (
            f"{BUILD['cublas_workspace']}, kept {BUILD['kept_training'] / 2**20:.1f} MiB training / "
            f"{BUILD['kept_inference'] / 2**20:.1f} MiB inference, {BUILD['transient'] / 2**20:.1f} MiB per GEMM"
            if BUILD
            else "not probed (flopkit's default: cached, 32 MiB per thread)"
        )
    )
    for f in failures:
        lines.append(f"- failed: {f}")
    data = {
        "cublas_workspace": dict(BUILD),
        "rows": rows,
        "fit": fit,
        "failures": failures,
        "median_abs_error": statistics.median(errors) if errors else None,
        "max_abs_error": max(errors) if errors else None,
    }
    ResultWriter(a.out, "memory_accuracy").finish(data, lines)


if __name__ == "__main__":
    main()
