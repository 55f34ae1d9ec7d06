"""``kernels.gelu`` and its ``flopkit::gelu`` op: the same values and gradients as ``F.gelu``, a
well-formed custom op (schema, fake, autograd), and, on a GPU, the op in compiled ViT-5 graphs."""

import pytest
import torch
import torch.nn.functional as F
from flopkit.kernels import activation

from flopkit import kernels
from flopkit.nn import ViT5


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_is_f_gelu_outside_compiled_code(approximate):
    x = torch.randn(5, 7, dtype=torch.float64)
    assert torch.equal(kernels.gelu(x, approximate), F.gelu(x, approximate=approximate))


def test_gelu_rejects_an_unknown_approximation():
    with pytest.raises(ValueError, match="approximate must be one of"):
        kernels.gelu(torch.randn(3), "erf")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_op_forward_and_backward_match_f_gelu_in_float64(approximate):
    x = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 9, dtype=torch.float64)
    y = activation._gelu_op(x, approximate)
    (dx,) = torch.autograd.grad(y, x, g)
    x2 = x.detach().requires_grad_()
    y2 = F.gelu(x2, approximate=approximate)
    (dx2,) = torch.autograd.grad(y2, x2, g)
    assert torch.equal(y, y2) and torch.equal(dx, dx2)


@pytest.mark.parametrize("op", ["gelu", "gelu_backward"])
def test_opcheck_gelu_ops(op):
    x = torch.randn(3, 5, requires_grad=op == "gelu")
    args = (x, "none") if op == "gelu" else (torch.randn(3, 5), x, "none")
    torch.library.opcheck(getattr(torch.ops.flopkit, op).default, args)


def test_gelu_op_compiles_fullgraph_with_its_gradient():
    x = torch.randn(6, 8, requires_grad=True)
    fn = torch.compile(lambda t: activation._gelu_op(t, "none").sum(), fullgraph=True, backend="aot_eager")
    fn(x).backward()
    assert torch.allclose(x.grad, torch.autograd.grad(F.gelu(x).sum(), x)[0], rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_vit5_runs_the_gelu_op_on_cuda():
    """Compiled on CUDA, every MLP's activation is the opaque op (PyTorch's kernels), forward and
    backward, and the step matches the eager model."""
    model = ViT5.from_preset("vit5-small", depth=2).cuda()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    x = torch.randn(2, 3, 224, 224, device="cuda")
    out = torch.compile(model, backend=backend, fullgraph=True)(x)
    assert sum(g.count("flopkit.gelu") for g in graphs) == 2
    assert torch.allclose(out, model(x), rtol=1e-4, atol=1e-4)
