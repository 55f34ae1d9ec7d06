"""GPU benchmark of the fused QK-norm + RoPE op, ViT5Attention and a ViT-5 training step.

Run on a CUDA machine from the repository root:

    python -m benchmarks.bench_attention --out DIR [--sweep] [--sections check,op,attention,graphs,train]

The copy bandwidth (bytes read + written) and bf16 matmul rate (8192^3) every percentage and MFU
divides by are ``benchmarks/_harness.py``'s roofs, measured once at the start. Sections (all bf16):
  sweep      forward/backward launch configurations of the kernel (tile rows, warps, programs)
  op         the fused op alone vs eager PyTorch (``qk_norm_rope_ref``) and ``torch.compile`` of it:
             forward moves 4*N*s bytes (read q, k; write q, k), backward 8*N*s (read dq, dk, dv, q, k;
             write d(qkv)), N = B*T*H*D, s = 2 bytes; effective GB/s and % of the measured copy rate
  attention  ViT5Attention forward+backward (autocast bf16): fused path vs the reference path eager
             and under torch.compile
  train      a vit5-base step (forward + backward, no optimizer), batch 128, autocast bf16: images/s,
             TFLOP/s from the analytic count and MFU against the measured matmul rate

Timings: the harness's ``device_ms`` (``triton.testing.do_bench`` medians: CUDA events, L2 flushed
between repeats) after explicit warm-up calls (so compilation stays out). Writes
``bench_attention_DEVICE.json`` and ``.md`` under ``--out`` and prints the tables last.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import time
import traceback
from operator import itemgetter

import torch
import torch.nn.functional as F
from flopkit.kernels import _rope_triton as qkt

from benchmarks._harness import ResultWriter, device_ms, out_default, run_roofs
from flopkit import kernels
from flopkit.nn import ViT5, ViT5Attention

OP_SHAPES = [(128, 201, 12, 64), (32, 1025, 16, 64)]
ATTN_PRESETS = {"vit5-base": (768, 12), "vit5-large": (1024, 16)}
DTYPE = torch.bfloat16
START = time.time()


def log(*args):
    print(f"[{time.time() - START:6.1f}s]", *args, flush=True)


def bench(fn, rep_ms=200, warmup_calls=3):
    for _ in range(warmup_calls):
        fn()
    torch.cuda.synchronize()
    return device_ms(fn, warmup_ms=25, rep_ms=rep_ms) * 1e-3  # seconds


def set_use_triton(module: torch.nn.Module, on: bool) -> torch.nn.Module:
    for m in module.modules():
        if hasattr(m, "use_triton"):
            m.use_triton = on
    return module


# ------------------------------------------------------------------------------------------ op
def op_inputs(B, T, H, D, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(B, T, 3 * H * D, device="cuda", dtype=DTYPE, generator=g)
    ang = torch.rand(T, D, device="cuda", generator=g) * 6.3
    w = [1 + 0.1 * torch.randn(D, device="cuda", generator=g) for _ in range(2)]
    return qkv, ang.cos(), ang.sin(), w[0], w[1]


def check_op_on_gpu() -> list[dict]:
    """Fused op vs a float64 evaluation of the reference, fresh random data, outputs poisoned first."""
    rows = []
    for (B, T, H, D), pairing, wshape in [
        ((4, 201, 12, 64), "split_half", "shared"),
        ((4, 201, 12, 64), "interleaved", "per_head"),
        ((3, 197, 16, 72), "split_half", "per_head"),
        ((3, 197, 16, 72), "interleaved", None),
    ]:
        qkv, cos, sin, qw, kw = op_inputs(B, T, H, D, seed=B * T + D)
        if wshape == "per_head":
            qw, kw = qw.repeat(H, 1) + 0.1 * torch.randn(H, D, device="cuda"), kw.repeat(H, 1)
        elif wshape is None:
            qw = kw = None
        # Fill the allocator's free blocks with NaN so an unwritten output element shows up.
        torch.full((3 * qkv.numel(),), float("nan"), device="cuda", dtype=DTYPE)
        leaves = [t.clone().requires_grad_() if t is not None else None for t in (qkv, qw, kw)]
        q, k, v = kernels.qk_norm_rope(qkv=leaves[0], cos=cos, sin=sin, num_heads=H, q_weight=leaves[1],
                                       k_weight=leaves[2], pairing=pairing, backend="triton")  # fmt: skip
        gs = [torch.randn_like(o) for o in (q, k, v)]
        torch.autograd.backward((q, k, v), gs)
        ref_leaves = [t.double().requires_grad_() if t is not None else None for t in (qkv, qw, kw)]
        rq, rk, rv = kernels.qk_norm_rope_ref(ref_leaves[0], cos.double(), sin.double(), H, ref_leaves[1],
                                              ref_leaves[2], 1e-6, pairing, norm=qw is not None)  # fmt: skip
        torch.autograd.backward((rq, rk, rv), [g.double() for g in gs])

        def err(a, b):
            return ((a.double() - b).norm() / b.norm()).item() if not torch.isnan(a).any() else float("nan")

        row = {"shape": (B, T, H, D), "pairing": pairing, "weights": wshape, "q": err(q, rq), "k": err(k, rk),
               "dqkv": err(leaves[0].grad, ref_leaves[0].grad)}  # fmt: skip
        if qw is not None:
            row["dq_weight"] = err(leaves[1].grad, ref_leaves[1].grad)
        row["ok"] = all(v_ < 1e-2 for key, v_ in row.items() if key in ("q", "k", "dqkv", "dq_weight"))
        rows.append(row)
        log("check", row)
    return rows


def sweep(shapes) -> list[dict]:
    out = []
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for B, T, H, D in shapes:
        qkv, cos, sin, qw, kw = op_inputs(B, T, H, D)
        n_bytes = 4 * B * T * H * D * 2
        for (bt, nw), hints in itertools.product([(8, 1), (16, 1), (16, 2), (32, 2), (32, 4)], (True, False)):
            fn = functools.partial(qkt.qk_norm_rope_fwd, qkv, cos, sin, qw, kw, H, 1e-6, "split_half", True,
                                   block_t=bt, num_warps=nw, evict_hints=hints)  # fmt: skip
            t = bench(fn, rep_ms=100)
            out.append({"dir": "fwd", "shape": (B, T, H, D), "block_t": bt, "num_warps": nw, "hints": hints,
                        "us": t * 1e6, "GBps": n_bytes / t / 1e9})  # fmt: skip
        dq, dk, dv = (torch.randn(B, H, T, D, device="cuda", dtype=DTYPE) for _ in range(3))
        n_bytes = 8 * B * T * H * D * 2
        for bt, nw, per_sm, hints in itertools.product((16, 32), (2, 4), (2, 4, 8, 64), (True, False)):
            fn = functools.partial(qkt.qk_norm_rope_bwd, dq, dk, dv, qkv, cos, sin, qw, kw, H, 1e-6, "split_half",
                                   True, block_t=bt, num_warps=nw, num_programs=per_sm * sms, evict_hints=hints)  # fmt: skip
            t = bench(fn, rep_ms=100)
            out.append({"dir": "bwd", "shape": (B, T, H, D), "block_t": bt, "num_warps": nw, "hints": hints,
                        "programs_per_sm": per_sm, "us": t * 1e6, "GBps": n_bytes / t / 1e9})  # fmt: skip
    for d in ("fwd", "bwd"):
        for shape in shapes:
            best = sorted((r for r in out if r["dir"] == d and r["shape"] == shape), key=itemgetter("us"))[:4]
            log("sweep best", d, shape, [(r["block_t"], r["num_warps"], r.get("programs_per_sm"), r["hints"],
                                          round(r["us"], 1)) for r in best])  # fmt: skip
    return out


def host_us(fn, calls=30) -> float:
    """CPU time to issue one call (no synchronisation inside the loop; the launch queue does not fill)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def _bench_op_shape(B, T, H, D, copy_gbps) -> list[dict]:
    qkv, cos, sin, qw, kw = op_inputs(B, T, H, D)
    N = B * T * H * D
    grads = [torch.randn(B, H, T, D, device="cuda", dtype=DTYPE) for _ in range(3)]

    def fused(qkv, qw, kw):
        return kernels.qk_norm_rope(qkv, cos, sin, H, qw, kw, 1e-6, "split_half", backend="triton")

    def ref(qkv, qw, kw):
        return kernels.qk_norm_rope_ref(qkv, cos, sin, H, qw, kw, 1e-6, "split_half", norm=True)

    def backward(outs, leaves):
        torch.autograd.grad(outs, leaves, grads, retain_graph=True)

    def fwd_bwd(fn):
        leaves = [t.detach().requires_grad_() for t in (qkv, qw, kw)]
        torch.autograd.grad(fn(*leaves), leaves, grads)

    rows = []
    # The kernels alone, launched without the autograd/dispatch layers: the CPU cost of those layers
    # is the difference to the "flopkit fused" rows.
    t_fwd = bench(functools.partial(qkt.qk_norm_rope_fwd, qkv, cos, sin, qw, kw, H, 1e-6, "split_half", True))
    t_bwd = bench(
        functools.partial(qkt.qk_norm_rope_bwd, *grads, qkv, cos, sin, qw, kw, H, 1e-6, "split_half", True)
    )
    t_fwd_i = bench(
        functools.partial(qkt.qk_norm_rope_fwd, qkv, cos, sin, qw, kw, H, 1e-6, "interleaved", True)
    )
    t_bwd_i = bench(
        functools.partial(qkt.qk_norm_rope_bwd, *grads, qkv, cos, sin, qw, kw, H, 1e-6, "interleaved", True)
    )
    for impl, direction, t, nbytes in (
        ("flopkit kernel only", "fwd", t_fwd, 4 * N * 2),
        ("flopkit kernel only", "bwd", t_bwd, 8 * N * 2),
        ("flopkit kernel only, interleaved", "fwd", t_fwd_i, 4 * N * 2),
        ("flopkit kernel only, interleaved", "bwd", t_bwd_i, 8 * N * 2),
    ):
        gbps = nbytes / t / 1e9
        rows.append({"shape": (B, T, H, D), "impl": impl, "dir": direction, "us": t * 1e6,
                     "GBps": gbps, "pct_copy": 100 * gbps / copy_gbps})  # fmt: skip
    compiled = torch.compile(ref, dynamic=False)
    impls = (("flopkit fused", fused), ("eager PyTorch", ref), ("torch.compile(ref)", compiled))
    for name, fn in impls:
        t_fwd = bench(functools.partial(fn, qkv, qw, kw), rep_ms=300)
        leaves = [t.detach().requires_grad_() for t in (qkv, qw, kw)]
        try:
            t_bwd = bench(functools.partial(backward, fn(*leaves), leaves), rep_ms=300)
        except Exception as exc:  # a compiled graph that cannot be replayed: time fwd+bwd - fwd
            log("retain_graph backward failed, timing fwd+bwd - fwd instead:", repr(exc)[:200])
            t_bwd = bench(functools.partial(fwd_bwd, fn), rep_ms=300) - t_fwd
        host = {"fwd": host_us(functools.partial(fn, qkv, qw, kw)),
                "bwd": host_us(functools.partial(backward, fn(*leaves), leaves)) if "compile" not in name else None}  # fmt: skip
        for direction, t, nbytes in (("fwd", t_fwd, 4 * N * 2), ("bwd", t_bwd, 8 * N * 2)):
            gbps = nbytes / t / 1e9
            rows.append({"shape": (B, T, H, D), "impl": name, "dir": direction, "us": t * 1e6, "GBps": gbps,
                         "pct_copy": 100 * gbps / copy_gbps, "host_us": host[direction]})  # fmt: skip
            log("op", rows[-1])
    return rows


