"""``embed`` on a dask.distributed cluster of spawned worker processes.

One ``LocalCluster`` (2 worker processes, 1 thread each, started by spawn) is shared by the
module. Checked: the cluster result equals the threaded-scheduler result; each worker process
loads the model once and keeps it; an in-memory ``AnySat`` reaches the workers through
``$XANYSAT_CACHE``; ``to_zarr`` and ``embed_to_zarr`` from the cluster. That the graph holds
neither the model nor arrays beyond the input data itself is checked without a cluster, in
``tests/unit/cube/test_task_graph.py``.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import xarray as xr

distributed = pytest.importorskip("distributed")

import torch

import xanysat
from xanysat.cube import runtime
from xanysat.testing import synthetic_cube

TIMEOUT_S = 120  # per computation on the cluster
pytestmark = [pytest.mark.slow, *([pytest.mark.timeout(300)] if importlib.util.find_spec("pytest_timeout") else [])]

MODEL = "untrained-tiny"
# 640 m x 480 m of Sentinel-2, 160 m tiles, one tile per block: 4 x 3 = 12 tasks.
EXTENT = (640, 480)
OPTIONS = {"patch_size": 40, "tile_size": 160, "block_tiles": 1}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """``$XANYSAT_CACHE`` for this process and (set before they spawn) the workers."""
    path = tmp_path_factory.mktemp("xanysat-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XANYSAT_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def client(cache):
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                 worker_dashboard_address=":0", memory_limit="4GiB") as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        client.wait_for_workers(2, timeout=TIMEOUT_S)
        yield client


@pytest.fixture(scope="module")
def cube():
    """Dask-backed like a STAC loader: one date per chunk, chunks not aligned with the blocks."""
    return synthetic_cube(("s2",), extent_m=EXTENT, n_dates=3, chunks={"time": 1, "y": 24, "x": 20})


def on_cluster(client, obj):
    return client.compute(obj).result(timeout=TIMEOUT_S)


def worker_models(client) -> dict[str, list]:
    """Per worker: ``(key, id)`` of every model its process holds."""
    return client.run(lambda: sorted((k, id(v)) for k, v in runtime._MODELS.items()))


def test_on_cluster(client, cache, cube, tmp_path):
    """All checks that need the cluster, in one test so that ``pytest -n`` starts one cluster."""
    emb = check_equals_threaded_and_loads_model_once_per_worker(client, cube)
    check_to_zarr(client, cube, emb, tmp_path / "embedding.zarr")
    check_in_memory_model_reaches_workers_through_cache(client, cache, cube)


def check_equals_threaded_and_loads_model_once_per_worker(client, cube):
    # Building the graph loads the model in this process too (model_ref hashes its weights,
    # embed reads embed_dim); the tasks carry only a ModelRef.
    emb = xanysat.embed(cube, model=MODEL, **OPTIONS)
    assert emb.data.numblocks == (1, 4, 3)
    expected = emb.compute(scheduler="threads")

    with distributed.get_task_stream(client) as stream:
        result = on_cluster(client, emb)
    xr.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)
    assert np.isfinite(result.values).all()
    assert result.attrs == expected.attrs and result.rio.crs == cube["s2"]["s2"].rio.crs

    name = emb.data.name
    ran = {}
    for record in stream.data:
        if record["key"][0] == name:
            ran[record["worker"]] = ran.get(record["worker"], 0) + 1
    assert sum(ran.values()) == 12
    assert max(ran.values()) >= 2  # some worker ran several tasks: the cache was reused
    weights = emb.attrs["weights_sha256_16"]
    held = worker_models(client)
    for worker in ran:
        models = [k for k, _ in held[worker] if k[0] == weights]
        assert models == [(weights, "cpu", "float32")], (worker, held[worker])

    # A second run on the same workers reuses the very same model objects.
    on_cluster(client, emb)
    assert worker_models(client) == held
    return emb


def check_in_memory_model_reaches_workers_through_cache(client, cache, cube):
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = xanysat.AnySat(xanysat.AnySatConfig.tiny()).eval()
    emb = xanysat.embed(cube, model=model, **OPTIONS)
    weights = emb.attrs["weights_sha256_16"]
    saved = cache / "models" / weights
    assert (saved / "config.json").is_file()
    assert str(saved) in repr(dict(emb.data.__dask_graph__()))  # the graph names the directory, not the model

    expected = emb.compute(scheduler="threads")  # this process: the registered object itself
    result = on_cluster(client, emb)
    xr.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)
    reference = xanysat.embed(cube, model=MODEL, **OPTIONS).compute(scheduler="threads")
    assert not np.allclose(result.values, reference.values)  # not silently the default model
    held = worker_models(client)
    assert any(k[0] == weights for models in held.values() for k, _ in models)


def check_to_zarr(client, cube, emb, store):
    delayed = emb.to_dataset().to_zarr(store, compute=False, mode="w", consolidated=False)
    on_cluster(client, delayed)
    back = xr.open_dataset(store, engine="zarr", consolidated=False, decode_coords="all")["embedding"]
    expected = emb.compute(scheduler="threads")
    np.testing.assert_allclose(back.values, expected.values, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(back["x"].values, expected["x"].values)
    np.testing.assert_array_equal(back["y"].values, expected["y"].values)
    assert back.rio.crs == expected.rio.crs
    assert back.attrs["weights_sha256_16"] == expected.attrs["weights_sha256_16"]

    # Region by region on the cluster: 2 x 2 regions of up to 2 x 2 blocks.
    regions = xanysat.embed_to_zarr(cube, store.with_name("regions.zarr"), model=MODEL, region_blocks=2,
                                    client=client, progress=False, **OPTIONS)
    np.testing.assert_allclose(regions.values, expected.values, rtol=1e-6, atol=1e-6)
