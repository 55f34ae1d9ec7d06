"""Launch Triton kernels from eager code with as little Python as possible.

``kernel[grid](*args, **meta)`` spends most of its host time before the launch: binding the
arguments, specialising every integer and pointer, hashing the specialisation and looking the
compiled kernel up. For an op called with the same shapes every step all of that gives the same
answer, so :func:`launch` does it once per *key* (everything the specialisation depends on:
kernel, grid, constexprs, scalars, each tensor's dtype and pointer alignment) and afterwards calls
the compiled kernel's launcher directly. A caller that keeps a plan per shape (an object fixing the
kernel, grid, scalars and constexprs) passes it as ``plan``: the key is then the plan itself plus
the device and the tensors' dtypes and alignment, which is cheaper to build and to hash.

The direct call mirrors ``JITFunction.run`` of Triton 3.4 and later (every bound argument,
constexprs included, passed to ``CompiledKernel.run``). It is used only on CUDA, with no Triton
launch hooks installed (profilers such as proton install them), and on Triton versions that have
``triton.knobs``; otherwise every call takes the ordinary path. Both paths launch the same
compiled binary with the same arguments.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

__all__ = [
    "launch",
    "clear_launch_cache",
    "MAX_CACHED",
    "Plan",
    "cached_plan",
    "partials",
    "Tile",
    "TUNED_ARCH",
    "pick_tile",
    "cdiv",
    "next_power_of_2",
]

MAX_CACHED = 4096  # cached launches (and, in the launchers, plans) before the cache starts over
# key -> (compiled kernel, trailing constexpr values in parameter order, 3-D grid, the JITFunction)
_COMPILED: dict[tuple, tuple[Any, tuple, tuple[int, int, int], Any]] = {}
_RUNTIME: Any = None  # triton.knobs.runtime once the fast path is known to be usable; False if not
_Tensor = torch.Tensor


def _runtime():
    global _RUNTIME
    if _RUNTIME is None:
        import triton

        knobs = getattr(triton, "knobs", None)
        _RUNTIME = knobs.runtime if knobs is not None and not knobs.runtime.interpret else False
    return _RUNTIME


def _hooks_installed(runtime) -> bool:
    # Triton 3.6 keeps hooks in (possibly empty) HookChains; older releases use None.
    for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):
            return True
    return False


def clear_launch_cache() -> None:
    """Forget every cached compiled kernel and plan (tests; after changing Triton knobs)."""
    _COMPILED.clear()
    _PLANS.clear()


def launch(
    kernel, grid: tuple[int, ...], args: tuple, meta: dict[str, Any], num_tensors: int, plan: object = None
) -> None:
    """``kernel[grid](*args, **meta)``, skipping Triton's binder after the first call with the same key.

    ``args`` are the kernel's leading (runtime) parameters in order, its first ``num_tensors``
    the tensors and the rest scalars; ``meta`` its constexprs, which must be its trailing
    parameters, always given in the same order, plus launch options such as ``num_warps``. The key
    is the kernel, the device, the grid, every ``meta`` value, every scalar argument and each tensor
    argument's dtype and 16-byte alignment: everything Triton specialises on. ``plan``, when given,
    stands for the kernel, grid, scalars and ``meta`` (the caller guarantees that one plan object
    always comes with the same ones); it is kept alive by the cache, so its identity is never reused.
    """
    x = args[0]
    if not x.is_cuda:
        kernel[grid](*args, **meta)
        return
    device = x.get_device()
    tensors = args[:num_tensors]
    # The launcher takes a pointer as an int as it is; given a tensor it calls data_ptr() and asks
    # the driver whether the pointer is a device pointer (cuPointerGetAttribute), about 0.4 µs per
    # tensor. The ints also give the alignment that Triton specialises on.
    ptrs = [t.data_ptr() for t in tensors]
    if plan is not None:
        # Usually every pointer is 16-byte aligned: one OR over them then stands for the alignment.
        bits = 0
        for p in ptrs:
            bits |= p
        if bits & 15:
            key = (plan, device, *[(t.dtype, p & 15 == 0) for t, p in zip(tensors, ptrs, strict=True)])
        else:
            key = (plan, device, *[t.dtype for t in tensors])
    else:
        sig = [(t.dtype, p & 15 == 0) for t, p in zip(tensors, ptrs, strict=True)]
        # id(kernel): hashing a JITFunction recomputes its source hash. Module-level kernels live as
        # long as the process; the entry keeps the kernel too, so an id is never reused while cached.
        key = (id(kernel), device, grid, *meta.values(), *args[num_tensors:], *sig)
    entry = _COMPILED.get(key)
    runtime = _RUNTIME if _RUNTIME is not None else _runtime()
    if entry is None or not runtime or _hooks_installed(runtime):
        compiled = kernel[grid](*args, **meta)
        if entry is None and runtime and not _hooks_installed(runtime):
            if len(_COMPILED) >= MAX_CACHED:  # many distinct shapes: start over rather than grow
                _COMPILED.clear()
            tail = tuple(meta[name] for name in kernel.arg_names[len(args) :])
            g1 = grid[1] if len(grid) > 1 else 1
            g2 = grid[2] if len(grid) > 2 else 1
            _COMPILED[key] = (compiled, tail, (grid[0], g1, g2), kernel)
        return
    compiled, tail, (g0, g1, g2), _ = entry
    compiled.run(
        g0,
        g1,
        g2,
        _raw_stream(device),
        compiled.function,
        compiled.packed_metadata,
        None,
        None,
        None,
        *ptrs,
        *args[num_tensors:],
        *tail,
    )


# Absent from CPU-only builds of torch, where the direct path never runs (no CUDA tensors).
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


# ----------------------------------------------------------------------------------------- plans
#
# A launcher first *plans* a call: the kernel, its grid, scalar arguments and constexprs, and what
# it needs besides the tensors it is given (copies, partial buffers). The plan depends only on
# shapes, strides, dtypes and flags, so eager calls keep it per key (``cached_plan``) and then only
# allocate the outputs and launch: the hot path runs no validation, no table lookups and no Triton
# binder. Traced calls (``torch.compile``'s ``wrap_triton``, fake tensors, symbolic shapes) plan
# every time.


class Plan:
    """One planned launch: ``kernel[grid](*tensors, *scalars, **meta)``.

    ``x_copy``/``r_copy``: whether the input (the residual) must be made contiguous first;
    ``parts``: the shape of the fp32 partial parameter gradients a backward kernel writes;
    ``reduce``: the plan of their reduction; ``workspace``: partials kept between eager calls
    (:func:`partials`); ``extra``: whatever else the launcher keeps (output shapes)."""

    __slots__ = (
        "kernel",
        "grid",
        "scalars",
        "meta",
        "x_copy",
        "r_copy",
        "parts",
        "reduce",
        "workspace",
        "extra",
    )

    def __init__(self, kernel, grid, scalars, meta, x_copy=False, r_copy=False, parts=None, extra=None):
        self.kernel, self.grid, self.scalars, self.meta = kernel, grid, scalars, meta
        self.x_copy, self.r_copy, self.parts, self.extra = x_copy, r_copy, parts, extra
        self.reduce: Plan | None = None
        self.workspace: tuple | None = None


_PLANS: dict[tuple, Plan] = {}


def cached_plan(key: tuple, build: Callable[..., tuple], args: tuple) -> Plan:
    """The plan for ``key``, built by ``build(*args)`` (which returns the plan first) on the first
    call with that key. ``key`` must hold everything the plan depends on, the device included."""
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= MAX_CACHED:  # many distinct shapes: start over rather than grow
            _PLANS.clear()
        plan = _PLANS[key] = build(*args)[0]
    return plan


def cdiv(x: int | torch.SymInt, y: int) -> int | torch.SymInt:
    """``ceil(x / y)`` for ``x >= 0``, ``y > 0``, as ``triton.cdiv`` computes it (``(x + y - 1) // y``,
    so a traced symbolic ``x`` stays symbolic). Host code only: ``triton.cdiv`` is a
    ``constexpr_function`` whose call from Python costs about 2.5 µs, this one about 0.1 µs, and the
    eager launchers call it on every launch."""
    return (x + y - 1) // y


def next_power_of_2(n: int | torch.SymInt) -> int | torch.SymInt:
    """The smallest power of two ``>= n`` for ``n >= 1`` (0 for 0), as ``triton.next_power_of_2``
    returns it; host code only (see :func:`cdiv`). A traced symbolic ``n`` goes to Triton's."""
    if isinstance(n, int):
        return 1 << (n - 1).bit_length() if n > 0 else 0
    import triton

    return triton.next_power_of_2(n)