def bench_op(shapes, copy_gbps) -> list[dict]:
    rows = [row for shape in shapes for row in _bench_op_shape(*shape, copy_gbps)]
    for row in rows:
        base = next(r for r in rows if r["shape"] == row["shape"] and r["dir"] == row["dir"]
                    and r["impl"] == "torch.compile(ref)")  # fmt: skip
        row["speedup_vs_compile"] = base["us"] / row["us"]
    return rows


# ------------------------------------------------------------------------------------------ attention
def _attention_step(module, x, grad_out):
    with torch.autocast("cuda", dtype=DTYPE):
        out = module(x)
    out.backward(grad_out)


def bench_attention(batch: int) -> list[dict]:
    rows = []
    for preset, (C, H) in ATTN_PRESETS.items():
        torch.manual_seed(0)
        fast = ViT5Attention(C, H, 14, 14, num_registers=4, has_cls=True, qk_norm="rmsnorm").cuda()
        ref = set_use_triton(copy.deepcopy(fast), False)
        x = torch.randn(batch, fast.num_tokens, C, device="cuda", requires_grad=True)
        g = torch.randn(batch, fast.num_tokens, C, device="cuda", dtype=DTYPE)

        variants = [
            ("flopkit fused (eager)", fast),
            ("reference eager", ref),
            ("reference torch.compile", torch.compile(ref, dynamic=False)),
            ("flopkit fused torch.compile", torch.compile(fast, dynamic=False)),
        ]
        for name, m in variants:
            try:
                t = bench(functools.partial(_attention_step, m, x, g), rep_ms=400)
            except Exception as exc:
                log("attention", preset, name, "FAILED", repr(exc)[:300])
                traceback.print_exc()
                continue
            rows.append({"preset": preset, "batch": batch, "impl": name, "ms": t * 1e3})
            log("attention", rows[-1])
        base = {r["impl"]: r["ms"] for r in rows if r["preset"] == preset}
        for r in rows:
            if r["preset"] == preset:
                r["speedup_vs_eager"] = base["reference eager"] / r["ms"]
                if "reference torch.compile" in base:
                    r["speedup_vs_compile"] = base["reference torch.compile"] / r["ms"]
    return rows


