"""``xanysat.embed`` on datacubes: the same numbers as direct model calls on the same tiles,
whatever the chunks, at the edges, with halos, missing data, and on real cubes."""

import json
import math
import warnings

import dask
import dask.array
import numpy as np
import pytest
import torch
import xarray as xr
from helpers.cubes import direct, doy, node, normalise, reference, sensor_numpy, tiny_model, worldcereal_tree

import xanysat
from xanysat.sensors.table import MODALITIES
from xanysat.testing import synthetic_cube

MODEL = "untrained-tiny"
TOL = {"rtol": 1e-5, "atol": 1e-5}
EXTENT = (160, 240)  # 16 x 24 px of s2
PATCH, TILE = 20, 80  # 2 x 3 tiles of 4 x 4 patches
ORIGIN = (600_000.0, 5_700_000.0)
S1_STATS = ((0.1, 0.03, 4.0), (0.08, 0.02, 3.0))  # VV, VH, VV/VH (linear backscatter and ratio)


def embed(cube, **kwargs):
    kwargs = {"patch_size": PATCH, "tile_size": TILE, "block_tiles": 1, "model": MODEL, **kwargs}
    return xanysat.embed(cube, **kwargs)


def values(emb) -> np.ndarray:
    return np.asarray(emb.values, dtype="float64")


def assert_same(actual, expected):
    """Equal within 1e-5, NaN where the other is NaN."""
    actual, expected = np.asarray(actual, "float64"), np.asarray(expected, "float64")
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual, expected, **TOL)


def s2_reference(tree, extent=EXTENT, **kwargs):
    values_, days = sensor_numpy(tree, "s2")
    kwargs = {"patch_size": PATCH, "tile_m": TILE, **kwargs}
    return reference({"s2": (normalise(values_, "s2"), days)}, extent, **kwargs)


@pytest.fixture(scope="module")
def s2_cube():
    return synthetic_cube(("s2",), extent_m=EXTENT, n_dates=3, seed=1)


@pytest.fixture(scope="module")
def s2_expected(s2_cube):
    return values(embed(s2_cube))


# -- 1. chunk invariance ----------------------------------------------------------------------

CHUNKINGS = {
    "smaller-than-a-tile": {"y": 3, "x": 5},
    "uneven": {"y": (5, 11), "x": (7, 9, 8), "band": (4, 6)},
    "time-by-1": {"time": 1, "y": 16, "x": 24},
    "one-chunk": {"time": -1, "y": -1, "x": -1},
}


@pytest.mark.parametrize("chunks", CHUNKINGS.values(), ids=CHUNKINGS.keys())
def test_chunk_invariance(s2_cube, s2_expected, chunks):
    assert isinstance(s2_cube["s2"]["s2"].data, np.ndarray)  # s2_expected: numpy-backed
    cube = s2_cube.chunk(chunks)
    emb = embed(cube)
    assert emb.chunks[1:] == ((4, 4), (4, 4, 4))  # one output chunk per block of one tile
    assert_same(values(emb), s2_expected)


def test_blocks_and_batches_do_not_change_results(s2_cube):
    raw = s2_cube["s2"]["s2"].values.copy()
    raw[1, :, 0:8, 0:8] = np.nan  # tile (0, 0) lacks a date the other tiles have
    raw[2, :, 8:16, 16:24] = np.nan  # and tile (1, 2) another
    tree = xr.DataTree.from_dict({"s2": node(raw, "s2", times=s2_cube["s2"]["time"].values)})
    one_by_one = values(embed(tree, batch_size=1))
    assert_same(values(embed(tree, block_tiles=(2, 3), batch_size=16)), one_by_one)
    assert_same(values(embed(tree, block_tiles=(1, 2), batch_size=2)), one_by_one)
    assert_same(one_by_one, s2_reference(tree))


# -- 2. equality with direct model calls -------------------------------------------------------

