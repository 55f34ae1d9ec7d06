"""The CUDA behaviour a meta-device replay must reproduce to predict a step's GPU memory.

flopkit replays a step on the meta device (shapes only, no values, no GPU). The meta device runs
the same autograd engine, the same composite decompositions and the same optimizer code as CUDA;
what it does not do is what CUDA decides for itself. This module supplies those decisions:

* :func:`block_bytes`: the caching allocator's rounding (every block a multiple of 512 bytes);
* :class:`CudaSemantics`, a ``TorchFunctionMode`` that

  - emulates ``torch.autocast("cuda", dtype)`` (meta tensors have no autocast dispatch key):
    ops on CUDA's lower-precision list cast their floating inputs to ``dtype`` (with the cast cache
    for parameters, kept until the autocast region ends), ops on its fp32 list cast to float32,
    reductions on its "fp32 output" list run with ``dtype=torch.float32``;
  - runs dropout as CUDA does, ATen's fused ``native_dropout`` with a bool mask (on meta and CPU,
    ``dropout`` saves a noise tensor of the input's dtype);
  - routes ``F.scaled_dot_product_attention`` to the backend PyTorch picks on an H100
    (:func:`sdpa_backend`) and allocates what that backend allocates: flash attention (FA2) and
    memory-efficient attention save the output and a float32 log-sum-exp ``[B, H, T]``, never the
    ``T x T`` matrix; their backward allocates the gradients and the kernel's float32 scratch
    (:class:`_FlashAttention`, :class:`_EfficientAttention`); the math backend is run as is.

Everything here is written by hand because torch has no CPU-side model of it: ``FakeTensorMode``
with a ``cuda`` device needs a CUDA build (autograd asks for a CUDA device guard), and torch's
``MemTracker`` runs on whatever device the tensors claim, with the CPU's SDPA and autocast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

__all__ = [
    "BLOCK",
    "block_bytes",
    "SdpaChoice",
    "sdpa_backend",
    "CudaSemantics",
    "AUTOCAST_LOWER",
    "AUTOCAST_FP32",
    "AUTOCAST_FP32_OUTPUT",
]

BLOCK = 512  # the CUDA caching allocator rounds every request up to a multiple of 512 bytes

# CUDA autocast policies (aten/src/ATen/autocast_mode.cpp), by the Python name the call reaches a
# TorchFunctionMode with (``F.linear`` -> "linear", ``Tensor.__matmul__`` -> "__matmul__").
AUTOCAST_LOWER = frozenset(
    {
        "linear", "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "baddbmm", "addmm", "addbmm",
        "addmv", "addr", "mv", "einsum", "chain_matmul", "multi_dot", "linalg_vecdot", "prelu",
        "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
        "conv_tbc", "convolution", "_convolution", "scaled_dot_product_attention",
        "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell",
    }
)  # fmt: skip
AUTOCAST_FP32 = frozenset(
    {
        "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p",
        "reciprocal", "rsqrt", "sinh", "tan", "pow", "__pow__", "softplus", "layer_norm",
        "native_layer_norm", "group_norm", "frobenius_norm", "nuclear_norm", "cosine_similarity",
        "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "nll_loss2d", "hinge_embedding_loss",
        "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss",
        "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss",
        "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp",
        "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_linear1d",
        "upsample_bilinear2d", "upsample_trilinear3d", "upsample_bicubic2d", "grid_sampler",
    }
)  # fmt: skip
# "fp32_set_opt_dtype": without an explicit dtype these run with dtype=float32 (a float32 output,
# no separate cast tensor).
AUTOCAST_FP32_OUTPUT = frozenset(
    {"softmax", "log_softmax", "cumprod", "cumsum", "prod", "sum", "linalg_vector_norm"}
)
_PROMOTE = frozenset({"cat", "stack", "addcmul", "addcdiv", "index_put", "scatter_add", "dot", "vdot"})


def block_bytes(nbytes: int) -> int:
    """The bytes the caching allocator's ``allocated_bytes`` statistic charges for a request of
    ``nbytes``: ``nbytes`` rounded up to a multiple of 512 (0 for an empty tensor, which allocates
    nothing)."""
    return 0 if nbytes <= 0 else -(-nbytes // BLOCK) * BLOCK


# ------------------------------------------------------------------------------------------ SDPA


@dataclass(frozen=True)
class SdpaChoice:
    """The SDPA backend for one call and why."""

    backend: str  # "flash", "efficient" or "math"; "flopkit" for flopkit's attention kernels
    reason: str


def sdpa_backend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    enable_gqa: bool = False,
) -> SdpaChoice:
    """The backend ``F.scaled_dot_product_attention`` uses on an H100 (sm90) for these inputs, in
    PyTorch's priority order flash > memory-efficient > math (cuDNN attention is not on by default).

    * flash (FA2): fp16/bf16, no ``attn_mask``, head dim a multiple of 8 and at most 256, q/k/v of
      one dtype, 4-D inputs.
    * memory-efficient (cutlass): fp32/fp16/bf16, any boolean/additive mask, head dim a multiple of 4
      (fp32) or 8 (fp16/bf16), value and key head dims equal, no GQA expansion.
    * math: everything else (it materialises the ``T x T`` attention).
    """
    dims = query.dim() == key.dim() == value.dim() == 4
    dtypes = query.dtype == key.dtype == value.dtype
    head, v_head = query.shape[-1], value.shape[-1]
    if not dims or not dtypes:
        return SdpaChoice("math", "inputs are not 4-D of one dtype")
    same_heads = query.shape[1] == key.shape[1] == value.shape[1]
    if (
        query.dtype in (torch.float16, torch.bfloat16)
        and attn_mask is None
        and head % 8 == 0
        and head <= 256
        and v_head == head
        and (same_heads or enable_gqa)
    ):
        return SdpaChoice("flash", f"{str(query.dtype)[6:]}, head dim {head}, no mask")
    align = 4 if query.dtype == torch.float32 else 8
    if (
        query.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and head % align == 0
        and v_head % align == 0
        and same_heads
    ):
        return SdpaChoice("efficient", f"{str(query.dtype)[6:]}, head dim {head}")
    return SdpaChoice("math", f"{str(query.dtype)[6:]}, head dim {head}: no fused kernel applies")


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _bthd(x: torch.Tensor) -> torch.Tensor:
    """``x [B, H, T, D]`` as the kernels read it, ``[B, T, H, D]`` (a view); copied when its last dim
    is not contiguous (the kernels' stride checks)."""
    x = x.transpose(1, 2)
    return x if x.stride(-1) == 1 else x.contiguous()


class _FlashAttention(torch.autograd.Function):
    """``_scaled_dot_product_flash_attention`` (FA2) on meta.

    Forward: the output is ``empty_like(q)`` of the ``[B, T, H, D]`` view of the query (its strides
    preserved: contiguous ``[B, T, H, D]`` when q is a head-split view of a ``[B, T, C]`` tensor,
    contiguous ``[B, H, T, D]`` when q is), returned as its ``[B, H, T, D]`` view; log-sum-exp fp32
    ``[B, H, T]``; saves q, k, v, output and log-sum-exp. Backward: ``grad_out`` and the output made
    contiguous in ``[B, T, H, D]`` (copies when they are not), dq, dk, dv ``empty_like`` the
    ``[B, T, H, D]`` views, scratch ``softmax_d`` fp32 ``[B, H, round128(T)]`` and ``dq_accum`` fp32
    ``[B, round128(T), H, round32(D)]`` (FA2 always loops over key blocks)."""

    @staticmethod
    def forward(ctx, query, key, value, is_causal, scale):  # noqa: D102
        q = _bthd(query)
        _bthd(key), _bthd(value)
        out = torch.empty_like(q)
        lse = torch.empty(query.shape[:3], dtype=torch.float32, device=query.device)
        result = out.transpose(1, 2)
        ctx.save_for_backward(query, key, value, result, lse)
        return result

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        query, key, value, out, lse = ctx.saved_tensors
        g = grad.transpose(1, 2).contiguous()
        o = out.transpose(1, 2).contiguous()
        batch, tokens, heads, head = g.shape
        dq = torch.empty_like(_bthd(query))
        dk = torch.empty_like(_bthd(key))
        dv = torch.empty_like(_bthd(value))
        rows = _round_up(tokens, 128)
        softmax_d = torch.empty((batch, heads, rows), dtype=torch.float32, device=g.device)
        dq_accum = torch.empty(
            (batch, rows, heads, _round_up(head, 32) if head <= 192 else 256),
            dtype=torch.float32,
            device=g.device,
        )
        del softmax_d, dq_accum, g, o
        return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2), None, None


