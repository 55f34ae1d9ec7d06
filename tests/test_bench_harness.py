"""benchmarks/_harness.py on CPU: medians, timers, the roofs' arithmetic, the environment record,
the result schema and files, importing from a source checkout; and that no benchmark edits
``sys.path`` and ``benchmarks/results/`` holds one file pair per benchmark per device."""

import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import _harness as H

ROOT = Path(__file__).resolve().parents[1]


def test_median_and_summary():
    assert H.median([3.0, 1.0, 2.0]) == 2.0
    assert H.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert H.summarize([5.0, 1.0, 3.0]) == {"median": 3.0, "min": 1.0, "max": 5.0, "n": 3}
    with pytest.raises(ValueError, match="no values"):
        H.median([])


def test_device_ms_uses_the_injected_timer():
    calls = []

    def timer(fn, warmup_ms, rep_ms):
        calls.append((warmup_ms, rep_ms))
        fn()
        return 0.5

    ran = []
    assert H.device_ms(lambda: ran.append(1), warmup_ms=7, rep_ms=11, timer=timer) == 0.5
    assert calls == [(7, 11)] and ran == [1]


def test_host_samples_read_the_clock_around_each_call_after_warmup():
    ticks = iter([0.0, 0.002, 1.0, 1.005, 2.0, 2.001])
    events = []
    samples = H.host_samples_ms(
        lambda: events.append("call"),
        reps=3,
        warmup=2,
        clock=lambda: (events.append("clock"), next(ticks))[1],
        before=lambda: events.append("before"),
        after=lambda: events.append("after"),
    )
    assert samples == pytest.approx([2.0, 5.0, 1.0])
    assert events == ["call", "call"] + ["before", "clock", "call", "after", "clock"] * 3


def test_roofs_arithmetic_with_a_fixed_timer():
    # every call "takes" 0.5 ms: copy moves 2 x 1 MiB, the matmul is 2 * 64^3 FLOPs
    roofs = H.measure_roofs("cpu", copy_bytes=1 << 20, matmul_n=64, timer=lambda fn, w, r: (fn(), 0.5)[1])
    assert roofs.copy_gbs == pytest.approx(2 * (1 << 20) / 0.5e-3 / 1e9)
    assert roofs.matmul_tflops == pytest.approx(2 * 64**3 / 0.5e-3 / 1e12)
    assert (roofs.copy_bytes, roofs.matmul_n, roofs.dtype, roofs.method) == (
        1 << 20,
        64,
        "bfloat16",
        "injected timer",
    )


def test_run_roofs_measures_once_per_process_and_device(monkeypatch):
    calls = []
    fake = H.Roofs(1.0, 2.0, 4, 8, "bfloat16", "fake")
    monkeypatch.setattr(H, "measure_roofs", lambda device: (calls.append(device), fake)[1])
    H.run_roofs.cache_clear()
    try:
        assert H.run_roofs("cpu") is fake and H.run_roofs("cpu") is fake and H.run_roofs("meta") is fake
        assert calls == ["cpu", "meta"]
    finally:
        H.run_roofs.cache_clear()


def test_environment_names_versions_and_the_git_revision():
    now = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.timezone.utc)
    env = H.environment(now=now)
    assert env["date"] == "2026-12-06T12:00:00+00:00"
    assert env["torch"] == torch.__version__
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    if not torch.cuda.is_available():
        assert env["gpu"] is None and H.device_tag(env) == "cpu"
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert env["git"]["commit"] == head.stdout.strip() and isinstance(env["git"]["dirty"], bool)
    else:
        assert env["git"] is None


def test_git_revision_is_none_without_git():
    def missing(*args, **kwargs):
        raise FileNotFoundError("git")

    def not_a_repo(*args, **kwargs):
        return subprocess.CompletedProcess(args, 128, "", "fatal: not a git repository")

    assert H.git_revision(run=missing, environ={}) is None
    assert H.git_revision(run=not_a_repo, environ={}) is None
    given = {H.REVISION_ENV: "AB" * 20}
    assert H.git_revision(run=not_a_repo, environ=given) == {"commit": "ab" * 20, "dirty": None}
    assert H.git_revision(run=missing, environ={H.REVISION_ENV: "main"}) is None  # a commit, not a name


@pytest.mark.parametrize(
    "name, count, tag",
    [
        ("NVIDIA H100 80GB HBM3", 1, "h100"),
        ("NVIDIA H200", 2, "h200x2"),
        ("NVIDIA A100-SXM4-80GB", 1, "a100"),
        ("NVIDIA GeForce RTX 4090", 1, "4090"),
    ],
)
def test_device_tag(name, count, tag):
    assert H.device_tag({"gpu": {"name": name, "count": count}}) == tag


def _env(**over):
    env = {
        "date": "2026-12-06T12:00:00+00:00",
        "python": "3.12.1",
        "platform": "Linux",
        "torch": "2.11.0",
        "triton": "3.6.0",
        "cuda": "12.8",
        "gpu": {
            "name": "NVIDIA H100 80GB HBM3",
            "count": 1,
            "capability": "9.0",
            "sms": 132,
            "memory_gib": 79.2,
        },
        "git": {"commit": "a" * 40, "dirty": True},
    }
    return {**env, **over}