@pytest.mark.parametrize("output", ["patch", "tile", "dense"])
def test_equals_direct_model_calls(s2_cube, s2_expected, output):
    emb = embed(s2_cube, output=output)
    expected = s2_reference(s2_cube, output=output)
    cells = {"patch": (8, 12), "tile": (2, 3), "dense": (16, 24)}[output]
    assert emb.shape[1:] == cells
    size = {"patch": PATCH, "tile": TILE, "dense": 10}[output]  # dense: one cell per s2 pixel
    np.testing.assert_allclose(emb["x"], ORIGIN[0] + (np.arange(cells[1]) + 0.5) * size)
    np.testing.assert_allclose(emb["y"], ORIGIN[1] - (np.arange(cells[0]) + 0.5) * size)
    assert tuple(emb.rio.resolution()) == (size, -size)
    assert np.isfinite(expected).all()
    assert_same(values(emb), expected)
    if output == "patch":
        assert_same(s2_expected, expected)


def test_one_tile_by_hand(s2_cube, s2_expected):
    """Tile (1, 2) by hand: its pixels, table normalisation, 1-based day of year."""
    da = s2_cube["s2"]["s2"]
    tile = da.isel(y=slice(8, 16), x=slice(16, 24)).values.astype("float64")
    mean = np.asarray(MODALITIES["s2"].norm.mean)[:, None, None]
    std = np.asarray(MODALITIES["s2"].norm.std)[:, None, None]
    days = [t.timetuple().tm_yday for t in da["time"].to_index()]
    y = direct({"s2": (tile - mean) / std}, {"s2": days}, PATCH)
    assert_same(s2_expected[:, 4:8, 8:12], np.moveaxis(y, -1, 0))


# -- 3. edges and odd sizes --------------------------------------------------------------------

@pytest.mark.parametrize("extent, tile, block_tiles", [
    ((130, 90), None, None),  # one default tile of 4 x 3 patches, partial cells on two sides
    ((90, 10), None, None),  # one pixel wide
    ((250, 90), 80, (2, 1)),  # partial tiles in partial blocks
])
def test_odd_extents(extent, tile, block_tiles):
    cube = synthetic_cube(("s2",), extent_m=extent, n_dates=2, seed=2)
    emb = xanysat.embed(cube, patch_size=40, tile_size=tile, block_tiles=block_tiles, model=MODEL)
    shape = tuple(math.ceil(e / 40) for e in extent)
    assert emb.shape[1:] == shape
    np.testing.assert_allclose(emb["y"], ORIGIN[1] - (np.arange(shape[0]) + 0.5) * 40)
    np.testing.assert_allclose(emb["x"], ORIGIN[0] + (np.arange(shape[1]) + 0.5) * 40)
    tile_m = tile or tuple(min(32, math.ceil(e / 40)) * 40 for e in extent)
    expected = s2_reference(cube, extent, patch_size=40, tile_m=tile_m)
    assert np.isfinite(expected).all()  # every cell has at least one valid pixel
    assert_same(values(emb), expected)


def test_cells_outside_the_data_are_nan():
    """s2 covers the top-left 80 m x 80 m, naip the whole 120 m x 160 m: cells beyond s2 come
    from naip alone; a cell with no valid pixel in any sensor is NaN, never zero."""
    base = synthetic_cube(("naip", "s2"), extent_m=(120, 160), n_dates=2, seed=3)
    naip = base["naip"]["naip"].values.copy()
    naip[:, 64:, 96:] = np.nan  # the bottom-right 40 m x 40 m cell of naip is empty
    tree = xr.DataTree.from_dict({
        "naip": node(naip, "naip"),
        "s2": base["s2"].to_dataset().isel(y=slice(0, 8), x=slice(0, 8)),
    })
    with pytest.warns(UserWarning, match="treated as missing"):
        emb = xanysat.embed(tree, patch_size=40, tile_size=80, block_tiles=1, model=MODEL,
                            normalize={"naip": False})
    got = values(emb)
    assert emb.shape[1:] == (3, 4)
    assert np.isnan(got[:, 2, 3]).all()
    assert np.isfinite(np.delete(got.reshape(got.shape[0], -1), 11, axis=1)).all()
    s2, days = sensor_numpy(tree, "s2")
    expected = reference({"naip": (naip, None), "s2": (normalise(s2, "s2"), days)}, (120, 160), 40, 80)
    assert_same(got, expected)


# -- 4. overlap --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def with_overlap(s2_cube):
    return values(embed(s2_cube, overlap=PATCH))


def test_overlap_equals_direct_calls_on_grown_tiles(s2_cube, with_overlap):
    assert_same(with_overlap, s2_reference(s2_cube, overlap=PATCH))


