"""Tensor parallelism keeps the numbers: a 2-rank TP forward (gloo, float32) equals the one-process
forward, for ViT-5 under flopkit's plan (fused qkv split by heads) and Llama under its own
``base_model_tp_plan`` (with grouped-query attention: 4 query heads, 2 key/value heads)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

WORKER = Path(__file__).with_name("tp_forward_worker.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)
def test_two_rank_tp_forward_equals_one_rank_forward(tmp_path):
    out = tmp_path / "tp.json"
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        # this checkout's flopkit, not an installed one
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for name in ("vit5", "llama"):
        # float32: only the order of the row-parallel sums differs
        assert results[name]["max_abs"] <= 1e-5 * max(1.0, results[name]["ref_max"]), (name, results[name])
    assert results["vit5"]["shape"] == [2, 10] and results["llama"]["shape"] == [2, 12, 64]
    # A plain colwise split of the fused qkv hands rank 0 all of q and half of k: far off.
    assert results["vit5_plain_colwise_qkv"]["max_abs"] > 1e-2
