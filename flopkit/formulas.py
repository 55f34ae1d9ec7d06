"""Every FLOP formula and convention of flopkit, once (docs/conventions.md).

A leaf module: it imports nothing of flopkit (nor torch), so the modules (``flop_breakdown``), the
kernels (``register_flop_formula``), the measured counters (fvcore handles, the FlopCounterMode
category map) and the report legends can all call it.

Conventions: one FLOP is one floating-point multiply or add, so a multiply-accumulate is
:data:`FLOPS_PER_MAC` FLOPs. Counts are forward passes; :data:`BACKWARD_MULTIPLIERS` gives the
backward as a multiple of the forward, per category.

Every op has one small function below, registered in :data:`FLOP_FORMULAS` with the category its
FLOPs belong to; its docstring is the formula. Ops whose work spans two categories (a Linear with
a bias, the fused QK-norm + RoPE) have a ``*_breakdown`` function built from the single-category
ones, so each number is still written once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "CATEGORIES",
    "CONVENTIONS",
    "FLOPS_PER_MAC",
    "NORM_MODES",
    "BACKWARD_MULTIPLIERS",
    "FlopFormula",
    "FLOP_FORMULAS",
    "flop_formula",
    "empty_breakdown",
    "add_breakdowns",
    "scale_breakdown",
    "training_breakdown",
    "check_convention",
    "linear",
    "bias_add",
    "linear_breakdown",
    "patch_conv",
    "position_add",
    "norm_flops_per_element",
    "rms_norm",
    "layer_norm",
    "head_norm",
    "per_head_rms_norm",
    "qk_norm_rows",
    "rope",
    "sdpa",
    "grouped_mm",
    "ATTENTION_RULES",
    "kept_query_key_pairs",
    "attention_pairs_flops",
    "HARDWARE_ATTENTION_BACKWARD",
    "flash_backward_extra",
    "qk_norm_rope",
    "qk_norm_rope_breakdown",
    "layer_scale",
    "activation",
    "activation_backward",
    "group_norm",
    "batch_norm",
    "norm_backward",
    "softmax",
    "softmax_backward",
    "coefficient",
    "counted_legend",
    "not_counted_legend",
    "training_legend",
]

CATEGORIES: tuple[str, ...] = ("matmul", "attention", "norm", "rope", "elementwise")
"""The FLOP categories every breakdown has, in report order."""

CONVENTIONS: tuple[str, ...] = ("flopkit", "nvsubquadratic")
"""``flopkit`` counts QK-norm over all heads (what runs); ``nvsubquadratic`` reproduces upstream's
published totals, which count a QK-norm over ``D`` on one head (:func:`qk_norm_rows`)."""

FLOPS_PER_MAC = 2
"""A multiply-accumulate is one multiply and one add."""

NORM_MODES: tuple[str, ...] = ("rms", "layer")

# Backward FLOPs as a multiple of the forward, per category (a training step's report).
BACKWARD_MULTIPLIERS: dict[str, int] = {
    # dX = dY W^T and dW = X^T dY: two matmuls of the forward's size.
    "matmul": 2,
    # dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: four matmuls for the forward's two
    # (the softmax gradient is not counted, as the softmax is not).
    "attention": 2,
    # Input gradient (g*w, the row dot product with x_hat, the correction) and the weight gradient
    # (sum over rows of g*x_hat): about two forward passes' worth per element; the common 2x rule.
    "norm": 2,
    # RoPE is linear in x: its gradient applies the transposed rotation, x*cos - rot(x)*sin,
    # the same 2 FLOPs per element as the forward.
    "rope": 1,
    # One FLOP per element for the input gradient (g*gamma, g*gelu'(x)) and one for the parameter
    # gradient or the activation's derivative: 2x, as for norms.
    "elementwise": 2,
}


@dataclass(frozen=True)
class FlopFormula:
    """One registered formula: the op's name, the category its FLOPs go to, and the function."""

    name: str
    category: str
    fn: Callable[..., int]

    def __call__(self, *args, **kwargs) -> int:
        return self.fn(*args, **kwargs)

    @property
    def doc(self) -> str:
        """The formula as its docstring states it (first line)."""
        return (self.fn.__doc__ or "").strip().splitlines()[0]


