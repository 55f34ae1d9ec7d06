"""Norm kernels on the GPU: correctness check, tile sweep, and timings against the peers.

Run on the device machine (see /work/.library/device/), from the repository root::

    python -m benchmarks.bench_norms check sweep --out $OUT          # correctness + tile sweep
    python -m benchmarks.bench_norms check bench heads --out $OUT    # timings vs peers
    python -m benchmarks.bench_norms check bench --shapes 65536x768 --out $OUT   # a subset of rows
    python -m benchmarks.bench_norms sums --out $OUT                  # weight-gradient sums' tiles

Timings (``benchmarks/_harness.py``): device time is the median of CUDA-graph replays after an L2
flush (``graph_ms``), eager time the median of ``triton.testing.do_bench`` (``device_ms``), bf16.
Bytes that must move (``s`` = 2): forward ``2*N*D*s``, backward ``3*N*D*s`` (x, dy in, dx out;
dw is negligible), residual forward ``4*N*D*s`` (x, residual in; y, h out). Percentages are
of the device-to-device copy bandwidth measured in the same run (bytes read + written; the
harness's roof). The sweep times the launchers with explicit tiles; the kernel tables it informs
are ``kernels/_norm_triton.py``'s ``*_TILES`` (keyed by architecture and width, each entry citing
the result that chose it). Writes ``bench_norms_DEVICE.json`` and ``.md`` under ``--out``.
Peers: ``F.rms_norm``, ``torch.compile`` of the reference, Liger-Kernel, QuACK (each skipped
with the reason when it cannot be imported).

``sums``: the eager backward's weight-gradient reductions (``_sum_partials_kernel``, one launch per
norm and QK-norm + RoPE backward) at the partial shapes one eager ViT-5 training step launches
(recorded from the step itself), for every tile of ``SUM_CANDIDATES``, the shipped ``SUM_TILE``
included; L2-resident (the backward kernel just wrote the partials), 100 launches per graph replay.
"""

# Timing lambdas are consumed inside each loop iteration, before the `del`s: B023/F821 do not apply.
# ruff: noqa: B023, F821

from __future__ import annotations

import argparse
import ast
import json
import time
import traceback

import flopkit.kernels as K
import torch
import torch.nn.functional as F
import triton
from flopkit.kernels import _launch
from flopkit.kernels import _norm_triton as tk
from flopkit.kernels import _rope_triton as rt

from benchmarks._harness import ResultWriter, device_ms, graph_ms, out_default, run_roofs

SHAPES = [
    (16384, 4096),
    (65536, 1024),
    (65536, 768),
    (308736, 64),
    (524288, 128),
    (4096, 8192),
    (1024, 65536),
]
# QK-norm of ViT-5-B at batch 128: 128 * (196 + 1 + 4) tokens, 12 heads of 64.
HEAD_SHAPES = [(25728, 12, 64), (25728, 16, 72)]
HEAD_BENCH_SHAPES = HEAD_SHAPES[:1]
EPS = 1e-6
DT = torch.bfloat16


WRITER: list[ResultWriter] = []


def save(results) -> None:
    """Write the results so far (a run stopped at its time limit keeps what it measured)."""
    if WRITER:
        WRITER[0].save(results)


def ms(fn, rep: int = 40) -> float:
    """Eager time: median of do_bench (host launch overhead included where it exceeds the L2 flush)."""
    return device_ms(fn, warmup_ms=10, rep_ms=rep)


def gpu_ms(fn) -> float:
    """Device time: ``fn`` captured in a CUDA graph, median of 25 replays each after an L2 flush."""
    return graph_ms(fn, replays=25)


