"""Allocation trace of a step replayed on the meta device: every block's birth and death, who made it.

:class:`AllocationTrace` is a ``TorchDispatchMode``: every op's outputs are looked at after it
runs; a storage not seen before is an allocation of :func:`~flopkit.step_memory.cuda.block_bytes` of
its size, charged to the current module (torch's ``ModTracker``: forward and backward) and the
step's phase; a ``weakref`` on the storage records the free when the last tensor using it dies,
which is when the caching allocator would get the block back (same-stream reuse, no
``record_stream``). Views and in-place ops reuse a storage and allocate nothing.

:meth:`AllocationTrace.saved_tensors` is a ``saved_tensors_hooks`` pair that notes, for each
tensor autograd saves for the backward, its storage and the module that saved it (the per-layer
``activation_bytes``).

Only meta tensors are tracked in a replay: they stand for the GPU's. CPU tensors (the optimizer's
step counters) are not GPU memory.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .cuda import block_bytes

__all__ = ["Event", "Block", "AllocationTrace", "CATEGORIES", "CUBLAS_OPS"]

# ATen ops that run a cuBLAS GEMM (and so, with per-operation workspaces, allocate one around it).
CUBLAS_OPS = frozenset(
    {"mm", "bmm", "addmm", "baddbmm", "addbmm", "addmv", "mv", "dot", "vdot", "_addmm_activation"}
)

# What a block is, as charged at the peak; every block has exactly one.
CATEGORIES = (
    "parameters",
    "gradients",
    "optimizer_state",
    "activations",
    "inputs",
    "temporaries",
    "workspace",
)


def _as_aten_allocates(func, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """Ops whose ATen kernel (any device) allocates more than its meta kernel, run as ATen does;
    None for every other op.

    ``mse_loss`` with a reduction writes the per-element losses to a tensor of the input's shape and
    returns the reduction as a 0-d view into it (the buffer lives as long as the loss does), where
    the meta kernel returns a fresh scalar.
    """
    if func is not torch.ops.aten.mse_loss.default or not args or args[0].device.type != "meta":
        return None
    reduction = args[2] if len(args) > 2 else kwargs.get("reduction", 1)
    if reduction == 0:  # Reduction::None: the elementwise tensor is the output
        return None
    loss = torch.empty(
        torch.broadcast_shapes(args[0].shape, args[1].shape),
        dtype=torch.result_type(args[0], args[1]),
        device="meta",
    )
    return loss.reshape(-1)[0]


@dataclass
class Block:
    """One allocation: ``bytes`` (rounded to 512), where it was made, and its category (set when it
    is made, or later: a block autograd saves becomes ``activations``, a gradient kept in
    ``param.grad`` becomes ``gradients``, a new optimizer state tensor ``optimizer_state``)."""

    key: int
    bytes: int
    category: str
    path: str
    phase: str
    op: str
    born: int
    died: int | None = None
    saved_by: set[str] = field(default_factory=set)
    # What FSDP shards: a parameter's, its gradient's or its optimizer state's shape and item size
    # (None for everything else, buffers included).
    shard_shape: tuple[int, ...] | None = None
    itemsize: int = 0
    owner: str | None = None  # a gradient's parameter's module path

    def sharded_bytes(self, ranks: int, padded: bool = True) -> int:
        """The block on one of ``ranks`` FSDP2 ranks: ``ceil(dim0 / ranks)`` rows of its shape (FSDP2
        pads dim 0 to a multiple of the ranks), rounded to 512 (``padded=False``: the exact bytes);
        whole if it is not sharded."""
        if self.shard_shape is None or ranks == 1 or not self.shard_shape:
            return self.bytes
        rows = -(-self.shard_shape[0] // ranks)
        rest = 1
        for size in self.shard_shape[1:]:
            rest *= size
        exact = rows * rest * self.itemsize
        return block_bytes(exact) if padded else exact


@dataclass(frozen=True)
class Event:
    """A point of the timeline: after event ``index`` (an allocation or a free), ``live`` bytes."""

    index: int
    live: int
    delta: int
    phase: str
    path: str
    op: str


class AllocationTrace(TorchDispatchMode):
    """Tracks every meta-device storage's lifetime while active (see the module docstring).

    ``phase`` is set by the step driver (``forward``, ``loss``, ``backward``, ``optimizer``,
    ``zero_grad``, ``inference``); ``module_path`` (a callable) gives the current module path.
    ``device``: the device type whose tensors are tracked (``meta`` in a replay; ``cpu`` to trace a
    real CPU step, which checks the replay against real kernels). ``op_workspace``: bytes allocated
    and freed again around each cuBLAS op (:data:`CUBLAS_OPS`), after its output: PyTorch builds
    that allocate the cuBLAS workspace per operation instead of caching it per thread.
    """

    def __init__(self, module_path=lambda: "", device: str = "meta", op_workspace: int = 0) -> None:
        super().__init__()
        self.module_path = module_path
        self.device = device
        self.op_workspace = op_workspace
        self.phase = "setup"
        self.blocks: dict[int, Block] = {}  # live, by storage key
        self.dead: list[Block] = []
        self.events: list[Event] = []
        self.live = 0
        self._refs: dict[int, weakref.ref] = {}
        self.closed = False

    # -------------------------------------------------------------------------------- blocks
    def _key(self, t: torch.Tensor) -> tuple[int, torch.UntypedStorage] | None:
        if not isinstance(t, torch.Tensor) or t.device.type != self.device:
            return None
        storage = t.untyped_storage()
        return id(storage), storage

    def adopt(self, tensors, category: str, path: str = "") -> None:
        """Record tensors that exist before the step (parameters, inputs, optimizer state,
        workspace stand-ins) as live blocks of ``category``; storages already seen are left alone."""
        for t in tensors:
            found = self._key(t)
            if found is not None and found[0] not in self.blocks:
                self._add(found[0], found[1], category, path, "setup", "")

    def _add(self, key: int, storage: torch.UntypedStorage, category: str, path: str, phase: str, op: str):
        size = block_bytes(storage.nbytes())
        block = Block(key, size, category, path, phase, op, born=len(self.events))
        self.blocks[key] = block
        self._refs[key] = weakref.ref(storage, lambda _ref, key=key: self._free(key))
        self._record(size, phase, path, op)

    # ----------------------------------------------------------------------------- resizes
    def __enter__(self):  # noqa: D105
        self._patch_resize()
        return super().__enter__()

    def __exit__(self, *exc):  # noqa: D105
        try:
            return super().__exit__(*exc)
        finally:
            self._unpatch_resize()

    def _patch_resize(self) -> None:
        """Storages resized in place (FSDP2 frees and re-allocates unsharded parameters with
        ``untyped_storage().resize_``; no op runs) change the live total too: as torch's
        ``MemTracker`` does, ``UntypedStorage.resize_`` is wrapped while the trace is active. Only
        traces of real steps see resizes; a replay's blocks never change size."""
        original = torch.UntypedStorage.resize_
        trace = self

        def resize_(storage, size):
            block = trace.blocks.get(id(storage))
            out = original(storage, size)
            if storage.device.type == trace.device and not trace.closed:
                new = block_bytes(storage.nbytes())
                if block is None:
                    trace._add(
                        id(storage), storage, "temporaries", trace.module_path(), trace.phase, "resize_"
                    )
                elif new != block.bytes:
                    delta, block.bytes = new - block.bytes, new
                    trace._record(delta, trace.phase, trace.module_path(), "resize_")
            return out

        self._resize_original = original
        torch.UntypedStorage.resize_ = resize_

    def _unpatch_resize(self) -> None:
        original = getattr(self, "_resize_original", None)
        if original is not None:
            torch.UntypedStorage.resize_ = original
            self._resize_original = None

    def close(self) -> None:
        """Stop recording: frees after the step (the replay's own objects dying) are not part of it."""
        self.closed = True
        self._refs.clear()

    def _free(self, key: int) -> None:
        if self.closed:
            return
        block = self.blocks.pop(key, None)
        self._refs.pop(key, None)
        if block is None:
            return
        block.died = len(self.events)
        self.dead.append(block)
        self._record(-block.bytes, self.phase, self.module_path(), "free")

    def _record(self, delta: int, phase: str, path: str, op: str) -> None:
        self.live += delta
        self.events.append(Event(len(self.events), self.live, delta, phase, path, op))

    def block_of(self, t: torch.Tensor) -> Block | None:
        found = self._key(t)
        return None if found is None else self.blocks.get(found[0])

    def recategorize(self, tensors, category: str, shardable: bool = False) -> None:
        """Charge the blocks of ``tensors`` to ``category`` (gradients once backward is done);
        ``shardable``: FSDP shards them by their shape."""
        for t in tensors:
            block = self.block_of(t)
            if block is not None:
                block.category = category
                if shardable:
                    block.shard_shape, block.itemsize = tuple(t.shape), t.element_size()

    # ------------------------------------------------------------------------------ dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        out = _as_aten_allocates(func, args, kwargs or {})
        if out is None:
            out = func(*args, **(kwargs or {}))
        path = None
        for t in tree_flatten(out)[0]:
            found = self._key(t)
            if found is not None and found[0] not in self.blocks:
                if path is None:
                    path = self.module_path()
                self._add(found[0], found[1], "temporaries", path, self.phase, str(func.overloadpacket))
                if self.phase == "optimizer":  # a per-parameter temporary: FSDP shards it with its parameter
                    block = self.blocks[found[0]]
                    block.shard_shape, block.itemsize = tuple(t.shape), t.element_size()
        if self.op_workspace and func.overloadpacket.__name__ in CUBLAS_OPS:
            self._transient(self.op_workspace, "workspace", f"{func.overloadpacket} (cuBLAS workspace)")
        return out

    def _transient(self, size: int, category: str, op: str) -> None:
        """A block that lives for one event: allocated inside an op and freed before it returns."""
        path = self.module_path()
        block = Block(-len(self.events) - 1, size, category, path, self.phase, op, born=len(self.events))
        self._record(size, self.phase, path, op)
        block.died = len(self.events)
        self.dead.append(block)
        self._record(-size, self.phase, path, "free")

    # ---------------------------------------------------------------------------- saved tensors
    @contextlib.contextmanager
    def saved_tensors(self) -> Iterator[None]:
        """Within: each tensor autograd saves marks its block ``activations`` and notes the module
        that saved it (parameters are not noted; inputs are noted and stay ``inputs``)."""

        def pack(t: torch.Tensor) -> torch.Tensor:
            block = self.block_of(t)
            if block is not None and block.category != "parameters":
                # A saved input is charged to the layer that saves it but stays an input: it
                # exists before the step whether or not autograd keeps it.
                if block.category != "inputs":
                    block.category = "activations"
                block.saved_by.add(self.module_path())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield

    def all_blocks(self) -> list[Block]:
        """Every block seen, dead or alive, in birth order."""
        return sorted([*self.dead, *self.blocks.values()], key=lambda b: b.born)
