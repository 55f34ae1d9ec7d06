"""Per-layer activation bytes of flopkit.memory against hand counts of what autograd saves.

Every block is rounded up to 512 bytes (the CUDA caching allocator); the sizes below are chosen as
multiples of 512 unless a test is about the rounding.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flopkit.step_memory import memory
from flopkit.step_memory.cuda import block_bytes, sdpa_backend

F32 = 4


def layers(model: nn.Module, *inputs: torch.Tensor, dtype: str | None = None, **options) -> dict:
    result = memory(
        model, args=inputs, batch=inputs[0].shape[0], training=True, optimizer="none", loss="mse",
        dtype=dtype, workspace_bytes=0, depth=5, **options,
    )  # fmt: skip
    return {row.path: row for row in result.layers}


def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, device="meta", dtype=dtype)


class Scale(nn.Module):
    """``x * w``: saves x for w's gradient, makes its output a non-leaf that requires grad."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * self.w


def test_block_bytes_rounds_up_to_512():
    assert [block_bytes(n) for n in (0, 1, 512, 513, 2 * 1024**2 + 1)] == [
        0,
        512,
        512,
        1024,
        2 * 1024**2 + 512,
    ]


def test_linear_saves_its_input():
    with torch.device("meta"):
        model = nn.Sequential(Scale(64), nn.Linear(64, 32))
    rows = layers(model, meta(16, 64))
    # addmm saves its input [16, 64] (for the weight's gradient); the weight is a parameter.
    assert rows["1"].activation_bytes == 16 * 64 * F32
    assert rows["1"].output_bytes == 16 * 32 * F32
    assert rows["1"].parameter_bytes == block_bytes(64 * 32 * F32) + block_bytes(32 * F32)


def test_conv2d_saves_its_input():
    with torch.device("meta"):
        model = nn.Sequential(Scale(16), nn.Conv2d(3, 8, 3, padding=1, bias=False))
    rows = layers(model, meta(2, 3, 16, 16))
    assert rows["1"].activation_bytes == 2 * 3 * 16 * 16 * F32
    assert rows["1"].output_bytes == 2 * 8 * 16 * 16 * F32


def test_layer_norm_saves_input_mean_and_rstd():
    with torch.device("meta"):
        model = nn.Sequential(Scale(64), nn.LayerNorm(64))
    rows = layers(model, meta(16, 64))
    # input [16, 64] plus mean and rstd [16, 1] float32, each its own 512-byte block.
    assert rows["1"].activation_bytes == 16 * 64 * F32 + 2 * block_bytes(16 * F32)


def test_gelu_saves_its_input():
    with torch.device("meta"):
        model = nn.Sequential(Scale(64), nn.GELU())
    rows = layers(model, meta(16, 64))
    assert rows["1"].activation_bytes == 16 * 64 * F32


class Attention(nn.Module):
    """q, k, v from three Scale layers, viewed ``[B, H, T, D]``, then SDPA in its own module."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = Scale(channels), Scale(channels), Scale(channels)
        self.sdpa = SDPA()

    def forward(self, x):
        b, t, c = x.shape

        def split(y):
            return y.view(b, t, self.heads, c // self.heads).transpose(1, 2)

        out = self.sdpa(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return out.transpose(1, 2).reshape(b, t, c)


class SDPA(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_sdpa_flash_saves_output_and_logsumexp_not_the_attention_matrix():
    b, t, h, d = 2, 128, 4, 64
    with torch.device("meta"):
        model = Attention(h * d, h)
    rows = layers(model, meta(b, t, h * d, dtype=torch.bfloat16), dtype="bfloat16")
    qkv = 3 * b * t * h * d * 2  # q, k, v: three bf16 blocks
    out = b * t * h * d * 2  # the output, bf16
    lse = b * h * t * F32  # log-sum-exp, float32 [B, H, T]
    assert rows["sdpa"].activation_bytes == qkv + out + lse


def test_sdpa_math_saves_scaled_q_k_and_the_attention_matrix():
    # head dim 6 is not a multiple of 4: no fused kernel takes it, the math backend runs.
    b, t, h, d = 2, 16, 2, 6
    with torch.device("meta"):
        model = Attention(h * d, h)
    rows = layers(model, meta(b, t, h * d))
    scaled_qk = 2 * b * h * t * d * F32  # q * sqrt(scale) and k * sqrt(scale), saved by the matmul
    v = b * h * t * d * F32
    probs = b * h * t * t * F32  # softmax output [B, H, T, T]
    assert rows["sdpa"].activation_bytes == scaled_qk + v + probs


@pytest.mark.parametrize(
    ("dtype", "head", "mask", "backend"),
    [
        (torch.bfloat16, 64, False, "flash"),
        (torch.float16, 128, False, "flash"),
        (torch.bfloat16, 64, True, "efficient"),
        (torch.float32, 64, False, "efficient"),
        (torch.bfloat16, 320, False, "efficient"),
        (torch.float32, 6, False, "math"),
    ],
)
def test_sdpa_backend_follows_the_h100_priority(dtype, head, mask, backend):
    q = meta(1, 2, 8, head, dtype=dtype)
    attn_mask = meta(8, 8, dtype=torch.bool) if mask else None
    assert sdpa_backend(q, q, q, attn_mask).backend == backend


def test_autocast_casts_linear_inputs_and_caches_the_weight_cast():
    with torch.device("meta"):
        model = nn.Sequential(Scale(64), nn.Linear(64, 64, bias=False))
    rows = layers(model, meta(16, 64), autocast="bf16")
    # Linear under bf16 autocast saves its bf16 input cast and the bf16 weight cast.
    assert rows["1"].activation_bytes == 16 * 64 * 2 + 64 * 64 * 2
    assert rows["1"].output_bytes == 16 * 64 * 2


def test_dropout_saves_a_bool_mask_as_cuda_fuses_it():
    with torch.device("meta"):
        model = nn.Sequential(Scale(64), nn.Dropout(0.1))
    rows = layers(model, meta(16, 64))
    # CUDA's native_dropout keeps a bool mask, one byte an element (not a float32 noise tensor).
    assert rows["1"].activation_bytes == 16 * 64
