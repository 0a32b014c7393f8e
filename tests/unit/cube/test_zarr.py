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
from helpers.continental import S1_STATS, continental_cube

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
    with pytest.raises(ValueError, match="new directory"):
        xanysat.embed_to_zarr(small, other, 40, **options)


@pytest.mark.slow
def test_mixed_resolutions(tmp_path):
    """A 30 m sensor beside Sentinel-2: region slices start on a common pixel edge (30 m)."""
    cube = synthetic_cube(("s2", "alos"), extent_m=(270, 150), n_dates=2, chunks={"time": 1, "y": 7, "x": 4})
    options = {"model": MODEL, "tile_size": 120, "overlap": 60, "block_tiles": 1, "normalize": {"alos": False}}
    reference = xanysat.embed(cube, 60, **options).compute()
    emb = xanysat.embed_to_zarr(cube, tmp_path / "m.zarr", 60, region_blocks=1, progress=False, **options)
    _assert_same(emb, reference)


@pytest.mark.slow
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


@pytest.mark.slow
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


# -- writers only delete what they wrote ---------------------------------------------------------------------

SMALL = {**OPTIONS, "block_tiles": 1, "region_blocks": 1, "progress": False}


def _small(cube):
    return cube.isel(y=slice(0, 16), x=slice(0, 8))  # 160 m x 80 m: 2 tiles, 2 blocks, 2 regions


def _files(directory) -> dict:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.mark.parametrize("resume", [True, False])
def test_a_directory_of_other_files_is_refused_and_kept(cube, tmp_path, resume):
    """``resume=False`` used to empty the directory (thesis.tex and data/ gone) after an error that
    told the user to pass it; now nothing is deleted and the message names a new directory."""
    folder = tmp_path / "work"
    (folder / "data").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\documentclass{article}")
    (folder / "data" / "field.csv").write_text("x,y\n1,2\n")
    before = _files(folder)
    with pytest.raises(xanysat.AnySatInputError, match="other files .*data/, thesis.tex") as error:
        xanysat.embed_to_zarr(_small(cube), folder, 40, resume=resume, **SMALL)
    message = str(error.value)
    assert "never deletes what it did not write" in message and "new directory" in message
    suggested = str(folder / "embedding.zarr")
    assert repr(suggested) in message
    assert _files(folder) == before  # nothing deleted, nothing added
    emb = xanysat.embed_to_zarr(_small(cube), suggested, 40, resume=resume, **SMALL)  # the fix works
    assert emb.sizes["y"] == 4 and _files(folder).items() >= before.items()


def test_a_foreign_zarr_store_is_refused_and_kept(tmp_path, cube):
    store = tmp_path / "theirs.zarr"
    xr.Dataset({"ndvi": (("y", "x"), np.ones((3, 3)))}).to_zarr(store, consolidated=False)
    before = _files(store)
    with pytest.raises(xanysat.AnySatInputError, match="not written by xanysat.embed_to_zarr.*new directory"):
        xanysat.embed_to_zarr(_small(cube), store, 40, resume=False, **SMALL)
    assert _files(store) == before
    memory = zarr.storage.MemoryStore()
    zarr.create_array(memory, name="theirs", shape=(2,), dtype="f4")
    with pytest.raises(xanysat.AnySatInputError, match="new store"):
        xanysat.embed_to_zarr(_small(cube), memory, 40, resume=False, **SMALL)
    assert "theirs" in zarr.open_group(memory, mode="r")


@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")
def test_overwriting_our_own_store_deletes_only_its_own_members(cube, tmp_path):
    small, store = _small(cube), tmp_path / "emb.zarr"
    xanysat.embed_to_zarr(small, store, 40, **SMALL)
    (store / "README.txt").write_text("my notes about this embedding")
    (store / "extra").mkdir()
    (store / "extra" / "labels.csv").write_text("1\n")
    emb = xanysat.embed_to_zarr(small, store, 20, resume=False, **SMALL)  # other settings: overwrite
    assert (store / "README.txt").read_text() == "my notes about this embedding"
    assert (store / "extra" / "labels.csv").read_text() == "1\n"
    reference = xanysat.embed(small, 20, **{k: v for k, v in SMALL.items() if k not in ("region_blocks", "progress")})
    _assert_same(emb, reference.compute())
    plain = xr.open_zarr(store)  # consolidated again, with the new shapes
    assert plain["embedding"].shape == reference.shape and plain.attrs["anysat_region_blocks"] == [1, 1]
    again = xanysat.embed_to_zarr(small, store, 20, **SMALL)  # and it resumes as usual
    _assert_same(again, reference.compute())


