"""``xanysat.stac`` against hostile input and faults: APIs and hosts that never answer or fail at
first, items that disagree on their assets, areas no item covers, searches of nothing.

The misbehaving servers (``tests/fault_servers.py``) run on 127.0.0.1 and stop with each test:
the STAC API in a thread of the test process, the COG host in a child process (GDAL keeps the
GIL through some of its HTTP reads, so a host in a thread could not answer them). Timeouts
are small so that a test that gives up does so within seconds; each bound asserted is far
below the servers' 60 s silence.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pystac
import pytest
from helpers.fault_servers import Faults, file_server, loopback_server, stac_api_routes

from xanysat import stac
from xanysat.errors import StacError
from xanysat.stac.server import free_port

SILENCE_S = 60.0  # how long a hanging server stays silent: far beyond every bound below
FAST = {"timeout": 0.5, "retries": 1}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # affine/shapely inside odc-geo and stackstac
        warnings.filterwarnings("ignore", message=".*does not conform to")
        yield


def catalog_items(catalog: Path, collection: str | None = None) -> list[dict]:
    items = [json.loads(line) for line in (catalog / "items.ndjson").read_text().splitlines()]
    return [it for it in items if collection is None or it["collection"] == collection]


def catalog_collections(catalog: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(catalog.glob("*/collection.json"))]


def month(catalog: Path, yyyymm: str, collection: str = "sentinel-2-l2a") -> dict:
    (item,) = [it for it in catalog_items(catalog, collection) if it["properties"]["datetime"].startswith(yyyymm)]
    return copy.deepcopy(item)


def over_http(items: list[dict], catalog: Path, base: str) -> list[pystac.Item]:
    """The items with every asset href moved from the catalogue's files to ``base``/files/..."""
    moved = []
    for it in copy.deepcopy(items):
        for asset in it["assets"].values():
            relative = Path(asset["href"].removeprefix("file://")).relative_to(catalog)
            asset["href"] = f"{base}/files/{relative.as_posix()}"
        moved.append(pystac.Item.from_dict(it))
    return moved


def as_items(items: list[dict]) -> list[pystac.Item]:
    return [pystac.Item.from_dict(copy.deepcopy(it)) for it in items]


def api_routes(catalog: Path):
    items = catalog_items(catalog)
    return [stac_api_routes(catalog_collections(catalog), lambda base: items)]


