"""Norm modules: RMSNorm (drop-in for torch.nn.RMSNorm), PerHeadRMSNorm (QK-norm), HeadNorm.

Each dispatches to ``flopkit.kernels`` (Triton on CUDA, the PyTorch reference elsewhere or with
``use_triton=False``) and counts its own FLOPs (docs/conventions.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from flopkit import formulas, kernels

from ._checks import check_eps, check_positive_int
from ._flops import FlopCounted

__all__ = ["RMSNorm", "PerHeadRMSNorm", "HeadNorm"]


class RMSNorm(FlopCounted, nn.Module):
    """RMSNorm over the trailing ``normalized_shape`` dims; a drop-in for ``torch.nn.RMSNorm``.

    ``y = (x_f32 * rsqrt(mean(x_f32**2) + eps) * w_f32).to(x.dtype)``, input ``[*, *normalized_shape]``.
    With ``cast_before_weight=True`` (the official ViT-5's order) the normalised value is cast to
    ``x.dtype`` first and then multiplied by the weight: ``y = (x_f32 * rsqrt(...)).to(x.dtype) * w``;
    the two orders agree exactly on float32 inputs.
    State dict: ``weight`` (``normalized_shape``, ones at init) when ``elementwise_affine``.
    FLOPs: ``3 * T * n`` on ``T`` rows of ``n = prod(normalized_shape)`` elements.
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None = 1e-6,
        elementwise_affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        use_triton: bool = True,
        cast_before_weight: bool = False,
    ) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if not shape:
            raise ValueError("normalized_shape must name at least one dimension, got ()")
        for size in shape:
            check_positive_int("normalized_shape entries", size)
        check_eps("eps", eps, allow_none=True)
        self.normalized_shape = shape
        # torch.nn.RMSNorm takes eps=None as "machine epsilon of the input dtype"; keep that.
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.use_triton = use_triton
        self.cast_before_weight = bool(cast_before_weight)
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)

    @property
    def num_features(self) -> int:
        """``n = prod(normalized_shape)``, the elements normalised together."""
        return math.prod(self.normalized_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[*, *normalized_shape]`` -> same shape and dtype."""
        k = len(self.normalized_shape)
        if tuple(x.shape[-k:]) != self.normalized_shape:
            raise ValueError(
                f"RMSNorm: input must end in normalized_shape={self.normalized_shape}, got {tuple(x.shape)}"
            )
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        flat = x.flatten(-k) if k > 1 else x
        w = self.weight.flatten() if (self.weight is not None and k > 1) else self.weight
        late = self._weight_after_cast(x.dtype)
        y = kernels.rms_norm(flat, None if late else w, eps, backend="auto" if self.use_triton else "torch")
        if late:
            y = (y * w).to(x.dtype)
        return y.view(x.shape) if k > 1 else y

    def _weight_after_cast(self, dtype: torch.dtype) -> bool:
        """True when the weight must be applied after the cast (it differs only below float32)."""
        return self.cast_before_weight and self.weight is not None and dtype != torch.float32

    def forward_residual(
        self, x: torch.Tensor, residual: torch.Tensor, scale: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused pre-norm residual step: ``h = residual + x`` (``residual + x * scale`` with a
        LayerScale ``scale`` ``(n,)``); returns ``(self(h), h)``.

        One pass over memory on the Triton path, LayerScale included. ``h`` takes the dtype PyTorch
        gives ``residual + x * scale``. FLOPs are those of :meth:`forward` (residual adds are not
        counted; the scale's are its LayerScale module's).
        """
        if len(self.normalized_shape) != 1:
            h = residual + (x if scale is None else x * scale)
            return self(h), h
        dtype = kernels.residual_dtype(x, residual, scale)
        eps = torch.finfo(dtype).eps if self.eps is None else self.eps
        late = self._weight_after_cast(dtype)
        y, h = kernels.rms_norm_residual(
            x,
            residual,
            None if late else self.weight,
            eps,
            scale=scale,
            backend="auto" if self.use_triton else "torch",
        )
        return ((y * self.weight).to(y.dtype) if late else y), h

    def flop_self(self, num_tokens: int, convention: str) -> dict[str, int]:
        """``norm``: :func:`flopkit.formulas.rms_norm` on ``num_tokens`` rows of ``n`` elements."""
        return formulas.empty_breakdown() | {"norm": formulas.rms_norm(num_tokens, self.num_features)}

    def extra_repr(self) -> str:
        order = ", cast_before_weight=True" if self.cast_before_weight else ""
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}{order}"


