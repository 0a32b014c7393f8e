"""embed_points: pixel time series (one row per sample) -> one embedding per sample.

The reference is the model called directly on hand-built one-pixel batches (1 x 1 pixel,
1-based day of year from pandas, table normalisation, masks only where values are missing),
one sample at a time; it never goes through xanysat's own input code.
"""

from __future__ import annotations

import functools
import json
import pickle

import dask
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from helpers.paths import FIXTURES

import xanysat
from xanysat.cube.points import embed_points
from xanysat.errors import DimensionError, ModalityError
from xanysat.sensors.table import MODALITIES

MODEL = "untrained-tiny"
S2 = MODALITIES["s2"]
ATOL = 2e-5
WORLDCEREAL = (FIXTURES / "real" / "worldcereal"
               / "worldcereal_preprocessed_inputs.nc")


@functools.lru_cache(maxsize=1)
def tiny():
    return xanysat.load_model(MODEL)


def doy(times) -> np.ndarray:
    return np.asarray(pd.DatetimeIndex(np.asarray(times)).dayofyear, dtype="float32")


def direct(series: dict[str, tuple], patch_size: int = 10, stats: dict | None = None) -> np.ndarray:
    """The model on one sample: ``series[name] = (values (T, C) raw in projector band order,
    dates (T,))``; NaN values are masked; normalised with the table (or ``stats[name]``)."""
    batch = {}
    for name, (values, dates) in series.items():
        m = MODALITIES[name]
        mean, std = (stats or {}).get(name) or (m.norm.mean, m.norm.std)
        x = (np.asarray(values, "float64") - np.asarray(mean)) / np.asarray(std)
        valid = np.isfinite(x)
        batch[name] = torch.tensor(np.where(valid, x, 0.0), dtype=torch.float32)[None, :, :, None, None]
        if not valid.all():
            batch[f"{name}_mask"] = torch.from_numpy(valid)[None, :, :, None, None]
        batch[f"{name}_dates"] = torch.from_numpy(doy(dates))[None]
    with torch.inference_mode():
        return tiny()(batch, patch_size, "tile")[0].numpy()


def raw_values(rng, shape, name="s2") -> np.ndarray:
    m = MODALITIES[name]
    mean = np.asarray(m.norm.mean if m.norm else [0.0] * m.n_bands)
    std = np.asarray(m.norm.std if m.norm else [1.0] * m.n_bands)
    return (mean + std * rng.standard_normal((*shape, m.n_bands))).astype("float32")


def shared_collection(n: int = 7, t: int = 5, seed: int = 0) -> xr.Dataset:
    """``s2(sample, time, band)`` with one date axis, labels, ids and lat/lon per sample."""
    rng = np.random.default_rng(seed)
    times = np.datetime64("2021-02-03", "ns") + np.sort(rng.choice(365, t, replace=False)) * np.timedelta64(1, "D")
    ds = xr.Dataset(
        {"s2": (("sample", "time", "band"), raw_values(rng, (n, t))),
         "area_m2": ("sample", rng.uniform(100, 1000, n))},
        coords={"sample": [f"p{i}" for i in range(n)], "time": times, "band": list(S2.bands),
                "label": ("sample", rng.choice(["wheat", "maize", "rapeseed"], n)),
                "lat": ("sample", rng.uniform(40, 50, n)), "lon": ("sample", rng.uniform(0, 5, n))},
    )
    return ds


def per_sample_collection(counts=(5, 3, 1, 4, 2), seed: int = 1, pad_value=np.nan) -> xr.Dataset:
    """``s2(sample, obs, band)`` with per-sample dates ``time(sample, obs)``, NaT-padded."""
    rng = np.random.default_rng(seed)
    n, t = len(counts), max(counts)
    values = raw_values(rng, (n, t))
    times = np.full((n, t), np.datetime64("NaT"), "datetime64[ns]")
    for i, c in enumerate(counts):
        days = np.sort(rng.choice(700, c, replace=False))  # may cross a new year
        times[i, :c] = np.datetime64("2020-06-01", "ns") + days * np.timedelta64(1, "D")
        values[i, c:] = pad_value
    return xr.Dataset(
        {"s2": (("sample", "obs", "band"), values)},
        coords={"time": (("sample", "obs"), times), "band": list(S2.bands),
                "crop": ("sample", np.arange(n) % 2)},
    )


def computed(*args, **kwargs) -> xr.DataArray:
    kwargs.setdefault("model", MODEL)
    return embed_points(*args, **kwargs).compute()


# -- equality with direct model calls ---------------------------------------------------------


