"""torch.compile's view of which arguments each flopkit Triton kernel writes (see _mutation_probe.py).

Exactly the kernel's outputs, for every plan family: an input marked as written is written back
from its untouched copy under ``torch.compile`` when the launcher passes one tensor in two slots
(the launchers pass an output as the placeholder of every absent input), which corrupts the output
silently. A helper that takes input pointers and returns the offsets a store uses did exactly that.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import _early
import pytest

PROBE = Path(__file__).with_name("_mutation_probe.py")

EXPECTED = {
    "fwd": ["Y"],
    "fwd residual": ["HO", "Y"],
    "fwd residual scale": ["HO", "Y"],
    "fwd heads layer bias": ["Y"],
    "bwd": ["DWP", "DX"],
    "bwd prefetch residual": ["DWP", "DX"],
    "bwd prefetch scale": ["DBP", "DBR", "DWP", "DX"],
    "bwd heads layer bias": ["DBP", "DWP", "DX"],
    "fwd chunked residual": ["HO", "Y"],
    "bwd chunked scale": ["DBP", "DBR", "DWP", "DX"],
    "sum partials two": ["OA", "OB"],
    "rope fwd": ["k_ptr", "q_ptr"],
    "rope bwd": ["dkw_part_ptr", "dqkv_ptr", "dqw_part_ptr"],
}


def _probe(out: Path, environ) -> tuple[list[str], dict]:
    # The probe imports flopkit from this checkout, installed or not.
    env = _early.checkout_env(environ, TRITON_INTERPRET="0", PYTHONWARNINGS="ignore")
    return [sys.executable, str(PROBE)], {"env": env, "timeout": 120}


# Starts when the session is collected (tests/_early.py).
PROBE_RUN = _early.early("mutation_probe", _probe)


@pytest.mark.early("mutation_probe")
def test_torch_compile_sees_exactly_the_outputs_written():
    pytest.importorskip("triton")
    import torch._higher_order_ops.triton_kernel_wrap as tkw

    if not any(hasattr(tkw, f) for f in ("identify_accessed_tensors", "identify_mutated_tensors")):
        pytest.skip("this torch has no wrap_triton mutation analysis to probe")
    done = PROBE_RUN.result()
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == EXPECTED
