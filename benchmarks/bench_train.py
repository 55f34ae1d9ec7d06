"""ViT-5 training step, flopkit against nvSubquadratic's own model, and the per-op host overhead.

Run on a CUDA machine from the repository root:

    python -m benchmarks.bench_train --upstream PATH_TO_nvSubquadratic [--presets vit5-small,vit5-base]
        [--modes eager,compile,reduce-overhead,max-autotune] [--sections host,syncs,pyprof,steps] [--batch N] [--out DIR]
        [--tile DGELU_TMA_TILE=128,256,64,8,8,3,2,2 --tile "QK_FUSED_FWD=1;QK_FWD_TILE=128,32,8,3,0" ...]

``steps``: one training step is forward + cross-entropy + backward + ``zero_grad(set_to_none=True)``,
bf16 weights under bf16 autocast, no optimizer: nvSubquadratic's
``benchmarks/vit5_imagenet/bench_vit5_compile.py`` setup. Its ``ViT5ClassificationNet`` is built
exactly as that script builds it (channels-last images in ``{"input", "condition"}``, drop-path 0.05)
from the source tree given with ``--upstream``; without one its rows are skipped and the reason
printed. vit5-small runs at batch 256, vit5-base at batch 128. Per row: wall ms/step (the mean
over ``--steps`` timed steps after warm-up, as upstream's script, taken ``--repeats`` times; the
median is reported and every loop kept in the JSON), images/s, MFU (the rule in docs/benchmarks.md:
the step's matmul + attention FLOPs as ``flopkit report --training`` counts them, over the bf16
matmul rate measured at the start of the run), the GPU kernel time per step (union of kernel intervals under ``torch.profiler``) and
the host-bound share ``1 - gpu / wall``.

``host``: per op, at ViT-5-Base shapes (batch 128), the host time per call (issuing a loop of calls
without waiting on the GPU), the device time per call (kernel intervals under the profiler), and
the overhead: loop wall time per call minus device time. Forward alone, and forward + backward.
Each loop runs five times and the table keeps the fastest (the device host is shared: its noise
moved single loops by up to 15 µs per call between runs).
For ``rms_norm`` the peers run the same loop: ``F.rms_norm``, QuACK and Liger-Kernel (when
importable). An empty Triton kernel gives the launch cost itself.

``syncs``: every synchronizing CUDA call of two eager training steps per preset and ``--models``
row (``torch.cuda.set_sync_debug_mode``), with the Python frames that made it. An eager step that
waits on the GPU issues nothing while it waits, so the GPU idles until the host catches up: the
check behind an eager row's host-bound share. Printed under the table, kept in the JSON's
``syncs``.

``pyprof``: ``cProfile`` over five eager steps per preset and ``--models`` row: the host's time
a step under the profiler and the functions that spend the most of it themselves (kept in the
JSON's ``pyprof``): where an eager step's host time goes, when its issue time (an eager row's
``host:`` line) comes near the GPU's.

``host`` first measures the issue's per-op number on the eager hot path: host µs per call of each
op's forward (gradients on) and of its backward node, less one flopkit ``launch()`` per kernel the
pass launches (see :func:`hot_path_rows`).

``host`` also measures each op's *marginal* host cost inside a graph, the number that adds up in a
training step: a chain ``y = op(y, w_i)`` of ``K`` calls (distinct weights, so autograd adds no
gradient sums) run forward + backward, timed for ``K = 2`` and ``K = 18``; ``(t18 - t2) / 16`` is
one more op's forward + backward host time with the ``backward()`` call's fixed cost cancelled.
Small ``[64, 64]`` tensors keep the GPU ahead of the host, so the loop time is host time. The
reference row is an autograd Function that launches one empty Triton kernel forward and one
backward: the floor any Python-level op pays.

Writes ``bench_train_DEVICE.json`` and ``.md`` under ``--out`` (default ``$OUT`` or ``.``;
``benchmarks/_harness.py``) and prints the tables last. The copy and matmul roofs are the
harness's, measured once at the start of the run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import time
import traceback
import types
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch._dynamo.utils import counters

from benchmarks._harness import ResultWriter, import_from_source, loop_us, median, out_default, run_roofs
from benchmarks.bench_norms import peers
from flopkit import kernels
from flopkit.nn import ViT5
from flopkit.profile import busy_us

BATCH = {"vit5-small": 256, "vit5-base": 128}
DTYPE = torch.bfloat16
# --models: flopkit's rows by the ViT5Attention settings they change from the module's defaults
# (triton_attention=True: flopkit's attention kernels in eager and compiled code;
# fused_qk_attention=True: QK-norm + RoPE and the attention as one op there too), and
# nvSubquadratic's own model. flopkit-one-op-compiled is the default since 2026-12-07 (the name
# stays for the runs that used it); flopkit-two-ops is the default before it. flopkit-scale-kernel
# folds ls2 into fc2 with kernels.scale_rows' Triton kernels instead of PyTorch's broadcast
# multiply; flopkit-eager-kernels also builds the tokens with kernels.embed_tokens' (both opt-in
# until a run shows the eager step wins). flopkit-cublaslt runs the default model with PyTorch's
# cuBLAS calls sent to cuBLASLt (torch.backends.cuda.preferred_blas_library, a process-wide
# setting, set for the row and restored after it): the question is whether the GEMMs' memsets and
# split-K reductions, 97 and 37 launches of an eager vit5-base step, go away (run L in
# docs/benchmarks.md: the reductions go, the memsets stay, and the step gains nothing).
# flopkit-gelu-linear runs the MLP's GELU and fc2 as kernels.gelu_linear (Mlp.fused_gelu_linear=True,
# the default since 2026-12-07, so the row equals flopkit; the name stays for the runs that used
# it), flopkit-unfused-mlp as PyTorch's ops (the default before).
FLOPKIT_MODELS: dict[str, dict[str, bool | str]] = {
    "flopkit": {},
    "flopkit-two-ops": {"fused_qk_attention": False},
    "flopkit-one-op": {"fused_qk_attention": "eager"},
    "flopkit-one-op-compiled": {"fused_qk_attention": True},
    "flopkit-sdpa": {"triton_attention": False},
    "flopkit-attention-eager": {"triton_attention": "eager"},
    "flopkit-unfolded": {},
    "flopkit-scale-kernel": {"scale_backend": "auto"},
    "flopkit-eager-kernels": {"scale_backend": "auto", "tokens_backend": "auto"},
    "flopkit-cublaslt": {},
    "flopkit-unfused-mlp": {"fused_gelu_linear": False},
    "flopkit-gelu-linear": {"fused_gelu_linear": True},
}
# Rows that run with another BLAS library for PyTorch's GEMMs (blas_backend), by row.
BLAS = {"flopkit-cublaslt": "cublaslt"}
MODELS = (*FLOPKIT_MODELS, "upstream")
# --tile NAME=V1,V2,...[;NAME=...]: rows of the default model, named flopkit[...], with launch
# constants of flopkit's kernel modules set for the row and restored after it (kernel_tile), so a
# tile from a kernel sweep, or an opt-in kernel, meets the shipped one and nvSubquadratic in one
# process. Only constants whose launcher reads them at each call are offered, by module.
TILE_CONSTANTS = {
    "DGELU_TMA_TILE": "_mlp_triton",
    "DGELU_TILE": "_mlp_triton",
    "QK_FUSED_FWD": "_sdpa_triton",
    "QK_FWD_TILE": "_sdpa_triton",
    "TRACED_SUM_KERNEL": "_norm_triton",
}
TILE_ROWS: dict[str, tuple[tuple[str, Any], ...]] = {}
SECTIONS = ("host", "syncs", "pyprof", "steps")
START = time.time()


def log(*args) -> None:
    print(f"[{time.time() - START:6.1f}s]", *args, flush=True)


def kernel_ms(fn, iters: int) -> float:
    """Device time per iteration of ``fn``: the union of CUDA kernel intervals under the profiler."""
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    spans = [
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start
    ]
    return busy_us(spans) / 1e3 / iters  # us -> ms


# ------------------------------------------------------------------------------------------ models


def build_flopkit(
    preset: str, unfolded: bool = False, settings: dict[str, bool | str] | None = None
) -> torch.nn.Module:
    """flopkit's ViT5; ``unfolded`` (the ``flopkit-unfolded`` rows, an ablation) runs the blocks as
    written: each block sums its output itself and ``ls2`` runs after ``fc2``, instead of the next
    block's ``norm1`` adding the pending branch and ``ls2`` folding into ``fc2``'s weight.
    ``settings``: attribute values set on every module that has the attribute (a row of
    :data:`FLOPKIT_MODELS`, e.g. ``{"triton_attention": False}`` for the ``flopkit-sdpa`` rows,
    SDPA everywhere); default the modules' own."""
    model = ViT5.from_preset(preset).cuda().to(DTYPE)
    for m in model.modules():
        for name, value in (settings or {}).items():
            if hasattr(m, name):
                setattr(m, name, value)
    if unfolded:
        for block in model.blocks:
            block.mlp_branch = types.MethodType(lambda self, y, dtype: self.ls2(self.mlp(y)), block)
        model._run_blocks = types.MethodType(lambda self, x: (_plain_blocks(self, x), None), model)
    return model


