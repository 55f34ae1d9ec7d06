"""flopkit's ViT5 under DDP and FSDP2: a short training run whose losses must match one process's.

Every rank builds the same model (same seed), takes its slice of a fixed random batch, and runs a
few optimizer steps under ``DistributedDataParallel`` and, separately, under FSDP2
(``fully_shard`` on every block, then on the root). Rank 0 also runs the same steps in one process
on the full batch. Per step, the mean loss over ranks must equal the single-process loss, and the
final parameters (gathered with ``full_tensor()`` under FSDP2) must equal the single-process ones.

The distributed runs are exact up to float rounding: each rank's loss is the mean over an equal
share of the batch, and DDP/FSDP2 average the gradients over ranks, so the averaged gradient is the
full-batch gradient. On CUDA the model runs under bf16 autocast, so the Triton norm kernels and the
fused QK-norm + RoPE op run in both the reference and the distributed runs.

Run on a 2-GPU machine from the repository root (flopkit installed, ``pip install -e .``)::

    python benchmarks/multi_gpu.py --nproc 2                  # spawns 2 processes, nccl
    torchrun --nproc-per-node 2 benchmarks/multi_gpu.py        # the same under torchrun

and on CPU (gloo, float32)::

    python benchmarks/multi_gpu.py --device cpu --nproc 2

Prints a table last, writes ``multi_gpu.json`` under ``$OUT`` (or ``--out``) when set, exits 1 when a
mode does not match the single-process run (2 on bad arguments).

Mismatch measures, both scale-free:
- ``loss_rel``: max over steps of ``|loss_dist - loss_ref| / |loss_ref|``;
- ``param_rel``: ``||p_dist - p_ref|| / ||p_ref - p_init||`` over all parameters: the error as a share
  of how far training moved the weights (a rank that skipped the gradient average is off by O(1)).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import socket
import sys
import tempfile
import traceback
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

MODES = ("ddp", "fsdp2")
OPTIMIZERS = ("adamw", "sgd")
# (loss_rel, param_rel) tolerances. float32: only the reduction order differs (the batch is split,
# gradients are summed across ranks); measured on CPU: 1e-7 and 2e-6. bf16 autocast: GEMMs of a
# different batch size round differently (2**-8 relative each); measured on CPU: 2e-4 and 1.5e-2.
# A rank that trains on its share without the gradient average lands at param_rel ~1.2 and
# loss_rel 0.05-0.3 after the first step (tests/test_distributed.py checks that separation).
TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (1e-2, 1e-1)}


@dataclass
class RunConfig:
    """What every rank runs: the model, the data and the optimizer."""

    preset: str = "vit5-small"
    depth: int = 2
    image_size: int = 64
    num_classes: int = 10
    batch: int = 8
    steps: int = 4
    lr: float = 1e-3
    optimizer: str = "adamw"
    seed: int = 0
    device: str = "cuda"
    dtype: str = "bfloat16"
    modes: tuple[str, ...] = MODES
    grad_sync: bool = True  # False: the negative control (ranks skip the gradient average)
    custom_ops: bool = False  # every norm / RoPE call through its flopkit:: custom op
    compile: bool = False  # torch.compile the (wrapped) model, the reference too


@dataclass
class ModeResult:
    """One distributed mode against the single-process run."""

    mode: str
    world_size: int
    losses: list[float]
    ref_losses: list[float]
    loss_rel: float
    param_rel: float
    param_max_abs: float
    loss_tol: float
    param_tol: float
    ok: bool
    error: str | None = None
    extra: dict = field(default_factory=dict)


def build_model(cfg: RunConfig) -> torch.nn.Module:
    """The ViT5 every rank and the reference start from: same seed, so bitwise the same weights."""
    from flopkit.nn import ViT5

    torch.manual_seed(cfg.seed)
    return ViT5.from_preset(
        cfg.preset, depth=cfg.depth, image_size=cfg.image_size, num_classes=cfg.num_classes
    )


def make_batches(cfg: RunConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` full batches ``(images [B, 3, S, S] float32, labels [B] int64)``, on the CPU."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    shape = (cfg.batch, 3, cfg.image_size, cfg.image_size)
    return [
        (
            torch.randn(shape, generator=gen),
            torch.randint(0, cfg.num_classes, (cfg.batch,), generator=gen),
        )
        for _ in range(cfg.steps)
    ]


def shard(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous, equal share of dim 0 (the batch must divide evenly)."""
    per_rank = batch.shape[0] // world_size
    return batch[rank * per_rank : (rank + 1) * per_rank]


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.05)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9)


