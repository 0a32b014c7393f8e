"""Reading cubes: every input form gives the same embedding; bad cubes get clear errors."""

import numpy as np
import pytest
import xarray as xr
from helpers.cubes import node

import xanysat
from xanysat.cube.read import as_cube
from xanysat.errors import AnySatInputError, DimensionError, ModalityError, PatchSizeError
from xanysat.testing import synthetic_cube

MODEL = "untrained-tiny"
EXTENT = (80, 120)
KWARGS = {"patch_size": 40, "tile_size": 80, "block_tiles": 1, "model": MODEL}
NAIP_STATS = {"naip": ((120.0, 110.0, 100.0, 130.0), (40.0, 35.0, 30.0, 45.0))}


def embed(cube, **kwargs):
    return xanysat.embed(cube, **{**KWARGS, **kwargs})


def assert_same(actual, expected):
    actual, expected = np.asarray(actual, "float64"), np.asarray(expected, "float64")
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tree():
    return synthetic_cube({"naip": 1, "s2": 3, "s1-asc": 2}, extent_m=EXTENT, seed=11)


@pytest.fixture(scope="module")
def s2_tree(tree):
    return xr.DataTree.from_dict({"s2": tree["s2"].to_dataset()})


@pytest.fixture(scope="module")
def s2_expected(s2_tree):
    return embed(s2_tree).values


def _s2(tree) -> xr.DataArray:
    return tree["s2"]["s2"]


def _unnamed(da: xr.DataArray) -> xr.DataArray:
    da = da.copy()
    da.name = None
    return da


# -- input forms ---------------------------------------------------------------------------------

def _per_band(da: xr.DataArray, **attrs) -> xr.Dataset:
    """odc-stac's layout: one variable per band, named after its STAC asset."""
    return xr.Dataset({str(b): da.sel(band=b, drop=True) for b in da["band"].values}, attrs=attrs)


def test_dataset_one_variable_per_band(tree, s2_expected):
    da = _s2(tree)
    assert_same(embed(_per_band(da, **{"anysat:sensor": "s2"})).values, s2_expected)
    assert_same(embed(_per_band(da), sensor="s2").values, s2_expected)
    assert_same(embed(xr.DataTree.from_dict({"s2": _per_band(da)})).values, s2_expected)
    with pytest.raises(ModalityError, match=r"cannot tell which sensor.*anysat:sensor.*sensor="):
        embed(_per_band(da))


def test_per_band_nodata_attrs_are_honoured(tree):
    """odc-stac puts ``nodata`` on every band variable; stacking the bands must keep it."""
    da = _s2(tree)
    valid = da["x"] > da["x"][4]  # the first 5 columns are nodata
    for markers in ({}, {"B02": 1.5}):  # the same marker on every band; a band with its own
        ds = _per_band(da)
        for name in ds.data_vars:
            marker = markers.get(name, -9999.0)
            ds[name] = ds[name].where(valid, marker).assign_attrs(nodata=marker)
        got = embed(ds, sensor="s2").values
        assert np.isnan(got[:, :, 0]).all() and np.isfinite(got[:, :, 1:]).all()
        expected = embed(_per_band(da.where(da["x"] > da["x"][4])), sensor="s2").values
        assert_same(got, expected)


def test_dataarray_named_after_the_sensor(tree, s2_expected):
    assert_same(embed(_s2(tree)).values, s2_expected)
    unnamed = _unnamed(_s2(tree))
    assert_same(embed(unnamed, sensor="s2").values, s2_expected)
    assert_same(embed(unnamed.assign_attrs({"anysat:sensor": "s2"})).values, s2_expected)