def _plain_blocks(model, x):
    for block in model.blocks:
        x = block(x)
    return x


def build_upstream(preset: str, root: str) -> torch.nn.Module:
    """nvSubquadratic's ViT5ClassificationNet, built as its bench_vit5_compile.py builds ViT-5-Small."""
    import_from_source(root, "nvsubquadratic")
    from nvsubquadratic.lazy_config import LazyConfig
    from nvsubquadratic.modules.mlp import MLP
    from nvsubquadratic.modules.rms_norm import RMSNorm
    from nvsubquadratic.modules.vit5_attention import ViT5Attention
    from nvsubquadratic.modules.vit5_residual_block import ViT5ResidualBlock
    from nvsubquadratic.networks.vit5_classification import ViT5ClassificationNet

    cfg = {"vit5-small": (384, 12, 6), "vit5-base": (768, 12, 12)}[preset]
    hidden, blocks, heads = cfg
    grid = 224 // 16
    net = ViT5ClassificationNet(
        in_channels=3,
        num_classes=1000,
        hidden_dim=hidden,
        num_blocks=blocks,
        patch_size=16,
        image_size=224,
        num_registers=4,
        dropout_rate=0.0,
        readout="cls",
        norm_cfg=LazyConfig(RMSNorm)(dim=hidden, eps=1e-6),
        block_cfg=LazyConfig(ViT5ResidualBlock)(
            sequence_mixer_cfg=LazyConfig(ViT5Attention)(
                hidden_dim=hidden,
                num_heads=heads,
                num_patches_h=grid,
                num_patches_w=grid,
                num_registers=4,
                qk_norm=LazyConfig(RMSNorm)(dim=hidden // heads, eps=1e-6),
                rope_base=10000.0,
                reg_rope_base=100.0,
                attn_dropout=0.0,
                proj_dropout=0.0,
                qkv_bias=False,
            ),
            sequence_mixer_norm_cfg=LazyConfig(RMSNorm)(dim=hidden, eps=1e-6),
            mlp_cfg=LazyConfig(MLP)(
                dim=hidden,
                activation="gelu",
                expansion_factor=4.0,
                dropout_cfg=LazyConfig(torch.nn.Dropout)(p=0.0),
            ),
            mlp_norm_cfg=LazyConfig(RMSNorm)(dim=hidden, eps=1e-6),
            hidden_dim=hidden,
            layer_scale_init=1e-4,
            drop_path_rate=0.05,
        ),
    )
    return net.cuda().to(DTYPE)


@contextlib.contextmanager
def blas_backend(kind: str):
    """Inside, PyTorch's GEMMs use the BLAS library of ``kind``'s row (:data:`BLAS`, e.g.
    ``"cublaslt"``); the process-wide preference is restored on the way out. Rows without one
    leave it alone."""
    want = BLAS.get(kind)
    if want is None:
        yield
        return
    before = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(want)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(before)


def _tile_module(name: str):
    import importlib

    return importlib.import_module(f"flopkit.kernels.{TILE_CONSTANTS[name]}")


def parse_tile(text: str) -> tuple[tuple[str, Any], ...]:
    """A ``--tile`` value, ``"NAME=V1,V2,...[;NAME=...]"``, -> ``((NAME, value), ...)``: each ``NAME``
    one of :data:`TILE_CONSTANTS`, its integers as many as the constant holds (a flag: one, 0 or
    1), the value of the constant's own type. Raises ValueError naming the value and what it
    should be."""
    out = []
    for part in text.split(";"):
        name, sep, values = part.partition("=")
        if not sep or name not in TILE_CONSTANTS:
            raise ValueError(
                f"--tile {text!r}: expected NAME=V1,V2,... with NAME one of {', '.join(TILE_CONSTANTS)}"
            )
        try:
            ints = tuple(int(v) for v in values.split(","))
        except ValueError:
            raise ValueError(f"--tile {text!r}: {name}'s values must be integers") from None
        current = getattr(_tile_module(name), name)
        if isinstance(current, bool):
            if len(ints) != 1 or ints[0] not in (0, 1):
                raise ValueError(f"--tile {text!r}: {name} is a flag, 0 or 1, got {values!r}")
            out.append((name, bool(ints[0])))
            continue
        if len(ints) != len(current):
            raise ValueError(f"--tile {text!r}: {name} holds {len(current)} values, got {len(ints)}")
        out.append((name, type(current)(*ints) if hasattr(current, "_fields") else ints))
    return tuple(out)


def tile_row(pairs: tuple[tuple[str, Any], ...]) -> str:
    """The ``--models``-style name of a ``--tile`` row."""
    text = ";".join(f"{name}={int(v) if isinstance(v, bool) else ','.join(map(str, v))}" for name, v in pairs)
    return f"flopkit[{text}]"


@contextlib.contextmanager
def kernel_tile(kind: str):
    """Inside, the launch constants of ``kind``'s ``--tile`` row (:data:`TILE_ROWS`) hold the row's
    values; the shipped ones are restored on the way out. Other rows leave the constants alone."""
    pairs = TILE_ROWS.get(kind, ())
    before = [(name, getattr(_tile_module(name), name)) for name, _ in pairs]
    try:
        for name, value in pairs:
            setattr(_tile_module(name), name, value)
        yield
    finally:
        for name, value in before:
            setattr(_tile_module(name), name, value)


def build_model(kind: str, preset: str, upstream: str | None) -> torch.nn.Module:
    """The model of a ``--models`` name (:data:`MODELS`): nvSubquadratic's from ``upstream``, or
    flopkit's with that row's settings."""
    if kind == "upstream":
        return build_upstream(preset, upstream)
    settings = FLOPKIT_MODELS[kind] if kind not in TILE_ROWS else FLOPKIT_MODELS["flopkit"]
    return build_flopkit(preset, unfolded=kind == "flopkit-unfolded", settings=settings)


def training_flops(preset: str, batch: int) -> int:
    """The MFU numerator (the rule in docs/benchmarks.md): a training step's matmul + attention FLOPs as
    ``flopkit report --training`` counts them."""
    import flopkit

    totals = flopkit.count(preset, depth=0, batch=batch, training=True).by_category()
    return totals["matmul"] + totals["attention"]


def make_step(model, kind: str, batch: int):
    """A closure running one training step, and the model's input batch."""
    if kind == "upstream":
        x = torch.randn(batch, 224, 224, 3, device="cuda", dtype=DTYPE)
        inp = {"input": x, "condition": None}

        def logits():
            return model(inp)["logits"]

    else:
        x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=DTYPE)

        def logits():
            return model(x)

    target = torch.randint(0, 1000, (batch,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=DTYPE):
            loss = F.cross_entropy(logits(), target)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def sync_sources(step, steps: int = 2, debug=None) -> dict[str, Any]:
    """Every synchronizing CUDA call that ``steps`` calls of ``step`` make (a host wait on the GPU:
    an eager step that waits issues nothing meanwhile, and the GPU idles once its queue drains),
    from ``torch.cuda.set_sync_debug_mode``'s warnings: ``{"per_step": n, "sources": [[count,
    message, where], ...]}``, ``where`` the Python frames that made the call, innermost first (the
    last 5 outside ``warnings``). ``debug`` replaces the mode setter (tests)."""
    import collections
    import traceback
    import warnings

    debug = debug or torch.cuda.set_sync_debug_mode
    seen: collections.Counter = collections.Counter()

    def show(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1] if not f.filename.endswith("warnings.py")]
        where = " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in frames[-5:][::-1])
        seen[(str(message).split("\n")[0][:100], where)] += 1

    with warnings.catch_warnings():
        # Switching the mode on warns that it is a prototype: that warning is not a sync.
        warnings.simplefilter("ignore")
        debug(1)  # warn
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        try:
            for _ in range(steps):
                step()
        finally:
            debug(0)
    return {
        "per_step": sum(seen.values()) / steps,
        "sources": [[n, msg, where] for (msg, where), n in seen.most_common()],
    }


