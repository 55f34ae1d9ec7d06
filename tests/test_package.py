"""Package hygiene: lazy heavy imports, public API."""

import importlib
import importlib.util
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import flopkit.kernels
import pytest

import flopkit


def test_import_does_not_pull_optional_or_heavy_packages():
    heavy = ["triton", "fvcore", "timm", "transformers", "matplotlib"]
    code = f"import sys, flopkit, flopkit.kernels, flopkit.cli; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


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


def test_import_from_the_repository_root_ignores_an_editable_install_of_another_checkout(tmp_path):
    """An editable finder that maps flopkit.kernels to another checkout must not pair that
    checkout's kernels with this tree's flopkit/."""
    root = Path(__file__).resolve().parents[1]
    other = tmp_path / "kernels"
    other.mkdir()
    (other / "__init__.py").write_text("raise ImportError('the other checkout was imported')\n")
    code = (
        "import importlib.abc, importlib.util, sys\n"
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        "class OtherCheckout(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'flopkit.kernels':\n"
        f"            return importlib.util.spec_from_file_location(name, {str(other / '__init__.py')!r})\n"
        "sys.meta_path.append(OtherCheckout())\n"
        "import flopkit, flopkit.kernels\n"
        "print(flopkit.kernels.__file__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(root / "kernels" / "__init__.py")


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


def _shadowed_submodules(package_name: str) -> list[str]:
    """Submodules of ``package_name`` whose name the package binds to something else (a function)."""
    package = importlib.import_module(package_name)
    return sorted(
        info.name
        for info in pkgutil.iter_modules(package.__path__)
        if not isinstance(getattr(package, info.name, sys), types.ModuleType)
    )


@pytest.mark.parametrize(
    "package", ["flopkit", "flopkit.nn", "flopkit.flops", "flopkit.inspect", "flopkit.cli"]
)
def test_no_name_shadows_a_submodule(package):
    assert _shadowed_submodules(package) == []


def test_no_kernel_function_shadows_its_module():
    assert _shadowed_submodules("flopkit.kernels") == []
