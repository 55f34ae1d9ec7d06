"""The ViT-5 classifier and its parts: PatchEmbed, Mlp, LayerScale, ViT5Block, ViT5, presets.

Token layout ``[patches, CLS?, registers]``; pre-norm blocks ``x + LS(attn(RMSNorm(x)))``,
``x + LS(mlp(RMSNorm(x)))``; final RMSNorm on the readout (the CLS token, or the patches,
mean-pooled, without CLS); bias-free linear head. No biases anywhere, as nvSubquadratic.

The official ViT-5 (``models_vit5.py``) is the same network with options: CLS first
(``cls_first``), biases on the patch conv, ``proj``, the MLP and the head, its float32 RoPE tables
(``rope_tables="official"``, interleaved pairing) and its norm cast order
(``norm_cast_before_weight``): the ``*-official`` presets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flopkit import formulas, kernels

from ._checks import check_finite, check_positive_int, check_setting, is_int, setting_allows
from ._flops import CompositeFlops, FlopCounted
from .attention import ViT5Attention
from .norms import RMSNorm
from .vit5_config import OFFICIAL_LAYOUT, PRESETS, ViT5Config

__all__ = [
    "PatchConv",
    "PatchEmbed",
    "ScalableLinear",
    "Mlp",
    "LayerScale",
    "ViT5Block",
    "ViT5",
    "ViT5Config",
    "PRESETS",
    "OFFICIAL_LAYOUT",
]


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not is_int(v) or v <= 0 for v in pair):
        raise ValueError(f"{name} must be a positive integer or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


class PatchConv(nn.Conv2d):
    """A ``P x P``, stride-``P`` ``Conv2d`` run as one GEMM over the flattened patches.

    ``[B, C_in, H, W]`` -> ``[B, N, C]`` tokens (``N = (H/P) * (W/P)``, row-major), where
    ``nn.Conv2d`` would return ``[B, C, H/P, W/P]``. Parameters, state dict and FLOPs are the
    convolution's; the weight gradient runs as a GEMM instead of cuDNN's strided-convolution wgrad
    (1.6 ms of a ViT-5-Small training step at batch 256 on an H100, for about 30 GFLOP).
    """

    def __init__(self, in_channels: int, out_channels: int, patch_size: int, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, patch_size, stride=patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, C_in, H, W]`` with ``H``, ``W`` multiples of ``P`` -> ``[B, N, C]``."""
        B, C_in, H, W = x.shape
        P = self.kernel_size[0]
        gh, gw = H // P, W // P
        patches = x.reshape(B, C_in, gh, P, gw, P).permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C_in * P * P)
        return F.linear(patches, self.weight.reshape(self.out_channels, -1), self.bias)


