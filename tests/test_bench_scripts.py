"""The benchmark scripts without a GPU: each imports as ``benchmarks.NAME`` (the way ``python -m``
runs it), the re-rendering paths read the stored records, and the CPU benchmark writes a harness
record end to end."""

import importlib
import json
import sys
from pathlib import Path

import _early
import pytest
import torch

from benchmarks import _harness as H

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_imports_as_a_module_of_the_benchmarks_package(name):
    module = importlib.import_module(f"benchmarks.{name}")
    assert name == "upstream_models" or callable(module.main)  # upstream_models is a library


def test_sweep_tables_render_from_the_stored_record():
    from benchmarks import sweep_vit_kernels as S

    record = json.loads((ROOT / "benchmarks" / "results" / "sweep_vit_kernels_h100.json").read_text())
    text = S.render(record)
    assert "run prefetch_2026-11-23" in text and "run qk-early-loads_2026-11-23" in text
    assert "| norm_bwd | 51456 x 384, plain+prefetch | 56.7 us" in text
    fresh = {"norm_fwd|vit5-base|res": {"default_ms": 0.1, "best": [[0.09, 2048, 4]]}}
    assert S.render({"schema": H.SCHEMA, "results": fresh}).count("| norm_fwd | 25728 x 768, res |") == 1


def test_sums_table_renders_from_the_stored_record():
    from benchmarks import bench_norms as B

    record = json.loads((ROOT / "benchmarks" / "results" / "bench_norms_h100.json").read_text())
    run = record["runs"]["sums_2026-12-07"]
    assert {tuple(map(int, k.strip("()").split(", "))) for k in run["sums"][0]["us"]} == set(B.SUM_CANDIDATES)
    text = "\n".join(B.sums_table(run))
    assert "| vit5-base b128 | 528x768 | yes | 12 | 4.98 | 3.74 | (8, 8192, 2) | 3.03 | 0.0150 |" in text


def test_eager_ops_bench_builds_the_models_inputs_and_its_check_can_fail():
    """bench_eager_ops on CPU with the references: the model's own shapes, bf16 error against
    float64, and a wrong op (the scale halved outside the reference) caught by the same check."""
    from benchmarks import bench_eager_ops as B

    ops = B.op_inputs("vit5-small", 2, "cpu")
    call, (weight, gamma) = ops["scale_rows"]
    assert (weight.shape, gamma.shape) == ((384, 1536), (384,))
    patches, pos, cls, reg = ops["embed_tokens"][1]
    assert (patches.shape, pos.shape, cls.shape, reg.shape) == (
        (2, 196, 384),
        (1, 196, 384),
        (1, 1, 384),
        (1, 4, 384),
    )
    for call, inputs in ops.values():
        leaves, grad, err = B.check_op(call, inputs, "torch")
        assert err < 2**-7 and grad.shape == call("torch", *inputs).shape
    half = lambda backend, w, s: B.K.scale_rows(w, s if w.dtype == torch.float64 else s / 2, backend=backend)  # noqa: E731
    assert B.check_op(half, (weight, gamma), "torch")[2] > 0.4


def test_eager_ops_table_renders_the_stored_run_and_the_host_columns():
    """The stored run (before the host columns: their cells empty) and a row with them render with
    as many cells as the header has columns."""
    from benchmarks import bench_eager_ops as B

    record = json.loads((ROOT / "benchmarks" / "results" / "bench_eager_ops_h100.json").read_text())
    rows = record["runs"]["eager-ops_2026-12-07"]["rows"]
    new = dict(rows[0], host_fwd_bwd_us=123.45, loop_fwd_bwd_us=130.0)
    lines = B.table([*rows, new])
    header = next(line for line in lines if line.startswith("| op |"))
    table = [line for line in lines if line.startswith("| ") and line is not header]
    assert len(table) == len(rows) + 1
    assert {line.count("|") for line in table} == {header.count("|")}
    assert "| 317.3 | | |" in table[0] and "| 123.5 | 130.0 |" in table[-1]


def _busy(n: int) -> int:  # its own bytecode: no built-in that cProfile would rank above it
    total = 0
    for i in range(n):
        total += i * i
    return total


