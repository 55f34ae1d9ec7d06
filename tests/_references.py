"""Independent float64 norms for the kernel tests (written from docs/vit5.md, not imported)."""

from __future__ import annotations

import torch

TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cold_compile(enabled: bool = True):
    """Inside, ``torch.compile`` compiles from scratch (Inductor's and AOTAutograd's caches off). A
    test that flips a kernel constant between two compiles needs it: the caches key on the traced
    graph, which the constant (read inside a custom op's body) does not change, and would hand the
    second compile the first one's code. ``enabled=False`` leaves the caches on."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(force_disable_caches=enabled)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64; NaN anywhere fails."""
    out, ref = out.double().cpu(), ref.double().cpu()
    assert out.shape == ref.shape
    assert torch.isfinite(out).all(), "non-finite output"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def norm64(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    centre: bool = False,
) -> torch.Tensor:
    """Normalise the last dim of float64 ``x``: ``(x - mean?) / sqrt(mean(.^2) + eps) * w + b``."""
    if centre:
        x = x - x.mean(-1, keepdim=True)
    y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def grads64(fn, inputs: list[torch.Tensor | None], grad_out):
    """Outputs and input gradients of ``fn`` on float64 copies of ``inputs``."""
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    gos = grad_out if isinstance(grad_out, tuple) else (grad_out,)
    used = [t for t in leaves if t is not None]
    gs = torch.autograd.grad(outs, used, [g.double() for g in gos])
    it = iter(gs)
    return out, [None if t is None else next(it) for t in leaves]


def kernel_grads(fn, inputs: list[torch.Tensor | None], grad_out):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    gos = grad_out if isinstance(grad_out, tuple) else (grad_out,)
    used = [t for t in leaves if t is not None]
    gs = torch.autograd.grad(outs, used, list(gos))
    it = iter(gs)
    return out, [None if t is None else next(it) for t in leaves]


def symbolic_fake_tensors(*shapes):
    """Fake tensors whose every size is a dynamic SymInt, as opcheck's ``test_aot_dispatch_dynamic``
    and ``torch.compile(dynamic=True)`` trace them; returns ``(mode, tensors)``, to use in
    ``with mode:``."""
    from torch._dynamo.source import ConstantSource
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

    env = ShapeEnv()
    mode = FakeTensorMode(shape_env=env)

    def sym(n, name):
        symbol = env.create_symbol(n, ConstantSource(name), dynamic_dim=DimDynamic.DYNAMIC)
        return env.create_symintnode(symbol, hint=n)

    with mode:
        tensors = [torch.empty(*(sym(n, f"t{i}_{j}") for j, n in enumerate(s))) for i, s in enumerate(shapes)]
    return mode, tensors


def backends_of(monkeypatch, module, name: str) -> list:
    """Replace ``module.name`` with a spy that calls it and records each call's ``backend`` keyword
    (a :class:`~flopkit.kernels.Route` where the caller decided one); returns the record."""
    seen = []
    real = getattr(module, name)

    def spy(*args, **kw):
        seen.append(kw.get("backend"))
        return real(*args, **kw)

    monkeypatch.setattr(module, name, spy)
    return seen
