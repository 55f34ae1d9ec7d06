"""A user's model mixing flopkit modules (counted analytically) with plain torch layers
(counted by FlopCounterMode).

    flopkit report --model examples/custom_model.py:build --input-shape 3,224,224 --batch 2
"""

import torch
from torch import nn

from flopkit.nn import ViT5Block


class HybridClassifier(nn.Module):
    """Conv stem -> 2 ViT5Blocks on the 14x14 patch grid (no CLS, no registers) -> LayerNorm -> head."""

    def __init__(self, dim: int = 192, num_heads: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, kernel_size=16, stride=16)
        self.blocks = nn.Sequential(
            *[ViT5Block(dim, num_heads, 14, 14, num_registers=0, has_cls=False) for _ in range(2)]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images).flatten(2).transpose(1, 2)
        x = self.blocks(x)
        return self.head(self.norm(x).mean(dim=1))


def build() -> nn.Module:
    return HybridClassifier()
