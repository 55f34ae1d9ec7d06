"""Parity of flopkit's fast path with each upstream ViT-5, from the same weights, in bf16 on a GPU.

For each upstream (nvSubquadratic, official) the upstream model is built from its own source
checkout with random weights (LayerScale, biases and norm weights perturbed away from their init,
so that a misplaced one would show), and flopkit's ViT5 is loaded from its state dict with
``flopkit.load_vit5``. Both run with float32 parameters under bf16 autocast (the usual mixed
precision), flopkit on its fast path: Triton kernels ("eager"), and the same under
``torch.compile`` ("compile").

Measured, per upstream and flopkit mode:

* logits: max |flopkit - upstream| / max |upstream|, both in bf16; and each one's error against
  upstream in float32, so that flopkit's bf16 error reads against upstream's own;
* gradients after one cross-entropy backward: per tensor ||g_flopkit - g_upstream|| / ||g_upstream||
  (worst tensor), and upstream's own bf16 gradient error against float32;
* training: ``--steps`` AdamW steps on a fixed pool of random images and labels from the same
  weights; the largest relative loss difference over all steps (pass: within 1 %). With
  ``--floor``, upstream is also trained under ``torch.compile``: the gap between its eager and its
  compiled curve, the same model and weights, is what bf16 rounding order alone does to a curve
  (the "up floor" column).

Prints a table last; writes ``parity_checkpoints_DEVICE.json`` and ``.md`` under ``--out`` (default
``$OUT``; nothing without either; ``benchmarks/_harness.py``).

Example (H100, upstream checkouts carried beside the repository), from the repository root::

    python -m benchmarks.parity_checkpoints --nvsubq-src up/nvSubquadratic --official-src up/ViT-5
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import upstream_models as U
from benchmarks._harness import ResultWriter
from flopkit.checkpoints import load_vit5, to_flopkit

LOGIT_TOL = 2e-2  # bf16 has 8 mantissa bits (eps 3.9e-3); 12 blocks of rounding stay well under this
GRAD_TOL = 5e-2
LOSS_TOL = 1e-2  # the 1 %


# ------------------------------------------------------------------------------ metrics
def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|`` in float64."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def rel_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def worst_grad(mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> tuple[float, str]:
    """The largest per-tensor :func:`rel_norm` over the tensors both have, and that tensor's name."""
    missing = sorted(set(theirs) ^ set(mine))
    if missing:
        raise KeyError(f"gradients differ in their tensors: {missing[:4]}")
    worst = max(((rel_norm(mine[k], theirs[k]), k) for k in theirs), key=lambda t: t[0])
    return worst


def loss_gap(mine: list[float], theirs: list[float]) -> float:
    """Largest ``|l_mine - l_theirs| / |l_theirs|`` over the steps (inf for a non-finite loss)."""
    if len(mine) != len(theirs):
        raise ValueError(f"loss curves differ in length: {len(mine)} vs {len(theirs)}")
    gaps = [
        abs(a - b) / abs(b) if math.isfinite(a) and math.isfinite(b) else math.inf
        for a, b in zip(mine, theirs, strict=True)
    ]
    return max(gaps)


def passes(logits: float, grads: float, losses: float | None, grad_floor: float) -> bool:
    """Logits within bf16 tolerance; gradients within ``GRAD_TOL`` or twice upstream's own bf16 error;
    losses within 1 % (when trained)."""
    ok = logits <= LOGIT_TOL and grads <= max(GRAD_TOL, 2 * grad_floor)
    return ok and (losses is None or losses <= LOSS_TOL)


# ------------------------------------------------------------------------------ models
def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move LayerScale (to ~0.1), biases (~0.02) and norm weights (~1 +- 0.1) off their init values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() != 1:
                continue
            noise = torch.randn(p.shape, generator=gen)
            if "gamma" in name:
                p.copy_(0.1 + 0.01 * noise)
            elif name.endswith("bias"):
                p.copy_(0.02 * noise)
            else:
                p.copy_(1.0 + 0.1 * noise)
    return model


