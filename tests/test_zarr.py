"""``xanysat.embed_to_zarr``: region-by-region writes equal a whole-cube ``embed``, resume after a
crash without recomputing finished regions, refuse to resume with other settings, and build
bounded graphs for a continental cube (never computed)."""

from __future__ import annotations

import math
import time
import tracemalloc
from collections import Counter

import dask
import numpy as np
import pytest
import xarray as xr
import zarr
from dask.core import flatten
from test_plan import S1_STATS, continental_cube

import xanysat
import xanysat.cube.blocks
from xanysat.cube import zarr as io
from xanysat.testing import synthetic_cube

MODEL = "untrained-tiny"
# 250 m x 170 m (an odd extent: partial last tiles), 80 m tiles with a 40 m halo: 4 x 3 tiles; 2 x 2
# tiles per block: 2 x 2 blocks; one block per region: 2 x 2 regions.
OPTIONS = {"model": MODEL, "tile_size": 80, "overlap": 40, "block_tiles": 2, "normalize": S1_STATS}
REGION_BLOCKS = (1, 1)


@pytest.fixture(scope="module", autouse=True)
def threads():
    with dask.config.set(scheduler="threads"):
        yield


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(("s2", "s1-asc"), extent_m=(250, 170), n_dates=2, chunks={"time": 1, "y": 11, "x": 7})


@pytest.fixture(scope="module")
def reference(cube):
    return xanysat.embed(cube, 40, **OPTIONS).compute()


@pytest.fixture
def counting(monkeypatch):
    """Count block computations per (region, block) and region writes (successful or not)."""
    state = {"region": None, "blocks": Counter(), "writes": Counter(), "fail_at": None, "calls": 0}
    run_block, write_region = xanysat.cube.blocks.run_block, io.write_region

    def counted_run_block(job, block, chunk_grids):
        state["calls"] += 1
        if state["fail_at"] is not None and state["calls"] >= state["fail_at"]:
            raise RuntimeError("injected crash")
        state["blocks"][state["region"], tuple(block)] += 1
        return run_block(job, block, chunk_grids)

    def counted_write_region(job, store, region, **kwargs):
        state["region"] = region
        write_region(job, store, region, **kwargs)
        state["writes"][region] += 1

    monkeypatch.setattr(xanysat.cube.blocks, "run_block", counted_run_block)
    monkeypatch.setattr(io, "write_region", counted_write_region)
    return state


def _assert_same(emb: xr.DataArray, reference: xr.DataArray) -> None:
    assert emb.shape == reference.shape
    np.testing.assert_array_equal(emb["y"].values, reference["y"].values)
    np.testing.assert_array_equal(emb["x"].values, reference["x"].values)
    values = emb.values
    assert np.array_equal(np.isnan(values), np.isnan(reference.values))
    np.testing.assert_allclose(values, reference.values, rtol=0, atol=1e-6, equal_nan=True)


def test_embed_to_zarr_equals_embed(cube, reference, tmp_path, counting):
    store = tmp_path / "emb.zarr"
    emb = xanysat.embed_to_zarr(cube, store, 40, region_blocks=REGION_BLOCKS, progress=False, **OPTIONS)
    assert np.isfinite(reference.values).all()
    _assert_same(emb, reference)
    assert emb.chunks == xanysat.embed(cube, 40, **OPTIONS).chunks  # one chunk per output block
    assert sorted(counting["writes"]) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert set(counting["writes"].values()) == {1}
    assert emb.rio.crs == reference.rio.crs and emb.rio.transform() == reference.rio.transform()
    assert emb.attrs == reference.attrs
    plain = xr.open_zarr(store)  # without xanysat: coordinates, CRS and provenance are in the store
    assert plain["embedding"].rio.crs.to_epsg() == 32631 and "spatial_ref" in plain.coords
    assert plain["embedding"].attrs["weights_sha256_16"] == reference.attrs["weights_sha256_16"]
    assert "anysat_fingerprint" in plain.attrs
    done = zarr.open_array(store, path="anysat_manifest/done", mode="r")
    assert done.shape == (2, 2) and (done[...] == 1).all()


@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")
def test_plain_to_zarr_of_embed(cube, reference, tmp_path):
    """A whole-cube graph that fits: embed(...).to_zarr works as is."""
    store = tmp_path / "plain.zarr"
    xanysat.embed(cube, 40, **OPTIONS).to_zarr(store)
    emb = xr.open_zarr(store)["embedding"]
    _assert_same(emb, reference)
    assert emb.rio.crs == reference.rio.crs


