"""Test-wide setup: Triton kernels run in the CPU interpreter when no GPU is present.

TRITON_INTERPRET must be set before any module that defines a Triton kernel is imported.
Subprocesses that tests check start once the session is collected: tests/_early.py.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "early(*keys, part=None): the test checks these _early.py subprocesses (part: what it needs of"
        " a run serving several tests), started once collected",
    )


def pytest_collection_finish(session):
    """Start the subprocesses the selected tests check (tests/_early.py), in the tests' order."""
    if session.config.option.collectonly:
        return
    import _early

    keys: list[str] = []
    parts: dict[str, list[str]] = {}
    for item in session.items:
        for mark in item.iter_markers("early"):
            keys += [k for k in mark.args if k not in keys]
            if "part" in mark.kwargs:
                for key in mark.args:
                    parts.setdefault(key, []).append(mark.kwargs["part"])
    _early.start_in_background(keys, parts)


def pytest_sessionfinish(session):
    import _early

    _early.finish()