def train_steps(
    model: torch.nn.Module,
    cfg: RunConfig,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> list[float]:
    """Run ``cfg.steps`` steps on this rank's share of each batch; the loss of each step, mean over ranks."""
    from flopkit import kernels

    opt = make_optimizer(cfg, model.parameters())
    route = kernels.route_through_custom_ops if cfg.custom_ops else contextlib.nullcontext
    if cfg.compile:
        model = torch.compile(model)
    no_sync = contextlib.nullcontext
    if not cfg.grad_sync and world_size > 1:
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
            model.set_requires_gradient_sync(False)
        else:  # DDP
            no_sync = model.no_sync
    dtype = getattr(torch, cfg.dtype)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    losses = []
    for images, labels in batches:
        images = shard(images, rank, world_size).to(device)
        labels = shard(labels, rank, world_size).to(device)
        opt.zero_grad(set_to_none=True)
        with no_sync(), route():
            with autocast:
                logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
            loss.backward()
        opt.step()
        value = loss.detach().clone()
        if world_size > 1:
            dist.all_reduce(value)
            value /= world_size
        losses.append(value.item())
    return losses


def full_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Name -> full float32 CPU copy of every parameter (FSDP2's DTensor shards are gathered: collective)."""
    out = {}
    for name, p in model.named_parameters():
        t = p.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        out[name.removeprefix("module.")] = t.float().cpu().clone()
    return out


def param_distance(
    mine: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], init: dict[str, torch.Tensor]
) -> tuple[float, float]:
    """``(||mine - ref|| / ||ref - init||, max |mine - ref|)`` over all parameters together."""
    if mine.keys() != ref.keys() or ref.keys() != init.keys():
        raise KeyError(f"parameter sets differ: {sorted(set(mine) ^ set(ref) ^ set(init))[:5]}")
    err = math.sqrt(sum(float((mine[k] - ref[k]).double().pow(2).sum()) for k in ref))
    moved = math.sqrt(sum(float((ref[k] - init[k]).double().pow(2).sum()) for k in ref))
    max_abs = max(float((mine[k] - ref[k]).abs().max()) for k in ref)
    return (err / moved if moved > 0 else math.inf), max_abs


def compare(
    mode: str,
    world_size: int,
    losses: list[float],
    ref_losses: list[float],
    param_rel: float,
    param_max_abs: float,
    dtype: torch.dtype,
) -> ModeResult:
    """The pass rule: every step's loss and the final parameters within the dtype's tolerances."""
    loss_tol, param_tol = TOLERANCES[dtype]
    if len(losses) != len(ref_losses):
        raise ValueError(f"{mode}: {len(losses)} losses against {len(ref_losses)} reference steps")
    loss_rel = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses, strict=True))
    ok = loss_rel <= loss_tol and param_rel <= param_tol
    return ModeResult(
        mode, world_size, losses, ref_losses, loss_rel, param_rel, param_max_abs, loss_tol, param_tol, ok
    )


