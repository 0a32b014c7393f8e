"""``xanysat map -o map.tif`` and ``xanysat export`` as a user runs them (a subprocess), on a store
written by ``embed_to_zarr``: COGs read back with rasterio (CRS, transform, values), and bad input
exits 3 with one line on stderr."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from helpers.cli import error_line
from helpers.cli import xanysat as run
from rasterio.enums import ColorInterp
from rasterio.transform import Affine

import xanysat
from xanysat.testing import synthetic_cube

pytestmark = pytest.mark.slow

TRANSFORM = Affine(40.0, 0.0, 600000.0, 0.0, -40.0, 5700000.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A 4 x 8 cell store (Zarr v2) whose cell (0, 0) is NaN (no valid input)."""
    path = tmp_path_factory.mktemp("cli") / "emb.zarr"
    xanysat.embed_to_zarr(synthetic_cube(("s2",), extent_m=(160, 320), n_dates=2), path, 40, model="untrained-tiny",
                          tile_size=160, progress=False)
    zarr.open_array(path, path="embedding", mode="r+")[:, 0, 0] = np.nan
    return path


def test_export_writes_a_cog_of_the_store(store, tmp_path):
    out = tmp_path / "emb.tif"
    done = run("export", str(store), "-o", str(out))
    assert done.returncode == 0, done.stderr
    emb = xr.open_zarr(store, decode_coords="all")["embedding"]
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32631 and src.transform == TRANSFORM
        assert src.count == 256 and src.descriptions[0] == "feature 0" and np.isnan(src.nodata)
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and src.profile["tiled"]
        np.testing.assert_array_equal(src.read(), emb.values)
        assert np.isnan(src.read(1)[0, 0])


def test_map_writes_an_rgba_cog_and_a_float_similarity_cog(store, tmp_path):
    out = tmp_path / "map.tif"
    done = run("map", str(store), "-o", str(out))
    assert done.returncode == 0, done.stderr
    with rasterio.open(out) as src:
        assert src.count == 4 and src.colorinterp[3] == ColorInterp.alpha
        assert src.crs.to_epsg() == 32631 and src.transform == TRANSFORM
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        alpha = src.read(4)
    assert alpha[0, 0] == 0 and (alpha.ravel()[1:] == 255).all()
    sim = tmp_path / "sim.tif"
    done = run("map", str(store), "-o", str(sim), "--similarity", "600060", "5699940")
    assert done.returncode == 0, done.stderr
    with rasterio.open(sim) as src:
        assert src.count == 1 and src.dtypes[0] == "float32" and np.isnan(src.nodata)
        assert src.crs.to_epsg() == 32631 and src.transform == TRANSFORM
        values = src.read(1)
    assert np.isnan(values[0, 0]) and values[1, 1] == pytest.approx(1.0)


@pytest.mark.parametrize("case", ["no store", "png output", "not an embedding"])
def test_export_bad_input_exits_3(store, tmp_path, case):
    target, out = str(store), str(tmp_path / "emb.tif")
    if case == "no store":
        target = str(tmp_path / "missing.zarr")
    elif case == "png output":
        out = str(tmp_path / "emb.png")
    else:
        target = str(tmp_path / "other.zarr")
        xr.Dataset({"classes": (("y", "x"), np.zeros((2, 2)))}).to_zarr(target)
    done = run("export", target, "-o", out)
    assert done.returncode == 3
    line = error_line(done, "export")
    assert {"no store": "no Zarr store at", "png output": "--output must end in .tif or .tiff",
            "not an embedding": "holds no 'embedding'"}[case] in line
