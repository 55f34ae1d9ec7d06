"""Which RoPE table the installed transformers builds, for the tests' hand counts of Hugging Face
models.

Transformers before 5.2x build Llama-style RoPE tables as ``inv_freq @ position_ids``, a batched
matmul that flopkit counts as matmul under ``ROTARY_RULE``. Later versions use a broadcast product,
which counts nothing.
"""

import functools
import inspect

from flopkit.flops.anymodel import ROTARY_RULE


@functools.cache
def rotary_table_is_a_matmul() -> bool:
    """Whether ``LlamaRotaryEmbedding.forward`` multiplies with ``@`` (a decorator's ``@`` aside)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    lines = inspect.getsource(LlamaRotaryEmbedding.forward).splitlines()
    return any(" @ " in line for line in lines if not line.lstrip().startswith("@"))


def rotary_flops(tokens: int, head_dim: int) -> int:
    """The table's matmul FLOPs for ``tokens`` new tokens. The model builds one row of positions
    (``[1, T]``) for the whole batch, with ``head_dim / 2`` frequencies each and 2 FLOPs a product.
    0 where the table is not a matmul."""
    return tokens * head_dim if rotary_table_is_a_matmul() else 0


def with_rotary(rules: dict) -> dict:
    """``rules`` as a report lists them, with the rotary table's rule where it applies."""
    return rules | ({ROTARY_RULE: 1} if rotary_table_is_a_matmul() else {})
