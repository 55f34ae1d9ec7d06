"""Where a benchmark script's results go: ``NAME.json`` (everything measured) and ``NAME.md`` (the
tables) under the output folder, the tables also printed last (the device tool returns the end of
the output)."""

from __future__ import annotations

import json
import os


def write_results(out_dir: str, name: str, res: dict, lines: list[str]) -> None:
    """Write ``res`` to ``out_dir/name.json``, ``lines`` to ``out_dir/name.md``, and print ``lines``."""
    with open(os.path.join(out_dir, f"{name}.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
