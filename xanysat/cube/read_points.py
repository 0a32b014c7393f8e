"""Reading point collections (one row per sample: a pixel's ``(time, band)`` series) into
``SensorCube`` objects, as ``xanysat.cube.read`` reads gridded cubes.

Dates come either as a 1-D ``time`` coordinate shared by all samples, or per sample as a 2-D
``time(sample, obs)`` coordinate in which NaT pads the samples with fewer observations.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from xanysat.cube.read import SensorCube, as_datetimes, attr_sensor, nodata_of, sensor_name, strip_prefix
from xanysat.errors import DimensionError, ModalityError
from xanysat.sensors.rules import absent_bands
from xanysat.sensors.table import MODALITIES, band_index, get_modality

SAMPLE = "sample"
OBS = "obs"


def read_points(obj, sensor: str | None) -> dict[str, SensorCube]:
    if isinstance(obj, xr.DataTree):
        parts = [(sensor_name(node.name, {**node.attrs}, None, f"DataTree node {node.path!r}"),
                  _single_array(node.to_dataset(inherit=True), node.path), node.attrs)
                 for node in obj.subtree if node.has_data and node.to_dataset(inherit=True).data_vars]
    elif isinstance(obj, xr.Dataset):
        parts = _from_dataset(obj, sensor)
    elif isinstance(obj, xr.DataArray):
        parts = [(sensor_name(obj.name, obj.attrs, sensor, "the DataArray"), obj, obj.attrs)]
    else:
        raise DimensionError(f"expected an xarray Dataset, DataArray or DataTree of point samples, got "
                             f"{type(obj).__name__}.")
    if not parts:
        raise DimensionError("the input holds no sensor: expected variables named after sensors "
                             f"({', '.join(MODALITIES)}) or carrying an 'anysat:sensor' attribute.")
    sensors: dict[str, SensorCube] = {}
    for name, array, attrs in parts:
        if name in sensors:
            raise ModalityError(f"sensor {name!r} appears twice in the input; keep one variable per sensor.")
        sensors[name] = _point_sensor(name, array, attrs)
    sizes = {name: s.data.sizes[SAMPLE] for name, s in sensors.items()}
    if len(set(sizes.values())) > 1:
        raise DimensionError(f"the sensors have different numbers of samples {sizes}; they must share 'sample'.")
    return sensors


def _from_dataset(ds: xr.Dataset, given: str | None) -> list:
    named = [v for v in ds.data_vars if isinstance(v, str) and (v in MODALITIES or attr_sensor(ds[v]))]
    if named and (given is None or len(named) > 1):
        return [(attr_sensor(ds[v]) or v, strip_prefix(ds[v], v), ds[v].attrs) for v in named]
    name = sensor_name(None, ds.attrs, given, "the Dataset")
    return [(name, _single_array(ds, "the Dataset"), ds.attrs)]


def _single_array(ds: xr.Dataset, where: str) -> xr.DataArray:
    """One variable with a ``band`` dim, or one variable per band (each ``(sample, time)``)."""
    series = [v for v in ds.data_vars if SAMPLE in ds[v].dims and ds[v].ndim >= 2]
    if not series:
        if SAMPLE not in ds.dims:
            raise DimensionError(no_sample_message(where, tuple(ds.dims)))
        raise DimensionError(f"{where} has no variable with a 'sample' dim and a time dim; expected the series.")
    with_band = [v for v in series if "band" in ds[v].dims]
    if with_band:
        if len(series) > 1:
            raise DimensionError(f"{where} holds several series variables {series}; expected one with a 'band' "
                                 "dim or one variable per band.")
        return ds[with_band[0]]
    nodata = {v: nodata_of(ds[v], {}) for v in series}  # stacking drops each band's own marker
    if len(set(nodata.values())) > 1:
        ds = ds.assign({v: ds[v].where(ds[v] != n) for v, n in nodata.items() if n is not None})
    stacked = ds[series].to_dataarray(dim="band").assign_coords(band=[str(v) for v in series])
    common = set(nodata.values())
    return stacked.assign_attrs(nodata=common.pop()) if len(common) == 1 and None not in common else stacked


def no_sample_message(name, dims) -> str:
    """The error for an input without a ``sample`` dim (with the stacking fix for images)."""
    hint = ""
    if {"y", "x"} <= set(dims):
        hint = (" For an image, use xanysat.embed, or embed every pixel as a sample: "
                "da.stack(sample=('y', 'x')).")
    return f"{name!r} has dims {dims}; point samples need a 'sample' dim (one row per pixel series).{hint}"


def _point_sensor(name: str, da: xr.DataArray, attrs) -> SensorCube:
    m = get_modality(name)
    if not m.time_series:
        raise ModalityError(
            f"{name!r} is a single-date very-high-resolution sensor ({m.resolution_m:g} m pixels, "
            f"{m.subpatch_px} px tokens): one pixel is no input for it. Embed image tiles with xanysat.embed."
        )
    if SAMPLE not in da.dims:
        raise DimensionError(no_sample_message(name, da.dims))
    for dim in ("y", "x"):
        if dim in da.dims:
            if da.sizes[dim] != 1:
                raise DimensionError(
                    f"{name!r} has a {dim!r} dim of size {da.sizes[dim]}; embed_points embeds one pixel per "
                    "sample. Select the pixel, or use xanysat.embed for image patches."
                )
            da = da.isel({dim: 0}, drop=True)
    if "band" not in da.dims:
        raise DimensionError(f"{name!r} has dims {da.dims}; expected ('sample', 'time', 'band') with a 'band' "
                             f"coordinate naming its bands ({', '.join(m.bands)}).")
    if "band" not in da.coords:
        raise DimensionError(f"{name!r} has no 'band' coordinate; name its bands, e.g. "
                             "da.assign_coords(band=[...]).")
    obs_dim, dates = _dates_of(da, name)
    extra = [d for d in da.dims if d not in (SAMPLE, obs_dim, "band")]
    if extra:
        raise DimensionError(f"{name!r} has dims {da.dims}; expected ('sample', {obs_dim!r}, 'band'). Select or "
                             f"reduce {extra} first.")
    bands = tuple(str(b) for b in da["band"].values)
    indices, missing = band_index(m, bands)
    if all(i is None for i in indices):
        raise DimensionError(f"none of {name!r}'s bands {list(bands)} is a band of the sensor: expected some of "
                             f"{', '.join(m.bands)} (or their STAC asset keys / common names).")
    underived = absent_bands(m, indices)
    if underived:
        warnings.warn(f"{name}: bands {', '.join(underived)} absent from the input; they are filled with the "
                      "projector's missing-value parameter (recorded in the output's attrs).", stacklevel=4)
    if any(s == 0 for s in da.shape):
        raise DimensionError(f"{name!r} is empty: dims {dict(da.sizes)}.")
    data = da.transpose(SAMPLE, obs_dim, "band")
    data = data.drop_vars(list(data.coords)).rename({obs_dim: OBS} if obs_dim != OBS else {})
    data = data.assign_coords(band=list(bands))
    return SensorCube(name, data, bands, dates, m.resolution_m, None, nodata_of(da, attrs))


def _dates_of(da: xr.DataArray, name: str) -> tuple[str, np.ndarray]:
    """The observation dim and the dates: ``(obs,)`` shared or ``(sample, obs)`` per sample."""
    if "time" not in da.coords:
        where = "a 'time' dim but no 'time' coordinate" if "time" in da.dims else f"dims {da.dims} and no dates"
        raise DimensionError(
            f"{name!r} has {where}; give the acquisition dates as a 1-D 'time' coordinate shared by all samples "
            "or as a 2-D time(sample, obs) coordinate (NaT for padding)."
        )
    coord = da["time"]
    if coord.ndim == 1 and coord.dims[0] != SAMPLE:
        obs_dim = coord.dims[0]
    elif coord.ndim == 2 and SAMPLE in coord.dims:
        obs_dim = next(d for d in coord.dims if d != SAMPLE)
        coord = coord.transpose(SAMPLE, obs_dim)
    else:
        raise DimensionError(f"{name!r}'s 'time' coordinate has dims {coord.dims}; expected (time,) shared by all "
                             "samples or (sample, obs) per sample.")
    t = as_datetimes(coord.values, name)
    if t.ndim == 1 and np.isnat(t).any():
        raise DimensionError(f"{name!r} has missing (NaT) shared times; drop those dates, or give per-sample "
                             "dates as a 2-D time(sample, obs) coordinate.")
    _check_order(t.reshape(-1, t.shape[-1]), name, da)
    return obs_dim, t


def _check_order(t: np.ndarray, name: str, da: xr.DataArray) -> None:
    """Valid dates must strictly increase along each row (NaT entries are skipped)."""
    valid = ~np.isnat(t)
    ints = t.view("int64")
    positions = np.where(valid, np.arange(t.shape[1]), -1)
    last = np.maximum.accumulate(positions, axis=1)
    previous = np.concatenate([np.full((t.shape[0], 1), -1), last[:, :-1]], axis=1)
    has_previous = valid & (previous >= 0)
    prev_value = np.take_along_axis(ints, np.maximum(previous, 0), axis=1)
    for bad, what, fix in ((has_previous & (ints == prev_value), "duplicate", "merge or drop duplicates"),
                           (has_previous & (ints < prev_value), "unsorted", "sort each sample's dates")):
        if bad.any():
            row, col = np.argwhere(bad)[0]
            date = np.datetime_as_string(t[row, col], unit="D")
            where = "" if t.shape[0] == 1 else f" in sample {_sample_label(da, row)}"
            raise DimensionError(f"{name!r} has {what} dates{where} (at {date}); {fix}.")


def _sample_label(da: xr.DataArray, row: int) -> str:
    if SAMPLE in da.coords:
        return f"{da.indexes[SAMPLE][row]!r} (position {row})" if SAMPLE in da.indexes else f"at position {row}"
    return f"at position {row}"