def test_shared_dates_match_direct_model_calls():
    ds = shared_collection()
    emb = computed(ds)
    assert emb.dims == ("sample", "feature") and emb.name == "embedding" and emb.dtype == np.float32
    for i in range(ds.sizes["sample"]):
        expected = direct({"s2": (ds["s2"].values[i], ds["time"].values)})
        np.testing.assert_allclose(emb.values[i], expected, atol=ATOL)


def test_per_sample_dates_match_direct_model_calls_of_the_unpadded_series():
    counts = (5, 3, 1, 4, 2)
    ds = per_sample_collection(counts, pad_value=123.0)  # padding is masked by NaT, whatever its values
    emb = computed(ds)
    for i, c in enumerate(counts):
        expected = direct({"s2": (ds["s2"].values[i, :c], ds["time"].values[i, :c])})
        np.testing.assert_allclose(emb.values[i], expected, atol=ATOL)
    assert emb.attrs["dates"].startswith("day of year")


def test_padded_sample_equals_the_sample_alone():
    ds = per_sample_collection((5, 2, 4))
    # NaT in the middle too: positions of the padding do not matter.
    ds["time"].values[1, 3], ds["time"].values[1, 1] = ds["time"].values[1, 1], np.datetime64("NaT")
    ds["s2"].values[1, 3] = ds["s2"].values[1, 1]
    padded = computed(ds).values[1]
    keep = ~np.isnat(ds["time"].values[1])
    alone = xr.DataArray(ds["s2"].values[1:2, keep], dims=("sample", "time", "band"), name="s2",
                         coords={"time": ds["time"].values[1, keep], "band": list(S2.bands)})
    np.testing.assert_allclose(padded, computed(alone).values[0], atol=ATOL)


def test_nan_and_nodata_values_are_masked():
    ds = shared_collection(n=3)
    values = ds["s2"].values
    values[0, 1, :] = np.nan        # a whole observation missing
    values[1, 2, 4] = np.nan        # one value missing
    dn = ds.assign(s2=ds["s2"].fillna(-9999).assign_attrs(nodata=-9999))
    expected = [direct({"s2": (values[i], ds["time"].values)}) for i in range(3)]
    for variant in (ds, dn):
        np.testing.assert_allclose(computed(variant).values, np.stack(expected), atol=ATOL)
    # the whole-observation gap is the series without that date
    without = direct({"s2": (np.delete(values[0], 1, axis=0), np.delete(ds["time"].values, 1))})
    np.testing.assert_allclose(expected[0], without, atol=ATOL)


def test_sample_without_valid_values_is_nan():
    ds = shared_collection(n=3)
    ds["s2"].values[1] = np.nan
    emb = computed(ds)
    assert np.isnan(emb.values[1]).all() and np.isfinite(emb.values[[0, 2]]).all()


def test_band_order_aliases_and_extra_bands_do_not_matter():
    ds = shared_collection(n=4)
    reference = computed(ds).values
    order = np.random.default_rng(3).permutation(S2.n_bands)
    aliases = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "B11": "swir16"}
    shuffled = ds["s2"].isel(band=order)
    shuffled = shuffled.assign_coords(band=[aliases.get(b, b) for b in shuffled["band"].values])
    scl = xr.full_like(shuffled.isel(band=[0]), 4.0).assign_coords(band=["SCL"])
    mixed = xr.concat([scl, shuffled], dim="band").transpose("band", "sample", "time")
    np.testing.assert_allclose(computed(mixed).values, reference, atol=ATOL)


def test_missing_band_warns_is_recorded_and_masked():
    ds = shared_collection(n=3)
    with pytest.warns(UserWarning, match="B8A"):
        emb = embed_points(ds.drop_sel(band="B8A"), model=MODEL)
    inputs = json.loads(emb.attrs["inputs"])
    assert inputs["s2"]["missing_bands"] == ["B8A"]
    values = ds["s2"].values.copy()
    values[..., S2.bands.index("B8A")] = np.nan
    for i in range(3):
        np.testing.assert_allclose(emb.values[i], direct({"s2": (values[i], ds["time"].values)}), atol=ATOL)


