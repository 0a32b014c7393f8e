"""``xanysat.stac`` against a live local STAC API over real imagery (no mocks).

The APIs are ``rustac serve`` over catalogues written by ``xanysat.stac.sample_catalog`` (fixtures in
``tests/helpers/stac_fixtures.py``), or over modified copies written here into temporary directories
(another baseline, another CRS, a missing or corrupt asset, an unknown collection). Ground
truth is read independently: the WorldCereal NetCDF with xarray, COGs with rasterio.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from helpers.worldcereal_truth import (
    BOTH,
    NORTH,
    S2_BANDS,
    WEST,
    X_CENTRES,
    Y_CENTRES,
    YEAR,
    quiet_stac_warnings,
    written_items,
)
from rasterio.warp import Resampling, calculate_default_transform, reproject

import xanysat
from xanysat import stac
from xanysat.errors import StacError
from xanysat.stac.sample_catalog import worldcereal_s1_linear
from xanysat.stac.server import free_port, serve


@pytest.fixture(autouse=True)
def _quiet():
    with quiet_stac_warnings():
        yield


def write_catalogue(directory: Path, source: Path, items: list[dict], renamed: dict | None = None) -> Path:
    """A catalogue that ``serve`` takes: ``items`` plus the collections of ``source`` they use
    (``renamed``: collection id -> new id, the items' ``collection`` changed accordingly)."""
    renamed = renamed or {}
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for cid in sorted({it["collection"] for it in items}):
        collection = json.loads((source / cid / "collection.json").read_text())
        collection["id"] = renamed.get(cid, cid)
        collection["links"] = []
        (directory / collection["id"]).mkdir(exist_ok=True)
        (directory / collection["id"] / "collection.json").write_text(json.dumps(collection))
    for it in items:
        it = dict(it, collection=renamed.get(it["collection"], it["collection"]), links=[])
        lines.append(json.dumps(it))
    (directory / "items.ndjson").write_text("\n".join(lines) + "\n")
    return directory


def month(items: list[dict], yyyymm: str) -> dict:
    (item,) = [it for it in items if it["properties"]["datetime"].startswith(yyyymm)]
    return copy.deepcopy(item)


# -- 1. the whole chain -------------------------------------------------------------------------


@pytest.mark.slow
def test_sentinel1_without_orbit_state_maps_to_s1_unless_told(stac_api, sample_catalog):
    items = stac.search(stac_api, BOTH, datetime=YEAR)
    auto = stac.sensor_sources(items)
    assert sorted(auto) == ["s1", "s2"]
    assert auto["s1"][0].bands == ("VV", "VH")  # VV/VH is derived by embed
    assert auto["s2"][0].source.catalog == "planetary-computer"
    assert auto["s2"][0].source.assets[7] is None  # B8A: absent, embed masks it

    explicit = stac.load(items, sensors={"s2": "sentinel-2-l2a", "s1-asc": "sentinel-1-rtc"}).compute()
    assert sorted(explicit.children) == ["s1-asc", "s2"]
    s1 = stac.load(items, sensors={"s1": "sentinel-1-rtc"})["s1"]["s1"]
    assert np.array_equal(explicit["s1-asc"]["s1-asc"].values, s1.values)

    # Items that say they are ascending feed s1-asc without being told.
    ascending = [i.clone() for i in items]
    for item in ascending:
        if item.collection_id == "sentinel-1-rtc":
            item.properties["sat:orbit_state"] = "ascending"
    assert sorted(stac.sensor_sources(ascending)) == ["s1-asc", "s2"]
    # Descending items are refused for s1-asc, with the way out.
    descending = [i.clone() for i in items if i.collection_id == "sentinel-1-rtc"]
    descending[0].properties["sat:orbit_state"] = "descending"
    assert sorted(stac.sensor_sources(descending)) == ["s1"]
    with pytest.raises(StacError, match=r"'s1-asc' needs sat:orbit_state = 'ascending'.*1 item.*"
                                        r"S1_IW_SIGMA0_20201101.*query=.*or map the collection to 's1'"):
        stac.sensor_sources(descending, {"s1-asc": "sentinel-1-rtc"})
    with pytest.raises(StacError, match="no 'sentinel-2-l2a' source for 's1'.*custom_source"):
        stac.sensor_sources(items, {"s1": "sentinel-2-l2a"})


def test_custom_source_maps_a_collection_the_table_does_not_know(sample_catalog, truth, tmp_path):
    items = []
    for it in written_items(sample_catalog, "sentinel-1-rtc"):
        it = copy.deepcopy(it)
        it["assets"] = {f"{k.upper()}_linear": v for k, v in it["assets"].items()}
        items.append(it)
    root = write_catalogue(tmp_path / "custom", sample_catalog, items, {"sentinel-1-rtc": "worldcereal-sigma0"})
    with serve(root) as url:
        found = stac.search(url, "worldcereal-sigma0", datetime=YEAR)
        with pytest.raises(StacError, match="'worldcereal-sigma0' does not match any sensor.*custom_source"):
            stac.load(found)
        source = stac.custom_source("s1-asc", "worldcereal-sigma0", ["VV_linear", "VH_linear"])
        tree = stac.load(found, sensors={"s1-asc": source})
    da = tree["s1-asc"]["s1-asc"]
    assert da.attrs["stac:catalog"] == "custom" and list(da["band"].values) == ["VV", "VH"]
    assert np.array_equal(da.values, worldcereal_s1_linear(truth["s1_dn"]))  # nodata -32768 from raster:bands
    with pytest.raises(StacError, match=r"'s1-asc' has 2 bands .*one asset key \(or None\) per band, got 1"):
        stac.custom_source("s1-asc", "worldcereal-sigma0", ["VV_linear"])


# -- 2. scaling -----------------------------------------------------------------------------------


def _cog(href: str) -> np.ndarray:
    with rasterio.open(href) as src:
        return src.read(1)


def _repeat(a: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(a, k, axis=0), k, axis=1)


@pytest.mark.slow
def test_earth_search_baseline_04_offset_and_scl_cloud_mask(t29unu_catalog):
    (written,) = written_items(t29unu_catalog)
    with serve(t29unu_catalog) as url:
        items = stac.search(url, "sentinel-2-l2a")
    tree = stac.load(items, cloud_mask=True)
    da = tree["s2"]["s2"]
    assert da.attrs["stac:catalog"] == "earth-search" and da.attrs["cloud_mask"] == "scl"
    # 60 m bands onto the s2 sensor's 10 m grid: the item's own footprint (proj:shape and
    # proj:transform; ES items have no proj:bbox), each 60 m pixel repeated 6 x 6 (nearest), SCL
    # (20 m) 2 x 2. The 60 m product has no B08: the band is absent.
    keys = ["blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir08", "swir16", "swir22"]
    assert list(da["band"].values) == ["B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12"]
    assert da.shape == (1, 9, 1536, 1536)
    t = written["assets"]["red"]["proj:transform"]
    assert (float(da["x"][0]), float(da["y"][0])) == (t[2] + 5, t[5] - 5)
    scl = _repeat(_cog(written["assets"]["scl"]["href"]), 2)
    cloudy = np.isin(scl, stac.SCL_CLOUDY)
    masked = da.values[0]
    unmasked = stac.load(items, cloud_mask=False)["s2"]["s2"].values[0]
    seen = {"clipped": 0, "clouds": 0}
    for b, key in enumerate(keys):
        dn = _repeat(_cog(written["assets"][key]["href"]).astype("float32"), 6)
        units = np.where(dn == 0, np.nan, np.maximum(dn - 1000, 0))  # raw DN - 1000, clipped at 0
        assert np.array_equal(unmasked[b], units, equal_nan=True), key
        assert np.array_equal(masked[b], np.where(cloudy, np.nan, units), equal_nan=True), key
        seen["clipped"] += int(((dn > 0) & (dn < 1000)).sum())
        seen["clouds"] += int((cloudy & (dn > 0)).sum())
    assert seen["clouds"] > 0  # the mask removed real pixels
    assert seen["clipped"] > 0  # some dark pixels sat below the offset
    assert not np.isin(scl[~np.isnan(masked[2])], stac.SCL_CLOUDY).any()

    # The same item with the offset already applied (earthsearch:boa_offset_applied true): no shift.
    stac_item = items[0].clone()
    stac_item.properties["earthsearch:boa_offset_applied"] = True
    red = stac.load([stac_item], cloud_mask=False)["s2"]["s2"].sel(band="B04").values[0]
    dn = _repeat(_cog(written["assets"]["red"]["href"]).astype("float32"), 6)
    assert np.array_equal(red, np.where(dn == 0, np.nan, dn), equal_nan=True)


@pytest.mark.slow
def test_planetary_computer_baseline_offset(sample_catalog, truth, tmp_path):
    s2 = written_items(sample_catalog, "sentinel-2-l2a")
    old, new, reprocessed = month(s2, "2021-06"), month(s2, "2021-07"), month(s2, "2021-08")
    assert old["properties"]["s2:processing_baseline"] < "04.00"
    new["properties"]["s2:processing_baseline"] = "04.00"
    reprocessed["properties"]["s2:processing_baseline"] = "05.09"  # Collection-1 reprocessing of 2021
    root = write_catalogue(tmp_path / "pb", sample_catalog, [old, new, reprocessed])
    with serve(root) as url:
        items = stac.search(url, "sentinel-2-l2a", datetime=YEAR)
    for loader in stac.LOADERS:
        da = stac.load(items, loader=loader)["s2"]["s2"].values
        june, july, august = truth["s2"][7], truth["s2"][8], truth["s2"][9]
        assert np.array_equal(da[0], june, equal_nan=True)  # baseline < 04.00: DN as they are
        assert np.array_equal(da[1], np.maximum(july - 1000, 0), equal_nan=True)
        assert np.array_equal(da[2], np.maximum(august - 1000, 0), equal_nan=True)
        assert (july < 1000).any()  # the clip matters
    pc = xanysat.MODALITIES["s2"].stac[0]
    shifts = {i.properties["s2:processing_baseline"]: stac.baseline_shift(i, pc) for i in items}
    assert shifts == {old["properties"]["s2:processing_baseline"]: 0.0, "04.00": -1000.0, "05.09": -1000.0}


# -- 3. temporal composites ---------------------------------------------------------------------


def _nanmedian(values: np.ndarray, groups) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels (S2 in December, January)
        return np.stack([np.nanmedian(values[g], axis=0) for g in groups])


@pytest.mark.slow
def test_composites_are_medians_dated_mid_period(stac_api, truth):
    items = stac.search(stac_api, BOTH, datetime=YEAR)
    s1 = worldcereal_s1_linear(truth["s1_dn"])

    season = stac.load(items, composite="season")
    # December-February seasons (pandas QS-DEC): Nov | Dec Jan Feb | Mar-May | Jun-Aug | Sep Oct.
    groups = [[0], [1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11]]
    middles = np.array(["2020-10-16T12:00", "2021-01-15T00:00", "2021-04-16T00:00", "2021-07-17T00:00",
                        "2021-10-16T12:00"], dtype="datetime64[ns]")
    for name, values in (("s2", truth["s2"]), ("s1", s1)):
        da = season[name][name]
        assert da.attrs["composite"] == "season"
        assert np.array_equal(da["time"].values, middles)
        assert np.array_equal(da.values, _nanmedian(values, groups), equal_nan=True)

    monthly = stac.load(items, sensors={"s2": "sentinel-2-l2a"}, composite="month")["s2"]["s2"]
    periods = pd.period_range("2020-11", "2021-10", freq="M")
    middle = [p.start_time + (p.end_time + pd.Timedelta(1, "ns") - p.start_time) / 2 for p in periods]
    assert str(middle[1]) == "2020-12-16 12:00:00"
    assert np.array_equal(monthly["time"].values, np.array(middle, dtype="datetime64[ns]"))
    # Lazy cubes keep empty months (all NaN: embed skips such dates); in-memory ones drop them.
    assert np.array_equal(monthly.values, truth["s2"], equal_nan=True)
    raw = stac.load(items, sensors={"s2": "sentinel-2-l2a"})["s2"]["s2"].compute()
    dropped = stac.temporal_composite(raw, "month")
    assert [str(t)[:7] for t in dropped["time"].values] == [str(p) for p in periods if str(p) not in
                                                          ("2020-12", "2021-01")]
    with pytest.raises(StacError, match=r"composite must be one of \['month', 'season', 'year'\] or a pandas"):
        stac.temporal_composite(raw, "fortnightly")


# -- 4. query and CQL2 filters (pgstac backend) -----------------------------------------------------


def test_query_and_cql2_filters_with_pgstac(stac_api_pgstac, stac_api):
    def months(items):
        return sorted(i.id[10:16] for i in items)

    by_query = stac.search(stac_api_pgstac, "sentinel-2-l2a", query={"s2:processing_baseline": {"eq": "03.00"}})
    assert months(by_query) == ["202104", "202105", "202106"]
    by_json = stac.search(stac_api_pgstac, "sentinel-2-l2a",
                          filter={"op": "<", "args": [{"property": "s2:processing_baseline"}, "03.00"]})
    assert months(by_json) == ["202011", "202012", "202101", "202102", "202103"]
    by_text = stac.search(stac_api_pgstac, BOTH, filter="s2:processing_baseline = '03.01'", datetime=YEAR)
    assert months(by_text) == ["202107", "202108", "202109", "202110"]
    cube = stac.load(by_query)["s2"]["s2"]
    assert [str(t)[:7] for t in cube["time"].values] == ["2021-04", "2021-05", "2021-06"]
    with pytest.raises(StacError, match="no items found.*filter="):
        stac.search(stac_api_pgstac, "sentinel-2-l2a", filter="s2:processing_baseline = '09.99'")
    # The memory backend answers a query with no items: the error says why that may be.
    with pytest.raises(StacError, match="does not advertise STAC API query support.*filter the items yourself"):
        stac.search(stac_api, "sentinel-2-l2a", query={"s2:processing_baseline": {"eq": "03.00"}})


# -- 5. bad input -------------------------------------------------------------------------------------


def test_unreachable_api_empty_search_unknown_collection(stac_api):
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StacError, match=rf"cannot reach the STAC API at {closed}.*Connection refused.*Check the URL"):
        stac.search(closed, "sentinel-2-l2a")
    with pytest.raises(StacError, match=r"no items found at .*bbox=\[-8.5, 52.0, -8.0, 52.5\].*Widen the area"):
        stac.search(stac_api, "sentinel-2-l2a", bbox=[-8.5, 52.0, -8.0, 52.5])
    with pytest.raises(StacError, match=r"no items found.*datetime=2019"):
        stac.search(stac_api, BOTH, datetime="2019-01-01/2019-12-31")
    with pytest.raises(StacError, match=r"collection\(s\) \['sentinel-2-l1c'\] not found at .*it serves "
                                        r"\['sentinel-1-rtc', 'sentinel-2-l2a'\]"):
        stac.search(stac_api, ["sentinel-2-l2a", "sentinel-2-l1c"])
    with pytest.raises(StacError, match="no items to load; run a search"):
        stac.load([])


