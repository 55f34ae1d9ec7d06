"""flopkit's count of timm and Hugging Face models against other counters (the table in docs/any-model.md).

For each model: flopkit (``report --model``: FlopCounterMode on the meta device with flopkit's norm,
activation and softmax formulas), plain ``FlopCounterMode``, plain fvcore and fvcore with flopkit's
handles (both x2: fvcore counts multiply-accumulates), timm's published GMACs (x2) where timm
publishes them, and calflops / ptflops where they are installed. Runs on CPU; fvcore, calflops and
ptflops need a real copy of each model (weights are random, no download).

    python examples/compare_counters.py            # markdown table, then the per-model checks
    python examples/compare_counters.py --json out.json

Needs timm, transformers and fvcore; calflops and ptflops are optional columns.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import warnings
from dataclasses import dataclass, field

import torch

import flopkit
from flopkit.flops.measured import PositionalCall, count_fvcore_any
from flopkit.models import build_model, model_inputs, real_inputs

# timm's published inference GMACs (column infer_gmacs) at 224x224, from
# huggingface/pytorch-image-models results/benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv
# (commit 5c33776aa59f0f05bfb8008ff546ed4c09083f1a).
TIMM_PUBLISHED_GMACS = {
    "vit_base_patch16_224": 17.58,
    "resnet50": 4.11,
    "convnext_tiny": 4.47,
    "deit_small_patch16_224": 4.61,
    "swin_tiny_patch4_window7_224": 4.51,
}


@dataclass
class Case:
    spec: str
    model_args: dict = field(default_factory=dict)
    seq_len: int | None = None

    @property
    def label(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.model_args.items())
        text = self.spec + (f" ({args})" if args else "")
        return text + (f" @ {self.seq_len} tokens" if self.seq_len else " @ 224x224")


CASES = [
    Case("timm:vit_base_patch16_224"),
    Case("timm:resnet50"),
    Case("timm:convnext_tiny"),
    Case("timm:deit_small_patch16_224"),
    Case("timm:swin_tiny_patch4_window7_224"),
    Case("hf:bert", seq_len=128),
    Case("hf:gpt2", seq_len=1024),
    Case("hf:llama", {"num_hidden_layers": 2}, seq_len=2048),
]


def plain_fvcore(model, args, kwargs) -> int:
    from fvcore.nn import FlopCountAnalysis

    wrapper, positional = PositionalCall.wrap(model, args, kwargs)
    analysis = FlopCountAnalysis(wrapper, positional)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return 2 * int(analysis.total())


def flopkit_fvcore(model, args, kwargs) -> int:
    return sum(count_fvcore_any(model, args, kwargs).breakdown("").values())


def plain_flop_counter(model, args, kwargs) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*args, **kwargs)
    return int(counter.get_total_flops())


def calflops_count(model, args, kwargs) -> int | None:
    if importlib.util.find_spec("calflops") is None:
        return None
    from calflops import calculate_flops

    flops, _, _ = calculate_flops(
        model=model, args=list(args), kwargs=dict(kwargs), print_results=False, print_detailed=False,
        output_as_string=False,
    )  # fmt: skip
    return int(flops)


def ptflops_count(model, args, kwargs) -> int | None:
    if importlib.util.find_spec("ptflops") is None:
        return None
    from ptflops import get_model_complexity_info

    if kwargs:
        shape, constructor = (1,), lambda _: dict(kwargs)
    else:
        shape, constructor = tuple(args[0].shape[1:]), None
    macs, _ = get_model_complexity_info(
        model, shape, input_constructor=constructor, as_strings=False, print_per_layer_stat=False,
        backend="pytorch",
    )  # fmt: skip
    return 2 * int(macs)


def measure(case: Case) -> dict:
    meta = build_model(case.spec, case.model_args)
    inputs = model_inputs(meta, seq_len=case.seq_len)
    full = flopkit.count(meta, inputs)
    half = flopkit.count(meta, inputs, depth=0, causal_attention="half")
    causal_calls = full.measurement.causal_calls
    out = {
        "model": case.label,
        "inputs": inputs.describe(),
        "flopkit": full.total(),
        "breakdown": full.by_category(),
        "flopkit_causal_half": half.total() if causal_calls else None,
        "causal_calls": causal_calls,
        "flop_counter_mode": plain_flop_counter(meta, inputs.args, inputs.kwargs),
    }
    torch.manual_seed(0)
    cpu = build_model(case.spec, case.model_args, device="cpu")
    real = real_inputs(inputs)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        out["fvcore"] = plain_fvcore(cpu, real.args, real.kwargs)
        out["fvcore_flopkit_handles"] = flopkit_fvcore(cpu, real.args, real.kwargs)
        out["calflops"] = calflops_count(cpu, real.args, real.kwargs)
        out["ptflops"] = ptflops_count(cpu, real.args, real.kwargs)
    name = case.spec.removeprefix("timm:")
    published = TIMM_PUBLISHED_GMACS.get(name) if case.spec.startswith("timm:") else None
    out["timm_published"] = int(round(2 * published * 1e9)) if published else None
    return out


def _g(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e9:,.2f}"


def _pct(value: int | None, ref: int) -> str:
    return "" if value is None else f" ({100 * (value - ref) / ref:+.1f}%)"


def markdown(results: list[dict]) -> str:
    cats = ["matmul", "attention", "norm", "elementwise"]
    head = ["model", "flopkit", *cats, "FlopCounterMode", "fvcore ×2", "fvcore+flopkit ×2", "timm published ×2",
            "calflops", "ptflops ×2"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        total = r["flopkit"]
        flopkit = _g(total) + (f" (half: {_g(r['flopkit_causal_half'])})" if r["flopkit_causal_half"] else "")
        cells = [r["model"], flopkit, *[_g(r["breakdown"][c]) for c in cats]]
        for key in (
            "flop_counter_mode",
            "fvcore",
            "fvcore_flopkit_handles",
            "timm_published",
            "calflops",
            "ptflops",
        ):
            cells.append(_g(r[key]) + _pct(r[key], total))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checks(results: list[dict]) -> str:
    """The identities that explain the columns, checked per model."""
    lines = []
    for r in results:
        b = r["breakdown"]
        mm_att = b["matmul"] + b["attention"]
        softmax_free = mm_att  # FlopCounterMode's default registry: mm/addmm/bmm/conv/SDPA only
        lines.append(
            f"- {r['model']}: FlopCounterMode - (flopkit matmul + attention) = "
            f"{r['flop_counter_mode'] - softmax_free:+,}; fvcore+flopkit - (matmul + attention + norm) = "
            f"{r['fvcore_flopkit_handles'] - mm_att - b['norm']:+,}; plain fvcore - flopkit matmul = "
            f"{r['fvcore'] - b['matmul']:+,}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results as JSON to this path")
    parser.add_argument("--only", help="comma-separated model specs to run (default: all)")
    options = parser.parse_args()
    cases = CASES
    if options.only:
        wanted = set(options.only.split(","))
        cases = [c for c in CASES if c.spec in wanted]
    results = [measure(case) for case in cases]
    if options.json:
        with open(options.json, "w") as f:
            json.dump(results, f, indent=2)
    print("GFLOPs per forward, batch 1 (1 GFLOP = 1e9 multiplies or adds); (±x%) = against flopkit's total\n")
    print(markdown(results))
    print("\nChecks:")
    print(checks(results))


if __name__ == "__main__":
    main()