def test_overlap_changes_cells_at_tile_borders(s2_expected, with_overlap):
    diff = np.abs(with_overlap - s2_expected).max(axis=0)
    border = np.zeros(diff.shape, bool)
    border[[3, 4], :] = True  # rows on both sides of the tile seam
    border[:, [3, 4, 7, 8]] = True
    assert diff[border].min() > 1e-4


def test_overlap_chunk_invariance(s2_cube, with_overlap):
    got = values(embed(s2_cube.chunk({"time": 1, "y": 3, "x": 7}), overlap=PATCH))
    assert_same(got, with_overlap)
    bigger_blocks = values(embed(s2_cube, overlap=2 * PATCH, block_tiles=(2, 2)))
    assert_same(bigger_blocks, s2_reference(s2_cube, overlap=2 * PATCH))


# -- 5. multi-resolution ------------------------------------------------------------------------

def test_naip_and_s2_equal_a_direct_call_with_both():
    tree = synthetic_cube(("naip", "s2"), extent_m=(80, 120), n_dates=2, seed=4)
    naip_stats = ((120.0, 110.0, 100.0, 130.0), (40.0, 35.0, 30.0, 45.0))
    emb = xanysat.embed(tree, patch_size=40, tile_size=80, block_tiles=1, model=MODEL,
                        normalize={"naip": naip_stats})
    assert emb.shape[1:] == (2, 3)
    naip, _ = sensor_numpy(tree, "naip")
    s2, days = sensor_numpy(tree, "s2")
    sensors = {"naip": (normalise(naip, "naip", naip_stats), None), "s2": (normalise(s2, "s2"), days)}
    expected = reference(sensors, (80, 120), 40, 80)
    assert_same(values(emb), expected)
    first = direct({"naip": sensors["naip"][0][:, :64, :64], "s2": sensors["s2"][0][..., :8, :8]},
                   {"naip": None, "s2": days}, 40)
    assert_same(values(emb)[:, :2, :2], np.moveaxis(first, -1, 0))
    s2_only = direct({"s2": sensors["s2"][0][..., :8, :8]}, {"s2": days}, 40)
    assert np.abs(np.moveaxis(s2_only, -1, 0) - values(emb)[:, :2, :2]).max() > 1e-3  # naip is used


# -- 6. missing data ----------------------------------------------------------------------------

def test_nan_and_nodata_pixels_are_masked(s2_cube):
    raw = s2_cube["s2"]["s2"].values.copy()
    missing = np.zeros(raw.shape, bool)
    missing[0, :, 2:5, 3] = True  # a few whole pixels of one date
    missing[1, 4, 9, :] = True  # one band of one date along a row
    missing[2, :, 12, 20] = True
    nodata = np.zeros(raw.shape, bool)
    nodata[:, 0, 0:3, 10:12] = True
    nodata[2, :, 6, 6] = True
    cube = raw.copy()
    cube[missing] = np.nan
    cube[nodata] = -9999.0
    tree = xr.DataTree.from_dict({"s2": node(cube, "s2", times=s2_cube["s2"]["time"].values,
                                             attrs={"nodata": -9999.0})})
    got = values(embed(tree))
    masked = np.where(missing | nodata, np.nan, raw)
    expected = reference({"s2": (normalise(masked, "s2"), doy(s2_cube["s2"]["time"].values))}, EXTENT, PATCH, TILE)
    assert np.isfinite(expected).all()
    assert_same(got, expected)
    assert np.abs(got - values(embed(s2_cube))).max() > 1e-4


@pytest.mark.parametrize("extent", [EXTENT, (130, 90)], ids=["whole-tiles", "padded-tiles"])
def test_an_all_nan_date_is_left_out(extent):
    da = synthetic_cube(("s2",), extent_m=extent, n_dates=3, seed=8)["s2"]["s2"]
    extra = da.isel(time=[0, 1])
    extra = extra.assign_coords(time=extra["time"] + np.timedelta64(3, "D")) * np.nan
    cube = xr.concat([da, extra], "time").sortby("time")
    assert cube.sizes["time"] == 5
    got = values(embed(xr.DataTree.from_dict({"s2": cube.to_dataset()})))
    assert np.isfinite(got).all()
    assert_same(got, values(embed(xr.DataTree.from_dict({"s2": da.to_dataset()}))))


