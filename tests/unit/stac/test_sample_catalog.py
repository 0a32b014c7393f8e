"""The local STAC catalogue of real imagery and the live rustac STAC API over it.

Ground truth is the WorldCereal NetCDF decoded here with xarray (independently of
``xanysat.stac.sample_catalog``, which reads it with h5py) and the Sentinel-2 JPEG2000 files of
the shared T29UNU product. Fixtures: ``tests/helpers/stac_fixtures.py``.
"""

from __future__ import annotations

import json
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pystac
import pystac_client
import pytest
import rasterio
import xarray as xr
from helpers.stac_fixtures import port_is_open

from xanysat.sensors.table import MODALITIES
from xanysat.stac.sample_catalog import T29UNU_SAFE, T29UNU_WINDOW, WORLDCEREAL_NC, catalog_hrefs, write_sample_catalog
from xanysat.stac.server import serve

NODATA = 65535
# Cube bounds and pixel centres (EPSG:32631, 10 m).
WEST, NORTH = 664000.0, 5612120.0
X_CENTRES = WEST + 5 + 10 * np.arange(100)
Y_CENTRES = NORTH - 5 - 10 * np.arange(100)
BBOX_INSIDE = [5.32, 50.63, 5.325, 50.635]  # lon/lat, inside the 1 km cube
BBOX_ELSEWHERE = [-8.5, 52.0, -8.0, 52.5]


@pytest.fixture(scope="module")
def cube() -> dict:
    """The NetCDF's S2 DN (uint16) and S1 linear backscatter (float32), ``(time, band, y, x)``."""
    ds = xr.open_dataset(WORLDCEREAL_NC, engine="h5netcdf")
    s2_names = [v for v in ds.data_vars if str(v).startswith("S2-L2A-")]
    s2 = np.stack([ds[v].values for v in s2_names], axis=1)
    dn = np.stack([ds[f"S1-SIGMA0-{p}"].values for p in ("VV", "VH")], axis=1).astype("float64")
    s1 = (10 ** ((20 * np.log10(dn) - 83) / 10)).astype("float32")
    assert s2.dtype == np.uint16 and not (dn == NODATA).any()
    return {"s2": s2, "s2_bands": [v.removeprefix("S2-L2A-") for v in s2_names], "s1": s1,
            "time": ds["t"].values, "x": ds["x"].values, "y": ds["y"].values}


def _items(catalog: Path, collection: str) -> list[dict]:
    lines = (catalog / "items.ndjson").read_text().splitlines()
    items = [json.loads(line) for line in lines]
    return [it for it in items if it["collection"] == collection]


def _local(href: str) -> str:
    assert href.startswith("file:///"), href
    return urlparse(href).path


# -- the files --------------------------------------------------------------------------------


def test_ground_truth_matches_the_tests_reading(cube):
    assert np.array_equal(cube["x"], X_CENTRES) and np.array_equal(cube["y"], Y_CENTRES)
    assert cube["s2_bands"] == ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12"]
    assert str(cube["time"][0])[:10] == "2020-11-01" and len(cube["time"]) == 12


def test_cogs_hold_exactly_the_cube(sample_catalog, cube):
    s2_items = _items(sample_catalog, "sentinel-2-l2a")
    s1_items = _items(sample_catalog, "sentinel-1-rtc")
    assert len(s2_items) == len(s1_items) == 12
    s2 = np.empty_like(cube["s2"])
    s1 = np.empty_like(cube["s1"])
    for t, (i2, i1) in enumerate(zip(s2_items, s1_items)):
        for b, band in enumerate(cube["s2_bands"]):
            with rasterio.open(i2["assets"][band]["href"]) as src:  # file:// URI as is
                assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
                assert (src.count, src.dtypes[0], src.nodata) == (1, "uint16", NODATA)
                assert src.crs.to_epsg() == 32631
                assert tuple(src.transform)[:6] == (10.0, 0.0, WEST, 0.0, -10.0, NORTH)
                s2[t, b] = src.read(1)
        for p, pol in enumerate(("vv", "vh")):
            with rasterio.open(i1["assets"][pol]["href"]) as src:
                assert (src.dtypes[0], src.nodata) == ("float32", -32768)
                s1[t, p] = src.read(1)
    assert np.array_equal(s2, cube["s2"])  # nodata 65535 kept: 2020-12 and 2021-01 are empty
    assert (s2[1:3] == NODATA).all() and not (s2[0] == NODATA).any()
    assert np.array_equal(s1, cube["s1"])