def test_eager_ops_host_profile_finds_the_costly_function_and_renders():
    """``--profile``'s table: the function that takes the time tops it, with its calls per call."""
    from benchmarks import bench_eager_ops as B

    def fn():
        _busy(20_000)
        _busy(20_000)
        return len("x")

    prof = B.host_profile(fn, calls=20, top=3)
    assert prof[0]["function"].startswith("_busy")
    busy = next(p for p in prof if p["function"].startswith("_busy"))
    assert busy["calls_per_call"] == 2 and busy["total_us"] >= busy["own_us"] > 0
    row = {"op": "scale_rows", "preset": "vit5-base", "batch": 128, "backend": "triton", "host_profile": prof}
    lines = B.profile_lines([row, {"op": "scale_rows"}])
    assert lines[1].startswith("Host profile, scale_rows vit5-base b128 triton")
    assert sum(line.startswith("| `") for line in lines) == len(prof)


def test_blas_rows_set_the_preference_for_the_row_only_and_restore_it(monkeypatch):
    """The ``flopkit-cublaslt`` row's process-wide BLAS preference (a fake setter here: a CPU build
    refuses cuBLASLt) is set inside the row and put back after it, an exception included; other rows
    leave it alone."""
    from benchmarks import bench_train as B

    state, calls = ["cublas"], []

    def preferred(backend=None):
        if backend is not None:
            calls.append(backend)
            state[0] = backend
        return state[0]

    monkeypatch.setattr(torch.backends.cuda, "preferred_blas_library", preferred)
    with B.blas_backend("flopkit"):
        assert state == ["cublas"]
    with pytest.raises(KeyError), B.blas_backend("flopkit-cublaslt"):
        assert state == ["cublaslt"]
        raise KeyError
    assert state == ["cublas"] and calls == ["cublaslt", "cublas"]


def test_tile_rows_parse_their_constants_and_set_them_for_the_row_only():
    """``--tile NAME=V1,...[;NAME=...]``: a bad name, a non-integer, the wrong length or a flag
    other than 0 or 1 is refused with the value in the message; a row's constants (a plain tuple,
    an ``AttnTile``, a flag) are the row's inside it and the shipped ones after, an exception
    included; other rows leave them alone."""
    from flopkit.kernels import _mlp_triton, _sdpa_triton

    from benchmarks import bench_train as B

    shipped = _mlp_triton.DGELU_TMA_TILE
    for bad, says in [
        ("HEAD_TILE=1,2", "NAME one of DGELU_TMA_TILE"),
        ("DGELU_TMA_TILE", "NAME one of"),
        ("DGELU_TMA_TILE=1,x", "integers"),
        ("DGELU_TMA_TILE=1,2", f"holds {len(shipped)} values, got 2"),
        ("QK_FUSED_FWD=2", "a flag, 0 or 1"),
        ("QK_FUSED_FWD=1;QK_FWD_TILE=1,2", "QK_FWD_TILE holds 5 values, got 2"),
    ]:
        with pytest.raises(ValueError, match=says) as e:
            B.parse_tile(bad)
        assert repr(bad) in str(e.value)
    tile = (*shipped[:-1], shipped[-1] + 1)
    pairs = B.parse_tile("DGELU_TMA_TILE=" + ",".join(map(str, tile)))
    assert pairs == (("DGELU_TMA_TILE", tile),)
    fused = B.parse_tile("QK_FUSED_FWD=1;QK_FWD_TILE=64,32,4,2,0")
    assert fused == (("QK_FUSED_FWD", True), ("QK_FWD_TILE", _sdpa_triton.AttnTile(64, 32, 4, 2, 0)))
    row, fused_row = B.tile_row(pairs), B.tile_row(fused)
    assert row == f"flopkit[DGELU_TMA_TILE={','.join(map(str, tile))}]"
    assert fused_row == "flopkit[QK_FUSED_FWD=1;QK_FWD_TILE=64,32,4,2,0]"
    before = (_sdpa_triton.QK_FUSED_FWD, _sdpa_triton.QK_FWD_TILE)
    try:
        B.TILE_ROWS.update({row: pairs, fused_row: fused})
        with B.kernel_tile("flopkit"):
            assert shipped == _mlp_triton.DGELU_TMA_TILE
        with pytest.raises(KeyError), B.kernel_tile(row):
            assert tile == _mlp_triton.DGELU_TMA_TILE
            raise KeyError
        assert shipped == _mlp_triton.DGELU_TMA_TILE
        with B.kernel_tile(fused_row):
            assert (True, fused[1][1]) == (_sdpa_triton.QK_FUSED_FWD, _sdpa_triton.QK_FWD_TILE)
        assert before == (_sdpa_triton.QK_FUSED_FWD, _sdpa_triton.QK_FWD_TILE)
    finally:
        B.TILE_ROWS.pop(row, None)
        B.TILE_ROWS.pop(fused_row, None)


