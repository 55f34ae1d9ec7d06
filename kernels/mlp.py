"""The MLP's public op: :func:`gelu_linear`, ``linear(gelu(pre), weight, bias)`` (exact erf GELU)
with a Triton path whose forward stores GELU's derivative and whose backward GEMM applies it in its
epilogue (``_mlp_triton.py``), and PyTorch's ops as the reference.

:func:`gelu_linear` decides its call's route once (``_dispatch.route``) and calls the eager entry or
the custom op, both generated (``_opspec.KernelOp``) from the op's one spec in ``_mlp_ops.py``.
FLOPs: :func:`flopkit.formulas.linear` ``(N, H, C)`` each way (the GELU's one FLOP per element is
the model count's, as for ``nn.GELU``; torch's counter has none for it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import REFERENCE, Route, route

__all__ = ["gelu_linear", "gelu_linear_ref", "GELU_LINEAR_DTYPES"]

GELU_LINEAR_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
"""Input dtypes the kernels take (float32 multiplies in full precision, not TF32: correct but not
fast; the models send float16 and bfloat16 only)."""


def gelu_linear_ref(
    pre: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(F.gelu(pre), weight, bias)`` (autograd as for those ops)."""
    return F.linear(F.gelu(pre), weight, bias)


def _check(pre: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if pre.dim() < 1 or weight.dim() != 2 or pre.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"gelu_linear: pre must be [*, H] and weight [C, H] with the same H, got pre "
            f"{tuple(pre.shape)} and weight {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"gelu_linear: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.device != pre.device:
            raise ValueError(f"gelu_linear: {name} is on {t.device}, pre on {pre.device}")
        if t.dtype != pre.dtype:
            raise TypeError(f"gelu_linear: {name} is {t.dtype}, pre {pre.dtype}; the op takes one dtype")


def gelu_linear(
    pre: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: str | Route = "auto",
) -> torch.Tensor:
    """``linear(gelu(pre), weight, bias)`` with the exact (erf) GELU: an MLP's activation and
    second layer, as one op.

    The Triton path's forward writes ``h = gelu(pre)`` and ``g = gelu'(pre)`` in one pass over
    ``pre`` and runs ``h @ weightᵀ`` on cuBLAS; its backward computes ``dpre = (dy @ weight) * g`` in
    one Triton GEMM (the product by ``g`` in its epilogue, so ``dy @ weight`` is never written), and
    the weight and bias gradients with PyTorch's ``mm`` and ``sum``. It saves ``h`` and ``g`` where
    PyTorch's ops save ``pre`` and ``h``: the same bytes.

    Args:
        pre: ``[*, H]``, the first layer's output (a contiguous copy is made if it is not).
        weight: ``[C, H]``; bias: ``(C,)`` or None; both in ``pre``'s dtype and on its device.
        backend: ``"auto"``, ``"triton"``, ``"torch"``, or a :class:`~flopkit.kernels.Route` the
            caller already decided with :func:`~flopkit.kernels.route`.
    Returns:
        ``[*, C]`` in ``pre``'s dtype. The values are PyTorch's (the same GELU in fp32, rounded once;
        the same cuBLAS product); ``dpre`` rounds ``g`` and the product once each, where PyTorch
        rounds ``dy @ weight`` and the product (docs/kernels.md gives the errors against float64).
    Raises:
        ValueError: shapes that do not chain, or a device mismatch; TypeError: mixed dtypes.
    FLOPs: :func:`flopkit.formulas.linear` ``(N, H, C)``, ``N`` the product of ``pre``'s leading
    dimensions.
    """
    _check(pre, weight, bias)
    path = route(backend, pre, "gelu_linear")
    if path is REFERENCE:
        return gelu_linear_ref(pre, weight, bias)
    op = (_MLP_OPS if path is Route.KERNEL and _MLP_OPS else _ops()).GELU_LINEAR
    return (op.eager if path is Route.KERNEL else op.via_op)(pre, weight, bias)[0]


_MLP_OPS = None  # kernels/_mlp_ops.py once imported (it imports triton)


def _ops():
    """The op specs (``kernels/_mlp_ops.py``), registered on first use (as ``sdpa._ops``: the eager
    path reads ``_MLP_OPS`` first; the custom-op route, which torch.compile traces, calls this)."""
    global _MLP_OPS
    from . import _mlp_ops

    _MLP_OPS = _mlp_ops
    return _mlp_ops
