"""The ``xanysat`` command line as a user runs it: a subprocess against a live local STAC API
over real imagery (``tests/helpers/stac_fixtures.py``), the untrained tiny model to keep it fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from helpers.cli import error_line, xanysat
from rasterio.transform import Affine

from xanysat.sensors.table import MODALITIES
from xanysat.stac.server import free_port, serve

pytestmark = pytest.mark.slow

MODEL = ["--model", "untrained-tiny"]
BOTH = ["sentinel-2-l2a", "sentinel-1-rtc"]
# About 330 m x 330 m inside the 1 km WorldCereal cube, in degrees.
BBOX = ["5.3240", "50.6310", "5.3285", "50.6340"]


@pytest.fixture(scope="module")
def broken_api(sample_catalog, tmp_path_factory):
    """The sample items with every asset replaced by garbage bytes named .tif."""
    root = tmp_path_factory.mktemp("broken-catalogue")
    garbage = root / "garbage"
    garbage.mkdir()
    lines = []
    for line in (sample_catalog / "items.ndjson").read_text().splitlines():
        item = json.loads(line)
        for key, asset in item["assets"].items():
            path = garbage / f"{item['id']}_{key}.tif"
            path.write_bytes(b"this is not a GeoTIFF " * 50)
            asset["href"] = path.as_uri()
        lines.append(json.dumps(item))
    for cid in BOTH:
        (root / cid).mkdir()
        collection = json.loads((sample_catalog / cid / "collection.json").read_text())
        (root / cid / "collection.json").write_text(json.dumps(dict(collection, links=[])))
    (root / "items.ndjson").write_text("\n".join(lines) + "\n")
    with serve(root) as url:
        yield url, garbage


def test_console_script_and_info():
    script = Path(sys.executable).parent / "xanysat"
    assert script.is_file() and os.access(script, os.X_OK), f"{script}: pip install -e . installs it"
    done = subprocess.run([str(script), "--help"], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and all(c in done.stdout for c in ("embed", "plan", "map", "info"))
    done = xanysat("info")
    assert done.returncode == 0, done.stderr
    for name in MODALITIES:
        assert f"  {name} " in done.stdout
    assert "planetary-computer:sentinel-2-l2a" in done.stdout and "odc-stac" in done.stdout


def test_plan_reads_no_pixels(broken_api):
    url, garbage = broken_api
    with pytest.raises(rasterio.errors.RasterioIOError):  # not one pixel could be read
        rasterio.open(next(garbage.iterdir()))
    done = xanysat("plan", "--stac", url, "--collections", *BOTH, "--bbox", *BBOX, *MODEL, "--fit-normalization",
                   "--throughput", "2")
    assert done.returncode == 0, done.stderr
    assert "found 24 items" in done.stderr
    report = done.stdout
    assert report.startswith("AnySat embedding plan")
    assert "tiles        1 x 1 = 1 of 360 x 360 m" in report
    assert "patch: 256 features x 9 x 9 cells of 40 m" in report
    assert "EPSG:32631" in report and "tasks" in report and "s1 " in report


def test_embed_resume_and_map(stac_api, tmp_path):
    store = tmp_path / "emb.zarr"
    query = ["--stac", stac_api, "--collections", *BOTH, "--bbox", *BBOX, "--datetime", "2021-04-01/2021-06-30"]
    done = xanysat("embed", *query, *MODEL, "--fit-normalization", "-o", str(store), "--png", str(tmp_path / "e.png"))
    assert done.returncode == 0, done.stderr
    assert "1 of 1 region(s) computed now, 0 already in the store" in done.stderr
    emb = xr.open_zarr(store, decode_coords="all")["embedding"]
    assert emb.rio.crs.to_epsg() == 32631 and emb.sizes == {"feature": 256, "y": 9, "x": 9}
    values = emb.values
    assert np.isfinite(values).all()
    chunks = {p: p.stat().st_mtime_ns for p in (store / "embedding").rglob("*") if p.is_file()}
    assert chunks

    again = xanysat("embed", *query, *MODEL, "--fit-normalization", "-o", str(store))
    assert again.returncode == 0, again.stderr
    assert "0 of 1 region(s) computed now, 1 already in the store" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in chunks} == chunks  # nothing rewritten
    other = xanysat("embed", *query, *MODEL, "--fit-normalization", "--patch-size", "80", "-o", str(store))
    assert other.returncode == 3
    assert "other settings" in error_line(other, "embed") and "--no-resume" in other.stderr
    assert np.array_equal(xr.open_zarr(store)["embedding"].values, values)

    from PIL import Image

    with Image.open(tmp_path / "e.png") as image:
        assert image.format == "PNG" and image.width == image.height - 18  # an 18 px title band
    x, y = float(emb["x"][4]), float(emb["y"][4])
    done = xanysat("map", str(store), "-o", str(tmp_path / "similarity.png"), "--similarity", str(x), str(y))
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "similarity.png") as image:
        assert image.format == "PNG" and image.size[0] >= 9 * 28  # cells upscaled to >= 256 px, a colour bar
    done = xanysat("map", str(store), "-o", str(tmp_path / "map.tif"))
    assert done.returncode == 0, done.stderr
    with rasterio.open(tmp_path / "map.tif") as tif:
        assert tif.crs.to_epsg() == 32631
        assert tif.transform == Affine(40.0, 0.0, float(emb["x"][0]) - 20, 0.0, -40.0, float(emb["y"][0]) + 20)
        assert (tif.count, tif.dtypes[0], tif.shape) == (4, "uint8", (9, 9))  # RGB and alpha
        assert np.unique(tif.read().reshape(4, -1)[:3], axis=1).shape[1] > 20  # distinct colours


def test_unreachable_api_unknown_collection_no_items_exit_3(stac_api, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    store = tmp_path / "a.zarr"
    done = xanysat("embed", "--stac", closed, "--collections", "sentinel-2-l2a", "--bbox", *BBOX, "-o", str(store))
    assert done.returncode == 3
    assert f"cannot reach the STAC API at {closed}" in error_line(done, "embed")
    assert not store.exists()

    done = xanysat("plan", "--stac", stac_api, "--collections", "sentinel-2-l1c", "--bbox", *BBOX)
    assert done.returncode == 3
    assert "['sentinel-2-l1c'] not found" in error_line(done, "plan")

    done = xanysat("plan", "--stac", stac_api, "--collections", "sentinel-2-l2a", "--bbox", "-8.5", "52", "-8", "52.5")
    assert done.returncode == 3
    assert "no items found" in error_line(done, "plan")


def test_unreadable_assets_and_missing_statistics_exit_3(stac_api, broken_api, tmp_path):
    url, _ = broken_api
    store = tmp_path / "never.zarr"
    done = xanysat("embed", "--stac", url, "--collections", "sentinel-1-rtc", "--bbox", *BBOX, "--datetime",
                   "2021-06-10", *MODEL, "--fit-normalization", "-o", str(store))
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert "2 asset(s) cannot be read" in done.stderr
    assert "item 'S1_IW_SIGMA0_20210601_WORLDCEREAL_MONTHLY_MEAN' asset 'vh'" in done.stderr
    assert not store.exists()  # no partial output

    done = xanysat("plan", "--stac", stac_api, "--collections", *BOTH, "--bbox", *BBOX, *MODEL)
    assert done.returncode == 0, done.stderr  # a plan reads no pixel: it needs no statistics
    done = xanysat("embed", "--stac", stac_api, "--collections", *BOTH, "--bbox", *BBOX, *MODEL,
                   "-o", str(tmp_path / "s1.zarr"))
    assert done.returncode == 3
    assert "normalisation statistics for 's1': pass --fit-normalization" in error_line(done, "embed")


def test_map_without_a_store_exits_3(tmp_path):
    done = xanysat("map", str(tmp_path / "missing.zarr"), "-o", str(tmp_path / "m.png"))
    assert done.returncode == 3
    assert "no Zarr store at" in error_line(done, "map")
    (tmp_path / "empty.zarr").mkdir()
    done = xanysat("map", str(tmp_path / "empty.zarr"), "-o", str(tmp_path / "m.tif"))
    assert done.returncode == 3
    assert "holds no 'embedding' written by xanysat" in error_line(done, "map")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.zarr"]


@pytest.mark.parametrize("args", [
    ["embed", "--collections", "sentinel-2-l2a", "--bbox", "5", "50", "6", "51", "-o", "x.zarr"],  # no --stac
    ["plan", "--stac", "http://127.0.0.1:1", "--collections", "s2", "--bbox", "5", "50", "6"],  # 3 numbers
    ["plan", "--stac", "http://127.0.0.1:1", "--collections", "s2", "--bbox", "5", "50", "6", "51",
     "--sensor", "s1asc"],
    ["map", "x.zarr"],  # no -o
    ["frobnicate"],
    [],
])
def test_bad_command_line_exits_2(args, tmp_path):
    done = subprocess.run([sys.executable, "-m", "xanysat.cli", *args], check=False, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert "usage: xanysat" in done.stdout + done.stderr
    assert not list(tmp_path.iterdir())