def python_profile(step, steps: int = 5, top: int = 25, sync=None) -> dict[str, Any]:
    """Where the host's time in ``steps`` calls of ``step`` goes, by ``cProfile`` (which slows every
    Python call, so the shares matter, not the totals): ``{"host_ms": ms a step under the profiler,
    "top": [[own ms a step, calls a step, "file:line function"], ...]}``, the ``top`` functions by
    their own time (built-ins, such as a kernel launcher or an aten op's binding, included). ``sync``
    replaces ``torch.cuda.synchronize`` (tests)."""
    import cProfile
    import pstats

    sync = sync or torch.cuda.synchronize
    prof = cProfile.Profile()
    sync()
    prof.enable()
    for _ in range(steps):
        step()
    prof.disable()
    sync()
    # (file, line, name) -> (calls, primitive calls, own s, cumulative s, callers)
    stats = pstats.Stats(prof).stats
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    return {
        "host_ms": sum(v[2] for v in stats.values()) / steps * 1e3,
        "top": [
            [own / steps * 1e3, calls / steps, f"{os.path.basename(f)}:{line} {name}"]
            for (f, line, name), (calls, _, own, _, _) in rows
        ],
    }


def eager_rows(presets: Sequence[str], models: Sequence[str], upstream: str | None, measure) -> list[dict]:
    """``measure(step)`` of each eager training step (after 3 warm-up steps), per preset and model:
    :func:`sync_sources` for ``--sections syncs``, :func:`python_profile` for ``pyprof``."""
    rows = []
    for preset in presets:
        for kind in models:
            row = {"model": kind, "preset": preset, "batch": BATCH[preset]}
            try:
                with blas_backend(kind), kernel_tile(kind):
                    torch.manual_seed(0)
                    model = build_model(kind, preset, upstream)
                    model.train()
                    step = make_step(model, kind, BATCH[preset])
                    for _ in range(3):
                        step()
                    torch.cuda.synchronize()
                    row.update(measure(step))
                del model, step
                gc.collect()
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                row["error"] = repr(e)[:300]
            log(row)
            rows.append(row)
    return rows


