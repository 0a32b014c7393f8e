"""Property: for any cube, valid or slightly broken, ``xanysat.embed`` either raises a
documented input error (an ``AnySatInputError``) or returns exactly the naive reference
(``cubes.reference``: one direct model call per tile, on plain numpy arrays).

Hypothesis draws s2 cubes (and sometimes an s1-asc sensor beside them) of 40 to 120 m with
transposed dims, band subsets in any order with extra bands, NaN patterns (pixels, whole
dates, whole bands, everything), nodata markers, chunked or not; and breaks some of them:
duplicate, unsorted, NaT or numeric dates, a flipped or irregular grid, the wrong pixel size,
a CRS in feet or degrees, no band of the sensor. A broken cube must raise a
``DimensionError``; any other cube must equal the reference within 1e-5.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import xarray as xr
from helpers.cubes import doy, normalise, reference
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import xanysat
from xanysat.errors import AnySatInputError, DimensionError
from xanysat.sensors.table import MODALITIES

EXAMPLES = int(os.environ.get("XANYSAT_PROPERTY_EXAMPLES", "25"))
"""25 examples, always the same ones (about 20 s); set ``XANYSAT_PROPERTY_EXAMPLES`` to explore more, at random."""
MODEL = "untrained-tiny"
ORIGIN = (600_000.0, 5_700_000.0)
NODATA = -9999.0
S1_STATS = ((0.1, 0.03), (0.08, 0.02))
DAYS = np.datetime64("2021-01-01", "ns") + np.arange(0, 365, 7) * np.timedelta64(1, "D")
BREAKS = ("duplicate-dates", "unsorted-dates", "nat-date", "numeric-dates", "y-increasing", "x-irregular",
          "20m-pixels", "feet-crs", "degrees-crs", "no-sensor-band")


@st.composite
def sensor_case(draw, name: str, extent_px: tuple[int, int]):
    """One sensor: raw values in projector band order (NaN = missing), its dates, and the
    DataArray the user gives (bands subset/shuffled/extra, dims transposed, nodata marker)."""
    m = MODALITIES[name]
    ny, nx = extent_px
    n_dates = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    times = np.sort(rng.choice(DAYS, n_dates, replace=False))
    mean = np.asarray(m.norm.mean if m.norm else S1_STATS[0])
    std = np.asarray(m.norm.std if m.norm else S1_STATS[1])
    raw = mean[None, :, None, None] + std[None, :, None, None] * rng.standard_normal((n_dates, m.n_bands, ny, nx))
    raw = np.abs(raw).astype("float32").astype("float64")
    nan = draw(st.sampled_from(["none", "pixels", "date", "band", "tile-corner", "none", "pixels", "all"]))
    event(f"{name} NaN: {nan}")
    if nan == "pixels":
        raw[rng.random(raw.shape) < 0.2] = np.nan
    elif nan == "date":
        raw[rng.integers(n_dates)] = np.nan
    elif nan == "band":
        raw[:, rng.integers(m.n_bands)] = np.nan
    elif nan == "tile-corner":
        raw[..., : ny // 2, : nx // 2] = np.nan
    elif nan == "all":
        raw[:] = np.nan
    bands = draw(st.permutations(m.bands))[: draw(st.integers(1, m.n_bands))]
    extra = draw(st.sampled_from([[], ["SCL"]]))
    values = {b: raw[:, m.bands.index(b)] for b in bands}
    given = dict(values)
    for b in extra:
        given[b] = np.full(raw[:, 0].shape, 7.0)
    order = draw(st.permutations(list(given)))
    data = np.stack([given[b] for b in order], axis=1)
    nodata = draw(st.booleans())
    attrs = {}
    if nodata:
        marked = rng.random(data.shape) < 0.1
        data = np.where(marked, NODATA, data)
        for i, b in enumerate(order):
            if b in values:
                values[b] = np.where(marked[:, i], np.nan, values[b])
        attrs["nodata"] = NODATA
    expected = np.full(raw.shape, np.nan)
    for b, v in values.items():
        expected[:, m.bands.index(b)] = v
    da = xr.DataArray(
        data, dims=("time", "band", "y", "x"), name=name, attrs=attrs,
        coords={"time": times, "band": order,
                "y": ORIGIN[1] - (np.arange(ny) + 0.5) * 10.0, "x": ORIGIN[0] + (np.arange(nx) + 0.5) * 10.0},
    )
    da = da.transpose(*draw(st.permutations(["time", "band", "y", "x"])))
    return da, expected, times


def broken(da: xr.DataArray, how: str) -> xr.DataArray:
    t = da["time"].values
    if how == "duplicate-dates":
        return da.assign_coords(time=np.r_[t[:1], t[:-1]]) if t.size > 1 else xr.concat([da, da], "time")
    if how == "unsorted-dates":
        return da.assign_coords(time=t[::-1]) if t.size > 1 else xr.concat([da, da.assign_coords(
            time=t - np.timedelta64(3, "D"))], "time")
    if how == "nat-date":
        return da.assign_coords(time=np.r_[t[:-1], np.datetime64("NaT", "ns")])
    if how == "numeric-dates":
        return da.assign_coords(time=doy(t).astype("int64"))
    if how == "y-increasing":
        return da.isel(y=slice(None, None, -1)) if da.sizes["y"] > 1 else da.assign_coords(y=[0.0]).pipe(
            lambda a: xr.concat([a, a.assign_coords(y=[10.0])], "y"))
    if how == "x-irregular":
        x = da["x"].values.copy()
        x[-1] += 3.0
        return da.assign_coords(x=x)
    if how == "20m-pixels":
        return da.assign_coords(x=ORIGIN[0] + (np.arange(da.sizes["x"]) + 0.5) * 20.0,
                                y=ORIGIN[1] - (np.arange(da.sizes["y"]) + 0.5) * 20.0)
    if how == "no-sensor-band":
        return da.isel(band=[0]).assign_coords(band=["SCL"])
    return da


@st.composite
def cases(draw):
    ny, nx = draw(st.integers(4, 12)), draw(st.integers(4, 12))
    s2, s2_expected, s2_times = draw(sensor_case("s2", (ny, nx)))
    sensors = {"s2": (s2, s2_expected, s2_times)}
    if draw(st.integers(0, 3)) == 0:  # an s1-asc beside it, maybe on a smaller extent from the same corner
        sy, sx = draw(st.integers(2, ny)), draw(st.integers(2, nx))
        sensors["s1-asc"] = draw(sensor_case("s1-asc", (sy, sx)))
    how = draw(st.sampled_from((None,) * 6 + BREAKS))
    victim = draw(st.sampled_from(list(sensors)))
    crs = {"feet-crs": "EPSG:2263", "degrees-crs": "EPSG:4326"}.get(how, "EPSG:32631")
    nodes = {}
    for name, (da, _, _) in sensors.items():
        da = broken(da, how) if name == victim else da
        if draw(st.booleans()):
            da = da.chunk({"y": draw(st.integers(1, ny))})
        nodes[name] = da.rio.write_crs(crs).to_dataset()
    patch = draw(st.sampled_from([20, 40]))
    tile = draw(st.sampled_from([t for t in (40, 80) if t % patch == 0]))
    options = {"patch_size": patch, "tile_size": tile, "block_tiles": draw(st.sampled_from([None, 1, 2])),
               "overlap": draw(st.sampled_from([0, patch]))}
    return xr.DataTree.from_dict(nodes), sensors, how, options


def expected_embedding(sensors, options):
    """The reference, or ``None`` where no spatial sensor holds a valid pixel (all NaN output)."""
    inputs = {}
    for name, (_, values, times) in sensors.items():
        stats = None if name == "s2" else S1_STATS
        inputs[name] = (normalise(values, name, stats), doy(times))
    if not any(np.isfinite(v).any() for v, _ in inputs.values()):
        return None
    extent = tuple(10.0 * max(v.shape[-2 + i] for _, v, _ in sensors.values()) for i in range(2))
    return reference(inputs, extent, options["patch_size"], options["tile_size"], overlap=options["overlap"])


@pytest.mark.properties
@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES == 25,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_embed_raises_a_documented_error_or_equals_the_reference(case):
    tree, sensors, how, options = case
    event(f"break: {how}")
    event(f"sensors: {'+'.join(sensors)}")
    kwargs = {"model": MODEL, "normalize": {"s1-asc": S1_STATS}} if "s1-asc" in sensors else {"model": MODEL}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # absent bands, smaller sensors: warned, and tested elsewhere
        if how is not None:
            with pytest.raises(AnySatInputError) as info:
                xanysat.embed(tree, **options, **kwargs).compute()
            assert isinstance(info.value, DimensionError), (how, info.value)
            return
        got = np.asarray(xanysat.embed(tree, **options, **kwargs).values, "float64")
    expected = expected_embedding(sensors, options)
    event(f"all NaN: {expected is None}")
    if expected is None:
        assert np.isnan(got).all()
        return
    assert got.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
