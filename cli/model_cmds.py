"""``report --model`` and ``validate --model``: any model (timm, Hugging Face, a user's callable).

Parses the model options, calls :mod:`flopkit.models` and :mod:`flopkit.flops`, renders.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import click

from flopkit.formulas import CATEGORIES
from flopkit.report import percent, render_json, render_rows

from ._options import cli_text

COLUMN_GROUPS = ("shapes", "memory")


def parse_columns(text: str | None) -> tuple[str, ...]:
    """``"shapes,memory"`` -> ``("shapes", "memory")``; each one of :data:`COLUMN_GROUPS`."""
    if not text:
        return ()
    groups = tuple(c.strip() for c in text.split(",") if c.strip())
    bad = [g for g in groups if g not in COLUMN_GROUPS]
    if bad or not groups:
        raise click.BadParameter(
            f"expected a comma-separated list of {', '.join(COLUMN_GROUPS)}, got {text!r}",
            param_hint="--columns",
        )
    return groups


def parse_values(texts: tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    """Split ``--input`` values: ``NAME=[[...]]`` (a JSON array of values: only ``attention_mask``)
    -> ``{name: int64 tensor}``; the rest (``NAME=SHAPE[:DTYPE]``) are returned as given."""
    import json

    import torch

    values, rest = {}, []
    for text in texts:
        name, sep, body = text.partition("=")
        if not sep or not body.strip().startswith("["):
            rest.append(text)
            continue
        name = name.strip()
        if name != "attention_mask":
            raise click.BadParameter(
                f"values are read for attention_mask only (padding for --causal-attention exact), got {name}",
                param_hint="--input",
            )
        try:
            tensor = torch.tensor(json.loads(body), dtype=torch.int64)
        except (ValueError, TypeError, RuntimeError):
            raise click.BadParameter(
                f"{name}: expected a JSON array of rows, e.g. [[1,1,0],[1,1,1]], got {body!r}",
                param_hint="--input",
            ) from None
        if tensor.dim() != 2 or tensor.shape[1] == 0 or bool((tensor < 0).any()):
            raise click.BadParameter(
                f"{name}: expected [batch, keys] rows of 0 (padding), 1 (token) or document ids (packed "
                f"sequences), got shape {list(tensor.shape)}",
                param_hint="--input",
            )
        values[name] = tensor
    return values, rest


def attach_shapes(rows, cfg, module, batch: int) -> None:
    """Give each row of a flopkit config's report the shapes of its module's first call (one
    meta-device forward on the config's input)."""
    from flopkit.config import model_input
    from flopkit.flops.anymodel import layer_shapes

    shapes = layer_shapes(module, (model_input(cfg, module, batch, "meta"),))
    for row in rows:
        row.shapes = shapes.get(row.path)


def _shape_text(shapes: list[list[int]], dtypes: list[str]) -> str:
    return "; ".join(f"[{', '.join(map(str, s))}] {d}" for s, d in zip(shapes, dtypes, strict=True))


def _short(text: str, width: int = 44) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_model_rows(
    rows, fmt: str, title: str, legend: list[str], columns: tuple[str, ...], training: bool
) -> str:
    """The per-module table of ``report --model``: categories, total, share, forward/backward
    (``training``), shapes and memory (``columns``), source and repr."""
    total = rows[0].flops
    headers = ["module", "type", "params", *CATEGORIES, "total", "share"]
    if training:
        headers += ["forward", "backward", "hardware"]
    if "shapes" in columns:
        headers += ["input", "output"]
    if "memory" in columns:
        headers += ["param bytes", "output bytes"]
    headers += ["source", "repr"]
    body = []
    for r in [*rows[1:], rows[0]]:
        name = r.path or "TOTAL"
        if fmt == "table" and r.path:
            name = "  " * r.path.count(".") + r.path
        line: list[Any] = [name, r.type, r.params, *[r.breakdown[c] for c in CATEGORIES], r.flops]
        line.append(percent(r.flops, total))
        if training:
            backward = sum(r.backward.values()) if r.backward is not None else 0
            line += [r.flops - backward, backward, r.hardware_flops if r.hardware_flops is not None else "-"]
        s = r.shapes
        if "shapes" in columns:
            line += (
                [_shape_text(s.input_shapes, s.input_dtypes), _shape_text(s.output_shapes, s.output_dtypes)]
                if s is not None
                else ["-", "-"]
            )
        if "memory" in columns:
            line += [s.param_bytes, s.output_bytes] if s is not None else ["-", "-"]
        line += [r.source, _short(r.repr) if fmt == "table" else r.repr]
        body.append(line)
    return render_rows(
        headers, body, fmt, title=None if fmt == "csv" else title, notes=[] if fmt == "csv" else legend
    )


def model_legend(
    convention: str,
    inputs,
    count,
    training: bool,
    batch: int,
    analytic: bool,
    checkpointing: str = "none",
    described: str | None = None,
) -> list[str]:
    """Legend lines of a ``--model`` report; ``analytic``: some rows come from flopkit modules."""
    from flopkit.flops.anymodel import ANYMODEL_LEGEND, causal_legend, skipped_legend
    from flopkit.flops.mixed import MIXED_LEGEND
    from flopkit.formulas import counted_legend, training_legend

    legend = [counted_legend(), MIXED_LEGEND] if analytic else []
    legend += [
        ANYMODEL_LEGEND,
        causal_legend(count.causal, count.causal_calls, count.masked_calls, count.rules),
        *skipped_legend(count.uncounted, count.convention_uncounted),
        f"convention: {convention}; batch: {batch}; inputs: {described or inputs.describe()} ({inputs.origin}); per "
        + ("training step" if training else "forward"),
    ]
    if training:
        legend.append(
            "--training on a model: measured rows count the backward with FlopCounterMode on the meta "
            "device (loss = sum of the outputs; inputs do not require grad, so the first layer computes no "
            "input gradient); analytic rows use the rule below."
        )
        legend.append(training_legend())
        legend.append(hardware_legend(checkpointing))
    return [cli_text(line) for line in legend]


def hardware_legend(checkpointing: str) -> str:
    """What ``hardware_flops`` adds to the model's FLOPs."""
    from flopkit.formulas import HARDWARE_ATTENTION_BACKWARD

    num, den = HARDWARE_ATTENTION_BACKWARD
    text = (
        "hardware = matmul + attention as CUDA kernels run them (the HFU numerator; MFU uses model "
        f"FLOPs): SDPA backward at {num}/{den} of its forward (flash and memory-efficient kernels recompute "
        "QK^T) where the model's count is 2x"
    )
    if checkpointing == "blocks":
        text += "; --checkpointing blocks: each repeated layer's forward matmul + attention once more"
    return text


def run_forward(spec: str, fn, *args, **kwargs):
    """Call ``fn`` (a count over the user's model); an error inside the model becomes one line naming
    the spec, with the original message (:func:`flopkit.models.user_code`)."""
    from flopkit.models import user_code

    with user_code(spec, "running the model"):
        return fn(*args, **kwargs)


def parse_generate(text: str) -> tuple[int, int]:
    """``"512:128"`` -> ``(512, 128)``: prompt tokens (>= 1) and decode steps (>= 1)."""
    prompt, sep, steps = text.partition(":")
    try:
        p, n = int(prompt), int(steps)
    except ValueError:
        p = n = None
    if not sep or p is None or n is None:
        raise click.BadParameter(f"expected P:N (prompt tokens:decode steps), e.g. 512:128, got {text!r}",
                                 param_hint="--generate")  # fmt: skip
    if p < 1 or n < 1:
        raise click.BadParameter(
            f"the prompt P and the decode steps N must be at least 1, got {text!r}", param_hint="--generate"
        )
    return p, n


def _check_llm_options(model, spec, *, kv_cache, generate, seq_lens, training, columns, plot_path, values,
                       causal, batch, input_shape, depth_given) -> None:  # fmt: skip
    """Refuse option combinations that cannot apply, before any work."""
    from flopkit.flops.llm import accepts_argument, cache_argument

    if kv_cache is not None and kv_cache < 1:
        raise click.BadParameter(f"expected a positive number of cached tokens, got {kv_cache}",
                                 param_hint="--kv-cache")  # fmt: skip
    if generate is not None and kv_cache is not None:
        raise click.UsageError("--generate counts its own KV cache: give --generate P:N or --kv-cache L")
    if kv_cache is not None or generate is not None:
        flag = "--kv-cache" if kv_cache is not None else "--generate"
        if training:
            raise click.UsageError(f"{flag} counts inference (decode); it does not apply with --training")
        if input_shape is not None:
            raise click.UsageError(f"{flag} feeds token ids: give --seq-len, not --input-shape")
        if cache_argument(model) is None:
            raise click.UsageError(
                f"{flag}: --model {spec} takes no KV cache (its forward has no past_key_values/cache argument)"
            )
        if seq_lens is not None and len(seq_lens) > 1:
            raise click.UsageError(f"{flag} takes one --seq-len (the new tokens per step)")
    if generate is not None:
        given = [f for f, v in (("--seq-len", seq_lens), ("--columns", columns), ("--plot", plot_path),
                                ("--input", values)) if v] + (["--depth"] if depth_given else [])  # fmt: skip
        if given:
            raise click.UsageError(f"--generate gives one row per phase: {given[0]} does not apply")
    if values:
        mask = values["attention_mask"]
        if causal != "exact":
            raise click.UsageError(
                "--input attention_mask values change which query-key pairs are kept: they apply with "
                "--causal-attention exact"
            )
        if not accepts_argument(model, "attention_mask"):
            raise click.UsageError(f"--input attention_mask: --model {spec} takes no attention_mask")
        new = seq_lens[0] if seq_lens else (1 if kv_cache else None)
        if new is None:
            raise click.UsageError("--input attention_mask values need --seq-len N (the tokens they mask)")
        keys = new + (kv_cache or 0)
        if mask.shape[0] != batch or mask.shape[1] != keys:
            raise click.BadParameter(
                f"attention_mask must be [batch, cached + new tokens] = [{batch}, {keys}], got "
                f"{list(mask.shape)}",
                param_hint="--input",
            )


def report_model(
    loaded,
    input_shape: tuple[int, ...] | None,
    seq_lens: list[int] | None,
    named_inputs: list,
    *,
    batch: int,
    causal: str,
    depth: int,
    training: bool,
    convention: str,
    columns: tuple[str, ...],
    plot_path: str | None,
    fmt: str,
    kv_cache: int | None = None,
    generate: str | None = None,
    checkpointing: str = "none",
    strict: bool = False,
    values: dict | None = None,
    depth_given: bool = False,
) -> None:
    """``flopkit report --model SPEC ...``: the per-module table, one row per ``--seq-len``, or one
    row per phase of a generation (``--generate``). ``loaded``: the
    :class:`~flopkit.models.LoadedModel` of the spec."""
    from flopkit.flops.llm import build_kv_cache, cache_argument, moe_parameters
    from flopkit.flops.mixed import mixed_rows
    from flopkit.models import model_inputs

    model, spec, model_args = loaded.module, loaded.spec, loaded.model_args
    values = values or {}
    generation = parse_generate(generate) if generate is not None else None
    _check_llm_options(model, spec, kv_cache=kv_cache, generate=generation, seq_lens=seq_lens,
                       training=training, columns=columns, plot_path=plot_path, values=values, causal=causal,
                       batch=batch, input_shape=input_shape, depth_given=depth_given)  # fmt: skip
    if plot_path is not None:
        _check_plot_path(plot_path)
    if generation is not None:
        _generation(model, spec, model_args, batch, generation, causal, strict, fmt)
        return
    if seq_lens is not None and len(seq_lens) > 1:
        if columns:
            raise click.UsageError("--columns applies to the per-module table, not to a --seq-len sweep")
        if values:
            raise click.UsageError("--input attention_mask values apply to one --seq-len")
        _sweep(
            model,
            spec,
            model_args,
            batch,
            seq_lens,
            named_inputs,
            causal,
            training,
            convention,
            plot_path,
            fmt,
            strict,
        )
        return
    if plot_path is not None:
        raise click.UsageError(
            "--plot draws FLOPs against length: give two or more lengths, --seq-len 128,512"
        )
    seq_len = seq_lens[0] if seq_lens else (1 if kv_cache is not None else None)
    inputs = model_inputs(
        model,
        batch=batch,
        input_shape=input_shape,
        seq_len=seq_len,
        named=named_inputs,
        spec=spec,
    )
    if kv_cache is not None:
        cache = run_forward(spec, build_kv_cache, model, batch, kv_cache, f"--model {spec}")
        inputs.kwargs[cache_argument(model)] = cache
        inputs.origin += (
            f"; a KV cache of {kv_cache} token(s) ({type(cache).__name__}, filled by an uncounted prefill)"
        )
    described = inputs.describe()  # before the run: a decode step appends to the cache
    rows, count = run_forward(
        spec, mixed_rows, model, (inputs.args, inputs.kwargs), convention, depth, training, causal,
        padding_mask=values.get("attention_mask"), checkpointing=checkpointing,
    )  # fmt: skip
    legend = model_legend(
        convention, inputs, count, training, batch, _has_analytic(rows), checkpointing, described
    )
    moe = moe_parameters(model)
    tokens = batch * (seq_len or 1)
    if moe is not None:
        legend.append(moe_legend(moe, rows[0].flops, tokens if seq_len else None, training))
    _strict(strict, count)
    if fmt == "json":
        data = {
            "model": spec,
            "model_args": model_args,
            "batch": batch,
            "inputs": described,
            "kv_cache": kv_cache,
            "convention": convention,
            "causal_attention": causal,
            "attention_rules": dict(count.rules),
            "training": training,
            "checkpointing": checkpointing,
            "total_flops": rows[0].flops,
            "hardware_flops": rows[0].hardware_flops,
            "total_params": rows[0].params,
            **(moe.to_dict() if moe is not None else {}),
            **({"flops_per_token": rows[0].flops / tokens} if seq_len else {}),
            "uncounted_ops": dict(count.uncounted),
            "convention_uncounted_ops": dict(count.convention_uncounted),
            "rows": [r.to_dict() for r in rows],
            "legend": legend,
        }
        click.echo(render_json(data))
        return
    title = f"{spec}: {rows[0].flops:,} FLOPs, {rows[0].params:,} parameters"
    click.echo(render_model_rows(rows, fmt, title, legend, columns, training))


def moe_legend(moe, flops: int, tokens: int | None, training: bool) -> str:
    """The mixture-of-experts legend line: routing assumption, active and total parameters."""
    groups = "; ".join(f"{g['path']}: top-{g['top_k']} of {g['experts']}" for g in moe.groups[:3])
    more = f" and {len(moe.groups) - 3} more" if len(moe.groups) > 3 else ""
    text = (
        f"mixture of experts ({groups}{more}): each token runs exactly its top-k routed experts (exact "
        "whatever the router picks; shared experts always on); parameters "
        f"{moe.active:,} active of {moe.total:,} total"
    )
    if tokens:
        text += f"; {flops / tokens:,.0f} active FLOPs per token" + (" (training step)" if training else "")
    return text


def _strict(strict: bool, count) -> None:
    _strict_counts(strict, count.uncounted)


def _generation(model, spec, model_args, batch, generation, causal, strict, fmt) -> None:
    from flopkit.flops.anymodel import causal_legend, skipped_legend
    from flopkit.flops.llm import count_generation, moe_parameters

    prompt, steps = generation
    counts = []

    def count(model, args, kwargs, causal):
        from flopkit.flops.mixed import mixed_rows

        rows, measured = mixed_rows(model, (args, kwargs), "flopkit", 0, False, causal)
        counts.append(measured)
        return dict(rows[0].breakdown)

    gen = run_forward(spec, count_generation, model, prompt, steps, batch=batch, causal=causal, count=count,
                      label=f"--model {spec}")  # fmt: skip
    rules, uncounted, convention = Counter(), Counter(), Counter()
    causal_calls = masked_calls = 0
    for c in counts:
        causal_calls += c.causal_calls
        masked_calls += c.masked_calls
        rules.update(c.rules)
        uncounted.update(c.uncounted)
        convention.update(c.convention_uncounted)
    moe = moe_parameters(model)
    legend = [
        f"generation: a prefill of {prompt} token(s), then {steps} decode step(s); step k feeds one token "
        f"against {prompt}+k cached (the model's own cache, filled by an uncounted prefill on the meta device)",
        "decode total: steps counted at cache lengths "
        f"{', '.join(map(str, gen.evaluated[:8]))}{' ...' if len(gen.evaluated) > 8 else ''} and summed exactly "
        "(per category a step's FLOPs are concave and piecewise linear in the cache length: linear pieces "
        "are summed in closed form)",
        causal_legend(causal, causal_calls, masked_calls, rules),
        *skipped_legend(uncounted, convention),
        f"batch: {batch}; FLOPs per token = FLOPs / (batch x tokens of the phase)",
    ]
    if moe is not None:
        legend.append(moe_legend(moe, 0, None, False))
    _strict_counts(strict, uncounted)
    data = gen.to_dict()
    if fmt == "json":
        click.echo(render_json({"model": spec, "model_args": model_args, "causal_attention": causal,
                                **data, **(moe.to_dict() if moe is not None else {}),
                                "uncounted_ops": dict(uncounted), "legend": legend}))  # fmt: skip
        return
    headers = ["phase", "tokens", "cached", *CATEGORIES, "total", "FLOPs / token"]
    body = [
        [r["phase"], r["tokens"], r["cached_tokens"], *[r["breakdown"][c] for c in CATEGORIES], r["flops"],
         f"{r['flops_per_token']:,.0f}"]
        for r in data["rows"]
    ]  # fmt: skip
    title = f"{spec}: generation {prompt}:{steps}, {data['total_flops']:,} FLOPs"
    click.echo(render_rows(headers, body, fmt, title=None if fmt == "csv" else title,
                           notes=[] if fmt == "csv" else legend))  # fmt: skip


def _strict_counts(strict: bool, uncounted) -> None:
    if strict and uncounted:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(uncounted.items()))
        raise click.UsageError(f"--strict: ops without a FLOP formula ran (counted as 0): {ops}")