def check_threads(before: set[threading.Thread], wait_s: float = 5.0) -> None:
    """Every thread started since ``before`` ends within ``wait_s`` (none left hanging)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left:
            return
        time.sleep(0.05)
    raise AssertionError(f"threads left running: {[t.name for t in left]}")


# -- 1. timeouts and bounded retries: the STAC API -------------------------------------------------


@pytest.mark.parametrize("path, says", [
    ("/", "cannot reach the STAC API at"),
    ("/collections", "listing the collections of the STAC API at"),
    ("/search", "the search at"),
])
def test_search_gives_up_on_an_api_that_never_answers(sample_catalog, path, says):
    before = set(threading.enumerate())
    with loopback_server(api_routes(sample_catalog), Faults(hang_s=SILENCE_S, prefix=path)) as api:
        start = time.monotonic()
        with pytest.raises(StacError) as error:
            stac.search(api.url, "sentinel-2-l2a", **FAST)
        elapsed = time.monotonic() - start
        hung = [r for r in api.requests() if r[1] == path and r[2] == 0]
    message = str(error.value)
    assert message.startswith(f"{says} {api.url}")
    assert "(after 1 retries, 0.5 s per request)" in message and "timed out" in message
    assert "pass a larger timeout= or retries=" in message
    assert len(hung) == 2  # the first try and one retry
    assert elapsed < 15, elapsed
    check_threads(before)


def test_search_retries_an_api_that_fails_at_first(sample_catalog):
    with loopback_server(api_routes(sample_catalog), Faults(fail_first=1)) as api:
        items = stac.search(api.url, "sentinel-2-l2a", retries=1)
        log = api.requests()
    assert len(items) == 12 and {i.collection_id for i in items} == {"sentinel-2-l2a"}
    for path in ("/", "/collections", "/search"):
        statuses = [status for _, p, status in log if p == path]
        assert statuses[:2] == [503, 200], (path, statuses)

    with loopback_server(api_routes(sample_catalog), Faults(fail_first=1)) as api:
        with pytest.raises(StacError, match=rf"cannot reach the STAC API at {api.url} \(after 0 retries, 30 s per "
                                            r"request\): APIError \(HTTP 503\): overloaded.*retries="):
            stac.search(api.url, "sentinel-2-l2a", retries=0)


def test_search_defaults_and_bad_options(sample_catalog):
    assert (stac.DEFAULT_TIMEOUT_S, stac.DEFAULT_RETRIES) == (30.0, 3)
    with loopback_server(api_routes(sample_catalog)) as api:
        assert len(stac.search(api.url, ["sentinel-1-rtc"])) == 12
        sent = len(api.requests())
        for bad in (0, -1, float("nan"), "30"):
            with pytest.raises(StacError, match=r"timeout must be a positive number of seconds \(e\.g\. 30\)"):
                stac.search(api.url, "sentinel-2-l2a", timeout=bad)
        with pytest.raises(StacError, match=r"retries must be an integer >= 0 \(e\.g\. 3\), got -1"):
            stac.search(api.url, "sentinel-2-l2a", retries=-1)
        assert len(api.requests()) == sent  # bad options: refused before any request


def test_an_api_without_collections_endpoint_is_searched_all_the_same(sample_catalog):
    def no_collections(method, path, body, query, base):
        return (404, "text/plain", b"no such endpoint") if path == "/collections" else None

    with loopback_server([no_collections, *api_routes(sample_catalog)]) as api:
        items = stac.search(api.url, "sentinel-2-l2a", timeout=5, retries=0)
        assert ("GET", "/collections", 404) in api.requests()
    assert len(items) == 12


# -- 1. timeouts and bounded retries: the assets ---------------------------------------------------


def test_asset_check_gives_up_on_a_host_that_never_answers(sample_catalog):
    june = month(sample_catalog, "2021-06")
    before = set(threading.enumerate())
    with file_server(sample_catalog, Faults(hang_s=SILENCE_S)) as host:
        items = over_http([june], sample_catalog, host.url)
        start = time.monotonic()
        with pytest.raises(StacError) as error:
            stac.load(items, cloud_mask=False, **FAST)
        elapsed = time.monotonic() - start
        b04 = [r for r in host.requests() if r[1].endswith("/B04.tif")]
    message = str(error.value)
    href = items[0].assets["B04"].href
    assert message.startswith("9 asset(s) cannot be read (after 1 retries):")
    assert f"item '{june['id']}' asset 'B04' ({href}): RasterioIOError: CURL error: Operation timed out" in message
    assert "pass a larger timeout= (now 0.5 s per request) or retries=" in message
    assert len(b04) == 2  # GDAL's first try and its one retry
    assert elapsed < 20, elapsed
    check_threads(before)


@pytest.mark.slow  # a child process serves the COGs
def test_asset_check_and_reads_retry_a_host_that_fails_at_first(sample_catalog):
    june = [month(sample_catalog, "2021-06")]
    local = stac.load(as_items(june), cloud_mask=False)["s2"]["s2"].values
    for loader, check_assets in itertools.product(stac.LOADERS, (True, False)):
        with file_server(sample_catalog, Faults(fail_first=1)) as host:  # a new URL each time: GDAL remembers
            items = over_http(june, sample_catalog, host.url)
            cube = stac.load(items, cloud_mask=False, loader=loader, check_assets=check_assets, retries=2)
            values = cube["s2"]["s2"].values
            statuses = [status for _, path, status in host.requests() if path.endswith("/B03.tif")]
        assert np.array_equal(values, local, equal_nan=True), (loader, check_assets)
        assert statuses[0] == 503 and statuses[1] in (200, 206), statuses  # failed, retried, answered

    with file_server(sample_catalog, Faults(fail_first=1)) as host:
        items = over_http(june, sample_catalog, host.url)
        with pytest.raises(StacError, match=r"9 asset\(s\) cannot be read \(after 0 retries\):\n  item "
                                            r".*HTTP response code: 503"):
            stac.load(items, cloud_mask=False, retries=0)


@pytest.mark.slow  # a child process serves the COGs
@pytest.mark.parametrize("loader", ["odc", "stackstac"])
def test_reads_during_compute_give_up_on_a_host_that_never_answers(sample_catalog, loader):
    june = month(sample_catalog, "2021-06")
    with file_server(sample_catalog, Faults(hang_s=SILENCE_S)) as host:
        items = over_http([june], sample_catalog, host.url)
        cube = stac.load(items, cloud_mask=False, loader=loader, check_assets=False, timeout=0.5, retries=0)
        start = time.monotonic()
        with pytest.raises(StacError) as error:
            cube["s2"]["s2"].compute(scheduler="threads", num_workers=2)
        elapsed = time.monotonic() - start
    message = str(error.value)
    assert f"{host.url}/files/sentinel-2-l2a/{june['id']}/B" in message
    assert "failed after GDAL's retries" in message and "pass a larger timeout= or retries= to load" in message
    if loader == "odc":
        assert message.startswith(f"reading item '{june['id']}' asset 'B")
    assert elapsed < 30, elapsed

    with file_server(sample_catalog, Faults(hang_s=SILENCE_S)) as host, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Error opening")  # stackstac's word for each NaN asset
        items = over_http([june], sample_catalog, host.url)
        cube = stac.load(items, cloud_mask=False, loader=loader, check_assets=False, fail_on_error=False,
                         timeout=0.5, retries=0)
        assert np.isnan(cube["s2"]["s2"].values).all()  # or NaN, when asked


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a named pipe")
def test_asset_check_abandons_a_file_that_blocks(sample_catalog, tmp_path):
    june = month(sample_catalog, "2021-06")
    fifo = tmp_path / "B04.tif"
    os.mkfifo(fifo)  # opening it blocks until someone writes: no timeout reaches it
    june["assets"]["B04"]["href"] = fifo.as_uri()
    items = as_items([june])
    mapped = stac.sensor_sources(items)
    start = time.monotonic()
    with pytest.raises(StacError, match=rf"1 asset\(s\) cannot be read \(after 0 retries\):\n  item '{june['id']}' "
                                        rf"asset 'B04' \({fifo.as_uri()}\): no answer within 1.8 s"):
        stac.verify_assets(mapped, timeout=0.2, retries=0)
    assert time.monotonic() - start < 10
    stuck = [t for t in threading.enumerate() if t.name == "xanysat-asset-check"]
    assert stuck and all(t.daemon for t in stuck)  # left behind, but cannot keep the interpreter alive
    with open(fifo, "wb"):  # unblock it
        pass
    for thread in stuck:
        thread.join(10)
        assert not thread.is_alive()


# -- 2. bands decided from all items ----------------------------------------------------------------


def _without(item: dict, *keys: str) -> dict:
    item = copy.deepcopy(item)
    for key in keys:
        del item["assets"][key]
    return item


@pytest.mark.parametrize("loader", ["odc", "stackstac"])
def test_bands_come_from_all_items_whatever_their_order(sample_catalog, loader):
    june, july = month(sample_catalog, "2021-06"), month(sample_catalog, "2021-07")
    full = stac.load(as_items([june, july]), cloud_mask=False, loader=loader)["s2"]["s2"].values
    results = []
    for order in ([_without(june, "B02"), july], [july, _without(june, "B02")]):
        with pytest.warns(UserWarning, match=rf"s2: 1 of 2 item\(s\) of 'sentinel-2-l2a' lack assets the others "
                                             rf"carry:\n  item '{june['id']}' lacks B02\nThose bands are NaN"):
            da = stac.load(as_items(order), cloud_mask=False, loader=loader)["s2"]["s2"]
        results.append(da.values)
        assert list(da["band"].values)[:2] == ["B02", "B03"]
    assert np.array_equal(results[0], results[1], equal_nan=True)
    b02 = 0
    assert np.isnan(results[0][0, b02]).all()  # June lacks B02
    expected = full.copy()
    expected[0, b02] = np.nan
    assert np.array_equal(results[0], expected, equal_nan=True)


def test_odc_needs_one_item_with_every_band(sample_catalog):
    june, july = month(sample_catalog, "2021-06"), month(sample_catalog, "2021-07")
    patchy = [_without(june, "B02"), _without(july, "B03", "B04")]
    with pytest.raises(StacError, match=rf"2 of 2 item\(s\).*\n  item '{june['id']}' lacks B02\n  item "
                                        rf"'{july['id']}' lacks B03, B04\nNo item carries all of .*loader='stackstac'"):
        stac.load(as_items(patchy), cloud_mask=False)
    full = stac.load(as_items([june, july]), cloud_mask=False)["s2"]["s2"].values
    results = []
    for order in (patchy, patchy[::-1]):
        with pytest.warns(UserWarning, match="lack assets the others carry"):
            results.append(stac.load(as_items(order), cloud_mask=False, loader="stackstac")["s2"]["s2"].values)
    assert np.array_equal(results[0], results[1], equal_nan=True)
    expected = full.copy()
    expected[0, 0] = expected[1, 1] = expected[1, 2] = np.nan
    assert np.array_equal(results[0], expected, equal_nan=True)


# -- 3. empty results are errors --------------------------------------------------------------------


def test_a_bbox_that_misses_the_items_is_an_error(sample_catalog):
    items = as_items([month(sample_catalog, "2021-06"), month(sample_catalog, "2021-06", "sentinel-1-rtc")])
    with pytest.raises(StacError, match=r"bbox \(6.0, 51.0, 6.01, 51.01\) \(EPSG:4326\) overlaps none of the 1 's2' "
                                        r"item\(s\) \(collection sentinel-2-l2a\): they cover \(5.318\d*, 50.628\d*, "
                                        r"5.333\d*, 50.637\d*\) in degrees; the cube would be all NaN\. Pass a bbox"):
        stac.load(items, bbox=(6.0, 51.0, 6.01, 51.01))
    east = (665100.0, 5611120.0, 666000.0, 5612120.0)  # just east of the 1 km square, in its own CRS
    with pytest.raises(StacError, match=r"bbox \(665100.0, .*\) \(EPSG:32631\) overlaps none"):
        stac.load(items, bbox=east, bbox_crs="EPSG:32631")
    corner = (664900.0, 5611120.0, 666000.0, 5612120.0)  # overlaps the square's east edge: loads
    tree = stac.load(items, sensors={"s2": "sentinel-2-l2a"}, bbox=corner, bbox_crs="EPSG:32631", cloud_mask=False)
    assert not np.isnan(tree["s2"]["s2"].values).all()


def test_searching_no_collection_is_an_error():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: the error comes before any request
    for nothing in ([], (), None, [""]):
        with pytest.raises(StacError, match=r"no collection given: collections=.* would search every collection of "
                                            rf"{url}; name at least one, e.g. search\(url, \['sentinel-2-l2a'\]"):
            stac.search(url, nothing)


def test_an_empty_search_is_an_error(sample_catalog):
    with loopback_server(api_routes(sample_catalog)) as api:
        with pytest.raises(StacError, match=rf"collection\(s\) \['landsat-c2-l2'\] not found at {api.url}"):
            stac.search(api.url, "landsat-c2-l2")

    def nothing(base):
        return []

    with loopback_server([stac_api_routes(catalog_collections(sample_catalog), nothing)]) as api:
        with pytest.raises(StacError, match=rf"no items found at {api.url} for collections=\['sentinel-2-l2a'\].*"
                                            "Widen the area or the dates"):
            stac.search(api.url, "sentinel-2-l2a")
