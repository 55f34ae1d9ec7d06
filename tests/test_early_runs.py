"""Every subprocess a test starts (tests/_early.py) keeps the session's ``PYTHONPATH``.

The GPU machine's checkout is not installed and gets some packages (PyYAML, fvcore) through
``PYTHONPATH`` only; a run that replaced ``PYTHONPATH`` with the repository root could not read a
YAML preset there (``test_a_tiny_cpu_run_writes_json_markdown_and_png``'s run did; reproduced on CPU
with the ``yaml`` import blocked, docs/contributing.md).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import _early

TESTS = Path(__file__).resolve().parent


def _modules_with_early_runs() -> list[Path]:
    return sorted(p for p in TESTS.rglob("test_*.py") if "_early.early(" in p.read_text())


def test_every_early_run_keeps_the_sessions_pythonpath(tmp_path):
    # Import each module that registers runs under the name pytest gives it (its file name, its
    # folder on sys.path: the tests have no packages), so a module pytest already imported is not
    # registered twice.
    for path in _modules_with_early_runs():
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        importlib.import_module(path.stem)
    assert len(_early.RUNS) >= 10
    sentinel = str(tmp_path / "only-on-pythonpath")
    environ = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": sentinel}
    dropped = []
    for key, run in _early.RUNS.items():
        _, kwargs = run._make(tmp_path, environ)
        env = kwargs.get("env")
        if env is not None and sentinel not in env.get("PYTHONPATH", "").split(os.pathsep):
            dropped.append(key)
    assert dropped == []