def test_adopted_attention_tiles_are_written_into_the_source(tmp_path):
    """``adopt_attention_tiles`` rewrites each swept tile's line and nothing else; a record from
    before the ``qk_forward`` sweep leaves ``QK_FWD_TILE`` alone."""
    from benchmarks.adopt_attention_tiles import SOURCE, adopt

    source = tmp_path / "_sdpa_triton.py"
    source.write_text(SOURCE.read_text())
    tiles = {"forward": [64, 32, 4, 2, 0], "dq": [64, 64, 4, 2, 0], "dkdv": [64, 64, 4, 1, 16]}
    tiles["head"] = [256, 32, 8, 1, 16]
    adopt({"tiles": tiles}, source)
    lines = {
        line.split(" = ")[0]: line for line in source.read_text().splitlines() if "_TILE = AttnTile(" in line
    }
    assert lines["FWD_TILE"] == "FWD_TILE = AttnTile(64, 32, 4, 2, 0)"
    assert lines["HEAD_TILE"] == "HEAD_TILE = AttnTile(256, 32, 8, 1, 16)"
    before = {
        line.split(" = ")[0]: line for line in SOURCE.read_text().splitlines() if "_TILE = AttnTile(" in line
    }
    assert lines["QK_FWD_TILE"] == before["QK_FWD_TILE"]
    adopt({"tiles": {**tiles, "qk_forward": [128, 16, 8, 3, 0]}}, source)
    assert "QK_FWD_TILE = AttnTile(128, 16, 8, 3, 0)" in source.read_text().splitlines()
    assert len(source.read_text().splitlines()) == len(SOURCE.read_text().splitlines())


def test_sync_sources_count_each_synchronizing_call_with_its_caller():
    """``--sections syncs``: the sync-debug mode is on only while the steps run (off after an
    exception too), each warning is counted per step with the frame that made it, and the table
    lines name the count and the caller."""
    import warnings

    from benchmarks import bench_train as B

    modes = []

    def item_then_copy():
        for _ in range(2):  # like .item(), twice from one line
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        warnings.warn("called a synchronizing CUDA operation (copy)", UserWarning, stacklevel=1)

    def debug(mode):  # as torch's setter, which warns that the mode is a prototype when set
        modes.append(mode)
        if mode:
            warnings.warn("Synchronization debug mode is a prototype feature", UserWarning, stacklevel=1)

    got = B.sync_sources(item_then_copy, steps=2, debug=debug)
    assert modes == [1, 0]
    assert got["per_step"] == 3
    (n, msg, where), (n2, msg2, _) = got["sources"]
    assert (n, msg, n2, msg2) == (4, "called a synchronizing CUDA operation", 2, msg + " (copy)")
    assert where.startswith("test_bench_scripts.py:") and "item_then_copy" in where
    assert B.sync_sources(lambda: None, debug=modes.append) == {"per_step": 0, "sources": []}

    def fails():
        raise KeyError

    with pytest.raises(KeyError):
        B.sync_sources(fails, debug=modes.append)
    assert modes[-2:] == [1, 0]
    row = {"model": "flopkit", "preset": "vit5-base", "batch": 128, **got}
    lines = B.md_tables({"syncs": [row]}).splitlines()
    assert lines[0] == "syncs: flopkit vit5-base b128, eager: 3 synchronizing calls a step"
    assert lines[1].startswith("  4x called a synchronizing CUDA operation at test_bench_scripts.py:")