def compile_model(model, mode: str):
    if mode == "eager":
        return model
    if mode == "compile":
        return torch.compile(model)
    return torch.compile(model, mode=mode)


def compile_stats(counters: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """What the warm-up compiled, from Dynamo's ``counters``: graphs, graph breaks, CUDA-graph
    skips (a graph ``reduce-overhead`` runs without a CUDA graph, its kernels then launched by
    Inductor's Python wrapper every step: host time that a compiled step's wall time shows) and
    compile-cache hits (AOTAutograd's and Inductor's FX-graph cache: a hit reuses code compiled
    for an earlier row, see :func:`cold_compile`)."""
    return {
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"]),
        "cache_hits": int(counters["aot_autograd"]["autograd_cache_hit"])
        + int(counters["inductor"]["fxgraph_cache_hit"]),
    }


def cold_compile():
    """Inside, ``torch.compile`` compiles from scratch: Inductor's and AOTAutograd's caches are off.
    Their keys are the traced graph, and a ``--tile`` row's graph is the shipped row's (the kernel
    constants are read inside the custom ops' bodies, which the key does not cover), so with the
    caches on a tile row reran the shipped row's code: on an H100 such rows warmed up in 3 s
    where a compile takes 49 s (``candidates_2026-12-08__compiled``, docs/benchmarks.md). The caches
    live on disk, so the same would hold across processes on one machine for a kernel edited
    between two calls."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(force_disable_caches=True)


def host_notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per eager row that recorded its host time: the median time the host spent issuing a
    step, against the GPU's busy time and the wall time (rows from before it was recorded: none)."""
    return [
        f"host: {r['model']} {r['preset']} eager: issuing a step took {r['host_ms']:.1f} ms of host time "
        f"(median), the GPU was busy {r['gpu_ms']:.1f} ms of a {r['ms']:.1f} ms step"
        for r in rows
        if r.get("mode") == "eager" and "host_ms" in r and "gpu_ms" in r
    ]


def compile_notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per compiled row that broke its graph or skipped CUDA graphs (rows from before
    these were recorded have no counts and no line)."""
    out = []
    for r in rows:
        if r.get("graph_breaks") or r.get("cudagraph_skips") or r.get("cache_hits"):
            out.append(
                f"compiled: {r['model']} {r['preset']} {r['mode']}: {r['graphs']} graphs, "
                f"{r['graph_breaks']} graph breaks, {r['cudagraph_skips']} CUDA-graph skips"
                + (
                    f", {r['cache_hits']} compile-cache hits (code of an earlier compile)"
                    if r.get("cache_hits")
                    else ""
                )
            )
    return out


def run_step_row(kind, preset, mode, args, peak_tflops) -> dict:
    batch = getattr(args, "batch", None) or BATCH[preset]
    row = {"model": kind, "preset": preset, "batch": batch, "mode": mode}
    with blas_backend(kind), kernel_tile(kind), cold_compile():
        return _step_row(row, kind, preset, mode, args, peak_tflops, batch)


def _step_row(row, kind, preset, mode, args, peak_tflops, batch) -> dict:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model(kind, preset, args.upstream)
    model.train()
    step_flops = training_flops(preset, batch)
    step = make_step(compile_model(model, mode), kind, batch)
    counters.clear()
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    row["warmup_s"] = round(time.perf_counter() - t0, 1)
    if mode != "eager":
        row.update(compile_stats(counters))
    # The median of several timed loops: the device's host is shared, and another tenant's burst
    # slows a single loop of a host-sensitive mode (compile's default) by a few percent.
    # Each step's issue time too (the host's time inside step(); the loop waits on the GPU only at
    # its end). Well below the GPU's busy time, the host ran ahead, and the wall time's excess over
    # the GPU's is time between its kernels. Near the wall time, the host either could not issue
    # faster or waited on the GPU inside the step (a sync, --sections syncs, or a full launch queue).
    runs, issue = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            t = time.perf_counter()
            step()
            issue.append(time.perf_counter() - t)
        torch.cuda.synchronize()
        runs.append((time.perf_counter() - start) / args.steps * 1e3)
    wall = median(runs)
    row["ms_runs"] = [round(r, 3) for r in runs]
    row["host_ms"] = median(issue) * 1e3
    gpu = kernel_ms(step, 5)
    row.update(
        ms=wall,
        img_s=batch / wall * 1e3,
        mfu=step_flops / (wall * 1e-3) / (peak_tflops * 1e12),
        gpu_ms=gpu,
        host_bound=max(0.0, 1 - gpu / wall),
    )
    del model, step
    gc.collect()
    torch.cuda.empty_cache()
    return row


# ------------------------------------------------------------------------------------ host overhead


@triton.jit
def _empty_kernel(X, N, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    tl.store(X + offs, tl.load(X + offs, mask=offs < N), mask=offs < N)


def host_row(name: str, fn, grads=None, calls: int = 200) -> dict:
    """``fn()`` issues one call; with ``grads`` the call is forward + backward of ``fn()``'s outputs."""
    if grads is not None:
        forward = fn

        def fn():
            torch.autograd.backward(forward(), grads)

    host, wall = loop_us(fn, calls, warmup=20)
    device = kernel_ms(fn, 50) * 1e3
    return {
        "op": name,
        "host_us": host,
        "device_us": device,
        "wall_us": wall,
        "overhead_us": max(0.0, wall - device),
    }


class _NullOp(torch.autograd.Function):
    """One empty Triton launch forward and one backward: the autograd + launch floor of an op."""

    @staticmethod
    def forward(ctx, x, buf):
        ctx.buf = buf
        _empty_kernel[(1,)](buf, 1024, BLOCK=1024)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        _empty_kernel[(1,)](ctx.buf, 1024, BLOCK=1024)
        return g, None


def chain_rows(k1: int = 2, k2: int = 18, calls: int = 200) -> list[dict]:
    """Marginal host µs per op, forward + backward in one graph (see the module docstring)."""
    g = torch.Generator(device="cuda").manual_seed(1)
    x0 = torch.randn(64, 64, device="cuda", dtype=DTYPE, generator=g).requires_grad_()
    gy = torch.randn(64, 64, device="cuda", dtype=DTYPE, generator=g)
    ws = [torch.randn(64, device="cuda", dtype=DTYPE, generator=g).requires_grad_() for _ in range(k2)]
    hw = [torch.randn(4, 16, device="cuda", dtype=DTYPE, generator=g).requires_grad_() for _ in range(k2)]
    buf = torch.zeros(1024, device="cuda")
    ops = {
        "autograd Function, 1 empty launch each way (floor)": lambda y, i: _NullOp.apply(y, buf),
        "F.rms_norm": lambda y, i: F.rms_norm(y, (64,), ws[i], 1e-6),
        "rms_norm": lambda y, i: kernels.rms_norm(y, ws[i]),
        "rms_norm_residual": lambda y, i: kernels.rms_norm_residual(y, x0, ws[i])[0],
        "per_head_rms_norm (4 x 16)": lambda y, i: kernels.per_head_rms_norm(y, ws[i][:16], 4),
        "head_norm layer (4 x 16)": lambda y, i: kernels.head_norm(y, hw[i], mode="layer"),
    }
    rows = []
    for name, op in ops.items():

        def chain(k, op=op):
            def run():
                y = x0
                for i in range(k):
                    y = op(y, i)
                y.backward(gy)

            return run

        try:
            t1, t2 = loop_us(chain(k1), calls, warmup=10)[0], loop_us(chain(k2), calls, warmup=10)[0]
            with torch.no_grad():
                fwd = loop_us(lambda op=op: [op(x0, i) for i in range(k2)], calls, warmup=10)[0] / k2
            both = (t2 - t1) / (k2 - k1)
            rows.append({"op": name, "forward_us": fwd, "fwd_bwd_us": both, "backward_us": both - fwd})
        except Exception as e:  # noqa: BLE001
            rows.append({"op": name, "error": repr(e)[:300]})
    return rows


def hot_path_rows(calls: int = 2000) -> list[dict]:
    """The issue's per-op measure: host µs per call beyond the kernel launches, forward and backward.

    Tiny ``[64, 64]``-sized inputs keep the GPU ahead of the host, so a loop's time per call is host
    time. ``forward`` is the public op called with gradients enabled (argument checks, the autograd
    Function, the launcher); ``backward`` calls the op's backward node directly with the output
    gradients (``grad_fn.apply``: the Function's backward body and its launches, without the autograd
    engine's traversal and gradient accumulation, which every autograd op pays alike, see the chain
    table). ``launch`` is one call of flopkit's ``launch()`` with one tensor argument (an empty
    kernel); ``beyond`` subtracts it once per kernel the pass launches."""
    from flopkit.kernels._launch import launch

    buf = torch.zeros(1024, device="cuda")
    launch_us = loop_us(lambda: launch(_empty_kernel, (1,), (buf, 1024), {"BLOCK": 1024}, 1), calls, 50)[0]
    g = torch.Generator(device="cuda").manual_seed(2)

    def rnd(*shape, grad=True):
        return torch.randn(*shape, device="cuda", dtype=DTYPE, generator=g).requires_grad_(grad)

    x, r, w, s = rnd(64, 64), rnd(64, 64), rnd(64), rnd(64)
    xh, hw = rnd(16, 4, 16), rnd(4, 16)
    qkv, qn, kn = rnd(2, 8, 3 * 64), rnd(16), rnd(16)
    cos, sin = rnd(8, 16, grad=False), rnd(8, 16, grad=False)
    # op -> (forward call, kernels launched forward, kernels launched backward)
    ops = {
        "rms_norm": (lambda: kernels.rms_norm(x, w), 1, 2),
        "rms_norm_residual": (lambda: kernels.rms_norm_residual(x, r, w), 1, 2),
        "rms_norm_residual, LayerScale": (lambda: kernels.rms_norm_residual(x, r, w, scale=s), 1, 2),
        "per_head_rms_norm": (
            lambda: kernels.per_head_rms_norm(xh, w[:16].detach().requires_grad_(), 4),
            1,
            2,
        ),
        "head_norm (layer, bias)": (lambda: kernels.head_norm(xh, hw, hw, mode="layer"), 1, 2),
        "qk_norm_rope": (lambda: kernels.qk_norm_rope(qkv, cos, sin, 4, qn, kn), 1, 2),
    }
    rows = [{"op": "launch() of an empty kernel", "forward_us": launch_us}]
    for name, (fwd, n_fwd, n_bwd) in ops.items():
        try:
            out = fwd()
            outs = out if isinstance(out, tuple) else (out,)
            grads = tuple(torch.randn_like(o) for o in outs)
            node = outs[0].grad_fn
            f_us = loop_us(fwd, calls, 50)[0]
            b_us = loop_us(lambda node=node, grads=grads: node.apply(*grads), calls, 50)[0]
            rows.append(
                {
                    "op": name,
                    "forward_us": f_us,
                    "backward_us": b_us,
                    "launches": f"{n_fwd} + {n_bwd}",
                    "forward_beyond_us": f_us - n_fwd * launch_us,
                    "backward_beyond_us": b_us - n_bwd * launch_us,
                }
            )
        except Exception as e:  # noqa: BLE001
            rows.append({"op": name, "error": repr(e)[:300]})
    return rows


def host_rows() -> list[dict]:
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape, grad=False):
        t = torch.randn(*shape, device="cuda", dtype=DTYPE, generator=g)
        return t.requires_grad_(grad)

    rows = []
    buf = torch.zeros(1 << 10, device="cuda")
    rows.append(
        host_row("empty Triton kernel (launch cost)", lambda: _empty_kernel[(1,)](buf, 1024, BLOCK=1024))
    )
    from flopkit.kernels._launch import launch

    rows.append(
        host_row(
            "empty Triton kernel, flopkit launch()",
            lambda: launch(_empty_kernel, (1,), (buf, 1024), {"BLOCK": 1024}, 1),
        )
    )
    # vit5-base, batch 128: 25728 tokens of C = 768; QK-norm rows 25728 * 12 heads of 64.
    T, C, H, D = 128 * 201, 768, 12, 64
    x, r, w = rnd(T, C, grad=True), rnd(T, C, grad=True), rnd(C, grad=True)
    dy = rnd(T, C)
    q, wq, dq = rnd(T * H, D, grad=True), rnd(D, grad=True), rnd(T * H, D)
    qh, hw = rnd(T, H, D, grad=True), rnd(H, D, grad=True)
    ps, errs = peers()
    cases = {
        "rms_norm [308736, 64]": (lambda: kernels.rms_norm(q, wq), dq),
        "F.rms_norm [308736, 64]": (lambda: F.rms_norm(q, (D,), wq, 1e-6), dq),
        "rms_norm [25728, 768]": (lambda: kernels.rms_norm(x, w), dy),
        "rms_norm_residual [25728, 768]": (lambda: kernels.rms_norm_residual(x, r, w)[0], dy),
        "per_head_rms_norm [25728, 12, 64]": (lambda: kernels.per_head_rms_norm(qh, wq, H), qh.detach()),
        "head_norm layer [25728, 12, 64]": (lambda: kernels.head_norm(qh, hw, mode="layer"), qh.detach()),
    }
    # The backward launcher called directly, outside autograd: the op's own backward host cost.
    from flopkit.kernels import _norm_triton

    cases["norm_backward launcher [308736, 64]"] = (
        lambda: _norm_triton.norm_backward(dq, q, wq, False, 1e-6, grad_dtype=wq.dtype),
        None,
    )
    for peer, (fwd, _res) in ps.items():
        cases[f"{peer} rms_norm [308736, 64]"] = (lambda fwd=fwd: fwd(q, wq), dq)
    qkv = rnd(128, 201, 3 * C, grad=True)
    cos, sin = torch.randn(201, D, device="cuda"), torch.randn(201, D, device="cuda")
    qn, kn = rnd(D, grad=True), rnd(D, grad=True)

    gqkv = tuple(rnd(128, H, 201, D) for _ in range(3))
    cases["qk_norm_rope [128, 201, 2304]"] = (lambda: kernels.qk_norm_rope(qkv, cos, sin, H, qn, kn), gqkv)
    for name, (fwd, grad) in cases.items():
        try:
            with torch.no_grad():
                rows.append({**host_row(name, fwd), "pass": "forward"})
            if grad is not None:
                rows.append({**host_row(name, fwd, grads=grad), "pass": "forward+backward"})
        except Exception as e:  # noqa: BLE001
            rows.append({"op": name, "error": repr(e)[:300]})
    for peer, err in errs.items():
        rows.append({"op": f"{peer} (not importable)", "error": err})
    return rows


