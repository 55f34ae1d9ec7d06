"""Each public op decides its call's route once (``_dispatch.route``), and each op's custom op and
eager path are generated from one spec (``_opspec.KernelOp``).

On a machine without CUDA ``backend="triton"`` runs the eager kernel path in the Triton interpreter
(conftest.py), the same chain of calls as ``backend="auto"`` on CUDA tensors, less the interpreter's
own checks. With CUDA the tests' tensors are CUDA tensors (``DEVICE``): there the interpreter is off,
and CPU tensors cannot take the kernel path.
"""

from __future__ import annotations

import ast
import importlib
import math
import sys
from pathlib import Path

import pytest
import torch
from flopkit.kernels import _dispatch
from flopkit.kernels._dispatch import CUSTOM_OP, KERNEL, REFERENCE
from torch.utils.flop_counter import FlopCounterMode

from flopkit import kernels

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
norm_module = importlib.import_module("flopkit.kernels.norm")
rope_module = importlib.import_module("flopkit.kernels.rope")


def _inputs():
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE).requires_grad_()

    x, r, w, s = rnd(6, 16), rnd(6, 16), rnd(16), rnd(16)
    xh, hw, w8 = rnd(6, 2, 8), rnd(2, 8), rnd(8)
    qkv, cos, sin = rnd(2, 3, 3 * 2 * 8), torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    cos, sin = cos.to(DEVICE), sin.to(DEVICE)
    return {
        "rms_norm": lambda b: kernels.rms_norm(x, w, backend=b),
        "rms_norm_residual": lambda b: kernels.rms_norm_residual(x, r, w, scale=s, backend=b),
        "per_head_rms_norm": lambda b: kernels.per_head_rms_norm(xh, w8, 2, backend=b),
        "head_norm": lambda b: kernels.head_norm(xh, hw, hw, mode="layer", backend=b),
        "qk_norm_rope": lambda b: kernels.qk_norm_rope(qkv, cos, sin, 2, w8, w8, backend=b),
    }


PUBLIC_OPS = list(_inputs())


# ------------------------------------------------------------------------------ one decision


@pytest.mark.parametrize("backend", ["triton", "auto", "torch"])
@pytest.mark.parametrize("name", PUBLIC_OPS)
def test_each_public_op_decides_its_route_exactly_once(monkeypatch, name, backend):
    decisions = []
    real = _dispatch.route

    def counting(*args, **kwargs):
        decisions.append(real(*args, **kwargs))
        return decisions[-1]

    for module in (norm_module, rope_module):
        monkeypatch.setattr(module, "route", counting)
    outs = _inputs()[name](backend)
    outs = outs if isinstance(outs, tuple) else (outs,)
    sum(o.float().sum() for o in outs).backward()  # the backward follows the forward's route
    # auto: the reference on CPU tensors; the kernel path on CUDA tensors
    assert decisions == [
        KERNEL if backend == "triton" or (backend == "auto" and DEVICE == "cuda") else REFERENCE
    ]


