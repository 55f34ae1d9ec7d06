"""What every benchmark script shares: timing, the roofs, the result record and where it is written.

Run a script as a module from the repository root (``python -m benchmarks.bench_norms ...``):
``benchmarks/`` is a namespace package there, so scripts import each other and this module as
``benchmarks.NAME`` and nothing edits ``sys.path``.

- **Timing.** :func:`device_ms` is the median of ``triton.testing.do_bench`` (CUDA events, L2
  flushed between repetitions); :func:`graph_ms` the median of CUDA-graph replays, each after an L2
  flush (device time without host launch cost); :func:`host_samples_ms` the wall time of single
  calls (host work). ``device_ms`` takes an injectable timer and ``host_samples_ms`` a clock, so
  their arithmetic (and the roofs') runs on CPU in tests; ``graph_ms`` needs CUDA.
- **Roofs.** :func:`run_roofs` measures the device-to-device copy bandwidth (1 GiB of bf16,
  bytes read + written) and the bf16 matmul rate (``8192^3``) once per process, by one method
  (:func:`measure_roofs`); every "% of copy" and MFU column divides by these.
- **Result record** (schema :data:`SCHEMA`): ``{"schema", "benchmark", "env", "roofs", ...}``,
  the script's own keys next to them. ``env`` (:func:`environment`) names the GPU, the torch,
  Triton, CUDA and Python versions, the git revision (and whether the tree had local changes) and
  the UTC time of the run.
- **Files.** :class:`ResultWriter` writes ``NAME_DEVICE.json`` and ``NAME_DEVICE.md`` (``DEVICE``
  from :func:`device_tag`, e.g. ``h100``, ``h200x2``, ``cpu``) under the output folder, and prints
  the tables last (the device tool returns the end of the output). ``benchmarks/results/`` keeps
  one such pair per benchmark per device: a new run replaces the files, git history keeps the old.
"""

from __future__ import annotations

import datetime
import functools
import importlib.abc
import importlib.machinery
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA",
    "REPO_ROOT",
    "median",
    "summarize",
    "device_ms",
    "graph_ms",
    "loop_us",
    "host_samples_ms",
    "Roofs",
    "measure_roofs",
    "run_roofs",
    "git_revision",
    "environment",
    "device_tag",
    "result_stem",
    "make_record",
    "validate_record",
    "header_line",
    "ResultWriter",
    "write_results",
    "SourceTreeFinder",
    "add_source_tree",
    "import_from_source",
    "out_default",
]

SCHEMA = "flopkit-bench/1"
REPO_ROOT = Path(__file__).resolve().parents[1]
RESERVED_KEYS = ("schema", "benchmark", "env", "roofs")
ENV_KEYS = ("date", "python", "platform", "torch", "triton", "cuda", "gpu", "git")

# (fn, warmup_ms, rep_ms) -> median milliseconds of one call of fn.
Timer = Callable[[Callable[[], Any], int, int], float]


# ----------------------------------------------------------------------------------------- timing
def median(values: Iterable[float]) -> float:
    """The median of ``values`` (the mean of the middle two for an even count); raises on none."""
    vals = list(values)
    if not vals:
        raise ValueError("median of no values")
    return float(statistics.median(vals))


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """``{"median", "min", "max", "n"}`` of repeated measurements (every repeat stays in the JSON
    where the script keeps them; this is the summary a table prints)."""
    return {"median": median(values), "min": float(min(values)), "max": float(max(values)), "n": len(values)}


def _do_bench(fn: Callable[[], Any], warmup_ms: int, rep_ms: int) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def device_ms(
    fn: Callable[[], Any], *, warmup_ms: int = 25, rep_ms: int = 100, timer: Timer | None = None
) -> float:
    """Median milliseconds of one call of ``fn`` on the GPU: ``triton.testing.do_bench`` (CUDA
    events, L2 flushed before each repetition; host launch cost included where it exceeds the
    flush), or ``timer(fn, warmup_ms, rep_ms)``."""
    return float((timer or _do_bench)(fn, warmup_ms, rep_ms))


def loop_us(fn: Callable[[], Any], calls: int, warmup: int, repeats: int = 5) -> tuple[float, float]:
    """``(host, wall)`` µs per call of a loop of ``calls`` calls of ``fn()`` after ``warmup``: the time
    to issue them, and the time until the device has also finished them. The loop runs ``repeats``
    times and each number is the smallest: other work on a shared host only ever adds time. CUDA
    only."""
    import torch

    for _ in range(warmup):
        fn()
    best_host = best_wall = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        host = (time.perf_counter() - t0) / calls * 1e6
        torch.cuda.synchronize()
        best_host = min(best_host, host)
        best_wall = min(best_wall, (time.perf_counter() - t0) / calls * 1e6)
    return best_host, best_wall


_FLUSH: list[Any] = []


