"""Embedding maps: pca_rgb_map, similarity, save_png on a small xanysat.embed output."""

from __future__ import annotations

import functools

import dask.array
import numpy as np
import pytest
import xarray as xr
from PIL import Image

import xanysat
from xanysat.cube.maps import pca_rgb, pca_rgb_map, save_png, similarity
from xanysat.errors import DimensionError
from xanysat.testing import synthetic_cube

NAN_CELL = (1, 2)  # (row, col) of the cell whose pixels are all NaN


def read(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@functools.lru_cache(maxsize=1)
def lazy_embedding() -> xr.DataArray:
    """6 x 8 cells of 20 m over 120 m x 160 m of Sentinel-2; one cell without any valid pixel."""
    ds = synthetic_cube(("s2",), extent_m=(120, 160), n_dates=3)["s2"].to_dataset()
    r, c = NAN_CELL
    ds["s2"].values[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2] = np.nan
    return xanysat.embed(ds, patch_size=20, model="untrained-tiny")


@pytest.fixture(scope="module")
def emb() -> xr.DataArray:
    return lazy_embedding().compute()


def test_fixture_has_one_nan_cell(emb):
    nan = emb.isnull().any("feature").values
    assert emb.dims == ("feature", "y", "x") and emb.shape[1:] == (6, 8)
    assert nan.sum() == 1 and nan[NAN_CELL]


# -- pca_rgb_map ---------------------------------------------------------------------------


def test_pca_rgb_map_dims_coords_crs_and_laziness():
    lazy = lazy_embedding()
    rgb = pca_rgb_map(lazy)
    assert isinstance(rgb.data, dask.array.Array)
    assert rgb.dims == ("y", "x", "rgb") and rgb.dtype == np.uint8 and rgb.shape == (6, 8, 3)
    assert rgb["rgb"].values.tolist() == ["r", "g", "b"]
    np.testing.assert_array_equal(rgb["x"].values, lazy["x"].values)
    np.testing.assert_array_equal(rgb["y"].values, lazy["y"].values)
    assert rgb.rio.crs == lazy.rio.crs and rgb.rio.crs.to_epsg() == 32631
    assert rgb.attrs["pca_fit_cells"] == 47 and rgb.attrs["model_id"] == lazy.attrs["model_id"]


def test_pca_rgb_map_equals_numpy_pca_rgb_when_fitted_on_all_cells(emb):
    expected = pca_rgb(emb.transpose("y", "x", "feature").values)
    got = pca_rgb_map(emb).values
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert (got == expected).mean() > 0.99
    assert got.reshape(-1, 3).max(axis=0).min() > 200, "each channel should span most of 0-255"


def test_pca_rgb_map_is_deterministic_and_nan_cells_are_black(emb):
    a = pca_rgb_map(emb, fit_sample=20).values
    b = pca_rgb_map(emb.chunk(x=3, y=2), fit_sample=20).values
    np.testing.assert_array_equal(a, b)
    assert (a[NAN_CELL] == 0).all()
    rgba = pca_rgb_map(emb, alpha=True)
    assert rgba["rgb"].values.tolist() == ["r", "g", "b", "a"]
    alpha = rgba.sel(rgb="a").values
    assert alpha[NAN_CELL] == 0 and (alpha == 255).sum() == alpha.size - 1


def test_pca_rgb_map_fits_a_subsample_of_a_large_lazy_map():
    rng = np.random.default_rng(0)
    ramp = np.linspace(-1, 1, 300)
    base = np.stack([np.add.outer(np.zeros(200), ramp), np.add.outer(np.linspace(-1, 1, 200), 0 * ramp)])
    values = np.einsum("kyx,kd->dyx", base, rng.normal(size=(2, 16))) + 0.01 * rng.normal(size=(16, 200, 300))
    emb = xr.DataArray(dask.array.from_array(values, chunks=(16, 100, 100)), dims=("feature", "y", "x"))
    rgb = pca_rgb_map(emb, fit_sample=1000)
    assert rgb.attrs["pca_fit_cells"] == 1000 and isinstance(rgb.data, dask.array.Array)
    red = rgb.sel(rgb="r").values.astype(int)
    # the strongest direction (x ramp) is the first component: red changes along x only
    assert abs(red[:, -1].mean() - red[:, 0].mean()) > 200 and np.abs(np.diff(red, axis=0)).mean() < 10


def test_pca_rgb_map_works_on_point_embeddings():
    points = xr.DataArray(np.random.default_rng(1).normal(size=(10, 8)), dims=("sample", "feature"),
                          coords={"label": ("sample", list("ababababab"))})
    rgb = pca_rgb_map(points)
    assert rgb.dims == ("sample", "rgb") and "label" in rgb.coords


def test_pca_rgb_map_errors():
    with pytest.raises(DimensionError, match="'feature' dim"):
        pca_rgb_map(xr.DataArray(np.zeros((2, 2)), dims=("y", "x")))
    with pytest.raises(ValueError, match="percentiles"):
        pca_rgb_map(xr.DataArray(np.zeros((3, 2, 2)), dims=("feature", "y", "x")), low=50, high=10)


# -- similarity ----------------------------------------------------------------------------


def test_similarity_of_the_query_cell_is_one_and_values_are_cosines(emb):
    x, y = float(emb["x"][5]), float(emb["y"][3])
    sim = similarity(lazy_embedding(), x + 7.0, y - 9.0)  # inside the 20 m cell
    assert isinstance(sim.data, dask.array.Array)
    sim = sim.compute()
    assert sim.dims == ("y", "x") and sim.dtype == np.float32 and sim.name == "similarity"
    assert sim.attrs["query_x"] == x and sim.attrs["query_y"] == y and "x=" in sim.attrs["query"]
    assert sim.sel(x=x, y=y).item() == pytest.approx(1.0, abs=1e-6)
    finite = sim.values[np.isfinite(sim.values)]
    assert finite.size == 47 and (finite >= -1).all() and (finite <= 1).all()
    assert np.isnan(sim.values[NAN_CELL])
    features = emb.transpose("y", "x", "feature").values.astype("float64")
    query = features[3, 5]
    cosine = features @ query / (np.linalg.norm(features, axis=-1) * np.linalg.norm(query))
    np.testing.assert_allclose(sim.values, cosine, atol=1e-6)
    assert sim.rio.crs == emb.rio.crs


def test_similarity_to_a_vector(emb):
    cell = emb.isel(y=0, x=0)
    by_point = similarity(emb, float(cell["x"]), float(cell["y"]))
    by_array = similarity(emb, vector=cell.values)
    by_dataarray = similarity(emb, vector=cell)
    np.testing.assert_allclose(by_array.values, by_point.values, atol=1e-7)
    np.testing.assert_allclose(by_dataarray.values, by_point.values, atol=1e-7)
    assert "vector" in by_array.attrs["query"]
    assert similarity(emb, vector=-cell.values).isel(y=0, x=0).item() == pytest.approx(-1.0, abs=1e-6)


def test_similarity_errors(emb):
    x0, y0 = float(emb["x"].min()), float(emb["y"].max())
    with pytest.raises(DimensionError, match="outside the map"):
        similarity(emb, x0 - 11.0, y0)
    with pytest.raises(DimensionError, match="outside the map"):
        similarity(emb, x0, y0 + 10.5)
    r, c = NAN_CELL
    with pytest.raises(DimensionError, match="NaN at the cell"):
        similarity(emb, float(emb["x"][c]), float(emb["y"][r]))
    with pytest.raises(DimensionError, match="7 values; the embedding has 256 features"):
        similarity(emb, vector=np.ones(7))
    with pytest.raises(DimensionError, match="vector="):
        similarity(emb, x0)
    with pytest.raises(DimensionError, match="not both"):
        similarity(emb, x0, y0, vector=np.ones(256))
    with pytest.raises(DimensionError, match="all zeros"):
        similarity(emb, vector=np.zeros(256))
    with pytest.raises(DimensionError, match="exactly"):
        similarity(emb, x0 + 1.0, y0, method=None)


def test_accessor_forwards_to_the_map_functions(emb, tmp_path):
    np.testing.assert_array_equal(emb.anysat.pca_rgb().values, pca_rgb_map(emb).values)
    x, y = float(emb["x"][0]), float(emb["y"][0])
    np.testing.assert_array_equal(emb.anysat.similarity(x, y).values, similarity(emb, x, y).values)
    with Image.open(emb.anysat.to_png(tmp_path / "a.png")) as image:
        assert image.size == (256, 192)


# -- PNG files -----------------------------------------------------------------------------


def test_png_of_an_embedding_is_its_pca_colours_upscaled(emb, tmp_path):
    path = save_png(emb, tmp_path / "emb.png")
    assert path == tmp_path / "emb.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (8 * 32, 6 * 32)
        pixels = np.asarray(image)
    np.testing.assert_array_equal(pixels[::32, ::32], pca_rgb_map(emb).values)


def test_png_of_an_rgb_map_with_scale_and_title(emb, tmp_path):
    rgb = pca_rgb_map(emb, alpha=True)
    with Image.open(save_png(rgb, tmp_path / "rgb.png", scale=5)) as image:
        assert image.mode == "RGBA" and image.size == (40, 30)
    with Image.open(save_png(rgb.isel(rgb=[0, 1, 2]), tmp_path / "t.png", scale=5, title="PCA")) as image:
        assert image.size == (40, 30 + 18)
    flipped = rgb.isel(y=slice(None, None, -1))  # south-up input is written north-up
    np.testing.assert_array_equal(read(save_png(flipped, tmp_path / "f.png", scale=1)),
                                  read(save_png(rgb, tmp_path / "g.png", scale=1)))


def test_png_of_a_similarity_map_has_a_colour_bar(emb, tmp_path):
    sim = similarity(emb, float(emb["x"][2]), float(emb["y"][4]))
    path = save_png(sim, tmp_path / "sim.png", title="similarity to one cell")
    with Image.open(path) as image:
        assert image.mode == "RGB" and image.height == 6 * 32 + 18 and image.width > 8 * 32
        pixels = np.asarray(image)
    map_part = pixels[18:, : 8 * 32]
    r, c = NAN_CELL
    assert (map_part[r * 32 + 16, c * 32 + 16] == 200).all(), "NaN cells are light grey"
    assert len(np.unique(map_part.reshape(-1, 3), axis=0)) > 20


def test_save_png_errors(tmp_path):
    with pytest.raises(DimensionError, match="2-D"):
        save_png(xr.DataArray(np.zeros(4), dims="x"), tmp_path / "x.png")
    with pytest.raises(DimensionError, match="DataArray or Dataset"):
        save_png(np.zeros((4, 4)), tmp_path / "x.png")


def test_maps_written_to_netcdf_keep_their_crs(emb, tmp_path):
    pytest.importorskip("h5netcdf")
    sim = similarity(emb, float(emb["x"][0]), float(emb["y"][0]))
    rgb = pca_rgb_map(emb)
    for name, da in (("sim", sim), ("rgb", rgb)):
        path = tmp_path / f"{name}.nc"
        da.to_netcdf(path, engine="h5netcdf")
        with xr.open_dataarray(path, engine="h5netcdf") as back:
            assert "spatial_ref" in back.coords and back.rio.crs == emb.rio.crs
            np.testing.assert_array_equal(back.values, da.values)
