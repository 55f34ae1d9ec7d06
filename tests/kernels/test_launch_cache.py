"""The eager launch cache (kernels/_launch.py), with stand-ins for the CUDA tensors and Triton's
compiled kernel: CI has no GPU, and the cache's logic (keys, argument order, fallbacks) is pure Python.
"""

from types import SimpleNamespace

import pytest
import torch
from flopkit.kernels import _launch


class FakeCudaTensor:
    is_cuda = True

    def __init__(self, ptr, dtype=torch.bfloat16):
        self.ptr, self.dtype = ptr, dtype

    def data_ptr(self):
        return self.ptr

    def get_device(self):
        return 0


class FakeKernel:
    """``kernel[grid](*args, **meta)`` records the call and returns a compiled kernel whose ``run``
    records the direct launches."""

    arg_names = ["X", "Y", "N", "BLOCK", "FLAG"]

    def __init__(self):
        self.slow_calls, self.fast_calls = [], []
        self.compiled = SimpleNamespace(function="fn", packed_metadata="md", run=self._run)

    def _run(self, *call):
        self.fast_calls.append(call)

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.slow_calls.append((grid, args, meta))
            return self.compiled

        return launch


@pytest.fixture
def runtime(monkeypatch):
    rt = SimpleNamespace(launch_enter_hook=None, launch_exit_hook=SimpleNamespace(calls=[]))
    monkeypatch.setattr(_launch, "_RUNTIME", rt)
    monkeypatch.setattr(_launch, "_raw_stream", lambda device: 1234)
    _launch.clear_launch_cache()
    yield rt
    _launch.clear_launch_cache()


def test_second_call_launches_the_compiled_kernel_directly(runtime):
    kernel, x, y = FakeKernel(), FakeCudaTensor(0x1000), FakeCudaTensor(0x2000)
    meta = {"BLOCK": 64, "FLAG": True, "num_warps": 4}
    _launch.launch(kernel, (7,), (x, y, 100), meta, 2)
    assert len(kernel.slow_calls) == 1 and not kernel.fast_calls
    _launch.launch(kernel, (7,), (x, y, 100), meta, 2)
    assert len(kernel.slow_calls) == 1
    # Triton's launcher order: grid, stream, function, metadata, hooks, then every parameter; the
    # tensors as their data pointers (ints skip the launcher's data_ptr() call and driver query).
    assert kernel.fast_calls == [(7, 1, 1, 1234, "fn", "md", None, None, None, 0x1000, 0x2000, 100, 64, True)]


@pytest.mark.parametrize(
    "change",
    [
        {"ptr": 0x1008},  # 16-byte alignment changes Triton's specialisation
        {"dtype": torch.float16},
        {"n": 101},
        {"grid": (8,)},
        {"block": 128},
    ],
)
def test_anything_triton_specialises_on_misses_the_cache(runtime, change):
    kernel, y = FakeKernel(), FakeCudaTensor(0x2000)

    def call(ptr=0x1000, dtype=torch.bfloat16, n=100, grid=(7,), block=64):
        x = FakeCudaTensor(ptr, dtype)
        _launch.launch(kernel, grid, (x, y, n), {"BLOCK": block, "FLAG": True, "num_warps": 4}, 2)

    call()
    call(**change)
    assert len(kernel.slow_calls) == 2 and not kernel.fast_calls


def test_installed_launch_hooks_take_the_ordinary_path(runtime):
    kernel, x = FakeKernel(), FakeCudaTensor(0x1000)
    meta = {"BLOCK": 64, "FLAG": False, "num_warps": 4}
    _launch.launch(kernel, (1,), (x, x, 5), meta, 2)
    runtime.launch_enter_hook = SimpleNamespace(calls=[print])  # e.g. a profiler's hook
    _launch.launch(kernel, (1,), (x, x, 5), meta, 2)
    assert len(kernel.slow_calls) == 2 and not kernel.fast_calls


def test_cpu_tensors_always_take_the_ordinary_path(runtime):
    kernel, x = FakeKernel(), torch.zeros(4)
    for _ in range(2):
        _launch.launch(kernel, (1,), (x, x, 4), {"BLOCK": 4, "FLAG": False}, 2)
    assert len(kernel.slow_calls) == 2 and not _launch._COMPILED


def test_a_plan_stands_for_grid_scalars_and_meta_but_not_for_tensors(runtime):
    kernel, y = FakeKernel(), FakeCudaTensor(0x2000)
    plan = object()
    meta = {"BLOCK": 64, "FLAG": True, "num_warps": 4}

    def call(x):
        _launch.launch(kernel, (3,), (x, y, 9), meta, 2, plan=plan)

    call(FakeCudaTensor(0x1000))
    call(FakeCudaTensor(0x3000))  # another aligned pointer: same specialisation, direct launch
    assert len(kernel.slow_calls) == 1 and len(kernel.fast_calls) == 1
    call(FakeCudaTensor(0x1004))  # misaligned: Triton specialises differently
    call(FakeCudaTensor(0x1000, torch.float32))  # another dtype
    assert len(kernel.slow_calls) == 3
    other = object()  # another plan (shape) never reuses this plan's entries
    _launch.launch(kernel, (3,), (FakeCudaTensor(0x1000), y, 9), meta, 2, plan=other)
    assert len(kernel.slow_calls) == 4


def _plan():
    return _launch.Plan("kernel", (4,), (), {}, parts=(4, 8))


def test_eager_partials_are_kept_on_the_plan_per_thread():
    import threading

    plan, like = _plan(), torch.zeros(1)
    a, b = _launch.partials(plan, True, like, True, True)
    # Flat (the kernels address them by pointer; see test_symbolic_batch.py for why).
    assert a.shape == b.shape == (32,) and a.dtype == torch.float32 and a.data_ptr() != b.data_ptr()
    again = _launch.partials(plan, True, like, True, True)
    assert again[0] is a and again[1] is b  # one allocation less per eager call
    other = []
    t = threading.Thread(target=lambda: other.extend(_launch.partials(plan, True, like, True, True)))
    t.start()
    t.join()
    assert other[0] is not a and other[1] is not b  # another thread never shares them


def test_traced_or_accumulating_partials_are_fresh():
    plan, like = _plan(), torch.zeros(1)
    first = _launch.partials(plan, False, like, True, False)
    assert first[1] is None and _launch.partials(plan, False, like, True, False)[0] is not first[0]
    z = _launch.partials(plan, True, like, True, True, reusable=False)
    assert all(p.count_nonzero() == 0 for p in z)  # a kernel that accumulates needs zeros
    z[0].fill_(1)
    assert _launch.partials(plan, True, like, True, True, reusable=False)[0].count_nonzero() == 0


def test_host_cdiv_and_next_power_of_2_are_tritons():
    """The launchers' plain-Python ``cdiv`` and ``next_power_of_2`` give Triton's values (every
    ``n`` up to 5000 and a few large ones), and a symbolic ``cdiv`` stays symbolic."""
    import triton
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    for n in [*range(0, 5001), 2**20 - 1, 2**20, 2**20 + 1, 10**9]:
        assert _launch.next_power_of_2(n) == triton.next_power_of_2(n), n
        for y in (1, 3, 16, 64, 1024):
            assert _launch.cdiv(n, y) == triton.cdiv(n, y), (n, y)
    env = ShapeEnv()
    rows = env.create_unbacked_symint()
    assert isinstance(_launch.cdiv(rows, 32), torch.SymInt)