def test_dataset_with_sensor_prefixed_dims(tree):
    """Several sensors in one Dataset: ``<sensor>_time``, ``<sensor>_band`` and, for a sensor on
    its own grid, ``<sensor>_y``/``<sensor>_x``."""
    s2, s1, naip = (tree[n][n] for n in ("s2", "s1-asc", "naip"))
    ds = xr.Dataset({
        "s2": s2.rename(time="s2_time", band="s2_band"),
        "s1-asc": s1.rename(time="s1-asc_time", band="s1-asc_band"),
        "naip": naip.rename(band="naip_band", y="naip_y", x="naip_x"),
    })
    stats = {"s1-asc": ((0.0, 0.0), (1.0, 1.0)), **NAIP_STATS}
    assert_same(embed(ds, normalize=stats).values, embed(tree, normalize=stats).values)


def test_single_date_sensor(tree):
    naip = tree["naip"].to_dataset()
    assert "time" not in naip.dims
    expected = embed(xr.DataTree.from_dict({"naip": naip, "s2": tree["s2"].to_dataset()}), normalize=NAIP_STATS)
    one_date = naip.expand_dims(time=[np.datetime64("2021-06-01", "ns")])
    got = embed(xr.DataTree.from_dict({"naip": one_date, "s2": tree["s2"].to_dataset()}), normalize=NAIP_STATS)
    assert_same(got.values, expected.values)
    two_dates = xr.concat([one_date, one_date.assign_coords(time=one_date["time"] + np.timedelta64(1, "D"))], "time")
    with pytest.raises(DimensionError, match=r"single-date but has 2 dates.*isel\(time=0\)"):
        as_cube(xr.DataTree.from_dict({"naip": two_dates}))


def test_accessor(tree, s2_tree, s2_expected):
    assert_same(s2_tree.anysat.embed(**KWARGS).values, s2_expected)
    assert_same(_s2(tree).anysat.embed(**KWARGS).values, s2_expected)
    stats = {"s1-asc": ((0.0, 0.0), (1.0, 1.0)), **NAIP_STATS}
    a, b = tree.anysat.embed(**KWARGS, normalize=stats), embed(tree, normalize=stats)
    assert a.attrs == b.attrs
    assert_same(a.values, b.values)


def test_datatree_with_coordinates_on_the_root(tree, s2_expected):
    s2 = tree["s2"].to_dataset()
    root = xr.Dataset(coords={"x": s2["x"], "y": s2["y"]})  # inherited by the nodes below
    nested = xr.DataTree.from_dict({"/": root, "/sensors/s2": s2.drop_vars(["x", "y"])})
    assert_same(embed(nested).values, s2_expected)


# -- errors -------------------------------------------------------------------------------------

def _s2_node(**kwargs):
    values = np.full((2, 10, 4, 4), 1000.0, "float32")
    return node(values, "s2", times=["2021-03-01", "2021-03-17"], **kwargs)


def _tree(**nodes):
    return xr.DataTree.from_dict(nodes)


def _shuffled_times(order):
    ds = _s2_node()
    return _tree(s2=ds.assign_coords(time=ds["time"].values[list(order)]))


