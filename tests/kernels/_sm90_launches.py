"""Compile every launch configuration of the norm, QK-norm + RoPE, ``scale_rows``, ``embed_tokens`` and ``gelu_linear``
kernels for sm90 (and the attention kernels as the QK-norm + RoPE + attention op launches them).

Run as a script in a fresh interpreter (``tests/kernels/test_sm90_compile.py``): it runs each public
op forward and backward on CPU tensors at ViT-5 shapes with Triton's launch replaced by a capture,
so the launchers plan exactly what they would on an H100 (their tile tables fall back to sm90's),
then compiles each distinct (kernel, signature, constexprs, warps, stages) for sm90 with the
installed Triton. Prints one JSON line: the number of configurations, the kernels, and the failures.
No GPU needed; Triton's NVIDIA backend (ptxas ships with its wheel) is.
"""

import json
import os
import sys

import torch
from flopkit.kernels import (
    _embed_triton,
    _mlp_ops,
    _mlp_triton,
    _norm_ops,
    _rope_ops,
    _scale_triton,
    _sdpa_ops,
    _sdpa_triton,
)
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from triton.runtime.jit import JITFunction

from flopkit import kernels as K

# Imported before main() sets TRITON_INTERPRET, so that their kernels are JITFunctions.
KERNEL_MODULES = (
    _embed_triton,
    _mlp_ops,
    _mlp_triton,
    _norm_ops,
    _rope_ops,
    _scale_triton,
    _sdpa_ops,
    _sdpa_triton,
)
TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32"}
SEEN: dict = {}


def capture(self, *args, grid, warmup, **kwargs):
    """``JITFunction.run``'s stand-in: record the launch's signature instead of compiling it."""
    bound = dict(zip(self.arg_names, args, strict=False)) | kwargs
    signature, constants = {}, {}
    for i, p in enumerate(self.params):
        v = bound[p.name]
        if p.is_constexpr or v is None:
            signature[p.name], constants[(i,)] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            signature[p.name] = "*" + TYPES[v.dtype]
        elif isinstance(v, bool):
            signature[p.name] = "i1"
        elif isinstance(v, int):
            signature[p.name] = "i32" if -(2**31) <= v < 2**31 else "i64"
        elif isinstance(v, float):
            signature[p.name] = "fp32"
        else:
            raise TypeError(f"{self.__name__}: argument {p.name} = {v!r}")
    options = {k: bound[k] for k in ("num_warps", "num_stages") if k in bound}
    key = (self.__name__, str(sorted(signature.items())), str(sorted(constants.items())), str(options))
    SEEN.setdefault(key, (self, signature, constants, options))


def leaves(*tensors):
    return [t.requires_grad_() for t in tensors]


def backward(*outs):
    outs = [o for o in outs if o is not None and o.requires_grad]
    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])


