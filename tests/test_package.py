"""Package hygiene: lazy heavy imports, public API."""

import ast
import functools
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import _early
import flopkit.kernels
import pytest

import flopkit

# The fresh interpreters below start when the session is collected (tests/_early.py).
ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["triton", "fvcore", "timm", "transformers", "matplotlib"]
LIGHT_IMPORT = _early.early(
    "import-is-light",
    lambda out, environ: (
        [
            sys.executable,
            "-c",
            f"import sys, flopkit, flopkit.kernels, flopkit.cli; print([m for m in {HEAVY!r} if m in sys.modules])",
        ],
        {"check": True},
    ),
)


@pytest.mark.early("import-is-light")
def test_import_does_not_pull_optional_or_heavy_packages():
    out = LIGHT_IMPORT.result().stdout
    assert out.strip() == "[]"


def test_public_names_exist():
    for mod in (flopkit, flopkit.kernels):
        for name in mod.__all__:
            assert hasattr(mod, name), name


NO_EDITABLE = _early.early(
    "import-without-editable-finder",
    lambda out, environ: (
        [
            sys.executable,
            "-c",
            "import sys\n"
            "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
            "import flopkit, flopkit.kernels, flopkit.cli\n"
            "print(flopkit.__file__, flopkit.kernels.__file__, flopkit.cli.__file__, sep='\\n')\n",
        ],
        {"cwd": ROOT},
    ),
)


@pytest.mark.early("import-without-editable-finder")
def test_import_from_the_repository_root_without_an_editable_install():
    """Run from the repository root, Python imports flopkit/ from there; with no editable finder
    (as after a regular `pip install .`) flopkit.kernels and flopkit.cli must still resolve to
    kernels/ and cli/ as pyproject.toml maps them, with _package.py as each package's body."""
    root = ROOT
    done = NO_EDITABLE.result()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        str(root / "flopkit" / "__init__.py"),
        str(root / "kernels" / "_package.py"),
        str(root / "cli" / "_package.py"),
    ]


def _other_checkout(out: Path, environ) -> tuple[list[str], dict]:
    other = out / "kernels"
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
    return [sys.executable, "-c", code], {"cwd": ROOT}


OTHER_CHECKOUT = _early.early("import-beside-another-checkouts-finder", _other_checkout)


@pytest.mark.early("import-beside-another-checkouts-finder")
def test_import_from_the_repository_root_ignores_an_editable_install_of_another_checkout():
    """An editable finder that maps flopkit.kernels to another checkout must not pair that
    checkout's kernels with this tree's flopkit/."""
    done = OTHER_CHECKOUT.result()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(ROOT / "kernels" / "_package.py")


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


# flopkit/ is this distribution's own top-level name; setup.py is setuptools' build script.
OWN_ROOT_NAMES = {"flopkit", "setup"}


def _names_importable_from(root: Path) -> dict[str, Path]:
    """Top-level names that ``import NAME`` resolves to ``root`` when ``root`` is first on
    ``sys.path`` (as it is for ``python -c``, ``python -m`` and ``python script.py`` run there):
    regular packages and modules. A directory without ``__init__.py`` is only a namespace portion,
    which loses to any regular package or module elsewhere on the path, so it shadows nothing."""
    suffixes = tuple(importlib.machinery.all_suffixes())
    names = {}
    for entry in root.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and (entry / "__init__.py").is_file() and entry.name.isidentifier():
            names[entry.name] = entry
        elif entry.is_file() and entry.name.endswith(suffixes):
            names[entry.name.split(".")[0]] = entry
    return names


@functools.cache
def _installed_top_level_names() -> dict[str, str]:
    """Top-level import names of every installed distribution, from its ``top_level.txt`` or, where
    it has none, from the first component of each file it installed."""
    names: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        listed = (dist.read_text("top_level.txt") or "").split()
        distribution = dist.metadata["Name"]  # once: each .metadata parses METADATA again
        if not listed:
            for file in dist.files or ():
                first = file.parts[0]
                if len(file.parts) == 1 and not first.endswith(".py"):
                    continue
                if first.endswith((".dist-info", ".egg-info", ".data")) or first in ("..", "__pycache__"):
                    continue
                listed.append(first.split(".")[0])
        for name in listed:
            names.setdefault(name, distribution)
    return names


def test_the_repository_root_makes_only_flopkit_importable():
    """kernels/ and cli/ install as flopkit.kernels and flopkit.cli; at the root they carry no
    __init__.py (their package body is _package.py), so they shadow no distribution of the same
    name, installed now or later."""
    assert set(_names_importable_from(ROOT)) <= OWN_ROOT_NAMES


def test_no_repository_directory_shadows_an_installed_distribution():
    installed = _installed_top_level_names()
    clashes = {
        name: installed[name]
        for name in _names_importable_from(ROOT)
        if name in installed and installed[name].lower() != "flopkit"
    }
    assert clashes == {}


def test_the_shadowing_checks_see_a_root_package(tmp_path):
    """The two checks above, on a tree with a ``kernels/__init__.py`` at its root."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    (tmp_path / "cli").mkdir()  # no __init__.py: a namespace portion, shadows nothing
    (tmp_path / "tool.py").write_text("")
    assert set(_names_importable_from(tmp_path)) == {"kernels", "tool"}


def test_import_kernels_from_the_root_gives_the_installed_distribution():
    if "kernels" not in _installed_top_level_names():
        pytest.skip("no distribution named kernels is installed")
    code = "import kernels; print(kernels.__file__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert not Path(done.stdout.strip()).resolve().is_relative_to(ROOT)


def test_source_subpackages_match_pyproject():
    tomllib = pytest.importorskip("tomllib")
    from flopkit._source_tree import PACKAGE_BODY, SOURCE_SUBPACKAGES

    setup_py = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse((ROOT / "setup.py").read_text()).body
        if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Dict, ast.Constant))
    }
    with open(ROOT / "pyproject.toml", "rb") as f:
        package_dirs = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    assert {k: v for k, v in package_dirs.items() if k != "flopkit"} == SOURCE_SUBPACKAGES
    assert setup_py["ROOT_SUBPACKAGES"] == SOURCE_SUBPACKAGES
    assert setup_py["PACKAGE_BODY"] == PACKAGE_BODY
    for directory in SOURCE_SUBPACKAGES.values():
        assert (ROOT / directory / PACKAGE_BODY).is_file()


def test_every_subpackage_is_in_the_distribution():
    """A package missing from ``[tool.setuptools] packages`` is left out of the wheel: an installed
    flopkit would fail to import it while a checkout works."""
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "flopkit").rglob("__init__.py")}
    from flopkit._source_tree import SOURCE_SUBPACKAGES

    assert listed == found | set(SOURCE_SUBPACKAGES)
