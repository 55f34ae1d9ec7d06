"""Package hygiene: lazy heavy imports, public API."""

import importlib.util
import subprocess
import sys
from pathlib import Path

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


def test_import_from_the_repository_root_without_an_editable_install():
    """Run from the repository root, Python imports flopkit/ from there; with no editable finder
    (as after a regular `pip install .`) flopkit.kernels and flopkit.cli must still resolve to
    kernels/ and cli/ as pyproject.toml maps them."""
    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys\n"
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        "import flopkit, flopkit.kernels, flopkit.cli\n"
        "print(flopkit.__file__, flopkit.kernels.__file__, flopkit.cli.__file__, sep='\\n')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        str(root / "flopkit" / "__init__.py"),
        str(root / "kernels" / "__init__.py"),
        str(root / "cli" / "__init__.py"),
    ]


def test_startup_benchmark_summary_takes_medians_per_phase():
    spec = importlib.util.spec_from_file_location(
        "cli_startup", Path(__file__).resolve().parents[1] / "benchmarks" / "cli_startup.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    runs = [
        {"torch": 1.0, "flopkit": 0.1, "build": 0.05, "rows": 0.02, "render": 0.03},
        {"torch": 3.0, "flopkit": 0.3, "build": 0.01, "rows": 0.02, "render": 0.01},
        {"torch": 2.0, "flopkit": 0.2, "build": 0.02, "rows": 0.04, "render": 0.02},
    ]
    out = bench.summarize(runs)
    assert out["torch"] == 2.0 and out["flopkit"] == 0.2 and out["build"] == 0.02 and out["rows"] == 0.02
    assert abs(out["beyond_torch"] - 0.28) < 1e-12  # per-run sums 0.20, 0.34, 0.28