def test_items_follow_planetary_computer_conventions(sample_catalog, cube):
    pc_s2 = MODALITIES["s2"].stac[0]
    pc_s1 = MODALITIES["s1-asc"].stac[0]
    assert (pc_s2.catalog, pc_s2.collection) == ("planetary-computer", "sentinel-2-l2a")
    assert (pc_s1.catalog, pc_s1.collection) == ("planetary-computer", "sentinel-1-rtc")
    times = [str(t)[:10] for t in cube["time"]]
    for collection, keys in (("sentinel-2-l2a", cube["s2_bands"]), ("sentinel-1-rtc", ["vv", "vh"])):
        items = _items(sample_catalog, collection)
        assert [it["properties"]["datetime"][:10] for it in items] == times
        for item in items:
            for field in ("type", "stac_version", "id", "geometry", "bbox", "properties", "links",
                          "assets", "stac_extensions"):
                assert field in item, field
            assert item["stac_version"] == "1.0.0" and item["type"] == "Feature"
            assert item["properties"]["proj:epsg"] == 32631  # item level, as stackstac needs
            assert list(item["assets"]) == keys
            west, south, east, north = item["bbox"]
            assert west < BBOX_INSIDE[0] < BBOX_INSIDE[2] < east
            assert south < BBOX_INSIDE[1] < BBOX_INSIDE[3] < north
            for key, asset in item["assets"].items():
                assert Path(_local(asset["href"])).is_file()
                assert asset["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
                assert asset["proj:shape"] == [100, 100]
                assert asset["proj:transform"] == [10.0, 0.0, WEST, 0.0, -10.0, NORTH]
                (band,) = asset["raster:bands"]
                assert "scale" not in band and "offset" not in band  # PC items carry none
                if collection == "sentinel-2-l2a":
                    assert key in pc_s2.assets
                    assert (band["nodata"], band["data_type"]) == (NODATA, "uint16")
                    (eo,) = asset["eo:bands"]
                    assert eo["name"] == key
                    expected = {"B02": "blue", "B05": "rededge", "B08": "nir", "B11": "swir16"}
                    assert eo["common_name"] == expected.get(key, eo["common_name"])
                else:
                    assert key in pc_s1.assets
                    assert (band["nodata"], band["data_type"]) == (-32768, "float32")
            if collection == "sentinel-2-l2a":
                assert item["properties"]["s2:processing_baseline"] < "04.00"  # no BOA offset
            else:
                assert "sat:orbit_state" not in item["properties"]  # not recorded in the cube
                assert item["properties"]["sar:polarizations"] == ["VV", "VH"]
    baselines = [it["properties"]["s2:processing_baseline"] for it in _items(sample_catalog, "sentinel-2-l2a")]
    assert baselines == ["02.14"] * 5 + ["03.00"] * 3 + ["03.01"] * 4


def test_static_catalogue_is_walkable(sample_catalog):
    # pystac's JSON-schema validation needs jsonschema and the extension schemas from the
    # network, neither of which the test machines have: the fields are checked by hand above.
    root = pystac.Catalog.from_file(str(sample_catalog / "catalog.json"))
    collections = {c.id: c for c in root.get_children()}
    assert sorted(collections) == ["sentinel-1-rtc", "sentinel-2-l2a"]
    items = list(root.get_items(recursive=True))
    assert len(items) == 24
    extent = collections["sentinel-2-l2a"].extent
    assert str(extent.temporal.intervals[0][0])[:10] == "2020-11-01"
    assert catalog_hrefs(sample_catalog)[-1].endswith("items.ndjson")


def test_write_sample_catalog_rejects_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="unknown sources"):
        write_sample_catalog(tmp_path, sources=("landsat",))
    with pytest.raises(ValueError, match="separate directories"):
        write_sample_catalog(tmp_path, sources=("worldcereal", "t29unu"))


