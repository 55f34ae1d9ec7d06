"""``flopkit.memory(...)``: a step's GPU memory predicted on the CPU, per layer and at its peak.

The step (:mod:`flopkit.step_memory.step`) is replayed on the meta device under
:class:`~flopkit.step_memory.cuda.CudaSemantics` (CUDA's autocast and SDPA backend) and
:class:`~flopkit.step_memory.trace.AllocationTrace` (every block's life, rounded as the caching
allocator rounds). The peak of the live bytes is the predicted ``torch.cuda.max_memory_allocated()``
of a steady-state step, measured from a ``reset_peak_memory_stats()`` just before it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import _get_current_function_mode_stack

from flopkit.checks import InputError

from .cuda import CudaSemantics, block_bytes
from .step import (
    CHECKPOINTING,
    LOSSES,
    OPTIMIZERS,
    StepHooks,
    checkpoint_blocks,
    create_optimizer_state,
    kv_cache_inputs,
    make_optimizer,
    repeated_blocks,
    run_step,
)
from .trace import CATEGORIES, AllocationTrace, Block

__all__ = [
    "LayerMemory",
    "MemoryResult",
    "memory",
    "fit_batch",
    "FitResult",
    "parse_bytes",
    "format_bytes",
    "CUBLAS_WORKSPACE",
    "CUBLASLT_WORKSPACE",
    "CUBLAS_WORKSPACE_MODES",
    "DTYPES",
    "AUTOCAST_DTYPES",
]

# cuBLAS workspace per (thread, stream) on sm90: PyTorch's default 4096 KiB x 8 (CublasHandlePool.cpp),
# allocated through the caching allocator at the first matmul of each thread. A training step uses
# two threads (the forward's and the autograd engine's), an inference step one.
CUBLAS_WORKSPACE = 32 * 1024**2
# Builds that allocate the cuBLAS workspace per operation (TORCH_CUBLAS_WORKSPACE_CACHE off) still
# cache cuBLASLt's, 1 MiB by default (CUBLASLT_WORKSPACE_SIZE), per thread.
CUBLASLT_WORKSPACE = 1024**2
CUBLAS_WORKSPACE_MODES = ("cached", "per_op")

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30})


def parse_bytes(text: str | int, argument: str = "budget") -> int:
    """``"80GiB"``, ``"80GB"``, ``"512MiB"``, ``"1024"`` -> bytes (``GiB`` = 2**30, ``GB`` = 10**9);
    errors (:class:`flopkit.checks.InputError`) name ``argument``."""
    if isinstance(text, int):
        value = text
    else:
        raw = text.strip().lower().replace(" ", "")
        number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = raw[len(number) :]
        if unit not in _UNITS or not number:
            raise InputError(argument, repr(text), "expected a size such as 80GiB, 80GB or 512MiB")
        try:
            value = int(float(number) * _UNITS[unit])
        except ValueError:
            raise InputError(argument, repr(text), "expected a size such as 80GiB") from None
    if value <= 0:
        raise InputError(argument, repr(text), "the size must be positive")
    return value


def format_bytes(n: int | float) -> str:
    """``1536`` -> ``"1.50 KiB"``; binary units."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


@dataclass
class LayerMemory:
    """One module's memory in the step.

    ``activation_bytes``: blocks autograd saved during its forward (its submodules' included, each
    block once; parameters excluded, autocast's parameter casts included); ``output_bytes``: the
    blocks of its forward output(s), summed over its calls; ``parameter_bytes``: its parameters and
    buffers (submodules' included), each rounded to 512 bytes.
    """

    path: str
    type: str
    activation_bytes: int
    output_bytes: int
    parameter_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": self.type,
            "activation_bytes": self.activation_bytes,
            "output_bytes": self.output_bytes,
            "parameter_bytes": self.parameter_bytes,
        }