def build_upstream(source: str, src: str, image_size: int, seed: int) -> tuple[torch.nn.Module, Any]:
    torch.manual_seed(seed)
    if source == "nvsubquadratic":
        return perturb(U.build_nvsubquadratic(src, image_size=image_size), seed), U.nvsubquadratic_forward
    return perturb(U.build_official(src, image_size=image_size), seed), U.official_forward


def flopkit_model(upstream: torch.nn.Module, mode: str, device: str) -> tuple[torch.nn.Module, Any]:
    model = load_vit5(upstream.state_dict(), use_triton=True).to(device)
    run = torch.compile(model) if mode == "compile" else model
    return model, lambda m, x: run(x)


# ------------------------------------------------------------------------------ measurements
def logits_and_grads(model, forward, x, y, dtype):
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        logits = forward(model, x)
        loss = F.cross_entropy(logits.float(), y)
    loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return logits.detach().float(), grads


def train(model, forward, data, steps, lr, dtype, device) -> tuple[list[float], float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    losses = []
    model.train()
    start = None
    for step in range(steps):
        if step == min(5, steps - 1):  # time after warm-up (compilation, autotuning)
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        x, y = data[step % len(data)]
        with torch.autocast(device, dtype=dtype):
            loss = F.cross_entropy(forward(model, x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    if device == "cuda":
        torch.cuda.synchronize()
    timed = steps - min(5, steps - 1)
    model.eval()
    return losses, (time.perf_counter() - start) / max(timed, 1) * 1e3


def run_source(source: str, src: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    device, dtype = args.device, torch.bfloat16
    gen = torch.Generator().manual_seed(args.seed)
    shape = (args.batch, 3, args.image_size, args.image_size)
    data = [
        (
            torch.randn(shape, generator=gen).to(device),
            torch.randint(0, 1000, (args.batch,), generator=gen).to(device),
        )
        for _ in range(args.pool)
    ]
    x, y = data[0]
    up, up_forward = build_upstream(source, src, args.image_size, args.seed)
    up = up.to(device).eval()
    up_f32, up_g32 = logits_and_grads(up, up_forward, x, y, torch.float32)
    up_bf, up_gbf = logits_and_grads(up, up_forward, x, y, dtype)
    up_gbf_k, up_g32_k = to_flopkit(up_gbf, source), to_flopkit(up_g32, source)
    grad_floor, _ = worst_grad(up_gbf_k, up_g32_k)
    up_losses = up_ms = floor = None
    if args.steps:
        initial = {k: v.clone() for k, v in up.state_dict().items()}
    rows = []
    for mode in args.modes:
        mine, forward = flopkit_model(up, mode, device)
        got, grads = logits_and_grads(mine, forward, x, y, dtype)
        g_err, g_name = worst_grad(grads, up_gbf_k)
        row: dict[str, Any] = {
            "source": source,
            "mode": mode,
            "image_size": args.image_size,
            "batch": args.batch,
            "logits_vs_upstream_bf16": rel_max(got, up_bf),
            "logits_vs_upstream_fp32": rel_max(got, up_f32),
            "upstream_bf16_vs_fp32": rel_max(up_bf, up_f32),
            "grad_vs_upstream_bf16": g_err,
            "grad_worst_tensor": g_name,
            "grad_vs_upstream_fp32": worst_grad(grads, up_g32_k)[0],
            "upstream_grad_bf16_vs_fp32": grad_floor,
        }
        if args.steps:
            if up_losses is None:
                up_losses, up_ms = train(up, up_forward, data, args.steps, args.lr, dtype, device)
                up.load_state_dict(initial)
                if args.floor:  # the same model and weights, compiled: only the rounding order differs
                    compiled = torch.compile(up)
                    floor_losses, _ = train(compiled, up_forward, data, args.steps, args.lr, dtype, device)
                    floor = loss_gap(floor_losses, up_losses)
                    up.load_state_dict(initial)
                    del compiled
            losses, ms = train(mine, forward, data, args.steps, args.lr, dtype, device)
            row.update(
                steps=args.steps,
                loss_gap_max=loss_gap(losses, up_losses),
                upstream_loss_gap_floor=floor,
                loss_first=(losses[0], up_losses[0]),
                loss_last=(losses[-1], up_losses[-1]),
                step_ms=(ms, up_ms),
            )
        row["pass"] = passes(row["logits_vs_upstream_bf16"], g_err, row.get("loss_gap_max"), grad_floor)
        rows.append(row)
        print(table([row]).splitlines()[-1], file=sys.stderr, flush=True)  # progress, in case of a time limit
        del mine, forward
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = [
        "source",
        "mode",
        "logits rel",
        "(up bf16)",
        "grad rel",
        "(up bf16)",
        "loss gap",
        "(up floor)",
        "loss last f/u",
        "ms/step f/u",
        "pass",
    ]
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["source"], r.get("mode", "-"), r["error"], "", "", "", "", "", "", "", "no"])
            continue
        last = r.get("loss_last")
        ms = r.get("step_ms")
        body.append(
            [
                r["source"],
                r["mode"],
                f"{r['logits_vs_upstream_bf16']:.2e}",
                f"{r['upstream_bf16_vs_fp32']:.2e}",
                f"{r['grad_vs_upstream_bf16']:.2e}",
                f"{r['upstream_grad_bf16_vs_fp32']:.2e}",
                f"{r['loss_gap_max']:.2%}" if "loss_gap_max" in r else "-",
                f"{r['upstream_loss_gap_floor']:.2%}"
                if r.get("upstream_loss_gap_floor") is not None
                else "-",
                f"{last[0]:.4f}/{last[1]:.4f}" if last else "-",
                f"{ms[0]:.1f}/{ms[1]:.1f}" if ms else "-",
                "yes" if r["pass"] else "NO",
            ]
        )
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nvsubq-src", help="checkout of NVIDIA-BioNeMo/nvSubquadratic")
    p.add_argument("--official-src", help="checkout of wangf3014/ViT-5 (needs timm and einops importable)")
    p.add_argument("--modes", nargs="+", choices=("eager", "compile"), default=["eager", "compile"])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=200, help="training steps (0: no training)")
    p.add_argument("--pool", type=int, default=8, help="distinct random batches cycled through in training")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--floor", action="store_true", help="also train upstream compiled: the loss-gap floor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--out", default=os.environ.get("OUT"), help="result folder (default $OUT; none: no files)"
    )
    args = p.parse_args(argv)
    if not (args.nvsubq_src or args.official_src):
        p.error("give --nvsubq-src and/or --official-src")
    for name in ("batch", "pool", "image_size"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.steps < 0:
        p.error(f"--steps must be >= 0, got {args.steps}")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    rows: list[dict[str, Any]] = []
    for source, src in (("nvsubquadratic", args.nvsubq_src), ("official", args.official_src)):
        if not src:
            continue
        try:
            rows += run_source(source, src, args)
        except ImportError as exc:  # e.g. timm missing for the official code: say so, run the rest
            rows.append({"source": source, "error": f"cannot import upstream: {exc}", "pass": False})
    data = {
        "args": vars(args),
        "tolerances": {"logits": LOGIT_TOL, "grads": GRAD_TOL, "losses": LOSS_TOL},
        "rows": rows,
    }
    lines = [f"bf16 autocast on {args.device}, batch {args.batch}, {args.image_size} px", "", table(rows)]
    if args.out:
        ResultWriter(args.out, "parity_checkpoints").finish(data, lines)
    else:
        print("\n".join(lines))
    return rows


if __name__ == "__main__":
    sys.exit(0 if all(r["pass"] for r in main()) else 1)
