"""Launch-configuration sweep of flopkit's kernels at ViT-5 training shapes, and the SDPA backends.

The kernel tables in ``kernels/_norm_triton.py`` were first swept at power-of-two widths
(``bench_norms.py``). A ViT-5 block runs its norms at ``C = 384`` (Small) and ``768`` (Base), which
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

Run from the repository root on a CUDA machine (flopkit installed)::

    python benchmarks/sweep_vit_kernels.py [--out DIR]
    python benchmarks/sweep_vit_kernels.py --from-json results/sweep_vit_kernels_....json  # table only

Writes ``sweep_vit_kernels.json`` under ``--out`` (default ``$OUT`` or ``.``) and prints a table last.
"""

from __future__ import annotations

import argparse
import json
import os

SHAPES = {"vit5-small": (256, 6, 384), "vit5-base": (128, 12, 768)}  # batch, heads, C
TOKENS, HEAD_DIM = 201, 64
NORM_UNITS = {"plain": 3, "res": 4, "res+scale": 6}


SWEEPS = ("norm_bwd", "norm_fwd", "qk", "sdpa")


def _norm_sweep(B: int, C: int, do_bench, sweeps=SWEEPS, prefetch=(None,)) -> dict:
    """``prefetch``: values of ``BWD_PREFETCH`` to sweep the backward under (None: the module's);
    rows swept with it set get ``+prefetch``/``+no-prefetch`` appended to their kind."""
    import torch
    from flopkit.kernels import _launch
    from flopkit.kernels import _norm_triton as tk

    bf = torch.bfloat16
    h = torch.randn(B * TOKENS, C, device="cuda", dtype=bf)
    dy, dres, br = torch.randn_like(h), torch.randn_like(h), torch.randn_like(h)
    w = torch.randn(C, device="cuda", dtype=bf)
    s = 0.1 * torch.randn(C, device="cuda", dtype=bf)
    out = {}
    default_prefetch = tk.BWD_PREFETCH
    for kind in NORM_UNITS if "norm_bwd" in sweeps else ():
        kw = {"plain": {}, "res": {"dres": dres}, "res+scale": {"dres": dres, "branch": br, "scale": s}}[kind]

        def bwd(kw=kw, **cfg):
            return tk.norm_backward(dy, h, w, False, 1e-6, grad_dtype=bf, **kw, **cfg)

        for pf in prefetch:
            tk.BWD_PREFETCH = default_prefetch if pf is None else pf
            _launch.clear_launch_cache()  # plans carry the flag
            rows = [
                (do_bench(lambda c=(e, n), p=p: bwd(config=c, programs_per_sm=p), rep=40), e, n, p)
                for e in (1024, 2048, 4096)
                for n in (2, 4, 8)
                for p in (2, 4, 8)
            ]
            tag = "" if pf is None else "+prefetch" if pf else "+no-prefetch"
            out[f"norm_bwd|{kind}{tag}"] = {"default_ms": do_bench(bwd, rep=200), "best": sorted(rows)[:8]}
        tk.BWD_PREFETCH = default_prefetch
        _launch.clear_launch_cache()
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


def sweep(out: str, sweeps=SWEEPS, prefetch=(None,)) -> dict:
    import torch
    from triton.testing import do_bench

    res: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    chosen = [
        fn
        for fn, names in ((_norm_sweep, ("norm_bwd", "norm_fwd")), (_qk_sweep, ("qk",)), (_sdpa, ("sdpa",)))
        if any(n in sweeps for n in names)
    ]
    for sweep_one in chosen:
        for name, (B, H, C) in SHAPES.items():
            if sweep_one is _norm_sweep:
                got = _norm_sweep(B, C, do_bench, sweeps, prefetch)
            else:
                got = sweep_one(B, H, do_bench)
            for key, val in got.items():
                op, kind = key.split("|")
                res[f"{op}|{name}|{kind}"] = val
            with open(os.path.join(out, "sweep_vit_kernels.json"), "w") as fh:
                json.dump(res, fh, indent=1)
            torch.cuda.empty_cache()
    return res


def table(res: dict) -> str:
    """Markdown: per swept kernel, the table's choice and the best configurations, in us and GB/s."""
    lines = [
        f"sweep_vit_kernels: {res.get('device', '?')}, torch {res.get('torch', '?')}, bf16",
        "",
        "| kernel | shape | table's choice | best (config: us) |",
        "|---|---|---:|---|",
    ]
    for key, val in res.items():
        if not isinstance(val, dict):
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
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--from-json", default=None, help="print the table of an earlier run's JSON")
    ap.add_argument("--sweeps", default=",".join(SWEEPS), help=f"a subset of {','.join(SWEEPS)}")
    ap.add_argument(
        "--prefetch", default="", help="'both': sweep the norm backward with and without BWD_PREFETCH"
    )
    a = ap.parse_args()
    if a.from_json:
        with open(a.from_json) as fh:
            res = json.load(fh)
    else:
        os.makedirs(a.out, exist_ok=True)
        res = sweep(a.out, a.sweeps.split(","), (False, True) if a.prefetch == "both" else (None,))
    print(table(res))


if __name__ == "__main__":
    main()
