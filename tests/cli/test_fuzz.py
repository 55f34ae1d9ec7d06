"""Fuzzing the CLI in-process: random argument lists and random config files (types, signs, sizes,
unicode, empty files, directories, bytes that are not text). Every run must end with exit status 0
or 2, print at most one line on stderr, never a traceback, and stay within a memory bound.

The examples are derandomized (the same 400 on every run) and bounded, so the test is a
reproducible regression check that runs in CI within 60 s. Sizes that a valid config would really
allocate (validate's CPU copy, profile's steps) are kept small or far out of range: a huge size must
be refused by the input checks before anything is allocated, which is what the memory bound checks.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import resource
from pathlib import Path

import pytest
from click.testing import CliRunner
from flopkit.cli import app
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = str(EXAMPLES / "vit5-tiny.yaml")
FREE_BYTES = 2**30  # the free memory the checks see during the fuzz run
MEMORY_BOUND = 3 * 2**30  # bytes the whole fuzz run may add to the process's peak RSS

# FLOPKIT_FUZZ_EXAMPLES=2000 FLOPKIT_FUZZ_RANDOM=1 explores beyond CI's fixed examples.
settings.register_profile(
    "fuzz",
    derandomize=not os.environ.get("FLOPKIT_FUZZ_RANDOM"),
    max_examples=int(os.environ.get("FLOPKIT_FUZZ_EXAMPLES", "400")),
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

# Values that break types, signs and sizes, and a few valid small ones.
INTS = st.sampled_from([-(2**70), -1, 0, 1, 2, 3, 4, 8, 16, 32, 64, 10**6, 10**13, 2**63, 10**30])
FLOATS = st.sampled_from([-1.0, 0.0, 1e-6, 0.5, 4.0, 1e308, math.inf, -math.inf, math.nan])
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
SCALARS = st.one_of(INTS, FLOATS, TEXT, st.booleans(), st.none())
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(TEXT, SCALARS, max_size=2))
FIELDS = [
    "image_size", "patch_size", "in_channels", "hidden_dim", "depth", "num_heads", "mlp_ratio",
    "num_registers", "has_cls", "qk_norm", "rope_base", "reg_rope_base", "rope_pairing", "num_classes",
    "preset", "module", "num_patches_h", "num_patches_w", "in_features", "hidden_features",
    "normalized_shape", "eps", "scale", "cls_first", "qkv_bias",
]  # fmt: skip
KEYS = st.one_of(st.sampled_from(FIELDS), TEXT)


_NAMES = itertools.count()


def _dump(data: object, kind: str) -> str:
    if kind == "json":
        return json.dumps(data, allow_nan=True)
    import yaml

    return yaml.safe_dump(data, allow_unicode=True)


@st.composite
def config_files(draw, folder: Path) -> str:
    """A path to something a user might give as CONFIG: a random YAML/JSON mapping (a tiny valid one
    perturbed), an empty file, plain text, bytes that are not UTF-8, a directory or a missing file."""
    kind = draw(st.sampled_from(["yaml", "json", "empty", "text", "bytes", "directory", "missing", "pth"]))
    name = f"c{next(_NAMES)}"  # a fresh name: a file never collides with an earlier directory
    if kind == "directory":
        path = folder / f"{name}.yaml"
        path.mkdir(exist_ok=True)
        return str(path)
    if kind == "missing":
        return str(folder / "missing" / f"{name}.yaml")
    suffix = {"empty": ".yaml", "text": ".yml", "bytes": ".json", "pth": ".pth"}.get(kind, f".{kind}")
    path = folder / f"{name}{suffix}"
    if kind in ("yaml", "json"):
        base = {
            "image_size": 32,
            "patch_size": 16,
            "hidden_dim": 32,
            "depth": 1,
            "num_heads": 2,
            "num_classes": 4,
        }
        data = (
            {**base, **draw(st.dictionaries(KEYS, VALUES, max_size=4))}
            if draw(st.booleans())
            else draw(VALUES)
        )
        path.write_text(_dump(data, kind), encoding="utf-8")
    elif kind == "empty":
        path.write_text("")
    elif kind == "text":
        path.write_text(draw(TEXT), encoding="utf-8")
    else:
        path.write_bytes(draw(st.binary(max_size=64)))
    return str(path)


def _number_text(value: object) -> str:
    return str(value)


OPTION_VALUES = st.one_of(INTS.map(str), FLOATS.map(str), TEXT, st.just(""), st.just("1,2"))
SIZES = st.one_of(
    st.sampled_from(["1", "2", "8", "0", "-1", "1000000", "10000000000000", "1.5", "x"]), OPTION_VALUES
)
SHAPES = st.one_of(
    st.sampled_from(["3,32,32", "3,64,64", "16,64", "0,1", "-3,4", "1x2", "3,,4"]), OPTION_VALUES
)
# Each option with the values that exercise it: valid ones, out-of-range ones, wrong types, unicode.
OPTIONS: dict[str, st.SearchStrategy[str] | None] = {
    "--set": st.builds(lambda k, v: f"{k}={v}", KEYS, st.one_of(INTS.map(str), FLOATS.map(str), TEXT)),
    "--model-arg": st.builds(lambda k, v: f"{k}={v}", KEYS, OPTION_VALUES),
    "--format": st.sampled_from(["table", "json", "csv", "markdown", "xml"]),
    "--depth": SIZES,
    "--batch": SIZES,
    "--convention": st.sampled_from(["flopkit", "nvsubquadratic", "other"]),
    "--model": st.sampled_from(["x:y", "hf:", "timm:", ":", "hf:nope", "m.py:f", "os:getcwd", "hf:gpt2"]),
    "--seq-len": st.one_of(SIZES, st.just("8,16"), st.just("16,16")),
    "--input": st.builds(lambda n, v: f"{n}={v}", st.sampled_from(["x", "mask", "1x", "é"]), SHAPES),
    "--input-shape": SHAPES,
    "--plot": st.sampled_from(["p.png", "/nonexistent_dir/p.png", ".", ""]),
    "--training": None,
    "--columns": st.sampled_from(["shapes", "memory", "shapes,memory", "nope", ""]),
    "--tokens": st.sampled_from(["0:3", "5:2", "0:", "x", "-1", "1000000000"]),
    "--against": st.sampled_from(["fvcore", "torch", "fvcore,torch", "torch,torch", ""]),
    "--rtol": st.sampled_from(["0", "0.1", "-1", "nan", "inf", "x"]),
    "--causal-attention": st.sampled_from(["full", "half", "x"]),
    "--loss": st.sampled_from(["auto", "ce", "mse", "l1"]),
    "--dtype": st.sampled_from(["auto", "float32", "bfloat16", "float16", "int8"]),
    "--device": st.sampled_from(["cpu", "cuda", "auto", "tpu"]),
    "--help": None,
}


@st.composite
def options(draw) -> list[str]:
    args: list[str] = []
    for name in draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=3, unique=True)):
        values = OPTIONS[name]
        args += [name] if values is None else [name, draw(values)]
    return args


USER_MODEL = """import torch
class M(torch.nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.fc = torch.nn.Linear(width, 4)
    def forward(self, x, mask=None):
        return self.fc(x)
def build(width=8):
    return M(width)
"""
SMALL_GPT2 = ["--model-arg", "n_layer=1", "--model-arg", "n_embd=32", "--model-arg", "n_head=2"]


@st.composite
def model_lines(draw, folder: Path) -> list[str]:
    """report / validate / profile of a --model (a small GPT-2 where transformers is installed, a
    user's factory file) with its input options drawn valid, out of range or ill-typed."""
    import importlib.util

    command = draw(st.sampled_from(["report", "validate", "profile"]))
    user = folder / "m.py"
    if not user.exists():
        user.write_text(USER_MODEL)
    specs = [f"{user}:build"] + (["hf:gpt2"] if importlib.util.find_spec("transformers") else [])
    spec = draw(st.sampled_from(specs))
    args = [command, "--model", spec]
    if spec == "hf:gpt2":
        args += [
            *SMALL_GPT2,
            "--seq-len",
            draw(st.one_of(st.sampled_from(["8", "1024", "1025", "8,16"]), SIZES)),
        ]
    else:
        args += ["--input-shape", draw(st.one_of(st.just("8"), SHAPES))]
        args += ["--model-arg", f"width={draw(st.sampled_from(['8', '0', '-1', 'x', '10000000000']))}"]
    if draw(st.booleans()):
        args += [
            "--input",
            f"{draw(st.sampled_from(['mask', 'attention_mask', 'input_ids', 'nope']))}={draw(SHAPES)}",
        ]
    args += draw(options())
    if command == "profile":
        args += ["--steps", "1", "--warmup", "0", "--device", "cpu"]
    return args


@st.composite
def command_lines(draw, folder: Path) -> list[str]:
    """A command, a CONFIG (a preset, the tiny example or a random file) and random options; or a
    ``--model`` command line (:func:`model_lines`)."""
    if draw(st.integers(0, 3)) == 0:
        return draw(model_lines(folder))
    command = draw(
        st.sampled_from(
            ["report", "validate", "layout", "rope", "presets", "profile", "convert", "bench", "nope"]
        )
    )
    light = command in ("report", "layout", "rope", "presets")  # meta device only: any preset is cheap
    presets = ["vit5-small", "vit5-xlarge", "vit5-base-official"] if light else []
    config = draw(st.one_of(st.sampled_from([TINY, *presets, "vit5-smal", ""]), config_files(folder)))
    args = [command, config, *draw(options())]
    if command == "profile":  # keep a valid profile short: one timed step of a tiny model on CPU
        args += ["--steps", "1", "--warmup", "0", "--device", "cpu"]
    if command == "convert":
        args = [
            command,
            config,
            draw(
                st.sampled_from(
                    [str(folder / "o.safetensors"), "/nonexistent_dir/o.pth", str(folder), "o.txt"]
                )
            ),
        ]
    return args


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@pytest.fixture(scope="module")
def memory(folder):
    before = _peak_rss()
    yield
    grown = _peak_rss() - before
    assert grown < MEMORY_BOUND, f"the fuzz run raised the peak RSS by {grown / 2**30:.2f} GiB"


@settings(settings.get_profile("fuzz"))
@given(data=st.data())
def test_random_command_lines_end_in_status_0_or_2_with_one_line(data, folder, memory, monkeypatch):
    import flopkit.checks

    monkeypatch.chdir(folder)
    # The device has 1 GiB free as far as flopkit knows: a run that needs more must be refused
    # before it allocates (the memory fixture checks what was really allocated).
    monkeypatch.setattr(flopkit.checks, "available_bytes", lambda device: FREE_BYTES)
    args = data.draw(command_lines(folder))
    result = CliRunner().invoke(app, args)
    event(f"{args[0]}: exit {result.exit_code}")
    where = f"flopkit {' '.join(map(repr, args))}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{where}: raised {result.exception!r}") from result.exception
    assert result.exit_code in (0, 2), f"{where}: exit {result.exit_code}\n{result.output}"
    assert "Traceback" not in result.output, f"{where}\n{result.output}"
    lines = result.stderr.splitlines()
    assert len(lines) <= 1, f"{where}: {len(lines)} lines on stderr:\n{result.stderr}"
    if result.exit_code == 2:
        assert lines and lines[0].startswith("flopkit: error: "), f"{where}\n{result.stderr}"


EXTREMES = [
    "-1",
    "0",
    "1",
    "3",
    "1e308",
    "-1e308",
    ".nan",
    ".inf",
    "1e20",
    str(2**63),
    "[1, 2]",
    "x",
    "null",
    "true",
]


def test_every_config_field_at_every_extreme_is_a_result_or_one_line():
    """The grid the random search reaches only by chance: each field of a model config and of a
    single-layer config at each extreme value (sign, zero, overflow, NaN, infinity, wrong type)."""
    from flopkit.config import MODEL_FIELDS, MODULES

    grid = [(TINY, field) for field in MODEL_FIELDS]
    grid += [(str(EXAMPLES / "attention-small.yaml"), field) for field in MODULES["ViT5Attention"].fields]
    failures = []
    for config, field in grid:
        for value in EXTREMES:
            args = ["report", config, "--set", f"{field}={value}", "--depth", "0"]
            result = CliRunner().invoke(app, args)
            lines = result.stderr.splitlines()
            crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
            if crashed or result.exit_code not in (0, 2) or len(lines) > 1:
                failures.append(
                    f"--set {field}={value}: exit {result.exit_code} {result.exception!r} {lines[:2]}"
                )
    assert not failures, "\n".join(failures)


OPTION_EXTREMES = ["-1", "0", "1", "1e308", "nan", "inf", "99999999999999999999", "x", ""]
# (command line, option): every value of OPTION_EXTREMES is tried for the option.
OPTION_GRID = [
    (["report", TINY], "--batch"),
    (["report", TINY], "--depth"),
    (["report", TINY], "--columns"),
    (["validate", TINY, "--against", "torch"], "--batch"),
    (["validate", TINY, "--against", "torch"], "--rtol"),
    (["rope", TINY], "--tokens"),
    (["rope", TINY], "--frequencies"),
    (["profile", TINY, "--device", "cpu", "--warmup", "0", "--steps", "1"], "--batch"),
    (["profile", TINY, "--device", "cpu", "--warmup", "0"], "--steps"),
    (["profile", TINY, "--device", "cpu", "--steps", "1"], "--warmup"),
]


def test_every_numeric_option_at_every_extreme_is_a_result_or_one_line(monkeypatch):
    import flopkit.checks

    monkeypatch.setattr(flopkit.checks, "available_bytes", lambda device: FREE_BYTES)
    failures = []
    for line, option in OPTION_GRID:
        for value in OPTION_EXTREMES:
            result = CliRunner().invoke(app, [*line, option, value])
            lines = result.stderr.splitlines()
            crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
            if crashed or result.exit_code not in (0, 2) or len(lines) > 1:
                failures.append(
                    f"{line[0]} {option} {value!r}: exit {result.exit_code} {result.exception!r} {lines[:2]}"
                )
    assert not failures, "\n".join(failures)
