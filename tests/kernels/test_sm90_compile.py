"""The norm, QK-norm + RoPE, ``scale_rows``, ``embed_tokens`` and ``gelu_linear`` kernels compile for sm90 in every configuration their launchers plan
at ViT-5 shapes (``_sm90_launches.py``; the QK-norm + RoPE backward also in place, as
``kernels.qk_norm_rope_attention`` runs it after the attention kernels), with the installed Triton.

About 90 compiles (30-60 s), so the main suite leaves it to ``.ci/run``'s step that sets
``FLOPKIT_REQUIRE_SM90=1`` and runs it with Triton 3.6.0, the GPU machines' (the interpreter the
suite uses cannot see a compile error of the real backend). The attention kernels have their own
sm90 check in ``test_sdpa_kernels.py``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import _early
import pytest

REQUIRED = bool(os.environ.get("FLOPKIT_REQUIRE_SM90"))
SCRIPT = Path(__file__).with_name("_sm90_launches.py")
KERNELS = [
    "_attn_bwd_dkdv",  # at T = 577 (ViT-5 at 384 px): past the one-program-per-head kernel's rows
    "_attn_bwd_dq",
    "_attn_bwd_head",
    "_attn_fwd",
    "_attn_fwd_qk",  # opt-in (_sdpa_triton.QK_FUSED_FWD)
    "_dgelu_mm_kernel",
    "_dgelu_mm_tma_kernel",
    "_embed_bwd_kernel",
    "_embed_fwd_kernel",
    "_gelu_deriv_kernel",
    "_norm_bwd_chunked_kernel",
    "_norm_bwd_kernel",
    "_norm_fwd_chunked_kernel",
    "_norm_fwd_kernel",
    "_qk_norm_rope_bwd_kernel",
    "_qk_norm_rope_fwd_kernel",
    "_scale_rows_bwd_kernel",
    "_scale_rows_fwd_kernel",
    "_sum_partials_kernel",
]


def _launches(out, environ):
    env = _early.checkout_env(environ, drop=("TRITON_INTERPRET",))
    return [sys.executable, str(SCRIPT)], {"env": env, "timeout": 600}


LAUNCHES = _early.early("sm90-launches", _launches)


# The early mark only when the test runs: a marked test's subprocess starts even if it skips.
@pytest.mark.skipif(not REQUIRED, reason="about 90 sm90 compiles: set FLOPKIT_REQUIRE_SM90=1 (.ci/run does)")
@(pytest.mark.early("sm90-launches") if REQUIRED else (lambda test: test))
def test_norm_and_rope_kernels_compile_for_sm90():
    done = LAUNCHES.result()
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["kernels"] == KERNELS
    assert found["configs"] >= 40, found["configs"]  # every width, head count, pairing and dtype planned
    assert found["failures"] == {}, list(found["failures"].items())[:3]
