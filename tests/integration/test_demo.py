"""The main job end to end, as the README runs it: a local STAC API over real imagery -> map."""

import subprocess
import sys

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from helpers.paths import REPO_ROOT
from PIL import Image

from xanysat.apps.demo import CAPTION_PX, GAP_PX, PANEL_PX

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, "-m", "xanysat.apps.demo", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"demo failed:\n{result.stdout}\n{result.stderr}"
    return out, result


def test_demo_reports_where_results_are(demo):
    out, result = demo
    assert str(out / "embedding.zarr") in result.stdout
    assert str(out / "map.png") in result.stdout
    assert "wall time" in result.stdout and "peak memory" in result.stdout
    assert "STAC API at http://127.0.0.1:" in result.stderr
    assert "24 items" in result.stderr  # 12 Sentinel-2 and 12 Sentinel-1 monthly items


def test_embedding_store_is_georeferenced(demo):
    out, _ = demo
    emb = xr.open_zarr(out / "embedding.zarr")["embedding"]
    assert emb.dims == ("feature", "y", "x") and emb.sizes["y"] == emb.sizes["x"] == 25
    assert emb.rio.crs.to_epsg() == 32631
    np.testing.assert_allclose(np.diff(emb.x.values), 40)
    np.testing.assert_allclose(np.diff(emb.y.values), -40)
    # The WorldCereal grid starts at (664000, 5612120): centres half a patch inside.
    assert emb.x.values[0] == pytest.approx(664020) and emb.y.values[0] == pytest.approx(5612100)
    values = emb.values
    assert np.isfinite(values).all() and values.std() > 0
    assert emb.attrs["sensors"] == ["s2", "s1-asc"]


def test_map_has_three_non_constant_panels(demo):
    out, _ = demo
    image = np.asarray(Image.open(out / "map.png").convert("RGB"))
    assert image.shape == (PANEL_PX + CAPTION_PX, 3 * PANEL_PX + 2 * GAP_PX, 3)
    for index in range(3):
        left = index * (PANEL_PX + GAP_PX)
        assert image[:PANEL_PX, left:left + PANEL_PX].std() > 5, f"panel {index} is (nearly) constant"