def test_step_kernels_render_a_harness_record_and_a_gathered_one():
    from benchmarks import step_kernels as S

    model = {"total_ms": 2.0, "kernels": [["ampere_sgemm_128x64", 1.5, 2], ["triton_poi_fused_0", 0.5, 1]]}
    record = {
        "runs": [{"preset": "vit5-small", "batch": 8, "modes": ["compile"], "models": {"flopkit": model}}]
    }
    lines = S.render(record, top=1)
    assert lines[0].startswith("**vit5-small**, batch 8, compile")
    assert "| total | 2.00 |" in lines and "upstream: skipped (no --upstream PATH given)" in lines
    stored = json.loads((ROOT / "benchmarks" / "results" / "step_kernels_h100.json").read_text())
    assert sum(line.startswith("**vit5-") for line in S.render(stored, top=1)) == len(stored["runs"])


def test_step_kernels_timeline_idle_gaps_and_clocks():
    from benchmarks import step_kernels as S

    class Trace:  # a profiler whose trace holds two steps of three device activities
        def export_chrome_trace(self, path):
            acts = [("a", 0, 10), ("b", 5, 10), ("m", 18, 2), ("a", 150, 10), ("b", 160, 20), ("m", 181, 2)]
            events = [{"ph": "X", "cat": "kernel", "ts": t, "dur": d, "name": n} for n, t, d in acts]
            events.append(
                {"ph": "X", "cat": "cpu_op", "ts": 0, "dur": 500, "name": "host"}
            )  # not a GPU activity
            Path(path).write_text(json.dumps({"traceEvents": events}))

    tl = S.gaps(Trace(), 2)
    # busy: [0, 15] + [18, 20] + [150, 180] + [181, 183]; idle gaps of 3, 130 and 1 us
    assert tl["span_ms"] == pytest.approx(183 / 2 / 1e3) and tl["busy_ms"] == pytest.approx(49 / 2 / 1e3)
    assert tl["idle_by_gap"]["<= 2 us"] == [pytest.approx(0.0005), 0.5]
    assert tl["idle_by_gap"]["> 100 us"] == [pytest.approx(0.065), 0.5]
    assert tl["largest"][0] == [130, "m", "a"] and tl["busy_per_step_ms"] == [0.017, 0.032]
    clocks = S.Clocks()
    clocks.lines = [
        "1740, 690.1, 0x0000000000000004",
        "1980, 120.0, 0x0000000000000001",
        "1800, 650.0, 0x0",
        "x",
    ]
    summary = clocks.summary()  # the idle sample (reason 0x1) and the unreadable line left out
    assert (
        summary["samples"] == 2 and summary["sm_mhz_median"] == 1770 and summary["power_capped_share"] == 0.5
    )
    model = {
        "total_ms": 0.05,
        "kernels": [["a", 0.05, 2]],
        "timeline": tl | {"wall_ms": 0.1, "clocks": summary},
    }
    lines = S.render({"runs": [{"preset": "vit5-small", "batch": 8, "models": {"flopkit": model}}]}, top=1)
    assert "| wall | 0.10 |" in lines and "| busy, last step | 0.03 |" in lines
    assert "| SM clock in the wall loop, MHz: median (min-max) | 1770 (1740-1800) |" in lines


# Starts when the session is collected (tests/_early.py).
CLI_STARTUP = _early.early(
    "cli_startup",
    lambda out, environ: (
        [sys.executable, "-m", "benchmarks.cli_startup", "--runs", "1", "vit5-small", "--out", str(out)],
        {"cwd": ROOT, "env": _early.checkout_env(environ), "timeout": 300},
    ),
)