class _Autocast(torch.nn.Module):
    """Runs ``module`` under bf16 autocast without the weight-cast cache (CUDA-graph capturable)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=DTYPE, cache_enabled=False):
            return self.module(x)


def _plain_step(module, x, grad_out):
    module(x).backward(grad_out)


def bench_attention_graphs(batch: int) -> list[dict]:
    """ViT5Attention forward+backward captured in a CUDA graph: device time without host overhead."""
    rows = []
    for preset, (C, H) in ATTN_PRESETS.items():
        torch.manual_seed(0)
        fast = ViT5Attention(C, H, 14, 14, num_registers=4, has_cls=True, qk_norm="rmsnorm").cuda()
        ref = set_use_triton(copy.deepcopy(fast), False)
        x = torch.randn(batch, fast.num_tokens, C, device="cuda", requires_grad=True)
        g = torch.randn(batch, fast.num_tokens, C, device="cuda", dtype=DTYPE)
        for name, m in (("flopkit fused, CUDA graph", fast), ("reference, CUDA graph", ref)):
            try:
                graphed = torch.cuda.make_graphed_callables(_Autocast(m), (x,))
                t_graph = bench(functools.partial(_plain_step, graphed, x, g), rep_ms=400)
                t_eager = bench(functools.partial(_plain_step, _Autocast(m), x, g), rep_ms=400)
                host = host_us(functools.partial(_plain_step, _Autocast(m), x, g), calls=10)
            except Exception as exc:
                log("graphs", preset, name, "FAILED", repr(exc)[:300])
                traceback.print_exc()
                continue
            rows.append({"preset": preset, "batch": batch, "impl": name, "graph_ms": t_graph * 1e3,
                         "eager_ms": t_eager * 1e3, "eager_host_ms": host / 1e3})  # fmt: skip
            log("graphs", rows[-1])
    return rows


# ------------------------------------------------------------------------------------------ train
def bench_train(batch: int, peak_tflops: float, variants: list[str]) -> dict:
    torch.manual_seed(0)
    base = ViT5.from_preset("vit5-base").cuda()
    fwd = base.flop_breakdown()
    train_per_image = 3 * (fwd["matmul"] + fwd["attention"])
    images = torch.randn(batch, 3, 224, 224, device="cuda")
    labels = torch.randint(0, 1000, (batch,), device="cuda")
    rows = []

    def make(name):
        m = copy.deepcopy(base)
        if "attention only" in name:
            set_use_triton(m, False)
            for blk in m.blocks:
                blk.attn.use_triton = True
        elif name.startswith("reference"):
            set_use_triton(m, False)
        else:
            set_use_triton(m, True)
        return torch.compile(m, dynamic=False) if "compile" in name else m

    for name in variants:
        try:
            m = make(name)

            def step(m=m):
                with torch.autocast("cuda", dtype=DTYPE):
                    loss = F.cross_entropy(m(images), labels)
                loss.backward()
                for p in m.parameters():
                    p.grad = None

            t = bench(step, rep_ms=1500, warmup_calls=3)
        except Exception as exc:
            log("train", name, "FAILED", repr(exc)[:300])
            traceback.print_exc()
            continue
        tflops = train_per_image * batch / t / 1e12
        rows.append({"impl": name, "ms": t * 1e3, "images_per_s": batch / t, "TFLOPs": tflops,
                     "MFU_pct": 100 * tflops / peak_tflops})  # fmt: skip
        log("train", rows[-1])
        del m
        torch.cuda.empty_cache()
    ref = {r["impl"]: r["ms"] for r in rows}
    for r in rows:
        if "reference eager" in ref:
            r["speedup_vs_eager"] = ref["reference eager"] / r["ms"]
        if "reference torch.compile" in ref:
            r["speedup_vs_compile"] = ref["reference torch.compile"] / r["ms"]
    return {"batch": batch, "forward_breakdown_per_image": fwd, "train_flops_per_image": train_per_image,
            "rule": "training FLOPs = 3 x forward (matmul + attention); norm/rope/elementwise left out",
            "rows": rows}  # fmt: skip


# ------------------------------------------------------------------------------------------ report
def markdown(res: dict) -> str:
    lines = []
    roofs = res.get("roofs") or {}
    if roofs:
        lines += [f"Roofs measured in this run: device-to-device copy {roofs['copy_gbs']:.0f} GB/s "
                  f"(read + write), bf16 matmul 8192³ {roofs['matmul_tflops']:.0f} TFLOP/s.", ""]  # fmt: skip
    if res.get("op"):
        lines += ["## Fused QK-norm + RoPE op (bf16, split_half, shared (D,) weights)", "",
                  "| B, T, H, D | dir | impl | µs | GB/s | % copy | × compile | host µs/call |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in res["op"]:
            lines.append(f"| {r['shape']} | {r['dir']} | {r['impl']} | {r['us']:.1f} | {r['GBps']:.0f} | "
                         f"{r['pct_copy']:.1f} | {r['speedup_vs_compile']:.2f} | "
                         f"{'' if r.get('host_us') is None else format(r['host_us'], '.0f')} |")  # fmt: skip
        lines.append("")
    if res.get("attention"):
        lines += ["## ViT5Attention forward + backward (autocast bf16)", "",
                  "| preset | batch | impl | ms | × eager | × compile |", "|---|---|---|---|---|---|"]  # fmt: skip
        for r in res["attention"]:
            lines.append(f"| {r['preset']} | {r['batch']} | {r['impl']} | {r['ms']:.2f} | "
                         f"{r.get('speedup_vs_eager', float('nan')):.2f} | {r.get('speedup_vs_compile', float('nan')):.2f} |")  # fmt: skip
        lines.append("")
    if res.get("graphs"):
        lines += ["## ViT5Attention forward + backward: CUDA-graph replay vs eager issue", "",
                  "| preset | impl | graph ms | eager ms | eager host ms |", "|---|---|---|---|---|"]  # fmt: skip
        for r in res["graphs"]:
            lines.append(f"| {r['preset']} | {r['impl']} | {r['graph_ms']:.2f} | {r['eager_ms']:.2f} | "
                         f"{r['eager_host_ms']:.2f} |")  # fmt: skip
        lines.append("")
    tr = res.get("train")
    if tr and tr["rows"]:
        lines += [f"## vit5-base training step (forward + backward, batch {tr['batch']}, autocast bf16)", "",
                  f"Analytic training FLOPs per image: {tr['train_flops_per_image'] / 1e9:.2f} GFLOP ({tr['rule']}).",
                  "", "| impl | ms | images/s | TFLOP/s | MFU % | × eager | × compile |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in tr["rows"]:
            lines.append(f"| {r['impl']} | {r['ms']:.1f} | {r['images_per_s']:.0f} | {r['TFLOPs']:.0f} | "
                         f"{r['MFU_pct']:.1f} | {r.get('speedup_vs_eager', float('nan')):.2f} | "
                         f"{r.get('speedup_vs_compile', float('nan')):.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=out_default())
    ap.add_argument("--sections", default="check,op,attention,train")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--train-variants", default="flopkit fused (all kernels),flopkit fused attention only,"
                    "reference eager,reference torch.compile")  # fmt: skip
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    roofs = run_roofs()
    log("roofs", roofs)
    writer = ResultWriter(args.out, "bench_attention", roofs=roofs)
    res: dict = {"args": vars(args)}

    def save():
        writer.save(res, markdown(writer.record(res)).splitlines())

    for name, fn in (
        ("check", check_op_on_gpu),
        ("sweep", lambda: sweep(OP_SHAPES) if args.sweep else None),
        ("op", lambda: bench_op(OP_SHAPES, roofs.copy_gbs)),
        ("attention", lambda: bench_attention(args.batch)),
        ("graphs", lambda: bench_attention_graphs(args.batch)),
        ("train", lambda: bench_train(args.batch, roofs.matmul_tflops, args.train_variants.split(","))),
    ):
        if name not in sections and not (name == "sweep" and args.sweep):
            continue
        try:
            res[name] = fn()
        except Exception:
            traceback.print_exc()
            res[name + "_error"] = traceback.format_exc()[-2000:]
        save()
        torch.cuda.empty_cache()
    writer.finish(res, markdown(writer.record(res)).splitlines())


if __name__ == "__main__":
    main()