FLOP_FORMULAS: dict[str, FlopFormula] = {}
"""op name -> :class:`FlopFormula`; filled by :func:`flop_formula`."""


def flop_formula(name: str, category: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Register ``fn`` as the formula of op ``name`` whose FLOPs belong to ``category``."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")

    def register(fn: Callable[..., int]) -> Callable[..., int]:
        if name in FLOP_FORMULAS:
            raise ValueError(f"a FLOP formula for {name!r} is already registered")
        FLOP_FORMULAS[name] = FlopFormula(name, category, fn)
        return fn

    return register


# ------------------------------------------------------------------------------ breakdowns


def empty_breakdown() -> dict[str, int]:
    """A breakdown with every category at zero."""
    return dict.fromkeys(CATEGORIES, 0)


def add_breakdowns(*parts: Mapping[str, int]) -> dict[str, int]:
    """Category-wise sum of breakdowns (missing categories count as 0)."""
    out = empty_breakdown()
    for part in parts:
        for key, value in part.items():
            out[key] += value
    return out


def scale_breakdown(breakdown: Mapping[str, int], factor: int) -> dict[str, int]:
    """Every category times ``factor`` (a batch size)."""
    return {k: v * factor for k, v in breakdown.items()}


def training_breakdown(forward: Mapping[str, int]) -> dict[str, int]:
    """Forward + backward by category: ``(1 + BACKWARD_MULTIPLIERS[c]) * forward[c]``."""
    return {k: v * (1 + BACKWARD_MULTIPLIERS[k]) for k, v in forward.items()}


def check_convention(convention: str) -> None:
    """Raise ValueError unless ``convention`` is one of :data:`CONVENTIONS`."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


# ------------------------------------------------------------------------------ matmul


@flop_formula("linear", "matmul")
def linear(num_rows: int, in_features: int, out_features: int) -> int:
    """``2 * rows * in * out``: the product of ``[rows, in] @ [in, out]`` (the bias add is separate)."""
    return FLOPS_PER_MAC * num_rows * in_features * out_features


@flop_formula("bias_add", "elementwise")
def bias_add(num_rows: int, features: int) -> int:
    """``rows * features``: one add per output element. Elementwise, so that ``matmul`` equals what
    torch's counters measure (they count ``addmm`` as its product only)."""
    return num_rows * features


def linear_breakdown(num_rows: int, in_features: int, out_features: int, bias: bool) -> dict[str, int]:
    """A Linear on ``num_rows`` rows: :func:`linear` (matmul) + :func:`bias_add` with a bias (elementwise)."""
    out = empty_breakdown()
    out["matmul"] = linear(num_rows, in_features, out_features)
    if bias:
        out["elementwise"] = bias_add(num_rows, out_features)
    return out


@flop_formula("patch_conv", "matmul")
def patch_conv(num_patches: int, in_channels: int, patch_area: int, out_channels: int) -> int:
    """``2 * N * C_in * P^2 * C``: a stride-P convolution is a Linear(C_in * P^2, C) on ``N`` patches."""
    return linear(num_patches, in_channels * patch_area, out_channels)


@flop_formula("position_add", "elementwise")
def position_add(num_tokens: int, dim: int) -> int:
    """``T * C``: adding a learnable position embedding, one add per element."""
    return num_tokens * dim


# ------------------------------------------------------------------------------ norms


def norm_flops_per_element(mode: str = "rms", bias: bool = False, weight: bool = True) -> int:
    """FLOPs per normalised element: rms 3 (square-accumulate 2, scale 1, weight or not), layer 5
    (the mean subtraction and its accumulation add 2; 4 without an affine weight), +1 for a bias add."""
    per_element = {"rms": 3, "layer": 5}
    if mode not in per_element:
        raise ValueError(f"mode must be one of {NORM_MODES}, got {mode!r}")
    return per_element[mode] - (1 if mode == "layer" and not weight else 0) + (1 if bias else 0)


@flop_formula("rms_norm", "norm")
def rms_norm(num_rows: int, dim: int) -> int:
    """``3 * rows * dim``: RMSNorm over the last ``dim`` elements of ``rows`` rows (weight or not)."""
    return norm_flops_per_element("rms") * num_rows * dim