def wrap(mode: str, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP, or FSDP2 with one FSDP unit per block plus the root (patch embed, tokens, norm, head)."""
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def worker(rank: int, world_size: int, cfg: RunConfig, result_path: str | None) -> bool:
    """One rank: the reference (rank 0), then each mode; rank 0 writes the results. True when all match."""
    local_rank = int(os.environ.get("LOCAL_RANK", rank))  # torchrun sets it; spawned ranks are local
    device = torch.device(cfg.device, local_rank) if cfg.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    dtype = getattr(torch, cfg.dtype)
    batches = make_batches(cfg)
    init = full_params(build_model(cfg))
    ref_losses: list[float] = []
    ref_params: dict[str, torch.Tensor] = {}
    if rank == 0:
        ref = build_model(cfg).to(device)
        ref_losses = train_steps(ref, cfg, batches, device)
        ref_params = full_params(ref)
        del ref
    results = []
    for mode in cfg.modes:
        try:
            model = wrap(mode, build_model(cfg).to(device), device)
            losses = train_steps(model, cfg, batches, device, rank, world_size)
            params = full_params(model)  # collective under FSDP2: every rank calls it
            if rank == 0:
                rel, max_abs = param_distance(params, ref_params, init)
                results.append(compare(mode, world_size, losses, ref_losses, rel, max_abs, dtype))
            del model
        except Exception as exc:  # a failed mode is a row of the report; the next mode still runs
            # (a mode that fails on some ranks only leaves the others waiting at the barrier)
            if rank == 0:
                nan = float("nan")
                row = ModeResult(mode, world_size, [], ref_losses, nan, nan, nan, *TOLERANCES[dtype], False)
                row.error = f"{type(exc).__name__}: {exc}"
                row.extra["traceback"] = traceback.format_exc()
                results.append(row)
        dist.barrier()
    ok = all(r.ok for r in results)
    if rank == 0:
        report(cfg, world_size, device, results, result_path)
    dist.destroy_process_group()
    return ok


def report(
    cfg: RunConfig, world_size: int, device: torch.device, results: list[ModeResult], path: str | None
) -> None:
    """Print the table (last) and write the JSON."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    payload = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "device": name,
        "world_size": world_size,
        "config": {**asdict(cfg), "modes": list(cfg.modes)},
        "results": [asdict(r) for r in results],
        "ok": all(r.ok for r in results),
    }
    if path:
        with open(path, "w") as fh:
            json.dump(payload, fh, indent=1)
    for r in results:
        if r.error:
            print(f"{r.mode} failed: {r.error}\n{r.extra['traceback']}", file=sys.stderr)
    print(
        f"\n{cfg.preset} depth={cfg.depth} image={cfg.image_size} batch={cfg.batch} "
        f"({cfg.batch // world_size} per rank) x {world_size} ranks, {cfg.steps} {cfg.optimizer} steps, "
        f"{cfg.dtype} on {name}, torch {torch.__version__}"
        + (", torch.compile" if cfg.compile else "")
        + (", through the flopkit:: custom ops" if cfg.custom_ops else "")
        + ("" if cfg.grad_sync else "; NEGATIVE CONTROL: no gradient average, every mode must fail")
    )
    ref = results[0].ref_losses if results else []
    print(f"single process losses: {', '.join(f'{v:.6f}' for v in ref)}")
    print("| mode | losses | max loss rel | param rel (of update) | param max abs | tol (loss, param) | ok |")
    print("|---|---|---:|---:|---:|---|---|")
    for r in results:
        losses = ", ".join(f"{v:.6f}" for v in r.losses) or r.error
        print(
            f"| {r.mode} | {losses} | {r.loss_rel:.2e} | {r.param_rel:.2e} | {r.param_max_abs:.2e} "
            f"| {r.loss_tol:g}, {r.param_tol:g} | {'yes' if r.ok else 'NO'} |"
        )


