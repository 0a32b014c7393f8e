"""The whole STAC chain against a live local STAC API over real imagery (fixtures in
``tests/helpers/stac_fixtures.py``): search, load with odc-stac and stackstac, embed, Zarr,
PNG, and the same embedding as from the NetCDF's own cube."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from helpers.worldcereal_truth import (
    BOTH,
    MODEL,
    NORTH,
    S2_BANDS,
    WEST,
    X_CENTRES,
    Y_CENTRES,
    YEAR,
    quiet_stac_warnings,
    written_items,
)

import xanysat
from xanysat import stac
from xanysat.cube.maps import save_png
from xanysat.stac.sample_catalog import worldcereal_s1_linear


@pytest.fixture(autouse=True)
def _quiet():
    with quiet_stac_warnings():
        yield

pytestmark = pytest.mark.slow

def items_bbox(catalog: Path) -> list[float]:
    """The union of the catalogue's item bboxes, in degrees."""
    b = np.array([it["bbox"] for it in written_items(catalog)])
    return [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())]


def test_search_load_embed_zarr_png(stac_api, sample_catalog, truth, tmp_path):
    bbox = items_bbox(sample_catalog)
    items = stac.search(stac_api, BOTH, bbox=bbox, datetime=YEAR, max_items=100)
    assert len(items) == 24
    assert len(stac.search(stac_api, BOTH, bbox=bbox, datetime=YEAR, max_items=5)) == 5
    spring = stac.search(stac_api, "sentinel-2-l2a", bbox=bbox, datetime="2021-03-15/2021-05-15")
    assert [i.id[10:16] for i in spring] == ["202103", "202104", "202105"]

    odc = stac.load(items, loader="odc").compute()
    sst = stac.load(items, loader="stackstac").compute()
    assert sorted(odc.children) == sorted(sst.children) == ["s1", "s2"]  # automatic mapping
    for name, bands in (("s2", S2_BANDS), ("s1", ["VV", "VH"])):
        a, b = odc[name].to_dataset(), sst[name].to_dataset()
        assert a.rio.crs.to_epsg() == b.rio.crs.to_epsg() == 32631
        for da in (a[name], b[name]):
            assert da.dims == ("time", "band", "y", "x") and da.dtype == np.float32
            assert da.shape == (12, len(bands), 100, 100)
            assert list(da["band"].values) == bands
            assert np.array_equal(da["x"].values, X_CENTRES) and np.array_equal(da["y"].values, Y_CENTRES)
            assert np.array_equal(da["time"].values, truth["time"])
        assert np.array_equal(a[name].values, b[name].values, equal_nan=True)
        assert a[name].attrs["stac:collection"] == (BOTH[0] if name == "s2" else BOTH[1])
    s2 = odc["s2"]["s2"].values
    assert np.array_equal(s2, truth["s2"], equal_nan=True)  # model units = DN, 65535 -> NaN
    assert np.isnan(s2[1:3]).all() and not np.isnan(s2[0]).any()
    assert np.array_equal(odc["s1"]["s1"].values, worldcereal_s1_linear(truth["s1_dn"]))

    # embed -> Zarr -> PNG, on a 400 m x 400 m part (two CPU cores run the suite).
    part = {"y": slice(20, 60), "x": slice(40, 80)}
    cube = odc.isel(part)
    stats = xanysat.fit_normalization(cube)
    normalize = {"s2": True, "s1": stats["s1"]}
    emb = xanysat.embed(cube, patch_size=40, model=MODEL, normalize=normalize).compute()
    assert np.isfinite(emb.values).all()
    store = tmp_path / "emb.zarr"
    emb.to_dataset().to_zarr(store)
    back = xr.open_zarr(store, decode_coords="all")["embedding"]
    assert back.rio.crs.to_epsg() == 32631
    assert back.sizes == {"feature": 256, "y": 10, "x": 10}
    assert np.array_equal(back["x"].values, WEST + 400 + 20 + 40 * np.arange(10))
    assert np.array_equal(back["y"].values, NORTH - 200 - 20 - 40 * np.arange(10))
    assert np.array_equal(back.values, emb.values)
    png = save_png(back, tmp_path / "emb.png", scale=8)
    from PIL import Image

    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (80, 80) and image.mode == "RGB"
        colours = np.asarray(image)[::8, ::8].reshape(-1, 3)
    assert len(np.unique(colours, axis=0)) > 50  # one colour per cell, not a flat field

    # The cube from STAC embeds exactly like the NetCDF's own cube.
    coords = {"time": truth["time"], "y": Y_CENTRES, "x": X_CENTRES}
    direct = xr.DataTree.from_dict({
        "s2": xr.DataArray(truth["s2"], dims=("time", "band", "y", "x"), name="s2",
                           coords={**coords, "band": S2_BANDS}).to_dataset().rio.write_crs("EPSG:32631"),
        "s1": xr.DataArray(worldcereal_s1_linear(truth["s1_dn"]), dims=("time", "band", "y", "x"), name="s1",
                           coords={**coords, "band": ["VV", "VH"]}).to_dataset().rio.write_crs("EPSG:32631"),
    }).isel(part)
    reference = xanysat.embed(direct, patch_size=40, model=MODEL, normalize=normalize)
    assert np.array_equal(reference.values, emb.values)
