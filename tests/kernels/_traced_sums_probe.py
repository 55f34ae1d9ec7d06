"""Which reductions a traced backward runs for its weight gradients; print JSON.

Run by ``test_rms_norm_kernels.py`` in a subprocess, without ``TRITON_INTERPRET`` (tracing an
interpreted kernel runs it). ``make_fx`` with fake tensors traces a scaled residual norm's backward
and the QK-norm + RoPE backward as ``torch.compile`` traces a custom op's launcher (``run=wrapped``),
with ``TRACED_SUM_KERNEL`` off (``"0"``) and on (``"1"``); each graph's Triton kernels (by name) and
torch sums are listed in order. No GPU is needed: nothing is launched.
"""

from __future__ import annotations

import json
import os

os.environ["TRITON_INTERPRET"] = "0"

import torch  # noqa: E402
from flopkit.kernels import _norm_triton as nt  # noqa: E402
from flopkit.kernels import _rope_triton as rt  # noqa: E402
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table  # noqa: E402
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402


def reductions(fn, *args) -> list[str]:
    graph = make_fx(fn, tracing_mode="fake")(*args).graph
    out = []
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if "triton_kernel_wrapper" in str(node.target):
            out.append(kernel_side_table.get_kernel(node.kwargs["kernel_idx"]).fn.__name__)
        elif "sum" in str(node.target):
            out.append(str(node.target))
    return out


def norm_bwd(dy, x, w, branch, s):
    grads = nt.norm_backward(dy, x, w, False, 1e-6, branch=branch, scale=s, run=nt.wrapped)
    return tuple(g for g in grads if g is not None)


H, D, T = 2, 64, 11


def rope_bwd(dq, dk, dv, qkv, cos, sin, qw, kw):
    return rt.qk_norm_rope_bwd(dq, dk, dv, qkv, cos, sin, qw, kw, H, 1e-6, "split_half", True, run=nt.wrapped)


def graphs() -> dict[str, list[str]]:
    x = torch.randn(2, T, 64, dtype=torch.bfloat16)
    qkv = torch.randn(2, T, 3 * H * D, dtype=torch.bfloat16)
    heads = torch.randn(2, H, T, D, dtype=torch.bfloat16)
    cos, sin, qw, kw = torch.randn(T, D), torch.randn(T, D), torch.randn(D), torch.randn(D)
    return {
        "norm": reductions(
            norm_bwd, torch.randn_like(x), x, torch.randn(64), torch.randn_like(x), torch.randn(64)
        ),
        "rope": reductions(rope_bwd, heads, heads.clone(), heads.clone(), qkv, cos, sin, qw, kw),
    }


if __name__ == "__main__":
    result = {}
    for flag in (False, True):
        nt.TRACED_SUM_KERNEL = flag
        result[str(int(flag))] = graphs()
    print(json.dumps(result))