class _EfficientAttention(torch.autograd.Function):
    """``_scaled_dot_product_efficient_attention`` (cutlass) on meta: output a new contiguous
    ``[B, T, H, D]`` (returned as its ``[B, H, T, D]`` view), log-sum-exp fp32 ``[B, H, round32(T)]``;
    saves q, k, v, mask, output and log-sum-exp. Backward: dq, dk, dv with the strides of the
    ``[B, T, H, D]`` views of q, k, v (one packed buffer when q, k, v are slices of one tensor: the
    same bytes), and ``delta`` fp32 ``[B, H, T]``."""

    @staticmethod
    def forward(ctx, query, key, value, attn_mask, is_causal, scale):  # noqa: D102
        q = _bthd(query)
        _bthd(key), _bthd(value)
        out = torch.empty(
            (*q.shape[:-1], value.shape[-1]), dtype=query.dtype, device=query.device
        )  # [B, T, H, Dv]
        lse = torch.empty(
            (*query.shape[:2], _round_up(query.shape[2], 32)), dtype=torch.float32, device=query.device
        )
        result = out.transpose(1, 2)
        ctx.save_for_backward(query, key, value, attn_mask, result, lse)
        return result

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        query, key, value, attn_mask, out, lse = ctx.saved_tensors
        g = _bthd(grad)
        dq = torch.empty_like(_bthd(query))
        dk = torch.empty_like(_bthd(key))
        dv = torch.empty_like(_bthd(value))
        delta = torch.empty(query.shape[:3], dtype=torch.float32, device=query.device)
        del delta, g
        return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2), None, None, None


