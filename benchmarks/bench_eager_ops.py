"""The opt-in eager kernels alone: ``kernels.scale_rows`` and ``kernels.embed_tokens``, Triton
against their PyTorch references, at the shapes a ViT-5 training step gives them.

Run on the device machine (see /work/.library/device/), from the repository root::

    python -m benchmarks.bench_eager_ops --out $OUT

For vit5-base at batch 128 and vit5-small at batch 256 (bf16 weights, as ``bench_train`` builds
the model): ``scale_rows(fc2.weight, ls2.gamma)`` (the LayerScale fold) and
``embed_tokens(patches, pos_embed, cls_token, reg_token)`` (the token sequence), each with
``backend="triton"`` and ``backend="torch"``: the forward, and forward + backward (the gradient of
every input), as device time (CUDA-graph replays after an L2 flush), as eager time
(``triton.testing.do_bench``, which includes the host's launches where they exceed the flush), and
as host time: a loop of 200 eager calls, the time to issue them and the time until the device has
also run them (``_harness.loop_us``, the smallest of 5 loops). ``--profile`` adds, per row, the
Python functions that take the host's time in eager forward + backward calls (``cProfile``, the
costliest by own time), to find where a path's host cost goes.
Every row's output and gradients are checked against a float64 reference (the largest relative
error of any of them). The step-level A/B is ``bench_train --models flopkit,flopkit-eager-kernels``;
this isolates the ops, whose difference is smaller than a step's spread. Writes
``bench_eager_ops_DEVICE.json`` and ``.md`` under ``--out``.
"""

# ruff: noqa: B023

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import flopkit.kernels as K
import torch

from benchmarks._harness import ResultWriter, device_ms, graph_ms, loop_us, out_default, run_roofs
from flopkit.nn import ViT5

PRESETS = (("vit5-base", 128), ("vit5-small", 256))
DT = torch.bfloat16


