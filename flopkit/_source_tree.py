"""Importing flopkit from a source checkout that is not installed in editable mode.

``kernels/`` and ``cli/`` sit at the repository root and install as ``flopkit.kernels`` and
``flopkit.cli`` through ``[tool.setuptools.package-dir]`` in ``pyproject.toml``. Python run from the
repository root imports ``flopkit/`` from the working directory, not the installed copy, and there
those two sub-packages are not under ``flopkit/``. An editable install maps them; a regular one
does not, so this module maps them the same way, reading the mapping from ``pyproject.toml`` (its
one home). Where it cannot (Python 3.10 has no ``tomllib``), it raises an ImportError that says
what to do.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

__all__ = ["map_source_subpackages"]


class _SourceTreeFinder(importlib.abc.MetaPathFinder):
    """Finds the sub-packages ``pyproject.toml`` maps outside ``flopkit/`` (``flopkit.kernels``...)."""

    def __init__(self, mapping: dict[str, Path]) -> None:
        self.mapping = mapping

    def find_spec(self, fullname, path=None, target=None):
        directory = self.mapping.get(fullname)
        if directory is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, directory / "__init__.py", submodule_search_locations=[str(directory)]
        )


def _package_dirs(root: Path) -> dict[str, Path]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise ImportError(
            f"flopkit is being imported from its source tree ({root}) without an editable install, so "
            "flopkit.kernels and flopkit.cli (kernels/ and cli/ at the repository root) cannot be found: "
            "install with `pip install -e .`, or run Python from another directory"
        ) from None
    with open(root / "pyproject.toml", "rb") as f:
        dirs = tomllib.load(f).get("tool", {}).get("setuptools", {}).get("package-dir", {})
    return {name: root / d for name, d in dirs.items() if name.startswith("flopkit.")}


def map_source_subpackages() -> None:
    """In a source checkout whose ``flopkit.kernels`` no finder maps to this checkout's ``kernels/``,
    map the ``pyproject.toml`` package directories; a no-op for installed copies and for an
    editable install of this checkout."""
    here = Path(__file__).resolve().parent
    root = here.parent
    if (
        (here / "kernels").is_dir()
        or not (root / "kernels").is_dir()
        or not (root / "pyproject.toml").is_file()
    ):
        return
    spec = importlib.util.find_spec("flopkit.kernels")
    if (
        spec is not None
        and spec.origin
        and Path(spec.origin).resolve().parent == (root / "kernels").resolve()
    ):
        return  # an editable install of this checkout maps it
    # No finder maps it, or one maps it to another checkout (an editable install elsewhere): this
    # tree's own sub-packages go first, so that flopkit/ never runs with another copy's kernels.
    mapping = {name: d for name, d in _package_dirs(root).items() if (d / "__init__.py").is_file()}
    if mapping:
        sys.meta_path.insert(0, _SourceTreeFinder(mapping))
