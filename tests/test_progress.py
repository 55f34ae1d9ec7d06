"""Progress bars: on stderr only when it is a terminal and the output is for a reader."""

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from flopkit.cli import app

import flopkit.progress
from flopkit.progress import Progress, progress_for

TINY = str(Path(__file__).resolve().parents[1] / "examples" / "vit5-tiny.yaml")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "fmt", "enabled"),
    [
        (Terminal(), "table", True),
        (Terminal(), "markdown", True),
        (Terminal(), "json", False),
        (Terminal(), "csv", False),
        (io.StringIO(), "table", False),  # a pipe or a file
    ],
)
def test_progress_draws_only_on_a_terminal_for_a_reader(stream, fmt, enabled):
    with progress_for(fmt, stream) as progress:
        for _ in progress.iterate(range(3), "seq-len sweep"):
            pass
    assert progress.enabled is enabled
    assert ("seq-len sweep" in stream.getvalue()) is enabled
    if not enabled:
        assert stream.getvalue() == ""


class Recorder(Progress):
    def __init__(self) -> None:
        super().__init__(enabled=False)
        self.phases: list[tuple[str, int | None]] = []
        self.steps = 0

    def phase(self, name, total=None):
        self.phases.append((name, total))

    def advance(self, n=1):
        self.steps += n


def test_profile_reports_each_phase_and_every_step(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(flopkit.progress, "progress_for", lambda fmt="table", stream=None: recorder)
    result = CliRunner().invoke(
        app,
        [
            "profile",
            TINY,
            "--batch",
            "2",
            "--device",
            "cpu",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert recorder.phases == [("warm-up", 1), ("timed steps", 2), ("profiled steps", 4)]
    assert (
        recorder.steps == 1 + 2 + 4
    )  # warm-up, timed, then the byte-recording step, the profiler's warm-up, 2
    assert json.loads(result.stdout)["steps"] == 2


def test_validate_reports_each_counter(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(flopkit.progress, "progress_for", lambda fmt="table", stream=None: recorder)
    result = CliRunner().invoke(app, ["validate", TINY])
    assert result.exit_code == 0, result.output
    assert [name for name, _ in recorder.phases] == [
        "fvcore: tracing a CPU copy",
        "torch: FlopCounterMode on meta",
    ]


def test_cli_output_in_a_pipe_has_no_bar():
    result = CliRunner().invoke(app, ["validate", TINY, "--format", "json"])
    assert result.exit_code == 0 and result.stderr == ""
    json.loads(result.stdout)


def test_a_seq_len_sweep_advances_once_per_length(monkeypatch):
    pytest.importorskip("transformers")
    recorder = Recorder()
    monkeypatch.setattr(flopkit.progress, "progress_for", lambda fmt="table", stream=None: recorder)
    args = [
        "report",
        "--model",
        "hf:gpt2",
        "--model-arg",
        "n_layer=1",
        "--seq-len",
        "8,16,32",
        "--format",
        "json",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert recorder.phases == [("seq-len sweep", 3)] and recorder.steps == 3
    assert [r["seq_len"] for r in json.loads(result.stdout)["rows"]] == [8, 16, 32]
