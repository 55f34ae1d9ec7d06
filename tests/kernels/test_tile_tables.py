"""The launchers' tile tables: keyed by (architecture, width), complete over the widths the
launchers look up, each entry citing a result under benchmarks/results/ that exists, and chosen
the same way on every architecture until one has entries of its own. Planning only: nothing
launches, so these run without the interpreter's cost."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from flopkit.kernels import _norm_triton as tk
from flopkit.kernels import _rope_triton as rt
from flopkit.kernels._launch import TUNED_ARCH, Tile, pick_tile

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
TABLES = {
    "FWD_TILES": (tk.FWD_TILES, 2),
    "RES_TILES": (tk.RES_TILES, 2),
    "BWD_TILES": (tk.BWD_TILES, 3),
    "BWD_PREFETCH_TILES": (tk.BWD_PREFETCH_TILES, 3),
    "BWD_SCALE_TILES": (tk.BWD_SCALE_TILES, 3),
    "rope FWD_TILES": (rt.FWD_TILES, 2),
    "rope BWD_TILES": (rt.BWD_TILES, 3),
}
CITE = re.compile(r"benchmarks/results/(?P<file>[a-z0-9_]+\.json), run (?P<run>[a-z0-9_.-]+)")


def _all_tiles():
    for name, (table, arity) in TABLES.items():
        for key, tile in table.items():
            yield f"{name}[{key}]", tile, arity
    for name, table in (
        ("CHUNKED_FWD_TILES", tk.CHUNKED_FWD_TILES),
        ("CHUNKED_BWD_TILES", tk.CHUNKED_BWD_TILES),
    ):
        for arch, tile in table.items():
            yield f"{name}[{arch}]", tile, 2 if "FWD" in name else 3
    yield "SUM_TILE", tk.SUM_TILE, 3


def test_every_power_of_two_width_has_a_tile_on_the_tuned_architecture():
    def widths(top):
        return [2**i for i in range(top.bit_length())]

    for table, top in (
        (tk.FWD_TILES, tk.FUSED_MAX_FWD),
        (tk.RES_TILES, tk.FUSED_MAX_FWD),
        (tk.BWD_TILES, tk.FUSED_MAX_BWD),
    ):
        assert sorted(w for arch, w in table if arch == TUNED_ARCH) == widths(top)


def test_every_entry_is_a_tile_of_positive_ints_citing_its_evidence():
    results_cache: dict[str, dict] = {}
    for where, tile, arity in _all_tiles():
        assert isinstance(tile, Tile) and len(tile.config) == arity, where
        assert all(isinstance(v, int) and v > 0 for v in tile.config), where
        cites = list(CITE.finditer(tile.source))
        assert cites or tile.source.startswith("not swept"), f"{where}: {tile.source!r} cites no result"
        for m in cites:
            path = RESULTS / m["file"]
            assert path.exists(), f"{where}: {path.name} is not in benchmarks/results/"
            record = results_cache.setdefault(m["file"], json.loads(path.read_text()))
            assert m["run"] in record.get("runs", {}), f"{where}: {path.name} has no run {m['run']!r}"
            sweep = re.search(r", sweep (\d+x\d+)", tile.source)
            if sweep:  # bench_norms: the row shape's sweep is in that run and chose or nearly chose the tile
                assert sweep[1] in record["runs"][m["run"]]["data"]["sweep"], where


def test_pick_tile_falls_back_to_the_tuned_architecture():
    table = {(TUNED_ARCH, 64): Tile((1, 2), "a"), ("sm100", 64): Tile((3, 4), "b")}
    assert pick_tile(table, "sm100", 64).config == (3, 4)
    assert pick_tile(table, "sm80", 64).config == (1, 2)
    assert pick_tile(table, "cpu", 64).config == (1, 2)
    assert pick_tile(table, "sm100", 128) is None


def _bwd_plan(D, *, scale=False, heads=1, per_head=False, prefetch=None):
    x = torch.empty(64 * heads * D).view(64, heads * D) if per_head else torch.empty(64, D)
    args = (x, True, False, scale, scale, 1e-6, heads, D, False, per_head, None, None, prefetch)
    plan, _ = tk._plan_backward(*args)
    return plan.meta


@pytest.mark.parametrize(
    "D, scale, expect",
    [
        (384, False, dict(BLOCK_T=2, num_warps=2, PREFETCH=True)),  # (1024, 2, 8), prefetching rows
        (768, False, dict(BLOCK_T=2, num_warps=4, PREFETCH=True)),  # (2048, 4, 4)
        (384, True, dict(BLOCK_T=2, num_warps=8, PREFETCH=True)),  # LayerScale table (1024, 8, 4)
        (768, True, dict(BLOCK_T=1, num_warps=8, PREFETCH=True)),
        (64, False, dict(BLOCK_T=32, num_warps=8, PREFETCH=False)),  # BWD_TILES (2048, 8, 4)
        (4096, False, dict(BLOCK_T=1, num_warps=4, PREFETCH=False)),  # (4096, 4, 3)
    ],
)
def test_backward_plans_take_the_tables_tiles(D, scale, expect):
    meta = _bwd_plan(D, scale=scale)
    assert {k: meta[k] for k in expect} == expect


def test_per_head_rows_and_the_prefetch_override():
    # 8 heads of 64 pad to width 512: the per-head tile is BWD_TILES's, without prefetching
    meta = _bwd_plan(64, heads=8, per_head=True)
    assert (meta["BLOCK_H"], meta["BLOCK_T"], meta["num_warps"], meta["PREFETCH"]) == (8, 4, 8, False)
    assert _bwd_plan(384, prefetch=False)["PREFETCH"] is False
    assert _bwd_plan(64, prefetch=True)["PREFETCH"] is True
    assert _bwd_plan(384, prefetch=False)["num_warps"] == 2  # the same tile, only the flag forced


def test_an_architecture_with_its_own_entry_takes_it(monkeypatch):
    monkeypatch.setattr(tk, "device_arch", lambda device: "sm100")
    assert _bwd_plan(384)["num_warps"] == 2  # no sm100 entries: the tuned ones
    monkeypatch.setitem(tk.BWD_PREFETCH_TILES, ("sm100", 512), Tile((4096, 16, 1), "test"))
    meta = _bwd_plan(384)
    assert (meta["BLOCK_T"], meta["num_warps"], meta["PREFETCH"]) == (8, 16, True)


def test_forward_plans_take_the_tables_tiles():
    x = torch.empty(64, 64)
    plan, _, _ = tk._plan_forward(x, None, True, False, False, 1e-6, 1, 64, False, False, None)
    assert (plan.meta["BLOCK_T"], plan.meta["num_warps"]) == (32, 8)  # FWD (2048, 8)
    plan, _, _ = tk._plan_forward(x, torch.empty(64, 64), True, False, False, 1e-6, 1, 64, False, False, None)
    assert (plan.meta["BLOCK_T"], plan.meta["num_warps"]) == (64, 4)  # RES (4096, 4)


def test_rope_constants_are_the_tables_entry():
    assert (rt.FWD_TILE_ELEMS, rt.FWD_WARPS) == rt.FWD_TILES[(TUNED_ARCH, 64)].config == (512, 1)
    assert rt.BWD_TILES[(TUNED_ARCH, 64)].config == (rt.BWD_TILE_ELEMS, rt.BWD_WARPS, rt.BWD_PROGRAMS_PER_SM)
    assert rt.BWD_TILES[(TUNED_ARCH, 64)].config == (2048, 2, 4)


@pytest.mark.parametrize(
    "cols, block_n, block_r, programs",
    [
        (768, 4, 1024, 192),  # vit5-base's widths: SUM_TILE
        (384, 4, 1024, 96),
        (3, 4, 1024, 1),  # the block is the columns' power of two, the rows' block follows
        (2048, 4, 1024, 512),
        (4096, 16, 256, 256),  # past SUM_WIDE_COLS: 16 columns, 64-byte row segments
    ],
)
def test_sum_partials_plans_take_sum_tile_up_to_the_wide_rows(cols, block_n, block_r, programs):
    plan = tk.sum_partials_plan(528, cols, True)
    assert (plan.meta["BLOCK_N"], plan.meta["BLOCK_R"], plan.grid) == (block_n, block_r, (programs,))
    assert plan.meta["num_warps"] == tk.SUM_TILE.config[2]
