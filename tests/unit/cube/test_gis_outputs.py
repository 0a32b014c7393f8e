"""Outputs every GIS tool can open: ``embed_to_zarr`` stores (Zarr v2 read by GDAL/rasterio, v3,
both by xarray and ``open_datatree``), CF attributes and strict-JSON metadata, and the COGs of
``to_cog`` / ``map_to_cog``, each read back with rasterio and checked for CRS, transform and values."""

from __future__ import annotations

import json
from pathlib import Path

import dask
import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
import zarr
from rasterio.enums import ColorInterp
from rasterio.transform import Affine

import xanysat
from xanysat.cube import zarr as io
from xanysat.cube.export import map_to_cog, to_cog
from xanysat.cube.maps import pca_rgb_map, similarity
from xanysat.cube.options import strict_json
from xanysat.testing import synthetic_cube

MODEL = "untrained-tiny"
OPTIONS = {"model": MODEL, "tile_size": 160, "block_tiles": 1, "region_blocks": 1, "progress": False}
EPSG = 32631
# 4 x 8 cells of 40 m from the synthetic cube's corner (600000, 5700000).
TRANSFORM = Affine(40.0, 0.0, 600000.0, 0.0, -40.0, 5700000.0)


@pytest.fixture(scope="module", autouse=True)
def threads():
    with dask.config.set(scheduler="threads"):
        yield


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(("s2",), extent_m=(160, 320), n_dates=2)


@pytest.fixture(scope="module")
def reference(cube):
    return xanysat.embed(cube, 40, model=MODEL, tile_size=160, block_tiles=1).compute()


