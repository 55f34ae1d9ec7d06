"""Subprocesses that tests check, started early on the core the suite leaves idle.

The suite runs its tests in one process, on one core of a 2-core runner; a test that checks a
subprocess (a script run, a fresh interpreter, two gloo ranks) used to wait for it on that same
timeline. Such a test module registers its command at import (:func:`early`) and marks the test
``@pytest.mark.early("KEY")``; once the session is collected, ``conftest.py`` starts the commands of
the selected tests one at a time, in the order their tests come, in a background thread, and the test
takes the finished process from :meth:`EarlyRun.result` (waiting for it if it still runs; a command
not yet started when its test comes runs right there, as before).

What runs and what the tests assert are unchanged: the same command line and timeout; the environment is ``os.environ`` as the session started (before any test's monkeypatch),
plus what the command sets itself, and the working directory, unless the command names one, the
session's as it started; outputs go to a fresh directory per command (``EarlyRun.out``),
removed when the session ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# (out directory, the session's environment) -> (argv, keyword arguments of subprocess.run)
Make = Callable[[Path, Mapping[str, str]], tuple[list[str], dict[str, Any]]]


class EarlyRun:
    def __init__(self, key: str, make: Make):
        self.key, self._make = key, make
        self.out: Path | None = None
        # What the selected tests need of a run that serves several (``@pytest.mark.early(KEY,
        # part=...)``), in their order; ``make`` may read it. None: no test named a part.
        self.parts: list[str] | None = None
        self._lock = threading.Lock()
        self._done = False
        self._result: subprocess.CompletedProcess | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        """Run the command unless it ran; a second caller waits for the first one's run."""
        with self._lock:
            if self._done:
                return
            try:
                self.out = Path(tempfile.mkdtemp(prefix=f"flopkit-early-{self.key}-"))
                args, kwargs = self._make(self.out, _session_environ())
                kwargs = {"capture_output": True, "text": True, "cwd": _cwd, **kwargs}
                self._result = subprocess.run(args, **kwargs)
            except BaseException as exc:  # handed to the test, which fails with it
                self._error = exc
            self._done = True

    def result(self) -> subprocess.CompletedProcess:
        self.start()
        if self._error is not None:
            raise self._error
        return self._result


RUNS: dict[str, EarlyRun] = {}
_environ: dict[str, str] | None = None
_cwd: str | None = None  # the default working directory: the session's, as it started
_stop = threading.Event()
_thread: threading.Thread | None = None


def _session_environ() -> dict[str, str]:
    global _environ, _cwd
    if _environ is None:
        _environ, _cwd = dict(os.environ), os.getcwd()
    return _environ


def checkout_env(environ: Mapping[str, str], *, drop: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    """``environ`` for a subprocess that imports this checkout's flopkit, installed or not: the
    repository root first on ``PYTHONPATH`` (a script's own folder, not the working directory, heads
    ``sys.path``; the GPU machines' copies are not installed), the variables in ``drop`` removed and
    ``extra`` set."""
    root = str(Path(__file__).resolve().parents[1])
    env = {k: v for k, v in environ.items() if k not in drop} | extra
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, environ.get("PYTHONPATH"))))
    return env


def early(key: str, make: Make) -> EarlyRun:
    """Register the command ``make`` builds under ``key`` (one registration per key)."""
    if key in RUNS:
        raise ValueError(f"early run {key!r} is registered twice")
    RUNS[key] = EarlyRun(key, make)
    return RUNS[key]


def start_in_background(keys: list[str], parts: dict[str, list[str]]) -> None:
    """Snapshot the environment, then run ``keys`` one after another in a daemon thread."""
    global _thread
    _session_environ()
    unknown = [k for k in keys if k not in RUNS]
    if unknown:
        raise KeyError(f"@pytest.mark.early names unregistered runs: {unknown}")
    for key, wanted in parts.items():
        RUNS[key].parts = wanted
    if not keys:
        return

    def work() -> None:
        for key in keys:
            if _stop.is_set():
                return
            RUNS[key].start()

    _thread = threading.Thread(target=work, name="early-subprocesses", daemon=True)
    _thread.start()


def finish() -> None:
    """Start nothing new, wait for the command running now, remove the output directories."""
    _stop.set()
    if _thread is not None:
        _thread.join()
    for run in RUNS.values():
        if run.out is not None:
            shutil.rmtree(run.out, ignore_errors=True)
