"""End to end: `python -m xanysat.demo` writes a georeferenced Zarr cube and a 3-panel PNG."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from PIL import Image

from xanysat.demo import GAP_PX, PANEL_PX, PATCH_SIZE_M
from xanysat.sample_data import treesatai_tile

REPO_ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, "-m", "xanysat.demo", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"demo failed:\n{result.stdout}\n{result.stderr}"
    assert str(out / "embedding.zarr") in result.stdout
    assert "wall time" in result.stdout
    return out


@pytest.fixture(scope="module")
def embedding(demo_out) -> xr.DataArray:
    return xr.open_dataarray(demo_out / "embedding.zarr", engine="zarr", decode_coords="all")


def test_zarr_layout_and_attrs(embedding):
    assert embedding.name == "embedding"
    assert embedding.dims == ("y", "x", "embedding")
    assert embedding.sizes["y"] == embedding.sizes["x"] == 6
    assert embedding.dtype == np.float32
    assert np.isfinite(embedding.values).all()
    assert isinstance(embedding.attrs["model_id"], str) and embedding.attrs["model_id"]
    assert embedding.attrs["patch_size_m"] == PATCH_SIZE_M


def test_zarr_is_georeferenced_on_the_patch_centres(embedding):
    assert embedding.rio.crs.to_epsg() == 25832
    x, y = embedding.x.values, embedding.y.values
    np.testing.assert_allclose(np.diff(x), PATCH_SIZE_M)
    np.testing.assert_allclose(np.diff(y), -PATCH_SIZE_M)

    tile = treesatai_tile(normalize=False)
    _, _, left, _, _, top = tile["transform"]
    right, bottom = left + tile["extent_m"], top - tile["extent_m"]
    assert left < x.min() and x.max() < right
    assert bottom < y.min() and y.max() < top
    # Centres sit half a patch inside the tile edges.
    assert x[0] == pytest.approx(left + PATCH_SIZE_M / 2)
    assert y[0] == pytest.approx(top - PATCH_SIZE_M / 2)


def test_png_has_three_non_constant_panels(demo_out):
    image = np.asarray(Image.open(demo_out / "treesatai_embedding.png").convert("RGB"))
    assert image.shape[1] == 3 * PANEL_PX + 2 * GAP_PX
    assert image.shape[0] >= PANEL_PX
    for index in range(3):
        left = index * (PANEL_PX + GAP_PX)
        panel = image[:PANEL_PX, left : left + PANEL_PX]
        assert panel.std() > 1.0, f"panel {index} is (nearly) constant"