def graph_ms(fn: Callable[[], Any], *, replays: int = 25, warmup_calls: int = 3, hot_calls: int = 0) -> float:
    """Device time of ``fn`` without its host cost: ``fn`` captured in a CUDA graph (after
    ``warmup_calls`` calls on a side stream), the median of ``replays`` replays, each after a
    256 MiB write that flushes L2. CUDA only; raises when ``fn`` cannot be captured.

    ``hot_calls`` > 0: no flush; the graph holds ``hot_calls`` calls back to back and the time is a
    replay's over ``hot_calls`` (inputs L2-resident, as for a kernel reading what the kernel before
    it just wrote; a kernel of a few microseconds is otherwise below the events' resolution)."""
    import torch

    if not _FLUSH and not hot_calls:
        _FLUSH.append(torch.empty(256 << 20, dtype=torch.int8, device="cuda"))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_calls):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(max(hot_calls, 1)):
            fn()
    events = []
    for _ in range(replays):
        if not hot_calls:
            _FLUSH[0].zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    times = [a.elapsed_time(b) / max(hot_calls, 1) for a, b in events]
    del graph
    return median(times)


def host_samples_ms(
    fn: Callable[[], Any],
    *,
    reps: int = 20,
    warmup: int = 3,
    clock: Callable[[], float] = time.perf_counter,
    before: Callable[[], Any] | None = None,
    after: Callable[[], Any] | None = None,
) -> list[float]:
    """Wall milliseconds of each of ``reps`` calls of ``fn`` after ``warmup`` untimed ones, read off
    ``clock`` (seconds). ``before`` runs untimed before each call (``torch.cuda.synchronize``: the
    call starts on an idle GPU); ``after`` runs inside the timing, after the call
    (``torch.cuda.synchronize``: a sample is the call's whole time; without it, its host time)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        if before is not None:
            before()
        t0 = clock()
        fn()
        if after is not None:
            after()
        out.append((clock() - t0) * 1e3)
    return out


# ------------------------------------------------------------------------------------------ roofs
@dataclass(frozen=True)
class Roofs:
    """The ceilings a run's rows are held against, measured in that run."""

    copy_gbs: float  # device-to-device copy, GB/s (1e9) counting bytes read + written
    matmul_tflops: float  # dense matmul, TFLOP/s (1e12), 2 * n^3 FLOPs per product
    copy_bytes: int  # the copied buffer's size
    matmul_n: int  # the square operands' size
    dtype: str  # the dtype of both measurements
    method: str  # the timer

    def to_dict(self) -> dict[str, Any]:
        """The record's ``roofs`` entry."""
        return asdict(self)


def measure_roofs(
    device: str = "cuda",
    *,
    dtype: Any = None,
    copy_bytes: int = 1 << 30,
    matmul_n: int = 8192,
    timer: Timer | None = None,
    method: str | None = None,
) -> Roofs:
    """Measure the copy bandwidth (``dst.copy_(src)`` of ``copy_bytes``) and the matmul rate
    (``a @ b``, ``matmul_n`` square) on ``device`` in ``dtype`` (bf16 by default), each the
    :func:`device_ms` median (``timer`` to replace it)."""
    import torch

    dtype = dtype or torch.bfloat16
    elem = torch.empty((), dtype=dtype).element_size()
    numel = copy_bytes // elem
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    copy = functools.partial(dst.copy_, src)
    t_copy = device_ms(copy, warmup_ms=50, rep_ms=200, timer=timer)
    del copy, src, dst
    a = torch.randn(matmul_n, matmul_n, device=device).to(dtype)
    b = torch.randn(matmul_n, matmul_n, device=device).to(dtype)
    matmul = functools.partial(torch.matmul, a, b)
    t_mm = device_ms(matmul, warmup_ms=50, rep_ms=300, timer=timer)
    del matmul, a, b
    return Roofs(
        copy_gbs=2 * numel * elem / (t_copy * 1e-3) / 1e9,
        matmul_tflops=2 * matmul_n**3 / (t_mm * 1e-3) / 1e12,
        copy_bytes=numel * elem,
        matmul_n=matmul_n,
        dtype=str(dtype).removeprefix("torch."),
        method=method or ("injected timer" if timer else "triton.testing.do_bench median"),
    )


@functools.cache
def run_roofs(device: str = "cuda") -> Roofs:
    """:func:`measure_roofs` on ``device``, measured on the first call of a process and reused by
    every later call (a script and the scripts it imports share one measurement)."""
    return measure_roofs(device)


# ------------------------------------------------------------------------------------ environment
REVISION_ENV = "FLOPKIT_BENCH_REVISION"