def test_several_sensors_with_prefixed_dims_and_a_derived_ratio():
    rng = np.random.default_rng(5)
    n = 4
    s2 = shared_collection(n=n).rename(time="s2_time", band="s2_band")
    vv, vh = rng.uniform(0.05, 0.3, (n, 3)), rng.uniform(0.01, 0.1, (n, 3))
    s1_times = np.array([["2021-03-02", "2021-04-07", "NaT"]] * n, "datetime64[ns]")
    s1_times[2, 2] = np.datetime64("2021-08-01")
    vv[:, 2], vh[:, 2] = np.where(np.isnat(s1_times[:, 2]), np.nan, vv[:, 2]), vh[:, 2]
    s1 = np.stack([vv, vh], axis=-1).astype("float32")
    s1[3] = np.nan  # sample 3 has no S1: embedded from S2 alone
    ds = s2.assign(s1=(("sample", "s1_obs", "s1_band"), s1)).assign_coords(
        s1_time=(("sample", "s1_obs"), s1_times), s1_band=["vv", "vh"])
    stats = {"s1": ([0.1, 0.05, 3.0], [0.1, 0.05, 2.0])}
    emb = computed(ds, normalize={"s2": True, "s1": stats["s1"]})
    assert emb.attrs["sensors"] == ["s2", "s1"]
    assert json.loads(emb.attrs["inputs"])["s1"]["missing_bands"] == []
    for i in range(n):
        series = {"s2": (ds["s2"].values[i], ds["s2_time"].values)}
        keep = ~np.isnat(s1_times[i]) & np.isfinite(s1[i, :, 0])
        if keep.any():
            v = s1[i, keep].astype("float64")
            ratio = np.clip(v[:, 0] / (v[:, 1] + 1e-10), -1e4, 1e4)
            series["s1"] = (np.column_stack([v, ratio]), s1_times[i, keep])
        np.testing.assert_allclose(emb.values[i], direct(series, stats=stats), atol=ATOL)


def test_thirty_metre_sensor_is_a_thirty_metre_tile():
    rng = np.random.default_rng(2)
    l7 = xr.DataArray(rng.uniform(0, 1, (2, 3, 6)).astype("float32"), dims=("sample", "time", "band"), name="l7",
                      coords={"time": np.array(["2021-01-05", "2021-02-06", "2021-03-10"], "datetime64[ns]"),
                              "band": list(MODALITIES["l7"].bands)})
    stats = {"l7": ([0.5] * 6, [0.3] * 6)}
    emb = computed(l7, normalize=stats)
    assert emb.attrs["patch_size_m"] == 30
    for i in range(2):
        expected = direct({"l7": (l7.values[i], l7["time"].values)}, patch_size=30, stats=stats)
        np.testing.assert_allclose(emb.values[i], expected, atol=ATOL)


# -- laziness, chunks, coordinates -------------------------------------------------------------


def test_lazy_one_task_per_chunk_and_chunking_invariance():
    ds = shared_collection(n=9)
    ds["s2"].values[4, :2] = np.nan  # masks in some batches and not in others
    whole = embed_points(ds, model=MODEL, chunks=-1)
    split = embed_points(ds, model=MODEL, chunks=2, batch_size=3)
    from_input = embed_points(ds.chunk(sample=4), model=MODEL)
    assert isinstance(split.data, dask.array.Array)
    assert split.data.numblocks == (5, 1) and from_input.data.chunks[0] == (4, 4, 1)
    expected = whole.values
    for emb in (split, from_input, embed_points(ds, model=MODEL, chunks={"sample": (1, 8)})):
        np.testing.assert_allclose(emb.values, expected, atol=ATOL)


def test_graph_holds_neither_the_model_nor_large_arrays():
    ds = shared_collection(n=6)
    emb = embed_points(ds, model=MODEL, chunks=3)
    graph = dict(emb.data.__dask_graph__())
    size = len(pickle.dumps(graph))
    assert size < ds["s2"].nbytes + 60_000, size
    assert "AnySat" not in repr(graph.values())


def test_per_sample_coordinates_and_variables_are_carried():
    ds = shared_collection(n=5).rio.write_crs("EPSG:4326")
    emb = embed_points(ds, model=MODEL)
    assert emb["sample"].values.tolist() == ds["sample"].values.tolist()
    for name in ("label", "lat", "lon", "area_m2"):
        np.testing.assert_array_equal(emb[name].values, ds[name].values)
    assert "time" not in emb.coords and "band" not in emb.coords
    assert emb.rio.crs.to_epsg() == 4326
    np.testing.assert_array_equal(emb["feature"].values, np.arange(emb.sizes["feature"]))


def test_provenance_attrs():
    emb = embed_points(shared_collection(n=2), model=MODEL)
    assert emb.attrs["model_id"].startswith("untrained-tiny") and len(emb.attrs["weights_sha256_16"]) == 16
    assert emb.attrs["output"] == "tile" and emb.attrs["patch_size_m"] == 10
    norm = json.loads(emb.attrs["normalization"])
    assert norm["s2"]["mean"] == list(S2.norm.mean)
    inputs = json.loads(emb.attrs["inputs"])
    assert len(inputs["s2"]["dates"]) == 5
    assert json.loads(embed_points(per_sample_collection(), model=MODEL).attrs["inputs"])["s2"][
        "dates"] == "per sample"


