"""Launch-configuration sweep of flopkit's kernels at ViT-5 training shapes, and the SDPA backends.

The kernel tables in ``kernels/_norm_triton.py`` (keyed by architecture and width, each entry
citing the run that chose it) were first swept at power-of-two widths (``bench_norms.py``). A ViT-5 block runs its norms at ``C = 384`` (Small) and ``768`` (Base), which
pad to 512 and 1024 columns, on ``B*T`` rows (256 x 201 and 128 x 201). This script times, at those
shapes in bf16 on one GPU (``triton.testing.do_bench``, median):

- the norm backward launcher (kernel + weight-gradient reduction) for a plain RMSNorm, a residual
  RMSNorm and the LayerScale-fused residual RMSNorm (``scale``), over ``(elements per tile,
  num_warps, programs per SM)``, against the table's choice;
- the norm forward (residual, residual + scale) over ``(elements per tile, num_warps)``;
- the fused QK-norm + RoPE backward over ``(block_t, num_warps, programs per SM)``;
- ``F.scaled_dot_product_attention`` forward and forward + backward per backend (flash,
  memory-efficient, cuDNN) at the ViT-5 attention shapes.

Effective GB/s count the minimum bytes: plain backward reads dy and x and writes dx (3 tensors),
residual adds dres (4), the scaled one also reads the branch and writes its gradient (6); the
forwards read x and the residual and write y and h (4).

Run from the repository root on a CUDA machine::

    python -m benchmarks.sweep_vit_kernels [--sweeps norm_bwd,norm_fwd,qk,sdpa] [--prefetch both]
        [--presets vit5-small,vit5-base] [--out DIR]
    python -m benchmarks.sweep_vit_kernels --from-json benchmarks/results/sweep_vit_kernels_h100.json

Timings are ``benchmarks/_harness.py``'s ``device_ms`` (``triton.testing.do_bench`` medians).
Writes ``sweep_vit_kernels_DEVICE.json`` and ``.md`` under ``--out`` (default ``$OUT`` or ``.``)
and prints a table last; ``--from-json`` prints the tables of a saved record again (every run of
a record gathered from before the harness).
"""

from __future__ import annotations

import argparse
import json

from benchmarks._harness import ResultWriter, device_ms, out_default

SHAPES = {"vit5-small": (256, 6, 384), "vit5-base": (128, 12, 768)}  # batch, heads, C
TOKENS, HEAD_DIM = 201, 64
NORM_UNITS = {"plain": 3, "res": 4, "res+scale": 6}


SWEEPS = ("norm_bwd", "norm_fwd", "qk", "sdpa")


def do_bench(fn, rep: int = 100) -> float:
    """Median ms of ``fn`` (the harness's timer; ``rep`` ms of repetitions)."""
    return device_ms(fn, warmup_ms=25, rep_ms=rep)


def _norm_sweep(B: int, C: int, do_bench, sweeps=SWEEPS, prefetch=(None,)) -> dict:
    """``prefetch``: values of ``norm_backward``'s ``prefetch`` to sweep the backward under (None:
    the tables' choice); rows swept with it set get ``+prefetch``/``+no-prefetch`` appended to their
    kind."""
    import torch
    from flopkit.kernels import _norm_triton as tk

    bf = torch.bfloat16
    h = torch.randn(B * TOKENS, C, device="cuda", dtype=bf)
    dy, dres, br = torch.randn_like(h), torch.randn_like(h), torch.randn_like(h)
    w = torch.randn(C, device="cuda", dtype=bf)
    s = 0.1 * torch.randn(C, device="cuda", dtype=bf)
    out = {}
    for kind in NORM_UNITS if "norm_bwd" in sweeps else ():
        kw = {"plain": {}, "res": {"dres": dres}, "res+scale": {"dres": dres, "branch": br, "scale": s}}[kind]

        for pf in prefetch:

            def bwd(kw=kw, pf=pf, **cfg):
                return tk.norm_backward(dy, h, w, False, 1e-6, grad_dtype=bf, prefetch=pf, **kw, **cfg)

            rows = [
                (do_bench(lambda c=(e, n), p=p, bwd=bwd: bwd(config=c, programs_per_sm=p), rep=40), e, n, p)
                for e in (1024, 2048, 4096)
                for n in (2, 4, 8)
                for p in (2, 4, 8)
            ]
            tag = "" if pf is None else "+prefetch" if pf else "+no-prefetch"
            out[f"norm_bwd|{kind}{tag}"] = {"default_ms": do_bench(bwd, rep=200), "best": sorted(rows)[:8]}
    for kind in ("res", "res+scale") if "norm_fwd" in sweeps else ():
        kw = {"residual": dres} if kind == "res" else {"residual": dres, "scale": s}

        def fwd(kw=kw, **cfg):
            return tk.norm_forward(br, w, None, 1e-6, **kw, **cfg)

        rows = [
            (do_bench(lambda c=(e, n): fwd(config=c), rep=40), e, n)
            for e in (1024, 2048, 4096)
            for n in (2, 4, 8)
        ]
        out[f"norm_fwd|{kind}"] = {"default_ms": do_bench(fwd, rep=200), "best": sorted(rows)[:8]}
    return out