BAD_CUBES = {
    "no-crs": (lambda: _tree(s2=_s2_node(crs=None)), {}, DimensionError, r"'s2' has no CRS.*write_crs"),
    "crs-mismatch": (
        lambda: _tree(s2=_s2_node(), **{"s1-asc": node(np.ones((2, 2, 4, 4)), "s1-asc",
                                                       times=["2021-03-01", "2021-03-02"], crs="EPSG:32632")}),
        {}, DimensionError, r"'s1-asc' is in .*32N but 's2' in .*31N.*share one CRS.*like=",
    ),
    "origin-mismatch": (
        lambda: _tree(s2=_s2_node(), naip=node(np.ones((4, 32, 32)), "naip", origin=(600_010.0, 5_700_000.0))),
        {}, DimensionError, r"'naip''s grid starts at \(600010.000, 5700000.000\).*share a grid origin.*Crop",
    ),
    "unknown-bands": (
        lambda: _tree(s2=node(np.ones((1, 2, 4, 4)), "s2", bands=["foo", "bar"], times=["2021-03-01"])),
        {}, DimensionError, r"none of 's2''s bands \['foo', 'bar'\].*expected some of B02",
    ),
    "s2-at-20m": (lambda: _tree(s2=_s2_node(res=20.0)), {}, DimensionError,
                  r"'s2' has 20 m pixels; the model expects 10 m.*resolution=10.*never resamples"),
    "patch-not-10": (lambda: _tree(s2=_s2_node()), {"patch_size": 45}, PatchSizeError,
                     r"patch_size must be a positive multiple of 10 metres, got 45"),
    "30m-sensor-patch-40": (
        lambda: _tree(l7=node(np.ones((1, 6, 4, 4)), "l7", times=["2021-03-01"])),
        {"normalize": False}, PatchSizeError, r"'l7' has 30 m tokens, so patch_size must be a multiple of 30 m; got 40",
    ),
    "tile-not-patch-multiple": (lambda: _tree(s2=_s2_node()), {"patch_size": 20, "tile_size": 50}, PatchSizeError,
                                r"tile_size must be a positive multiple of patch_size \(20 m\), got 50"),
    "overlap-not-patch-multiple": (lambda: _tree(s2=_s2_node()), {"patch_size": 20, "overlap": 10}, PatchSizeError,
                                   r"overlap must be a non-negative multiple of patch_size \(20 m\), got 10"),
    "unsorted-times": (lambda: _shuffled_times([1, 0]), {}, DimensionError,
                       r"'s2''s times are not sorted; sort them with ds.sortby\('time'\)"),
    "duplicate-times": (lambda: _shuffled_times([0, 0]), {}, DimensionError,
                        r"'s2' has duplicate time 2021-03-01T00:00:00; merge or drop duplicates"),
    "zero-size-y": (lambda: _tree(s2=_s2_node().isel(y=slice(0, 0))), {}, DimensionError,
                    r"'s2' is empty: dims .*'y': 0.*Select a region"),
    "zero-dates": (lambda: _tree(s2=_s2_node().isel(time=slice(0, 0))), {}, DimensionError, r"'s2' is empty"),
    "tree-without-sensor": (lambda: xr.DataTree(), {}, DimensionError,
                            r"the cube holds no sensor: expected DataTree nodes or variables named after sensors"),
    "unknown-node-name": (lambda: _tree(sentinel3=_s2_node().rename(s2="sentinel3")), {}, ModalityError,
                          r"cannot tell which sensor DataTree node '/sentinel3'.*Name it after a sensor"),
    "unknown-sensor-argument": (lambda: _unnamed(_s2_node()["s2"]), {"sensor": "s3"}, ModalityError,
                                r"unknown sensor 's3'. Known sensors: aerial"),
    "geographic-crs": (lambda: _tree(s2=_s2_node(crs="EPSG:4326")), {}, DimensionError,
                       r"geographic CRS; expected a projected CRS in metres.*crs='utm'"),
    "y-increasing": (lambda: _tree(s2=_s2_node().isel(y=slice(None, None, -1))), {}, DimensionError,
                     r"'s2' has increasing y; expected north-up.*isel\(y=slice\(None, None, -1\)\)"),
    "x-decreasing": (lambda: _tree(s2=_s2_node().isel(x=slice(None, None, -1))), {}, DimensionError,
                     r"'s2' has decreasing x; expected west to east.*isel\(x=slice\(None, None, -1\)\)"),
    "time-series-without-time": (lambda: _tree(s2=_s2_node().isel(time=0)), {}, DimensionError,
                                 r"'s2' is a time series: it needs a 'time' dim"),
}


@pytest.mark.parametrize("make, kwargs, error, match", BAD_CUBES.values(), ids=BAD_CUBES.keys())
def test_bad_cubes_raise_clear_errors(make, kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        xanysat.embed(make(), model=MODEL, **{"patch_size": 40, **kwargs})
    assert isinstance(info.value, AnySatInputError) and isinstance(info.value, ValueError)