def test_raster_pixels_stacked_as_samples_equal_embed_with_one_pixel_tiles():
    from xanysat.testing import synthetic_cube

    cube = synthetic_cube(("s2",), extent_m=(40, 30), n_dates=3)
    tiles = xanysat.embed(cube, patch_size=10, output="tile", tile_size=10, model=MODEL).compute()
    pixels = cube["s2"]["s2"].stack(sample=("y", "x"))
    points = embed_points(pixels, model=MODEL).compute()
    assert points.indexes["sample"].names == ["y", "x"]
    np.testing.assert_allclose(points.values, tiles.stack(sample=("y", "x")).transpose("sample", "feature").values,
                               atol=ATOL)


def test_sensor_by_attribute_or_argument():
    ds = shared_collection(n=2)
    reference = computed(ds).values
    by_attr = ds["s2"].rename("reflectance").assign_attrs({"anysat:sensor": "s2"})
    by_arg = ds.rename(s2="reflectance")
    np.testing.assert_allclose(computed(by_attr).values, reference, atol=ATOL)
    np.testing.assert_allclose(computed(by_arg, sensor="s2").values, reference, atol=ATOL)


# -- errors ------------------------------------------------------------------------------------


def test_error_without_sample_dim_suggests_stacking():
    image = xr.DataArray(np.zeros((2, 10, 3, 3), "float32"), dims=("time", "band", "y", "x"), name="s2")
    with pytest.raises(DimensionError, match=r"'sample' dim.*stack\(sample="):
        embed_points(image, model=MODEL)


def test_error_without_dates():
    da = shared_collection(n=2)["s2"].drop_vars("time")
    with pytest.raises(DimensionError, match="'time' dim but no 'time' coordinate"):
        embed_points(da, model=MODEL)


def test_error_unknown_and_unsupported_sensors():
    da = shared_collection(n=2)["s2"]
    with pytest.raises(ModalityError, match="cannot tell which sensor"):
        embed_points(da.rename("values"), model=MODEL)
    with pytest.raises(ModalityError, match="unknown sensor 's3'"):
        embed_points(da, sensor="s3", model=MODEL)
    naip = xr.DataArray(np.zeros((2, 4)), dims=("sample", "band"), coords={"band": ["R", "G", "B", "NIR"]},
                        name="naip")
    with pytest.raises(ModalityError, match="single-date very-high-resolution"):
        embed_points(naip, model=MODEL)
    l7 = da.isel(band=slice(0, 6)).assign_coords(band=list(MODALITIES["l7"].bands)).rename("l7")
    both = xr.Dataset({"s2": da, "l7": l7.rename(band="l7_band")})
    with pytest.raises(ModalityError, match="pixels differ"):
        embed_points(both, model=MODEL, normalize={"l7": ([0.0] * 6, [1.0] * 6)})


@pytest.mark.parametrize("problem", ["unsorted", "duplicate"])
def test_error_unsorted_or_duplicate_dates_within_a_sample(problem):
    ds = per_sample_collection((4, 3, 2))
    times = ds["time"].values.copy()
    times[1, 2] = times[1, 0] - np.timedelta64(1, "D") if problem == "unsorted" else times[1, 1]
    bad = ds.assign_coords(time=(("sample", "obs"), times), sample=["a", "b", "c"])
    with pytest.raises(DimensionError, match=rf"{problem} dates in sample 'b'"):
        embed_points(bad, model=MODEL)
    shared = shared_collection(n=2)
    t = shared["time"].values.copy()
    t[3] = t[2] if problem == "duplicate" else t[0]
    with pytest.raises(DimensionError, match=f"{problem} dates"):
        embed_points(shared.assign_coords(time=t), model=MODEL)


def test_error_nat_in_shared_dates_and_extra_dims():
    ds = shared_collection(n=2)
    t = ds["time"].values.copy()
    t[1] = np.datetime64("NaT")
    with pytest.raises(DimensionError, match="NaT"):
        embed_points(ds.assign_coords(time=t), model=MODEL)
    extra = ds["s2"].expand_dims(orbit=2)
    with pytest.raises(DimensionError, match="orbit"):
        embed_points(extra, model=MODEL)


# -- a real collection ----------------------------------------------------------------------------


