"""ViT5Attention: fused QKV, QK-norm before register-aware 2D RoPE, SDPA (docs/vit5.md).

Checkpoint-compatible with nvSubquadratic's ``ViT5Attention``: state-dict keys ``qkv.weight``,
``proj.weight``, ``q_norm.weight``, ``k_norm.weight`` (+ biases when enabled).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from flopkit import formulas, kernels

from ._checks import check_finite, check_positive_int, check_setting, setting_allows
from ._flops import CompositeFlops
from .norms import HeadNorm, PerHeadRMSNorm, RMSNorm
from .rope import ROPE_PAIRINGS, ROPE_TABLES, apply_rope, build_rope_tables, token_layout

__all__ = ["ViT5Attention", "QK_NORMS", "build_qk_norm"]

QK_NORMS = (None, "rmsnorm", "headnorm")
"""The named q/k norms :func:`build_qk_norm` builds (besides a callable)."""


def build_qk_norm(
    qk_norm: str | Callable[[int], nn.Module] | None,
    num_heads: int,
    head_dim: int,
    cast_before_weight: bool = False,
) -> nn.Module | None:
    """The q/k norm module: ``"rmsnorm"`` -> ``RMSNorm(D, eps=1e-6)`` (one weight shared by all heads,
    as upstream; ``cast_before_weight`` as the official ViT-5), ``"headnorm"`` ->
    ``HeadNorm(H, D, mode="rms", eps=1e-6)``, a callable ``head_dim -> nn.Module``, or None."""
    if qk_norm is None:
        return None
    if qk_norm == "rmsnorm":
        return RMSNorm(head_dim, eps=1e-6, cast_before_weight=cast_before_weight)
    if qk_norm == "headnorm":
        return HeadNorm(num_heads, head_dim, mode="rms", eps=1e-6)
    if callable(qk_norm):
        module = qk_norm(head_dim)
        if not isinstance(module, nn.Module):
            raise ValueError(f"qk_norm callable must return an nn.Module, got {type(module).__name__}")
        return module
    raise ValueError(
        f"qk_norm must be None, 'rmsnorm', 'headnorm' or a callable head_dim -> nn.Module, got {qk_norm!r}"
    )


class ViT5Attention(CompositeFlops, nn.Module):
    """ViT-5 multi-head self-attention with QK-norm and register-aware 2D RoPE.

    Input and output ``[B, T, C]`` with ``T = h*w + has_cls + R`` tokens in the order
    ``[patches (row-major), CLS?, registers]`` (``[CLS, patches, registers]`` with ``cls_first``). Pipeline: ``qkv = Linear(C, 3C)`` viewed
    ``[B, T, 3, H, D]`` -> q_norm/k_norm -> RoPE (``rope_cos``/``rope_sin``, ``[T, D]``) ->
    ``F.scaled_dot_product_attention`` -> merge heads -> ``proj`` -> ``proj_drop``.

    FLOPs: ``8*T*C^2 + 4*T^2*C + 4*T*C`` + QK-norm (``3*T*H*D`` each for q and k; upstream's
    one-head count with ``convention="nvsubquadratic"``).
    """

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        num_patches_h: int,
        num_patches_w: int,
        num_registers: int = 4,
        has_cls: bool = True,
        qk_norm: str | Callable[[int], nn.Module] | None = None,
        rope_base: float = 10000.0,
        reg_rope_base: float = 100.0,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
        qkv_bias: bool = False,
        out_proj_bias: bool = False,
        scale: float | None = None,
        init_fn_qkv_proj: Callable[[torch.Tensor], None] | None = None,
        init_fn_out_proj: Callable[[torch.Tensor], None] | None = None,
        rope_pairing: str = "split_half",
        use_triton: bool = True,
        cls_first: bool = False,
        rope_tables: str = "flopkit",
        norm_cast_before_weight: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int("hidden_dim", hidden_dim)
        check_positive_int("num_heads", num_heads)
        if hidden_dim % num_heads:
            raise ValueError(
                f"hidden_dim must be divisible by num_heads: hidden_dim={hidden_dim}, num_heads={num_heads} "
                f"(hidden_dim % num_heads = {hidden_dim % num_heads}, expected 0)"
            )
        head_dim = hidden_dim // num_heads
        if head_dim % 4:
            raise ValueError(
                f"head_dim = hidden_dim / num_heads = {head_dim} must be divisible by 4 for 2D RoPE "
                f"(hidden_dim={hidden_dim}, num_heads={num_heads})"
            )
        if rope_pairing not in ROPE_PAIRINGS:
            raise ValueError(f"rope_pairing must be one of {ROPE_PAIRINGS}, got {rope_pairing!r}")
        if rope_tables not in ROPE_TABLES:
            raise ValueError(f"rope_tables must be one of {ROPE_TABLES}, got {rope_tables!r}")
        for name, p in (("attn_dropout", attn_dropout), ("proj_dropout", proj_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        for name, base in (("rope_base", rope_base), ("reg_rope_base", reg_rope_base)):
            if not base > 0:
                raise ValueError(f"{name} must be positive, got {base}")
        self.layout = token_layout(num_patches_h, num_patches_w, has_cls, num_registers, cls_first)

        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.num_patches_h = num_patches_h
        self.num_patches_w = num_patches_w
        self.num_registers = num_registers
        self.has_cls = bool(has_cls)
        self.num_tokens = self.layout.num_tokens
        self.rope_base = float(rope_base)
        self.reg_rope_base = float(reg_rope_base)
        self.rope_pairing = rope_pairing
        self.rope_tables = rope_tables
        self.norm_cast_before_weight = bool(norm_cast_before_weight)
        self.attn_dropout = attn_dropout
        if scale is not None:
            check_finite("scale", scale, positive=True)
        self.scale = head_dim**-0.5 if scale is None else float(scale)
        self.use_triton = use_triton
        self.triton_attention: bool | str = True
        """Where flopkit's attention kernels (``kernels.attention``) replace SDPA, for inputs they
        take (:func:`flopkit.kernels.attention_supported`) on the Triton path: True (the default)
        in eager CUDA code and under ``torch.compile``; ``"eager"`` in eager CUDA code only, SDPA
        under ``torch.compile``; False never (docs/kernels.md gives the measurements)."""
        self.fused_qk_attention: bool | str = True
        """Where the attention kernels run and the q/k norms fit the fused QK-norm + RoPE kernel, one
        op (``kernels.qk_norm_rope_attention``) may run both: its backward writes dq, dk and dv into
        one buffer and turns dq and dk into the gradient of ``qkv`` in place, where the two ops
        (``kernels.qk_norm_rope`` and ``kernels.attention``) copy dv over. True (the default): in
        eager CUDA code and under ``torch.compile``; ``"eager"``: in eager CUDA code, the two ops
        under ``torch.compile``; False: never, the two ops (docs/kernels.md gives the measurements)."""

        self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim, bias=qkv_bias)
        self.proj = nn.Linear(hidden_dim, hidden_dim, bias=out_proj_bias)
        self.proj_drop = nn.Dropout(proj_dropout) if proj_dropout > 0 else nn.Identity()
        self.qk_norm_kind = qk_norm if isinstance(qk_norm, str) or qk_norm is None else "custom"
        self.qk_norm = qk_norm is not None
        if self.qk_norm:
            self.q_norm = build_qk_norm(qk_norm, num_heads, head_dim, self.norm_cast_before_weight)
            self.k_norm = build_qk_norm(qk_norm, num_heads, head_dim, self.norm_cast_before_weight)
        for layer, init_fn in ((self.qkv, init_fn_qkv_proj), (self.proj, init_fn_out_proj)):
            if init_fn is not None:
                init_fn(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

        cos, sin = build_rope_tables(
            self.layout, head_dim, self.rope_base, self.reg_rope_base, tables=rope_tables
        )
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    # ------------------------------------------------------------------ forward
    def _fused_weights(
        self, any_cast_order: bool = False
    ) -> tuple[bool, torch.Tensor | None, torch.Tensor | None, float] | None:
        """``(norm, q_weight, k_weight, eps)`` when the q/k norms fit the fused kernel, else None.

        ``any_cast_order``: the input is float32, where ``cast_before_weight`` changes nothing."""
        if not self.qk_norm:
            return False, None, None, 1e-6
        q, k = self.q_norm, self.k_norm
        if type(q) is not type(k):
            return None
        if isinstance(q, RMSNorm) and q.normalized_shape == (self.head_dim,):
            if (q.cast_before_weight or k.cast_before_weight) and not any_cast_order:
                return None  # the fused kernel applies the weight before the cast
            eps = q.eps
        elif isinstance(q, PerHeadRMSNorm):
            q, k, eps = q.norm, k.norm, q.eps
        elif isinstance(q, HeadNorm) and q.mode == "rms" and q.bias is None and k.bias is None:
            eps = q.eps
        else:
            return None
        if eps is None or eps != k.eps:
            return None
        return True, q.weight, k.weight, eps

    def _fused_route(self, x: torch.Tensor) -> kernels.Route | None:
        """Where the fused QK-norm + RoPE of ``x`` (the ``[B, T, 3C]`` qkv) runs, decided once
        (:func:`flopkit.kernels.route`) and handed to the op; None for the modules' path."""
        if not self.use_triton or x.dtype not in kernels.SUPPORTED_DTYPES:
            return None
        path = kernels.route("auto", x, "ViT5Attention")
        return None if path is kernels.Route.REFERENCE else path

    def _mode_allows(self, name: str, path: kernels.Route | None) -> bool:
        """Whether the setting ``name`` (True, False or ``"eager"``) allows this call's ``path``:
        True always, ``"eager"`` on the eager kernel route and in a memory replay of an eager CUDA
        step (its meta tensors take the custom ops), False never."""
        mode = getattr(self, name)
        check_setting(name, mode)
        return setting_allows(mode, path)

    def _attention_kernels(self, path: kernels.Route | None) -> bool:
        """Whether this call may run flopkit's attention kernels (:attr:`triton_attention`): on the
        Triton path, never while ops are recorded (counters and traces see SDPA)."""
        allowed = self._mode_allows("triton_attention", path)
        return allowed and path is not None and not kernels.ops_observed()

    def _one_op(self, path: kernels.Route, qkv: torch.Tensor, H: int) -> bool:
        """Whether QK-norm + RoPE and the attention kernels run as one op (:attr:`fused_qk_attention`)."""
        return self._mode_allows("fused_qk_attention", path) and kernels.qk_norm_rope_attention_supported(
            qkv, H
        )

    def _rope_args(self, qkv: torch.Tensor, H: int, fused: tuple) -> tuple:
        """The fused QK-norm + RoPE's positional arguments (``kernels.qk_norm_rope`` and
        ``kernels.qk_norm_rope_attention``) from ``fused`` (:meth:`_fused_weights`)."""
        _, q_weight, k_weight, eps = fused
        return qkv, self.rope_cos, self.rope_sin, H, q_weight, k_weight, eps, self.rope_pairing

    def _heads(
        self, qkv: torch.Tensor, H: int, path: kernels.Route | None, fused: tuple | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v ``[B, H, T, D]`` of ``qkv`` ``[B, T, 3*H*D]``, q and k normalised and rotated: by
        the fused kernel (``fused``, from :meth:`_fused_weights`) or by the modules."""
        if fused is not None:
            return kernels.qk_norm_rope(*self._rope_args(qkv, H, fused), norm=fused[0], backend=path)
        B, T, _ = qkv.shape
        q, k, v = qkv.view(B, T, 3, H, self.head_dim).unbind(2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = self.rope_cos[:, None, :], self.rope_sin[:, None, :]
        q = apply_rope(q, cos, sin, self.rope_pairing).transpose(1, 2)
        k = apply_rope(k, cos, sin, self.rope_pairing).transpose(1, 2)
        return q, k, v.transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, T, C]`` with ``T = h*w + has_cls + R`` -> ``[B, T, C]``."""
        if x.dim() != 3 or x.shape[1] != self.num_tokens or x.shape[2] != self.hidden_dim:
            raise ValueError(
                f"ViT5Attention expects x of shape [B, T, C] with T = {self.num_tokens} "
                f"(h*w + cls + R = {self.layout.describe()}) and C = {self.hidden_dim}, got {tuple(x.shape)}"
            )
        B, T, C = x.shape
        D = self.head_dim
        qkv = self.qkv(x)
        # The heads this rank computes: all of them, or its share when tensor parallelism splits qkv
        # by heads (flopkit.parallel: q, k and v each split, the local qkv [B, T, 3 * H_local * D]).
        H = qkv.shape[-1] // (3 * D)
        # In float32 both cast orders agree, so the fused kernel stays valid for them.
        path = self._fused_route(qkv)
        fused = self._fused_weights(qkv.dtype == torch.float32) if path is not None else None
        dropout = self.attn_dropout if self.training else 0.0
        kernel_attention = not dropout and self._attention_kernels(path)
        if fused is not None and kernel_attention and self._one_op(path, qkv, H):
            rope = self._rope_args(qkv, H, fused)
            out = kernels.qk_norm_rope_attention(*rope, norm=fused[0], scale=self.scale, backend=path)
        else:
            q, k, v = self._heads(qkv, H, path, fused)
            if kernel_attention and kernels.attention_supported(q, k, v):
                out = kernels.attention(q, k, v, self.scale, backend=path)
            else:
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scale)
        out = out.transpose(1, 2).reshape(B, T, H * D)
        return self.proj_drop(self.proj(out))

    # ------------------------------------------------------------------ FLOPs
    def default_flop_tokens(self) -> int:
        return self.num_tokens

    def flop_children(self, num_tokens: int, convention: str) -> list[tuple[str, nn.Module, int]]:
        children: list[tuple[str, nn.Module, int]] = [("qkv", self.qkv, num_tokens)]
        if self.qk_norm:
            rows = _qk_norm_rows(self.q_norm, num_tokens, self.num_heads, convention)
            children += [("q_norm", self.q_norm, rows), ("k_norm", self.k_norm, rows)]
        children.append(("proj", self.proj, num_tokens))
        return children

    def flop_self(self, num_tokens: int, convention: str) -> dict[str, int]:
        """RoPE on q and k and SDPA; the projections and q/k norms are children."""
        H, D = self.num_heads, self.head_dim
        out = formulas.empty_breakdown()
        out["rope"] = formulas.rope(num_tokens, H, D)
        out["attention"] = formulas.sdpa(1, H, num_tokens, num_tokens, D)
        return out

    def extra_repr(self) -> str:
        return (
            f"hidden_dim={self.hidden_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"grid={self.num_patches_h}x{self.num_patches_w}, has_cls={self.has_cls}, "
            f"num_registers={self.num_registers}, num_tokens={self.num_tokens}, qk_norm={self.qk_norm_kind}, "
            f"rope_base={self.rope_base:g}, reg_rope_base={self.reg_rope_base:g}, "
            f"rope_pairing={self.rope_pairing}, scale={self.scale:.6g}"
            + (", cls_first=True" if self.layout.cls_first else "")
            + (f", rope_tables={self.rope_tables}" if self.rope_tables != "flopkit" else "")
            + (", qkv_bias=True" if self.qkv.bias is not None else "")
            + (", out_proj_bias=True" if self.proj.bias is not None else "")
            + (", norm_cast_before_weight=True" if self.norm_cast_before_weight else "")
        )


def _qk_norm_rows(norm: nn.Module, num_tokens: int, num_heads: int, convention: str) -> int:
    """Rows a q/k norm is counted over: ``T`` for per-head modules (they cover all heads), else
    :func:`flopkit.formulas.qk_norm_rows` (a norm over ``D``: every head, or one under upstream's
    convention)."""
    if isinstance(norm, (PerHeadRMSNorm, HeadNorm)):
        return num_tokens
    return formulas.qk_norm_rows(num_tokens, num_heads, convention)