def test_record_schema_and_header():
    roofs = H.Roofs(3000.0, 700.0, 1 << 30, 8192, "bfloat16", "triton.testing.do_bench median")
    rec = H.make_record("bench_norms", {"rows": [1, 2]}, env=_env(), roofs=roofs)
    assert list(rec)[:4] == ["schema", "benchmark", "env", "roofs"] and rec["rows"] == [1, 2]
    H.validate_record(rec)
    H.validate_record(json.loads(json.dumps(rec)))
    line = H.header_line(rec)
    assert line.startswith(
        "bench_norms: NVIDIA H100 80GB HBM3; torch 2.11.0; Triton 3.6.0; git aaaaaaaaaaaa (local changes)"
    )
    assert "copy 3000 GB/s, bfloat16 matmul 700 TFLOP/s" in line
    copied = H.make_record("x", {}, env=_env(git={"commit": "b" * 40, "dirty": None}))
    H.validate_record(copied)
    assert f"git bbbbbbbbbbbb (from ${H.REVISION_ENV})" in H.header_line(copied)
    with pytest.raises(ValueError, match="harness's"):
        H.make_record("x", {"env": 1}, env=_env())


@pytest.mark.parametrize(
    "change, match",
    [
        ({"schema": "flopkit-bench/0"}, "schema"),
        ({"benchmark": ""}, "benchmark"),
        ({"env": {"date": "2026-12-06"}}, "env lacks"),
        ({"env": _env(git={"commit": "abc"})}, "40-hex"),
        ({"env": _env(gpu="H100")}, "env.gpu"),
        ({"env": _env(date="yesterday")}, "isoformat|Invalid"),
        ({"roofs": {"copy_gbs": 0, "matmul_tflops": 1.0}}, "copy_gbs"),
    ],
)
def test_validate_record_rejects(change, match):
    rec = {**H.make_record("x", {}, env=_env()), **change}
    with pytest.raises(ValueError, match=match):
        H.validate_record(rec)


def test_writer_writes_name_device_files_and_prints_the_tables_last(tmp_path, capsys):
    writer = H.ResultWriter(
        tmp_path / "out", "sdpa_backends", env=_env(gpu={"name": "NVIDIA H200", "count": 2})
    )
    writer.save({"rows": []})
    assert not writer.md_path.exists()
    rec = writer.finish({"rows": [1]}, ["| a |", "|---|"])
    assert writer.json_path == tmp_path / "out" / "sdpa_backends_h200x2.json"
    assert json.loads(writer.json_path.read_text()) == rec and rec["rows"] == [1]
    md = writer.md_path.read_text().splitlines()
    assert md[0] == H.header_line(rec) and md[2:] == ["| a |", "|---|"]
    assert capsys.readouterr().out.rstrip().endswith("| a |\n|---|")
    with pytest.raises(ValueError, match="lower-case"):
        H.result_stem("Bench Norms", _env())


def test_import_from_source_without_touching_sys_path(tmp_path):
    pkg = tmp_path / "upstream_pkg_for_test"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import sub\n")
    (pkg / "sub" / "__init__.py").write_text("import helper_mod_for_test as helper\nVALUE = helper.X + 1\n")
    (tmp_path / "helper_mod_for_test.py").write_text("X = 41\n")
    before_path, before_meta = list(sys.path), list(sys.meta_path)
    try:
        mod = H.import_from_source(tmp_path, "upstream_pkg_for_test.sub")
        assert mod.VALUE == 42 and sys.path == before_path
        H.import_from_source(tmp_path, "upstream_pkg_for_test")
        assert sum(isinstance(f, H.SourceTreeFinder) for f in sys.meta_path) == 1 + sum(
            isinstance(f, H.SourceTreeFinder) for f in before_meta
        )
    finally:
        sys.meta_path[:] = before_meta
        for name in [
            n for n in sys.modules if n.startswith(("upstream_pkg_for_test", "helper_mod_for_test"))
        ]:
            del sys.modules[name]
    with pytest.raises(FileNotFoundError):
        H.import_from_source(tmp_path / "absent", "x")


def test_no_benchmark_edits_sys_path():
    offenders = [
        f"{path.name}:{i}"
        for path in sorted((ROOT / "benchmarks").glob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"sys\.path\.(insert|append|extend|remove)\(|sys\.path(\[[^\]]*\])?\s*\+?=(?!=)", line)
    ]
    assert offenders == []


def test_results_hold_one_pair_per_benchmark_and_device():
    files = sorted(p.name for p in (ROOT / "benchmarks" / "results").iterdir())
    assert 0 < len(files) <= 30
    stems = {}
    for name in files:
        m = re.fullmatch(r"([a-z0-9_]+)_([a-z0-9]+)\.(json|md)", name)
        assert m, f"{name}: results are NAME_DEVICE.json / .md"
        assert (ROOT / "benchmarks" / f"{m[1]}.py").exists(), f"{name}: no benchmarks/{m[1]}.py"
        stems.setdefault((m[1], m[2]), set()).add(m[3])
    for (name, device), exts in stems.items():
        assert exts == {"json", "md"}, f"{name}_{device}: a .json and an .md"
        record = json.loads((ROOT / "benchmarks" / "results" / f"{name}_{device}.json").read_text())
        if record.get("schema") == H.SCHEMA:
            H.validate_record(record)
            assert (record["benchmark"], H.device_tag(record["env"])) == (name, device)
        elif record.get("schema") == "flopkit-bench/runs":  # several harness runs of one benchmark
            assert record["benchmark"] == name and record["device"] == device and record["runs"]
            for run in record["runs"].values():
                H.validate_record(run)
                assert (run["benchmark"], H.device_tag(run["env"])) == (name, device)
        else:  # runs from before the harness, gathered per benchmark and device
            assert record.get("schema") == "flopkit-bench/legacy" and record["benchmark"] == name
            assert record["device"] == device and record["runs"]