def _strict(text: str):
    """``json.loads`` refusing the NaN/Infinity tokens strict JSON readers refuse."""
    def refuse(token):
        raise ValueError(f"non-JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def _metadata_files(store: Path) -> list[Path]:
    names = {"zarr.json", ".zattrs", ".zarray", ".zgroup", ".zmetadata"}
    return [p for p in store.rglob("*") if p.name in names]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_store_opens_in_xarray_and_datatree_with_cf_metadata(cube, reference, tmp_path, zarr_format):
    store = tmp_path / "emb.zarr"
    emb = xanysat.embed_to_zarr(cube, store, 40, zarr_format=zarr_format, **OPTIONS)
    assert zarr.open_group(store, mode="r").metadata.zarr_format == zarr_format
    np.testing.assert_allclose(emb.values, reference.values, rtol=1e-6)
    plain = xr.open_zarr(store)["embedding"]  # no decode_coords: the CRS still comes back
    assert plain.rio.crs.to_epsg() == EPSG and plain.rio.transform() == TRANSFORM
    for dim in ("x", "y"):
        assert plain[dim].attrs == {"standard_name": f"projection_{dim}_coordinate", "units": "m",
                                    "axis": dim.upper(), "long_name": f"{dim} coordinate of projection"}
    assert plain.attrs["long_name"] == "AnySat embedding"
    raw = zarr.open_array(store, path="embedding", mode="r").attrs
    assert raw["grid_mapping"] == "spatial_ref" and raw["long_name"] == "AnySat embedding"
    tree = xr.open_datatree(store, engine="zarr")  # the manifest's array has named dims
    assert tree["anysat_manifest"]["done"].dims == ("region_y", "region_x")
    assert (tree["anysat_manifest"]["done"].values == 1).all()
    np.testing.assert_allclose(tree["embedding"].values, reference.values, rtol=1e-6)
    for path in _metadata_files(store):  # every attribute is strict JSON
        _strict(path.read_text())
    _strict(plain.attrs["inputs"]), _strict(plain.attrs["normalization"])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_resume_keeps_the_format(cube, reference, tmp_path, zarr_format, monkeypatch):
    store = tmp_path / "emb.zarr"
    xanysat.embed_to_zarr(cube, store, 40, zarr_format=zarr_format, **OPTIONS)
    zarr.open_array(store, path=f"{io.MANIFEST}/{io.DONE}", mode="r+")[0, 1] = 0  # as if it crashed there
    zarr.open_array(store, path="embedding", mode="r+")[:, :, 4:] = np.nan
    written = []
    write_region = io.write_region
    monkeypatch.setattr(io, "write_region", lambda job, s, region, **kw: (written.append(region),
                                                                          write_region(job, s, region, **kw)))
    other = 5 - zarr_format  # a resumed store keeps its own format
    emb = xanysat.embed_to_zarr(cube, store, 40, zarr_format=other, **OPTIONS)
    assert written == [(0, 1)]
    assert zarr.open_group(store, mode="r").metadata.zarr_format == zarr_format
    np.testing.assert_allclose(emb.values, reference.values, rtol=1e-6)


def test_overwrite_switches_the_format(cube, reference, tmp_path):
    store = tmp_path / "emb.zarr"
    xanysat.embed_to_zarr(cube, store, 40, zarr_format=3, **OPTIONS)
    emb = xanysat.embed_to_zarr(cube, store, 40, zarr_format=2, resume=False, **OPTIONS)
    assert not (store / "zarr.json").exists() and (store / ".zgroup").exists()
    np.testing.assert_allclose(emb.values, reference.values, rtol=1e-6)
    with pytest.raises(ValueError, match="zarr_format must be 2"):
        xanysat.embed_to_zarr(cube, tmp_path / "other.zarr", 40, zarr_format=4, **OPTIONS)


def test_zarr_v2_store_opens_in_rasterio_with_crs(cube, reference, tmp_path):
    store = tmp_path / "emb.zarr"
    xanysat.embed_to_zarr(cube, store, 40, **OPTIONS)  # default: v2
    with rasterio.open(f'ZARR:"{store}":/embedding') as src:
        assert src.crs.to_epsg() == EPSG
        assert src.transform.almost_equals(TRANSFORM)
        assert (src.count, src.height, src.width) == (256, 4, 8)
        np.testing.assert_allclose(src.read(), reference.values, rtol=1e-6)


def test_strict_json_replaces_non_finite_floats():
    value = {"nodata": np.float32("nan"), "list": [1.0, float("inf")], "tuple": (float("-inf"),), "n": 3}
    assert strict_json(value) == {"nodata": "NaN", "list": [1.0, "Infinity"], "tuple": ("-Infinity",), "n": 3}
    json.dumps(strict_json(value), allow_nan=False)


# -- COGs ------------------------------------------------------------------------------------------------------

COG_TRANSFORM = Affine(20.0, 0.0, 500000.0, 0.0, -20.0, 4000000.0)


def _lazy_embedding(features=5, height=300, width=260) -> xr.DataArray:
    """A dask-backed ``(feature, y, x)`` map on EPSG:32631 with a NaN corner (cells with no input)."""
    values = np.random.default_rng(0).normal(size=(features, height, width)).astype("float32")
    values[:, :3, :4] = np.nan
    emb = xr.DataArray(values, dims=("feature", "y", "x"), name="embedding",
                       coords={"feature": np.arange(features), "y": 4000000.0 - 20 * (np.arange(height) + 0.5),
                               "x": 500000.0 + 20 * (np.arange(width) + 0.5)})
    return emb.rio.write_crs("EPSG:32631").rio.write_transform(COG_TRANSFORM).chunk({"y": 128, "x": 100})


def _is_cog(path) -> bool:
    """GDAL's own verdict: a GeoTIFF with the COG layout (ghost header, tiles and overviews in order)."""
    with rasterio.open(path) as src:
        return src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_to_cog_reads_back_in_rasterio_and_xarray(tmp_path):
    emb = _lazy_embedding()
    path = emb.anysat.to_cog(tmp_path / "out" / "emb.tif", blocksize=128)
    assert path == tmp_path / "out" / "emb.tif" and not list(path.parent.glob(".*partial*"))
    with rasterio.open(path) as src:
        assert src.driver == "GTiff" and src.crs.to_epsg() == EPSG and src.transform == COG_TRANSFORM
        assert src.count == 5 and src.dtypes == ("float32",) * 5 and np.isnan(src.nodata)
        assert src.descriptions == tuple(f"feature {i}" for i in range(5))
        assert src.profile["tiled"] and set(src.block_shapes) == {(128, 128)}
        assert src.overviews(1) == [2, 4]
        np.testing.assert_array_equal(src.read(), emb.values)
        assert src.read_masks(1)[:3, :4].max() == 0 and src.read_masks(1)[3:, 4:].min() == 255
    assert _is_cog(path)
    with xr.open_dataarray(path, engine="rasterio") as back:
        assert back.rio.crs.to_epsg() == EPSG
        np.testing.assert_array_equal(back.values, emb.values)


def test_to_cog_of_a_real_embedding_as_float64(reference, tmp_path):
    path = to_cog(reference.to_dataset(), tmp_path / "emb.tif", dtype="float64")
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == EPSG and src.transform == TRANSFORM and src.dtypes[0] == "float64"
        np.testing.assert_array_equal(src.read(), reference.values.astype("float64"))
        assert src.tags()["model_id"] == reference.attrs["model_id"]  # provenance as GDAL metadata


def test_to_cog_errors_name_the_fix(tmp_path):
    emb = _lazy_embedding()
    with pytest.raises(ValueError, match="no CRS: open its store with"):
        to_cog(xr.DataArray(np.zeros((2, 3, 4)), dims=("feature", "y", "x")), tmp_path / "a.tif")
    for dtype in ("int16", "float16"):
        with pytest.raises(ValueError, match="dtype must be float32 or float64"):
            to_cog(emb, tmp_path / "a.tif", dtype=dtype)
    with pytest.raises(ValueError, match="blocksize must be a multiple of 16"):
        to_cog(emb, tmp_path / "a.tif", blocksize=100)
    with pytest.raises(ValueError, match="no 'embedding' variable"):
        to_cog(xr.Dataset(), tmp_path / "a.tif")
    with pytest.raises(ValueError, match=r"dims \(feature, y, x\)"):
        to_cog(emb.isel(x=0), tmp_path / "a.tif")


def test_rgba_map_cog_is_transparent_where_the_embedding_is_nan(tmp_path):
    emb = _lazy_embedding()
    rgba = pca_rgb_map(emb, alpha=True)
    path = map_to_cog(rgba, tmp_path / "map.tif", blocksize=128)
    with rasterio.open(path) as src:
        assert src.count == 4 and src.dtypes == ("uint8",) * 4
        assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha)
        assert src.crs.to_epsg() == EPSG and src.transform == COG_TRANSFORM
        assert src.profile["tiled"] and src.overviews(1) == [2, 4]
        values = src.read()
    np.testing.assert_array_equal(values, rgba.transpose("rgb", "y", "x").values)
    assert (values[3, :3, :4] == 0).all() and (values[3, 3:, 4:] == 255).all()
    assert _is_cog(path)


def test_similarity_map_cog_is_float_with_nodata(tmp_path):
    emb = _lazy_embedding()
    sim = similarity(emb, 500000.0 + 20 * 10.5, 4000000.0 - 20 * 10.5)
    path = map_to_cog(sim, tmp_path / "sim.tif", blocksize=128)
    with rasterio.open(path) as src:
        assert src.count == 1 and src.dtypes[0] == "float32" and np.isnan(src.nodata)
        assert src.crs.to_epsg() == EPSG and src.transform == COG_TRANSFORM
        np.testing.assert_allclose(src.read(1), sim.values, rtol=1e-6)
        assert np.isnan(src.read(1)[:3, :4]).all() and src.read(1)[10, 10] == pytest.approx(1.0)
