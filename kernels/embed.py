"""``embed_tokens``: a ViT's token sequence from its patch embedding, position embedding, CLS and
register tokens, with a Triton path for eager CUDA code and its PyTorch reference.

``ViT5`` builds its tokens ``[patches + pos, CLS?, registers]`` (or CLS first) with it. In eager
PyTorch that is a broadcast add TensorIterator does not vectorise and a ``torch.cat`` with expanded
CLS and register tokens (0.06 and 0.11 ms of a vit5-base step at batch 128 on an H100,
``benchmarks/results/step_kernels_h100.md``, run ``timeline_2026-12-07``), and a backward of a
strided copy of the patch rows' gradient and three batch sums. The Triton path is one kernel each
way (``_embed_triton.py``). Compiled code, dispatch modes (FLOP counters, FakeTensor, a memory
replay), meta and CPU tensors run the reference, which Inductor fuses (one kernel forward and
three backward in the compiled vit5-base step of that run).
"""

from __future__ import annotations

import torch

from ._dispatch import eager_kernel

__all__ = ["embed_tokens", "embed_tokens_ref"]

Tensor = torch.Tensor


def embed_tokens_ref(
    patches: Tensor,
    pos: Tensor | None = None,
    cls: Tensor | None = None,
    reg: Tensor | None = None,
    cls_first: bool = False,
) -> Tensor:
    """The reference: ``patches + pos`` then ``torch.cat`` with the expanded CLS and register tokens."""
    x = patches if pos is None else patches + pos
    B = x.shape[0]
    parts = [x, *(t.expand(B, -1, -1) for t in (cls, reg) if t is not None)]
    if cls_first and cls is not None:
        parts[0], parts[1] = parts[1], parts[0]
    return torch.cat(parts, dim=1) if len(parts) > 1 else x


class _EmbedTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, patches, pos, cls, reg, cls_first, dtype):
        from ._embed_triton import embed_tokens_forward

        # The kernels take pos [N, C], cls [C] and reg [R, C]: views of the [1, *, C] parameters.
        pos_, cls_, reg_ = (pos[0] if pos is not None else None, cls[0, 0] if cls is not None else None,
                            reg[0] if reg is not None else None)  # fmt: skip
        ctx.cfg = (patches.dtype, patches.shape[1], cls_first)
        ctx.specs = tuple((t.shape, t.dtype) if t is not None else None for t in (pos, cls, reg))
        return embed_tokens_forward(patches, pos_, cls_, reg_, cls_first, dtype)

    @staticmethod
    def backward(ctx, grad):
        from ._embed_triton import embed_tokens_backward

        patches_dtype, N, cls_first = ctx.cfg
        return (*embed_tokens_backward(grad, patches_dtype, N, ctx.specs, cls_first), None, None)


def _check(name: str, t: Tensor | None, shape: tuple[int, ...], patches: Tensor) -> None:
    if t is None:
        return
    if tuple(t.shape) != shape:
        raise ValueError(f"embed_tokens: {name} must have shape {shape}, got {tuple(t.shape)}")
    if t.device != patches.device:
        raise ValueError(f"embed_tokens: {name} is on {t.device}, patches on {patches.device}")


def embed_tokens(
    patches: Tensor,
    pos: Tensor | None = None,
    cls: Tensor | None = None,
    reg: Tensor | None = None,
    cls_first: bool = False,
    *,
    backend: str = "auto",
) -> Tensor:
    """A ViT's tokens ``[B, T, C]`` from ``patches`` ``[B, N, C]`` (the patch embedding), ``pos``
    ``[1, N, C]`` (added to the patches), ``cls`` ``[1, 1, C]`` and ``reg`` ``[1, R, C]`` (the CLS and
    register tokens, the same for every image): ``[patches + pos, cls, reg]`` along the tokens,
    ``[cls, patches + pos, reg]`` with ``cls_first``; ``T = N + (cls given) + R``. Each of ``pos``,
    ``cls`` and ``reg`` may be None.

    Returns a contiguous tensor in the promoted dtype of the inputs (PyTorch's ``patches + pos``
    and ``torch.cat``), equal to :func:`embed_tokens_ref`. Gradients flow to every input; the batch
    sums of ``pos``'s, ``cls``'s and ``reg``'s are accumulated in fp32 on the Triton path.

    ``backend``: ``"auto"`` runs the Triton kernels on CUDA tensors in eager code and the reference
    elsewhere (compiled code, dispatch modes, CPU, meta); ``"triton"`` forces the kernels (CPU
    tensors only under ``TRITON_INTERPRET=1``; not while ``torch.compile`` traces); ``"torch"`` the
    reference. float64 runs the reference. FLOPs: the position add, ``B * N * C``
    (:func:`flopkit.formulas.position_add`), which measured counts leave out as any ``aten.add``.
    """
    if patches.dim() != 3:
        raise ValueError(f"embed_tokens: patches must be [B, N, C], got shape {tuple(patches.shape)}")
    _, N, C = patches.shape
    _check("pos", pos, (1, N, C), patches)
    _check("cls", cls, (1, 1, C), patches)
    if reg is not None:
        if reg.dim() != 3 or reg.shape[0] != 1 or reg.shape[2] != C:
            raise ValueError(f"embed_tokens: reg must have shape (1, R, {C}), got {tuple(reg.shape)}")
        _check("reg", reg, tuple(reg.shape), patches)
    given = [
        (n, t) for n, t in (("patches", patches), ("pos", pos), ("cls", cls), ("reg", reg)) if t is not None
    ]
    if not eager_kernel(backend, "embed_tokens", given):
        return embed_tokens_ref(patches, pos, cls, reg, cls_first)
    dtype = patches.dtype
    for _, t in given[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return _EmbedTokens.apply(patches, pos, cls, reg, cls_first, dtype)