def test_an_interrupted_overwrite_resumes(cube, tmp_path, monkeypatch):
    """A crash while the store is being (re)created leaves no manifest: the next run creates it again."""
    small, store = _small(cube), tmp_path / "emb.zarr"
    xanysat.embed_to_zarr(small, store, 40, **SMALL)
    to_zarr = xr.Dataset.to_zarr

    def crash(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_zarr", crash)
    with pytest.raises(OSError, match="disk full"):
        xanysat.embed_to_zarr(small, store, 40, resume=False, **SMALL)
    monkeypatch.setattr(xr.Dataset, "to_zarr", to_zarr)
    assert not (store / "anysat_manifest").exists() and not (store / "embedding").exists()
    emb = xanysat.embed_to_zarr(small, store, 40, **SMALL)  # resume=True: created again, then written
    options = {k: v for k, v in SMALL.items() if k not in ("region_blocks", "progress")}
    _assert_same(emb, xanysat.embed(small, 40, **options).compute())


# -- the fingerprint includes the input's identity --------------------------------------------------------


def test_the_same_input_resumes(cube, tmp_path, counting):
    """Rebuilt from the same values (numpy-backed: another memory layout too; dask-backed: the
    same chunks), the input has the same identity and resumes without recomputing."""
    store = tmp_path / "same.zarr"
    small = _small(synthetic_cube(("s2", "s1-asc"), extent_m=(250, 170), n_dates=2))  # numpy-backed
    xanysat.embed_to_zarr(small, store, 40, **SMALL)
    counting.update(blocks=Counter(), writes=Counter())
    fortran = small.map_over_datasets(lambda ds: ds.copy(data={k: np.asfortranarray(v.values) for k, v in
                                                                ds.data_vars.items()}))
    xanysat.embed_to_zarr(fortran, store, 40, **SMALL)
    assert not counting["writes"]
    lazy = tmp_path / "lazy.zarr"
    xanysat.embed_to_zarr(_small(cube), lazy, 40, **SMALL)
    counting.update(blocks=Counter(), writes=Counter())
    rebuilt = synthetic_cube(("s2", "s1-asc"), extent_m=(250, 170), n_dates=2, chunks={"time": 1, "y": 11, "x": 7})
    xanysat.embed_to_zarr(_small(rebuilt), lazy, 40, **SMALL)
    assert not counting["writes"]


def test_changed_pixels_refuse_to_resume(cube, reference, tmp_path, counting):
    """Before: a resumed store returned the old embedding for new pixels, and an interrupted run
    resumed on new pixels was half old, half new. Now the resume is refused, naming the fix."""
    store = tmp_path / "changed.zarr"
    counting["fail_at"] = 2
    with dask.config.set(num_workers=1), pytest.raises(RuntimeError, match="injected crash"):
        xanysat.embed_to_zarr(cube, store, 40, region_blocks=REGION_BLOCKS, progress=False, **OPTIONS)
    counting.update(fail_at=None, calls=0, blocks=Counter(), writes=Counter())
    changed = cube.copy(deep=True)
    changed["s2"]["s2"][0, 0, 0, 0] = changed["s2"]["s2"][0, 0, 0, 0] + 1  # one pixel
    with pytest.raises(ValueError, match=r"the input is not the one the store was written from \(s2: dask:\w+ in "
                                         r"the store, dask:\w+ now\).*new store, or pass resume=False") as error:
        xanysat.embed_to_zarr(changed, store, 40, progress=False, **OPTIONS)
    assert "s1-asc" not in str(error.value).split("(A lazy")[0]  # only the sensor that changed is named
    assert not counting["writes"]
    emb = xanysat.embed_to_zarr(changed, store, 40, resume=False, progress=False, **OPTIONS)
    _assert_same(emb, xanysat.embed(changed, 40, **OPTIONS).compute())
    assert not np.allclose(emb.values, reference.values, equal_nan=True)

    numpy_store = tmp_path / "numpy.zarr"
    small, s2 = _small(synthetic_cube(("s2",), extent_m=(250, 170), n_dates=2)), {**SMALL, "normalize": True}
    xanysat.embed_to_zarr(small, numpy_store, 40, **s2)
    with pytest.raises(ValueError, match=r"s2: values:\w+ in the store, values:\w+ now"):
        xanysat.embed_to_zarr(small * 1.01, numpy_store, 40, **s2)
    with pytest.raises(ValueError, match="the input is not the one"):  # a dask token is not a value hash
        xanysat.embed_to_zarr(small.chunk({"y": 4}), numpy_store, 40, **s2)


def test_a_store_without_input_identity_is_not_resumed(cube, tmp_path):
    """A store written before the identity was recorded cannot be checked: refused, naming the fix."""
    import json

    small, store = _small(cube), tmp_path / "old.zarr"
    xanysat.embed_to_zarr(small, store, 40, **SMALL)
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    fingerprint = json.loads(group.attrs["anysat_fingerprint"])
    del fingerprint["input"]
    group.attrs["anysat_fingerprint"] = json.dumps(fingerprint, sort_keys=True)
    with pytest.raises(ValueError, match="records no identity of its input.*resume=False"):
        xanysat.embed_to_zarr(small, store, 40, **SMALL)


def test_file_inputs_keep_their_identity_across_processes(tmp_path):
    """The same file opened again (here in another process, as a CLI rerun) has the same identity;
    rewritten with other pixels, another one."""
    import subprocess
    import sys

    from xanysat.cube.prepare import prepare

    path = tmp_path / "cube.nc"
    synthetic_cube(("s2",), extent_m=80, n_dates=2)["s2"].to_dataset().to_netcdf(path)
    code = ("import sys, xarray as xr; from xanysat.cube.prepare import prepare; "
            "print(prepare(xr.open_dataset(sys.argv[1], chunks={'y': 4}).rio.write_crs('EPSG:32631'))"
            ".identity()['s2'])")

    def identity_here():
        with xr.open_dataset(str(path), chunks={"y": 4}) as ds:  # as given: xarray's token names the path
            return prepare(ds.rio.write_crs("EPSG:32631")).identity()["s2"]

    first = identity_here()
    other = subprocess.run([sys.executable, "-c", "import rioxarray; " + code, str(path)], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert first.startswith("dask:") and identity_here() == first == other
    time.sleep(0.01)
    (synthetic_cube(("s2",), extent_m=80, n_dates=2, seed=1)["s2"].to_dataset()).to_netcdf(path)
    assert identity_here() != first


def test_write_zarr_replaces_only_its_own_store(tmp_path):
    """What ``xanysat finetune --map out.zarr`` writes with (it used ``to_zarr(mode="w")``, which
    empties the whole directory)."""
    classes = xr.DataArray(np.zeros((2, 3), "int16"), dims=("y", "x"), name="classes").rio.write_crs("EPSG:32631")
    store = tmp_path / "map.zarr"
    io.write_zarr(classes.to_dataset(), store, writer="xanysat finetune --map")
    (store / "notes.txt").write_text("kept")
    io.write_zarr((classes + 1).to_dataset(), store, writer="xanysat finetune --map")
    assert (store / "notes.txt").read_text() == "kept"
    back = xr.open_zarr(store, decode_coords="all")["classes"]
    assert int(back.max()) == 1 and back.rio.crs.to_epsg() == 32631
    with pytest.raises(xanysat.AnySatInputError, match=r"not written by someone else.*output\.zarr"):
        io.write_zarr(classes.to_dataset(), store, writer="someone else")
    (tmp_path / "thesis.tex").write_text("...")
    with pytest.raises(xanysat.AnySatInputError, match="other files"):
        io.write_zarr(classes.to_dataset(), tmp_path, writer="xanysat finetune --map")
    assert (tmp_path / "thesis.tex").read_text() == "..." and (store / "notes.txt").is_file()