def test_bbox_in_projected_coordinates(stac_api, truth):
    utm = [WEST, NORTH - 1000, WEST + 1000, NORTH]
    with pytest.raises(StacError, match=r"not in degrees.*STAC searches take degrees.*transform_bounds"):
        stac.search(stac_api, "sentinel-2-l2a", bbox=utm)
    items = stac.search(stac_api, "sentinel-2-l2a", datetime="2021-06-01/2021-06-30")
    with pytest.raises(StacError, match=r"not in degrees.*pass bbox_crs= with its CRS"):
        stac.load(items, bbox=utm)
    da = stac.load(items, bbox=utm, bbox_crs="EPSG:32631")["s2"]["s2"]
    assert da.shape == (1, 9, 100, 100)
    assert np.array_equal(da.values[0], truth["s2"][7], equal_nan=True)
    with pytest.raises(StacError, match="empty or inverted"):
        stac.search(stac_api, "sentinel-2-l2a", bbox=[5.33, 50.63, 5.32, 50.64])


def _reprojected(item: dict, directory: Path, epsg: int) -> dict:
    """A copy of ``item`` with every asset warped (nearest, 10 m) to ``epsg``, as real COGs."""
    item = copy.deepcopy(item)
    directory.mkdir(parents=True)
    for key, asset in item["assets"].items():
        with rasterio.open(asset["href"]) as src:
            transform, width, height = calculate_default_transform(
                src.crs, f"EPSG:{epsg}", src.width, src.height, *src.bounds, resolution=10)
            data = np.full((height, width), src.nodata, dtype=src.dtypes[0])
            reproject(rasterio.band(src, 1), data, dst_transform=transform, dst_crs=f"EPSG:{epsg}",
                      resampling=Resampling.nearest, dst_nodata=src.nodata)
            profile = {"driver": "COG", "width": width, "height": height, "count": 1, "dtype": src.dtypes[0],
                       "crs": f"EPSG:{epsg}", "transform": transform, "nodata": src.nodata, "compress": "DEFLATE"}
        path = directory / f"{key}.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data, 1)
        asset.update({"href": path.as_uri(), "proj:shape": [height, width], "proj:transform": list(transform)[:6],
                      "proj:bbox": list(rasterio.transform.array_bounds(height, width, transform))})
    item["properties"]["proj:epsg"] = epsg
    return item


