"""Build hook: assemble ``flopkit.kernels`` and ``flopkit.cli`` from the root directories.

Everything else about the build is in ``pyproject.toml``. ``kernels/`` and ``cli/`` carry no
``__init__.py`` (so that, run from the repository root, they never shadow an installed distribution
of the same name); their package body is ``_package.py``, which this hook writes as the installed
sub-package's ``__init__.py``. An editable install needs no copy: ``flopkit/_source_tree.py`` maps
the directories at import time. See ``docs/design.md``, "Layout".
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

# The sub-packages that pyproject.toml's [tool.setuptools.package-dir] maps outside flopkit/.
ROOT_SUBPACKAGES = {"flopkit.kernels": "kernels", "flopkit.cli": "cli"}
PACKAGE_BODY = "_package.py"


class BuildPyWithPackageBodies(build_py):
    """``build_py`` that also writes each root sub-package's ``_package.py`` as its ``__init__.py``."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for package, directory in ROOT_SUBPACKAGES.items():
            target = os.path.join(self.build_lib, *package.split("."), "__init__.py")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(os.path.join(directory, PACKAGE_BODY), target)


setup(cmdclass={"build_py": BuildPyWithPackageBodies})
