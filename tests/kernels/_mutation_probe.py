"""Run torch's mutation analysis of ``wrap_triton`` kernels on every flopkit kernel plan; print JSON.

``torch.compile`` learns which arguments a user Triton kernel writes from the kernel's TTIR
(``identify_accessed_tensors``); functionalization then writes back each argument it thinks is
written. A wrong answer is silent corruption: a tensor passed in two slots, one really written and
one wrongly thought written, is written back from the wrong copy. This script (run by
``test_mutation_analysis.py`` in a subprocess, without ``TRITON_INTERPRET``: the analysis needs
compiled ``JITFunction``s) builds the TTIR for an sm_90 target, no GPU needed, and prints per plan
(the norms' and the QK-norm + RoPE's, built directly) and per kernel the public ops launch (the
attention, the MLP's GELU + linear, ``scale_rows``, ``embed_tokens``) the arguments the analysis
marks as written.
"""

from __future__ import annotations

import json
import os

os.environ["TRITON_INTERPRET"] = "0"

import torch  # noqa: E402
import triton  # noqa: E402
from flopkit.kernels import _embed_triton, _mlp_ops, _scale_triton, _sdpa_ops  # noqa: E402, F401
from flopkit.kernels import _norm_triton as nt  # noqa: E402
from flopkit.kernels import _rope_triton as rt  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402


class _Sm90:
    """Stands in for the CUDA driver: the analysis asks it for the target only."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


def _written(kernel, kwargs) -> list[str]:
    """The argument names torch's analysis marks as written (its newer and older entry points)."""
    import torch._higher_order_ops.triton_kernel_wrap as tkw

    if hasattr(tkw, "identify_accessed_tensors"):
        accesses = tkw.identify_accessed_tensors(kernel, kwargs, {})
        return sorted(d.name for d in accesses.read_writes.writes)
    return sorted(tkw.identify_mutated_tensors(kernel, kwargs, {}))


def writes(plan, n_tensors: int) -> list[str]:
    names = plan.kernel.arg_names
    kw = {n: torch.empty(8, dtype=torch.bfloat16) for n in names[:n_tensors]}
    kw.update(zip(names[n_tensors:], plan.scalars, strict=False))
    kw.update({k: v for k, v in plan.meta.items() if k != "num_warps"})
    return _written(plan.kernel, kw)


def cases() -> dict[str, list[str]]:
    out = {}
    x = torch.randn(6, 64)
    xw = torch.randn(6, 320)  # the 512-wide tables: prefetching backward
    xh = torch.randn(6, 3, 64)
    for name, (t, kw) in {
        "fwd": (x, {}),
        "fwd residual": (x, {"residual": x}),
        "fwd residual scale": (x, {"residual": x, "has_s": True}),
        "fwd heads layer bias": (xh, {"H": 3, "per_head_weight": True, "layer": True, "has_b": True}),
    }.items():
        H = kw.pop("H", 1)
        plan = nt._plan_forward(
            t, kw.get("residual"), True, kw.get("has_b", False), kw.get("has_s", False), 1e-6, H, 64,
            kw.get("layer", False), kw.get("per_head_weight", False), None,
        )[0]  # fmt: skip
        out[name] = writes(plan, 7)
    for name, (t, H, D, flags) in {
        "bwd": (x, 1, 64, {}),
        "bwd prefetch residual": (xw, 1, 320, {"has_dres": True}),
        "bwd prefetch scale": (xw, 1, 320, {"has_dres": True, "has_s": True}),
        "bwd heads layer bias": (xh, 3, 64, {"per_head_weight": True, "layer": True, "has_bias": True}),
    }.items():
        plan = nt._plan_backward(
            t, True, flags.get("has_bias", False), flags.get("has_dres", False), flags.get("has_s", False),
            1e-6, H, D, flags.get("layer", False), flags.get("per_head_weight", False), None, None,
        )[0]  # fmt: skip
        out[name] = writes(plan, 10)
    big = nt.FUSED_MAX_FWD, nt.FUSED_MAX_BWD
    nt.FUSED_MAX_FWD = nt.FUSED_MAX_BWD = 32  # D = 64 then takes the chunked kernels
    try:
        out["fwd chunked residual"] = writes(
            nt._plan_forward(x, x, True, False, True, 1e-6, 1, 64, False, False, None)[0], 7
        )
        out["bwd chunked scale"] = writes(
            nt._plan_backward(x, True, False, True, True, 1e-6, 1, 64, False, False, None, None)[0], 10
        )
    finally:
        nt.FUSED_MAX_FWD, nt.FUSED_MAX_BWD = big
    out["sum partials two"] = writes(nt.sum_partials_plan(5, 64, True), 4)
    qkv = torch.randn(2, 5, 3 * 2 * 64)
    cos = torch.randn(5, 64)
    w = torch.randn(64)
    out["rope fwd"] = writes(
        rt._plan_fwd(qkv, cos, cos, w, w, 2, 1e-6, "split_half", True, None, rt.FWD_WARPS, True)[0], 7
    )
    dq = torch.randn(2, 2, 5, 64)
    out["rope bwd"] = writes(
        rt._plan_bwd(
            dq, dq, dq, qkv, cos, cos, w, w, 2, 1e-6, "split_half", True, None, rt.BWD_WARPS, 8, True, True
        )[0],
        11,
    )
    return out