@dataclass
class MemoryResult:
    """A predicted step. All sizes in bytes, as ``torch.cuda.max_memory_allocated()`` counts them.

    ``peak_bytes``: the highest live total during the step; ``steady_bytes``: live before the step
    (parameters and buffers, optimizer state, inputs, KV cache, cuBLAS workspace);
    ``parameters_bytes``, ``gradients_bytes`` (every parameter's gradient), ``optimizer_bytes``
    (state), ``workspace_bytes`` (cuBLAS); ``activations_bytes``: saved-for-backward blocks live at
    the peak; ``saved_bytes``: all the forward saved (live at the backward's start);
    ``peak_breakdown``: the peak split over :data:`~flopkit.step_memory.trace.CATEGORIES` (sums to
    ``peak_bytes``); ``peak_phase``/``peak_path``/``peak_op``: where the peak falls.
    ``timeline``: ``(event, live bytes, phase)`` after each allocation or free.
    """

    label: str
    settings: dict[str, Any]
    peak_bytes: int
    steady_bytes: int
    parameters_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    workspace_bytes: int
    inputs_bytes: int
    saved_bytes: int
    peak_phase: str
    peak_path: str
    peak_op: str
    peak_breakdown: dict[str, int]
    layers: list[LayerMemory]
    timeline: list[tuple[int, int, str]] = field(repr=False)
    sdpa_backends: dict[str, int] = field(default_factory=dict)
    assumptions: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The top-level fields (no layers, no timeline)."""
        return {
            "model": self.label,
            **self.settings,
            "peak_bytes": self.peak_bytes,
            "steady_bytes": self.steady_bytes,
            "parameters_bytes": self.parameters_bytes,
            "gradients_bytes": self.gradients_bytes,
            "optimizer_bytes": self.optimizer_bytes,
            "activations_bytes": self.activations_bytes,
            "workspace_bytes": self.workspace_bytes,
            "inputs_bytes": self.inputs_bytes,
            "saved_bytes": self.saved_bytes,
            "peak": {"phase": self.peak_phase, "module": self.peak_path, "op": self.peak_op},
            "peak_breakdown": dict(self.peak_breakdown),
            "sdpa_backends": dict(self.sdpa_backends),
        }

    def to_dict(self, timeline: bool = False) -> dict[str, Any]:
        """:meth:`summary`, the per-layer rows and the assumptions (and the timeline if asked)."""
        out = {
            **self.summary(),
            "layers": [row.to_dict() for row in self.layers],
            "assumptions": list(self.assumptions),
        }
        if timeline:
            out["timeline"] = [list(t) for t in self.timeline]
        return out

    def to_json(self, timeline: bool = False) -> str:
        return json.dumps(self.to_dict(timeline), indent=2)

    def to_rows(self) -> tuple[list[str], list[list[Any]]]:
        """Headers and one row per layer (then TOTAL): path, type, parameter, activation and output bytes."""
        headers = ["module", "type", "param bytes", "activation bytes", "output bytes"]
        body: list[list[Any]] = [
            [r.path, r.type, r.parameter_bytes, r.activation_bytes, r.output_bytes] for r in self.layers[1:]
        ]
        if self.layers:
            top = self.layers[0]
            body.append(["TOTAL", top.type, top.parameter_bytes, top.activation_bytes, top.output_bytes])
        return headers, body

    def plot(self, path: str) -> None:
        """Write the live bytes over the step (PNG), each phase in its colour, the peak marked.
        Needs matplotlib (the ``plot`` extra)."""
        try:
            import matplotlib
        except ImportError as exc:
            raise ImportError(f"plotting needs matplotlib ({exc}); pip install 'flopkit[plot]'") from None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4.5))
        gib = 1024**3
        step = [t for t in self.timeline if t[2] != "setup"]  # the state before the step: the steady line
        xs = [t[0] for t in step]
        ys = [t[1] / gib for t in step]
        phases = [t[2] for t in step]
        palette = ["#7f7f7f", "#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#9467bd", "#8c564b"]
        colours: dict[str, str] = {}
        start = 0
        for i in range(1, len(xs) + 1):  # one line per run of events of one phase
            if i == len(xs) or phases[i] != phases[start]:
                phase = phases[start]
                new = phase not in colours
                colour = colours.setdefault(phase, palette[len(colours) % len(palette)])
                end = min(i + 1, len(xs))
                ax.step(
                    xs[start:end], ys[start:end], where="post", color=colour, label=phase if new else None
                )
                start = i
        peak = max(range(len(ys)), key=ys.__getitem__) if ys else 0
        if ys:
            ax.plot([xs[peak]], [ys[peak]], "k*", markersize=12)
            ax.annotate(
                f"peak {format_bytes(self.peak_bytes)}\n{self.peak_phase}: {self.peak_path or '(model)'}",
                (xs[peak], ys[peak]),
                textcoords="offset points",
                xytext=(10, -30),
                fontsize=8,
            )
        ax.axhline(self.steady_bytes / gib, color="grey", linestyle=":", linewidth=1, label="steady state")
        ax.set_xlabel("allocation or free (event)")
        ax.set_ylabel("allocated (GiB)")
        ax.set_title(f"{self.label}: predicted GPU memory over one step")
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


# ------------------------------------------------------------------------------------- options


def _dtype(value: str | torch.dtype | None, argument: str) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    if value not in DTYPES:
        raise InputError(argument, repr(value), f"must be one of {', '.join(DTYPES)}")
    return DTYPES[value]


def _autocast(value: str | torch.dtype | None) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        if value not in (None, torch.bfloat16, torch.float16):
            raise InputError("autocast", value, "must be bf16, fp16 or none")
        return value
    if value not in AUTOCAST_DTYPES:
        raise InputError("autocast", repr(value), f"must be one of {', '.join(AUTOCAST_DTYPES)}")
    return AUTOCAST_DTYPES[value]


@dataclass
class _Plan:
    training: bool
    optimizer: str
    loss: str | None
    dtype: torch.dtype | None
    autocast: torch.dtype | None
    checkpointing: str
    kv_cache: int | None
    fsdp: int
    workspace_bytes: int | None
    cublas_workspace: str = "cached"


def _check_plan(
    training,
    optimizer,
    loss,
    dtype,
    autocast,
    checkpointing,
    kv_cache,
    fsdp,
    workspace_bytes,
    cublas_workspace="cached",
) -> _Plan:
    """Every argument checked before any model is built; errors (:class:`flopkit.checks.InputError`)
    name the argument, value and limit."""
    if optimizer is not None and optimizer not in OPTIMIZERS:
        raise InputError("optimizer", repr(optimizer), f"must be one of {', '.join(OPTIMIZERS)}")
    if loss is not None and loss not in LOSSES:
        raise InputError("loss", repr(loss), f"must be one of {', '.join(LOSSES)}")
    if checkpointing not in CHECKPOINTING:
        raise InputError("checkpointing", repr(checkpointing), f"must be one of {', '.join(CHECKPOINTING)}")
    if not isinstance(fsdp, int) or isinstance(fsdp, bool) or fsdp < 1:
        raise InputError("fsdp", repr(fsdp), "must be a number of ranks >= 1")
    if kv_cache is not None and (not isinstance(kv_cache, int) or kv_cache < 1):
        raise InputError("kv_cache", repr(kv_cache), "must be a number of cached tokens >= 1")
    if not training:
        for name, value, default in (
            ("optimizer", optimizer, None),
            ("loss", loss, None),
            ("checkpointing", checkpointing, "none"),
        ):
            if value != default:
                raise InputError(name, value, "applies only with `training`")
    if training and kv_cache is not None:
        raise InputError("kv_cache", kv_cache, "is an inference setting: it does not apply with `training`")
    if workspace_bytes is not None and workspace_bytes < 0:
        raise InputError("workspace_bytes", workspace_bytes, "must be >= 0")
    if cublas_workspace not in CUBLAS_WORKSPACE_MODES:
        raise InputError(
            "cublas_workspace", repr(cublas_workspace), f"must be one of {', '.join(CUBLAS_WORKSPACE_MODES)}"
        )
    return _Plan(
        training,
        (optimizer or "adamw") if training else "none",
        loss,
        _dtype(dtype, "dtype"),
        _autocast(autocast),
        checkpointing,
        kv_cache,
        fsdp,
        workspace_bytes,
        cublas_workspace,
    )


# --------------------------------------------------------------------------------------- model


@dataclass
class _Subject:
    label: str
    module: nn.Module
    settings: dict[str, Any]
    make_inputs: Any  # batch -> (args, kwargs, description)


def _subject(
    model, args, kwargs, batch, input_shape, seq_len, named_inputs, model_args, overrides
) -> _Subject:
    from flopkit.models import LoadedModel, load_model, model_inputs

    if isinstance(model, nn.Module):
        module = model
        if any(t.device.type != "meta" for t in (*module.parameters(), *module.buffers())):
            module = copy.deepcopy(module).to("meta")
        label = type(model).__name__
        loaded = None
    else:
        if isinstance(model, LoadedModel):
            loaded = model
        elif isinstance(model, str) and ":" in model:
            loaded = load_model(model=model, model_args=model_args)
        elif isinstance(model, str):
            loaded = load_model(model, overrides)
        else:
            raise TypeError(
                f"model must be a preset, a config file, a model spec or an nn.Module, got {model!r}"
            )
        module, label = loaded.module, loaded.label
    given = args is not None or kwargs is not None

    def make_inputs(b: int):
        if given:
            if b != batch:
                raise ValueError("explicit inputs have a fixed batch: fit_batch needs the batch to vary")
            return tuple(args or ()), dict(kwargs or {}), "given"
        if loaded is not None and loaded.config is not None:
            from flopkit.config import model_input

            x = model_input(loaded.config, module, b, "meta")
            return (x,), {}, f"{list(x.shape)} float32"
        found = model_inputs(
            module, batch=b, input_shape=input_shape, seq_len=seq_len, named=named_inputs, spec=label
        )
        return found.args, dict(found.kwargs), found.describe()

    return _Subject(label, module, {}, make_inputs)


# -------------------------------------------------------------------------------------- replay


class _ModulePath:
    """The deepest module ModTracker has entered, as a path under the root (``""`` the root)."""

    def __init__(self, tracker, root: nn.Module) -> None:
        self.tracker = tracker
        self.prefix = type(root).__name__

    def __call__(self) -> str:
        parents = [p for p in self.tracker.parents if p != "Global"]
        if not parents:
            return ""
        # ModTracker's parents is a set: two modules of one depth active at once (a module that hands
        # its input on, such as a dropout of p=0, and its sibling) tie; the name breaks the tie, so
        # the answer does not depend on the hash seed.
        deepest = max(parents, key=lambda p: (p.count("."), p))
        return deepest[len(self.prefix) + 1 :] if deepest.startswith(self.prefix + ".") else ""


@dataclass
class _Replay:
    trace: AllocationTrace
    steady_index: int
    saved_bytes: int
    outputs: dict[str, int]
    param_blocks: dict[str, list[Block]]
    sdpa: dict[str, int]
    loss: str | None
    workspace: int
    units: list[str]
    triton: bool | None  # the Triton path replayed (True), wanted but unavailable (False), no such modules


def _replay(subject: _Subject, plan: _Plan, batch: int) -> _Replay:
    from torch.distributed._tools.mod_tracker import ModTracker

    from flopkit.models import user_code

    module = subject.module
    if plan.dtype is not None:
        module.to(plan.dtype)
    module.train(plan.training)
    params = [p for p in module.parameters() if p.requires_grad]
    if plan.training and not params:
        raise InputError("training", True, f"{subject.label} has no trainable parameters: nothing to train")
    args, kwargs, _ = subject.make_inputs(batch)
    semantics = CudaSemantics(plan.autocast)
    if plan.kv_cache is not None:
        cache_dtype = plan.autocast or next(module.parameters()).dtype
        kwargs = {**kwargs, **kv_cache_inputs(module, batch, plan.kv_cache, cache_dtype, "meta")}
    optimizer = make_optimizer(plan.optimizer, params) if plan.training else None
    with semantics:
        create_optimizer_state(optimizer)
    tracker = ModTracker()
    path_of = _ModulePath(tracker, module)
    per_op = plan.cublas_workspace == "per_op"
    trace = AllocationTrace(path_of, op_workspace=CUBLAS_WORKSPACE if per_op else 0)
    workspace = plan.workspace_bytes
    if workspace is None:  # cached per thread: the forward's, and the autograd engine's in training
        workspace = (CUBLASLT_WORKSPACE if per_op else CUBLAS_WORKSPACE) * (2 if plan.training else 1)
    # Blocks that exist before the step, in the order the step finds them.
    names = dict(module.named_modules())
    param_blocks: dict[str, list[Block]] = {}
    for path, sub in names.items():
        own = list(sub.parameters(recurse=False))
        for t in (*own, *sub.buffers(recurse=False)):
            trace.adopt([t], "parameters", path)
            block = trace.block_of(t)
            if block is not None and block.path == path:
                param_blocks.setdefault(path, []).append(block)
        trace.recategorize(own, "parameters", shardable=True)
    if optimizer is not None:
        state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        trace.adopt(state, "optimizer_state")
        trace.recategorize(state, "optimizer_state", shardable=True)
    trace.adopt([t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)], "inputs")
    if plan.kv_cache is not None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        trace.adopt(_cache_tensors(cache), "inputs")
    if workspace:
        holder = torch.empty(workspace, dtype=torch.uint8, device="meta")
        trace.adopt([holder], "workspace")
    steady_index = len(trace.events)

    outputs: dict[str, int] = {}

    def output_hook(mod, _args, out):
        if trace.phase not in ("forward", "inference"):
            return
        path = getattr(mod, "_flopkit_memory_path", None)
        if path is None:
            return
        seen: set[int] = set()
        total = 0
        for t in torch.utils._pytree.tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "meta":
                storage = t.untyped_storage()
                if id(storage) not in seen:
                    seen.add(id(storage))
                    total += block_bytes(storage.nbytes())
        outputs[path] = outputs.get(path, 0) + total

    handles = []
    for path, sub in names.items():
        sub._flopkit_memory_path = path
        handles.append(sub.register_forward_hook(output_hook))
    units = repeated_blocks(module)
    restore = (
        checkpoint_blocks(
            module, units, lambda: (contextlib.nullcontext(), _recompute(semantics, semantics.enabled))
        )
        if plan.checkpointing == "blocks"
        else (lambda: None)
    )
    saved = {"bytes": 0}

    owner_of = {id(p): name.rpartition(".")[0] for name, p in module.named_parameters()}

    def after_backward(grads):
        trace.recategorize(grads, "gradients", shardable=True)
        for p in params:  # each gradient's parameter's module: FSDP reduce-scatters it with that unit
            block = trace.block_of(p.grad) if p.grad is not None else None
            if block is not None:
                block.owner = owner_of.get(id(p), "")

    def phase(name: str) -> None:
        if name == "backward":
            saved["bytes"] = sum(b.bytes for b in trace.blocks.values() if b.category == "activations")
        trace.phase = name

    hooks = StepHooks(
        phase=phase,
        autocast=semantics.autocast_region,
        saving=trace.saved_tensors,
        after_backward=after_backward,
    )
    try:
        with (
            user_code(subject.label, "the step"),
            warnings.catch_warnings(),
            _device_paths(module),
            tracker,
            semantics,
            trace,
        ):
            # ModTracker warns when a module's backward hooks fire out of order (modules called
            # outside their parent's forward, as Hugging Face's rotary embeddings are); the
            # attribution of those ops is then to the nearest module entered, the bytes unchanged.
            warnings.filterwarnings("ignore", message="The module hierarchy tracking")
            loss = run_step(
                module, args, kwargs, training=plan.training, optimizer=optimizer, loss=plan.loss, hooks=hooks
            )
    finally:
        trace.close()
        restore()
        for handle in handles:
            handle.remove()
        for sub in names.values():
            sub.__dict__.pop("_flopkit_memory_path", None)
    if not plan.training:
        saved["bytes"] = 0
    sdpa: dict[str, int] = {}
    for choice in semantics.sdpa_choices:
        sdpa[choice.backend] = sdpa.get(choice.backend, 0) + 1
    wants = any(getattr(m, "use_triton", False) is True for m in module.modules())
    triton = triton_path(module) if wants else None
    return _Replay(
        trace, steady_index, saved["bytes"], outputs, param_blocks, sdpa, loss, workspace, units, triton
    )


def triton_path(module: nn.Module) -> bool:
    """Whether ``module`` runs flopkit's Triton kernels on an H100: a submodule with
    ``use_triton=True`` and the triton package importable here (the kernels' custom ops, whose
    fakes and autograd the replay runs, need it)."""
    from flopkit.kernels._dispatch import triton_available

    return triton_available() and any(getattr(m, "use_triton", False) is True for m in module.modules())


def _device_paths(module: nn.Module) -> contextlib.AbstractContextManager:
    """The replay of flopkit's kernels as they run on CUDA (:func:`flopkit.kernels.replay_cuda_paths`)
    for a model on the Triton path; nothing for any other model."""
    if not triton_path(module):
        return contextlib.nullcontext()
    from flopkit.kernels import replay_cuda_paths

    return replay_cuda_paths()


@contextlib.contextmanager
def _recompute(semantics: CudaSemantics, enabled: bool) -> Iterator[None]:
    """A checkpointed block's recompute in the backward: the autograd engine runs it with no torch
    function mode on the stack, so the CUDA semantics are entered again, with the autocast state of
    the forward (what ``torch.utils.checkpoint`` does for ``torch.autocast`` on a GPU)."""
    with contextlib.ExitStack() as stack:
        if semantics not in _get_current_function_mode_stack():
            stack.enter_context(semantics)
        stack.enter_context(semantics.autocast_region(enabled))
        yield


def _cache_tensors(cache) -> list[torch.Tensor]:
    found = []
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                found.append(t)
    return found


# ------------------------------------------------------------------------------ intervals, FSDP


def _intervals(replay: _Replay, plan: _Plan) -> list[tuple[int, int, int, Block | None]]:
    """``(bytes, start, end, block)`` for every block: live on events ``start <= i < end``.

    With ``fsdp=N`` (FSDP2 ``fully_shard`` on each repeated block, a *unit*, and the root) the
    blocks of parameters, optimizer state and gradients are sharded (:meth:`Block.sharded_bytes`),
    and FSDP2's own buffers are added as a traced FSDP2 step allocates them (CPU, fake process
    group; ``tests/memory``): in the forward each unit's all-gather output (its parameters, flat,
    each padded to ``N`` rows) from the unit's start until the next unit's parameters are copied
    out of it, and its unsharded parameters while it runs; in the backward the same, each unit's
    all-gather issued as the unit before it starts (FSDP2's backward prefetch), and at each unit's
    end its gradients copied into a flat reduce-scatter input (kept until the next unit's
    reduce-scatter; the last one freed at once) and replaced by their shards; the optimizer steps
    the shards, so its per-parameter temporaries are shards too. The root's own parameters stay
    gathered from the forward's start to the backward's end, and its gradients are reduce-scattered
    when the backward ends."""
    trace = replay.trace
    end = len(trace.events)
    blocks = trace.all_blocks()
    spans = [(b.bytes, b.born, b.died if b.died is not None else end, b) for b in blocks]
    if plan.fsdp == 1:
        return spans
    n = plan.fsdp
    ranges = _unit_ranges(trace, replay.units)

    def unit_of(path: str) -> str:
        return next((u for u in replay.units if path == u or path.startswith(u + ".")), "")

    params: dict[str, list[Block]] = {}
    for p, bs in replay.param_blocks.items():
        params.setdefault(unit_of(p), []).extend(b for b in bs if b.shard_shape is not None)
    unsharded = {u: sum(b.bytes for b in bs) for u, bs in params.items()}
    gathered = {
        u: block_bytes(sum(b.sharded_bytes(n, padded=False) * n for b in bs)) for u, bs in params.items()
    }
    backward = [i for i, e in enumerate(trace.events) if e.phase == "backward"]
    backward_end = backward[-1] + 1 if backward else end
    out = []
    for size, start, stop, b in spans:
        if b.category in ("parameters", "optimizer_state") or b.phase == "optimizer":
            # The optimizer steps the shards: its state and its per-parameter temporaries are shards.
            out.append((b.sharded_bytes(n), start, stop, b))
        elif b.category == "gradients":
            # Reduce-scattered at the end of the unit's backward (the root's: of the backward).
            unit = unit_of(b.owner or "")
            cut = ranges.get(("backward", unit), (None, backward_end))[1] if unit else backward_end
            cut = min(max(cut, start), stop)
            out.append((size, start, cut, b))
            out.append((b.sharded_bytes(n), cut, stop, b))
        else:
            out.append((size, start, stop, b))
    phases = ("forward", "backward") if plan.training else ("inference",)
    steps = [i for i, e in enumerate(trace.events) if e.phase in phases]
    if not steps:
        return out
    first, last = steps[0], steps[-1] + 1
    if unsharded.get(""):  # the root's own parameters
        out.append((unsharded[""], first, last, None))
        out.append((gathered[""], first, first + 1, None))
    for phase in phases:
        order = [u for u in replay.units if (phase, u) in ranges]
        if phase == "backward":
            order.reverse()
        phase_end = max(i for i, e in enumerate(trace.events) if e.phase == phase) + 1
        for k, unit in enumerate(order):
            start, stop = ranges[(phase, unit)]
            nxt = ranges[(phase, order[k + 1])] if k + 1 < len(order) else None
            out.append((unsharded.get(unit, 0), start, stop, None))
            if phase == "backward":
                # Gathered once the unit before it has its own parameters copied out (the first
                # unit: at its own start); freed once copied out itself. Two all-gather outputs
                # are never live together in the backward.
                gather_at = ranges[(phase, order[k - 1])][0] + 1 if k else start
                out.append((gathered.get(unit, 0), gather_at, start + 1, None))
                # Reduce-scatter input: the unit's gradients, flat, until the next reduce-scatter
                # (the last unit's: freed by FSDP2's end-of-backward right after its own).
                out.append((gathered.get(unit, 0), stop, nxt[1] if nxt else stop + 1, None))
            else:
                out.append((gathered.get(unit, 0), start, nxt[0] + 1 if nxt else phase_end, None))
    return out


def _unit_ranges(trace: AllocationTrace, units: Sequence[str]) -> dict[tuple[str, str], tuple[int, int]]:
    ranges: dict[tuple[str, str], tuple[int, int]] = {}
    for e in trace.events:
        for unit in units:
            if e.path == unit or e.path.startswith(unit + "."):
                key = (e.phase, unit)
                lo, hi = ranges.get(key, (e.index, e.index))
                ranges[key] = (min(lo, e.index), max(hi, e.index + 1))
                break
    return ranges


def _live(spans, n_events: int) -> list[int]:
    diff = [0] * (n_events + 1)
    for size, start, stop, _ in spans:
        if stop > start:
            diff[start] += size
            diff[stop] -= size
    live, total = [], 0
    for i in range(n_events):
        total += diff[i]
        live.append(total)
    return live


# ------------------------------------------------------------------------------------- results


def _layers(module: nn.Module, replay: _Replay, depth: int) -> list[LayerMemory]:
    saved = [b for b in replay.trace.all_blocks() if b.saved_by]
    rows = []
    for path, sub in module.named_modules():
        level = 0 if not path else path.count(".") + 1
        if level > depth:
            continue
        inside = (lambda p, path=path: p == path or p.startswith(path + ".")) if path else (lambda p: True)
        activation = sum(b.bytes for b in saved if any(inside(p) for p in b.saved_by))
        params = sum(b.bytes for p, bs in replay.param_blocks.items() if inside(p) for b in bs)
        rows.append(LayerMemory(path, type(sub).__name__, activation, replay.outputs.get(path, 0), params))
    return rows


def memory(
    model: str | nn.Module,
    *,
    args: Sequence[torch.Tensor] | None = None,
    kwargs: Mapping[str, torch.Tensor] | None = None,
    batch: int = 1,
    input_shape: tuple[int, ...] | None = None,
    seq_len: int | None = None,
    named_inputs: Sequence[tuple[str, tuple[int, ...], torch.dtype]] = (),
    model_args: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    training: bool = False,
    optimizer: str | None = None,
    loss: str | None = None,
    dtype: str | torch.dtype | None = None,
    autocast: str | torch.dtype | None = None,
    checkpointing: str = "none",
    kv_cache: int | None = None,
    fsdp: int = 1,
    workspace_bytes: int | None = None,
    cublas_workspace: str = "cached",
    depth: int = 2,
) -> MemoryResult:
    """Predict the GPU memory of one steady-state step of ``model`` on an H100, without a GPU.

    ``model``: a preset or YAML/JSON config (with ``overrides``), a model spec
    (``timm:resnet50``, ``hf:gpt2`` with ``model_args``, ``file.py:fn``), or an ``nn.Module`` (a
    copy is moved to the meta device). Inputs: ``args``/``kwargs`` (meta tensors, fixed batch), or
    made like ``flopkit report``'s: ``batch`` with ``input_shape`` (per sample), ``seq_len`` (int64
    ids ``[batch, seq_len]``) and ``named_inputs``.

    ``training``: forward, loss (``ce``/``mse``, default by the output), backward,
    ``optimizer.step()`` (``adamw`` by default, ``sgd``, ``none``), ``zero_grad(set_to_none=True)``,
    after a first step created the optimizer state. ``dtype``: the parameters' dtype; ``autocast``:
    ``bf16``/``fp16`` autocast of the forward; ``checkpointing="blocks"``: every repeated block
    under ``torch.utils.checkpoint`` (non-reentrant). ``kv_cache=L``: inference with a Hugging Face
    ``DynamicCache`` holding ``L`` tokens. ``fsdp=N``: per-rank memory with FSDP2 ``fully_shard``
    on each repeated block and the root. ``cublas_workspace``: ``cached`` (PyTorch's long-standing
    default: one 32 MiB workspace per thread that runs matmuls, kept) or ``per_op`` (builds that
    allocate it around each cuBLAS op and keep only cuBLASLt's 1 MiB per thread);
    ``workspace_bytes``: the kept workspace bytes, overriding those defaults (2 threads training, 1
    inference).
    """
    plan = _check_plan(
        training,
        optimizer,
        loss,
        dtype,
        autocast,
        checkpointing,
        kv_cache,
        fsdp,
        workspace_bytes,
        cublas_workspace,
    )
    if batch < 1:
        raise InputError("batch", batch, "must be >= 1")
    if depth < 0:
        raise InputError("depth", depth, "must be >= 0")
    subject = _subject(model, args, kwargs, batch, input_shape, seq_len, named_inputs, model_args, overrides)
    return _predict(subject, plan, batch, depth)


def _predict(subject: _Subject, plan: _Plan, batch: int, depth: int) -> MemoryResult:
    replay = _replay(subject, plan, batch)
    trace = replay.trace
    spans = _intervals(replay, plan)
    n_events = len(trace.events)
    live = _live(spans, n_events)
    steady_at = max(replay.steady_index - 1, 0)
    steady = live[steady_at] if live else 0
    step = range(replay.steady_index, n_events)
    peak_at = max(step, key=live.__getitem__) if len(step) else steady_at
    peak = max(live[peak_at], steady)
    breakdown = dict.fromkeys(CATEGORIES, 0)
    for size, start, stop, block in spans:
        if start <= peak_at < stop:
            category = block.category if block is not None else "parameters"
            breakdown[category] += size
    event = trace.events[peak_at] if trace.events else None
    blocks = trace.all_blocks()

    def total(category: str) -> int:
        return sum(b.bytes for b in blocks if b.category == category)

    n = plan.fsdp
    params = sum(b.sharded_bytes(n) for b in blocks if b.category == "parameters")
    grads = sum(b.sharded_bytes(n) for b in blocks if b.category == "gradients")
    optim = sum(b.sharded_bytes(n) for b in blocks if b.category == "optimizer_state")
    settings = {
        "batch": batch,
        "training": plan.training,
        "optimizer": plan.optimizer if plan.training else None,
        "loss": replay.loss,
        "dtype": str(plan.dtype or next(subject.module.parameters()).dtype).removeprefix("torch."),
        "autocast": str(plan.autocast).removeprefix("torch.") if plan.autocast else None,
        "checkpointing": plan.checkpointing,
        "checkpointed_blocks": len(replay.units) if plan.checkpointing == "blocks" else 0,
        "kv_cache": plan.kv_cache,
        "fsdp": plan.fsdp,
    }
    timeline = [(e.index, live[e.index], e.phase) for e in trace.events]
    return MemoryResult(
        label=subject.label,
        settings=settings,
        peak_bytes=peak,
        steady_bytes=steady,
        parameters_bytes=params,
        gradients_bytes=grads,
        optimizer_bytes=optim,
        activations_bytes=breakdown["activations"],
        workspace_bytes=replay.workspace,
        inputs_bytes=total("inputs"),
        saved_bytes=replay.saved_bytes,
        peak_phase=event.phase if event else "",
        peak_path=event.path if event else "",
        peak_op=event.op if event else "",
        peak_breakdown=breakdown,
        layers=_layers(subject.module, replay, depth),
        timeline=timeline,
        sdpa_backends=replay.sdpa,
        assumptions=_assumptions(plan, replay),
    )


def _workspace_note(plan: _Plan, kept: int) -> str:
    threads = "the forward's and the autograd engine's threads" if plan.training else "one thread"
    if plan.workspace_bytes is not None:
        kept_text = f"{format_bytes(kept)} kept (given)"
    elif plan.cublas_workspace == "cached":
        kept_text = f"{format_bytes(kept)} kept: 32 MiB for each of {threads}"
    else:
        kept_text = f"{format_bytes(kept)} kept: cuBLASLt's 1 MiB for each of {threads}"
    if plan.cublas_workspace == "per_op":
        return f"cuBLAS workspace per operation: 32 MiB around each GEMM; {kept_text}."
    return f"cuBLAS workspace cached per thread: {kept_text}."


def _assumptions(plan: _Plan, replay: _Replay) -> list[str]:
    notes = [
        "Predicts torch.cuda.max_memory_allocated() of a steady-state step on one H100 (sm90), measured "
        "from reset_peak_memory_stats() just before it; every block rounded up to 512 bytes.",
        _workspace_note(plan, replay.workspace),
        "Not modelled: cuDNN convolution workspaces and batch-norm reserve space, kernels' internal "
        "scratch (except attention's and mse_loss's), NCCL buffers, and the allocator's unsplit blocks "
        "(a reused cached block larger than the request counts whole).",
    ]
    if replay.triton is not None:
        notes.append(
            "flopkit's Triton path replayed through its custom ops' fakes and autograd."
            if replay.triton
            else "use_triton modules replayed on the PyTorch reference path: triton is not importable here."
        )
    if replay.sdpa:
        notes.append(
            "SDPA backends (H100 priority flash > memory-efficient > math): "
            + ", ".join(f"{k} x{v}" for k, v in sorted(replay.sdpa.items()))
            + "."
        )
    if plan.fsdp > 1:
        notes.append(
            f"FSDP2 over {plan.fsdp} ranks: parameters, gradients and optimizer state sharded to ceil(dim0/"
            f"{plan.fsdp}) rows; each repeated block's unsharded parameters held while it runs, the next "
            "block's all-gather issued as it starts; root parameters held from the forward to the end of "
            "the backward; communication buffers not modelled."
        )
    return notes


# ------------------------------------------------------------------------------------------- fit


@dataclass
class FitResult:
    """The largest batch whose predicted peak fits ``budget_bytes``, its result, and the batches tried."""

    batch: int
    budget_bytes: int
    result: MemoryResult
    tried: dict[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "fit_batch": self.batch,
            "budget_bytes": self.budget_bytes,
            "peak_bytes": self.result.peak_bytes,
            "tried": {str(k): v for k, v in sorted(self.tried.items())},
            "result": self.result.to_dict(),
        }


def fit_batch(
    model: str | nn.Module, budget: int | str, *, max_batch: int = 1 << 20, depth: int = 2, **options
) -> FitResult:
    """The largest batch (``1 <= batch <= max_batch``) whose :func:`memory` peak is at most
    ``budget`` (bytes or ``"80GiB"``): doubling from 1, then bisection. Raises ValueError when even
    the steady state (parameters, optimizer state, workspace) does not fit, or batch 1 does not."""
    budget_bytes = parse_bytes(budget)
    if "batch" in options:
        raise InputError("batch", options["batch"], "fit_batch searches the batch: do not give it")
    for name in ("args", "kwargs"):
        if options.get(name) is not None:
            raise InputError(name, None, "fit_batch varies the batch: give input shapes, not fixed inputs")
    keys = (
        "training",
        "optimizer",
        "loss",
        "dtype",
        "autocast",
        "checkpointing",
        "kv_cache",
        "fsdp",
        "workspace_bytes",
        "cublas_workspace",
    )
    plan = _check_plan(
        *(
            options.pop(k, d)
            for k, d in zip(
                keys, (False, None, None, None, None, "none", None, 1, None, "cached"), strict=True
            )
        )
    )
    subject = _subject(
        model,
        None,
        None,
        1,
        options.pop("input_shape", None),
        options.pop("seq_len", None),
        options.pop("named_inputs", ()),
        options.pop("model_args", None),
        options.pop("overrides", ()),
    )
    if options:
        raise TypeError(f"fit_batch got unexpected options: {', '.join(options)}")
    tried: dict[int, MemoryResult] = {}

    def run(b: int) -> MemoryResult:
        if b not in tried:
            tried[b] = _predict(subject, plan, b, depth)
        return tried[b]

    first = run(1)
    if first.steady_bytes > budget_bytes:
        raise InputError(
            "budget",
            format_bytes(budget_bytes),
            f"below the steady state of {subject.label} ({format_bytes(first.steady_bytes)}: parameters, "
            "optimizer state, workspace)",
        )
    if first.peak_bytes > budget_bytes:
        raise InputError(
            "budget", format_bytes(budget_bytes), f"even batch 1 peaks at {format_bytes(first.peak_bytes)}"
        )
    # Doubling brackets the answer; then interpolation on the bracket (the peak grows about
    # linearly with the batch once activations dominate), alternating with bisection so that the
    # bracket at least halves every two steps even where the peak is flat (an optimizer-step peak).
    lo, hi = 1, 2
    while hi <= max_batch and run(hi).peak_bytes <= budget_bytes:
        lo, hi = hi, hi * 2
    if hi > max_batch:
        hi = max_batch + 1
        if lo == max_batch:
            return FitResult(lo, budget_bytes, tried[lo], {b: r.peak_bytes for b, r in tried.items()})
    bisect = False
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if not bisect and hi in tried:
            p_lo, p_hi = tried[lo].peak_bytes, tried[hi].peak_bytes
            guess = lo + (budget_bytes - p_lo) * (hi - lo) // max(p_hi - p_lo, 1)
            if lo < guess < hi:
                mid = guess
        bisect = not bisect
        if run(mid).peak_bytes <= budget_bytes:
            lo = mid
        else:
            hi = mid
    return FitResult(lo, budget_bytes, tried[lo], {b: r.peak_bytes for b, r in tried.items()})