def worldcereal_points(n: int = 50, seed: int = 0) -> xr.DataArray:
    """~50 pixels of the WorldCereal cube as samples: S2 L2A DN (uint16, 65535 = nodata), 12 monthly
    dates, their (x, y) as per-sample coordinates. The file has no B8A."""
    if not WORLDCEREAL.is_file():
        pytest.skip(f"WorldCereal fixture {WORLDCEREAL} not present")
    ds = xr.open_dataset(WORLDCEREAL, engine="h5netcdf").rename(t="time")
    names = [v for v in ds.data_vars if str(v).startswith("S2-L2A-")]
    s2 = (ds[names].to_dataarray("band").assign_coords(band=[v.removeprefix("S2-L2A-") for v in names])
          .drop_vars("crs", errors="ignore"))
    rng = np.random.default_rng(seed)
    flat = rng.choice(ds.sizes["y"] * ds.sizes["x"], n, replace=False)
    iy, ix = np.unravel_index(flat, (ds.sizes["y"], ds.sizes["x"]))
    picked = s2.isel(y=xr.DataArray(iy, dims="sample"), x=xr.DataArray(ix, dims="sample"))
    picked = picked.assign_coords(pixel=("sample", flat)).rename("s2").assign_attrs(nodata=65535)
    assert picked.dtype == np.uint16
    return picked


def test_real_worldcereal_pixels_match_direct_model_calls():
    points = worldcereal_points()
    with pytest.warns(UserWarning, match="B8A"):
        emb = embed_points(points, model=MODEL, chunks=16, batch_size=8)
    assert emb.dims == ("sample", "feature") and emb.data.numblocks == (4, 1)
    assert {"x", "y", "pixel"} <= set(emb.coords)
    np.testing.assert_array_equal(emb["x"].values, points["x"].values)
    values = emb.values
    raw = points.transpose("sample", "time", "band").values.astype("float64")
    raw[raw == 65535] = np.nan
    order = [list(points["band"].values).index(b) if b in points["band"].values else None for b in S2.bands]
    in_projector_order = np.stack([raw[..., i] if i is not None else np.full(raw.shape[:2], np.nan)
                                   for i in order], axis=-1)
    assert np.isnan(raw).any(axis=-1).any(), "expected some nodata in the picked pixels"
    for i in range(0, 50, 7):
        if np.isnan(in_projector_order[i]).all():
            assert np.isnan(values[i]).all()
            continue
        expected = direct({"s2": (in_projector_order[i], points["time"].values)})
        np.testing.assert_allclose(values[i], expected, atol=ATOL)
    assert np.isfinite(values).all(axis=1).sum() >= 45


def test_datatree_with_one_node_per_sensor():
    ds = shared_collection(n=3)
    tree = xr.DataTree.from_dict({"s2": ds})
    emb = computed(tree)
    np.testing.assert_allclose(emb.values, computed(ds).values, atol=ATOL)
    assert emb["label"].values.tolist() == ds["label"].values.tolist()


def test_modis_is_a_tile_token_with_s2_or_alone():
    rng = np.random.default_rng(8)
    n = 3
    s2 = shared_collection(n=n).rename(time="s2_time", band="s2_band")
    modis_times = np.array(["2021-01-01", "2021-01-09", "2021-01-17", "2021-01-25"], "datetime64[ns]")
    modis = rng.uniform(0, 0.4, (n, 4, 7)).astype("float32")
    ds = s2.assign(modis=(("sample", "modis_time", "modis_band"), modis)).assign_coords(
        modis_time=modis_times, modis_band=list(MODALITIES["modis"].bands))
    stats = {"modis": ([0.2] * 7, [0.1] * 7)}
    both = computed(ds, normalize={"s2": True, **stats})
    alone = computed(ds[["modis"]], normalize=stats)
    for i in range(n):
        series = {"s2": (ds["s2"].values[i], ds["s2_time"].values), "modis": (modis[i], modis_times)}
        np.testing.assert_allclose(both.values[i], direct(series, stats=stats), atol=ATOL)
        np.testing.assert_allclose(alone.values[i], direct({"modis": (modis[i], modis_times)}, stats=stats),
                                   atol=ATOL)


def test_one_variable_per_band_with_per_band_nodata():
    ds = shared_collection(n=3)
    ds["s2"].values[0, 1, 2] = np.nan
    ds["s2"].values[2, 3, 7] = np.nan
    per_band = xr.Dataset(
        {b: ds["s2"].sel(band=b, drop=True).fillna(-1 - i).assign_attrs(nodata=-1 - i)
         for i, b in enumerate(S2.bands)},
        coords={"label": ds["label"]}, attrs={"anysat:sensor": "s2"})
    emb = computed(per_band)
    np.testing.assert_allclose(emb.values, computed(ds).values, atol=ATOL)
    assert emb["label"].values.tolist() == ds["label"].values.tolist()