def _qk_sweep(B: int, H: int, do_bench) -> dict:
    import torch
    from flopkit.kernels import _rope_triton as rt

    from flopkit.nn.rope import build_rope_tables, token_layout

    bf, D = torch.bfloat16, HEAD_DIM
    cos, sin = (t.to("cuda") for t in build_rope_tables(token_layout(14, 14, True, 4), D))
    qkv = torch.randn(B, TOKENS, 3 * H * D, device="cuda", dtype=bf)
    dq = torch.randn(B, H, TOKENS, D, device="cuda", dtype=bf)
    dk = torch.randn_like(dq)
    dv = torch.randn(B, TOKENS, H, D, device="cuda", dtype=bf).transpose(1, 2)  # v is a view of qkv
    qw, kw = torch.randn(D, device="cuda", dtype=bf), torch.randn(D, device="cuda", dtype=bf)
    sms = torch.cuda.get_device_properties(0).multi_processor_count

    def bwd(**cfg):
        return rt.qk_norm_rope_bwd(dq, dk, dv, qkv, cos, sin, qw, kw, H, 1e-6, "split_half", True, **cfg)

    rows = [
        (do_bench(lambda b=b, n=n, p=p: bwd(block_t=b, num_warps=n, num_programs=p * sms), rep=40), b, n, p)
        for b in (16, 32, 64)
        for n in (1, 2, 4)
        for p in (4, 8, 16)
    ]
    return {"qk_bwd|": {"default_ms": do_bench(bwd, rep=200), "best": sorted(rows)[:8]}}


def _sdpa(B: int, H: int, do_bench) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (
        torch.randn(B, H, TOKENS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for _ in range(3)
    )
    g = torch.randn_like(q)
    out = {}
    for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        with sdpa_kernel(be):
            tf = do_bench(lambda: F.scaled_dot_product_attention(q, k, v))
            tb = do_bench(lambda: F.scaled_dot_product_attention(q, k, v).backward(g))
        out[f"sdpa|{be.name}"] = [tf, tb]
    return out


def sweep(writer: ResultWriter | None, sweeps=SWEEPS, prefetch=(None,), presets=tuple(SHAPES)) -> dict:
    """Run ``sweeps`` at ``presets``' shapes; returns ``{"op|preset|kind": result}``, saved through
    ``writer`` after each shape."""
    import torch

    found: dict = {}
    chosen = [
        fn
        for fn, names in ((_norm_sweep, ("norm_bwd", "norm_fwd")), (_qk_sweep, ("qk",)), (_sdpa, ("sdpa",)))
        if any(n in sweeps for n in names)
    ]
    for sweep_one in chosen:
        for name in presets:
            B, H, C = SHAPES[name]
            if sweep_one is _norm_sweep:
                got = _norm_sweep(B, C, do_bench, sweeps, prefetch)
            else:
                got = sweep_one(B, H, do_bench)
            for key, val in got.items():
                op, kind = key.split("|")
                found[f"{op}|{name}|{kind}"] = val
            if writer is not None:
                writer.save({"sweeps": list(sweeps), "results": found})
            torch.cuda.empty_cache()
    return found


def render(record: dict) -> str:
    """The tables of a saved record: a harness record's ``results``, or each run of a record
    gathered from before the harness (``runs``), or an old flat result."""
    if "runs" in record:
        return "\n\n".join(f"run {run}:\n\n" + table(r["data"]) for run, r in record["runs"].items())
    return table(record.get("results", record))


def table(res: dict) -> str:
    """Markdown: per swept kernel, the table's choice and the best configurations, in us and GB/s."""
    lines = [
        "bf16; the table's choice and the three best configurations per kernel",
        "",
        "| kernel | shape | table's choice | best (config: us) |",
        "|---|---|---:|---|",
    ]
    for key, val in res.items():
        if not isinstance(val, dict) or key.count("|") != 2:
            continue
        op, name, kind = key.split("|")
        B, H, C = SHAPES[name]
        if op.startswith("norm"):
            units = (
                NORM_UNITS[kind.removesuffix("+prefetch").removesuffix("+no-prefetch")]
                if op == "norm_bwd"
                else 4
            )
            nbytes = units * B * TOKENS * C * 2
            shape = f"{B * TOKENS} x {C}, {kind}"
        else:
            nbytes = 8 * B * TOKENS * H * HEAD_DIM * 2  # dq, dk, q, k read; dv read; dqkv written
            shape = f"B={B} T={TOKENS} H={H} D={HEAD_DIM}" + (f", {kind}" if kind else "")
        t0 = val["default_ms"] * 1e3
        best = ", ".join(f"{tuple(r[1:])}: {r[0] * 1e3:.1f}" for r in val["best"][:3])
        lines.append(f"| {op} | {shape} | {t0:.1f} us ({nbytes / (t0 * 1e-6) / 1e9:.0f} GB/s) | {best} |")
    lines += ["", "| SDPA backend | shape | forward us | forward + backward us |", "|---|---|---:|---:|"]
    for key, val in res.items():
        if key.startswith("sdpa|"):
            _, name, backend = key.split("|")
            B, H, _ = SHAPES[name]
            lines.append(
                f"| {backend} | B={B} H={H} T={TOKENS} D={HEAD_DIM} | {val[0] * 1e3:.0f} | {val[1] * 1e3:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=out_default())
    ap.add_argument("--from-json", default=None, help="print the tables of a saved record")
    ap.add_argument("--sweeps", default=",".join(SWEEPS), help=f"a subset of {','.join(SWEEPS)}")
    ap.add_argument("--presets", default=",".join(SHAPES), help=f"a subset of {','.join(SHAPES)}")
    ap.add_argument(
        "--prefetch", default="", help="'both': sweep the norm backward with and without its prefetch"
    )
    a = ap.parse_args()
    if a.from_json:
        with open(a.from_json) as fh:
            print(render(json.load(fh)))
        return
    writer = ResultWriter(a.out, "sweep_vit_kernels")
    prefetch = (False, True) if a.prefetch == "both" else (None,)
    found = sweep(writer, a.sweeps.split(","), prefetch, a.presets.split(","))
    writer.finish({"sweeps": a.sweeps.split(","), "results": found}, table(found).splitlines())


if __name__ == "__main__":
    main()