# ----------------------------------------------------------------------------------------- output


def _md_table(head: str, sep: str, rows: list[dict], keys: tuple[str, ...], cells, err_len: int) -> list[str]:
    """A markdown table: its header lines, then per row the ``keys`` columns followed by
    ``cells(row)``, or for a row that failed, by its error (cut to ``err_len``) and empty cells."""
    width = head.count("|") - 1
    out = [head, sep]
    for r in rows:
        lead = [str(r[k]) for k in keys]
        if "error" in r:
            out.append(
                "| " + " | ".join([*lead, r["error"][:err_len]]) + " |" + "|" * (width - len(keys) - 1)
            )
        else:
            out.append("| " + " | ".join(lead + cells(r)) + " |")
    return out


def _eager_lines(section: str, rows: Sequence[Mapping[str, Any]], head, body) -> list[str]:
    """The lines of an eager ``--sections`` check (``syncs``, ``pyprof``): per row its error, or
    ``head(row)`` after the row's name and ``body(row)``'s lines; a blank line after any rows."""
    out = []
    for r in rows:
        if "error" in r:
            out.append(f"{section}: {r['model']} {r['preset']}: {r['error']}")
            continue
        out.append(f"{section}: {r['model']} {r['preset']} b{r['batch']}, eager{head(r)}")
        out += body(r)
    return out + [""] if rows else out