@flop_formula("layer_norm", "norm")
def layer_norm(num_rows: int, dim: int, bias: bool = True) -> int:
    """``5 * rows * dim`` (+ ``rows * dim`` with a bias): LayerNorm over the last ``dim`` elements."""
    return norm_flops_per_element("layer", bias) * num_rows * dim


@flop_formula("group_norm", "norm")
def group_norm(num_elements: int, weight: bool = True, bias: bool = True) -> int:
    """``(4 + weight + bias) * elements``: statistics per group, then a LayerNorm's per-element work
    (also instance norm, and layer norm counted from its element count)."""
    return norm_flops_per_element("layer", bias, weight) * num_elements


@flop_formula("batch_norm", "norm")
def batch_norm(num_elements: int, training: bool = False, weight: bool = True, bias: bool = True) -> int:
    """``2 * elements`` in eval (running statistics and the affine fold into one scale and one shift);
    in training, batch statistics: :func:`group_norm`'s ``(4 + weight + bias) * elements``."""
    if training:
        return group_norm(num_elements, weight, bias)
    return 2 * num_elements


@flop_formula("norm_backward", "norm")
def norm_backward(forward_flops: int, input_grad: bool = True, param_grad: bool = True) -> int:
    """``forward * (input_grad + param_grad)``: the input gradient costs one forward, the weight and
    bias gradients one more (:data:`BACKWARD_MULTIPLIERS` ``norm`` = 2 with both)."""
    return forward_flops * (int(input_grad) + int(param_grad))


@flop_formula("head_norm", "norm")
def head_norm(num_rows: int, num_heads: int, head_dim: int, mode: str = "rms", bias: bool = False) -> int:
    """``(3 | 5) * rows * H * D`` (+ ``rows * H * D`` with bias): a per-head norm over each head's ``D``."""
    return norm_flops_per_element(mode, bias) * num_rows * num_heads * head_dim


@flop_formula("per_head_rms_norm", "norm")
def per_head_rms_norm(num_rows: int, num_heads: int, head_dim: int) -> int:
    """``3 * rows * H * D``: QK-norm with one ``(D,)`` weight shared by the heads."""
    return head_norm(num_rows, num_heads, head_dim, "rms")


def qk_norm_rows(num_tokens: int, num_heads: int, convention: str = "flopkit") -> int:
    """Rows a QK-norm over ``D`` (one ``RMSNorm(head_dim)``, applied to ``[T, H, D]``) is counted on:
    ``T * H`` (every head, what runs), or ``T`` under upstream's ``nvsubquadratic`` convention,
    which counts one head."""
    check_convention(convention)
    return num_tokens if convention == "nvsubquadratic" else num_tokens * num_heads


# ------------------------------------------------------------------------------ attention


@flop_formula("rope", "rope")
def rope(num_rows: int, num_heads: int, head_dim: int, num_tensors: int = 2) -> int:
    """``2 * rows * H * D`` per rotated tensor, ``4 * T * C`` for q and k: ``x*cos + rot(x)*sin``
    counted as 2 FLOPs per output element (as upstream; ``rot`` is a permutation with sign flips)."""
    return 2 * num_tensors * num_rows * num_heads * head_dim


@flop_formula("sdpa", "attention")
def sdpa(
    batch: int, num_heads: int, q_len: int, kv_len: int, head_dim: int, v_head_dim: int | None = None
) -> int:
    """``2 * B * H * Tq * Tk * (D + Dv)``: QK^T and AV (``4 * T^2 * C`` for self-attention); softmax
    and the scale are not counted. Equals ``torch.utils.flop_counter.sdpa_flop_count``."""
    dv = head_dim if v_head_dim is None else v_head_dim
    return FLOPS_PER_MAC * batch * num_heads * q_len * kv_len * (head_dim + dv)


@flop_formula("grouped_mm", "matmul")
def grouped_mm(a_shape: Sequence[int], b_shape: Sequence[int]) -> int:
    """``2 * sum_g M_g * K_g * N_g``: ``torch._grouped_mm`` (mixture-of-experts), every row of a jagged
    operand in exactly one group (each token at exactly its top-k experts; the offsets' values are not
    needed). ``[S, K] @ [G, K, N]``: ``2*S*K*N``; ``[G, M, K] @ [K, N]``: ``2*M*K*N``;
    ``[M, K] @ [K, N]`` grouped along K: ``2*M*K*N``; ``[G, M, K] @ [G, K, N]``: ``2*G*M*K*N``."""
    if len(a_shape) == 2 and len(b_shape) == 2:
        return FLOPS_PER_MAC * a_shape[0] * a_shape[1] * b_shape[1]
    if len(a_shape) == 2:
        return FLOPS_PER_MAC * a_shape[0] * a_shape[1] * b_shape[-1]
    if len(b_shape) == 2:
        return FLOPS_PER_MAC * a_shape[1] * a_shape[2] * b_shape[1]
    return FLOPS_PER_MAC * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]


