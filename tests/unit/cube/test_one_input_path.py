"""One input path: every entry point prepares its input with ``xanysat.cube.prepare`` (regressions
of the bugs the separate copies had, through the public API)."""

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
from odc.geo.geobox import GeoBox

import xanysat
from xanysat.cube.prepare import prepare
from xanysat.sensors.table import MODALITIES, NormStats
from xanysat.testing import synthetic_cube

ATOL = 1e-5


def s2_s1_cube(extent_m=(40, 30), n_dates=3):
    return synthetic_cube(("s2", "s1-asc"), extent_m=extent_m, n_dates=n_dates)


def as_points(cube):
    """Every 10 m pixel of a DataTree cube as a sample, one variable per sensor."""
    return xr.Dataset({name: cube[name][name].stack(sample=("y", "x"))
                       .rename(time=f"{name}_time", band=f"{name}_band") for name in cube.children})


def test_embed_points_uses_the_model_s_own_statistics():
    """The shipped default has no table statistics for s1-asc, only its own: embed_points used to
    ignore them and raise; the same pixels now give embed's vectors (10 m patches)."""
    assert MODALITIES["s1-asc"].norm is None and "s1-asc" in xanysat.load_model("default").card.normalization
    cube = s2_s1_cube()
    tiles = xanysat.embed(cube, patch_size=10, output="tile", tile_size=10, model="default").compute()
    points = xanysat.embed_points(as_points(cube), model="default").compute()
    expected = tiles.stack(sample=("y", "x")).transpose("sample", "feature").values
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(points.values, expected, atol=ATOL)
    assert points.attrs["normalization"] == tiles.attrs["normalization"]


class PixelRead(Exception):
    pass


def _refuse(block):
    raise PixelRead("a pixel was read")


def test_plan_needs_no_statistics_and_reads_no_pixel():
    cube = s2_s1_cube(extent_m=(320, 320))
    untouchable = xr.DataTree.from_dict({
        name: cube[name].to_dataset().map(lambda v: v.copy(data=dsa.from_array(v.values, chunks=-1)
                                                         .map_blocks(_refuse, dtype=v.dtype)) if v.ndim == 4 else v)
        for name in cube.children})
    with pytest.raises(xanysat.DimensionError, match="no normalisation statistics for 's1-asc'"):
        xanysat.embed(cube, 40, model="untrained-tiny")  # embedding does need them
    report = xanysat.plan(untouchable, 40, model="untrained-tiny", throughput=10.0)
    assert report.n_tiles == 1 and report.out_shape == (256, 8, 8)


@pytest.mark.parametrize("origin", [None, "2020-09-01"])
def test_date_origin_is_in_the_attrs_of_every_output(origin, tmp_path):
    cube = synthetic_cube(("s2",), extent_m=(40, 40), n_dates=2)
    wanted = "day of year (1 = 1 January)" if origin is None else f"days since {origin}"
    emb = xanysat.embed(cube, 40, model="untrained-tiny", date_origin=origin)
    points = xanysat.embed_points(cube["s2"]["s2"].stack(sample=("y", "x")), model="untrained-tiny",
                                  date_origin=origin)
    stored = xanysat.embed_to_zarr(cube, tmp_path / "e.zarr", 40, model="untrained-tiny", date_origin=origin,
                                   progress=False)
    for out in (emb, points, stored):
        assert out.attrs["dates"] == wanted
        assert out.attrs.get("date_origin") == origin
    shifted = xanysat.embed(cube, 40, model="untrained-tiny", date_origin="2020-09-01").values
    assert not np.allclose(shifted, xanysat.embed(cube, 40, model="untrained-tiny").values)


def test_statistics_order_user_then_model_then_table():
    cube = s2_s1_cube()
    model_stats = {"s1-asc": NormStats((1.0, 2.0), (1.0, 1.0), "model"),
                   "s2": NormStats((0.0,) * 10, (1.0,) * 10, "model")}
    user = {"s2": ((5.0,) * 10, (2.0,) * 10)}
    inputs = prepare(cube, normalize=user, model_stats=model_stats)
    assert inputs.sensors["s2"].stats.source == "given by the user"
    assert inputs.sensors["s1-asc"].stats.source == "model"
    assert prepare(cube, model_stats={"s1-asc": model_stats["s1-asc"]}).sensors["s2"].stats == MODALITIES["s2"].norm
    with pytest.raises(xanysat.DimensionError, match="no normalisation statistics for 's1-asc'"):
        prepare(cube)


def test_embed_like_lands_on_the_given_grid():
    cube = synthetic_cube(("s2",), extent_m=(160, 160), n_dates=2)
    whole = xanysat.embed(cube, 40, model="untrained-tiny", tile_size=40)
    target = whole.isel(y=slice(1, 3), x=slice(2, 4))
    part = xanysat.embed(cube, 40, model="untrained-tiny", tile_size=40, like=target)
    np.testing.assert_array_equal(part["x"].values, target["x"].values)
    np.testing.assert_array_equal(part["y"].values, target["y"].values)
    np.testing.assert_allclose(part.values, target.values, atol=ATOL)
    box = GeoBox((2, 2), target.rio.transform(), "EPSG:32631")
    np.testing.assert_allclose(xanysat.embed(cube, 40, model="untrained-tiny", tile_size=40, like=box).values,
                               target.values, atol=ATOL)
    with pytest.raises(xanysat.DimensionError, match="cells"):
        xanysat.embed(cube, 20, model="untrained-tiny", like=target)


def test_regions_reuse_the_prepared_input(monkeypatch, tmp_path):
    """embed_to_zarr reads the cube once: regions crop the prepared input instead of re-reading it."""
    from xanysat.cube import prepare as prepare_module
    from xanysat.cube import read

    calls = []
    original = read.as_cube
    monkeypatch.setattr(prepare_module, "as_cube", lambda *a, **k: calls.append(1) or original(*a, **k))
    cube = synthetic_cube(("s2",), extent_m=(160, 320), n_dates=2)
    stored = xanysat.embed_to_zarr(cube, tmp_path / "e.zarr", 40, model="untrained-tiny", tile_size=80,
                                   block_tiles=1, region_blocks=1, progress=False)
    assert len(calls) == 1
    np.testing.assert_allclose(stored.values, xanysat.embed(cube, 40, model="untrained-tiny", tile_size=80).values,
                               atol=ATOL)
