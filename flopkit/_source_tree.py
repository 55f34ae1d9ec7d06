"""Importing ``flopkit.kernels`` and ``flopkit.cli`` from a source checkout.

``kernels/`` and ``cli/`` sit at the repository root and install as ``flopkit.kernels`` and
``flopkit.cli`` (``[tool.setuptools.package-dir]`` in ``pyproject.toml``). Neither directory has an
``__init__.py``: Python run from the repository root puts the root first on ``sys.path``, and a
regular package named ``kernels`` there would shadow every installed distribution of that name
(Hugging Face's ``kernels``, which transformers imports). A directory without ``__init__.py`` is at
most a namespace portion, and namespace portions lose to any regular package further down the path.

Each directory's package body is ``_package.py``. ``setup.py`` writes it as the ``__init__.py`` of
the installed sub-package; in a checkout (run from the root, or an editable install), this module
maps the two names to their directories with ``_package.py`` as the package body. See
``docs/design.md``, "Layout".
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__all__ = ["SOURCE_SUBPACKAGES", "PACKAGE_BODY", "map_source_subpackages"]

#: Sub-packages that live outside ``flopkit/`` in a checkout, and their directories relative to the
#: repository root. The same table as ``[tool.setuptools.package-dir]`` (a test keeps them equal);
#: written out here so that importing flopkit never needs a TOML parser (Python 3.10 has none).
SOURCE_SUBPACKAGES: dict[str, str] = {"flopkit.kernels": "kernels", "flopkit.cli": "cli"}

#: The file in each of those directories that holds the package body (the ``__init__.py`` to be).
PACKAGE_BODY = "_package.py"


class _SourceTreeFinder(importlib.abc.MetaPathFinder):
    """Finds ``flopkit.kernels`` and ``flopkit.cli`` in this checkout's ``kernels/`` and ``cli/``."""

    def __init__(self, mapping: dict[str, Path]) -> None:
        self.mapping = mapping

    def find_spec(self, fullname, path=None, target=None):
        directory = self.mapping.get(fullname)
        if directory is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, directory / PACKAGE_BODY, submodule_search_locations=[str(directory)]
        )


def map_source_subpackages() -> None:
    """Map ``flopkit.kernels`` and ``flopkit.cli`` to this checkout's directories.

    A no-op for an installed copy (its sub-packages sit under ``flopkit/`` with a real
    ``__init__.py``). In a checkout, this tree's own directories go first on ``sys.meta_path``, so
    that ``flopkit/`` never runs with another copy's kernels (an editable install of a second
    checkout, say).
    """
    here = Path(__file__).resolve().parent
    root = here.parent
    if (here / "kernels").is_dir() or not (root / "pyproject.toml").is_file():
        return
    mapping = {
        name: root / directory
        for name, directory in SOURCE_SUBPACKAGES.items()
        if (root / directory / PACKAGE_BODY).is_file()
    }
    if mapping and not any(isinstance(f, _SourceTreeFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceTreeFinder(mapping))