def program_count(work: int | torch.SymInt, cap: int) -> int | torch.SymInt:
    """``max(1, min(work, cap))``: the programs of a grid that loops over ``work`` blocks with at
    most ``cap`` programs. ``torch.sym_max``/``sym_min`` keep a traced (symbolic) ``work`` symbolic:
    Python's ``min`` compares it, and under ``torch.compile(dynamic=True)`` that comparison became
    a guard on the batch (``cdiv(11*B, 32) <= 1`` recompiled a graph traced at batch 2 at batch 3)."""
    return torch.sym_max(1, torch.sym_min(work, cap))


def partials(
    plan: Plan, cached: bool, like: torch.Tensor, first: bool, second: bool, reusable: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Up to two fp32 buffers of ``plan.parts`` on ``like``'s device for a backward kernel's
    per-program partial parameter gradients (None where ``first``/``second`` is False).

    ``reusable``: the kernel overwrites every partial it owns and the reduction reads them right
    after, on the same stream; an eager (``cached``) plan then keeps them between calls, one
    allocation less per call, per stream and thread so that two streams, or two threads on one
    stream, never share them. Otherwise (a kernel that accumulates into them) they are new zeros.

    The buffers are flat (``prod(plan.parts)`` elements; the kernels address them by pointer): under
    ``torch.compile(dynamic=True)`` a leading dimension of programs is symbolic, and a traced copy
    of a ``[programs, ...]`` buffer checks its contiguity by asking whether ``programs == 1``, a
    guard on the batch (an attention module traced at batch 2 recompiled at batch 3 on an H100).
    """
    numel = math.prod(plan.parts)
    if not reusable:
        return (
            torch.zeros(numel, dtype=torch.float32, device=like.device) if first else None,
            torch.zeros(numel, dtype=torch.float32, device=like.device) if second else None,
        )
    if not cached:  # traced (fake tensors, Inductor plans the memory) or uncached: new buffers
        return (
            torch.empty(numel, dtype=torch.float32, device=like.device) if first else None,
            torch.empty(numel, dtype=torch.float32, device=like.device) if second else None,
        )
    owner = (_raw_stream(like.get_device()) if like.is_cuda else None, threading.get_ident())
    ws = plan.workspace
    if ws is None or ws[0] != owner:
        ws = plan.workspace = (
            owner,
            torch.empty(numel, dtype=torch.float32, device=like.device) if first else None,
            torch.empty(numel, dtype=torch.float32, device=like.device) if second else None,
        )
    return ws[1], ws[2]


# ------------------------------------------------------------------------------------ tile tables
# The architecture every table was swept on (an H100: compute capability 9.0). Launchers key their
# tile tables by (architecture, width); an architecture without an entry of its own at a width takes
# this one's, as every device did before the tables had an architecture.
TUNED_ARCH = "sm90"


class Tile(NamedTuple):
    """One entry of a launcher's tile table: the launch configuration and the evidence for it (the
    result file and run under ``benchmarks/results/`` whose sweep chose it, or why none did)."""

    config: tuple[int, ...]
    source: str


def pick_tile(table: Mapping[tuple[str, int], Tile], arch: str, width: int) -> Tile | None:
    """``table``'s entry at ``(arch, width)``, else at ``(TUNED_ARCH, width)``; None when neither
    exists."""
    tile = table.get((arch, width))
    return tile if tile is not None else table.get((TUNED_ARCH, width))