class PatchEmbed(FlopCounted, nn.Module):
    """Non-overlapping patches -> tokens, plus a learnable absolute position embedding over patches.

    ``proj`` is a :class:`PatchConv`: a stride-``P`` ``Conv2d`` (state dict ``proj.weight``
    ``[C, C_in, P, P]``) run as the equivalent GEMM of the flattened patches.

    ``[B, C_in, H, W]`` -> ``[B, N, C]`` with ``N = (H/P) * (W/P)``, patches row-major.
    FLOPs per image: ``2 * C_in * P^2 * C * N`` (matmul) ``+ N * C`` (position add, elementwise)
    ``+ N * C`` with ``bias`` (the conv's bias add, elementwise); ``num_tokens`` is fixed to ``N``. Its input is data (images), so a training step computes no
    input gradient for the conv: its backward is the weight gradient alone, 1x the conv's forward
    (``input_is_data``).
    """

    fixed_flop_tokens = True
    input_is_data = True

    def __init__(
        self,
        image_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        hidden_dim: int = 768,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.image_size = _pair(image_size, "image_size")
        check_positive_int("patch_size", patch_size)
        check_positive_int("in_channels", in_channels)
        check_positive_int("hidden_dim", hidden_dim)
        for side, size in zip(("height", "width"), self.image_size, strict=True):
            if size % patch_size:
                raise ValueError(
                    f"image_size {side} {size} must be divisible by patch_size {patch_size} "
                    f"(nearest valid: {max(patch_size, size - size % patch_size)})"
                )
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.hidden_dim = hidden_dim
        self.grid_size = (self.image_size[0] // patch_size, self.image_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = PatchConv(in_channels, hidden_dim, patch_size, bias=bias)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, hidden_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    tokens_backend: str = "torch"
    """``backend`` of :func:`flopkit.kernels.embed_tokens`: ``"torch"`` (the position add and
    ``torch.cat``) until an H100 step shows its kernels win; ``"auto"`` runs them in eager CUDA code
    (``benchmarks/bench_train.py``'s ``flopkit-eager-kernels`` rows; docs/kernels.md)."""

    def forward(
        self,
        x: torch.Tensor,
        cls_token: torch.Tensor | None = None,
        reg_tokens: torch.Tensor | None = None,
        cls_first: bool = False,
    ) -> torch.Tensor:
        """``x``: ``[B, C_in, H, W]`` -> ``[B, N, C]``; with a ``cls_token`` ``[1, 1, C]`` and/or
        ``reg_tokens`` ``[1, R, C]``, the whole token sequence ``[B, T, C]``: ``[patches, CLS,
        registers]`` (CLS first with ``cls_first``), built by :func:`flopkit.kernels.embed_tokens`
        (the position add and ``torch.cat``; one kernel each way with ``tokens_backend="auto"``)."""
        expected = (self.in_channels, *self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"PatchEmbed expects images [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}"
            )
        tokens = self.proj(x)
        return kernels.embed_tokens(
            tokens, self.pos_embed, cls_token, reg_tokens, cls_first, backend=self.tokens_backend
        )

    def default_flop_tokens(self) -> int:
        return self.num_patches

    def flop_self(self, num_tokens: int, convention: str) -> dict[str, int]:
        """:func:`~flopkit.formulas.patch_conv` (matmul) + :func:`~flopkit.formulas.position_add`
        (+ :func:`~flopkit.formulas.bias_add` with a bias)."""
        c = self.hidden_dim
        out = formulas.empty_breakdown()
        out["matmul"] = formulas.patch_conv(num_tokens, self.in_channels, self.patch_size**2, c)
        out["elementwise"] = formulas.position_add(num_tokens, c)
        if self.proj.bias is not None:
            out["elementwise"] += formulas.bias_add(num_tokens, c)
        return out

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, patch_size={self.patch_size}, in_channels={self.in_channels}, "
            f"hidden_dim={self.hidden_dim}, grid={self.grid_size[0]}x{self.grid_size[1]}"
            + (", bias=True" if self.proj.bias is not None else "")
        )


class LayerScale(FlopCounted, nn.Module):
    """Per-channel scale ``x * gamma`` (``gamma`` ``(C,)``, init ``init_values``). FLOPs: ``T * C``."""

    def __init__(self, dim: int, init_values: float = 1e-4) -> None:
        super().__init__()
        check_finite("init_values", init_values)
        self.dim = dim
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[*, C]`` -> same shape."""
        return x * self.gamma

    def flop_self(self, num_tokens: int, convention: str) -> dict[str, int]:
        """``elementwise``: :func:`flopkit.formulas.layer_scale`, ``T * C``."""
        return formulas.empty_breakdown() | {"elementwise": formulas.layer_scale(num_tokens, self.dim)}

    def extra_repr(self) -> str:
        return f"dim={self.dim}, init_values={self.init_values:g}"


class ScalableLinear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose forward can fold a per-output scale
    into its weight: ``forward(x, scale)`` is ``F.linear(x, W * scale[:, None])``, equal to
    ``linear(x) * scale`` for a bias-free layer, with the scale applied to ``out * in`` weights
    instead of every output element. Called as a module, so hooks (profiler ranges) see it."""

    scale_backend: str = "torch"
    """``backend`` of the fold's :func:`flopkit.kernels.scale_rows`: ``"torch"`` (PyTorch's
    broadcast multiply) until an H100 step shows its kernels win; ``"auto"`` runs them in eager CUDA
    code (``benchmarks/bench_train.py``'s ``flopkit-scale-kernel`` rows; docs/kernels.md)."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``[*, in]`` -> ``[*, out]``; ``scale``: ``(out,)``, only without a bias."""
        return F.linear(x, self.folded_weight(scale), self.bias)

    def folded_weight(self, scale: torch.Tensor | None) -> torch.Tensor:
        """The weight with ``scale`` ``(out,)`` folded in, ``W * scale[:, None]`` (the weight itself
        for None); a scale folds only into a bias-free layer."""
        if scale is None:
            return self.weight
        if self.bias is not None:
            raise ValueError("ScalableLinear: scale folds into the weight only without a bias")
        # kernels.scale_rows: weight * scale[:, None] (one Triton kernel each way with "auto").
        return kernels.scale_rows(self.weight, scale, backend=self.scale_backend)


_HALF = (torch.float16, torch.bfloat16)
_PLAIN = (nn.Parameter, torch.Tensor)


def _hooked(module: nn.Module) -> bool:
    """Whether a forward hook (the module's own or a global one) would see ``module``'s call."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or nn.modules.module._global_forward_hooks
        or nn.modules.module._global_forward_pre_hooks
    )


class Mlp(CompositeFlops, nn.Module):
    """``Linear(C, h) -> GELU -> Linear(h, C)``, bias-free by default. ``[*, C]`` -> ``[*, C]``.

    FLOPs: ``2*T*C*h + T*h + 2*T*h*C`` (the GELU counted as one FLOP per element).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        bias: bool = False,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()
        self.fc2 = ScalableLinear(hidden_features, in_features, bias=bias)
        self.fused_gelu_linear: bool | str = True
        """Where the GELU and ``fc2`` run as one op, :func:`flopkit.kernels.gelu_linear` (GELU's
        derivative stored in the forward, applied in the backward GEMM's epilogue: one pass over
        the ``[*, hidden]`` activation fewer per step, 0.8 ms a vit5-base step on an H100,
        docs/benchmarks.md): True (the default) in eager CUDA code and under ``torch.compile``;
        ``"eager"`` in eager CUDA code only; False never. Either way only on the Triton path
        (float16/bfloat16 CUDA tensors), while gradients are recorded, with an exact ``nn.GELU``,
        no dropout, a plain ``fc2`` weight (not a DTensor) and no hooks on ``act`` or ``fc2`` (a
        profiler's per-module ranges, a parallel style); counters and traces see the modules
        (docs/kernels.md)."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``[*, C]`` -> ``[*, C]``; ``scale`` ``(C,)``: a LayerScale folded into ``fc2``'s
        weight (bias-free ``fc2``, no dropout), the output then being ``mlp(x) * scale``."""
        h = self.fc1(x)
        path = self._fused_route(h)
        if path is not None:
            return self._gelu_fc2(h, scale, path)
        return self.drop(self.fc2(self.drop(self._activation(h)), scale))

    def _fused_route(self, h: torch.Tensor) -> kernels.Route | None:
        """The route of :func:`flopkit.kernels.gelu_linear` for ``h`` (fc1's output), decided once;
        None for the modules' path (see :attr:`fused_gelu_linear`)."""
        mode = self.fused_gelu_linear
        check_setting("fused_gelu_linear", mode)
        act, fc2 = self.act, self.fc2
        if (
            mode is False
            or h.dtype not in _HALF
            or type(act) is not nn.GELU
            or act.approximate != "none"
            or type(self.drop) is not nn.Identity
            or type(fc2.weight) not in _PLAIN
            or not torch.is_grad_enabled()
            or not (h.requires_grad or fc2.weight.requires_grad)
            or _hooked(act)
            or _hooked(fc2)
            or kernels.ops_observed()
        ):
            return None
        path = kernels.route("auto", h, "Mlp")
        if path is kernels.Route.REFERENCE or not setting_allows(mode, path):
            return None
        return path

    def _gelu_fc2(self, h: torch.Tensor, scale: torch.Tensor | None, path: kernels.Route) -> torch.Tensor:
        """``fc2(gelu(h), scale)`` as one op on ``path``; the weight (and bias) cast to ``h``'s dtype
        as autocast would cast them for ``fc2``."""
        weight, bias = self.fc2.folded_weight(scale), self.fc2.bias
        if weight.dtype != h.dtype:
            weight = weight.to(h.dtype)
        if bias is not None and bias.dtype != h.dtype:
            bias = bias.to(h.dtype)
        return kernels.gelu_linear(h, weight, bias, backend=path)

    def _activation(self, h: torch.Tensor) -> torch.Tensor:
        act = self.act
        # Compiled CUDA code runs PyTorch's own GELU kernels, about 7 % faster than Inductor's
        # (flopkit.kernels.activation); the module call stays for eager code and its hooks.
        if type(act) is nn.GELU and torch.compiler.is_compiling():
            return kernels.gelu(h, act.approximate)
        return act(h)

    def flop_children(self, num_tokens: int, convention: str) -> list[tuple[str, nn.Module, int]]:
        # The activation's count is in elements: num_tokens * hidden_features.
        return [
            ("fc1", self.fc1, num_tokens),
            ("act", self.act, num_tokens * self.hidden_features),
            ("fc2", self.fc2, num_tokens),
        ]

    def extra_repr(self) -> str:
        bias = ", bias=True" if self.fc1.bias is not None else ""
        return f"in_features={self.in_features}, hidden_features={self.hidden_features}{bias}"


class ViT5Block(CompositeFlops, nn.Module):
    """Pre-norm transformer block: ``x + LS1(attn(norm1(x)))`` then ``x + LS2(mlp(norm2(x)))``.

    ``[B, T, C]`` -> ``[B, T, C]``. The first residual add, with ``ls1``, runs fused into
    ``norm2``'s ``rms_norm_residual`` op (see :meth:`forward`). FLOPs: attention + MLP + 2 RMSNorms (``3*T*C`` each) + 2 LayerScales
    (``T*C`` each); residual adds are not counted.
    """

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        num_patches_h: int,
        num_patches_w: int,
        num_registers: int = 4,
        has_cls: bool = True,
        mlp_ratio: float = 4.0,
        qk_norm: str | Callable[[int], nn.Module] | None = "rmsnorm",
        layer_scale_init: float | None = 1e-4,
        rope_base: float = 10000.0,
        reg_rope_base: float = 100.0,
        rope_pairing: str = "split_half",
        norm_eps: float = 1e-6,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
        use_triton: bool = True,
        cls_first: bool = False,
        qkv_bias: bool = False,
        proj_bias: bool = False,
        mlp_bias: bool = False,
        rope_tables: str = "flopkit",
        norm_cast_before_weight: bool = False,
    ) -> None:
        super().__init__()
        self.num_tokens = num_patches_h * num_patches_w + int(has_cls) + num_registers
        norm_kw = {"eps": norm_eps, "use_triton": use_triton, "cast_before_weight": norm_cast_before_weight}
        self.norm1 = RMSNorm(hidden_dim, **norm_kw)
        self.attn = ViT5Attention(
            hidden_dim,
            num_heads,
            num_patches_h,
            num_patches_w,
            num_registers=num_registers,
            has_cls=has_cls,
            qk_norm=qk_norm,
            rope_base=rope_base,
            reg_rope_base=reg_rope_base,
            attn_dropout=attn_dropout,
            proj_dropout=proj_dropout,
            rope_pairing=rope_pairing,
            use_triton=use_triton,
            cls_first=cls_first,
            qkv_bias=qkv_bias,
            out_proj_bias=proj_bias,
            rope_tables=rope_tables,
            norm_cast_before_weight=norm_cast_before_weight,
        )
        self.ls1 = LayerScale(hidden_dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.norm2 = RMSNorm(hidden_dim, **norm_kw)
        check_finite("mlp_ratio", mlp_ratio)
        width = hidden_dim * mlp_ratio
        if not math.isfinite(width) or width >= 2**63:
            raise ValueError(
                f"mlp_ratio={mlp_ratio} gives an MLP width of {width:g}, more than a tensor dimension can hold (2^63)"
            )
        hidden = int(width)
        if hidden <= 0:
            raise ValueError(f"mlp_ratio must give a positive MLP width, got mlp_ratio={mlp_ratio}")
        self.mlp = Mlp(hidden_dim, hidden, bias=mlp_bias)
        self.ls2 = LayerScale(hidden_dim, layer_scale_init) if layer_scale_init else nn.Identity()

    @classmethod
    def from_config(cls, config: ViT5Config, num_patches_h: int, num_patches_w: int) -> ViT5Block:
        """One block of the ViT5 that ``config`` describes, on a ``num_patches_h x num_patches_w``
        patch grid."""
        c = config
        return cls(
            c.hidden_dim,
            c.num_heads,
            num_patches_h,
            num_patches_w,
            num_registers=c.num_registers,
            has_cls=c.has_cls,
            mlp_ratio=c.mlp_ratio,
            qk_norm=c.qk_norm,
            layer_scale_init=c.layer_scale_init,
            rope_base=c.rope_base,
            reg_rope_base=c.reg_rope_base,
            rope_pairing=c.rope_pairing,
            norm_eps=c.norm_eps,
            attn_dropout=c.attn_dropout,
            proj_dropout=c.proj_dropout,
            use_triton=c.use_triton,
            cls_first=c.cls_first,
            qkv_bias=c.qkv_bias,
            proj_bias=c.proj_bias,
            mlp_bias=c.mlp_bias,
            rope_tables=c.rope_tables,
            norm_cast_before_weight=c.norm_cast_before_weight,
        )

    def forward(
        self, x: torch.Tensor, branch: torch.Tensor | None = None, *, pending: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x``: ``[B, T, C]`` -> ``[B, T, C]``; the block's input is ``x + branch`` when ``branch``
        (the previous block's pending MLP branch, ``[B, T, C]``) is given.

        ``pending=True`` returns ``(x, branch)`` with the output ``x + branch`` left unsummed: the
        next block's ``norm1`` adds it inside its fused ``rms_norm_residual`` kernel, so the add
        costs no pass of its own, forward or backward (``ViT5`` chains its blocks so on the fast
        path). Likewise the first step ``x + ls1(attn)`` runs inside ``norm2``'s kernel with
        ``ls1.gamma`` as its scale, and ``ls2`` folds into ``fc2`` (:meth:`mlp_branch`); the
        LayerScales then never run as modules, and their FLOPs are still counted.
        """
        if branch is None:
            y = self.norm1(x)
        else:
            y, x = self.norm1.forward_residual(branch, x)
        if isinstance(self.ls1, LayerScale):
            y, x = self.norm2.forward_residual(self.attn(y), x, scale=self.ls1.gamma)
        else:
            y, x = self.norm2.forward_residual(self.ls1(self.attn(y)), x)
        branch = self.mlp_branch(y, x.dtype)
        return (x, branch) if pending else x + branch

    def mlp_branch(self, y: torch.Tensor, residual_dtype: torch.dtype) -> torch.Tensor:
        """``ls2(mlp(y))`` for ``y`` ``[B, T, C]``, to be added to a residual of ``residual_dtype``.

        On the fast path (``use_triton``), with a bias-free ``fc2``, a LayerScale ``ls2`` and no MLP
        dropout, the scale folds into ``fc2``'s weight (:class:`ScalableLinear`):
        ``gelu(fc1(y)) @ (W2 * gamma[:, None]).T``. The product is weight-sized (``h * C``) where
        the unfolded scale is a token-sized pass, forward and backward (its gradient becomes a
        weight-sized sum too). The parameters and the state dict are unchanged; the sum with the
        residual keeps its dtype (the fold is skipped where it would not, e.g. a bfloat16 residual
        with float32 weights under autocast) and differs from the unfolded form only in rounding.
        Never while ops are recorded (:func:`flopkit.kernels.ops_observed`): FLOP counters then see
        the LayerScale as its own module's op.
        """
        mlp, ls = self.mlp, self.ls2
        if not (
            self.norm2.use_triton
            and isinstance(ls, LayerScale)
            and isinstance(mlp.fc2, ScalableLinear)
            and mlp.fc2.bias is None
            # A tensor-parallel fc2 holds a DTensor weight: W2 * gamma would mix it with a local tensor.
            and type(mlp.fc2.weight) in (nn.Parameter, torch.Tensor)
            and isinstance(mlp.drop, nn.Identity)
            and (y.device.type in ("cuda", "cpu") or kernels.replaying_cuda())
            and not kernels.ops_observed()
        ):
            return ls(mlp(y))
        # A memory replay's meta tensors stand for CUDA tensors (kernels.replay_cuda_paths).
        device, gamma = ("cuda" if y.device.type == "meta" else y.device.type), ls.gamma.dtype
        if torch.is_autocast_enabled(device):
            mm = torch.get_autocast_dtype(device)
        elif gamma == mlp.fc2.weight.dtype:
            mm = gamma
        else:  # W2 * gamma would not match the activations' dtype
            return ls(mlp(y))
        # The unfolded branch has the dtype of mm * gamma, the folded one mm's: fold only where the
        # sum with the residual comes out the same either way.
        if gamma != mm and torch.promote_types(mm, residual_dtype) != torch.promote_types(
            torch.promote_types(mm, gamma), residual_dtype
        ):
            return ls(mlp(y))
        return mlp(y, ls.gamma)

    def default_flop_tokens(self) -> int:
        return self.num_tokens

    def flop_children(self, num_tokens: int, convention: str) -> list[tuple[str, nn.Module, int]]:
        return [
            ("norm1", self.norm1, num_tokens),
            ("attn", self.attn, num_tokens),
            ("ls1", self.ls1, num_tokens),
            ("norm2", self.norm2, num_tokens),
            ("mlp", self.mlp, num_tokens),
            ("ls2", self.ls2, num_tokens),
        ]


class ViT5(CompositeFlops, nn.Module):
    """ViT-5 image classifier, checkpoint layout as timm-style ViTs.

    ``[B, C_in, H, W]`` -> logits ``[B, num_classes]`` (features ``[B, C]`` with ``num_classes=0``).
    Tokens: ``PatchEmbed`` (+ absolute position embedding) then CLS (if any) then ``num_registers``
    register tokens; ``depth`` x :class:`ViT5Block`; final RMSNorm on the readout token(s); head.

    ``flop_count(batch_size=B)`` is the forward count of ``B`` images: PatchEmbed + blocks + final
    norm on the readout token(s) + ``2 * C * num_classes`` per image (``num_tokens`` is fixed to ``T``).
    """

    def __init__(self, config: ViT5Config | None = None, /, **fields: Any) -> None:
        """``ViT5(config)``, ``ViT5(**fields)`` (the :class:`ViT5Config` fields) or both (``fields``
        override the config's). Unknown fields raise ``ValueError`` naming them."""
        super().__init__()
        if config is None:
            config = ViT5Config.from_fields(fields)
        elif not isinstance(config, ViT5Config):
            raise TypeError(f"config must be a ViT5Config, got {type(config).__name__}")
        elif fields:
            config = config.replace(**fields)
        self.config = config
        c = config
        image_size, patch_size, in_channels, hidden_dim = (
            c.image_size,
            c.patch_size,
            c.in_channels,
            c.hidden_dim,
        )
        depth, num_heads, num_registers, has_cls = c.depth, c.num_heads, c.num_registers, c.has_cls
        num_classes, cls_first, patch_bias, head_bias = c.num_classes, c.cls_first, c.patch_bias, c.head_bias
        norm_eps, use_triton, norm_cast_before_weight = c.norm_eps, c.use_triton, c.norm_cast_before_weight
        self.patch_embed = PatchEmbed(image_size, patch_size, in_channels, hidden_dim, bias=patch_bias)
        gh, gw = self.patch_embed.grid_size
        self.hidden_dim = hidden_dim
        self.depth = depth
        self.num_heads = num_heads
        self.has_cls = bool(has_cls)
        self.cls_first = bool(cls_first) and self.has_cls
        self.num_registers = num_registers
        self.num_classes = num_classes
        self.blocks = nn.ModuleList(ViT5Block.from_config(c, gh, gw) for _ in range(depth))
        self.layout = self.blocks[0].attn.layout
        self.num_tokens = self.layout.num_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_dim)) if has_cls else None
        self.reg_token = nn.Parameter(torch.zeros(1, num_registers, hidden_dim)) if num_registers else None
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.trunc_normal_(token, std=0.02)
        self.norm = RMSNorm(
            hidden_dim, eps=norm_eps, use_triton=use_triton, cast_before_weight=norm_cast_before_weight
        )
        self.head = nn.Linear(hidden_dim, num_classes, bias=head_bias) if num_classes else nn.Identity()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ViT5:
        """Build a preset (``vit5-small|base|large|xlarge``, ``*-official``) with field overrides;
        weights from a checkpoint: :func:`flopkit.checkpoints.load_vit5`."""
        return cls(ViT5Config.from_preset(name, **overrides))

    # ------------------------------------------------------------------ forward
    @property
    def num_readout_tokens(self) -> int:
        """Tokens the final norm runs on: 1 (CLS) or ``N`` (patches, mean-pooled)."""
        return 1 if self.has_cls else self.patch_embed.num_patches

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, H, W]`` -> token sequence after the blocks, ``[B, T, C]``."""
        x = self.patch_embed(images, self.cls_token, self.reg_token, self.cls_first)
        x, branch = self._run_blocks(x)
        return x if branch is None else x + branch

    def _run_blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The blocks on tokens ``x``; returns ``(x, branch)``, the output being ``x + branch``
        (``branch`` None when summed already).

        On the fast path each block hands its MLP branch on unsummed (``pending=True``) and the next
        block's ``norm1`` adds it in its fused kernel; the blocks are still called as modules, so
        their hooks (FSDP2's ``fully_shard`` included) run. While ops are recorded
        (:func:`flopkit.kernels.ops_observed`) every block returns its summed output instead.
        """
        if not self.blocks or not self.blocks[0].norm2.use_triton or kernels.ops_observed():
            for block in self.blocks:
                x = block(x)
            return x, None
        branch = None
        for block in self.blocks:
            x, branch = block(x, branch, pending=True)
        return x, branch

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final norm on the readout token(s), pooling, head: ``[B, T, C]`` -> ``[B, num_classes]``."""
        n = self.patch_embed.num_patches
        if self.has_cls:
            feats = self.norm(tokens[:, self.layout.cls_index])
        else:
            feats = self.norm(tokens[:, :n]).mean(dim=1)
        return self.head(feats)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: ``[B, C_in, H, W]`` -> logits ``[B, num_classes]``."""
        return self.forward_head(self.forward_features(images))

    # ------------------------------------------------------------------ FLOPs
    fixed_flop_tokens = True

    def default_flop_tokens(self) -> int:
        return self.num_tokens

    def flop_children(self, num_tokens: int, convention: str) -> list[tuple[str, nn.Module, int]]:
        """One image: the patch embedding on its ``N`` patches, every block on ``T`` tokens, the final
        norm on the readout token(s), the head on one row."""
        children: list[tuple[str, nn.Module, int]] = [
            ("patch_embed", self.patch_embed, self.patch_embed.num_patches)
        ]
        children += [(f"blocks.{i}", block, num_tokens) for i, block in enumerate(self.blocks)]
        children += [("norm", self.norm, self.num_readout_tokens), ("head", self.head, 1)]
        return children

    def extra_repr(self) -> str:
        return (
            f"hidden_dim={self.hidden_dim}, depth={self.depth}, num_heads={self.num_heads}, "
            f"num_tokens={self.num_tokens} ({self.layout.describe()}), num_classes={self.num_classes}"
            + (", cls_first=True" if self.cls_first else "")
            + (", head_bias=True" if getattr(self.head, "bias", None) is not None else "")
        )
