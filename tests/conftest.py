"""Test-wide setup: Triton kernels run in the CPU interpreter when no GPU is present.

TRITON_INTERPRET must be set before any module that defines a Triton kernel is imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