def timed(fn) -> dict:
    """``{"us": device time (graph), "eager_us": do_bench time}``; a failed capture keeps eager only."""
    out = {"eager_us": ms(fn) * 1e3}
    try:
        out["us"] = gpu_ms(fn) * 1e3
    except Exception as e:  # noqa: BLE001
        out["graph_err"] = repr(e)[:200]
        out["us"] = out["eager_us"]
    return out


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make(N, D, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(N, D, device="cuda", dtype=DT, generator=g)
    r = torch.randn(N, D, device="cuda", dtype=DT, generator=g)
    w = (1 + 0.2 * torch.randn(D, device="cuda", generator=g)).to(DT)
    dy = torch.randn(N, D, device="cuda", dtype=DT, generator=g)
    return x, r, w, dy


# --------------------------------------------------------------------------- check


def check(results):
    out = []
    for N, D in SHAPES + [(1000, 1), (777, 7), (513, 72), (3, 100000)]:
        x, r, w, dy = make(N, D, seed=N + D)
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = K.rms_norm(xg, wg, EPS)
        dx, dw = torch.autograd.grad(y, (xg, wg), dy)
        x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
        y64 = x64 * torch.rsqrt(x64.square().mean(-1, keepdim=True) + EPS) * w64
        dx64, dw64 = torch.autograd.grad(y64, (x64, w64), dy.double())
        yr, hr = K.rms_norm_residual(x, r, w, EPS)
        h64 = (x + r).double()
        yr64 = h64 * torch.rsqrt(h64.square().mean(-1, keepdim=True) + EPS) * w.double()
        errs = {
            "y": rel(y, y64),
            "dx": rel(dx, dx64) if D > 1 else 0.0,
            "dw": rel(dw, dw64),
            "res_y": rel(yr, yr64),
            "res_h_exact": bool(torch.equal(hr, x + r)),
        }
        ok = max(v for k, v in errs.items() if k != "res_h_exact") <= 1e-2 and errs["res_h_exact"]
        out.append({"N": N, "D": D, "ok": ok, **errs})
        print(f"check {N}x{D}: {'ok' if ok else 'FAIL'} {errs}", flush=True)
        del x, r, dy, xg, y, dx, x64, y64, dx64, yr, hr, h64, yr64
        torch.cuda.empty_cache()
    for T, H, D in HEAD_SHAPES:
        for mode in ("rms", "layer"):
            x = torch.randn(T, H * D, device="cuda", dtype=DT)
            hw, hb = torch.randn(H, D, device="cuda", dtype=DT), torch.randn(H, D, device="cuda", dtype=DT)
            xg = x.clone().requires_grad_()
            y = K.head_norm(xg, hw, hb, mode=mode)
            dy = torch.randn_like(y)
            (dx,) = torch.autograd.grad(y, (xg,), dy)
            x64 = x.double().view(T, H, D).requires_grad_()
            xc = x64 - x64.mean(-1, keepdim=True) if mode == "layer" else x64
            y64 = xc * torch.rsqrt(xc.square().mean(-1, keepdim=True) + 1e-5) * hw.double() + hb.double()
            (dx64,) = torch.autograd.grad(y64, (x64,), dy.double().view(T, H, D))
            e = {"y": rel(y.view(T, H, D), y64), "dx": rel(dx.view(T, H, D), dx64)}
            ok = max(e.values()) <= 1e-2
            out.append({"head_norm": mode, "T": T, "H": H, "D": D, "ok": ok, **e})
            print(f"check head_norm {mode} {T}x{H}x{D}: {'ok' if ok else 'FAIL'} {e}", flush=True)
    results["check"] = out


# --------------------------------------------------------------------------- sweep


def _fused_candidates(width, bwd):
    if width <= 256:
        elems = [1024, 2048, 4096, 8192, 16384] if bwd else [2048, 4096, 8192, 16384]
        warps = [4, 8]
    elif width <= 1024:
        elems, warps = [1024, 2048, 4096, 8192], [4, 8]
    elif width <= 4096:
        elems, warps = [4096, 8192], [4, 8, 16]
    else:
        elems, warps = [width, 2 * width] if not bwd else [width], [8, 16, 32]
    return [(e, w) for e in elems for w in warps if e >= width]


APPLY_SWEEP: list[bool] = []


def apply_best(width: int, best: dict) -> None:
    """Put the sweep's winners into this device's entries of the kernel tables for the timings that
    follow (``--apply-sweep``: an A/B of a candidate table; the shipped tables change only by editing
    ``kernels/_norm_triton.py``, citing the run)."""
    arch = tk.device_arch(torch.device("cuda"))
    source = "this run's sweep (--apply-sweep)"
    for kind, table in (("fwd", tk.FWD_TILES), ("res", tk.RES_TILES)):
        if kind in best:
            cfg = ast.literal_eval(best[kind]["config"])
            if width <= tk.FUSED_MAX_FWD:
                table[(arch, width)] = tk.Tile(cfg, source)
            elif kind == "fwd":
                tk.CHUNKED_FWD_TILES[arch] = tk.Tile(cfg, source)
    if "bwd" in best:
        cfg, per_sm = ast.literal_eval(best["bwd"]["config"])
        if width <= tk.FUSED_MAX_BWD:
            tk.BWD_TILES[(arch, width)] = tk.Tile((*cfg, per_sm), source)
        else:
            tk.CHUNKED_BWD_TILES[arch] = tk.Tile((*cfg, per_sm), source)
    _launch.clear_launch_cache()  # plans cached before keep the old tiles


def tables() -> dict:
    """The kernel tables this run timed, as JSON: ``{table: {"ARCH/WIDTH": [config, source]}}``."""
    out = {}
    for name in ("FWD_TILES", "RES_TILES", "BWD_TILES", "BWD_PREFETCH_TILES", "BWD_SCALE_TILES"):
        out[name] = {f"{arch}/{w}": [list(t.config), t.source] for (arch, w), t in getattr(tk, name).items()}
    for name in ("CHUNKED_FWD_TILES", "CHUNKED_BWD_TILES"):
        out[name] = {arch: [list(t.config), t.source] for arch, t in getattr(tk, name).items()}
    return out


def sweep(results):
    out = {}
    for N, D in SHAPES:
        x, r, w, dy = make(N, D)
        width = triton.next_power_of_2(D)
        rec = {"fwd": {}, "res": {}, "bwd": {}}
        fused_f = width <= tk.FUSED_MAX_FWD
        fcands = (
            _fused_candidates(width, False)
            if fused_f
            else [(c, wp) for c in (2048, 4096, 8192) for wp in (8, 16, 32)]
        )
        for cfg in fcands:
            try:
                rec["fwd"][str(cfg)] = gpu_ms(lambda cfg=cfg: tk.norm_forward(x, w, None, EPS, config=cfg))
                rec["res"][str(cfg)] = gpu_ms(
                    lambda cfg=cfg: tk.norm_forward(x, w, None, EPS, residual=r, config=cfg)
                )
            except Exception as e:  # noqa: BLE001
                rec["fwd"][str(cfg)] = repr(e)[:200]
        fused_b = width <= tk.FUSED_MAX_BWD
        bcands = (
            [(c, p) for c in _fused_candidates(width, True) for p in (1, 2, 3, 4)]
            if fused_b
            else [((c, wp), p) for c in (2048, 4096, 8192) for wp in (8, 16) for p in (1, 2)]
        )
        for cfg, per_sm in bcands:
            key = str((cfg, per_sm))
            try:
                rec["bwd"][key] = gpu_ms(
                    lambda cfg=cfg, per_sm=per_sm: tk.norm_backward(
                        dy, x, w, False, EPS, config=cfg, programs_per_sm=per_sm
                    )
                )
            except Exception as e:  # noqa: BLE001
                rec["bwd"][key] = repr(e)[:200]
        best = {k: min((t, c) for c, t in v.items() if isinstance(t, float)) for k, v in rec.items() if v}
        rec["best"] = {k: {"config": c, "us": t * 1e3} for k, (t, c) in best.items()}
        out[f"{N}x{D}"] = rec
        if APPLY_SWEEP:
            apply_best(width, rec["best"])
        print(f"sweep {N}x{D}: " + json.dumps(rec["best"]), flush=True)
        del x, r, dy
        torch.cuda.empty_cache()
    results["sweep"] = out


# --------------------------------------------------------------------------- peers


def peers():
    ps = {}
    errs = {}
    try:
        from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction

        ps["liger"] = (
            lambda x, w: LigerRMSNormFunction.apply(x, w, EPS, 0.0, "llama", False),
            lambda x, r, w: LigerFusedAddRMSNormFunction.apply(x, r, w, EPS, 0.0, "llama", False),
        )
    except Exception as e:  # noqa: BLE001
        errs["liger"] = repr(e)[:300]
    try:
        from quack.rmsnorm import rmsnorm as quack_rmsnorm

        ps["quack"] = (
            lambda x, w: quack_rmsnorm(x, w, eps=EPS),
            lambda x, r, w: quack_rmsnorm(x, w, residual=r, prenorm=True, eps=EPS),
        )
    except Exception as e:  # noqa: BLE001
        errs["quack"] = repr(e)[:300]
    return ps, errs


def bench(results, copy_gbs):
    ps, errs = peers()
    # One compiled reference serves every shape and requires_grad state: allow the recompiles.
    torch._dynamo.config.recompile_limit = 64
    results["peer_errors"] = errs
    print("peer import errors:", errs, flush=True)
    compiled = torch.compile(K.rms_norm_ref, dynamic=False)
    compiled_res = torch.compile(K.rms_norm_residual_ref, dynamic=False)
    providers = {
        "flopkit": (lambda x, w: K.rms_norm(x, w, EPS), lambda x, r, w: K.rms_norm_residual(x, r, w, EPS)),
        "F.rms_norm": (
            lambda x, w: F.rms_norm(x, (x.shape[-1],), w, EPS),
            lambda x, r, w: F.rms_norm(x + r, (x.shape[-1],), w, EPS),
        ),
        "torch.compile": (lambda x, w: compiled(x, w, EPS), lambda x, r, w: compiled_res(x, r, w, EPS)),
        **ps,
    }
    rows = []
    # Warm-up pass over the first shape (not recorded): the first timings of a fresh process ran
    # slow once (2026-11-23, 16384x4096 backward 514 us vs 166 us in the sweep of the same run).
    x, r, w, dy = make(*SHAPES[0])
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = K.rms_norm(xg, wg, EPS)
    ms(lambda: torch.autograd.grad(y, (xg, wg), dy, retain_graph=True))
    del x, r, w, dy, xg, wg, y
    for N, D in SHAPES:
        x, r, w, dy = make(N, D)
        nbytes = {"fwd": 2 * N * D * 2, "bwd": 3 * N * D * 2, "res": 4 * N * D * 2}
        for name, (f_fwd, f_res) in providers.items():
            t0 = time.time()
            rec = {"shape": f"{N}x{D}", "N": N, "D": D, "provider": name}
            try:
                t = timed(lambda f_fwd=f_fwd: f_fwd(x, w))
                rec["fwd_us"], rec["fwd_eager_us"] = t["us"], t["eager_us"]
            except Exception as e:  # noqa: BLE001
                rec["fwd_err"] = repr(e)[:200]
            try:
                xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
                y = f_fwd(xg, wg)
                t = timed(lambda y=y, xg=xg, wg=wg: torch.autograd.grad(y, (xg, wg), dy, retain_graph=True))
                rec["bwd_us"], rec["bwd_eager_us"] = t["us"], t["eager_us"]
                del y, xg, wg
            except Exception as e:  # noqa: BLE001
                rec["bwd_err"] = repr(e)[:200]
            try:
                t = timed(lambda f_res=f_res: f_res(x, r, w))
                rec["res_us"], rec["res_eager_us"] = t["us"], t["eager_us"]
            except Exception as e:  # noqa: BLE001
                rec["res_err"] = repr(e)[:200]
            for k in ("fwd", "bwd", "res"):
                if f"{k}_us" in rec:
                    gbs = nbytes[k] / (rec[f"{k}_us"] * 1e-6) / 1e9
                    rec[f"{k}_gbs"] = gbs
                    rec[f"{k}_pct_copy"] = 100 * gbs / copy_gbs
            rows.append(rec)
            results["bench"] = rows
            save(results)
            print(
                f"bench {N}x{D} {name}: "
                + " ".join(f"{k}={rec.get(k + '_us', float('nan')):.1f}us" for k in ("fwd", "bwd", "res"))
                + f" ({time.time() - t0:.0f}s)",
                flush=True,
            )
        del x, r, dy
        torch.cuda.empty_cache()
    results["bench"] = rows


def heads(results, copy_gbs):
    rows = []
    for T, H, D in HEAD_BENCH_SHAPES:
        x = torch.randn(T, H * D, device="cuda", dtype=DT)
        w = torch.randn(D, device="cuda", dtype=DT)
        hw = torch.randn(H, D, device="cuda", dtype=DT)
        hb = torch.randn(H, D, device="cuda", dtype=DT)
        dy = torch.randn_like(x)
        ops = {
            "per_head_rms_norm": lambda x, be, w=w, H=H: K.per_head_rms_norm(x, w, H, EPS, backend=be),
            "head_norm_rms": lambda x, be, hw=hw: K.head_norm(x, hw, None, mode="rms", backend=be),
            "head_norm_layer_bias": lambda x, be, hw=hw, hb=hb: K.head_norm(
                x, hw, hb, mode="layer", backend=be
            ),
        }
        for op, fn in ops.items():
            comp = torch.compile(lambda x, fn=fn: fn(x, "torch"), dynamic=False)
            for prov, f in {
                "flopkit": lambda x, fn=fn: fn(x, "triton"),
                "torch": lambda x, fn=fn: fn(x, "torch"),
                "torch.compile": comp,
            }.items():
                rec = {"op": op, "shape": f"{T}x{H}x{D}", "provider": prov}
                try:
                    t = timed(lambda f=f: f(x))
                    rec["fwd_us"], rec["fwd_eager_us"] = t["us"], t["eager_us"]
                    xg = x.clone().requires_grad_()
                    y = f(xg)
                    t = timed(lambda y=y, xg=xg: torch.autograd.grad(y, (xg,), dy, retain_graph=True))
                    rec["bwd_us"], rec["bwd_eager_us"] = t["us"], t["eager_us"]
                    n = T * H * D * 2
                    rec["fwd_pct_copy"] = 100 * 2 * n / (rec["fwd_us"] * 1e-6) / 1e9 / copy_gbs
                    rec["bwd_pct_copy"] = 100 * 3 * n / (rec["bwd_us"] * 1e-6) / 1e9 / copy_gbs
                except Exception as e:  # noqa: BLE001
                    rec["err"] = repr(e)[:200]
                rows.append(rec)
                results["heads"] = rows
                save(results)
                print(f"heads {rec}", flush=True)
    results["heads"] = rows


# (widest column block, fp32 elements per loop step, num_warps); SUM_BEFORE is SUM_TILE before run
# sums_2026-12-07 (the table's "before" column).
SUM_BEFORE = (16, 4096, 4)
SUM_CANDIDATES = [
    SUM_BEFORE,
    *(
        (bn, el, w)
        for bn in (4, 8, 16, 32)
        for el in (4096, 8192)
        for w in (2, 4)
        if (bn, el, w) != SUM_BEFORE
    ),
]
SUM_PRESETS = (("vit5-base", 128), ("vit5-small", 256))


def step_sum_shapes(preset: str, batch: int) -> dict[tuple[int, int, bool], int]:
    """``{(partial rows, columns, two sums): launches}`` of one eager bf16 training step of
    flopkit's ``preset`` at ``batch``, recorded by wrapping the launchers' ``sum_partials``."""
    from collections import Counter

    from flopkit.nn import ViT5

    seen: Counter = Counter()
    real = tk.sum_partials

    def spy(pairs, run, owner=None):
        (a, oa) = pairs[0]
        seen[(a.numel() // oa.numel(), oa.numel(), len(pairs) == 2)] += 1
        return real(pairs, run, owner)

    model = ViT5.from_preset(preset).cuda().to(DT)
    x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=DT)
    tk.sum_partials = rt.sum_partials = spy
    try:
        model(x).float().logsumexp(-1).sum().backward()
    finally:
        tk.sum_partials = rt.sum_partials = real
    torch.cuda.synchronize()
    del model, x
    torch.cuda.empty_cache()
    return dict(seen)


def sums(results):
    rows = results["sums"] = []  # filled in place: each save writes the rows so far
    for preset, batch in SUM_PRESETS:
        for (R, N, two), launches in sorted(step_sum_shapes(preset, batch).items()):
            g = torch.Generator(device="cuda").manual_seed(R * N)
            a, b = (torch.randn(R, N, device="cuda", generator=g) for _ in range(2))
            oa, ob = (torch.empty(N, device="cuda", dtype=torch.float32) for _ in range(2))
            checks = ((oa, a.double().sum(0)),) + (((ob, b.double().sum(0)),) if two else ())
            rec = {"preset": preset, "batch": batch, "rows": R, "cols": N, "two": two, "launches": launches}
            rec["shipped"] = list(tk.SUM_TILE.config)
            times = {}
            for tile in SUM_CANDIDATES:
                plan = tk.sum_partials_plan(R, N, two, tile)

                def fn(plan=plan):
                    plan.kernel[plan.grid](a, oa, b, ob, *plan.scalars, **plan.meta)

                fn()
                torch.cuda.synchronize()
                err = max(((o.double() - w).abs().max() / w.abs().max()).item() for o, w in checks)
                if err > 1e-5:
                    raise AssertionError(f"sums {R}x{N} tile {tile}: max rel error {err:.1e}")
                times[str(tuple(tile))] = graph_ms(fn, replays=15, hot_calls=100) * 1e3
            rec["us"] = times
            rows.append(rec)
            save(results)
            best = min(times, key=times.get)
            print(
                f"sums {preset} {R}x{N} two={two} x{launches}: shipped "
                f"{times[str(tuple(tk.SUM_TILE.config))]:.2f} us, best {best} {times[best]:.2f} us",
                flush=True,
            )


def sums_table(results) -> list[str]:
    shipped_tile = tuple(results["sums"][0]["shipped"]) if results.get("sums") else tuple(tk.SUM_TILE.config)
    lines = [
        "",
        "Weight-gradient sums (`_sum_partials_kernel`) at one eager step's partial shapes, us a launch "
        "(L2-resident, 100 launches per graph replay, median of 15 replays); ms a step = launches x us.",
        "",
        f"| preset | partials | two sums | launches a step | before {SUM_BEFORE} | shipped {shipped_tile} "
        "| best tile | best | ms a step saved, shipped vs before |",
        "|---|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in results.get("sums", []):
        t = r["us"]
        before, shipped = t[str(SUM_BEFORE)], t[str(tuple(r["shipped"]))]
        best = min(t, key=t.get)
        lines.append(
            f"| {r['preset']} b{r['batch']} | {r['rows']}x{r['cols']} | {'yes' if r['two'] else 'no'} "
            f"| {r['launches']} | {before:.2f} | {shipped:.2f} | {best} | {t[best]:.2f} "
            f"| {r['launches'] * (before - shipped) / 1e3:.4f} |"
        )
    return lines


def table(results, copy_gbs) -> str:
    lines = [
        f"Copy bandwidth {copy_gbs:.0f} GB/s; bf16; median us "
        "(GB/s, % of copy). fwd 2NDs, bwd 3NDs, residual fwd 4NDs bytes.",
        "",
        "Device time: CUDA graph replay after an L2 flush (median); eager: triton.testing.do_bench "
        "median (includes host overhead where it exceeds the flush).",
        "",
        "| shape | provider | fwd us | fwd % copy | bwd us | bwd % copy | res fwd us | res % copy "
        "| eager fwd / bwd / res us |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.get("bench", []):

        def f(k, r=r):
            return f"{r[k + '_us']:.1f}" if k + "_us" in r else "err"

        def e(k, r=r):
            return f"{r[k + '_eager_us']:.0f}" if k + "_eager_us" in r else "-"

        def p(k, r=r):
            return f"{r[k + '_pct_copy']:.0f}%" if k + "_pct_copy" in r else "-"

        lines.append(
            f"| {r['shape']} | {r['provider']} | {f('fwd')} | {p('fwd')} | {f('bwd')} | {p('bwd')} "
            f"| {f('res')} | {p('res')} | {e('fwd')} / {e('bwd')} / {e('res')} |"
        )
    if results.get("heads"):
        lines += [
            "",
            "| op | shape | provider | fwd us | fwd % copy | bwd us | bwd % copy |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for r in results["heads"]:
            if "err" in r:
                lines.append(f"| {r['op']} | {r['shape']} | {r['provider']} | err | | | |")
                continue
            lines.append(
                f"| {r['op']} | {r['shape']} | {r['provider']} | {r['fwd_us']:.1f} | {r['fwd_pct_copy']:.0f}% "
                f"| {r['bwd_us']:.1f} | {r['bwd_pct_copy']:.0f}% |"
            )
    if results.get("sums"):
        lines += sums_table(results)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("steps", nargs="+", choices=["check", "sweep", "bench", "heads", "sums"])
    ap.add_argument("--out", default=out_default())
    ap.add_argument(
        "--shapes", default="", help="comma-separated NxD subset of the row shapes, e.g. 16384x4096"
    )
    ap.add_argument("--apply-sweep", action="store_true", help="time with the sweep's best tiles")
    args = ap.parse_args()
    roofs = run_roofs()
    copy_gbs = roofs.copy_gbs
    print(f"copy bandwidth {copy_gbs:.0f} GB/s", flush=True)
    WRITER.append(ResultWriter(args.out, "bench_norms", roofs=roofs))
    results: dict = {"args": vars(args)}
    if args.shapes:
        SHAPES[:] = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.apply_sweep:
        APPLY_SWEEP.append(True)
    for step in args.steps:
        t0 = time.time()
        try:
            if step == "check":
                check(results)
            elif step == "sweep":
                sweep(results)
            elif step == "bench":
                bench(results, copy_gbs)
            elif step == "heads":
                heads(results, copy_gbs)
            elif step == "sums":
                sums(results)
        except Exception:  # noqa: BLE001
            results[f"{step}_error"] = traceback.format_exc()
            print(traceback.format_exc(), flush=True)
        print(f"step {step}: {time.time() - t0:.0f}s", flush=True)
        results["tables"] = tables()
        save(results)
    WRITER[0].finish(results, table(results, copy_gbs).splitlines())


if __name__ == "__main__":
    main()