def test_mixed_crs_needs_crs(sample_catalog, truth, tmp_path):
    s2 = written_items(sample_catalog, "sentinel-2-l2a")
    june = month(s2, "2021-06")
    july = _reprojected(month(s2, "2021-07"), tmp_path / "cogs-32632", 32632)
    root = write_catalogue(tmp_path / "mixed", sample_catalog, [june, july])
    with serve(root) as url:
        items = stac.search(url, "sentinel-2-l2a")
    with pytest.raises(StacError, match=r"several CRSs: EPSG:3263[12] \(1 items\), EPSG:3263[12] \(1 items\)\. "
                                        r"Pass crs="):
        stac.load(items)
    for loader in stac.LOADERS:
        node = stac.load(items, crs="EPSG:32631", loader=loader)["s2"].to_dataset()
        da = node["s2"]
        assert node.rio.crs.to_epsg() == 32631
        # The grid covers both footprints (July's, warped there and back, is a little larger).
        assert da.sizes["y"] >= 100 and da.sizes["x"] >= 100
        assert np.isin(X_CENTRES, da["x"].values).all() and np.isin(Y_CENTRES, da["y"].values).all()
        native = da.sel(x=X_CENTRES, y=Y_CENTRES).values
        assert np.array_equal(native[0], truth["s2"][7], equal_nan=True)  # June: untouched
        same = native[1] == truth["s2"][8]
        assert same.mean() > 0.9, (loader, same.mean())  # July: nearest twice, mostly the same pixels