def test_a_sensor_all_nan_in_a_tile_is_left_out_of_it():
    tree = synthetic_cube({"s2": 3, "s1-asc": 4}, extent_m=EXTENT, seed=5)
    s1 = tree["s1-asc"]["s1-asc"].values.copy()
    s1[..., 0:8, 0:8] = np.nan  # no S1 in tile (0, 0)
    tree = xr.DataTree.from_dict({"s2": tree["s2"].to_dataset(),
                                  "s1-asc": node(s1, "s1-asc", times=tree["s1-asc"]["time"].values)})
    stats = {"s1-asc": ((0.0, 0.0), (1.0, 1.0))}
    got = values(embed(tree, normalize=stats))
    s2_only = values(embed(tree["s2"].to_dataset()))
    assert_same(got[:, 0:4, 0:4], s2_only[:, 0:4, 0:4])
    assert np.abs(got[:, 4:, 4:] - s2_only[:, 4:, 4:]).max() > 1e-3  # S1 is used elsewhere
    s2, days = sensor_numpy(tree, "s2")
    sensors = {"s2": (normalise(s2, "s2"), days), "s1-asc": (s1, doy(tree["s1-asc"]["time"].values))}
    assert_same(got, reference(sensors, EXTENT, PATCH, TILE))


def test_cells_without_valid_pixels_are_nan(s2_cube):
    raw = s2_cube["s2"]["s2"].values.copy()
    raw[..., 0:8, 0:8] = np.nan  # all of tile (0, 0)
    raw[..., 8:12, 10:12] = np.nan  # two whole cells of tile (1, 1)
    raw[:2, :, 14, 22] = np.nan  # a partial cell keeps its other pixels
    tree = xr.DataTree.from_dict({"s2": node(raw, "s2", times=s2_cube["s2"]["time"].values)})
    got = values(embed(tree))
    nan_cells = np.zeros(got.shape[1:], bool)
    nan_cells[0:4, 0:4] = True
    nan_cells[4:6, 5] = True
    assert np.isnan(got[:, nan_cells]).all()
    assert np.isfinite(got[:, ~nan_cells]).all()
    assert_same(got, s2_reference(tree))


def test_missing_bands_are_filled_and_reported(s2_cube):
    da = s2_cube["s2"]["s2"].drop_sel(band=["B05", "B8A"])
    with pytest.warns(UserWarning, match="B05, B8A"):
        emb = embed(xr.DataTree.from_dict({"s2": da.to_dataset()}))
    assert json.loads(emb.attrs["inputs"])["s2"]["missing_bands"] == ["B05", "B8A"]
    raw, days = sensor_numpy(s2_cube, "s2")
    raw[:, [3, 7]] = np.nan
    got = values(emb)
    assert_same(got, reference({"s2": (normalise(raw, "s2"), days)}, EXTENT, PATCH, TILE))
    assert np.isfinite(got).all()


def test_extra_and_shuffled_bands(s2_cube, s2_expected):
    da = s2_cube["s2"]["s2"]
    extra = da.isel(band=[0, 1]).assign_coords(band=["B01", "SCL"]) * 0 + 7
    shuffled = xr.concat([da, extra], "band").isel(band=[11, 4, 9, 0, 2, 10, 7, 1, 5, 8, 3, 6])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is missing
        emb = embed(xr.DataTree.from_dict({"s2": shuffled.to_dataset()}))
    assert_same(values(emb), s2_expected)
    assert json.loads(emb.attrs["inputs"])["s2"]["missing_bands"] == []


