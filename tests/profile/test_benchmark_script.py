"""benchmarks/profile_vit5.py (the GPU run) on CPU: its acceptance checks and one tiny run, which writes
the harness's record (every variant in one ``profile_vit5_DEVICE.json``) and a plot per variant."""

import importlib.util
import json
import sys
from pathlib import Path

import _early
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "profile_vit5.py"
TINY = str(ROOT / "examples" / "vit5-tiny.yaml")


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("profile_vit5", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _profile(root_ms, loss_ms, total_ms, overhead, flops):
    return {
        "rows": [
            {"path": "", "flops": flops, "forward_ms": root_ms / 2, "backward_ms": root_ms / 2},
            {"path": "head", "flops": 10, "forward_ms": 1.0, "backward_ms": 1.0},
            {"path": "(loss)", "flops": None, "forward_ms": loss_ms, "backward_ms": 0.0},
        ],
        "profiler_total_ms": total_ms,
        "overhead": overhead,
    }


REPORT = {
    "rows": [
        {"path": "", "flops": 100, "counted_in": None},
        {"path": "head", "flops": 10, "counted_in": None},
    ]
}


def test_acceptance_passes_within_three_percent(script):
    c = script.acceptance(_profile(97.0, 0.5, 100.0, 0.05, 100), REPORT)
    assert c["charged_ms"] == 97.5 and c["gap"] == pytest.approx(0.025)
    assert c["adds_up"] and c["flops_equal"] and c["overhead_ok"]


@pytest.mark.parametrize(
    ("profile", "failing"),
    [
        ((90.0, 0.5, 100.0, 0.05, 100), "adds_up"),  # 9.5 % of the kernels charged to nothing
        ((99.0, 0.5, 100.0, 0.15, 100), "overhead_ok"),
        ((99.0, 0.5, 100.0, 0.05, 101), "flops_equal"),
    ],
)
def test_acceptance_fails_each_check(script, profile, failing):
    c = script.acceptance(_profile(*profile), REPORT)
    assert not c[failing]
    assert all(c[k] for k in ("adds_up", "flops_equal", "overhead_ok") if k != failing)


def _tiny_run(out: Path, environ) -> tuple[list[str], dict]:
    args = ["--preset", TINY, "--batch", "2", "--steps", "1", "--warmup", "0", "--device", "cpu"]
    return [
        sys.executable,
        "-m",
        "benchmarks.profile_vit5",
        *args,
        "--variants",
        "eager",
        "--tolerance",
        "0.05",
    ], {
        "cwd": ROOT,
        # OMP_NUM_THREADS: small CPU runs; a shared runner thrashes otherwise
        # checkout_env keeps PYTHONPATH after the root: where PyYAML comes from it (the GPU machine
        # carries its packages so), replacing it made the YAML preset unreadable.
        "env": _early.checkout_env(environ, OUT=str(out), OMP_NUM_THREADS="1"),
        "timeout": 300,
    }


# The script's run (its report and profile subprocesses) starts when the session is collected
# (tests/_early.py).
TINY_RUN = _early.early("profile_vit5-tiny", _tiny_run)


@pytest.mark.early("profile_vit5-tiny")
def test_a_tiny_cpu_run_writes_json_markdown_and_png():
    done = TINY_RUN.result()
    # 1 is also a failed acceptance check (overhead_ok is not asserted: a busy runner's timing)
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr[-3000:]
    (record_path,) = TINY_RUN.out.glob("profile_vit5_*.json")  # one harness record, NAME_DEVICE
    record = json.loads(record_path.read_text())
    assert record["schema"] == "flopkit-bench/1" and list(record["variants"]) == ["eager"]
    data = record["variants"]["eager"]
    assert data["acceptance"]["flops_equal"] and data["acceptance"]["adds_up"]
    assert record_path.with_suffix(".md").read_text().count("\n") > 10
    assert (TINY_RUN.out / "profile_vit5_vit5-tiny_eager.png").read_bytes()[:4] == b"\x89PNG"
    assert done.stdout.strip().splitlines()[-1].startswith("eager")