def test_resume_after_a_crash(cube, reference, tmp_path, counting):
    store = tmp_path / "resume.zarr"
    counting["fail_at"] = 2  # after the block of the first region, in the second region
    with dask.config.set(num_workers=1), pytest.raises(RuntimeError, match="injected crash"):
        xanysat.embed_to_zarr(cube, store, 40, region_blocks=REGION_BLOCKS, progress=False, **OPTIONS)
    done = zarr.open_array(store, path="anysat_manifest/done", mode="r")[...] == 1
    finished = {r for r in np.ndindex(*done.shape) if done[r]}
    assert finished == set(counting["writes"]) and 1 <= len(finished) < 4
    first_run = Counter(counting["blocks"])

    counting.update(fail_at=None, calls=0, blocks=Counter(), writes=Counter())
    emb = xanysat.embed_to_zarr(cube, store, 40, progress=False, **OPTIONS)
    _assert_same(emb, reference)
    rerun_regions = {region for region, _ in counting["blocks"]}
    assert rerun_regions == set(np.ndindex(2, 2)) - finished  # finished regions not recomputed
    assert set(counting["blocks"].values()) == {1}  # each block of the other regions computed once
    assert set(counting["writes"]) == rerun_regions and set(counting["writes"].values()) == {1}
    assert not any(region in finished for region, _ in counting["blocks"])
    assert sum(first_run.values()) == 1

    counting.update(blocks=Counter(), writes=Counter())
    xanysat.embed_to_zarr(cube, store, 40, progress=False, **OPTIONS)  # all done: nothing to compute
    assert not counting["blocks"] and not counting["writes"]


def test_resume_with_other_settings_is_refused(cube, tmp_path):
    store = tmp_path / "small.zarr"
    small = cube.isel(y=slice(0, 16), x=slice(0, 8))  # 160 m x 80 m: 2 tiles, 2 blocks, 2 regions
    options = {**OPTIONS, "block_tiles": 1, "region_blocks": 1, "progress": False}
    xanysat.embed_to_zarr(small, store, 40, **options)
    with pytest.raises(ValueError, match=r"patch_size_m: 40 in the store, 20 now.*resume=False"):
        xanysat.embed_to_zarr(small, store, 20, **options)
    with pytest.raises(ValueError, match="normalization"):
        xanysat.embed_to_zarr(small, store, 40, **{**options, "normalize": {"s1-asc": ((0, 0), (1, 1))}})
    with pytest.raises(ValueError, match=r"region_blocks=\(1, 1\)"):
        xanysat.embed_to_zarr(small, store, 40, **{**options, "region_blocks": (2, 1)})
    emb = xanysat.embed_to_zarr(small, store, 20, resume=False, **options)  # overwrite
    assert emb.attrs["patch_size_m"] == 20 and emb.sizes["y"] == 8
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a zarr store")
    with pytest.raises(ValueError, match="new store"):
        xanysat.embed_to_zarr(small, other, 40, **options)


def test_mixed_resolutions(tmp_path):
    """A 30 m sensor beside Sentinel-2: region slices start on a common pixel edge (30 m)."""
    cube = synthetic_cube(("s2", "alos"), extent_m=(270, 150), n_dates=2, chunks={"time": 1, "y": 7, "x": 4})
    options = {"model": MODEL, "tile_size": 120, "overlap": 60, "block_tiles": 1, "normalize": {"alos": False}}
    reference = xanysat.embed(cube, 60, **options).compute()
    emb = xanysat.embed_to_zarr(cube, tmp_path / "m.zarr", 60, region_blocks=1, progress=False, **options)
    _assert_same(emb, reference)


def test_embed_to_zarr_on_a_distributed_client(cube, reference, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
        emb = xanysat.embed_to_zarr(cube, tmp_path / "d.zarr", 40, region_blocks=(1, 2), progress=False,
                                    client=client, **OPTIONS)
    _assert_same(emb, reference)


def _region_tasks(job, region) -> tuple[int, int]:
    emb = io.region_embedding(job, region)
    graph = emb.data.__dask_graph__().cull(set(flatten(emb.data.__dask_keys__())))
    return len(graph), emb.data.npartitions


@pytest.mark.filterwarnings("ignore:the whole-cube graph")
def test_continental_regions_build_bounded_graphs():
    """708 km x 708 km of S2 + S1 (36 dates) and a 4x larger cube: a region's graph is the same size."""
    options = {"model": MODEL, "overlap": 40, "normalize": S1_STATS, "region_blocks": (2, 2)}
    cube = continental_cube(708, n_dates=36)
    xanysat.plan(cube, 40, throughput=20.0, **options)  # loads the model
    tracemalloc.start()
    start = time.perf_counter()
    plan = xanysat.plan(cube, 40, throughput=20.0, **options)
    job = io.prepare(cube, 40, **options)
    region = (11, 7)  # an interior region, away from the cube's edges
    tasks, embed_tasks = _region_tasks(job, region)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"\n708 km: plan + region graph in {seconds:.2f} s, client peak {peak / 1e6:.1f} MB (tracemalloc); "
          f"{tasks} tasks in region {region} ({embed_tasks} embed tasks), plan estimate {plan.tasks_per_region}; "
          f"{job.regions.count} regions")
    assert embed_tasks == math.prod(job.regions.region_blocks) == 4
    assert peak < 200e6
    assert 0.5 < tasks / plan.tasks_per_region < 2
    n_blocks = math.ceil(554 / job.geometry.block_tiles[0])
    assert job.regions.count == plan.n_regions == math.ceil(n_blocks / 2) ** 2

    bigger = io.prepare(continental_cube(1416, n_dates=36), 40, **options)
    assert bigger.regions.count > 3.9 * job.regions.count
    big_tasks, _ = _region_tasks(bigger, region)
    print(f"1416 km: {big_tasks} tasks in region {region}; {bigger.regions.count} regions")
    assert big_tasks == tasks  # bounded by the region, not the cube
