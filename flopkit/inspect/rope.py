"""RoPE table report: per-token angles' cos/sin, a summary, a norm check of the pairing, a heat map.

The tables are rebuilt on CPU (float64) with :func:`flopkit.nn.rope.build_rope_tables` from the
attention layer's own layout, head dim and bases (a model built on the meta device has no values).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flopkit.nn import ViT5Attention
from flopkit.nn.rope import ROPE_PAIRINGS, TokenLayout, apply_rope, build_rope_tables, rope_frequencies

from .layout import check_listed_tokens

__all__ = [
    "MAX_TABLE_ELEMENTS",
    "default_token_spec",
    "parse_token_spec",
    "rope_tables",
    "rope_channels",
    "rope_token_rows",
    "rope_summary",
    "pairing_norm_ratios",
    "check_plot_path",
    "plot_rope_tables",
]


def parse_token_spec(spec: str, num_tokens: int) -> list[int]:
    """``"0:3,196:201"`` -> ``[0, 1, 2, 196, 197, 198, 199, 200]``: half-open ranges or single
    indices, comma-separated; :class:`flopkit.checks.InputError` (a ValueError) naming ``tokens``
    (the token selection :func:`rope_token_rows` reports) for anything outside ``0 .. T-1``."""
    from flopkit.checks import InputError

    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if ":" in part:
                a, b = part.split(":", 1)
                start = int(a) if a.strip() else 0
                stop = int(b) if b.strip() else num_tokens
            else:
                start = int(part)
                stop = start + 1
        except ValueError:
            raise InputError("tokens", None, f"expected ranges like 0:3,196:201, got {part!r}") from None
        if ":" in part and start >= stop:
            raise InputError(
                "tokens", None, f"range {part!r} is empty: start must be below stop (half-open a:b)"
            )
        if not 0 <= start < stop <= num_tokens:
            raise InputError(
                "tokens", None, f"range {part!r} is outside the {num_tokens} tokens (0..{num_tokens - 1})"
            )
        check_listed_tokens(len(out) + stop - start, "ask for a smaller range")
        out.extend(range(start, stop))
    return out


MAX_TABLE_ELEMENTS = 1 << 26
"""Largest ``T * D`` the report builds on CPU (two float64 tables of 512 MiB each)."""


def default_token_spec(layout: TokenLayout) -> str:
    """The tokens shown when none are asked for: the first three patches (after a leading CLS),
    then CLS and the registers."""
    spec = f"0:{layout.patch_start + min(3, layout.num_patches)}"
    tail = layout.register_start if layout.cls_first else layout.num_patches
    if tail < layout.num_tokens:
        spec += f",{tail}:{layout.num_tokens}"
    return spec


def rope_tables(attn: ViT5Attention, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``[T, D]``, of ``attn`` on CPU (ValueError above :data:`MAX_TABLE_ELEMENTS`)."""
    size = attn.num_tokens * attn.head_dim
    if size > MAX_TABLE_ELEMENTS:
        raise ValueError(
            f"the RoPE report builds [T, D] = [{attn.num_tokens}, {attn.head_dim}] tables on CPU; "
            f"T*D = {size:,} is above its limit of {MAX_TABLE_ELEMENTS:,} (use a smaller image_size)"
        )
    with torch.device("cpu"):
        return build_rope_tables(
            attn.layout,
            attn.head_dim,
            attn.rope_base,
            attn.reg_rope_base,
            dtype=dtype,
            tables=attn.rope_tables,
        )