@pytest.mark.early("cli_startup")
def test_cli_startup_writes_a_valid_record():
    done = CLI_STARTUP.result()
    assert done.returncode == 0, done.stderr
    record = json.loads((CLI_STARTUP.out / "cli_startup_cpu.json").read_text())
    H.validate_record(record)
    assert record["benchmark"] == "cli_startup" and record["env"]["gpu"] is None
    assert set(record["results"]["vit5-small"]) == {
        "torch",
        "flopkit",
        "build",
        "rows",
        "render",
        "beyond_torch",
    }
    assert done.stdout.rstrip().endswith(" |") and "| vit5-small |" in done.stdout


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("subtile", [1, 2])
@pytest.mark.parametrize("mode", ["forward", "backward", "plain"])
def test_mlp_epilogue_tma_kernel_against_float64(mode, subtile, dtype):
    """bench_mlp_epilogue's TMA kernel (every form its sweeps time: the GELU forward, the GELU'
    backward, the GEMM alone; whole or halved epilogue; the deriv kind runs the shipped op's
    kernels, tested in tests/kernels/test_gelu_linear.py) against float64, at a shape whose edges
    cut the tiles. On CPU it runs in Triton's interpreter, which ignores warp specialization and
    whose descriptors load bfloat16 wrongly, so float32 and float16 only."""
    from benchmarks import bench_mlp_epilogue as B

    if torch.cuda.is_available():
        pytest.skip("the device run's check() covers CUDA")
    M, K, N = 80, 48, 72  # not multiples of the 32-wide tiles
    backward = mode == "backward"
    a = torch.randn(M, K).to(dtype)
    b = (torch.randn(K, N) if backward else torch.randn(N, K)).to(dtype)
    given = torch.randn(M, N).to(dtype)
    pre = given.clone() if backward else torch.empty(M, N, dtype=dtype)
    out = torch.empty(M, N, dtype=dtype)
    B._mm_gelu_tma_kernel[(3,)](
        a, b, pre, out, M, N, K, BACKWARD=backward, B_KMAJOR=not backward, NUM_PROGRAMS=3,
        BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, GROUP_M=2, SUBTILE=subtile, PLAIN=mode == "plain",
    )  # fmt: skip
    acc = a.double() @ (b.double() if backward else b.double().t())
    if mode == "plain":
        want = acc
    elif backward:
        x = given.double()
        want = acc * (0.5 * (1 + torch.erf(x / 2**0.5)) + x * torch.exp(-x * x / 2) / (2 * torch.pi) ** 0.5)
    else:
        x = acc.to(dtype).double()
        want = 0.5 * x * (1 + torch.erf(x / 2**0.5))
        assert (pre.double() - acc).abs().max() <= 2e-3 * acc.abs().max()
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert (out.double() - want).abs().max() <= tol * want.abs().max(), mode


@pytest.mark.parametrize("backward", [False, True])
def test_mlp_epilogue_pointer_kernel_against_float64(backward):
    """bench_mlp_epilogue's pointer kernel (the shipped op's tile helpers with the erf epilogue)
    against float64 in the interpreter, float32, an uneven K and edges that cut the tiles."""
    from benchmarks import bench_mlp_epilogue as B

    if torch.cuda.is_available():
        pytest.skip("the device run's check() covers CUDA")
    M, K, N = 80, 48, 72
    a, b, given = torch.randn(M, K), torch.randn(K, N), torch.randn(M, N)
    pre = given.clone() if backward else torch.empty(M, N)
    out = torch.empty(M, N)
    B._mm_gelu_kernel[(3,)](
        a, b, pre, out, M, N, K, *a.stride(), *b.stride(), BACKWARD=backward, EVEN_K=False, FLATTEN=True,
        BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, GROUP_M=2,
    )  # fmt: skip
    acc = a.double() @ b.double()
    x = given.double() if backward else acc
    cdf = 0.5 * (1 + torch.erf(x / 2**0.5))
    want = acc * (cdf + x * torch.exp(-x * x / 2) / (2 * torch.pi) ** 0.5) if backward else x * cdf
    assert (out.double() - want).abs().max() <= 1e-5 * want.abs().max()