def launched(run) -> dict[str, list[str]]:
    """The written arguments of every kernel ``run()`` launches through a public op on CPU tensors,
    by kernel name (``name/N`` for a kernel's N-th distinct set): ``JITFunction.run`` records the
    bound arguments instead of launching (as ``_sm90_launches.py`` does), and the route sends CPU
    tensors to the kernels under the interpreter's flag, which is set only while ``run`` runs (the
    kernel modules, imported above without it, made their kernels ``JITFunction``s)."""
    from triton.runtime.jit import JITFunction

    seen: dict[str, list[str]] = {}

    def capture(self, *args, grid, warmup, **kwargs):
        bound = dict(zip(self.arg_names, args, strict=False)) | kwargs
        bound = {k: v for k, v in bound.items() if k in self.arg_names}
        written = _written(self, bound)
        name = self.__name__
        variants = [k for k in seen if k == name or k.startswith(name + "/")]
        if written not in [seen[k] for k in variants]:
            seen[f"{name}/{len(variants)}" if variants else name] = written

    real, flag = JITFunction.run, os.environ["TRITON_INTERPRET"]
    JITFunction.run, os.environ["TRITON_INTERPRET"] = capture, "1"
    try:
        run()
    finally:
        JITFunction.run, os.environ["TRITON_INTERPRET"] = real, flag
    return seen


def _ops() -> None:
    """The attention (one kernel per head at T = 201, the dq and dkdv kernels at T = 577, with the
    QK-norm + RoPE and alone; the opt-in forward with QK-norm + RoPE inside), the MLP's GELU + linear (the pointer GEMM CPU tensors take, and the
    TMA GEMM), ``scale_rows`` and ``embed_tokens``, forward and backward."""
    from flopkit.kernels import _mlp_triton

    from flopkit import kernels as K

    def backward(*outs):
        outs = [o for o in outs if o is not None and o.requires_grad]
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    dt = torch.bfloat16
    for T in (201, 577):
        H, D = 2, 64
        qkv = torch.randn(1, T, 3 * H * D, dtype=dt, requires_grad=True)
        w = torch.randn(D, dtype=dt, requires_grad=True)
        cos, sin = torch.randn(T, D), torch.randn(T, D)
        backward(K.qk_norm_rope_attention(qkv, cos, sin, H, w, w, backend="triton"))
        q, k, v = (torch.randn(1, H, T, D, dtype=dt, requires_grad=True) for _ in range(3))
        backward(K.attention(q, k, v, backend="triton"))
    from flopkit.kernels import _sdpa_triton

    _sdpa_triton.QK_FUSED_FWD = True  # opt-in: QK-norm + RoPE inside the attention forward
    try:
        K.qk_norm_rope_attention(qkv.detach()[:, :201], cos[:201], sin[:201], H, w.detach(), w.detach(),
                                 backend="triton")  # fmt: skip
    finally:
        _sdpa_triton.QK_FUSED_FWD = False
    pre, w2 = (
        torch.randn(2, 5, 64, dtype=dt, requires_grad=True),
        torch.randn(32, 64, dtype=dt, requires_grad=True),
    )
    backward(K.gelu_linear(pre, w2, backend="triton"))
    _mlp_triton.gelu_linear_backward(torch.randn(2, 5, 32, dtype=dt), w2.detach(), pre.detach(), kernel="tma")
    w, s = torch.randn(32, 64, dtype=dt, requires_grad=True), torch.randn(32, dtype=dt, requires_grad=True)
    backward(K.scale_rows(w, s, backend="triton"))
    x = torch.randn(2, 4, 32, dtype=dt, requires_grad=True)
    pos, cls, reg = (torch.randn(1, n, 32, dtype=dt, requires_grad=True) for n in (4, 1, 2))
    backward(K.embed_tokens(x, pos, cls, reg, False, backend="triton"))


if __name__ == "__main__":
    triton.runtime.driver.set_active(_Sm90())
    print(json.dumps(cases() | launched(_ops)))
