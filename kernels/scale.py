"""``scale_rows``: a matrix times a per-row scale, ``weight * scale[:, None]``, with a Triton path
for eager CUDA code and its PyTorch reference.

``ViT5Block`` folds its MLP's LayerScale into ``fc2``'s weight with it (``ScalableLinear``): the
product is weight-sized where the unfolded scale is token-sized. In eager PyTorch that product is a
broadcast multiply TensorIterator does not vectorise (about 9 µs for a 768 x 3072 bf16 weight on an
H100), and its backward three kernels: ``g * scale``, ``g * weight`` and the row sum. The Triton
path is one kernel each way (``_scale_triton.py``). Compiled code, dispatch modes (FLOP counters,
FakeTensor, a memory replay), meta and CPU tensors run the reference: Inductor fuses it into its own
kernels, and a counter sees ``aten.mul`` as for any product.
"""

from __future__ import annotations

import torch

from ._dispatch import eager_kernel

__all__ = ["scale_rows", "scale_rows_ref"]


def scale_rows_ref(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``weight * scale[:, None]`` in PyTorch (autograd as for any product)."""
    return weight * scale.unsqueeze(1)


class _ScaleRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        from ._scale_triton import scale_rows_forward

        ctx.save_for_backward(weight, scale)
        return scale_rows_forward(weight, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        from ._scale_triton import scale_rows_backward

        weight, scale = ctx.saved_tensors
        dw, ds = scale_rows_backward(grad, weight, scale)
        return (dw if ctx.needs_input_grad[0] else None), (ds if ctx.needs_input_grad[1] else None)


def scale_rows(weight: torch.Tensor, scale: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``weight * scale[:, None]`` for ``weight`` ``[R, K]`` and ``scale`` ``(R,)``.

    Returns ``[R, K]`` in ``torch.promote_types(weight.dtype, scale.dtype)``, equal to the
    reference's forward (each product in fp32, rounded once). Gradients flow to both inputs; the
    Triton backward rounds each once from fp32 (``dweight = g * scale``, ``dscale`` summed over the
    row in fp32) where the reference rounds the products to the output's dtype first.

    ``backend``: ``"auto"`` runs the Triton kernels on CUDA tensors in eager code and the reference
    elsewhere (compiled code, dispatch modes, CPU, meta); ``"triton"`` forces the kernels (CPU
    tensors only under ``TRITON_INTERPRET=1``; not while ``torch.compile`` traces); ``"torch"`` the
    reference. float64 runs the reference. FLOPs: ``R * K`` multiplies, which flopkit's convention
    leaves out as it does every plain product (docs/conventions.md).
    """
    if weight.dim() != 2:
        raise ValueError(f"scale_rows: weight must be [R, K], got shape {tuple(weight.shape)}")
    if tuple(scale.shape) != (weight.shape[0],):
        raise ValueError(
            f"scale_rows: scale must have shape ({weight.shape[0]},) to match weight.shape[0], "
            f"got {tuple(scale.shape)}"
        )
    if weight.device != scale.device:
        raise ValueError(f"scale_rows: weight is on {weight.device}, scale on {scale.device}")
    if not eager_kernel(backend, "scale_rows", [("weight", weight), ("scale", scale)]):
        return scale_rows_ref(weight, scale)
    return _ScaleRows.apply(weight, scale)