ATTENTION_RULES: tuple[str, ...] = ("full", "half", "exact")
"""How causal attention is counted: ``full`` every query-key pair (as FlopCounterMode), ``half`` half
of them (``Tq*Tk/2``, the common MFU convention), ``exact`` the pairs the mask keeps
(:func:`kept_query_key_pairs`)."""

HARDWARE_ATTENTION_BACKWARD = (5, 2)
"""Flash- and memory-efficient-attention backward as a multiple of the forward, ``5/2``: the kernel
recomputes QK^T, then runs dV, dP, dQ, dK (five matmuls of the forward's two; the model's backward
counts four)."""


def flash_backward_extra(forward_attention: int) -> int:
    """``forward * (5/2 - 2)``: what a flash / memory-efficient attention backward runs beyond the
    model's backward (:data:`HARDWARE_ATTENTION_BACKWARD` against ``BACKWARD_MULTIPLIERS``), the
    recompute of QK^T. Hardware FLOPs, not model FLOPs."""
    num, den = HARDWARE_ATTENTION_BACKWARD
    return forward_attention * num // den - forward_attention * BACKWARD_MULTIPLIERS["attention"]


def kept_query_key_pairs(
    q_len: int, kv_len: int, offset: int | None = None, window: int | None = None
) -> int:
    """Query-key pairs a causal mask keeps: query ``i`` at position ``offset + i`` keeps the keys
    ``j <= offset + i`` (and ``offset + i - j < window`` with a sliding window), ``0 <= j < kv_len``.

    ``offset`` defaults to ``kv_len - q_len`` (bottom-right alignment: new tokens after a cache, as
    Hugging Face masks); ``0`` is SDPA's ``is_causal`` alignment (top-left). ``T(T+1)/2`` for
    ``q_len == kv_len``; ``sum_i min(L + i + 1, window)`` for ``i`` new tokens after ``L`` cached.
    """
    if offset is None:
        offset = kv_len - q_len

    def kept(p: int) -> int:  # keys kept by the query at position p
        first = 0 if window is None else max(0, p - window + 1)
        return max(0, min(p, kv_len - 1) - first + 1)

    lo, hi = offset, offset + q_len
    # kept(p) changes slope only at these points: sum each linear piece in closed form.
    points = [-1, 0, kv_len - 1, kv_len]
    if window is not None:
        points += [window - 1, window, kv_len + window - 2, kv_len + window - 1]
    cuts = sorted({lo, hi, *(c for c in points if lo < c < hi)})
    total = 0
    for a, b in zip(cuts, cuts[1:], strict=False):
        n = b - a
        total += n * kept(a) + (kept(a + 1) - kept(a)) * n * (n - 1) // 2
    return total


def attention_pairs_flops(num_heads: int, pairs: int, head_dim: int, v_head_dim: int | None = None) -> int:
    """``2 * heads * pairs * (D + Dv)``: QK^T and AV on the kept query-key ``pairs`` (:func:`sdpa` on
    all ``Tq * Tk`` pairs)."""
    dv = head_dim if v_head_dim is None else v_head_dim
    return FLOPS_PER_MAC * num_heads * pairs * (head_dim + dv)


def qk_norm_rope_breakdown(
    batch: int, num_tokens: int, num_heads: int, head_dim: int, norm: bool
) -> dict[str, int]:
    """The fused QK-norm + RoPE on ``[B, T, 3*H*D]``: ``norm`` = two :func:`per_head_rms_norm`
    (q and k) when ``norm``, ``rope`` = :func:`rope` on q and k."""
    out = empty_breakdown()
    rows = batch * num_tokens
    if norm:
        out["norm"] = 2 * per_head_rms_norm(rows, num_heads, head_dim)
    out["rope"] = rope(rows, num_heads, head_dim)
    return out