def _sdpa_arguments(args: tuple, kwargs: dict) -> dict[str, Any]:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound = dict(zip(names, args, strict=False))
    bound.update(kwargs)
    bound.setdefault("attn_mask", None)
    bound.setdefault("dropout_p", 0.0)
    bound.setdefault("is_causal", False)
    bound.setdefault("scale", None)
    bound.setdefault("enable_gqa", False)
    return bound


def _run_sdpa(func, args: tuple, kwargs: dict, choices: list[SdpaChoice]) -> torch.Tensor:
    a = _sdpa_arguments(args, kwargs)
    query, key, value, mask = a["query"], a["key"], a["value"], a["attn_mask"]
    choice = sdpa_backend(query, key, value, mask, a["enable_gqa"])
    choices.append(choice)
    if choice.backend == "flash":
        if a["enable_gqa"] and key.shape[1] != query.shape[1]:
            repeat = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(repeat, 1), value.repeat_interleave(repeat, 1)
        return _FlashAttention.apply(query, key, value, a["is_causal"], a["scale"])
    if choice.backend == "efficient":
        return _EfficientAttention.apply(query, key, value, mask, a["is_causal"], a["scale"])
    return torch.ops.aten._scaled_dot_product_attention_math(
        query,
        key,
        value,
        mask,
        a["dropout_p"],
        a["is_causal"],
        None,
        scale=a["scale"],
        enable_gqa=a["enable_gqa"],
    )[0]


# -------------------------------------------------------------------------------------- autocast


