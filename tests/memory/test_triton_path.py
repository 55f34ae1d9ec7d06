"""The replay of flopkit's ViT-5 on its Triton path (custom ops' fakes and autograd, CUDA structure)."""

import pytest
from _references import backends_of
from flopkit.kernels._dispatch import triton_available
from torch.utils._python_dispatch import TorchDispatchMode

from flopkit import kernels
from flopkit.models import load_model
from flopkit.step_memory import memory
from flopkit.step_memory.predict import triton_path

pytestmark = pytest.mark.skipif(not triton_available(), reason="the custom ops need triton")


class _Recording(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_replay_keeps_the_cuda_structure_under_a_dispatch_mode():
    with _Recording():
        assert kernels.ops_observed()  # a counter would see each module's ops
        with kernels.replay_cuda_paths():
            assert not kernels.ops_observed() and kernels.replaying_cuda()
        assert kernels.ops_observed()


def vit5_small(triton: bool):
    loaded = load_model("vit5-small")
    for module in loaded.module.modules():
        if hasattr(module, "use_triton"):
            module.use_triton = triton
    return loaded


def test_triton_path_saves_less_than_the_reference_path():
    fused = vit5_small(True)
    assert triton_path(fused.module)
    reference = vit5_small(False)
    assert not triton_path(reference.module)
    options = dict(batch=4, training=True, autocast="bf16", depth=0)
    on, off = memory(fused, **options), memory(reference, **options)
    # The fused norm and RoPE kernels save their inputs only; the reference saves its float32
    # intermediates. Parameters and optimizer state are the same either way.
    assert on.saved_bytes < off.saved_bytes
    assert on.steady_bytes == off.steady_bytes


def test_gelu_linear_replays_on_meta_and_saves_the_modules_bytes(monkeypatch):
    """In a replay of a CUDA step (meta tensors, a dispatch mode recording) an ``Mlp`` with
    ``fused_gelu_linear`` runs ``flopkit::gelu_linear`` (its fake and its autograd) and saves
    ``h`` and ``gelu'`` where the modules save ``pre`` and ``h``: the same bytes, the same shapes."""
    import torch

    from flopkit.nn.vit5 import Mlp

    calls = backends_of(monkeypatch, kernels, "gelu_linear")
    saved = {}
    for fused in (True, False):
        with torch.device("meta"):
            mlp = Mlp(64, 256).bfloat16()
            x = torch.empty(2, 9, 64, dtype=torch.bfloat16, requires_grad=True)
        mlp.fused_gelu_linear = fused
        sizes = []

        def pack(t, sizes=sizes):
            sizes.append((tuple(t.shape), t.dtype))
            return t

        with (
            _Recording(),
            kernels.replay_cuda_paths(),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            y = mlp(x)
        with _Recording(), kernels.replay_cuda_paths():
            y.sum().backward()
        assert y.shape == (2, 9, 64) and x.grad.shape == x.shape
        saved[fused] = sorted(sizes, key=str)
    assert calls == [kernels.Route.CUSTOM_OP]
    assert sum(torch.Size(s).numel() for s, _ in saved[True]) == sum(
        torch.Size(s).numel() for s, _ in saved[False]
    )