def md_tables(res: dict) -> str:
    out = []
    if res.get("steps"):
        out += _md_table(
            "| model | preset | batch | mode | ms/step | img/s | MFU | GPU ms/step | host-bound |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|",
            res["steps"],
            ("model", "preset", "batch", "mode"),
            lambda r: [
                f"{r['ms']:.1f}",
                f"{r['img_s']:,.0f}",
                f"{100 * r['mfu']:.1f} %",
                f"{r['gpu_ms']:.1f}",
                f"{100 * r['host_bound']:.0f} %",
            ],
            60,
        )
        out.append("")
    out += _eager_lines(
        "syncs",
        res.get("syncs", []),
        lambda r: f": {r['per_step']:g} synchronizing calls a step",
        lambda r: [f"  {n}x {msg} at {where}" for n, msg, where in r["sources"][:8]],
    )
    out += _eager_lines(
        "pyprof",
        res.get("pyprof", []),
        lambda r: (
            f", under cProfile: {r['host_ms']:.1f} ms of host time a step; own ms a step, calls a step, function:"
        ),
        lambda r: [f"  {ms:.2f} {calls:g} {where}" for ms, calls, where in r["top"][:15]],
    )
    out += host_notes(res.get("steps", []))
    out += compile_notes(res.get("steps", []))
    for line in res.get("skipped", []):
        out.append(f"skipped: {line}")
    if res.get("hot_path"):
        head = res["hot_path"][0]
        out += [
            "Per-op host time on the eager hot path ([64, 64]-sized inputs, gradients on; µs per call; "
            f"one launch() of an empty kernel: {head['forward_us']:.1f} µs):",
            "",
        ]
        out += _md_table(
            "| op | launches fwd + bwd | forward | backward (node) | forward beyond launches | backward beyond launches |",
            "|---|---|---:|---:|---:|---:|",
            res["hot_path"][1:],
            ("op",),
            lambda r: [
                r["launches"],
                f"{r['forward_us']:.1f}",
                f"{r['backward_us']:.1f}",
                f"{r['forward_beyond_us']:.1f}",
                f"{r['backward_beyond_us']:.1f}",
            ],
            80,
        )
        out.append("")
    if res.get("chain"):
        out += [
            "Marginal host time per op in a graph (chain of K = 2 vs 18 calls, forward + backward, [64, 64] bf16):",
            "",
        ]
        out += _md_table(
            "| op | forward µs | backward µs | forward + backward µs |",
            "|---|---:|---:|---:|",
            res["chain"],
            ("op",),
            lambda r: [f"{r['forward_us']:.1f}", f"{r['backward_us']:.1f}", f"{r['fwd_bwd_us']:.1f}"],
            80,
        )
        out.append("")
    if res.get("host"):
        out += _md_table(
            "| op | pass | host µs/call | device µs/call | wall µs/call | overhead µs (wall - device) |",
            "|---|---|---:|---:|---:|---:|",
            res["host"],
            ("op",),
            lambda r: [
                r.get("pass", "forward"),
                f"{r['host_us']:.1f}",
                f"{r['device_us']:.1f}",
                f"{r['wall_us']:.1f}",
                f"{r['overhead_us']:.1f}",
            ],
            80,
        )
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", default=None, help="nvSubquadratic source tree (has nvsubquadratic/)")
    ap.add_argument("--presets", default="vit5-small,vit5-base")
    ap.add_argument("--modes", default="eager,compile,reduce-overhead,max-autotune")
    ap.add_argument(
        "--models",
        default="flopkit,upstream",
        help=f"comma list of {', '.join(MODELS)}",
    )
    ap.add_argument(
        "--tile",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...[;NAME=...]",
        help=f"also a row of the default model with these launch constants, of {', '.join(TILE_CONSTANTS)} (repeatable)",
    )
    ap.add_argument("--sections", default="host,steps", help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--steps", type=int, default=20, help="steps per timed loop")
    ap.add_argument("--repeats", type=int, default=5, help="timed loops per row (the median is reported)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=None, help="one batch for every preset (default: BATCH)")
    ap.add_argument("--out", default=out_default())
    args = ap.parse_args()
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        ap.error(f"--models: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(MODELS)}")
    bad = sorted(set(args.sections.split(",")) - set(SECTIONS))
    if bad:
        ap.error(f"--sections: unknown {', '.join(map(repr, bad))}; choose from {', '.join(SECTIONS)}")
    for text in args.tile:
        try:
            pairs = parse_tile(text)
        except ValueError as e:
            ap.error(str(e))
        TILE_ROWS[tile_row(pairs)] = pairs
    res = {"args": vars(args), "steps": [], "skipped": []}
    roofs = run_roofs()
    log(f"copy {roofs.copy_gbs:.0f} GB/s, matmul {roofs.matmul_tflops:.0f} TFLOP/s")
    writer = ResultWriter(args.out, "bench_train", roofs=roofs)

    def save():
        writer.save(res, md_tables(res).splitlines())

    sections = args.sections.split(",")
    if "host" in sections:
        res["hot_path"] = hot_path_rows()
        save()
        res["chain"] = chain_rows()
        save()
        res["host"] = host_rows()
        save()
    models = args.models.split(",")
    at = models.index("upstream") if "upstream" in models else len(models)
    models[at:at] = list(TILE_ROWS)  # the tile rows before nvSubquadratic's
    if "upstream" in models and not args.upstream and {"steps", "syncs", "pyprof"} & set(sections):
        models.remove("upstream")
        res["skipped"].append("nvSubquadratic rows: no --upstream path given")
    for section, measure in (("syncs", sync_sources), ("pyprof", python_profile)):
        if section in sections:
            res[section] = eager_rows(args.presets.split(","), models, args.upstream, measure)
            save()
    if "steps" in sections:
        if "upstream" in models:
            reason = None
            if not os.path.isdir(os.path.join(args.upstream, "nvsubquadratic")):
                reason = f"{args.upstream!r} has no nvsubquadratic/ package"
            if reason:
                res["skipped"].append(f"nvSubquadratic rows: {reason}")
                models.remove("upstream")
        for preset in args.presets.split(","):
            for mode in args.modes.split(","):
                for kind in models:
                    log(f"{kind} {preset} {mode} ...")
                    try:
                        row = run_step_row(kind, preset, mode, args, roofs.matmul_tflops)
                    except Exception as e:  # noqa: BLE001
                        traceback.print_exc()
                        row = {"model": kind, "preset": preset, "batch": BATCH[preset], "mode": mode}
                        row["error"] = repr(e)[:300]
                        with contextlib.suppress(Exception):
                            torch.cuda.empty_cache()
                    log(row)
                    res["steps"].append(row)
                    save()
    writer.finish(res, md_tables(res).splitlines())


if __name__ == "__main__":
    main()