def _is_float(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float64


class CudaSemantics(TorchFunctionMode):
    """CUDA's autocast and SDPA backend choice for a step replayed on the meta device.

    ``autocast`` (``torch.bfloat16``/``torch.float16`` or None) is the dtype of the autocast
    regions opened with :meth:`autocast_region`; outside a region no cast happens, as on CUDA.
    ``sdpa_choices`` records each SDPA call's backend, in call order.
    """

    def __init__(self, autocast: torch.dtype | None = None) -> None:
        super().__init__()
        self.autocast = autocast
        self.enabled = False
        self._depth = 0
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.sdpa_choices: list[SdpaChoice] = []

    @contextlib.contextmanager
    def autocast_region(self, enabled: bool = True) -> Iterator[None]:
        """Like entering ``torch.autocast("cuda", dtype)``: casts apply inside; the cast cache of
        parameters empties when the outermost region ends (autocast's ``clear_cache``)."""
        before = self.enabled
        self.enabled = enabled and self.autocast is not None
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            self.enabled = before
            if self._depth == 0:
                self._cache.clear()

    def _cast(self, x: Any, dtype: torch.dtype) -> Any:
        if not _is_float(x) or x.dtype == dtype:
            return x
        cacheable = (
            dtype == self.autocast
            and x.dtype == torch.float32
            and x.requires_grad
            and x.is_leaf
            and not x._is_view()
        )
        if cacheable:
            hit = self._cache.get(id(x))
            if hit is not None and hit[0] is x:
                return hit[1]
        out = x.to(dtype)
        if cacheable:
            self._cache[id(x)] = (x, out)
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if self.enabled:
            if name in AUTOCAST_LOWER:
                args, kwargs = tree_map(lambda x: self._cast(x, self.autocast), (args, kwargs))
            elif name in AUTOCAST_FP32:
                args, kwargs = tree_map(lambda x: self._cast(x, torch.float32), (args, kwargs))
            elif name in AUTOCAST_FP32_OUTPUT and kwargs.get("dtype") is None:
                first = args[0] if args else None
                if _is_float(first) and first.dtype != torch.float32 and _accepts_dtype(name, args):
                    kwargs = {**kwargs, "dtype": torch.float32}
            elif name in _PROMOTE:
                floats = [t for t in _tensors((args, kwargs)) if _is_float(t)]
                if floats:
                    widest = max((t.dtype for t in floats), key=lambda d: torch.finfo(d).bits)
                    args, kwargs = tree_map(lambda x: self._cast(x, widest), (args, kwargs))
        if name == "scaled_dot_product_attention":
            return _run_sdpa(func, args, kwargs, self.sdpa_choices)
        if name in _FLOPKIT_ATTENTION and getattr(func, "namespace", None) == "flopkit":
            # ViT5Attention on the Triton path: flopkit's kernels (kernels/sdpa.py), whose fakes
            # and autograd allocate what the kernels allocate.
            self.sdpa_choices.append(SdpaChoice("flopkit", _FLOPKIT_ATTENTION[name]))
        if name == "dropout" and args:
            fused = _fused_dropout(args, kwargs)
            if fused is not None:
                return fused
        return func(*args, **kwargs)


_FLOPKIT_ATTENTION = {
    "attention.default": "flopkit's Triton attention (kernels.attention)",
    "qk_norm_rope_attention.default": "flopkit's Triton attention with QK-norm + RoPE (kernels.qk_norm_rope_attention)",
}
"""The flopkit ops that run flopkit's attention kernels, by ``__name__``, and how a report names them."""


def _fused_dropout(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``F.dropout``/``torch.dropout`` as CUDA runs it: out of place, in training, with ``0 < p < 1``,
    ATen's fused ``native_dropout``, which saves a bool mask (1 byte an element); elsewhere (and on
    meta) ``input * noise`` saves a noise tensor of the input's dtype. None where CUDA does not fuse
    either (the call then runs as written)."""
    x = args[0]
    p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
    train = kwargs.get("training", kwargs.get("train", args[2] if len(args) > 2 else True))
    inplace = kwargs.get("inplace", args[3] if len(args) > 3 else False)
    if not isinstance(x, torch.Tensor) or not train or inplace or not 0 < p < 1 or x.numel() == 0:
        return None
    return torch.native_dropout(x, p, True)[0]


def _accepts_dtype(name: str, args: tuple) -> bool:
    # sum() over all elements and sum(dim) both take dtype; a softmax needs its dim first.
    return name not in ("softmax", "log_softmax", "cumsum", "cumprod") or len(args) >= 2


def _tensors(tree: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    tree_map(lambda x: found.append(x) if isinstance(x, torch.Tensor) else None, tree)
    return found
