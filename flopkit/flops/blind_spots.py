"""Known blind spots of the measured counters, in one place.

Two kinds:

* :data:`CATEGORY_BLIND_SPOTS`: a category a counter cannot see in a flopkit model (fvcore has no
  handle for GELU, torch no formula for a norm written as plain arithmetic). Such a category is not
  compared; the reason is printed.
* :data:`KNOWN_BLIND_SPOTS`: an op that a counter sees but does not count although its work belongs
  to a compared category (fvcore's ``aten::_native_multi_head_attention``: a whole
  ``nn.MultiheadAttention`` in one op). flopkit counts what each such call hides, by category,
  with the same formulas as its own count; ``validate`` reads a difference that these hidden FLOPs
  account for exactly as **EXPLAINED** (exit 0), naming the op and its cause, and anything else as
  **MISMATCH** (exit 1).

For fvcore, each known op gets a handle (:func:`fvcore_blind_spot_handles`) that reports the hidden
FLOPs as pseudo-ops named by :func:`hidden_op` (``"aten::baddbmm[hidden attention]"``), one more per
call (``[hidden calls]``); they belong to no category, so fvcore's own count stays what fvcore
counts, and :func:`hidden_flops` reads them back per module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from flopkit import formulas

__all__ = [
    "BlindSpot",
    "KNOWN_BLIND_SPOTS",
    "CATEGORY_BLIND_SPOTS",
    "blind_spot",
    "hidden_op",
    "parse_hidden_op",
    "hidden_flops",
    "hidden_calls",
    "fvcore_blind_spot_handles",
]

CALLS = "calls"

# Why a counter does not see a category of a flopkit model (shown when the category is not comparable).
CATEGORY_BLIND_SPOTS: dict[str, dict[str, str]] = {
    "fvcore": {
        "norm": "no norm op it has a handle for (aten::rms_norm, layer_norm, group_norm, batch_norm or a "
        "flopkit:: norm op) is in the trace: a norm written as plain aten arithmetic (square, mean, rsqrt, "
        "mul) is skipped",
        "rope": "no flopkit::qk_norm_rope op is in the trace: a rotation written as plain aten::mul, add, "
        "neg and slicing is skipped",
        "elementwise": "LayerScale (aten::mul), GELU (aten::gelu) and the position-embedding add "
        "(aten::add) have no fvcore handles (its elementwise handles cover upsample, adaptive pooling "
        "and grid_sample only), and its adds could not be told apart from the residual adds flopkit "
        "does not count",
    },
    "torch": {
        "norm": "FlopCounterMode counts norms only through a formula (the flopkit:: norm ops', native "
        "layer/group/batch norm, F.rms_norm and modules named *RMSNorm); a norm written as plain aten "
        "arithmetic (pow, mean, rsqrt, mul) elsewhere is not counted",
        "rope": "FlopCounterMode counts RoPE only through flopkit::qk_norm_rope's registered formula; a "
        "rotation written as plain aten.mul, add, neg is not counted",
        "elementwise": "FlopCounterMode with flopkit's formulas counts GELU and the softmax inside SDPA "
        "(which flopkit's analytic attention does not count), not LayerScale (aten.mul) or the "
        "position-embedding add (aten.add)",
    },
}


@dataclass(frozen=True)
class BlindSpot:
    """An op ``counter`` sees but does not count: ``cause`` says why, ``flops(inputs, outputs)``
    gives one call's hidden FLOPs by category (``inputs``/``outputs`` as the counter's handles get
    them: JIT values for fvcore)."""

    counter: str
    op: str
    cause: str
    flops: Callable[[list, list], dict[str, int]]


def _shape(value) -> list[int]:
    from fvcore.nn.jit_handles import get_shape

    return list(get_shape(value))


def _present(value) -> bool:
    """A JIT value that is a tensor (an absent optional bias is a None constant)."""
    return value.type().kind() == "TensorType"


def _native_mha_flops(inputs: list, outputs: list) -> dict[str, int]:
    """``aten::_native_multi_head_attention(query [B, L, E], key [B, S, E], value [B, S, E],
    embed_dim, num_heads, qkv_weight [3E, E], qkv_bias, proj_weight [E, E], proj_bias, ...)``:
    the q, k, v and output projections (matmul, bias adds elementwise) and QK^T, AV (attention)."""
    query, key = _shape(inputs[0]), _shape(inputs[1])
    embed, heads = query[-1], int(inputs[4].toIValue())
    batch = 1 if len(query) == 2 else query[0]
    q_rows, kv_rows = batch * query[-2], batch * key[-2]
    qkv_bias, proj_bias = _present(inputs[6]), _present(inputs[8])
    parts = [
        formulas.linear_breakdown(q_rows, embed, embed, qkv_bias),  # q
        formulas.linear_breakdown(kv_rows, embed, embed, qkv_bias),  # k
        formulas.linear_breakdown(kv_rows, embed, embed, qkv_bias),  # v
        formulas.linear_breakdown(q_rows, embed, embed, proj_bias),  # out_proj
    ]
    attention = formulas.sdpa(batch, heads, query[-2], key[-2], embed // heads, embed // heads)
    return formulas.add_breakdowns(*parts, {"attention": attention})


def _baddbmm_flops(inputs: list, outputs: list) -> dict[str, int]:
    """``aten::baddbmm(self, batch1 [b, n, m], batch2 [b, m, p], beta, alpha)``: the batched product,
    ``2*b*n*m*p``, in the category FlopCounterMode's count puts it (as ``aten.bmm``: attention)."""
    from .ops import torch_category

    (b, n, m), p = _shape(inputs[1]), _shape(inputs[2])[-1]
    return {torch_category("aten.baddbmm"): formulas.FLOPS_PER_MAC * b * n * m * p}