def git_revision(
    root: str | Path = REPO_ROOT,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
    environ: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the checkout at ``root`` (dirty: tracked files differ from the
    commit). A copied tree without ``.git`` (the device machine's) takes the commit from the
    environment variable ``FLOPKIT_BENCH_REVISION`` (``dirty`` then None: unknown); None where
    neither gives one."""
    environ = os.environ if environ is None else environ
    try:
        head = run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = (
            run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if head.returncode == 0
            else None
        )
    except (OSError, subprocess.SubprocessError):
        head = status = None
    if head is not None and head.returncode == 0:
        dirty = bool(status.stdout.strip()) if status is not None and status.returncode == 0 else None
        return {"commit": head.stdout.strip(), "dirty": dirty}
    given = environ.get(REVISION_ENV, "").strip().lower()
    if re.fullmatch(r"[0-9a-f]{40}", given):
        return {"commit": given, "dirty": None}
    return None


def _gpu(gpus: int | None) -> dict[str, Any] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "count": gpus if gpus is not None else 1,
        "capability": f"{props.major}.{props.minor}",
        "sms": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
    }


def environment(*, gpus: int | None = None, now: datetime.datetime | None = None) -> dict[str, Any]:
    """What a result was measured on: the UTC time, Python, the platform, torch, Triton (None when
    not importable), CUDA, the GPU (name, ``gpus`` used, default 1, compute capability, SMs, memory;
    None without CUDA) and the git revision."""
    import torch

    try:
        import triton

        triton_version: str | None = triton.__version__
    except ImportError:
        triton_version = None
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return {
        "date": now.isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "gpu": _gpu(gpus),
        "git": git_revision(),
    }


def device_tag(env: dict[str, Any]) -> str:
    """A file-name tag for the device of ``env``: the GPU model's first token with digits
    (``NVIDIA H100 80GB HBM3`` -> ``h100``), ``x2`` etc. when several were used; ``cpu`` without a
    GPU."""
    gpu = env.get("gpu")
    if not gpu:
        return "cpu"
    words = [w.lower() for w in re.split(r"[\s_-]+", gpu["name"]) if w.lower() not in ("nvidia", "geforce")]
    model = next((w for w in words if re.search(r"\d", w)), words[0] if words else "gpu")
    model = re.sub(r"[^a-z0-9]", "", model) or "gpu"
    count = int(gpu.get("count") or 1)
    return f"{model}x{count}" if count > 1 else model


def result_stem(name: str, env: dict[str, Any]) -> str:
    """``NAME_DEVICE``: the file stem of benchmark ``name``'s current result on ``env``'s device."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name):
        raise ValueError(f"benchmark name {name!r}: lower-case letters, digits, '_', '.', '-' only")
    return f"{name}_{device_tag(env)}"


# ------------------------------------------------------------------------------------- the record
def make_record(
    name: str, data: dict[str, Any], *, env: dict[str, Any], roofs: Roofs | dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON record of one run: the schema's keys first, then ``data`` (the script's own keys,
    which may not reuse a schema key)."""
    clash = sorted(set(data) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"result keys {clash} are the harness's; rename them in the script")
    roofs_dict = roofs.to_dict() if isinstance(roofs, Roofs) else roofs
    return {"schema": SCHEMA, "benchmark": name, "env": env, "roofs": roofs_dict, **data}


def validate_record(record: dict[str, Any]) -> None:
    """Raise ValueError unless ``record`` follows :data:`SCHEMA` (the keys :func:`make_record` and
    :func:`environment` write, with their types)."""
    if record.get("schema") != SCHEMA:
        raise ValueError(f"schema is {record.get('schema')!r}, not {SCHEMA!r}")
    if not isinstance(record.get("benchmark"), str) or not record["benchmark"]:
        raise ValueError("benchmark: a non-empty name is required")
    env = record.get("env")
    if not isinstance(env, dict):
        raise ValueError("env: a dict is required")
    missing = [k for k in ENV_KEYS if k not in env]
    if missing:
        raise ValueError(f"env lacks {missing}")
    for key in ("date", "python", "torch"):
        if not isinstance(env[key], str):
            raise ValueError(f"env.{key}: a string is required")
    datetime.datetime.fromisoformat(env["date"])
    gpu = env["gpu"]
    if gpu is not None and not (isinstance(gpu, dict) and isinstance(gpu.get("name"), str)):
        raise ValueError("env.gpu: None or a dict with a name")
    git = env["git"]
    if git is not None and not (
        isinstance(git, dict) and re.fullmatch(r"[0-9a-f]{40}", str(git.get("commit")))
    ):
        raise ValueError("env.git: None or a dict with a 40-hex commit")
    roofs = record.get("roofs")
    if roofs is not None:
        for key in ("copy_gbs", "matmul_tflops"):
            if not (isinstance(roofs.get(key), (int, float)) and roofs[key] > 0):
                raise ValueError(f"roofs.{key}: a positive number is required")


def header_line(record: dict[str, Any]) -> str:
    """One line naming what a result was measured on, the first line of its markdown."""
    env = record["env"]
    gpu = env["gpu"]
    where = "CPU" if not gpu else gpu["name"] + (f" x{gpu['count']}" if gpu.get("count", 1) > 1 else "")
    git = env["git"]
    rev = "unknown revision" if not git else git["commit"][:12] + (" (local changes)" if git["dirty"] else "")
    if git and git["dirty"] is None:
        rev += " (from $" + REVISION_ENV + ")"
    parts = [f"{record['benchmark']}: {where}", f"torch {env['torch']}"]
    if env["triton"]:
        parts.append(f"Triton {env['triton']}")
    parts += [f"git {rev}", env["date"]]
    roofs = record.get("roofs")
    if roofs:
        parts.append(
            f"copy {roofs['copy_gbs']:.0f} GB/s, {roofs['dtype']} matmul {roofs['matmul_tflops']:.0f} TFLOP/s"
        )
    return "; ".join(parts)


class ResultWriter:
    """Writes one run's record to ``out_dir/NAME_DEVICE.{json,md}``; :meth:`save` may be called after
    every section (a run stopped at its time limit keeps what it measured)."""

    def __init__(
        self,
        out_dir: str | Path,
        name: str,
        *,
        env: dict[str, Any] | None = None,
        roofs: Roofs | dict[str, Any] | None = None,
        gpus: int | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.name = name
        self.env = env if env is not None else environment(gpus=gpus)
        self.roofs = roofs
        self.stem = result_stem(name, self.env)
        self.json_path = self.out_dir / f"{self.stem}.json"
        self.md_path = self.out_dir / f"{self.stem}.md"

    def record(self, data: dict[str, Any]) -> dict[str, Any]:
        """The record of ``data`` (see :func:`make_record`)."""
        return make_record(self.name, data, env=self.env, roofs=self.roofs)

    def save(self, data: dict[str, Any], lines: Sequence[str] | None = None) -> dict[str, Any]:
        """Write the record of ``data`` (non-JSON values as their ``str``) and, given ``lines``,
        the markdown: the header line, a blank line, ``lines``. Returns the record."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rec = self.record(data)
        with open(self.json_path, "w") as fh:
            json.dump(rec, fh, indent=1, default=str)
        if lines is not None:
            with open(self.md_path, "w") as fh:
                fh.write("\n".join([header_line(rec), "", *lines]) + "\n")
        return rec

    def finish(self, data: dict[str, Any], lines: Sequence[str]) -> dict[str, Any]:
        """:meth:`save`, then print the markdown's lines (last, for the device tool)."""
        rec = self.save(data, lines)
        print("\n".join([header_line(rec), "", *lines]), flush=True)
        return rec


def write_results(
    out_dir: str | Path,
    name: str,
    data: dict[str, Any],
    lines: Sequence[str],
    *,
    env: dict[str, Any] | None = None,
    roofs: Roofs | dict[str, Any] | None = None,
) -> Path:
    """One-shot :class:`ResultWriter`: write and print; returns the JSON's path."""
    writer = ResultWriter(out_dir, name, env=env, roofs=roofs)
    writer.finish(data, lines)
    return writer.json_path


# ----------------------------------------------------------------------- upstream source checkouts
class SourceTreeFinder(importlib.abc.MetaPathFinder):
    """Finds top-level modules in one source checkout (a directory that is not installed) the way a
    ``sys.path[0]`` entry would: placed just before the path-based finder, the checkout is searched
    after built-in and frozen modules and before every ``sys.path`` entry. Sub-modules follow their
    package's ``__path__``."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(Path(root).resolve())

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: Any = None):  # noqa: D102
        if path is not None:  # a sub-module: its package's __path__ decides
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self.root])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SourceTreeFinder) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)


def add_source_tree(root: str | Path) -> Path:
    """Make the top-level modules of the source checkout ``root`` importable through a
    :class:`SourceTreeFinder` (installed once, just before the path-based finder), without
    editing ``sys.path``; returns the resolved root. Raises FileNotFoundError when ``root`` is not a
    directory."""
    path = Path(root).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"upstream source {path} is not a directory")
    finder = SourceTreeFinder(path)
    if finder not in sys.meta_path:
        at = next(
            (i for i, f in enumerate(sys.meta_path) if f is importlib.machinery.PathFinder),
            len(sys.meta_path),
        )
        sys.meta_path.insert(at, finder)
    return path


def import_from_source(root: str | Path, module: str) -> Any:
    """Import ``module`` from the source checkout ``root`` (see :func:`add_source_tree`)."""
    add_source_tree(root)
    return importlib.import_module(module)


def out_default() -> str:
    """The default output folder of every script: ``$OUT`` (the device tool's), else ``.``."""
    return os.environ.get("OUT", ".")
