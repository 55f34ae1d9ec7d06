"""Package hygiene: lazy heavy imports, public API."""

import subprocess
import sys

import flopkit.kernels

import flopkit


def test_import_does_not_pull_triton_or_fvcore():
    code = "import sys, flopkit, flopkit.kernels; print('triton' in sys.modules, 'fvcore' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_public_names_exist():
    for mod in (flopkit, flopkit.kernels):
        for name in mod.__all__:
            assert hasattr(mod, name), name
