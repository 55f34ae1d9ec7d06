"""Register-aware 2D RoPE for ViT-5: token layout, tables, and the two rotation conventions.

Token order: ``[patch_0 ... patch_{h*w-1}, CLS?, reg_0 ... reg_{R-1}]``, patches row-major
(index ``y*w + x``). For a grid position ``(y, x)`` the angle vector over the head dim ``D`` is
``[repeat_interleave(y*theta, 2) | repeat_interleave(x*theta, 2)]`` with
``theta_j = base**(-4j/D)``, ``j = 0 .. D/4-1``: the first half of ``D`` encodes Y, the second X.
Patches use ``rope_base`` on the ``h x w`` grid; CLS is the identity (cos 1, sin 0); registers
use ``reg_rope_base`` on a ``sqrt(R) x sqrt(R)`` grid, row-major.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flopkit.kernels import ROPE_PAIRINGS, apply_rope_ref, rotate_pairs

from ._checks import check_positive_int, is_int

__all__ = [
    "ROPE_PAIRINGS",
    "TokenLayout",
    "token_layout",
    "register_grid_size",
    "rope_frequencies",
    "grid_angles",
    "patch_rope_angles",
    "register_rope_angles",
    "build_rope_tables",
    "rotate_pairs",
    "apply_rope",
]


def register_grid_size(num_registers: int) -> int:
    """Side of the ``sqrt(R) x sqrt(R)`` register grid; ValueError if ``R`` is not a perfect square."""
    if not is_int(num_registers) or num_registers < 0:
        raise ValueError(f"num_registers must be a non-negative integer, got {num_registers!r}")
    side = math.isqrt(num_registers)
    if side * side != num_registers:
        raise ValueError(
            f"num_registers must be a perfect square (0, 1, 4, 9, 16, ...) for the register RoPE grid, "
            f"got {num_registers}"
        )
    return side


@dataclass(frozen=True)
class TokenLayout:
    """Where each kind of token sits in the ``T`` axis: ``[patches, CLS?, registers]``."""

    num_patches_h: int
    num_patches_w: int
    has_cls: bool
    num_registers: int

    @property
    def num_patches(self) -> int:
        return self.num_patches_h * self.num_patches_w

    @property
    def cls_index(self) -> int | None:
        """Index of the CLS token (``h*w``), or None without CLS."""
        return self.num_patches if self.has_cls else None

    @property
    def register_start(self) -> int:
        return self.num_patches + int(self.has_cls)

    @property
    def register_grid(self) -> int:
        return register_grid_size(self.num_registers)

    @property
    def num_tokens(self) -> int:
        """``T = h*w + has_cls + R``."""
        return self.register_start + self.num_registers

    def describe(self) -> str:
        """``"h*w + cls + R = T"``, e.g. ``"14*14 + 1 + 4 = 201"``."""
        return (
            f"{self.num_patches_h}*{self.num_patches_w} + {int(self.has_cls)} + {self.num_registers} "
            f"= {self.num_tokens}"
        )

    def tokens(self) -> list[tuple[int, str, int | None, int | None]]:
        """Every token as ``(index, kind, y, x)``; ``kind`` in ``patch | cls | register``."""
        rows: list[tuple[int, str, int | None, int | None]] = []
        w = self.num_patches_w
        rows += [(i, "patch", i // w, i % w) for i in range(self.num_patches)]
        if self.has_cls:
            rows.append((self.num_patches, "cls", None, None))
        side = self.register_grid
        rows += [
            (self.register_start + r, "register", r // side, r % side) for r in range(self.num_registers)
        ]
        return rows


def token_layout(
    num_patches_h: int, num_patches_w: int, has_cls: bool = True, num_registers: int = 4
) -> TokenLayout:
    """Validated :class:`TokenLayout` (positive grid, perfect-square register count)."""
    check_positive_int("num_patches_h", num_patches_h)
    check_positive_int("num_patches_w", num_patches_w)
    register_grid_size(num_registers)
    return TokenLayout(num_patches_h, num_patches_w, bool(has_cls), num_registers)


def rope_frequencies(head_dim: int, base: float) -> torch.Tensor:
    """``theta_j = base**(-4j/D)`` for ``j = 0 .. D/4-1`` (float64, shape ``[D/4]``)."""
    if head_dim % 4:
        raise ValueError(f"head_dim must be divisible by 4 for 2D RoPE, got {head_dim}")
    j = torch.arange(head_dim // 4, dtype=torch.float64)
    return torch.as_tensor(float(base), dtype=torch.float64) ** (-4.0 * j / head_dim)


def grid_angles(height: int, width: int, head_dim: int, base: float) -> torch.Tensor:
    """Angles ``[height*width, D]`` (float64) of a row-major grid: Y half then X half, pairs repeated."""
    theta = rope_frequencies(head_dim, base)
    ys = torch.arange(height, dtype=torch.float64).repeat_interleave(width)
    xs = torch.arange(width, dtype=torch.float64).repeat(height)
    ay = (ys[:, None] * theta[None, :]).repeat_interleave(2, dim=-1)
    ax = (xs[:, None] * theta[None, :]).repeat_interleave(2, dim=-1)
    return torch.cat((ay, ax), dim=-1)


def patch_rope_angles(layout: TokenLayout, head_dim: int, rope_base: float) -> torch.Tensor:
    """Angles of the patch rows, ``[h*w, D]``, with ``rope_base``."""
    return grid_angles(layout.num_patches_h, layout.num_patches_w, head_dim, rope_base)


def register_rope_angles(layout: TokenLayout, head_dim: int, reg_rope_base: float) -> torch.Tensor:
    """Angles of the register rows, ``[R, D]``, on the ``sqrt(R) x sqrt(R)`` grid with ``reg_rope_base``."""
    side = layout.register_grid
    return grid_angles(side, side, head_dim, reg_rope_base)


def build_rope_tables(
    layout: TokenLayout,
    head_dim: int,
    rope_base: float = 10000.0,
    reg_rope_base: float = 100.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``[T, D]``: patch rows, then the CLS identity row, then register rows.

    ``device`` defaults to the current default device (e.g. inside ``with torch.device("meta")``).
    The maths runs on CPU in float64; on the meta device, where tensors hold no values, it is
    skipped (its meta kernels would also import ``torch._dynamo``, about a second cold).
    """
    target = torch.device(device) if device is not None else torch.get_default_device()
    if target.type == "meta":
        shape = (layout.num_tokens, head_dim)
        return torch.empty(shape, dtype=dtype, device=target), torch.empty(shape, dtype=dtype, device=target)
    with torch.device("cpu"):
        parts = [patch_rope_angles(layout, head_dim, rope_base)]
        if layout.has_cls:
            parts.append(torch.zeros(1, head_dim, dtype=torch.float64))  # angle 0: cos 1, sin 0
        parts.append(register_rope_angles(layout, head_dim, reg_rope_base))
        angles = torch.cat(parts, dim=0)
    return angles.cos().to(dtype=dtype, device=target), angles.sin().to(dtype=dtype, device=target)


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str = "split_half"
) -> torch.Tensor:
    """``x * cos + rot(x) * sin`` (fp32 math, ``x``'s dtype out); ``cos``/``sin`` broadcast to ``x``.

    ``pairing="split_half"`` (nvSubquadratic) or ``"interleaved"`` (official ViT-5, a true rotation).
    """
    if pairing not in ROPE_PAIRINGS:
        raise ValueError(f"rope_pairing must be one of {ROPE_PAIRINGS}, got {pairing!r}")
    return apply_rope_ref(x, cos, sin, pairing)