def rope_channels(head_dim: int, per_axis: int = 2) -> list[int]:
    """Channels showing the first ``per_axis`` frequencies of each axis: ``[0, 2, .., D/2, D/2+2, ..]``
    (each frequency fills two adjacent channels, the Y angle the first half of D, X the second)."""
    k = min(per_axis, head_dim // 4)
    return [2 * j for j in range(k)] + [head_dim // 2 + 2 * j for j in range(k)]


def rope_token_rows(attn: ViT5Attention, tokens: list[int], per_axis: int = 2) -> list[dict[str, Any]]:
    """Per token: ``index, kind, y, x, base`` and cos/sin at :func:`rope_channels` (``channels``)."""
    cos, sin = rope_tables(attn)
    channels = rope_channels(attn.head_dim, per_axis)
    kinds = {i: (kind, y, x) for i, kind, y, x in attn.layout.tokens()}
    base = {"patch": attn.rope_base, "cls": None, "register": attn.reg_rope_base}
    rows = []
    for i in tokens:
        kind, y, x = kinds[i]
        rows.append(
            {
                "index": i,
                "kind": kind,
                "y": y,
                "x": x,
                "base": base[kind],
                "channels": channels,
                "cos": [round(float(cos[i, c]), 6) for c in channels],
                "sin": [round(float(sin[i, c]), 6) for c in channels],
            }
        )
    return rows


def pairing_norm_ratios(
    attn: ViT5Attention, pairing: str, num_vectors: int = 64, seed: int = 0
) -> tuple[float, float]:
    """``(min, max)`` of ``|rope(x)| / |x|`` over ``num_vectors`` random ``x`` per token (float64).

    1.0 both for an orthogonal rotation (``interleaved``); ``split_half`` pairs channels of different
    frequencies with the interleaved tables, so its ratios spread around 1.
    """
    if pairing not in ROPE_PAIRINGS:
        from flopkit.checks import InputError

        raise InputError("pairing", repr(pairing), f"must be one of {', '.join(ROPE_PAIRINGS)}")
    cos, sin = rope_tables(attn)
    # Bound the sample (num_vectors * T * D float64 values) for large layouts; at least one per token.
    num_vectors = max(1, min(num_vectors, (1 << 22) // cos.numel()))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_vectors, cos.shape[0], cos.shape[1], generator=gen, dtype=torch.float64)
    ratio = apply_rope(x, cos, sin, pairing).norm(dim=-1) / x.norm(dim=-1)
    return float(ratio.min()), float(ratio.max())


def rope_summary(attn: ViT5Attention, pairing: str | None = None) -> dict[str, Any]:
    """T, D, layout, bases, frequencies and the norm check of ``pairing`` (default: the layer's)."""
    pairing = pairing or attn.rope_pairing
    D = attn.head_dim
    theta_patch = rope_frequencies(D, attn.rope_base)
    theta_reg = rope_frequencies(D, attn.reg_rope_base)
    checks = {p: pairing_norm_ratios(attn, p) for p in ROPE_PAIRINGS}
    lo, hi = checks[pairing]
    preserves = {p: abs(a - 1) < 1e-9 and abs(b - 1) < 1e-9 for p, (a, b) in checks.items()}
    return {
        "num_tokens": attn.num_tokens,
        "layout": attn.layout.describe(),
        "head_dim": D,
        "rope_base": attn.rope_base,
        "reg_rope_base": attn.reg_rope_base,
        "num_frequencies": D // 4,
        "channels": f"[0, {D // 2}): Y angle, [{D // 2}, {D}): X angle, each frequency on 2 adjacent channels",
        "patch_frequencies": [float(v) for v in theta_patch],
        "register_frequencies": [float(v) for v in theta_reg],
        "pairing": pairing,
        "norm_ratio_min": lo,
        "norm_ratio_max": hi,
        "preserves_norm": preserves[pairing],
        "norm_ratios": {
            p: {"min": a, "max": b, "preserves_norm": preserves[p]} for p, (a, b) in checks.items()
        },
    }


def _boundaries(layout) -> list[tuple[int, str, str]]:
    """``(first row, label, colour)`` of each token-kind boundary."""
    out = []
    if layout.has_cls and layout.cls_first:
        out.append((layout.patch_start, f"CLS | patches (row {layout.patch_start})", "black"))
    elif layout.has_cls:
        out.append((layout.cls_index, f"patches | CLS (row {layout.cls_index})", "black"))
    if layout.num_registers:
        before = "CLS" if layout.has_cls and not layout.cls_first else "patches"
        label = f"{before} | registers (row {layout.register_start})"
        out.append((layout.register_start, label, "limegreen"))
    return out


def check_plot_path(path: str | Path) -> Path:
    """``path`` as a Path; :class:`flopkit.checks.InputError` (a ValueError) naming ``plot_path`` when
    it is a directory, or its directory does not exist or is not writable."""
    from flopkit.checks import check_output_path

    return check_output_path(path, "plot_path")


def plot_rope_tables(attn: ViT5Attention, path: str | Path) -> Path:
    """Heat maps of cos and sin (``[T, D]``) with token-kind boundaries marked; writes a PNG.

    Needs matplotlib (``pip install 'flopkit[plot]'``); ImportError otherwise. ValueError, before
    any work, when the directory of ``path`` does not exist or ``path`` is a directory.
    """
    out = check_plot_path(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'flopkit[plot]'") from None
    cos, sin = rope_tables(attn)
    layout = attn.layout
    T, D = cos.shape
    fig, axes = plt.subplots(1, 2, figsize=(11, 6), sharey=True, constrained_layout=True)
    for ax, table, name in ((axes[0], cos, "cos"), (axes[1], sin, "sin")):
        im = ax.imshow(table.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"rope_{name}  [T={T}, D={D}]")
        ax.set_xlabel("channel (first half: Y angle, second half: X angle)")
        ax.axvline(D / 2 - 0.5, color="k", lw=0.8, ls=":")
        lines = []
        for y, label, color in _boundaries(layout):
            lines.append(ax.axhline(y - 0.5, color=color, lw=1.2, label=label))
    axes[1].legend(handles=lines, loc="lower left", fontsize=8, framealpha=0.9)
    axes[0].set_ylabel("token index")
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.suptitle(
        f"2D RoPE tables: {layout.describe()} tokens, rope_base={attn.rope_base:g}, "
        f"reg_rope_base={attn.reg_rope_base:g}"
    )
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
