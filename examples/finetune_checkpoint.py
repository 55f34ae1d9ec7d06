"""Fine-tune real ViT-5 weights with flopkit's fast path (Triton kernels + torch.compile, bf16).

    flopkit convert vit5_small.pth vit5_small.safetensors          # once: any layout -> flopkit
    python examples/finetune_checkpoint.py vit5_small.safetensors out.safetensors --num-classes 10

Data loading is yours: replace ``batches`` with your DataLoader (images ``[B, 3, H, W]`` at the
checkpoint's resolution, normalised as the weights were trained, and integer labels).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from flopkit import ViT5
from flopkit.checkpoints import load_vit5, save_checkpoint


def batches(
    model: ViT5, batch_size: int, num_classes: int, device: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stand-in data: random images and labels. Replace with your own loader."""
    c, (h, w) = model.patch_embed.in_channels, model.patch_embed.image_size
    while True:
        yield (
            torch.randn(batch_size, c, h, w, device=device),
            torch.randint(0, num_classes, (batch_size,), device=device),
        )


def main(argv: list[str] | None = None) -> list[float]:
    p = argparse.ArgumentParser(description="Fine-tune a ViT-5 checkpoint with flopkit.")
    p.add_argument("checkpoint", help=".pth/.pt/.safetensors in any ViT-5 layout")
    p.add_argument("output", help="where to write the fine-tuned weights (flopkit layout)")
    p.add_argument("--num-classes", type=int, default=None, help="new head size (default: keep the head)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--no-compile", action="store_true", help="eager Triton kernels only")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    model = load_vit5(args.checkpoint)  # architecture read off the weights
    config = model.config.to_dict()
    if args.num_classes is not None and args.num_classes != model.num_classes:
        model.head = nn.Linear(model.hidden_dim, args.num_classes, bias=model.config.head_bias)
        config["num_classes"] = model.num_classes = args.num_classes
    model.to(device).train()
    step_fn = model if args.no_compile or device != "cuda" else torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)

    losses = []
    data = batches(model, args.batch_size, model.num_classes, device)
    for step in range(args.steps):
        images, labels = next(data)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = F.cross_entropy(step_fn(images).float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {losses[-1]:.4f}")
    save_checkpoint(model.state_dict(), args.output, config)
    print(f"wrote {args.output}")
    return losses


if __name__ == "__main__":
    main()
