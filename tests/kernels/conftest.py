"""Kernel tests run the Triton kernels in the CPU interpreter when no GPU is present.

TRITON_INTERPRET must be set before any module that defines a Triton kernel is imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