def _calls_in(path: Path, function: str) -> list[str]:
    """Names called inside ``function`` of the module at ``path``."""
    tree = ast.parse(path.read_text())
    (fn,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function]
    names = []
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            names.append(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
    return names


@pytest.mark.parametrize("name", PUBLIC_OPS)
def test_the_decision_is_written_once_per_public_op(name):
    path = ROOT / "kernels" / ("rope.py" if name == "qk_norm_rope" else "norm.py")
    calls = _calls_in(path, name)
    assert calls.count("route") == 1
    # The checks the route replaced are gone from every op and module, not moved elsewhere.
    sources = [*sorted((ROOT / "kernels").glob("*.py")), *sorted((ROOT / "flopkit" / "nn").glob("*.py"))]
    for source in sources:
        text = source.read_text()
        for gone in ("select_backend", "needs_custom_op", "_use_fused", "direct_apply"):
            assert gone not in text, f"{source.name} still has {gone}"
    # The custom op's body is the only other place that asks whether the reference runs (the op is
    # also called directly: opcheck, compiled graphs, counters on torch.ops).
    for source in sources:
        if source.name not in ("_dispatch.py", "_opspec.py"):
            assert "runs_reference_in_op" not in source.read_text(), source.name


def test_route_table(monkeypatch):
    x = torch.randn(3, 8)
    assert _dispatch.route("torch", x, "t") is REFERENCE
    assert _dispatch.route("auto", x, "t") is REFERENCE  # CPU tensor
    assert _dispatch.route("triton", x.to(DEVICE), "t") is KERNEL  # CUDA, or the interpreter
    assert _dispatch.route("auto", x.double(), "t") is REFERENCE
    assert _dispatch.route(CUSTOM_OP, x, "t") is CUSTOM_OP  # decided by the caller
    with kernels.route_through_custom_ops():
        assert _dispatch.route("auto", x, "t") is CUSTOM_OP  # the reference inside the op
        assert _dispatch.route("auto", torch.empty(3, 8, device="meta"), "t") is CUSTOM_OP
        assert _dispatch.route("torch", x, "t") is REFERENCE
    with FlopCounterMode(display=False):
        assert _dispatch.route("triton", x.to(DEVICE), "t") is CUSTOM_OP
    with pytest.raises(ValueError, match="backend must be one of"):
        _dispatch.route("cuda", x, "t")
    with pytest.raises(TypeError, match="got float64"):
        _dispatch.route("triton", x.to(DEVICE).double(), "t")
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16"):
        _dispatch.route("auto", x.int(), "t")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        _dispatch.route("triton", x, "t")
    # resolve_backend is the same rules without the dtype rule.
    assert kernels.resolve_backend("auto", x.int(), "t") == "torch"


# ------------------------------------------------------------------------------ one spec


def _families():
    from flopkit.kernels import _norm_ops, _rope_ops, _sdpa_ops

    return {"_norm_ops.py": _norm_ops.OPS, "_rope_ops.py": _rope_ops.OPS, "_sdpa_ops.py": _sdpa_ops.OPS}


def test_every_flopkit_kernel_op_comes_from_one_spec():
    specs = {name: spec for ops in _families().values() for name, spec in ops.items()}
    assert sorted(specs) == [
        "flopkit::attention",
        "flopkit::attention_backward",
        "flopkit::head_norm",
        "flopkit::norm_backward",
        "flopkit::per_head_rms_norm",
        "flopkit::qk_norm_rope",
        "flopkit::qk_norm_rope_attention",
        "flopkit::qk_norm_rope_attention_backward",
        "flopkit::qk_norm_rope_backward",
        "flopkit::rms_norm",
        "flopkit::rms_norm_residual",
    ]
    for name, spec in specs.items():
        short = name.split("::")[1]
        overload = getattr(torch.ops.flopkit, short).default
        assert str(overload._schema) == name + spec.schema
        assert spec.op._opoverload is overload
        if spec.setup is not None:  # forward ops: eager Function generated with the spec's backward
            assert spec.function.backward is spec.backward
            assert spec.via_op is spec.op or spec.op_function.backward is spec.backward
        else:  # backward ops: called by their forward op's backward
            assert spec.eager is None and spec.via_op is spec.op


@pytest.mark.parametrize("module", ["_norm_ops.py", "_rope_ops.py", "_sdpa_ops.py"])
def test_op_modules_write_no_op_machinery_of_their_own(module):
    """The op modules hold specs only: no custom op, autograd Function or registration is written
    there (KernelOp generates them), so no op can be written twice."""
    tree = ast.parse((ROOT / "kernels" / module).read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for machinery in (
        "triton_op",
        "custom_op",
        "register_fake",
        "register_autograd",
        "register_flop_formula",
        "Function",
        "wrapped",
        "launch",
    ):
        assert machinery not in names, f"{module} uses {machinery}"


# A spec with no Triton kernel: the generator's wiring, observed.
_SEEN: list[tuple[str, object]] = []


def _double_forward(x: torch.Tensor, scale: float, *, run) -> torch.Tensor:
    _SEEN.append(("forward", run.__name__))
    return x * (2 * scale)


def _double_setup(ctx, inputs, output) -> None:
    _SEEN.append(("setup", ctx.eager))
    ctx.scale = inputs[1]


def _double_backward(ctx, dy):
    _SEEN.append(("backward", ctx.eager))
    return dy * (2 * ctx.scale), None


@pytest.fixture(scope="module")
def double_op():
    from flopkit.kernels._opspec import KernelOp

    return KernelOp(
        "flopkit_test::double",
        "(Tensor x, float scale) -> Tensor",
        forward=_double_forward,
        reference=lambda x, scale: x * (2 * scale),
        fake=lambda x, scale: torch.empty_like(x),
        flops=lambda x_shape, *args, out_shape=None, **kwargs: math.prod(x_shape),
        setup=_double_setup,
        backward=_double_backward,
    )


def test_generated_paths_call_the_one_spec(double_op):
    x = torch.randn(4, 3, device=DEVICE, requires_grad=True)
    _SEEN.clear()
    double_op.eager(x, 1.5).sum().backward()
    assert _SEEN == [("forward", "launch"), ("setup", True), ("backward", True)]
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0))
    _SEEN.clear()
    x.grad = None
    double_op.via_op(x, 1.5).sum().backward()
    assert _SEEN == [("forward", "wrapped"), ("setup", False), ("backward", False)]
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0))
    _SEEN.clear()
    with torch.no_grad():
        double_op.eager(x, 1.0)
    assert _SEEN == [("forward", "launch")]  # no gradient needed: no autograd Function
    with FlopCounterMode(display=False) as counter:
        torch.ops.flopkit_test.double(x, 1.0)
    assert counter.get_total_flops() == x.numel()
    assert torch.ops.flopkit_test.double(torch.empty(2, 5, device="meta"), 1.0).shape == (2, 5)