def run_ops() -> None:
    B, T = 2, 201
    for dt in (torch.bfloat16, torch.float32):
        # ViT-5's widths, and one past the fused kernels' limits (the chunked kernels).
        for rows, C in (((B, T), 384), ((B, T), 768), ((4,), 32768)):
            x, r, w, s = leaves(
                *(torch.randn(*shape, dtype=dt) for shape in ((*rows, C), (*rows, C), (C,), (C,)))
            )
            backward(K.rms_norm(x, w, backend="triton"))
            backward(*K.rms_norm_residual(x, r, w, backend="triton"))
            backward(*K.rms_norm_residual(x, r, w, scale=s, backend="triton"))
        for H, D in ((6, 64), (12, 64)):
            x, w, hw, hb = leaves(
                *(torch.randn(*shape, dtype=dt) for shape in ((B, T, H, D), (D,), (H, D), (H, D)))
            )
            backward(K.per_head_rms_norm(x, w, H, backend="triton"))
            backward(K.head_norm(x, hw, None, mode="rms", backend="triton"))
            backward(K.head_norm(x, hw, hb, mode="layer", backend="triton"))
            cos, sin = torch.randn(T, D), torch.randn(T, D)
            for norm in (True, False):
                for pairing in ("split_half", "interleaved"):
                    qkv, qw, kw = leaves(
                        *(torch.randn(*shape, dtype=dt) for shape in ((B, T, 3 * H * D), (D,), (D,)))
                    )
                    weights = (qw, kw) if norm else (None, None)
                    out = K.qk_norm_rope(
                        qkv, cos, sin, H, *weights, pairing=pairing, norm=norm, backend="triton"
                    )
                    backward(*out)
                    if dt != torch.float32:  # with the attention: its backward in place (no v part)
                        args = (qkv, cos, sin, H, *weights)
                        backward(
                            K.qk_norm_rope_attention(*args, pairing=pairing, norm=norm, backend="triton")
                        )
                        _sdpa_triton.QK_FUSED_FWD = True  # opt-in: QK-norm + RoPE in the forward
                        try:
                            K.qk_norm_rope_attention(*args, pairing=pairing, norm=norm, backend="triton")
                        finally:
                            _sdpa_triton.QK_FUSED_FWD = False
        # ViT-5's LayerScale folded into fc2 (small and base), and a weight past one column step.
        for R, K_ in ((384, 1536), (768, 3072), (5, 2500)):
            w, s = leaves(torch.randn(R, K_, dtype=dt), torch.randn(R, dtype=dt))
            backward(K.scale_rows(w, s, backend="triton"))
        # ViT-5's tokens, both layouts, and without a position embedding or registers.
        for cls_first, parts in ((False, (1, 1, 1)), (True, (1, 1, 1)), (False, (0, 0, 0))):
            x, pos, cls, reg = leaves(
                *(
                    torch.randn(*sh, dtype=dt)
                    for sh in ((B, 196, 384), (1, 196, 384), (1, 1, 384), (1, 4, 384))
                )
            )
            pos, cls, reg = (t if keep else None for t, keep in zip((pos, cls, reg), parts, strict=True))
            backward(K.embed_tokens(x, pos, cls, reg, cls_first, backend="triton"))
        # ViT-5's MLPs (small, base) as kernels.gelu_linear: the forward's pass and the pointer GEMM
        # (CPU tensors take it), then the TMA GEMM that CUDA half inputs take.
        for H, C in ((1536, 384), (3072, 768)):
            pre, w = leaves(torch.randn(B, T, H, dtype=dt), torch.randn(C, H, dtype=dt))
            backward(K.gelu_linear(pre, w, backend="triton"))
            if dt != torch.float32:
                _mlp_triton.gelu_linear_backward(
                    torch.randn(B, T, C, dtype=dt), w.detach(), pre.detach(), kernel="tma"
                )
    # Past 256 tokens a head's backward takes the dq and dkdv kernels (ViT-5 at 384 px: T = 577).
    T, H, D = 577, 6, 64
    qkv, w = leaves(torch.randn(1, T, 3 * H * D, dtype=torch.bfloat16), torch.randn(D, dtype=torch.bfloat16))
    cos, sin = torch.randn(T, D), torch.randn(T, D)
    backward(K.qk_norm_rope_attention(qkv, cos, sin, H, w, w, backend="triton"))


def main() -> None:
    JITFunction.run = capture
    # The route takes CPU tensors to the kernels only under the interpreter's flag; the kernels
    # were created above as JITFunctions, and every launch is captured, none interpreted.
    os.environ["TRITON_INTERPRET"] = "1"
    run_ops()
    target = GPUTarget("cuda", 90, 32)
    failures = {}
    for (name, _, consts, opts), (fn, signature, constants, options) in SEEN.items():
        try:
            compile(ASTSource(fn, signature, constants), target=target, options=options)
        except Exception as e:  # noqa: BLE001  every failure is reported, the rest still compile
            failures[f"{name} {consts} {opts}"] = f"{type(e).__name__}: {str(e)[-300:]}"
    kernels = sorted({key[0] for key in SEEN})
    print(json.dumps({"configs": len(SEEN), "kernels": kernels, "failures": failures}))


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("run without TRITON_INTERPRET: the kernels must be JITFunctions")
    main()
