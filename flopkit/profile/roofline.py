"""The roofs (matmul rate and copy bandwidth measured on the spot), bytes per layer, the bound.

Roofs are measured at the start of each profile (and again at its end, keeping the higher), on
the same device and dtype, so every percentage in the report is against what this machine did
in the same run, not a datasheet:

- **matmul rate**: ``C = A @ B`` with square ``n x n`` operands (``n`` 8192 on CUDA, 1024 on
  CPU), ``2 n^3`` FLOPs per product, best of a few timed repeats;
- **copy bandwidth**: ``dst.copy_(src)`` of a buffer (1 GiB on CUDA, 32 MiB on CPU), counting the
  bytes read and written (``2 x size``), best of a few repeats.

A row's *bound* compares the time its FLOPs need at the matmul rate with the time its minimum
bytes need at the copy bandwidth (the larger wins: ``compute`` or ``memory``); on CUDA a row whose
host time (launching its kernels) exceeds its device time is ``launch/host`` instead, because the
GPU then waits for the CPU whatever the kernels do.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

__all__ = [
    "Roofs",
    "measure_roofs",
    "backward_bytes",
    "classify_bound",
    "plot_roofline",
    "roofline_points",
    "BOUNDS",
]

BOUNDS = ("compute", "memory", "launch/host")


@dataclass(frozen=True)
class Roofs:
    """Measured ceilings: ``matmul_tflops`` (TFLOP/s, 1e12) and ``copy_gbs`` (GB/s, 1e9)."""

    matmul_tflops: float
    copy_gbs: float
    matmul_n: int
    copy_bytes: int
    dtype: str

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) where the two roofs meet."""
        return self.matmul_tflops * 1e12 / (self.copy_gbs * 1e9)

    def best(self, other: Roofs) -> Roofs:
        """Each roof at the higher of two measurements (a busy or throttled moment only lowers
        what is measured, so the higher is the better estimate of the ceiling)."""
        return replace(
            self,
            matmul_tflops=max(self.matmul_tflops, other.matmul_tflops),
            copy_gbs=max(self.copy_gbs, other.copy_gbs),
        )

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "matmul_tflops": self.matmul_tflops,
            "copy_gbs": self.copy_gbs,
            "matmul_n": self.matmul_n,
            "copy_bytes": self.copy_bytes,
            "dtype": self.dtype,
            "ridge_flop_per_byte": self.ridge,
        }


def _best_seconds(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of ``fn()`` over ``repeats`` runs after one warm-up, synchronised on CUDA."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def measure_roofs(
    device: torch.device | str,
    dtype: torch.dtype,
    matmul_n: int | None = None,
    copy_bytes: int | None = None,
    repeats: int = 5,
) -> Roofs:
    """Measure the matmul rate and the copy bandwidth of ``device`` in ``dtype`` (see module doc).

    On CUDA each timed call runs the op 10 times so that the launch is negligible.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = matmul_n or (8192 if cuda else 1024)
    size = copy_bytes or ((1 << 30) if cuda else (32 << 20))
    inner = 10 if cuda else 1
    tflops = 2 * n**3 / _matmul_seconds(n, device, dtype, inner, repeats) / 1e12
    numel = size // 4
    gbs = 2 * numel * 4 / _copy_seconds(numel, device, inner, repeats) / 1e9
    return Roofs(tflops, gbs, n, numel * 4, str(dtype).removeprefix("torch."))


def _matmul_seconds(n: int, device: torch.device, dtype: torch.dtype, inner: int, repeats: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)

    def matmul() -> None:
        for _ in range(inner):
            torch.mm(a, b, out=out)

    return _best_seconds(matmul, device, repeats) / inner


def _copy_seconds(numel: int, device: torch.device, inner: int, repeats: int) -> float:
    src = torch.empty(numel, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)

    def copy() -> None:
        for _ in range(inner):
            dst.copy_(src)

    return _best_seconds(copy, device, repeats) / inner


def backward_bytes(params: int, inputs: int, outputs: int) -> int:
    """Minimum bytes of a module's backward: read the weights, the saved inputs and the output
    gradient, write the input and weight gradients: ``2 * params + 2 * inputs + outputs``."""
    return 2 * params + 2 * inputs + outputs


def classify_bound(
    flops: float, nbytes: float, device_s: float, host_s: float, roofs: Roofs, cuda: bool
) -> str:
    """``launch/host`` (CUDA only: host time above device time), else ``compute`` when the FLOPs
    at the matmul rate take at least as long as the bytes at the copy bandwidth, else ``memory``.
    """
    if cuda and host_s > device_s:
        return "launch/host"
    compute_s = flops / (roofs.matmul_tflops * 1e12)
    memory_s = nbytes / (roofs.copy_gbs * 1e9)
    return "compute" if compute_s >= memory_s else "memory"


def roofline_points(rows: Sequence) -> list[tuple[str, float, float, str]]:
    """``(label, FLOP/byte, TFLOP/s, bound)`` of each layer of a profile: the rows with FLOPs and
    time and no such row under them (the whole model only when nothing else qualifies)."""
    from .attribution import under

    usable = [r for r in rows if r.intensity is not None and r.tflops is not None]
    leaves = [r for r in usable if not any(o is not r and under(o.path, r.path) for o in usable)]
    return [(r.path or "model", r.intensity, r.tflops, r.bound) for r in leaves or usable]


def plot_roofline(
    points: Sequence[tuple[str, float, float, str]], roofs: Roofs, path: str | Path, title: str = ""
) -> Path:
    """Write a log-log roofline PNG: one point per ``(label, FLOP/byte, TFLOP/s, bound)``.

    The roofs are the measured ones: ``min(matmul rate, intensity x copy bandwidth)``.
    Needs matplotlib (the ``plot`` extra).
    """
    from flopkit.inspect.rope import check_plot_path

    path = check_plot_path(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'flopkit[plot]'") from None
    usable = [p for p in points if p[1] > 0 and p[2] > 0]
    if not usable:
        raise ValueError("no layer has both FLOPs and time to plot")
    xs = [p[1] for p in usable]
    lo, hi = min(min(xs), roofs.ridge) / 4, max(max(xs), roofs.ridge) * 4
    grid = [lo * (hi / lo) ** (i / 199) for i in range(200)]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    ax.plot(grid, [min(roofs.matmul_tflops, x * roofs.copy_gbs / 1e3) for x in grid], "k-", lw=1.5)
    ax.axhline(roofs.matmul_tflops, color="0.6", ls=":", lw=1)
    ax.text(hi, roofs.matmul_tflops, f"matmul {roofs.matmul_tflops:.3g} TFLOP/s ", ha="right", va="bottom")
    ax.text(
        lo * 1.2,
        lo * 1.2 * roofs.copy_gbs / 1e3,
        f"copy {roofs.copy_gbs:.4g} GB/s",
        rotation=30,
        va="bottom",
    )
    colours = {"compute": "tab:blue", "memory": "tab:orange", "launch/host": "tab:red"}
    for bound, colour in colours.items():
        chosen = [p for p in usable if p[3] == bound]
        if chosen:
            ax.scatter([p[1] for p in chosen], [p[2] for p in chosen], c=colour, s=28, label=bound, zorder=3)
    for label, x, y, _ in usable:
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / minimum byte)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title(title or "roofline")
    ax.legend(title="bound", loc="lower right")
    ax.grid(True, which="both", alpha=0.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
