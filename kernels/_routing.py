"""``route_through_custom_ops``: every eager call through its ``flopkit::`` custom op.

It sits above the op modules, which it registers on entry, so that ``_dispatch.py`` (the backend
rules the op modules import) never imports them back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from . import _dispatch

__all__ = ["route_through_custom_ops", "replay_cuda_paths"]


@contextlib.contextmanager
def route_through_custom_ops() -> Iterator[None]:
    """Inside this context ``backend="auto"`` sends every op through its ``flopkit::`` custom op on
    any device: CUDA runs the Triton kernel, CPU the PyTorch reference inside the op, meta the
    op's fake. FLOP counters (fvcore's JIT trace, ``FlopCounterMode``) then see flopkit's norms
    and RoPE as ops with registered formulas instead of anonymous elementwise aten ops; ``flopkit
    validate`` measures this way. Entering it registers the ops (importing triton); create a
    ``FlopCounterMode`` inside it, or after a first op call, since the mode copies torch's formula
    table when it is created.
    """
    if _dispatch.triton_available():
        # Register the ops and their FLOP formulas now (they are otherwise registered on first
        # use): a FlopCounterMode copies torch's formula table when it is created, so one created
        # inside this context before the first op ran would not know flopkit's formulas.
        from . import _norm_ops, _rope_ops, _sdpa_ops  # noqa: F401
    _dispatch._ROUTE_DEPTH += 1
    try:
        yield
    finally:
        _dispatch._ROUTE_DEPTH -= 1


@contextlib.contextmanager
def replay_cuda_paths() -> Iterator[None]:
    """Inside this context meta tensors stand for CUDA tensors: every op goes through its
    ``flopkit::`` custom op (meta runs its fake and its registered autograd, so the tensors the
    Triton path saves are the ones saved), and models take the structure they take on CUDA
    (:func:`~flopkit.kernels.ops_observed` is False, so ``ViT5`` hands MLP branches on to the next
    norm and folds its LayerScale into ``fc2``) although a dispatch mode records their ops.
    ``flopkit.memory`` replays a CUDA step on the meta device this way."""
    with route_through_custom_ops():
        _dispatch._REPLAY_DEPTH += 1
        try:
            yield
        finally:
            _dispatch._REPLAY_DEPTH -= 1
