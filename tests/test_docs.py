"""The docs cannot drift: every shell transcript in README.md and docs/*.md runs, and its output is
compared with what the command prints now.

The convention (docs/contributing.md, "Shell transcripts in the docs"):

* A fenced block (no language, ``bash``, ``console``, ``shell``, ``sh`` or ``text``) whose first line
  starts with ``$ `` is a transcript. Each ``$ `` line is a command; the lines up to the next one are
  what it prints (stdout and stderr, as a terminal shows them).
* Commands are ``flopkit ...`` (optionally after ``VAR=value`` settings, optionally piped into
  ``head -N``); they run in-process, one scratch directory per block, where ``examples/`` is the
  repository's and ``docs/`` is empty (a ``--plot`` writes there, not over the committed images).
  The process is one Python process for all the selected blocks (``python tests/test_docs.py``),
  started once the session is collected (tests/_early.py), so that its 20 s run on the core the
  other tests leave idle; each block starts with ``torch.manual_seed(0)``, as every test does, and
  the test compares what it printed.
* Output is compared exactly, except for commands that time things (``profile``, ``bench``): there
  the shape (every line, table rows cell by cell, notes as text) and the deterministic numbers
  (FLOPs, bytes, shapes, counts) are compared, and timings, rates, percentages and the bound a
  timing decides are masked.
* ``<!-- doc-test: skip REASON -->`` on the line before a block skips it (say where it is checked
  instead); ``<!-- doc-test: needs FILE -->`` makes FILE (one of :data:`FIXTURES`) first.
* A line ``...`` alone in the expected output stands for any number of lines (an abbreviated output).
* A command that names ``hf:`` or ``timm:`` models is left out where transformers or timm is missing
  (the block is then reported as skipped, after its other commands ran).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _early
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"", "bash", "console", "shell", "sh", "text"}
TIMED_COMMANDS = {"profile", "bench"}
DIRECTIVE = re.compile(r"^<!--\s*doc-test:\s*(skip|needs)\s*(.*?)\s*-->$")


@dataclass
class Command:
    line: int  # 1-based line of the ``$ `` line in its file
    text: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Transcript:
    path: Path
    line: int  # 1-based line of the opening fence
    commands: list[Command]
    skip: str | None = None
    needs: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def transcripts(path: Path) -> list[Transcript]:
    """Every transcript block of the markdown file ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(```+|~~~+)\s*([\w-]*)", lines[i])
        if not fence:
            i += 1
            continue
        start, marker = i, fence.group(1)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(marker)), len(lines))
        body = lines[start + 1 : end]
        i = end + 1
        if fence.group(2) not in SHELL_LANGUAGES or not body or not body[0].startswith("$ "):
            continue
        commands: list[Command] = []
        for offset, text in enumerate(body):
            if text.startswith("$ "):
                commands.append(Command(start + 2 + offset, text[2:].strip()))
            else:
                commands[-1].expected.append(text)
        block = Transcript(path, start + 1, commands)
        k = start - 1
        while k >= 0 and DIRECTIVE.match(lines[k].strip()):
            kind, arg = DIRECTIVE.match(lines[k].strip()).groups()
            if kind == "skip":
                block.skip = arg or "marked skip"
            else:
                block.needs.extend(arg.split())
            k -= 1
        found.append(block)
    return found


ALL = [t for path in DOCS for t in transcripts(path)]


# ------------------------------------------------------------------------------------ fixtures


def _official_vit5_small(path: Path) -> None:
    """An official-layout (wangf3014/ViT-5) checkpoint of vit5-small, random weights."""
    import torch

    from flopkit.checkpoints import from_flopkit
    from flopkit.config import load_config

    torch.manual_seed(0)
    model = load_config("vit5-small-official").build("cpu")
    torch.save(from_flopkit(model.state_dict(), "official"), path)


FIXTURES: dict[str, Callable[[Path], None]] = {"vit5_small.pth": _official_vit5_small}


# ----------------------------------------------------------------------------------- comparison

NUMBER = r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?"
VOLATILE_UNIT = re.compile(rf"{NUMBER}\s*(ms|TFLOP/s|GB/s|%)")
VOLATILE_HEADER = re.compile(r"(ms|TFLOP/s|GB/s)$|^%|^share$|^bound$")
VOLATILE_ROWS = ("step (wall)", "CPU op time", "GPU busy", "host-bound share", "charged to layers")


def _spans(dashes: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"-+", dashes)]


def _cells(row: str, spans: list[tuple[int, int]]) -> list[str]:
    """The row's cells: each column from its dashes' start to the next column's start."""
    starts = [start for start, _ in spans]
    return [row[a:b].strip() for a, b in zip(starts, [*starts[1:], len(row) + 1], strict=True)]


def _is_row(line: str, spans: list[tuple[int, int]]) -> bool:
    """A table row leaves the gaps between the columns blank; a note's text runs through them."""
    gaps = [pos for (_, end), (start, _) in zip(spans, spans[1:], strict=False) for pos in range(end, start)]
    return bool(line.strip()) and all(pos >= len(line) or line[pos] == " " for pos in gaps)


def _mask(text: str) -> str:
    return VOLATILE_UNIT.sub(lambda m: "#" + m.group(1), text)


def timed_shape(lines: list[str]) -> list[object]:
    """A timed command's output reduced to what a run repeats: table rows as cells (volatile columns
    masked), other text joined per paragraph with timings masked."""
    out: list[object] = []
    text: list[str] = []

    def flush() -> None:
        if text:
            out.append(_mask(" ".join(" ".join(text).split())))
            text.clear()

    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and re.fullmatch(r"[- ]*-[- ]*", lines[i + 1]) and "  " in lines[i + 1]:
            flush()
            spans = _spans(lines[i + 1])
            headers = _cells(lines[i], spans)
            volatile = {k for k, h in enumerate(headers) if VOLATILE_HEADER.search(h)}
            out.append(("header", headers))
            i += 2
            while i < len(lines) and _is_row(lines[i], spans):
                row = _cells(lines[i], spans)
                masked = row[0] in VOLATILE_ROWS
                out.append(["#" if k in volatile or (masked and k) else _mask(c) for k, c in enumerate(row)])
                i += 1
            continue
        if lines[i].strip():
            text.append(lines[i])
        else:
            flush()
        i += 1
    flush()
    return out


# ------------------------------------------------------------------------------------- running


def _parse(text: str) -> tuple[dict[str, str], list[str], list[str]]:
    """``VAR=value flopkit ARGS | head -N`` -> (environment, words, the pipeline's later stages)."""
    pipeline = [part.strip() for part in text.split(" | ")]
    words = shlex.split(pipeline[0])
    env = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, words, pipeline[1:]


def _run(command: Command, transcript: Transcript) -> list[str]:
    from flopkit.cli import app

    env, words, stages = _parse(command.text)
    if not words or words[0] != "flopkit":
        pytest.fail(
            f"{transcript.path.name}:{command.line}: a transcript runs flopkit commands only; mark the block "
            f"<!-- doc-test: skip REASON --> (got {command.text!r})"
        )
    result = CliRunner().invoke(app, words[1:], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    lines = result.output.splitlines()
    for stage in stages:
        head = re.fullmatch(r"head(?: -n)? -?(\d+)", stage)
        if head is None:
            pytest.fail(
                f"{transcript.path.name}:{command.line}: only '| head -N' is supported, got {stage!r}"
            )
        lines = lines[: int(head.group(1))]
    return lines


def _trim(lines: list[str]) -> list[str]:
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def matches(expected: list[str], actual: list[str]) -> bool:
    """``actual`` equals ``expected``, where a line ``...`` alone stands for any number of lines."""
    parts = [[]]
    for line in expected:
        if line.strip() == "...":
            parts.append([])
        else:
            parts[-1].append(line)
    if len(parts) == 1:
        return actual == expected
    first, *middle, last = parts
    if actual[: len(first)] != first or (last and actual[-len(last) :] != last):
        return False
    if len(first) + len(last) > len(actual):
        return False
    rest = actual[len(first) : len(actual) - len(last)]
    for part in middle:
        at = next((i for i in range(len(rest) - len(part) + 1) if rest[i : i + len(part)] == part), None)
        if at is None:
            return False
        rest = rest[at + len(part) :]
    return True


def _missing_library(text: str) -> str | None:
    """The optional library a command's model spec needs and this environment lacks, else None."""
    import importlib.util

    for prefix, module in (("hf:", "transformers"), ("timm:", "timm")):
        if prefix in text and importlib.util.find_spec(module) is None:
            return module
    return None


def run_transcripts(ids: list[str], scratch: Path) -> dict[str, list[dict | None]]:
    """Run the blocks ``ids``, each in a scratch directory of its own under ``scratch``: per command,
    ``{"lines": [...]}`` (what it printed), ``{"error": traceback}`` (the block stops there) or None
    (its model needs a library that is not installed)."""
    import torch

    by_id = {t.id: t for t in ALL}
    results: dict[str, list[dict | None]] = {}
    here = os.getcwd()
    for n, transcript_id in enumerate(ids):
        transcript = by_id[transcript_id]
        folder = scratch / f"block{n}"
        folder.mkdir()
        (folder / "examples").symlink_to(ROOT / "examples")
        (folder / "docs").mkdir()
        os.chdir(folder)
        torch.manual_seed(0)  # conftest.py's per-test seed
        outs: list[dict | None] = []
        try:
            for name in transcript.needs:
                FIXTURES[name](folder / name)
            for command in transcript.commands:
                if _missing_library(command.text):
                    outs.append(None)
                    continue
                outs.append({"lines": _run(command, transcript)})
        except BaseException:  # pytest.fail too: the test reports it
            outs.append({"error": traceback.format_exc()})
        finally:
            os.chdir(here)
        results[transcript_id] = outs
    return results


def _transcripts_command(out: Path, environ) -> tuple[list[str], dict]:
    skipped = {t.id for t in ALL if t.skip}
    ids = [i for i in (DOC_RUN.parts or [t.id for t in ALL]) if i not in skipped]
    (out / "ids.json").write_text(json.dumps(ids))
    # This checkout's flopkit (the script's own folder, tests/, comes first on sys.path).
    return [sys.executable, __file__, str(out)], {
        "cwd": ROOT,
        "env": _early.checkout_env(environ),
        "timeout": 600,
    }


DOC_RUN = _early.early("doc-transcripts", _transcripts_command)


@pytest.mark.parametrize(
    "transcript",
    [pytest.param(t, id=t.id, marks=pytest.mark.early("doc-transcripts", part=t.id)) for t in ALL],
)
def test_transcript_output_matches_the_docs(transcript: Transcript):
    if transcript.skip:
        pytest.skip(transcript.skip)
    done = DOC_RUN.result()
    assert done.returncode == 0, done.stderr[-3000:]
    check_outputs(transcript, json.loads((DOC_RUN.out / "results.json").read_text())[transcript.id])


def check_outputs(transcript: Transcript, outs: list[dict | None]) -> None:
    """Compare one block's run (:func:`run_transcripts`' entry for it) with what the docs show."""
    missing = []
    for n, command in enumerate(transcript.commands):
        where = f"{transcript.path.relative_to(ROOT)}:{command.line}: $ {command.text}"
        assert n < len(outs), f"{where}: the transcripts' run has no output for it"
        out = outs[n]
        if out is None:
            missing.append(_missing_library(command.text))
            continue
        if "error" in out:
            pytest.fail(f"{where}\n{out['error']}")
        actual, expected = _trim(out["lines"]), _trim(command.expected)
        words = _parse(command.text)[1]
        if len(words) > 1 and words[1] in TIMED_COMMANDS:
            assert timed_shape(actual) == timed_shape(expected), where + "\n" + "\n".join(actual)
        else:
            diff = "\n".join(difflib.unified_diff(expected, actual, "docs", "now", lineterm=""))
            assert matches(expected, actual), f"{where}\n{diff}"
    if missing:
        pytest.skip(f"{len(missing)} command(s) need {', '.join(sorted(set(missing)))}, not installed")


def test_every_doc_has_its_transcripts_found():
    readme = [t for t in ALL if t.path.name == "README.md"]
    assert readme, "README.md has shell transcripts"
    assert all(t.commands and t.commands[0].text for t in ALL)


def test_timed_output_masks_timings_but_keeps_flops():
    doc = [
        "title",
        "module  GFLOP   fwd ms  bound",
        "------  -----  -------  -------",
        "a       0.463    6.012  compute",
        "  note with 1.5 ms and 3 GFLOP",
    ]
    run = ["title", "module  GFLOP  fwd ms  bound", "------  -----  ------  ------", "a       0.463   9.1    memory", "  note with 2.5 ms and 3 GFLOP"]  # fmt: skip
    assert timed_shape(doc) == timed_shape(run)
    changed = [*run[:3], "a       0.464   9.1    memory", run[4]]
    assert timed_shape(doc) != timed_shape(changed)
    assert timed_shape([*doc[:4], "  note with 1.5 ms and 4 GFLOP"]) != timed_shape(doc)


@pytest.mark.parametrize(
    ("expected", "actual", "ok"),
    [
        (["a", "b"], ["a", "b"], True),
        (["a", "b"], ["a", "c"], False),
        (["a", "...", "z"], ["a", "b", "c", "z"], True),
        (["a", "...", "z"], ["a", "z"], True),
        (["a", "...", "z"], ["a", "b"], False),
        (["a", "...", "m", "...", "z"], ["a", "m", "x", "z"], True),
        (["a", "...", "m", "...", "z"], ["a", "x", "z"], False),
        (["a", "..."], ["a", "b", "c"], True),
        (["a", "b", "...", "b", "c"], ["a", "b", "c"], False),  # the two ends may not overlap
    ],
)
def test_an_ellipsis_line_stands_for_any_lines(expected, actual, ok):
    assert matches(expected, actual) is ok


# ------------------------------------------------------------------------------------------------
# Python blocks: a ``print(...)  # VALUE`` line states what it prints.

PRINTED = re.compile(r"^print\(.*\)\s+#\s+(?P<value>\S.*?)\s*$")


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line, source)`` of every fenced ``python`` block of ``path`` with at least one stated value."""
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            if any(PRINTED.match(line) for line in body):
                blocks.append((start, "\n".join(body)))
        i += 1
    return blocks


PYTHON_BLOCKS = [(path, line, source) for path in DOCS for line, source in python_blocks(path)]


@pytest.mark.parametrize(
    ("path", "line", "source"), PYTHON_BLOCKS, ids=[f"{p.relative_to(ROOT)}:{n}" for p, n, _ in PYTHON_BLOCKS]
)
def test_python_block_prints_what_its_comments_state(path, line, source, capsys, monkeypatch):
    """Each ``print(...)  # VALUE`` prints VALUE: exactly, or as a prefix where VALUE ends in
    ``...`` or ``...}``. Blocks naming ``hf:``/``timm:`` models skip where the library is missing."""
    missing = _missing_library(source)
    if missing:
        pytest.skip(missing)
    monkeypatch.chdir(ROOT)
    exec(compile(source, f"{path.name}:{line}", "exec"), {"__name__": "__doc_block__"})
    printed = capsys.readouterr().out.splitlines()
    stated = [PRINTED.match(s).group("value") for s in source.splitlines() if PRINTED.match(s)]
    assert len(printed) == len(stated), printed
    for value, out in zip(stated, printed, strict=True):
        if value.endswith("...}") or value.endswith("..."):
            assert out.startswith(value.rstrip(".}").rstrip(", ")), (value, out)
        else:
            assert out == value, (value, out)


def test_the_readme_has_a_checked_python_block():
    assert any(p.name == "README.md" for p, _, _ in PYTHON_BLOCKS)


if __name__ == "__main__":  # the transcripts' run (see the module docstring): python tests/test_docs.py OUT
    out_dir = Path(sys.argv[1])
    block_ids = json.loads((out_dir / "ids.json").read_text())
    with tempfile.TemporaryDirectory() as scratch_dir:
        found = run_transcripts(block_ids, Path(scratch_dir))
    (out_dir / "results.json").write_text(json.dumps(found))