@flop_formula("qk_norm_rope", "rope")
def qk_norm_rope(batch: int, num_tokens: int, num_heads: int, head_dim: int, norm: bool) -> int:
    """``6 * B*T*H*D`` (QK-norm, when ``norm``) ``+ 4 * B*T*H*D`` (RoPE): the sum of
    :func:`qk_norm_rope_breakdown`. Its category is nominal: use the breakdown to split it."""
    return sum(qk_norm_rope_breakdown(batch, num_tokens, num_heads, head_dim, norm).values())


# ------------------------------------------------------------------------------ elementwise


@flop_formula("layer_scale", "elementwise")
def layer_scale(num_rows: int, dim: int) -> int:
    """``rows * C``: one multiply per element by the per-channel ``gamma``."""
    return num_rows * dim


@flop_formula("activation", "elementwise")
def activation(num_elements: int) -> int:
    """``elements``: one FLOP per element for GELU, ReLU, SiLU, tanh or sigmoid (flopkit's convention;
    neither fvcore nor FlopCounterMode counts activations)."""
    return num_elements


@flop_formula("activation_backward", "elementwise")
def activation_backward(num_elements: int) -> int:
    """``2 * elements``: the activation's derivative and its product with the incoming gradient
    (:data:`BACKWARD_MULTIPLIERS` ``elementwise`` = 2)."""
    return 2 * activation(num_elements)


@flop_formula("softmax", "elementwise")
def softmax(num_elements: int) -> int:
    """``4 * elements``: subtract the row max, exp, sum, divide (the max is a comparison, not a
    FLOP). Counted in measured models only: flopkit's own attention does not count its softmax."""
    return 4 * num_elements


@flop_formula("softmax_backward", "elementwise")
def softmax_backward(num_elements: int) -> int:
    """``4 * elements``: ``y * (g - sum(g * y))``: a product, the row sum, a subtraction, a product."""
    return 4 * num_elements


# ------------------------------------------------------------------------------ legends


def coefficient(value: int) -> str:
    """``value`` as the leading factor of a formula in a legend: ``"3*"``, or ``""`` for 1."""
    return "" if value == 1 else f"{value}*"


def counted_legend() -> str:
    """What each category counts, with every per-element number read from the formulas above."""
    return (
        f"Counted (1 FLOP = one multiply or add; a multiply-accumulate is {FLOPS_PER_MAC}): matmul = "
        f"Linear and the patch conv ({linear(1, 1, 1)}*T*i*o; a Linear bias add, "
        f"{coefficient(bias_add(1, 1))}T*o, is elementwise); attention = QK^T and AV "
        f"({sdpa(1, 1, 1, 1, 1)}*T^2*C); norm = RMSNorm and QK-norm "
        f"({rms_norm(1, 1)} per normalised element; the final norm only on the readout token(s)); "
        f"rope = {rope(1, 1, 1, num_tensors=1)} per element of q and of k ({rope(1, 1, 1)}*T*C); "
        f"elementwise = LayerScale, GELU ({activation(1)} per element), bias adds and the "
        f"position-embedding add. {not_counted_legend()}"
    )


def not_counted_legend() -> str:
    """Work flopkit's convention leaves out, as upstream does."""
    return (
        "Not counted: residual adds, softmax, the attention scale, dropout, CLS/register "
        "concatenation, mean pooling."
    )


def training_legend() -> str:
    """The training-step rule per category, read from :data:`BACKWARD_MULTIPLIERS`; the argument that
    asks for it is marked `` `training` `` (:func:`flopkit.checks.name_arguments`)."""
    rules = ", ".join(f"{cat} {1 + BACKWARD_MULTIPLIERS[cat]}x" for cat in CATEGORIES)
    return (
        f"`training`: forward + backward per category = {rules} the forward, except the patch "
        "embedding's conv, whose input is data and needs no gradient: its backward is the weight "
        "gradient only (1x). matmul and attention backward are exactly two matmuls per forward matmul "
        "(checked against FlopCounterMode's measured backward on the meta device); rope backward is the "
        "transposed rotation (same cost); norm and elementwise use the 2x rule (input gradient + "
        "weight/derivative gradient): flopkit's norm and RoPE backward ops have no registered formula "
        "to measure them with."
    )
