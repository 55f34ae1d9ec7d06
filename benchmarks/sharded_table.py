"""The table of docs/distributed.md: vit5-large and a Llama-7B config at FSDP 8, TP 2 x FSDP 4 and TP 8,
one rank of one training step each, from ``flopkit report ... --format json`` (CPU, no GPU needed).

Every configuration keeps the global batch (vit5-large 256 images, Llama-7B 8 sequences of 4096
tokens), so the per-rank micro-batch is the global batch over the data-parallel ranks.

    python benchmarks/sharded_table.py            # prints the commands it runs, then the markdown table
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

LLAMA_7B = [
    "--model", "hf:llama",
    "--model-arg", "hidden_size=4096", "--model-arg", "num_hidden_layers=32",
    "--model-arg", "num_attention_heads=32", "--model-arg", "num_key_value_heads=32",
    "--model-arg", "intermediate_size=11008", "--model-arg", "vocab_size=32000", "--seq-len", "4096",
]  # fmt: skip
MODELS = {"vit5-large": (["vit5-large"], 256), "Llama-7B (seq 4096)": (LLAMA_7B, 8)}
CONFIGS = {
    "FSDP 8": {"fsdp": 8, "tp": 1},
    "TP 2 x FSDP 4": {"fsdp": 4, "tp": 2},
    "TP 8": {"fsdp": 1, "tp": 8},
}


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def main() -> None:
    rows = []
    for model, (args, global_batch) in MODELS.items():
        for name, degrees in CONFIGS.items():
            batch = global_batch // degrees["fsdp"]
            argv = ["report", *args, "--batch", str(batch), "--tp", str(degrees["tp"])]
            argv += ["--fsdp", str(degrees["fsdp"])] if degrees["fsdp"] > 1 else []
            argv += ["--format", "json"]
            print("$ python -m flopkit.cli " + shlex.join(argv), file=sys.stderr)
            done = subprocess.run(
                [sys.executable, "-m", "flopkit.cli", *argv], capture_output=True, text=True
            )
            if done.returncode:
                raise SystemExit(done.stderr)
            data = json.loads(done.stdout)
            sent = {}
            for c in data["collectives"]:
                key = c["kind"].replace("_", "-")
                sent[key] = sent.get(key, 0) + c["wire_bytes"]
            time, mem = data["time"], data["memory"]
            comm = ", ".join(f"{g} {ms:.1f}" for g, ms in time["comm_ms"].items())
            rows.append(
                [
                    model,
                    name,
                    str(batch),
                    f"{data['flops_per_rank']['total'] / 1e12:.2f}",
                    f"{sum(data['tp_duplicated_flops'].values()) / 1e12:.3f}",
                    ", ".join(f"{k} {gib(v)}" for k, v in sorted(sent.items())),
                    gib(mem["params"] + mem["grads"] + mem["optimizer"]),
                    gib(mem["unsharded_peak"]),
                    "-" if mem.get("activations") is None else gib(mem["activations"]),
                    "-" if mem.get("predicted_peak") is None else gib(mem["predicted_peak"]),
                    f"{time['compute_ms']:.1f}",
                    comm,
                    f"{time['intensity_flops_per_byte']:,.0f}",
                    time["bound"].split(" (")[0],
                ]
            )
    headers = [
        "model", "configuration", "batch / GPU", "TFLOP / GPU", "TP duplicated TFLOP", "sent / GPU (GiB)",
        "params + grads + AdamW (GiB)", "unsharded units (GiB)", "activations (GiB)", "predicted peak (GiB)", "compute ms",
        "comm ms", "FLOP / byte sent", "bound",
    ]  # fmt: skip
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
