"""``xanysat.plan``: figures from shapes only, checked against what ``embed`` builds, and a
continental cube (never computed) planned in seconds."""

from __future__ import annotations

import json
import math
import time
import tracemalloc
import warnings

import numpy as np
import pytest
from helpers.continental import S1_STATS, continental_cube

import xanysat
from xanysat.cube.plan import GRAPH_TASK_LIMIT, EmbedPlan
from xanysat.testing import synthetic_cube

MODEL = "untrained-tiny"


@pytest.fixture(scope="module")
def small():
    """Dask-backed, chunks unaligned with the blocks, an odd extent, two sensors."""
    return synthetic_cube(("s2", "s1-asc"), extent_m=(370, 250), n_dates=3, chunks={"time": 1, "y": 17, "x": 23})


OPTIONS = {"model": MODEL, "tile_size": 80, "overlap": 40, "block_tiles": 2, "normalize": S1_STATS}


def test_plan_agrees_with_embed(small):
    p = xanysat.plan(small, 40, throughput=10.0, **OPTIONS)
    emb = xanysat.embed(small, 40, **OPTIONS)
    graph = emb.data.__dask_graph__()
    embed_layers = [name for name in graph.layers if name.startswith("anysat-embed-") and not name.endswith("-halo")]
    assert len(embed_layers) == 1 and len(graph.layers[embed_layers[0]]) == p.embed_tasks == math.prod(p.blocks)
    assert p.out_shape == emb.shape and p.blocks == emb.data.numblocks[1:]
    assert p.out_chunks == (emb.shape[0], emb.data.chunks[1][0], emb.data.chunks[2][0])
    assert p.tiles == (5, 4) and p.n_tiles == 20 and p.tile_size_m == (80, 80)
    assert np.allclose(p.bounds, emb.rio.bounds()) and p.crs == "EPSG:32631"
    assert p.output_bytes == emb.nbytes
    assert p.read_bytes == {"s2": 3 * 10 * 37 * 25 * 4, "s1-asc": 3 * 2 * 37 * 25 * 4}
    assert p.input_chunks == {n: small[n][n].data.npartitions for n in ("s2", "s1-asc")}
    assert 0.7 < p.total_tasks / len(graph) < 1.4, (p.total_tasks, len(graph))
    assert p.total_tasks < GRAPH_TASK_LIMIT and not p.warnings
    assert p.compute_hours == pytest.approx(20 / 10.0 / 3600)
    mem = p.task_memory
    assert mem["total"] == mem["input_chunks"] + mem["window"] + mem["output"] + mem["model"]
    # block (1, 1): 160 m and its 40 m halo, 24 x 24 pixels of 3 dates x (10 + 2) bands, float32
    assert mem["window"] == 3 * 12 * 24 * 24 * 4
    assert mem["output"] == 256 * 4 * 4 * 4
    assert json.loads(json.dumps(p.to_dict()))["tiles"] == [5, 4]
    text = str(p)
    assert "5 x 4 = 20" in text and "tiles/s" in text


def test_plan_numpy_cube_and_regions():
    cube = synthetic_cube(("s2",), extent_m=(320, 480), n_dates=2)
    p = xanysat.plan(cube, 40, model=MODEL, tile_size=80, block_tiles=1, region_blocks=(3, 2), throughput=1.0)
    assert p.input_tasks == 0 and p.input_chunks == {"s2": 0}
    assert p.blocks == (4, 6) and p.total_tasks == 2 * 24  # from-array chunks + embed tasks
    assert p.region_blocks == (3, 2) and p.regions == (2, 3) and p.n_regions == 6 and p.embed_tasks_per_region == 6
    assert p.read_bytes_regions == p.read_bytes_total  # no halo, no chunks: each pixel read once


def test_plan_measures_throughput():
    from xanysat.cube import plan as planning

    cube = synthetic_cube(("s2",), extent_m=(80, 80), n_dates=2)
    planning._SECONDS_PER_TILE.clear()
    start = time.perf_counter()
    p = xanysat.plan(cube, 40, model=MODEL)
    first = time.perf_counter() - start
    assert p.throughput_source.startswith("measured") and 0 < p.seconds_per_tile < 60
    assert p.tiles_per_second == pytest.approx(1 / p.seconds_per_tile)
    assert p.compute_hours == pytest.approx(p.n_tiles * p.seconds_per_tile / 3600)
    assert len(planning._SECONDS_PER_TILE) == 1
    again = xanysat.plan(cube, 40, model=MODEL)  # cached: no second measurement
    assert again.seconds_per_tile == p.seconds_per_tile and len(planning._SECONDS_PER_TILE) == 1
    print(f"measured {p.tiles_per_second:.3g} tiles/s on a 80 m tile; first plan {first:.2f} s")


def test_plan_rejects_bad_throughput():
    cube = synthetic_cube(("s2",), extent_m=(80, 80), n_dates=2)
    with pytest.raises(ValueError, match="throughput"):
        xanysat.plan(cube, 40, model=MODEL, throughput=0)


def test_continental_cube_planned_in_seconds():
    tracemalloc.start()
    cube = continental_cube(708, n_dates=36)
    built, _ = tracemalloc.get_traced_memory()
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="embed_to_zarr"):
        p = xanysat.plan(cube, 40, model=MODEL, overlap=40, throughput=20.0, normalize=S1_STATS)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"\n{p}\ncube built with {built / 1e6:.1f} MB; plan in {seconds:.2f} s, peak {peak / 1e6:.1f} MB")
    assert isinstance(p, EmbedPlan)
    assert built < 20e6  # coordinates only: a pixel array would be terabytes
    assert seconds < 30 and peak < 200e6
    assert p.tiles == (554, 554) and p.n_tiles == 554**2
    assert p.out_shape == (256, 17_700, 17_700) and p.output_bytes == 256 * 17_700**2 * 4
    n = 70_800
    assert p.read_bytes == {"s2": 36 * 10 * n * n * 2, "s1-asc": 36 * 2 * n * n * 4}
    assert p.read_bytes_total > 5e12 and p.read_bytes_regions >= p.read_bytes_total
    assert p.input_tasks == 2 * 36 * 35 * 35
    assert p.total_tasks > GRAPH_TASK_LIMIT and p.warnings
    assert p.compute_hours == pytest.approx(554**2 / 20.0 / 3600)
    assert p.n_regions == math.prod(p.regions) > 100 and p.tasks_per_region < GRAPH_TASK_LIMIT
    assert np.allclose(p.bounds, (200_000, 5_800_000 - 708_000, 908_000, 5_800_000))


def test_plan_warns_nothing_for_small_cube(small):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xanysat.plan(small, 40, throughput=1.0, **OPTIONS)
