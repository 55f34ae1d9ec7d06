"""torch.compile's view of which arguments each flopkit Triton kernel writes (see _mutation_probe.py).

Exactly the kernel's outputs, for every plan family and every kernel the public ops launch: an
input marked as written is written back from its untouched copy under ``torch.compile`` when the
launcher passes one tensor in two slots (the launchers pass an output as the placeholder of every
absent input), which corrupts the output silently; and an input marked as written that is saved
for the backward is copied before every launch (Inductor cannot write into it in place). A helper
that takes input pointers and returns the offsets a store uses did both: the norms' once, and the
attention backward's ``_head_rows_in``, which made a compiled vit5-base step copy ``q`` and ``o``
in every layer (24 copies of ``[B·T, C]`` a step, 0.65 ms on an H100, docs/kernels.md).
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
    # Launched through the public ops (the probe's launched()): the attention with its QK-norm +
    # RoPE and alone, one kernel per head (packed dq, dk, dv, then separate buffers) at T = 201 and
    # the dq and dkdv kernels at T = 577; the opt-in forward with QK-norm + RoPE inside; the MLP's GELU + linear; scale_rows; embed_tokens.
    "_qk_norm_rope_fwd_kernel": ["k_ptr", "q_ptr"],
    "_attn_fwd": ["LSE", "O"],
    "_attn_bwd_head": ["DQ"],
    "_qk_norm_rope_bwd_kernel": ["dkw_part_ptr", "dqkv_ptr", "dqw_part_ptr"],
    "_sum_partials_kernel": ["OA", "OB"],
    "_attn_bwd_head/1": ["DK", "DQ", "DV"],
    "_attn_bwd_dq": ["DELTA", "DQ"],
    "_attn_bwd_dkdv": ["DK"],
    "_attn_bwd_dkdv/1": ["DK", "DV"],
    "_attn_fwd_qk": ["K", "LSE", "O", "Q"],  # opt-in (_sdpa_triton.QK_FUSED_FWD)
    "_gelu_deriv_kernel": ["G", "H"],
    "_dgelu_mm_kernel": ["OUT"],
    "_dgelu_mm_tma_kernel": ["OUT"],
    "_scale_rows_fwd_kernel": ["OUT"],
    "_scale_rows_bwd_kernel": ["DS", "DW"],
    "_embed_fwd_kernel": ["OUT"],
    "_embed_bwd_kernel": ["DCLS", "DPOS", "DREG", "DX"],
}


def _probe(out: Path, environ) -> tuple[list[str], dict]:
    # The probe imports flopkit from this checkout, installed or not.
    env = _early.checkout_env(environ, TRITON_INTERPRET="0", PYTHONWARNINGS="ignore")
    return [sys.executable, str(PROBE)], {"env": env, "timeout": 300}


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