def _spawned(rank: int, world_size: int, cfg: RunConfig, result_path: str) -> None:
    worker(rank, world_size, cfg, result_path if rank == 0 else None)  # rank 0 writes the verdict


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv: list[str] | None) -> tuple[RunConfig, int, str | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="processes to spawn (default: 2; under torchrun, its WORLD_SIZE)",
    )
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument(
        "--dtype", choices=("bfloat16", "float32"), default=None, help="default: bf16 on cuda, fp32 on cpu"
    )
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--preset", default=RunConfig.preset)
    p.add_argument("--depth", type=int, default=RunConfig.depth)
    p.add_argument("--image-size", type=int, default=RunConfig.image_size)
    p.add_argument("--batch", type=int, default=RunConfig.batch, help="global batch, split over the ranks")
    p.add_argument("--steps", type=int, default=RunConfig.steps)
    p.add_argument("--lr", type=float, default=RunConfig.lr)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=RunConfig.optimizer)
    p.add_argument(
        "--no-grad-sync",
        action="store_true",
        help="negative control: the ranks skip the gradient average, so the check must fail (exit 1)",
    )
    p.add_argument(
        "--custom-ops",
        action="store_true",
        help="send every norm / QK-norm+RoPE call through its flopkit:: custom op (autograd registration)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the wrapped model and the reference")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for multi_gpu.json (default: $OUT)")
    a = p.parse_args(argv)
    torchrun = "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available (use --device cpu)")
    world = int(os.environ["WORLD_SIZE"]) if torchrun else (a.nproc if a.nproc is not None else 2)
    if torchrun and a.nproc is not None and a.nproc != world:
        p.error(f"--nproc {a.nproc} disagrees with torchrun's WORLD_SIZE={world} (leave it out)")
    if world < 2:
        p.error(f"--nproc must be >= 2, got {world}")
    if device == "cuda" and not torchrun and world > torch.cuda.device_count():
        p.error(f"--nproc {world} needs {world} GPUs, {torch.cuda.device_count()} visible")
    modes = tuple(m.strip() for m in a.modes.split(",") if m.strip())
    if not modes or any(m not in MODES for m in modes):
        p.error(f"--modes must be a comma list of {', '.join(MODES)}, got {a.modes!r}")
    for name in ("depth", "image_size", "batch", "steps"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.batch % world:
        p.error(f"--batch must be divisible by the number of processes ({world}), got {a.batch}")
    if not a.lr > 0:
        p.error(f"--lr must be positive, got {a.lr}")
    cfg = RunConfig(
        preset=a.preset,
        depth=a.depth,
        image_size=a.image_size,
        batch=a.batch,
        steps=a.steps,
        lr=a.lr,
        optimizer=a.optimizer,
        device=device,
        dtype=a.dtype or ("bfloat16" if device == "cuda" else "float32"),
        modes=modes,
        grad_sync=not a.no_grad_sync,
        custom_ops=a.custom_ops,
        compile=a.compile,
    )
    try:  # a bad preset or size is refused here, before any process starts; on the meta device,
        # so this process computes nothing before the CPU ranks fork from it
        with torch.device("meta"):
            build_model(cfg)
    except ValueError as exc:
        p.error(str(exc))
    return cfg, world, a.out


def main(argv: list[str] | None = None) -> int:
    cfg, world, out = parse_args(argv)
    if out:
        os.makedirs(out, exist_ok=True)
    if "LOCAL_RANK" in os.environ:  # torchrun: this process is one rank; MASTER_ADDR/PORT are set
        rank = int(os.environ["RANK"])
        path = os.path.join(out, "multi_gpu.json") if out and rank == 0 else None
        ok = worker(rank, world, cfg, path)
        return 0 if ok else 1
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(out or tmp, "multi_gpu.json")
        # On CPU the ranks fork from this process and inherit its imports (DDP imports
        # torch._dynamo, seconds per process); CUDA needs fresh processes.
        method = "spawn" if cfg.device == "cuda" else "fork"
        if method == "fork":
            import torch._dynamo  # noqa: F401
        try:
            mp.start_processes(
                _spawned, args=(world, cfg, path), nprocs=world, join=True, start_method=method
            )
        except ProcessException as exc:  # a rank crashed before rank 0 wrote the results
            print(f"a rank failed: {exc}", file=sys.stderr)
            return 1
        with open(path) as fh:
            return 0 if json.load(fh)["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