def _has_analytic(rows) -> bool:
    return any(r.source != "measured" for r in rows)


def _sweep(
    model, spec, model_args, batch, seq_lens, named_inputs, causal, training, convention, plot_path, fmt,
    strict=False,
):  # fmt: skip
    from flopkit.models import model_inputs
    from flopkit.progress import progress_for

    for n in seq_lens:  # every length is checked before the first is counted
        model_inputs(model, batch=batch, seq_len=n, named=named_inputs, spec=spec)
    results = []
    with progress_for(fmt) as progress:
        for n in progress.iterate(seq_lens, "seq-len sweep"):
            row = _sweep_row(model, spec, batch, n, named_inputs, causal, training, convention)
            _strict(strict, row["_last"][2])
            results.append(row)
    inputs, rows, count = results[-1].pop("_last")
    for r in results:
        r.pop("_last", None)
    label = spec + (f" ({', '.join(f'{k}={v}' for k, v in model_args.items())})" if model_args else "")
    written = _plot_sweep(results, label, causal, plot_path) if plot_path else None
    legend = model_legend(convention, inputs, count, training, batch, _has_analytic(rows))
    at = next(i for i, line in enumerate(legend) if line.startswith("convention: "))
    legend[at] = f"convention: {convention}; batch: {batch}; int64 ids [batch, seq_len]; per " + (
        "training step" if training else "forward"
    )
    if fmt == "json":
        data = {
            "model": spec,
            "model_args": model_args,
            "batch": batch,
            "causal_attention": causal,
            "training": training,
            "params": rows[0].params,
            "rows": results,
            "legend": legend,
        }
        if written:
            data["plot"] = str(written)
        click.echo(render_json(data))
        return
    headers = ["seq_len", *CATEGORIES, "total", "FLOPs / token"]
    if training:
        headers += ["forward", "backward"]
    body = []
    for r in results:
        line = [r["seq_len"], *[r["breakdown"][c] for c in CATEGORIES], r["total_flops"]]
        line.append(f"{r['total_flops'] / (r['seq_len'] * batch):,.0f}")
        if training:
            line += [r["forward_flops"], r["backward_flops"]]
        body.append(line)
    if written and fmt != "csv":
        legend.append(f"plot: {written}")
    click.echo(
        render_rows(
            headers,
            body,
            fmt,
            title=None
            if fmt == "csv"
            else f"{spec}: FLOPs by sequence length ({rows[0].params:,} parameters)",
            notes=[] if fmt == "csv" else legend,
        )
    )


