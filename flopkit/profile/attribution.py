"""Charge every profiled op's time to the module that caused it, forward and backward.

The mechanism (exact, no heuristics on names or shapes):

1. **Forward: module ranges.** :class:`ModuleRanges` wraps each module of interest in a
   ``record_function`` range named ``flopkit.module::PATH`` (a forward pre-hook opens it, a forward
   hook closes it; a module run through ``forward_residual`` instead of ``__call__``, such as
   ``ViT5Block.norm2``, is wrapped the same way). The profiler nests every op inside the ranges
   open when it ran, so an op belongs to its *innermost* enclosing range.
2. **Backward: autograd sequence numbers.** When grad mode is on, the dispatcher records each
   op with the autograd sequence number that the node it creates will carry; the engine records
   every backward node as ``autograd::engine::evaluate_function: XBackward0`` with that same
   number. A sequence number is owned by the last forward op that recorded it (the one that
   created the node: after it the counter moves on), and every op inside the backward node,
   with its kernels, is charged to that owner's module. Gradient accumulation into a parameter
   (``AccumulateGrad``) has no forward op: its sequence number is the largest possible, and the
   engine's ready queue runs the highest number first, so it runs on the same thread right
   after the backward node that produced the gradient, whose module it is charged to.
   (Module backward hooks with ranges were the alternative: they add a node per module
   boundary, cost Python time per call, and a backward range cannot isolate one module's nodes
   when the engine interleaves them; the numbers are exact and free.)
3. **What is charged.** On CUDA the device time of the kernels an event launched (the profiler
   links each kernel to the innermost op or range open at its launch through its correlation
   id); on CPU an op's self CPU time. The CPU time of a range itself (Python between ops) is
   host time, not op time: it is reported separately, as each row's host ms.

Ops outside every range (the loss is wrapped in ``flopkit.loss``, the ``backward()`` call in
``flopkit.backward``, both charged to :data:`LOSS`) land in :data:`UNATTRIBUTED`; a correct run
leaves it at zero, and the step summary reports the attributed share.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "RANGE_PREFIX",
    "LOSS_RANGE",
    "BACKWARD_RANGE",
    "LOSS",
    "UNATTRIBUTED",
    "BACKWARD_NODE_PREFIX",
    "OpEvent",
    "Attribution",
    "Span",
    "events_from_profiler",
    "attribute",
    "ModuleRanges",
    "loss_range",
    "under",
]

RANGE_PREFIX = "flopkit.module::"
LOSS_RANGE = "flopkit.loss"
BACKWARD_RANGE = "flopkit.backward"
BACKWARD_NODE_PREFIX = "autograd::engine::evaluate_function: "
LOSS = "(loss)"
UNATTRIBUTED = "(unattributed)"


@dataclass
class OpEvent:
    """One profiler event on a host thread, reduced to what attribution needs.

    ``parent`` indexes the enclosing event on the same thread (None at top level); ``time_us`` is
    what the event itself is charged (its kernels' device time on CUDA, its self CPU time on CPU);
    ``host_us`` its wall duration on the host.
    """

    name: str
    thread: int
    start_us: float
    host_us: float
    time_us: float
    parent: int | None = None
    sequence_nr: int = -1
    is_range: bool = False


@dataclass(frozen=True)
class Span:
    """A host interval owned by a module: one of its ranges, or one of its backward nodes.
    ``enclosing`` is the owner of the nearest span around it (None at top level)."""

    owner: str
    phase: str
    host_us: float
    enclosing: str | None


@dataclass
class Attribution:
    """Charged time per owner path, in µs summed over the profiled steps.

    ``forward``/``backward`` map an owner (a module path, :data:`LOSS` or :data:`UNATTRIBUTED`)
    to the time charged to it directly (not including its submodules). ``spans`` are the
    host-side intervals: every flopkit range and backward node, with its owner. ``names``
    counts, per ``(phase, owner)``, the events charged to it (ranges excluded).
    """

    forward: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    backward: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    spans: list[Span] = field(default_factory=list)
    names: dict[tuple[str, str], Counter] = field(default_factory=lambda: defaultdict(Counter))
    total_us: float = 0.0

    @property
    def attributed_us(self) -> float:
        """Time charged to module paths and the loss, i.e. everything but :data:`UNATTRIBUTED`."""
        return sum(v for d in (self.forward, self.backward) for k, v in d.items() if k != UNATTRIBUTED)

    def subtree(self, path: str, phase: str) -> float:
        """Time of ``path`` and every module under it (``phase`` ``"forward"`` or ``"backward"``)."""
        charged = self.forward if phase == "forward" else self.backward
        return sum(v for k, v in charged.items() if under(k, path))

    def host_subtree(self, path: str, phase: str | None = None) -> float:
        """Host µs of ``path`` and its submodules: the spans they own that no span of theirs
        encloses (a block's range, not also the ranges of its layers inside it)."""
        return sum(
            s.host_us
            for s in self.spans
            if (phase is None or s.phase == phase)
            and under(s.owner, path)
            and (s.enclosing is None or not under(s.enclosing, path))
        )


def under(path: str, ancestor: str) -> bool:
    """True if module ``path`` is ``ancestor`` or inside it (``""`` is the whole model; a pseudo
    row such as ``(loss)`` is under nothing but itself)."""
    if path.startswith("("):
        return path == ancestor
    return path == ancestor or ancestor == "" or path.startswith(ancestor + ".")


def events_from_profiler(function_events: Iterable, device: str) -> list[OpEvent]:
    """``torch.profiler`` ``FunctionEvent``\\ s -> :class:`OpEvent`\\ s of the host threads.

    ``device`` ``"cuda"``: an event is charged the summed duration of its own kernels
    (``FunctionEvent.kernels``); ``"cpu"``: its self CPU time.
    """
    from torch.autograd import DeviceType

    host = [e for e in function_events if e.device_type == DeviceType.CPU and not e.is_async]
    index = {id(e): i for i, e in enumerate(host)}
    out = []
    for e in host:
        if device == "cuda":
            # A kernel launched outside any op (Python code inside a range) links to the range.
            charged = sum(k.duration for k in e.kernels)
        else:
            # A range's self CPU time is Python between ops: host time, not op time.
            charged = 0.0 if e.is_user_annotation else e.self_cpu_time_total
        parent = e.cpu_parent
        out.append(
            OpEvent(
                name=e.name,
                thread=e.thread,
                start_us=e.time_range.start,
                host_us=e.time_range.elapsed_us(),
                time_us=float(charged),
                parent=index.get(id(parent)) if parent is not None else None,
                sequence_nr=e.sequence_nr,
                is_range=bool(e.is_user_annotation),
            )
        )
    return out


def _range_owner(name: str) -> tuple[str, str] | None:
    """``(phase, owner)`` of one of flopkit's ranges, else None."""
    if name.startswith(RANGE_PREFIX):
        return "forward", name[len(RANGE_PREFIX) :]
    if name == LOSS_RANGE:
        return "forward", LOSS
    if name == BACKWARD_RANGE:  # the backward() call: seeding the gradient, outside any node
        return "backward", LOSS
    return None


def attribute(events: list[OpEvent]) -> Attribution:
    """Charge each event's ``time_us`` to an owner and phase (see the module docstring).

    Walking up from an event, the first of these decides: a flopkit range (its module, forward;
    ``flopkit.grad::`` ranges count as backward), or a backward node (the module owning its
    sequence number, backward). Events with neither go to :data:`UNATTRIBUTED` (forward).
    """

    def classify(i: int) -> tuple[str, str] | None:
        j: int | None = i
        while j is not None:
            e = events[j]
            if e.is_range:
                found = _range_owner(e.name)
                if found is not None:
                    return found
            elif e.name.startswith(BACKWARD_NODE_PREFIX):
                return "backward", f"#{j}"
            j = e.parent
        return None

    owner_of: list[tuple[str, str] | None] = [classify(i) for i in range(len(events))]
    # Which module owns each sequence number: the latest-starting forward op that recorded it.
    seq_owner: dict[int, tuple[float, str]] = {}
    for e, found in zip(events, owner_of, strict=True):
        if e.sequence_nr < 0 or e.is_range or found is None or found[0] != "forward":
            continue
        best = seq_owner.get(e.sequence_nr)
        if best is None or e.start_us >= best[0]:
            seq_owner[e.sequence_nr] = (e.start_us, found[1])

    # The module of each backward node: its sequence number's owner; AccumulateGrad (no number)
    # takes the owner of the node that ran just before it on its thread.
    node_owner: dict[int, str] = {}
    nodes = [i for i, e in enumerate(events) if e.name.startswith(BACKWARD_NODE_PREFIX)]
    previous: dict[int, str] = {}
    for i in sorted(nodes, key=lambda i: events[i].start_us):
        e = events[i]
        if e.sequence_nr >= 0:
            owner = seq_owner[e.sequence_nr][1] if e.sequence_nr in seq_owner else UNATTRIBUTED
            previous[e.thread] = owner
        else:
            owner = previous.get(e.thread, UNATTRIBUTED)
        node_owner[i] = owner

    def resolve(found: tuple[str, str] | None) -> tuple[str, str]:
        if found is None:
            return "forward", UNATTRIBUTED
        phase, owner = found
        if owner.startswith("#"):
            return phase, node_owner[int(owner[1:])]
        return phase, owner

    result = Attribution()
    span_owner: dict[int, tuple[str, str]] = {}
    for i, e in enumerate(events):
        phase, owner = resolve(owner_of[i])
        if e.time_us:
            charged = result.forward if phase == "forward" else result.backward
            charged[owner] += e.time_us
            result.total_us += e.time_us
        if not e.is_range:
            result.names[phase, owner][e.name] += 1
        is_span = (e.is_range and _range_owner(e.name) is not None and e.name != BACKWARD_RANGE) or (
            e.name.startswith(BACKWARD_NODE_PREFIX)
        )
        if is_span and owner != UNATTRIBUTED:
            span_owner[i] = (phase, owner)
            j = e.parent
            while j is not None and j not in span_owner:
                j = events[j].parent
            enclosing = span_owner[j][1] if j is not None else None
            result.spans.append(Span(owner, phase, e.host_us, enclosing))
    return result


class ModuleRanges(contextlib.AbstractContextManager):
    """Open a ``flopkit.module::PATH`` profiler range around every call of the given modules.

    ``modules`` maps paths to modules (``""`` is the root). Calls through ``__call__`` are
    bracketed by forward pre/post hooks; a module that also runs through ``forward_residual``
    (``ViT5Block.norm2``) has that method wrapped on the instance.

    Everything is removed on exit. ``io_bytes`` (when ``record_io=True``) accumulates the bytes
    of each module's tensor inputs and outputs over the calls made while active.
    """

    def __init__(
        self,
        modules: dict[str, nn.Module],
        record_io: bool = False,
    ) -> None:
        self.modules = modules
        self.record_io = record_io
        self.io_bytes: dict[str, dict[str, int]] = defaultdict(lambda: {"inputs": 0, "outputs": 0})
        self._handles: list = []
        self._wrapped: list[nn.Module] = []
        self._open: dict[str, list] = defaultdict(list)

    # ------------------------------------------------------------------ ranges
    def _enter(self, name: str) -> None:
        self._open[name].append(torch.ops.profiler._record_function_enter_new(name, None))

    def _exit(self, name: str) -> None:
        stack = self._open.get(name)
        if stack:
            torch.ops.profiler._record_function_exit._RecordFunction(stack.pop())

    def _count(self, path: str, key: str, value) -> None:
        if self.record_io:
            self.io_bytes[path][key] += _tensor_bytes(value)

    def __enter__(self) -> ModuleRanges:
        for path, module in self.modules.items():
            name = RANGE_PREFIX + path

            def pre(mod, args, kwargs, name=name, path=path):
                self._count(path, "inputs", (args, kwargs))
                self._enter(name)

            def post(mod, args, kwargs, output, name=name, path=path):
                self._exit(name)
                self._count(path, "outputs", output)

            self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            self._handles.append(module.register_forward_hook(post, with_kwargs=True, always_call=True))
            if "forward_residual" in dir(type(module)):
                self._wrap_residual(module, name, path)
        return self

    def _wrap_residual(self, module: nn.Module, name: str, path: str) -> None:
        method = module.forward_residual

        def forward_residual(*args, **kwargs):
            self._count(path, "inputs", (args, kwargs))
            self._enter(name)
            try:
                output = method(*args, **kwargs)
            finally:
                self._exit(name)
            self._count(path, "outputs", output)
            return output

        module.forward_residual = forward_residual
        self._wrapped.append(module)

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        for module in self._wrapped:
            del module.forward_residual
        self._handles, self._wrapped = [], []
        for name, stack in self._open.items():
            while stack:
                self._exit(name)


def _tensor_bytes(value) -> int:
    from torch.utils._pytree import tree_leaves

    return sum(t.numel() * t.element_size() for t in tree_leaves(value) if isinstance(t, torch.Tensor))


@contextlib.contextmanager
def loss_range(backward: bool = False) -> Iterator[None]:
    """The range around the loss (``flopkit.loss``) or the ``backward()`` call (``flopkit.backward``)."""
    with torch.profiler.record_function(BACKWARD_RANGE if backward else LOSS_RANGE):
        yield
