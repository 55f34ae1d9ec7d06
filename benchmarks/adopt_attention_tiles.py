"""Write the tiles a ``benchmarks/triton_attention.py`` run chose into ``kernels/_sdpa_triton.py``
(``FWD_TILE``, ``DQ_TILE``, ``DKDV_TILE``, ``HEAD_TILE``, and ``QK_FWD_TILE`` when it swept the
opt-in fused forward).

    python -m benchmarks.adopt_attention_tiles RESULT.json

A device run sweeps, adopts and then times the training step on the adopted tiles in one call;
the same edit is then committed with the result file that justifies it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "kernels" / "_sdpa_triton.py"
NAMES = {
    "forward": "FWD_TILE",
    "dq": "DQ_TILE",
    "dkdv": "DKDV_TILE",
    "head": "HEAD_TILE",
    "qk_forward": "QK_FWD_TILE",
}


def adopt(record: dict, source: Path = SOURCE) -> str:
    """Write the record's tiles into ``source``; a record from before the ``qk_forward`` sweep
    leaves ``QK_FWD_TILE`` as it is."""
    text = source.read_text()
    names = {k: n for k, n in NAMES.items() if k in record["tiles"] or k != "qk_forward"}
    for kernel, name in names.items():
        tile = tuple(record["tiles"][kernel])
        text, n = re.subn(rf"^{name} = AttnTile\([^)]*\)", f"{name} = AttnTile{tile}", text, flags=re.M)
        if n != 1:
            raise SystemExit(f"{source}: no single `{name} = AttnTile(...)` line")
    source.write_text(text)
    return "tiles " + ", ".join(f"{name} {tuple(record['tiles'][k])}" for k, name in names.items())


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m benchmarks.adopt_attention_tiles RESULT.json")
    print(adopt(json.loads(Path(sys.argv[1]).read_text())))


if __name__ == "__main__":
    main()
