"""Tensor parallelism keeps the numbers: a 2-rank TP forward (gloo, float32) equals the one-process
forward, for ViT-5 under flopkit's plan (fused qkv split by heads) and Llama under its own
``base_model_tp_plan`` (with grouped-query attention: 4 query heads, 2 key/value heads)."""

import json
import os
import sys
from pathlib import Path

import _early
import pytest
import torch.distributed as dist

WORKER = Path(__file__).with_name("tp_forward_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _worker(out: Path, environ) -> tuple[list[str], dict]:
    return [sys.executable, str(WORKER), str(out / "tp.json")], {
        "timeout": 300,
        "cwd": ROOT,
        # this checkout's flopkit, not an installed one
        "env": {
            **environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")])),
        },
    }


# Starts when the session is collected (tests/_early.py).
TP_RUN = _early.early("tp_forward_worker", _worker)


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)
@pytest.mark.early("tp_forward_worker")
def test_two_rank_tp_forward_equals_one_rank_forward():
    proc = TP_RUN.result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((TP_RUN.out / "tp.json").read_text())
    for name in ("vit5", "llama"):
        # float32: only the order of the row-parallel sums differs
        assert results[name]["max_abs"] <= 1e-5 * max(1.0, results[name]["ref_max"]), (name, results[name])
    assert results["vit5"]["shape"] == [2, 10] and results["llama"]["shape"] == [2, 12, 64]
    # A plain colwise split of the fused qkv hands rank 0 all of q and half of k: far off.
    assert results["vit5_plain_colwise_qkv"]["max_abs"] > 1e-2
