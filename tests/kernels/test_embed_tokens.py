"""``embed_tokens`` (a ViT's tokens from patches, position embedding, CLS and register tokens)
kernels vs an independent float64 computation, and its routing (CPU: the Triton interpreter, see
conftest.py).
"""

from __future__ import annotations

import pytest
import torch
from _references import TOL, device, grads64, kernel_grads, rel_err
from flopkit.kernels import _embed_triton
from flopkit.kernels.embed import embed_tokens, embed_tokens_ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def tokens64(x, pos, cls, reg, cls_first):
    """Row by row, written from the layout rule: [patches + pos, CLS, registers], CLS first on request."""
    B, N, C = x.shape
    rows = [x[:, p] + (pos[0, p] if pos is not None else 0) for p in range(N)]
    extra = [cls[0, 0].expand(B, C)] if cls is not None else []
    rows = extra + rows if cls_first else rows + extra
    rows += [reg[0, r].expand(B, C) for r in range(reg.shape[1])] if reg is not None else []
    return torch.stack(rows, 1)


def _inputs(B, N, C, R, dtype, seed, parts=(True, True, True)):
    g = torch.Generator().manual_seed(seed)

    def make(*shape):
        return torch.randn(*shape, generator=g).to(dtype).to(device())

    pos = make(1, N, C) if parts[0] else None
    cls = make(1, 1, C) if parts[1] else None
    reg = make(1, R, C) if parts[2] else None
    return make(B, N, C), pos, cls, reg


# B past one batch step (32), C ragged and past one column step (128).
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cls_first", [False, True])
@pytest.mark.parametrize("B,N,C,R", [(2, 5, 16, 4), (37, 3, 130, 1)])
def test_embed_tokens_match_float64(B, N, C, R, cls_first, dtype):
    x, pos, cls, reg = _inputs(B, N, C, R, dtype, seed=B * C)
    T = N + 1 + R
    dy = torch.randn(B, T, C, generator=torch.Generator().manual_seed(1)).to(dtype).to(device())

    def fn(*a):
        return embed_tokens(*a, cls_first, backend="triton")

    out, grads = kernel_grads(fn, [x, pos, cls, reg], dy)
    out64, grads64_ = grads64(lambda *a: tokens64(*a, cls_first), [x, pos, cls, reg], dy)
    assert out.shape == (B, T, C) and out.dtype == dtype and out.is_contiguous()
    assert rel_err(out, out64) <= TOL[dtype]
    for got, want, t in zip(grads, grads64_, (x, pos, cls, reg), strict=True):
        assert got.shape == t.shape and got.dtype == dtype
        assert rel_err(got, want) <= TOL[dtype]