@pytest.mark.parametrize(
    ("name", "schema", "message"),
    [
        ("flopkit_test::bad_type", "(Tensor x, complex c) -> Tensor", "KernelOp specs take"),
        # torch registers an int as SymInt: the spec must say what the registry will hold.
        ("flopkit_test::bad_int", "(Tensor x, int n) -> Tensor", "registered as"),
    ],
)
def test_a_spec_whose_schema_the_registry_would_not_hold_is_refused(name, schema, message):
    from flopkit.kernels._opspec import KernelOp

    with pytest.raises(ValueError, match=message):
        KernelOp(name, schema, forward=_double_forward, reference=lambda x, c: x, fake=lambda x, c: x)


# ------------------------------------------------------------------------------ host cost

# Frames that run only on CPU tensors (the interpreter's checks); CUDA tensors never reach them.
_CPU_ONLY = {"triton_interpret", "triton_available", "runs_reference_in_op"}
_LAUNCHERS = {"norm_forward", "norm_backward", "qk_norm_rope_fwd", "qk_norm_rope_bwd"}
# Argument checks, which belong to the ops' validation, not to their dispatch.
_CHECKS = ("_check", "check_", "_shared_head_dim", "_head_shape", "<genexpr>", "<setcomp>")


def _python_calls(fn) -> list[str]:
    """Python functions ``fn`` calls (flopkit's and torch's), a launcher counted once with nothing
    below it, argument checks and the interpreter's CPU-only checks left out."""
    seen, skipping = [], []

    def profile(frame, event, arg):
        if skipping:
            if event == "return" and frame is skipping[-1]:
                skipping.pop()
            return
        if event != "call":
            return
        name, path = frame.f_code.co_name, frame.f_code.co_filename
        if name in _CPU_ONLY or name.startswith(_CHECKS):
            skipping.append(frame)
            return
        if name in _LAUNCHERS:
            seen.append(name)
            skipping.append(frame)
            return
        if "torch" in path and str(ROOT) not in path:
            seen.append(f"torch:{name}")
        elif str(ROOT) in path and "tests" not in Path(path).parts:
            seen.append(name)

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen


# The whole eager path of each op, public function to launcher and back: before the route was
# decided once, rms_norm ran 14 flopkit calls here (20 with torch's), qk_norm_rope 15 (26).
EAGER_FORWARD = {
    "rms_norm": ["rms_norm", "route", "eager", "forward", "_rms_norm_forward", "norm_forward", "_rms_norm_setup"],
    "rms_norm_residual": [
        "rms_norm_residual", "route", "eager", "forward", "_rms_norm_residual_forward", "norm_forward",
        "_rms_norm_residual_setup",
    ],
    "per_head_rms_norm": [
        "per_head_rms_norm", "route", "eager", "forward", "_per_head_forward", "norm_forward", "_per_head_setup",
    ],
    "head_norm": ["head_norm", "route", "eager", "forward", "_head_norm_forward", "norm_forward", "_head_norm_setup"],
    "qk_norm_rope": ["qk_norm_rope", "route", "eager", "forward", "qk_norm_rope_fwd", "_setup", "_v_view"],
}  # fmt: skip
EAGER_BACKWARD = {
    "rms_norm": ["_rms_norm_backward", "_grads", "norm_backward"],
    "rms_norm_residual": ["_rms_norm_residual_backward", "_grads", "norm_backward"],
    "per_head_rms_norm": ["_per_head_backward", "_grads", "norm_backward"],
    "head_norm": ["_head_norm_backward", "_grads", "norm_backward"],
    "qk_norm_rope": ["_backward", "qk_norm_rope_bwd"],  # the backward spec's launch
}


@pytest.mark.parametrize("name", PUBLIC_OPS)
def test_eager_path_python_calls(name):
    """The eager hot path's host cost, structurally: the Python calls from the public op to its
    launcher, forward and backward (torch's ``is_compiling``, once, in the route)."""
    fn = _inputs()[name]
    fn("triton")  # plans cached, modules imported
    outs = []
    calls = _python_calls(lambda: outs.append(fn("triton")))
    flopkit_calls = [c for c in calls if not c.startswith("torch:")]
    assert flopkit_calls == EAGER_FORWARD[name]
    assert [c for c in calls if c == "torch:is_compiling"] == ["torch:is_compiling"]
    out = outs[0] if isinstance(outs[0], tuple) else (outs[0],)
    node = out[0].grad_fn
    grads = tuple(torch.ones_like(o) for o in out)
    calls = _python_calls(lambda: node.apply(*grads))
    assert [c for c in calls if not c.startswith("torch:")] == EAGER_BACKWARD[name]
