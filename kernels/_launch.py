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

from typing import Any

import torch

__all__ = ["launch", "clear_launch_cache", "MAX_CACHED"]

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
    """Forget every cached compiled kernel (tests; after changing Triton knobs)."""
    _COMPILED.clear()


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
    sig = [(t.dtype, t.data_ptr() & 15 == 0) for t in args[:num_tensors]]
    if plan is not None:
        key = (plan, device, *sig)
    else:
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
        *args,
        *tail,
    )


# Absent from CPU-only builds of torch, where the direct path never runs (no CUDA tensors).
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