def test_compiled_rows_report_graph_breaks_and_cuda_graph_skips():
    """``bench_train`` reads Dynamo's counters after a row's warm-up and names, under its table, a
    compiled row that broke its graph or ran a graph without CUDA graphs."""
    from collections import Counter, defaultdict

    from benchmarks import bench_train as B

    counts = defaultdict(Counter)
    counts["stats"]["unique_graphs"] = 3
    counts["graph_break"]["a reason"] = 2
    counts["inductor"]["cudagraph_skips"] = 1
    stats = B.compile_stats(counts)
    assert stats == {"graphs": 3, "graph_breaks": 2, "cudagraph_skips": 1, "cache_hits": 0}
    clean = {"model": "flopkit", "preset": "vit5-base", "mode": "reduce-overhead", "graphs": 2}
    clean |= {"graph_breaks": 0, "cudagraph_skips": 0}
    broken = {**clean, "model": "flopkit-gelu-linear", **stats}
    counts["aot_autograd"]["autograd_cache_hit"] = 1
    counts["inductor"]["fxgraph_cache_hit"] = 2
    cached = {
        **clean,
        "model": "flopkit[QK_FUSED_FWD=1]",
        "cache_hits": B.compile_stats(counts)["cache_hits"],
    }
    old = {"model": "upstream", "preset": "vit5-base", "mode": "eager"}  # no counts: no line
    assert B.compile_notes([clean, broken, cached, old]) == [
        "compiled: flopkit-gelu-linear vit5-base reduce-overhead: 3 graphs, 2 graph breaks, 1 CUDA-graph skips",
        "compiled: flopkit[QK_FUSED_FWD=1] vit5-base reduce-overhead: 2 graphs, 0 graph breaks, 0 CUDA-graph "
        "skips, 3 compile-cache hits (code of an earlier compile)",
    ]


def test_cold_compile_recompiles_a_graph_that_the_caches_would_reuse():
    """A second compile of the same graph reuses the first's code from the compile caches (which is
    how ``--tile`` rows, whose kernel constants the caches' keys do not see, ran the shipped code);
    under ``cold_compile`` it compiles from scratch."""
    from torch._dynamo.utils import counters

    from benchmarks import bench_train as B

    def compile_once() -> dict[str, int]:
        torch._dynamo.reset()
        counters.clear()
        layer = torch.nn.Linear(8, 4)
        torch.compile(layer)(torch.ones(2, 8)).sum().backward()
        return B.compile_stats(counters)

    if torch._inductor.config.force_disable_caches:
        pytest.skip("the compile caches are off in this environment (TORCHINDUCTOR_FORCE_DISABLE_CACHES)")
    compile_once()  # fills the caches (or finds them filled)
    assert compile_once()["cache_hits"] > 0
    with B.cold_compile():
        assert compile_once()["cache_hits"] == 0
    torch._dynamo.reset()


def test_bench_train_host_notes_name_eager_rows_that_recorded_their_issue_time():
    """An eager row with ``host_ms`` gets a line with the host, GPU and wall times; compiled rows
    and rows from before it was recorded get none, and md_tables carries the line."""
    from benchmarks import bench_train as B

    eager = {"model": "flopkit", "preset": "vit5-base", "mode": "eager", "ms": 35.07, "gpu_ms": 31.42}
    eager["host_ms"] = 12.345
    compiled = {**eager, "mode": "reduce-overhead"}
    old = {k: v for k, v in eager.items() if k != "host_ms"}
    want = (
        "host: flopkit vit5-base eager: issuing a step took 12.3 ms of host time (median), "
        "the GPU was busy 31.4 ms of a 35.1 ms step"
    )
    assert B.host_notes([eager, compiled, old]) == [want]
    row = {**eager, "batch": 128, "img_s": 3650.0, "mfu": 0.5, "host_bound": 0.1}
    assert want in B.md_tables({"steps": [row]}).splitlines()


def test_bench_train_python_profile_ranks_functions_by_their_own_time():
    """The function that spins longest comes first, with its calls per step; the markdown names it."""
    from benchmarks import bench_train as B

    def slow():  # one built-in call (range), the rest its own bytecode
        x = 0
        for i in range(200_000):
            x += i
        return x

    def quick():
        return 1

    def step():
        slow()
        for _ in range(3):
            quick()

    prof = B.python_profile(step, steps=4, top=50, sync=lambda: None)
    ms, calls, where = prof["top"][0]
    assert where.endswith(" slow") and calls == 1 and ms > 0.5
    assert [c for _, c, w in prof["top"] if w.endswith(" quick")] == [3]
    assert prof["host_ms"] >= ms
    row = {"model": "flopkit", "preset": "vit5-base", "batch": 128, **prof}
    lines = B.md_tables({"pyprof": [row]}).splitlines()
    assert lines[0].startswith("pyprof: flopkit vit5-base b128, eager, under cProfile: ")
    assert lines[1].strip().endswith(" slow")