def _sweep_row(model, spec, batch, n, named_inputs, causal, training, convention) -> dict:
    """One length of a ``--seq-len`` sweep: the whole model's FLOPs (``_last``: the inputs, rows and
    count, which the legend reads from the last length)."""
    from flopkit.flops.mixed import mixed_rows
    from flopkit.models import model_inputs

    inputs = model_inputs(model, batch=batch, seq_len=n, named=named_inputs, spec=spec)
    rows, count = run_forward(
        spec, mixed_rows, model, (inputs.args, inputs.kwargs), convention, 0, training, causal
    )
    top = rows[0]
    backward = sum(top.backward.values()) if top.backward is not None else 0
    return {
        "seq_len": n,
        "breakdown": dict(top.breakdown),
        "total_flops": top.flops,
        "forward_flops": top.flops - backward,
        "backward_flops": backward,
        "_last": (inputs, rows, count),
    }


def _check_plot_path(path: str) -> None:
    """Refuse a ``--plot`` target in a missing directory, or without matplotlib, before any work."""
    from flopkit.checks import check_output_path

    check_output_path(path, "plot_path")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.UsageError("--plot needs matplotlib: pip install 'flopkit[plot]'") from None


def _plot_sweep(results: list[dict], spec: str, causal: str, path: str):
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = Path(path)
    lens = [r["seq_len"] for r in results]
    fig, ax = plt.subplots(figsize=(6, 4))
    for cat in CATEGORIES:
        values = [r["breakdown"][cat] for r in results]
        if any(values):
            ax.plot(lens, values, marker="o", label=cat)
    ax.plot(lens, [r["total_flops"] for r in results], marker="o", color="black", label="total")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("FLOPs")
    ax.set_title(f"{spec} (causal attention: {causal})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    plt.close(fig)
    return target


def validate_model(
    loaded,
    input_shape: tuple[int, ...] | None,
    seq_lens: list[int] | None,
    named_inputs: list,
    *,
    batch: int,
    counters: list[str],
    rtol: float,
    depth: int,
    fmt: str,
    render,
    progress=None,
):
    """``flopkit validate --model SPEC``: :func:`flopkit.flops.summary.validate_model` on the model
    of ``loaded``, rendered. Returns the reconciliation."""
    from flopkit.flops.summary import validate_model as validate_any
    from flopkit.models import model_inputs

    if seq_lens is not None and len(seq_lens) > 1:
        raise click.UsageError("validate takes one --seq-len (a sweep is report --seq-len 128,512,...)")
    model, spec, model_args = loaded.module, loaded.spec, loaded.model_args
    inputs = model_inputs(
        model,
        batch=batch,
        input_shape=input_shape,
        seq_len=seq_lens[0] if seq_lens else None,
        named=named_inputs,
        spec=spec,
    )
    from flopkit.flops.counters import PLAIN_COUNTERS

    # The counters as shipped run on the CPU copy fvcore needs anyway (--against torch alone builds none).
    plain = PLAIN_COUNTERS if "fvcore" in counters else ()
    rec = validate_any(
        model,
        inputs,
        tuple(counters),
        rtol,
        depth,
        spec=spec,
        model_args=model_args,
        plain=plain,
        progress=progress,
    )
    if fmt == "json":
        click.echo(
            render_json(
                {
                    "model": spec,
                    "model_args": model_args,
                    "batch": batch,
                    "inputs": inputs.describe(),
                    "rtol": rec.rtol,
                    "ok": rec.ok,
                    "verdict": rec.verdict,
                    "hidden": rec.hidden,
                    "blind_spots": rec.blind_spots,
                    "comparable": {k: list(v) for k, v in rec.comparable.items()},
                    "totals": rec.totals,
                    "raw_totals": rec.raw_totals,
                    "skipped_ops": rec.skipped,
                    "rows": [
                        {
                            "path": r.path,
                            "type": r.type,
                            "flopkit": r.analytic,
                            "compared": r.compared,
                            "measured": r.measured,
                            "deltas": r.deltas,
                            "status": r.status,
                            "verdict": r.verdict,
                        }
                        for r in rec.rows
                    ],
                    "notes": rec.notes,
                    "counters": [c.to_dict() for c in rec.plain],
                }
            )
        )
    else:
        click.echo(render(spec, rec, fmt))
    return rec
