"""The graph ``embed`` builds holds neither the model nor arrays beyond the input data
itself: what a dask.distributed scheduler would ship to its workers, checked without a
cluster (the cluster itself: ``tests/integration/test_distributed.py``)."""

from __future__ import annotations

import importlib.util
import pickle

import numpy as np
import pytest
import xarray as xr

cloudpickle = pytest.importorskip("cloudpickle")

import dask.array as da
import torch

import xanysat
from xanysat.testing import synthetic_cube

pytestmark = [pytest.mark.timeout(300)] if importlib.util.find_spec("pytest_timeout") else []

MODEL = "untrained-tiny"
# 640 m x 480 m of Sentinel-2, 160 m tiles, one tile per block: 4 x 3 = 12 tasks.
EXTENT = (640, 480)
OPTIONS = {"patch_size": 40, "tile_size": 160, "block_tiles": 1}
TASK_BYTES = 100_000


def test_graph_holds_no_model_and_no_big_arrays():
    # numpy-backed input: xarray's .chunk puts the (normalised, float32) data into the graph as
    # one literal per chunk, so the graph holds the input once and nothing else that is large.
    cube = synthetic_cube(("s2",), extent_m=EXTENT, n_dates=3)
    emb = xanysat.embed(cube, model=MODEL, **OPTIONS)
    graph = dict(emb.data.__dask_graph__())
    name = emb.data.name
    tasks = {k: v for k, v in graph.items() if k[0] == name}
    assert len(tasks) == 12
    sizes = [len(cloudpickle.dumps(v)) for v in tasks.values()]
    assert max(sizes) < 10_000, sizes
    others = [len(cloudpickle.dumps(v)) for k, v in graph.items() if k[0] != name]
    assert max(others) < TASK_BYTES
    input_bytes = cube["s2"]["s2"].size * 4
    assert len(cloudpickle.dumps(graph)) < input_bytes + TASK_BYTES
    for value in graph.values():
        assert not isinstance(value, (torch.nn.Module, torch.Tensor))

    # Lazily generated input (as from a STAC loader): the whole graph is small.
    s2 = cube["s2"]["s2"]
    m = xanysat.MODALITIES["s2"].norm
    mean = xr.DataArray(np.asarray(m.mean, "float32"), dims="band")
    std = xr.DataArray(np.asarray(m.std, "float32"), dims="band")
    noise = da.random.default_rng(0).standard_normal(s2.shape, chunks=(1, -1, 32, 32), dtype="float32")
    lazy = (mean + std * s2.copy(data=noise)).transpose(*s2.dims).rename("s2")
    tree = xr.DataTree.from_dict({"s2": lazy.to_dataset().rio.write_crs(cube["s2"]["s2"].rio.crs)})
    emb = xanysat.embed(tree, model=MODEL, **OPTIONS)
    graph = dict(emb.data.__dask_graph__())
    assert len(cloudpickle.dumps(graph)) < TASK_BYTES
    assert len(pickle.dumps(emb.data.__dask_graph__(), protocol=5)) < TASK_BYTES