KNOWN_BLIND_SPOTS: tuple[BlindSpot, ...] = (
    BlindSpot(
        "fvcore",
        "aten::_native_multi_head_attention",
        "nn.MultiheadAttention's fused inference path (eval, no grad, batch_first) runs its projections "
        "and attention as one op, which fvcore has no handle for",
        _native_mha_flops,
    ),
    BlindSpot(
        "fvcore",
        "aten::baddbmm",
        "fvcore has no handle for torch.baddbmm (FlopCounterMode counts it as a batched matmul)",
        _baddbmm_flops,
    ),
)


def blind_spot(counter: str, op: str) -> BlindSpot | None:
    """The known blind spot of ``counter`` for ``op``, or None."""
    return next((s for s in KNOWN_BLIND_SPOTS if s.counter == counter and s.op == op), None)


def hidden_op(op: str, category: str) -> str:
    """The pseudo-op that carries ``op``'s hidden FLOPs in ``category`` (or its calls, ``"calls"``)."""
    return f"{op}[hidden {category}]"


def parse_hidden_op(name: str) -> tuple[str, str] | None:
    """``(op, category)`` of a :func:`hidden_op` name, else None."""
    op, sep, rest = name.partition("[hidden ")
    return (op, rest[:-1]) if sep and rest.endswith("]") else None


def hidden_flops(ops: Mapping[str, int]) -> dict[str, int]:
    """Hidden FLOPs by category in a counter's per-op counts (one module's, descendants included)."""
    out: dict[str, int] = {}
    for name, value in ops.items():
        parsed = parse_hidden_op(name)
        if parsed is not None and parsed[1] != CALLS and value:
            out[parsed[1]] = out.get(parsed[1], 0) + int(value)
    return out


def hidden_calls(ops: Mapping[str, int]) -> Counter:
    """Calls of each blind-spot op in a counter's per-op counts."""
    return Counter(
        {p[0]: int(v) for name, v in ops.items() if (p := parse_hidden_op(name)) and p[1] == CALLS}
    )


def fvcore_blind_spot_handles() -> dict[str, Callable[[list, list], Counter]]:
    """fvcore handles for its known blind spots: each reports the call's hidden FLOPs as
    :func:`hidden_op` pseudo-ops (and one call), which fvcore's own count leaves out."""

    def handle_of(spot: BlindSpot) -> Callable[[list, list], Counter]:
        def handle(inputs: list, outputs: list) -> Counter:
            flops = {hidden_op(spot.op, c): v for c, v in spot.flops(inputs, outputs).items() if v}
            return Counter({**flops, hidden_op(spot.op, CALLS): 1})

        return handle

    return {spot.op: handle_of(spot) for spot in KNOWN_BLIND_SPOTS if spot.counter == "fvcore"}