class PerHeadRMSNorm(FlopCounted, nn.Module):
    """QK-norm: RMSNorm over each head's ``D`` slice with one shared ``(D,)`` weight.

    Input ``[*, H*D]`` or ``[*, H, D]``; output has the input's shape. State dict:
    ``norm.weight`` ``(D,)`` (as upstream). FLOPs: ``3 * T * H * D``.
    """

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-6, use_triton: bool = True) -> None:
        super().__init__()
        check_positive_int("num_heads", num_heads)
        check_positive_int("head_dim", head_dim)
        check_eps("eps", eps)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.use_triton = use_triton
        self.norm = RMSNorm(head_dim, eps=eps, use_triton=use_triton)

    @property
    def eps(self) -> float:
        return self.norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[*, H*D]`` or ``[*, H, D]`` -> same shape and dtype."""
        return kernels.per_head_rms_norm(
            x,
            self.norm.weight,
            self.num_heads,
            self.norm.eps,
            head_dim=self.head_dim,
            backend="auto" if self.use_triton else "torch",
        )

    def flop_self(self, num_tokens: int, convention: str) -> dict[str, int]:
        """``norm``: :func:`flopkit.formulas.per_head_rms_norm` on ``num_tokens`` tokens of ``H*D``."""
        return formulas.empty_breakdown() | {
            "norm": formulas.per_head_rms_norm(num_tokens, self.num_heads, self.head_dim)
        }

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, eps={self.norm.eps}"


class HeadNorm(FlopCounted, nn.Module):
    """Per-head RMSNorm or LayerNorm with an ``(H, D)`` weight and optional ``(H, D)`` bias.

    ExLlamaV2-style: ``load_weight`` takes a ``(D,)`` weight (repeated over heads) or ``(H, D)``,
    adding ``weight_offset`` once at load (Gemma-style ``1 + w``). Input ``[*, H*D]`` or ``[*, H, D]``.
    FLOPs: rms ``3 * T*H*D``, layer ``5 * T*H*D``, ``+ T*H*D`` with bias.
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        mode: str = "rms",
        eps: float = 1e-5,
        bias: bool = False,
        weight_offset: float = 0.0,
        use_triton: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("num_heads", num_heads)
        check_positive_int("head_dim", head_dim)
        if mode not in formulas.NORM_MODES:
            raise ValueError(f"mode must be one of {formulas.NORM_MODES}, got {mode!r}")
        check_eps("eps", eps)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.mode = mode
        self.eps = eps
        self.weight_offset = weight_offset
        self.use_triton = use_triton
        self.weight = nn.Parameter(torch.ones(num_heads, head_dim, device=device, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.zeros(num_heads, head_dim, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def _expand(self, t: torch.Tensor, name: str) -> torch.Tensor:
        shape = (self.num_heads, self.head_dim)
        if tuple(t.shape) == (self.head_dim,):
            return t.unsqueeze(0).expand(shape)
        if tuple(t.shape) == shape:
            return t
        raise ValueError(f"{name} must have shape ({self.head_dim},) or {shape}, got {tuple(t.shape)}")

    @torch.no_grad()
    def load_weight(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Load ``weight`` ``(D,)`` or ``(H, D)`` (+ ``weight_offset``) and optional ``bias`` likewise.

        A ``bias`` given to a module built with ``bias=False`` adds the bias parameter.
        """
        w = self._expand(weight, "weight")
        self.weight.copy_(w.to(self.weight.dtype) + self.weight_offset)
        if bias is not None:
            b = self._expand(bias, "bias")
            if self.bias is None:
                self.bias = nn.Parameter(torch.empty_like(self.weight))
            self.bias.copy_(b.to(self.bias.dtype))

    @classmethod
    def from_safetensors(
        cls, path: str, key: str, num_heads: int, head_dim: int, **kwargs: object
    ) -> HeadNorm:
        """Build from ``{key}.weight`` (and ``{key}.bias`` if present) in the safetensors file ``path``."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            if f"{key}.weight" not in names:
                raise KeyError(f"{path}: no tensor {key}.weight (found {sorted(names)[:8]})")
            weight = f.get_tensor(f"{key}.weight")
            bias = f.get_tensor(f"{key}.bias") if f"{key}.bias" in names else None
        kwargs.setdefault("bias", bias is not None)
        kwargs.setdefault("dtype", weight.dtype)
        module = cls(num_heads, head_dim, **kwargs)
        module.load_weight(weight, bias)
        return module

    def _run(
        self, x: torch.Tensor, backend: str, intermediates: bool
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        y = kernels.head_norm(x, self.weight, self.bias, self.eps, self.mode, backend=backend)
        return {"hidden_states": y} if intermediates else y

    def forward(self, x: torch.Tensor, intermediates: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """``x``: ``[*, H*D]`` or ``[*, H, D]`` -> same shape; a dict ``{"hidden_states": y}`` if asked."""
        return self._run(x, "auto" if self.use_triton else "torch", intermediates)

    def forward_torch(
        self, x: torch.Tensor, intermediates: bool = False
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """The PyTorch reference path, same contract as :meth:`forward`."""
        return self._run(x, "torch", intermediates)

    def flop_self(self, num_tokens: int, convention: str) -> dict[str, int]:
        """``norm``: :func:`flopkit.formulas.head_norm` (``(3 | 5) * T*H*D``, ``+ T*H*D`` with bias)."""
        norm = formulas.head_norm(num_tokens, self.num_heads, self.head_dim, self.mode, self.bias is not None)
        return formulas.empty_breakdown() | {"norm": norm}

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, head_dim={self.head_dim}, mode={self.mode!r}, eps={self.eps}, "
            f"bias={self.bias is not None}, weight_offset={self.weight_offset}"
        )