@pytest.mark.slow
def test_rewriting_a_directory_drops_the_old_collections(tmp_path):
    if not (T29UNU_SAFE / "MTD_MSIL2A.xml").is_file():
        pytest.skip(f"Sentinel-2 fixture {T29UNU_SAFE} not present")
    write_sample_catalog(tmp_path)
    write_sample_catalog(tmp_path, sources=("t29unu",))
    assert [Path(h).parent.name for h in catalog_hrefs(tmp_path)[:-1]] == ["sentinel-2-l2a"]
    assert not (tmp_path / "sentinel-1-rtc").exists()
    assert len((tmp_path / "items.ndjson").read_text().splitlines()) == 1


def test_another_catalogue_is_left_alone(tmp_path):
    """Writers only delete what they wrote: a directory holding another STAC catalogue is refused
    before anything of it is deleted or overwritten."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "collection.json").write_text('{"id": "mine"}')
    catalog = {"type": "Catalog", "id": "my-catalogue", "links": [{"rel": "child", "href": "./mine/collection.json"}]}
    (tmp_path / "catalog.json").write_text(json.dumps(catalog))
    (tmp_path / "items.ndjson").write_text("{}\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="not written by write_sample_catalog.*new directory"):
        write_sample_catalog(tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


# -- the live API ---------------------------------------------------------------------------


def test_search_by_collection_bbox_datetime_and_max_items(stac_api):
    client = pystac_client.Client.open(stac_api)
    assert sorted(c.id for c in client.get_collections()) == ["sentinel-1-rtc", "sentinel-2-l2a"]

    def ids(**kwargs):
        return [item.id for item in client.search(**kwargs).items()]

    s2 = ids(collections=["sentinel-2-l2a"], max_items=100)
    assert len(s2) == 12 and all(i.startswith("S2_MSIL2A_") for i in s2)
    assert len(ids(collections=["sentinel-1-rtc", "sentinel-2-l2a"], bbox=BBOX_INSIDE)) == 24
    assert ids(bbox=BBOX_ELSEWHERE) == []
    # Items span their month (start/end_datetime): a mid-April instant hits both April items.
    assert sorted(ids(datetime="2021-04-15T12:00:00Z")) == [
        "S1_IW_SIGMA0_20210401_WORLDCEREAL_MONTHLY_MEAN", "S2_MSIL2A_20210401_WORLDCEREAL_MONTHLY_MEDIAN"]
    spring = ids(collections=["sentinel-2-l2a"], datetime="2021-03-15/2021-05-15")
    assert spring == [f"S2_MSIL2A_2021{m:02d}01_WORLDCEREAL_MONTHLY_MEDIAN" for m in (3, 4, 5)]
    assert ids(collections=["sentinel-2-l2a"], datetime="2019-01-01/2019-12-31") == []
    # max_items stops the paging (limit=2 forces several pages).
    assert len(ids(collections=["sentinel-2-l2a"], max_items=5, limit=2)) == 5
    assert len(ids(collections=["sentinel-2-l2a"], limit=2, max_items=None)) == 12
    assert ids(ids=["S2_MSIL2A_20210601_WORLDCEREAL_MONTHLY_MEDIAN"]) == ["S2_MSIL2A_20210601_WORLDCEREAL_MONTHLY_MEDIAN"]


def test_served_items_equal_the_written_ones(stac_api, sample_catalog):
    client = pystac_client.Client.open(stac_api)
    served = {it["id"]: it for it in client.search(max_items=100).items_as_dicts()}
    written = {it["id"]: it for c in ("sentinel-2-l2a", "sentinel-1-rtc") for it in _items(sample_catalog, c)}
    assert served.keys() == written.keys()
    for item_id, item in served.items():
        rels = [link["rel"] for link in item.pop("links")]
        assert rels.count("root") == 1 and "self" in rels  # only the server's links
        assert {k: v for k, v in item.items() if k != "links"} == {
            k: v for k, v in written[item_id].items() if k != "links"}


def test_memory_backend_returns_nothing_for_query_and_filter(stac_api):
    """rustac's memory backend cannot evaluate ``query``/``filter``: it answers with no
    items at all (not with every item), so clients must filter on their side."""
    client = pystac_client.Client.open(stac_api)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pystac-client: server does not conform to QUERY/FILTER
        by_query = client.search(collections=["sentinel-2-l2a"],
                                 query={"s2:processing_baseline": {"eq": "03.00"}}, max_items=100)
        assert list(by_query.items()) == []
        by_filter = client.search(collections=["sentinel-2-l2a"], filter_lang="cql2-json",
                                  filter={"op": "=", "args": [{"property": "s2:processing_baseline"}, "03.00"]})
        assert list(by_filter.items()) == []


def test_pgstac_backend_filters(stac_api_pgstac):
    client = pystac_client.Client.open(stac_api_pgstac)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rustac does not advertise the query conformance class
        by_query = client.search(collections=["sentinel-2-l2a"],
                                 query={"s2:processing_baseline": {"eq": "03.00"}}, max_items=100)
        assert sorted(i.id for i in by_query.items()) == [
            f"S2_MSIL2A_2021{m:02d}01_WORLDCEREAL_MONTHLY_MEDIAN" for m in (4, 5, 6)]
        by_cql2 = client.search(collections=["sentinel-2-l2a"], filter_lang="cql2-json", filter={
            "op": "<", "args": [{"property": "s2:processing_baseline"}, "03.00"]})
        assert len(list(by_cql2.items())) == 5
        by_text = client.search(filter="s2:processing_baseline = '03.01'", filter_lang="cql2-text")
        assert len(list(by_text.items())) == 4
    assert len(list(client.search(bbox=BBOX_INSIDE, datetime="2021-04-15T12:00:00Z").items())) == 2
    assert len(list(client.search(collections=["sentinel-1-rtc"], max_items=100).items())) == 12


# -- loaders --------------------------------------------------------------------------------


def test_odc_stac_reads_the_cube_from_the_api(stac_api, cube):
    odc_stac = pytest.importorskip("odc.stac")
    client = pystac_client.Client.open(stac_api)
    items = list(client.search(collections=["sentinel-2-l2a"]).items())
    ds = odc_stac.load(items, bands=cube["s2_bands"], chunks={})
    s2 = ds.to_dataarray("band").transpose("time", "band", "y", "x")
    assert s2.dtype == np.uint16  # odc-stac keeps the DN
    assert np.array_equal(s2.values, cube["s2"])
    assert np.array_equal(s2["x"].values, X_CENTRES) and np.array_equal(s2["y"].values, Y_CENTRES)
    assert np.array_equal(s2["time"].values, cube["time"])
    assert ds.odc.geobox.crs.epsg == 32631

    s1_items = list(client.search(collections=["sentinel-1-rtc"]).items())
    s1 = odc_stac.load(s1_items, bands=["vv", "vh"]).to_dataarray("band").transpose("time", "band", "y", "x")
    assert s1.dtype == np.float32 and np.array_equal(s1.values, cube["s1"])


def test_stackstac_reads_the_cube_from_the_api(stac_api, cube):
    stackstac = pytest.importorskip("stackstac")
    client = pystac_client.Client.open(stac_api)
    # Dicts, not pystac Items: pystac >= 1.12 migrates proj:epsg to proj:code on reading, and
    # stackstac reads only proj:epsg (stackstac#262).
    items = list(client.search(collections=["sentinel-2-l2a"]).items_as_dicts())
    s2 = stackstac.stack(items, assets=cube["s2_bands"], xy_coords="center", rescale=False,
                         dtype="uint16", fill_value=np.uint16(NODATA)).compute()
    assert s2.dims == ("time", "band", "y", "x")
    assert np.array_equal(s2.values, cube["s2"])
    assert np.array_equal(s2["x"].values, X_CENTRES) and np.array_equal(s2["y"].values, Y_CENTRES)
    assert list(s2["band"].values) == cube["s2_bands"]
    assert np.array_equal(s2["time"].values, cube["time"])

    s1_items = list(client.search(collections=["sentinel-1-rtc"]).items_as_dicts())
    # rescale=False: stackstac refuses float32 output when it would apply raster:bands.
    s1 = stackstac.stack(s1_items, assets=["vv", "vh"], xy_coords="center", rescale=False,
                         dtype="float32", fill_value=np.float32(np.nan)).compute()
    assert np.array_equal(s1.values, cube["s1"])


# -- the server ------------------------------------------------------------------------------


@pytest.mark.slow
def test_serve_stops_the_server_and_reports_failures(sample_catalog, tmp_path):
    with serve(sample_catalog) as url:
        assert port_is_open(url)
        assert pystac_client.Client.open(url).get_collection("sentinel-1-rtc").id == "sentinel-1-rtc"
    assert not port_is_open(url)

    with pytest.raises(FileNotFoundError, match="items.ndjson"), serve(tmp_path):
        pass
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    with pytest.raises(RuntimeError, match="rustac_cli.py serve") as err, serve([broken], timeout=20):
        pass
    assert str(broken) in str(err.value)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="Address already in use"), serve(sample_catalog, port=port, timeout=20):
            pass


# -- Earth Search layout: the T29UNU crop ---------------------------------------------------


def _jp2(band: str, resolution: int) -> Path:
    return next((T29UNU_SAFE / "GRANULE").glob(f"*/IMG_DATA/R{resolution}m/*_{band}_{resolution}m.jp2"))


def test_t29unu_item_in_earth_search_layout(t29unu_catalog):
    (item,) = _items(t29unu_catalog, "sentinel-2-l2a")
    es = MODALITIES["s2"].stac[1]
    assert es.catalog == "earth-search"
    assert item["id"] == "S2A_29UNU_20221005_0_L2A"
    props = item["properties"]
    assert props["s2:processing_baseline"] == "04.00"
    assert props["earthsearch:boa_offset_applied"] is False  # raw DN, offset still in them
    assert props["proj:epsg"] == 32629 and props["datetime"].startswith("2022-10-05T11:56:49")
    keys = set(item["assets"])
    assert keys == {"coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir08",
                    "nir09", "swir16", "swir22", "scl"}
    assert keys - {"coastal", "nir09"} <= set(es.assets) | {es.qa_asset}
    for key, asset in item["assets"].items():
        (band,) = asset["raster:bands"]
        assert band["nodata"] == 0
        if key == "scl":
            assert (band["data_type"], asset["proj:shape"]) == ("uint8", [768, 768])
            assert "scale" not in band
        else:
            assert asset["eo:bands"][0]["name"] == key
            assert (band["scale"], band["offset"]) == (0.0001, -0.1)  # BOA_ADD_OFFSET -1000
            assert asset["proj:shape"] == [256, 256]
    assert item["assets"]["nir08"]["eo:bands"][0]["common_name"] == "nir08"


def test_t29unu_cogs_hold_the_jp2_pixels(t29unu_catalog):
    (item,) = _items(t29unu_catalog, "sentinel-2-l2a")
    win = T29UNU_WINDOW
    for key, band, res, factor in (("red", "B04", 60, 1), ("swir22", "B12", 60, 1), ("scl", "SCL", 20, 3)):
        with rasterio.open(_jp2(band, res)) as src:
            window = rasterio.windows.Window(win.col_off * factor, win.row_off * factor,
                                             win.width * factor, win.height * factor)
            expected = src.read(1, window=window)
            transform = src.window_transform(window)
        with rasterio.open(item["assets"][key]["href"]) as cog:
            assert np.array_equal(cog.read(1), expected)
            assert cog.transform == transform and cog.crs.to_epsg() == 32629
            assert cog.nodata == 0
    with rasterio.open(item["assets"]["red"]["href"]) as cog:
        red = cog.read(1)
    assert 0.1 < (red == 0).mean() < 0.5  # the crop has real nodata and real data


def test_t29unu_loaders_apply_or_keep_the_offset(t29unu_catalog):
    stackstac = pytest.importorskip("stackstac")
    odc_stac = pytest.importorskip("odc.stac")
    (item,) = _items(t29unu_catalog, "sentinel-2-l2a")
    with rasterio.open(_local(item["assets"]["red"]["href"])) as cog:
        dn = cog.read(1)
    # stackstac applies raster:bands (DN * 1e-4 - 0.1) and turns nodata into NaN.
    red = stackstac.stack([item], assets=["red"], xy_coords="center").compute().values[0, 0]
    valid = dn != 0
    assert np.isnan(red[~valid]).all()
    np.testing.assert_allclose(red[valid], dn[valid] * 1e-4 - 0.1, rtol=0, atol=1e-12)
    # odc-stac keeps the DN; on a 20 m grid the 60 m band repeats 3 x 3 and SCL is native.
    ds = odc_stac.load([pystac.Item.from_dict(item)], bands=["red", "scl"], resolution=20)
    assert ds["red"].dtype == np.uint16
    assert np.array_equal(ds["red"].values[0], np.repeat(np.repeat(dn, 3, axis=0), 3, axis=1))
    with rasterio.open(_local(item["assets"]["scl"]["href"])) as cog:
        assert np.array_equal(ds["scl"].values[0], cog.read(1))