def test_missing_and_corrupt_assets_are_reported_by_item_and_asset(sample_catalog, truth, tmp_path):
    s2 = written_items(sample_catalog, "sentinel-2-l2a")
    june, july = month(s2, "2021-06"), month(s2, "2021-07")
    june["assets"]["B04"]["href"] = (tmp_path / "gone" / "B04.tif").as_uri()
    corrupt = tmp_path / "B11.tif"
    corrupt.write_bytes(Path(july["assets"]["B11"]["href"].removeprefix("file://")).read_bytes()[:300] + b"\0" * 999)
    july["assets"]["B11"]["href"] = corrupt.as_uri()
    root = write_catalogue(tmp_path / "broken", sample_catalog, [june, july])
    with serve(root) as url:
        items = stac.search(url, "sentinel-2-l2a")
    with pytest.raises(StacError) as error:
        stac.load(items, retries=0)
    message = str(error.value)
    assert message.startswith("2 asset(s) cannot be read (after 0 retries):")
    assert f"item '{june['id']}' asset 'B04' ({june['assets']['B04']['href']}): " in message
    assert "No such file or directory" in message
    assert f"item '{july['id']}' asset 'B11' ({corrupt.as_uri()}): " in message
    assert "check_assets=False and fail_on_error=False" in message
    # As the message says: the rest loads, the unreadable bands are NaN.
    for loader in stac.LOADERS:
        da = stac.load(items, check_assets=False, fail_on_error=False, loader=loader)["s2"]["s2"].values
        good = np.ones(da.shape[:2], bool)
        good[0, S2_BANDS.index("B04")] = good[1, S2_BANDS.index("B11")] = False
        assert np.isnan(da[~good]).all(), loader
        assert np.array_equal(da[good], truth["s2"][7:9][good], equal_nan=True), loader
