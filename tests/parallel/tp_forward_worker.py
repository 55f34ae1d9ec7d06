"""Two gloo ranks run tiny ViT-5 and Llama models under flopkit's tensor-parallel plans; rank 0 writes
how far each TP forward is from the same model's one-process forward (run by ``test_tp_numerics.py``).

``python tests/parallel/tp_forward_worker.py OUT.json``
"""

from __future__ import annotations

import json
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

LLAMA = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
}
# LayerScale at 1 (not 1e-4) so that the attention branch moves the output.
VIT = {
    "image_size": 32,
    "patch_size": 16,
    "hidden_dim": 64,
    "depth": 2,
    "num_heads": 4,
    "num_classes": 10,
    "layer_scale_init": 1.0,
}


def build(name: str) -> torch.nn.Module:
    from flopkit.models import build_model
    from flopkit.nn import ViT5

    torch.manual_seed(0)
    if name == "llama":
        return build_model("hf:llama", LLAMA, device="cpu").eval()
    return ViT5(**VIT).eval()


def forward(model: torch.nn.Module, name: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if name == "llama":
            ids = torch.randint(0, LLAMA["vocab_size"], (2, 12), generator=gen)
            return model(input_ids=ids).last_hidden_state
        return model(torch.randn(2, 3, 32, 32, generator=gen))


def tp_forward(name: str, styles: dict | None) -> torch.Tensor:
    """The model's forward with TP over 2 ranks: flopkit's plan, or ``styles`` (path -> style) instead."""
    from flopkit.parallel import ParallelConfig
    from flopkit.parallel.plan import TensorParallelPlan
    from flopkit.parallel.run import _meshes, apply_plan, check_sharding

    model = build(name)
    config = ParallelConfig(tp=2)
    plan = check_sharding(model, config) if styles is None else TensorParallelPlan(styles, "naive")
    tp_mesh, _, _ = _meshes(config)
    apply_plan(model, plan, [], tp_mesh, None, torch.float32, torch.float32)
    return forward(model, name)


def run(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)  # one intra-op thread per rank (2 ranks on 2 cores)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results = {}
    for name in ("vit5", "llama"):
        reference = forward(build(name), name)
        split = tp_forward(name, None)
        results[name] = {
            "max_abs": (split - reference).abs().max().item(),
            "ref_max": reference.abs().max().item(),
            "shape": list(split.shape),
        }
    # The negative control: a plain colwise qkv gives rank 0 q and half of k, not its heads' q, k, v.
    naive = {}
    for i in range(VIT["depth"]):
        naive.update({f"blocks.{i}.attn.qkv": "colwise", f"blocks.{i}.attn.proj": "rowwise"})
    results["vit5_plain_colwise_qkv"] = {
        "max_abs": (tp_forward("vit5", naive) - forward(build("vit5"), "vit5")).abs().max().item()
    }
    if rank == 0:
        with open(out, "w") as fh:
            json.dump(results, fh)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    # The ranks fork from this process and inherit its imports (spawned, each imported torch,
    # flopkit and transformers' Llama again: seconds per rank). This process has run no op yet.
    import transformers.models.llama.modeling_llama  # noqa: F401

    import flopkit.models  # noqa: F401
    import flopkit.parallel.run  # noqa: F401

    mp.start_processes(run, args=(free_port(), sys.argv[1]), nprocs=2, join=True, start_method="fork")