def test_s1_ratio_band_is_derived_from_vv_and_vh():
    tree = synthetic_cube({"s1": 3}, extent_m=(80, 80), seed=6)
    raw = np.abs(tree["s1"]["s1"].values[:, :2]) * 0.05 + 0.01  # linear VV, VH
    times = tree["s1"]["time"].values
    vv_vh = xr.DataTree.from_dict({"s1": node(raw, "s1", bands=["vv", "vh"], times=times)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emb = xanysat.embed(vv_vh, patch_size=PATCH, tile_size=40, model=MODEL, normalize={"s1": S1_STATS})
    assert json.loads(emb.attrs["inputs"])["s1"]["missing_bands"] == []
    ratio = raw[:, 0] / (raw[:, 1] + 1e-10)
    full = np.concatenate([raw, ratio[:, None]], axis=1)
    expected = reference({"s1": (normalise(full, "s1", S1_STATS), doy(times))}, (80, 80), PATCH, 40)
    assert_same(values(emb), expected)


# -- 8. output ------------------------------------------------------------------------------------

def test_output_metadata(s2_cube):
    from dask.callbacks import Callback

    class Computes(Callback):
        count = 0

        def _start(self, dsk):
            Computes.count += 1

    cube = s2_cube.chunk({"y": 8, "x": 8})
    with Computes():
        emb = embed(cube)
    assert Computes.count == 0  # nothing computed before the user asks
    assert emb.name == "embedding" and emb.dims == ("feature", "y", "x") and emb.dtype == np.float32
    assert isinstance(emb.data, dask.array.Array)
    assert emb.rio.crs == s2_cube["s2"].to_dataset().rio.crs
    t = emb.rio.transform()
    assert (t.a, t.b, t.d, t.e) == (PATCH, 0, 0, -PATCH) and (t.c, t.f) == ORIGIN
    np.testing.assert_allclose(emb["x"], t.c + t.a * (np.arange(emb.sizes["x"]) + 0.5))  # cell centres
    np.testing.assert_allclose(emb["y"], t.f + t.e * (np.arange(emb.sizes["y"]) + 0.5))
    model = tiny_model()
    from xanysat.nn.checkpoint import weights_hash

    assert emb.attrs["model_id"] == model.card.model_id
    assert emb.attrs["weights_sha256_16"] == weights_hash(model)
    assert emb.attrs["patch_size_m"] == PATCH and emb.attrs["sensors"] == ["s2"]
    assert list(emb.attrs["tile_size_m"]) == [TILE, TILE] and emb.attrs["overlap_m"] == 0
    norm = json.loads(emb.attrs["normalization"])["s2"]
    assert norm["mean"] == list(MODALITIES["s2"].norm.mean) and norm["source"] == MODALITIES["s2"].norm.source
    inputs = json.loads(emb.attrs["inputs"])["s2"]
    assert inputs["dates"] == [str(t)[:10] for t in s2_cube["s2"]["time"].values]


def test_zarr_round_trip(s2_cube, s2_expected, tmp_path):
    emb = embed(s2_cube)
    emb.to_dataset().to_zarr(tmp_path / "emb.zarr", consolidated=False)
    back = xr.open_zarr(tmp_path / "emb.zarr", consolidated=False)["embedding"]  # default decoding
    assert back.rio.crs == emb.rio.crs
    assert back.rio.transform() == emb.rio.transform()
    assert {k: back.attrs[k] for k in emb.attrs} == emb.attrs
    assert_same(back.values, s2_expected)


def _layer_tasks(emb) -> int:
    graph = emb.data.__dask_graph__()
    (name,) = [k for k in graph.layers if k.startswith("anysat-embed") and not k.endswith("-halo")]
    return len(graph.layers[name])


@pytest.mark.parametrize("chunks", [None, {"y": -1, "x": -1}], ids=["numpy", "dask"])
def test_one_task_per_block(chunks):
    def graph(extent, tile):
        cube = synthetic_cube(("s2",), extent_m=extent, n_dates=2, chunks=chunks)
        emb = xanysat.embed(cube, patch_size=40, tile_size=tile, block_tiles=1, model=MODEL)
        return emb, len(emb.data.__dask_graph__())

    small, small_size = graph((160, 240), 80)
    assert _layer_tasks(small) == 2 * 3 == math.prod(len(c) for c in small.chunks[1:])
    big, big_size = graph((320, 480), 160)  # 4x the pixels, the same blocks
    assert _layer_tasks(big) == 6
    many, many_size = graph((320, 480), 80)  # 4x the blocks
    assert _layer_tasks(many) == 24
    assert big_size == small_size < many_size


# -- 9. normalisation ---------------------------------------------------------------------------

def test_fit_normalization_matches_numpy():
    tree = synthetic_cube({"s2": 3}, extent_m=(60, 60), seed=7)
    raw = tree["s2"]["s2"].values.copy()
    raw[0, :, :2] = np.nan
    s1 = np.abs(synthetic_cube({"s1": 2}, extent_m=(60, 60))["s1"]["s1"].values[:, :2]) + 0.1
    s1[1, 0, 0, 0] = np.nan
    times = tree["s2"]["time"].values
    tree = xr.DataTree.from_dict({"s2": node(raw.astype("float32").astype("float64"), "s2", times=times),
                                  "s1": node(s1, "s1", bands=["VV", "VH"], times=times[:2])})
    stats = xanysat.fit_normalization(tree.chunk({"y": 4}))
    axes = (0, 2, 3)
    np.testing.assert_allclose(stats["s2"].mean, np.nanmean(raw, axis=axes), rtol=1e-5)
    np.testing.assert_allclose(stats["s2"].std, np.nanstd(raw, axis=axes), rtol=1e-5)
    full = np.concatenate([s1, (s1[:, 0] / (s1[:, 1] + 1e-10))[:, None]], axis=1)
    np.testing.assert_allclose(stats["s1"].mean, np.nanmean(full, axis=axes), rtol=1e-5)
    np.testing.assert_allclose(stats["s1"].std, np.nanstd(full, axis=axes), rtol=1e-5)
    emb = xanysat.embed(tree, patch_size=20, model=MODEL, normalize=stats)
    recorded = json.loads(emb.attrs["normalization"])
    assert recorded["s1"]["source"] == stats["s1"].source and "fit_normalization" in stats["s1"].source
    np.testing.assert_allclose(recorded["s2"]["std"], stats["s2"].std)
    sensors = {"s2": (normalise(raw, "s2", (stats["s2"].mean, stats["s2"].std)), doy(times)),
               "s1": (normalise(full, "s1", (stats["s1"].mean, stats["s1"].std)), doy(times[:2]))}
    assert_same(values(emb), reference(sensors, (60, 60), 20, 60))


def test_user_statistics(s2_cube):
    mean, std = (tuple(np.linspace(1000, 2000, 10)), tuple(np.linspace(500, 900, 10)))
    emb = embed(s2_cube, normalize={"s2": (mean, std)})
    recorded = json.loads(emb.attrs["normalization"])["s2"]
    assert recorded["mean"] == list(mean) and recorded["source"] == "given by the user"
    raw, days = sensor_numpy(s2_cube, "s2")
    assert_same(values(emb), reference({"s2": (normalise(raw, "s2", (mean, std)), days)}, EXTENT, PATCH, TILE))
    already = xr.DataTree.from_dict({"s2": node(normalise(raw, "s2", (mean, std)), "s2",
                                                times=s2_cube["s2"]["time"].values)})
    emb_false = embed(already, normalize=False)
    assert json.loads(emb_false.attrs["normalization"]) == {"s2": None}
    assert_same(values(emb_false), values(emb))


@pytest.mark.parametrize("normalize, match", [
    ({"s2": ((1.0,) * 9, (1.0,) * 9)}, r"9 means and 9 stds; expected 10"),
    ({"s2": ((1.0,) * 10, (1.0,) * 9 + (0.0,))}, r"zero or negative std"),
    ({"s1": ((0.0,) * 3, (1.0,) * 3)}, r"not sensors of the cube"),
])
def test_bad_statistics_raise(s2_cube, normalize, match):
    with pytest.raises(xanysat.DimensionError, match=match):
        embed(s2_cube, normalize=normalize)


def test_sensor_without_table_statistics_asks_for_them():
    tree = synthetic_cube(("naip",), extent_m=40)
    with pytest.raises(xanysat.DimensionError, match=r"no normalisation statistics for 'naip'.*fit_normalization"):
        xanysat.embed(tree, patch_size=40, model=MODEL)


# -- 11. real cubes ------------------------------------------------------------------------------

def _worldcereal_embed(tree, **kwargs):
    with pytest.warns(UserWarning, match="B8A"):
        return xanysat.embed(tree, patch_size=40, model=MODEL, **kwargs)


@pytest.mark.slow
def test_worldcereal():
    tree = worldcereal_tree()
    with pytest.warns(UserWarning, match="B8A"):
        stats = xanysat.fit_normalization(tree)
    assert np.isnan(stats["s2"].mean[7]) and np.isfinite(np.delete(stats["s2"].mean, 7)).all()  # no B8A
    emb = _worldcereal_embed(tree, normalize={"s1-asc": stats["s1-asc"]})
    assert emb.shape == (256, 25, 25)
    assert np.isfinite(values(emb)).all()
    assert emb.rio.crs.to_epsg() == 32631
    inputs = json.loads(emb.attrs["inputs"])
    assert inputs["s2"]["missing_bands"] == ["B8A"] and inputs["s1-asc"]["missing_bands"] == []
    assert json.loads(emb.attrs["normalization"])["s1-asc"]["source"] == stats["s1-asc"].source


@pytest.fixture(scope="module")
def worldcereal_part():
    """30 x 40 px of the cube, 2 x 2 tiles of 200 m in blocks of 1 x 2 tiles."""
    tree = worldcereal_tree(y=slice(10, 40), x=slice(50, 90))
    with pytest.warns(UserWarning, match="B8A"):
        stats = xanysat.fit_normalization(tree)["s1-asc"]
    kwargs = {"tile_size": 200, "block_tiles": (1, 2), "normalize": {"s1-asc": stats}}
    return tree, kwargs, values(_worldcereal_embed(tree, **kwargs))


@pytest.mark.slow
def test_worldcereal_chunk_invariance(worldcereal_part):
    tree, kwargs, expected = worldcereal_part
    assert expected.shape == (256, 8, 10) and np.isfinite(expected).all()
    assert_same(values(_worldcereal_embed(tree.chunk({"time": 5, "y": 7, "x": 45}), **kwargs)), expected)


def test_worldcereal_nodata_dates_are_left_out(worldcereal_part):
    tree, kwargs, expected = worldcereal_part
    raw = tree["s2"]["s2"].values
    all_nodata = (raw == 65535).all(axis=(1, 2, 3))
    assert all_nodata.sum() == 2  # two whole dates are nodata (65535, attrs['nodata'])
    kept = tree["s2"].to_dataset().isel(time=np.flatnonzero(~all_nodata))
    without = xr.DataTree.from_dict({"s2": kept, "s1-asc": tree["s1-asc"].to_dataset()})
    assert_same(values(_worldcereal_embed(without, **kwargs)), expected)


def test_treesatai_equals_the_official_batch():
    from xanysat.cube.sample_data import _S1_DEMO_NORM, treesatai_tile

    raw = treesatai_tile(normalize=False)
    _, _, x0, _, _, y0 = raw["transform"]
    batch = {k: v[0].numpy() for k, v in raw["batch"].items()}
    times = {k: v.astype("datetime64[ns]") for k, v in raw["dates"].items()}
    tree = xr.DataTree.from_dict({
        "aerial": node(batch["aerial"], "aerial", origin=(x0, y0), crs=raw["crs"]),
        "s2": node(batch["s2"], "s2", times=times["s2"], origin=(x0, y0), crs=raw["crs"]),
        "s1": node(batch["s1"], "s1", times=times["s1"], origin=(x0, y0), crs=raw["crs"]),
    })
    stats = {"aerial": MODALITIES["aerial"].norm, "s2": MODALITIES["s2"].norm, "s1": _S1_DEMO_NORM}
    emb = xanysat.embed(tree, patch_size=10, model=MODEL, normalize=stats)
    assert emb.shape[1:] == (6, 6) and emb.rio.crs.to_epsg() == 25832
    official = treesatai_tile(normalize=True)["batch"]
    assert_same(doy(times["s2"]), official["s2_dates"][0].numpy())
    import torch

    with torch.inference_mode():
        expected = tiny_model()(official, 10, "patch")[0].double().numpy()
    assert_same(values(emb), np.moveaxis(expected, -1, 0))


def test_sensor_without_projector_fails_before_any_task():
    from xanysat import AnySat, AnySatConfig
    from xanysat.errors import ModalityError

    model = AnySat(AnySatConfig.tiny().with_changes(embed_dim=32, depth=1, num_heads=2, sensors=("s2",))).eval()
    cube = synthetic_cube(("s2", "naip"))
    with pytest.raises(ModalityError, match="no projector for naip; it knows s2"):
        xanysat.embed(cube, 40, model=model, normalize=False)


def test_a_model_trained_on_small_tiles_embeds_on_them_by_default(tmp_path):
    from xanysat import AnySat, AnySatConfig
    from xanysat.nn.checkpoint import save_pretrained

    torch.manual_seed(0)
    model = AnySat(AnySatConfig.tiny().with_changes(embed_dim=32, depth=1, num_heads=2, sensors=("s2",))).eval()
    model.card = model.card.with_changes(tile_m=160)
    saved = save_pretrained(model, tmp_path / "m", model_id="small-tiles")
    cube = synthetic_cube(("s2",), extent_m=(400, 640))
    emb = xanysat.embed(cube, 40, model=saved)
    assert emb.attrs["tile_size_m"] == [160, 160]
    explicit = xanysat.embed(cube, 40, model=saved, tile_size=160)
    np.testing.assert_array_equal(emb.values, explicit.values)
    assert xanysat.embed(cube, 20, model=saved).attrs["tile_size_m"] == [160, 160]
    assert xanysat.embed(cube, 40, model=saved, tile_size=320).attrs["tile_size_m"] == [320, 320]
    plan = xanysat.plan(cube, 40, model=saved)
    assert "160" in str(plan)


# -- no giant graph by surprise ------------------------------------------------------------------------------


def _huge_cube(n_px: int, chunk: int = 4096) -> xr.Dataset:
    """An ``n_px`` x ``n_px`` Sentinel-2 cube of two dates at 10 m, dask zeros: never computed."""
    import rioxarray  # noqa: F401  (registers .rio)

    data = dask.array.zeros((2, 10, n_px, n_px), chunks=(1, -1, chunk, chunk), dtype="uint16")
    coords = {"time": np.array(["2021-03-01", "2021-04-01"], "datetime64[ns]"), "band": list(MODALITIES["s2"].bands),
              "y": ORIGIN[1] - (np.arange(n_px) + 0.5) * 10, "x": ORIGIN[0] + (np.arange(n_px) + 0.5) * 10}
    array = xr.DataArray(data, dims=("time", "band", "y", "x"), coords=coords, name="s2")
    return array.to_dataset().rio.write_crs("EPSG:32631")


def test_a_giant_graph_is_refused_before_it_is_built():
    """1e6 x 1e6 px: embed used to spend ~5 minutes and 2.4 GB building a 954k-block graph; now it
    estimates the graph from the geometry and refuses in well under a second, naming the fixes."""
    import time

    from xanysat.cube.graph_size import GRAPH_TASK_LIMIT, GraphTooLargeError

    cube = _huge_cube(1_000_000)
    xanysat.embed(cube.isel(y=slice(0, 80), x=slice(0, 80)), 40, model=MODEL)  # loads the model
    start = time.perf_counter()
    with pytest.raises(GraphTooLargeError) as error:
        xanysat.embed(cube, 40, model=MODEL)
    seconds = time.perf_counter() - start
    message = str(error.value)
    print(f"\nrefused in {seconds:.3f} s: {message[:120]}...")
    assert seconds < 5
    assert "977 x 977 output blocks" in message and f"max_tasks={GRAPH_TASK_LIMIT:,}" in message
    assert "xanysat.embed_to_zarr(data, store, ...)" in message and "xanysat.plan" in message
    assert "max_tasks=None" in message
    assert isinstance(error.value, xanysat.AnySatInputError)
    with pytest.raises(GraphTooLargeError, match="crop the input"):  # a window still chunks the whole input
        xanysat.embed(cube, 40, model=MODEL, window=((0, 0), (10_240, 10_240)))
    with pytest.raises(GraphTooLargeError, match="max_tasks=1,000,000"):  # ~2.9 million tasks
        xanysat.embed(cube, 40, model=MODEL, max_tasks=10**6)


def test_max_tasks_is_the_plan_estimate():
    """Normal cubes are unaffected; the limit compares plan's estimate; None switches it off."""
    from xanysat.cube.graph_size import GraphTooLargeError

    cube = synthetic_cube(("s2", "s1"), extent_m=EXTENT, n_dates=2, chunks={"time": 1, "y": 7, "x": 9})
    options = {"normalize": {"s1": S1_STATS}, "overlap": 20}
    p = xanysat.plan(cube, PATCH, tile_size=TILE, block_tiles=1, model=MODEL, throughput=1.0, **options)
    emb = embed(cube, **options)  # the default limit
    assert_same(values(embed(cube, max_tasks=p.total_tasks, **options)), values(emb))
    with pytest.raises(GraphTooLargeError, match=f"about {p.total_tasks:,} tasks"):
        embed(cube, max_tasks=p.total_tasks - 1, **options)
    assert embed(cube, max_tasks=None, **options).shape == emb.shape
    graph = len(emb.data.__dask_graph__())
    assert 0.5 < p.total_tasks / graph < 2, (p.total_tasks, graph)
    with pytest.raises(xanysat.AnySatInputError, match="max_tasks must be a positive whole number"):
        embed(cube, max_tasks=0, **options)
