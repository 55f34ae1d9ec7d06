"""The benchmark scripts without a GPU: each imports as ``benchmarks.NAME`` (the way ``python -m``
runs it), the re-rendering paths read the stored records, and the CPU benchmark writes a harness
record end to end."""

import importlib
import json
import sys
from pathlib import Path

import _early
import pytest

from benchmarks import _harness as H

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_imports_as_a_module_of_the_benchmarks_package(name):
    module = importlib.import_module(f"benchmarks.{name}")
    assert name == "upstream_models" or callable(module.main)  # upstream_models is a library


def test_sweep_tables_render_from_the_stored_record():
    from benchmarks import sweep_vit_kernels as S

    record = json.loads((ROOT / "benchmarks" / "results" / "sweep_vit_kernels_h100.json").read_text())
    text = S.render(record)
    assert "run prefetch_2026-11-23" in text and "run qk-early-loads_2026-11-23" in text
    assert "| norm_bwd | 51456 x 384, plain+prefetch | 56.7 us" in text
    fresh = {"norm_fwd|vit5-base|res": {"default_ms": 0.1, "best": [[0.09, 2048, 4]]}}
    assert S.render({"schema": H.SCHEMA, "results": fresh}).count("| norm_fwd | 25728 x 768, res |") == 1


def test_step_kernels_render_a_harness_record_and_a_gathered_one():
    from benchmarks import step_kernels as S

    model = {"total_ms": 2.0, "kernels": [["ampere_sgemm_128x64", 1.5, 2], ["triton_poi_fused_0", 0.5, 1]]}
    record = {
        "runs": [{"preset": "vit5-small", "batch": 8, "modes": ["compile"], "models": {"flopkit": model}}]
    }
    lines = S.render(record, top=1)
    assert lines[0].startswith("**vit5-small**, batch 8, compile")
    assert "| total | 2.00 |" in lines and "upstream: skipped (no --upstream PATH given)" in lines
    stored = json.loads((ROOT / "benchmarks" / "results" / "step_kernels_h100.json").read_text())
    assert sum(line.startswith("**vit5-") for line in S.render(stored, top=1)) == len(stored["runs"])


# Starts when the session is collected (tests/_early.py).
CLI_STARTUP = _early.early(
    "cli_startup",
    lambda out, environ: (
        [sys.executable, "-m", "benchmarks.cli_startup", "--runs", "1", "vit5-small", "--out", str(out)],
        {"cwd": ROOT, "env": {**environ, "PYTHONPATH": str(ROOT)}, "timeout": 300},
    ),
)


@pytest.mark.early("cli_startup")
def test_cli_startup_writes_a_valid_record():
    done = CLI_STARTUP.result()
    assert done.returncode == 0, done.stderr
    record = json.loads((CLI_STARTUP.out / "cli_startup_cpu.json").read_text())
    H.validate_record(record)
    assert record["benchmark"] == "cli_startup" and record["env"]["gpu"] is None
    assert set(record["results"]["vit5-small"]) == {
        "torch",
        "flopkit",
        "build",
        "rows",
        "render",
        "beyond_torch",
    }
    assert done.stdout.rstrip().endswith(" |") and "| vit5-small |" in done.stdout
