"""Which SDPA backend is fastest at the ViT-5 attention shapes (T = 201 tokens, head_dim 64, bf16).

Run on the device machine (see /work/.library/device/), from the repository root::

    python -m benchmarks.sdpa_backends --out $OUT

For vit5-small at batch 256 (6 heads) and vit5-base at batch 128 (12 heads): forward, and forward
+ backward, of ``F.scaled_dot_product_attention`` pinned to each backend (cuDNN,
FlashAttention-2, memory-efficient), median of ``triton.testing.do_bench``, and each backend's
output and ``dq`` relative to cuDNN's (all compute the same function in bf16). flopkit's
``ViT5Attention`` and nvSubquadratic's both leave the choice to PyTorch, which picks cuDNN on the
H100. Then the layout of q and k: head-major or token-major, with the output's transpose to
``[B, T, C]``. Writes ``sdpa_backends_DEVICE.json`` and ``.md`` under ``--out`` (``benchmarks/_harness.py``).
"""

# ruff: noqa: B023

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks._harness import device_ms, out_default, write_results

SHAPES = {"vit5-small b256": (256, 6), "vit5-base b128": (128, 12)}
BACKENDS = (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION)


def ms(fn) -> float:
    return device_ms(fn, warmup_ms=20, rep_ms=100)


def layouts() -> list[dict]:
    """cuDNN allocates the attention output in q's memory layout: token-major q makes the
    ``[B, T, C]`` output a free view instead of a transposing copy."""
    rows = []
    g = torch.Generator(device="cuda").manual_seed(1)
    for shape, (B, H) in SHAPES.items():
        T, D = 201, 64
        qkv = torch.randn(B, T, 3 * H * D, device="cuda", generator=g).to(torch.bfloat16)
        v = qkv[..., 2 * H * D :].unflatten(-1, (H, D)).transpose(1, 2).requires_grad_()
        grad = torch.randn(B, T, H * D, device="cuda", generator=g).to(torch.bfloat16)
        for layout in ("head-major", "token-major"):
            if layout == "head-major":
                q, k = (
                    torch.randn(B, H, T, D, device="cuda", generator=g).to(torch.bfloat16) for _ in range(2)
                )
            else:
                q, k = (
                    torch.randn(B, T, H, D, device="cuda", generator=g).to(torch.bfloat16).transpose(1, 2)
                    for _ in range(2)
                )
            q.requires_grad_()
            k.requires_grad_()

            def attention():
                return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, H * D)

            def forward_backward():
                q.grad = k.grad = v.grad = None
                attention().backward(grad)

            out = F.scaled_dot_product_attention(q, k, v)
            rows.append(
                {
                    "shape": shape,
                    "layout": layout,
                    "ms": ms(forward_backward),
                    "output_is_view": out.transpose(1, 2).is_contiguous(),
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=out_default())
    args = ap.parse_args()
    res: dict = {}
    rows = res["rows"] = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for shape, (B, H) in SHAPES.items():
        q, k, v = (
            torch.randn(B, H, 201, 64, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
            for _ in range(3)
        )
        do = torch.randn(B, H, 201, 64, device="cuda", generator=g).to(torch.bfloat16)

        def forward():
            return F.scaled_dot_product_attention(q, k, v)

        def forward_backward():
            q.grad = k.grad = v.grad = None
            forward().backward(do)

        first = None
        for backend in BACKENDS:
            row = {"shape": shape, "backend": backend.name}
            try:
                with sdpa_kernel([backend]):
                    row["forward_ms"], row["forward_backward_ms"] = ms(forward), ms(forward_backward)
                    forward_backward()
                    out, dq = forward().float(), q.grad.float()
                first = first or (out, dq)
                row["out_vs_cudnn"] = ((out - first[0]).norm() / first[0].norm()).item()
                row["dq_vs_cudnn"] = ((dq - first[1]).norm() / first[1].norm()).item()
            except RuntimeError as e:  # a backend this build or GPU lacks
                row["error"] = repr(e)[:200]
            rows.append(row)
    layout_rows = res["layouts"] = layouts()
    lines = [
        "T = 201, head_dim 64, bf16.",
        "",
        "| shape | backend | forward ms | forward + backward ms | out vs cuDNN | dq vs cuDNN |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['backend']} | {r['error']} ||||")
        else:
            lines.append(
                f"| {r['shape']} | {r['backend']} | {r['forward_ms']:.4f} | {r['forward_backward_ms']:.4f} | "
                f"{r['out_vs_cudnn']:.1e} | {r['dq_vs_cudnn']:.1e} |"
            )
    lines += [
        "",
        "Default backend, forward + backward of `sdpa(q, k, v).transpose(1, 2).reshape(B, T, C)`, v a",
        "slice of the fused qkv activation (as in both models), q and k laid out head-major (contiguous",
        "`[B, H, T, D]`) or token-major (`[B, H, T, D]` views of `[B, T, H, D]` buffers):",
        "",
        "| shape | q, k layout | ms | output a view (no copy) |",
        "|---|---|---:|---|",
    ]
    for r in layout_rows:
        lines.append(f"| {r['shape']} | {r['layout']} | {r['ms']:.4f} | {r['output_is_view']} |")
    write_results(args.out, "sdpa_backends", res, lines)


if __name__ == "__main__":
    main()