def op_inputs(
    preset: str, batch: int, device: str = "cuda"
) -> dict[str, tuple[Callable, tuple[torch.Tensor, ...]]]:
    """``{op: (call(backend, *inputs), inputs)}`` with the model's own parameters and shapes."""
    model = ViT5.from_preset(preset).to(device, DT)
    g = torch.Generator(device=device).manual_seed(0)
    block = model.blocks[0]
    weight, gamma = block.mlp.fc2.weight.detach(), block.ls2.gamma.detach()
    gamma = gamma + 0.1 * torch.randn(gamma.shape, device=device, generator=g).to(DT)  # not all ones
    pe = model.patch_embed
    width = pe.pos_embed.shape[-1]
    patches = torch.randn(batch, pe.num_patches, width, device=device, generator=g).to(DT)
    cls = model.cls_token.detach() if model.cls_token is not None else None
    reg = model.reg_token.detach() if model.reg_token is not None else None
    cls_first = model.cls_first
    tokens = tuple(t for t in (patches, pe.pos_embed.detach(), cls, reg) if t is not None)

    def embed(backend, patches, pos, *rest):
        c, r = (rest[0], rest[1]) if len(rest) == 2 else (None, None)
        return K.embed_tokens(patches, pos, c, r, cls_first, backend=backend)

    return {
        "scale_rows": (lambda backend, w, s: K.scale_rows(w, s, backend=backend), (weight, gamma)),
        "embed_tokens": (embed, tokens),
    }


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def check_op(call, inputs, backend: str) -> tuple[list[torch.Tensor], torch.Tensor, float]:
    """The op's leaves, an output gradient, and the largest relative error of the output and every
    gradient against the float64 reference."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = call(backend, *leaves)
    gen = torch.Generator(device=out.device).manual_seed(1)
    grad = torch.randn(out.shape, device=out.device, generator=gen).to(out.dtype)
    grads = torch.autograd.grad(out, leaves, grad)
    ref_leaves = [t.double().requires_grad_() for t in inputs]
    ref = call("torch", *ref_leaves)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad.double())
    err = max(rel_err(out, ref), *(rel_err(a, b) for a, b in zip(grads, ref_grads, strict=True)))
    return leaves, grad, err


def time_op(call, inputs, backend: str, profile: bool = False) -> dict:
    leaves, grad, err = check_op(call, inputs, backend)

    def fwd():
        call(backend, *inputs)

    def fwd_bwd():
        torch.autograd.grad(call(backend, *leaves), leaves, grad)

    host_us, loop_wall_us = loop_us(fwd_bwd, 200, warmup=20)
    extra = {"host_profile": host_profile(fwd_bwd)} if profile else {}
    return extra | {
        "fwd_us": graph_ms(fwd) * 1e3,
        "fwd_bwd_us": graph_ms(fwd_bwd) * 1e3,
        "eager_fwd_bwd_us": device_ms(fwd_bwd, warmup_ms=10, rep_ms=50) * 1e3,
        "host_fwd_bwd_us": host_us,
        "loop_fwd_bwd_us": loop_wall_us,
        "max_rel_err": err,
    }


def host_profile(fn: Callable[[], object], calls: int = 200, top: int = 12) -> list[dict]:
    """The ``top`` Python functions by own time over ``calls`` calls of ``fn`` under ``cProfile``
    (after 10 calls unprofiled): each as ``{"function", "calls_per_call", "own_us", "total_us"}``,
    times per call of ``fn`` (the profiler's own overhead included: compare rows with each other,
    not with the loop's host time)."""
    import cProfile
    import pstats

    for _ in range(10):
        fn()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    # {(file, line, name): (calls, primitive calls, own s, total s, callers)}
    stats = pstats.Stats(prof).stats
    rows = [
        {
            "function": f"{name} ({os.path.basename(file)}:{line})" if line else name,
            "calls_per_call": ncalls / calls,
            "own_us": own / calls * 1e6,
            "total_us": total / calls * 1e6,
        }
        for (file, line, name), (ncalls, _, own, total, _) in stats.items()
    ]
    return sorted(rows, key=lambda r: -r["own_us"])[:top]


def profile_lines(rows: list[dict]) -> list[str]:
    """A table per row that has a host profile."""
    lines = []
    for r in rows:
        if "host_profile" not in r:
            continue
        lines += [
            "",
            f"Host profile, {r['op']} {r['preset']} b{r['batch']} {r['backend']}, eager forward + backward "
            "(cProfile, µs per call, profiler overhead included):",
            "",
            "| function | calls | own µs | total µs |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| `{p['function']}` | {p['calls_per_call']:g} | {p['own_us']:.1f} | {p['total_us']:.1f} |"
            for p in r["host_profile"]
        ]
    return lines


def table(rows: list[dict]) -> list[str]:
    lines = [
        "Device time: CUDA-graph replays after an L2 flush (median of 25); eager: triton.testing.do_bench "
        "median (host launches included where they exceed the flush); host and loop: a loop of 200 eager "
        "calls, the time to issue one and the time until the device has run it (the smallest of 5 loops; "
        "rows of runs before these columns leave them empty). Error: the largest relative error "
        "of the output and every gradient against float64.",
        "",
        "| op | preset | backend | fwd us | fwd+bwd us | eager fwd+bwd us | host fwd+bwd us | loop fwd+bwd us "
        "| Triton / torch fwd+bwd | max rel. error |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["op"], r["preset"], r["backend"]): r for r in rows}
    for r in rows:
        base = by.get((r["op"], r["preset"], "torch"))
        ratio = f"{r['fwd_bwd_us'] / base['fwd_bwd_us']:.2f}" if base and r["backend"] == "triton" else ""
        host = "".join(f"| {r[k]:.1f} " if k in r else "| " for k in ("host_fwd_bwd_us", "loop_fwd_bwd_us"))
        lines.append(
            f"| {r['op']} | {r['preset']} b{r['batch']} | {r['backend']} | {r['fwd_us']:.1f} "
            f"| {r['fwd_bwd_us']:.1f} | {r['eager_fwd_bwd_us']:.1f} {host}| {ratio} | {r['max_rel_err']:.1e} |"
        )
    return lines + profile_lines(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=out_default())
    ap.add_argument("--profile", action="store_true", help="add each row's host profile (cProfile)")
    args = ap.parse_args()
    writer = ResultWriter(args.out, "bench_eager_ops", roofs=run_roofs())
    rows: list[dict] = []
    for preset, batch in PRESETS:
        for op, (call, inputs) in op_inputs(preset, batch).items():
            for backend in ("triton", "torch"):
                row = {"op": op, "preset": preset, "batch": batch, "backend": backend}
                row.update(time_op(call, inputs, backend, profile=args.profile))
                rows.append(row)
                print(row, flush=True)
                writer.save({"rows": rows})
    writer.finish({"rows": rows}, table(rows))


if __name__ == "__main__":
    main()