@pytest.mark.parametrize(
    "parts", [(False, True, True), (True, False, True), (True, True, False), (False, False, False)]
)
def test_embed_tokens_optional_parts(parts):
    x, pos, cls, reg = _inputs(3, 4, 24, 2, torch.float32, seed=5, parts=parts)
    T = 4 + (cls is not None) + (2 if reg is not None else 0)
    dy = torch.randn(3, T, 24, device=device())
    out, grads = kernel_grads(lambda *a: embed_tokens(*a, backend="triton"), [x, pos, cls, reg], dy)
    out64, grads64_ = grads64(lambda *a: tokens64(*a, False), [x, pos, cls, reg], dy)
    assert rel_err(out, out64) <= TOL[torch.float32]
    for got, want in zip(grads, grads64_, strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            assert rel_err(got, want) <= TOL[torch.float32]


def test_embed_tokens_strided_patches_and_promotion():
    # Patches as a token-strided view, an fp32 position embedding on bf16 patches: PyTorch's
    # promotion (fp32 tokens), the patches' gradient back in bf16.
    big = torch.randn(4, 6, 2 * 40, device=device()).to(torch.bfloat16)
    x = big[:, :, ::2]
    pos = torch.randn(1, 6, 40, device=device())
    cls = torch.randn(1, 1, 40, device=device())
    dy = torch.randn(4, 7, 40, device=device())
    out, (dx, dpos, dcls) = kernel_grads(lambda *a: embed_tokens(*a, backend="triton"), [x, pos, cls], dy)
    assert out.dtype == torch.float32 and dx.dtype == torch.bfloat16 and dpos.dtype == torch.float32
    out64, (dx64, dpos64, dcls64) = grads64(lambda a, b, c: tokens64(a, b, c, None, False), [x, pos, cls], dy)
    assert rel_err(out, out64) <= TOL[torch.float32]
    assert rel_err(dx, dx64) <= TOL[torch.bfloat16]
    assert max(rel_err(dpos, dpos64), rel_err(dcls, dcls64)) <= TOL[torch.float32]


def test_embed_tokens_bad_shapes():
    x = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match=r"patches must be \[B, N, C\], got shape \(4, 8\)"):
        embed_tokens(x[0])
    with pytest.raises(ValueError, match=r"pos must have shape \(1, 4, 8\), got \(1, 5, 8\)"):
        embed_tokens(x, torch.randn(1, 5, 8))
    with pytest.raises(ValueError, match=r"cls must have shape \(1, 1, 8\), got \(1, 8\)"):
        embed_tokens(x, None, torch.randn(1, 8))
    with pytest.raises(ValueError, match=r"reg must have shape \(1, R, 8\), got \(2, 3, 8\)"):
        embed_tokens(x, None, None, torch.randn(2, 3, 8))
    with pytest.raises(TypeError, match="embed_tokens: patches must be float32, float16 or bfloat16"):
        embed_tokens(x.long())
    with pytest.raises(TypeError, match="got pos float64"):
        embed_tokens(x, torch.randn(1, 4, 8, dtype=torch.float64), backend="triton")


def test_embed_tokens_routes(monkeypatch):
    calls = []
    real = _embed_triton.embed_tokens_forward
    monkeypatch.setattr(
        _embed_triton, "embed_tokens_forward", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    x, pos, cls, reg = _inputs(2, 3, 8, 1, torch.float32, seed=2)
    ref = embed_tokens_ref(x, pos, cls, reg)
    assert torch.equal(embed_tokens(x, pos, cls, reg, backend="torch"), ref)
    embed_tokens(x.cpu(), pos.cpu(), cls.cpu(), reg.cpu())
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False):
        embed_tokens(x, pos, cls, reg, backend="triton")
    assert calls == []
    assert torch.equal(embed_tokens(x, pos, cls, reg, backend="triton"), ref)
    assert calls == [1]


@pytest.mark.parametrize("preset", ["vit5-small", "vit5-small-official"])
def test_vit5_builds_its_tokens_with_embed_tokens(preset):
    """``PatchEmbed`` hands the model's CLS and register tokens to ``embed_tokens`` in the model's
    layout (CLS after the patches, or first in the official layout): the kernels and the reference
    give the same features and gradients."""
    from flopkit import ViT5

    torch.manual_seed(0)
    model = ViT5.from_preset(preset, depth=1, hidden_dim=32, num_heads=2, image_size=32, num_classes=0)
    model = model.to(device())
    images = torch.randn(2, 3, 32, 32, device=device())
    results = []
    for backend in ("torch", "triton"):
        model.patch_embed.tokens_backend = backend
        model.zero_grad()
        tokens = model.patch_embed(images, model.cls_token, model.reg_token, model.cls_first)
        tokens.backward(torch.linspace(-1, 1, tokens.numel(), device=device()).view_as(tokens))
        grads = [p.grad.clone() for p in (model.patch_embed.pos_embed, model.cls_token, model.reg_token)]
        results.append((tokens.detach(), grads))
    (ref, ref_grads), (out, out_grads) = results
    assert out.shape == (2, model.num_tokens, 32)
    cls_row = model.layout.cls_index
    torch.testing.assert_close(out[:, cls_row], model.cls_token[0].detach().expand(2, -1))
    torch.testing.assert_close(out, ref)
    for got, want in zip(out_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)
