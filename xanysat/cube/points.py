"""``embed_points``: labelled pixel time series (one row per sample) in, one vector per sample out.

The layout of crop-type collections such as TimeSen2Crop or BreizhCrops: a ``sample`` dim and,
per sample, a ``(time, band)`` series. Each sample is embedded as a one-pixel tile (10 m at
patch size 10 m, the paper's TimeSen2Crop setting) with ``output="tile"``.

Dates come either as a 1-D ``time`` coordinate shared by all samples, or per sample as a 2-D
``time(sample, obs)`` coordinate in which NaT pads the samples with fewer observations.
Padded observations, NaN and nodata values, and absent bands are masked (never attended, never
zero-filled); a sensor with no valid value in a sample is left out of that sample's forward,
and a sample with no valid value at all gets a NaN embedding.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import xarray as xr

from xanysat.cube.read import (
    as_datetimes,
    _attr_sensor,
    _nodata_of,
    _ratio_sources_present,
    _sensor_name,
    _strip_prefix,
)
from xanysat.cube.embed import EMBEDDING, FEATURE, day_of_year
from xanysat.errors import DimensionError, ModalityError
from xanysat.sensors.table import MODALITIES, band_index, get_modality
from xanysat.cube.normalize import projector_bands, resolve_normalization
from xanysat.cube.runtime import ModelRef, client_model, model_ref

SAMPLE = "sample"
OBS = "obs"
DEFAULT_CHUNK = 4096
"""Samples per task when neither ``chunks`` nor a dask-backed input says otherwise."""


@dataclass(frozen=True)
class _PointSensor:
    """One sensor of a point collection, as read from the user's object.

    Attributes:
        name: sensor key in the sensor table.
        data: ``(sample, obs, band)``, lazy if the input was.
        bands: the input's band names, in the order of ``data``.
        nodata: value marking missing values besides NaN, or ``None``.
        dates: ``(obs,)`` shared or ``(sample, obs)`` per-sample ``datetime64[ns]`` (NaT = padding).
    """

    name: str
    data: xr.DataArray
    bands: tuple[str, ...]
    nodata: float | None
    dates: np.ndarray

    @property
    def band_indices(self):
        return band_index(self.name, self.bands)

    @property
    def per_sample(self) -> bool:
        return self.dates.ndim == 2


@dataclass(frozen=True)
class _PointPlan:
    """What a task needs to know about one sensor (small and picklable)."""

    name: str
    doy: tuple[float, ...] | None
    """Shared day numbers; ``None`` when the dates are a per-sample input of the task."""


@dataclass(frozen=True)
class _PointJob:
    model: ModelRef
    sensors: tuple[_PointPlan, ...]
    patch_size: int
    batch_size: int
    features: int


def embed_points(data, *, sensor: str | None = None, model=None, batch_size: int = 256, device="auto", dtype=None,
                 normalize=True, date_origin=None, chunks=None) -> xr.DataArray:
    """Embed pixel time series, one vector per sample, lazily.

    Args:
        data: a ``Dataset`` or ``DataArray`` with a ``sample`` dim and, per sample, ``time`` (or
            ``obs``) and ``band`` dims: dates as a 1-D ``time`` coordinate shared by all samples,
            or as a 2-D ``time(sample, obs)`` coordinate (NaT where a sample has fewer
            observations). Several sensors: one variable each, named after the sensor (or with
            ``attrs["anysat:sensor"]``), with sensor-prefixed dims and coordinates (``s2_time`` or
            ``s2_obs``, ``s2_band``). A ``DataTree`` with one node per sensor works too. Values in
            the units of the sensor table's statistics (S2 L2A: reflectance x 1e4).
            Sensors: time series whose pixel is one token (s2, s1, s1-asc, l8 at 10 m; l7, alos
            at 30 m, not mixed with 10 m ones), and modis (a tile token) with any of them or alone.
        sensor: the sensor of a single-sensor input that does not name it.
        model: an ``AnySat``, a ``load_model`` name or directory, or None (``load_model()``).
        batch_size: samples per forward.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:0"``...
        dtype: ``"float32"`` (CPU default), ``"bfloat16"`` (CUDA default) or ``"float16"``.
        normalize: True (sensor table statistics), False (already normalised), or a mapping
            sensor -> ``NormStats`` / ``(mean, std)`` / bool.
        date_origin: None for day-of-year dates, or a date to count days from.
        chunks: samples per task: an int, a tuple of chunk sizes, or ``{"sample": ...}``.
            Default: the input's ``sample`` chunks if it is dask-backed, else 4096.

    Returns:
        A lazy ``DataArray`` named ``"embedding"``, dims ``("sample", "feature")``, float32,
        carrying the input's per-sample coordinates (labels, ids, x/y...) and its 1-D
        ``sample`` data variables as coordinates, with provenance attrs. Samples with no
        valid value are NaN.

    Raises:
        DimensionError: no ``sample`` dim, no dates, unsorted or duplicate dates in a sample,
            unknown dims or bands.
        ModalityError: unknown sensor, or one that cannot be a one-pixel tile.

    Example:
        >>> import numpy as np, xarray as xr, xanysat
        >>> bands = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
        >>> s2 = xr.DataArray(
        ...     np.random.default_rng(0).uniform(0, 5000, (3, 4, 10)).astype("float32"),
        ...     dims=("sample", "time", "band"), name="s2",
        ...     coords={"time": np.array(["2021-03-01", "2021-05-01", "2021-07-01", "2021-09-01"],
        ...                              "datetime64[ns]"),
        ...             "band": bands, "label": ("sample", ["wheat", "maize", "wheat"])})
        >>> emb = xanysat.embed_points(s2, model="untrained-tiny")
        >>> emb.dims, emb.shape, emb["label"].values.tolist()
        (('sample', 'feature'), (3, 256), ['wheat', 'maize', 'wheat'])
        >>> bool(emb.notnull().all())
        True
    """
    import dask.array as da
    from dask.base import tokenize

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of samples, got {batch_size!r}.")
    sensors = _read_points(data, sensor)
    names = tuple(sensors)
    patch_size = _tile_m(sensors)
    ref = model_ref(model, device=device, dtype=dtype)
    features = _check_model(ref, names)
    stats = resolve_normalization(names, normalize)
    n = next(iter(sensors.values())).data.sizes[SAMPLE]
    sample_chunks = _sample_chunks(chunks, sensors, n)

    plans, pairs, letters = [], [], iter("abcdeghijklmnopqrtuvwxyz")
    for name, s in sensors.items():
        values = projector_bands(s)
        if stats[name] is not None:
            mean = xr.DataArray(np.asarray(stats[name].mean, "float32"), dims="band")
            std = xr.DataArray(np.asarray(stats[name].std, "float32"), dims="band")
            values = (values - mean) / std
        values = values.transpose(SAMPLE, OBS, "band").chunk({SAMPLE: sample_chunks, OBS: -1, "band": -1})
        obs, band = next(letters), next(letters)
        pairs += [values.data, f"s{obs}{band}"]
        doy = _day_numbers(s.dates, date_origin)
        if s.per_sample:
            pairs += [xr.DataArray(doy, dims=(SAMPLE, OBS)).chunk({SAMPLE: sample_chunks, OBS: -1}).data, f"s{obs}"]
            plans.append(_PointPlan(name, None))
        else:
            plans.append(_PointPlan(name, tuple(float(d) for d in doy)))
    job = _PointJob(ref, tuple(plans), patch_size, int(batch_size), features)
    inputs = pairs[::2]
    array = da.blockwise(
        _embed_chunk, "sf", job, None, *pairs, new_axes={"f": features}, concatenate=True, dtype="float32",
        meta=np.empty((0, 0), dtype="float32"), name=f"anysat-points-{tokenize(job, *[a.name for a in inputs])}",
    )
    return _to_dataarray(data, sensors, job, array, stats)


# -- reading the input ---------------------------------------------------------------------


def _read_points(obj, sensor: str | None) -> dict[str, _PointSensor]:
    if isinstance(obj, xr.DataTree):
        parts = [(_sensor_name(node.name, {**node.attrs}, None, f"DataTree node {node.path!r}"),
                  _single_array(node.to_dataset(inherit=True), node.path), node.attrs)
                 for node in obj.subtree if node.has_data and node.to_dataset(inherit=True).data_vars]
    elif isinstance(obj, xr.Dataset):
        parts = _from_dataset(obj, sensor)
    elif isinstance(obj, xr.DataArray):
        parts = [(_sensor_name(obj.name, obj.attrs, sensor, "the DataArray"), obj, obj.attrs)]
    else:
        raise DimensionError(f"expected an xarray Dataset, DataArray or DataTree of point samples, got "
                             f"{type(obj).__name__}.")
    if not parts:
        raise DimensionError("the input holds no sensor: expected variables named after sensors "
                             f"({', '.join(MODALITIES)}) or carrying an 'anysat:sensor' attribute.")
    sensors: dict[str, _PointSensor] = {}
    for name, array, attrs in parts:
        if name in sensors:
            raise ModalityError(f"sensor {name!r} appears twice in the input; keep one variable per sensor.")
        sensors[name] = _point_sensor(name, array, attrs)
    sizes = {name: s.data.sizes[SAMPLE] for name, s in sensors.items()}
    if len(set(sizes.values())) > 1:
        raise DimensionError(f"the sensors have different numbers of samples {sizes}; they must share 'sample'.")
    return sensors


def _from_dataset(ds: xr.Dataset, given: str | None) -> list:
    named = [v for v in ds.data_vars if isinstance(v, str) and (v in MODALITIES or _attr_sensor(ds[v]))]
    if named and (given is None or len(named) > 1):
        return [(_attr_sensor(ds[v]) or v, _strip_prefix(ds[v], v), ds[v].attrs) for v in named]
    name = _sensor_name(None, ds.attrs, given, "the Dataset")
    return [(name, _single_array(ds, "the Dataset"), ds.attrs)]


def _single_array(ds: xr.Dataset, where: str) -> xr.DataArray:
    """One variable with a ``band`` dim, or one variable per band (each ``(sample, time)``)."""
    series = [v for v in ds.data_vars if SAMPLE in ds[v].dims and ds[v].ndim >= 2]
    if not series:
        if SAMPLE not in ds.dims:
            raise DimensionError(_no_sample_message(where, tuple(ds.dims)))
        raise DimensionError(f"{where} has no variable with a 'sample' dim and a time dim; expected the series.")
    with_band = [v for v in series if "band" in ds[v].dims]
    if with_band:
        if len(series) > 1:
            raise DimensionError(f"{where} holds several series variables {series}; expected one with a 'band' "
                                 "dim or one variable per band.")
        return ds[with_band[0]]
    nodata = {v: _nodata_of(ds[v], {}) for v in series}  # stacking drops each band's own marker
    if len(set(nodata.values())) > 1:
        ds = ds.assign({v: ds[v].where(ds[v] != n) for v, n in nodata.items() if n is not None})
    stacked = ds[series].to_dataarray(dim="band").assign_coords(band=[str(v) for v in series])
    common = set(nodata.values())
    return stacked.assign_attrs(nodata=common.pop()) if len(common) == 1 and None not in common else stacked


def _no_sample_message(name, dims) -> str:
    hint = ""
    if {"y", "x"} <= set(dims):
        hint = (" For an image, use xanysat.embed, or embed every pixel as a sample: "
                "da.stack(sample=('y', 'x')).")
    return f"{name!r} has dims {dims}; point samples need a 'sample' dim (one row per pixel series).{hint}"


def _point_sensor(name: str, da: xr.DataArray, attrs) -> _PointSensor:
    m = get_modality(name)
    if not m.time_series:
        raise ModalityError(
            f"{name!r} is a single-date very-high-resolution sensor ({m.resolution_m:g} m pixels, "
            f"{m.subpatch_px} px tokens): one pixel is no input for it. Embed image tiles with xanysat.embed."
        )
    if SAMPLE not in da.dims:
        raise DimensionError(_no_sample_message(name, da.dims))
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
    underived = [b for b in missing if b not in m.derived_bands or not _ratio_sources_present(m, b, indices)]
    if underived:
        warnings.warn(f"{name}: bands {', '.join(underived)} absent from the input; they are filled with the "
                      "projector's missing-value parameter (recorded in the output's attrs).", stacklevel=4)
    if any(s == 0 for s in da.shape):
        raise DimensionError(f"{name!r} is empty: dims {dict(da.sizes)}.")
    data = da.transpose(SAMPLE, obs_dim, "band")
    data = data.drop_vars(list(data.coords)).rename({obs_dim: OBS} if obs_dim != OBS else {})
    data = data.assign_coords(band=list(bands))
    return _PointSensor(name, data, bands, _nodata_of(da, attrs), dates)


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


def _tile_m(sensors: dict[str, _PointSensor]) -> int:
    """The tile side: the pixel of the spatial sensors (which must agree), 10 m for modis alone."""
    spatial = {n: MODALITIES[n].resolution_m for n in sensors if not MODALITIES[n].tile_token}
    if len(set(spatial.values())) > 1:
        sizes = ", ".join(f"{n} {r:g} m" for n, r in spatial.items())
        raise ModalityError(f"a sample is one pixel of each sensor, but their pixels differ ({sizes}): they cover "
                            "different ground. Embed them separately.")
    return int(next(iter(spatial.values()), 10))


def _check_model(ref: ModelRef, names) -> int:
    model = client_model(ref)
    unknown = [n for n in names if n not in model.projectors]
    if unknown:
        raise ModalityError(f"this model has no projector for {unknown}; it knows {', '.join(model.projectors)}.")
    return model.config.embed_dim


def _sample_chunks(chunks, sensors: dict[str, _PointSensor], n: int):
    if isinstance(chunks, dict):
        chunks = chunks.get(SAMPLE)
    if chunks is None:
        for s in sensors.values():
            if s.data.chunks is not None:
                return s.data.chunks[0]
        return min(n, DEFAULT_CHUNK)
    if isinstance(chunks, (int, np.integer)):
        if chunks < 1 and chunks != -1:
            raise ValueError(f"chunks must be a positive number of samples, got {chunks}.")
        return n if chunks == -1 else int(chunks)
    chunks = tuple(int(c) for c in chunks)
    if sum(chunks) != n:
        raise ValueError(f"chunks {chunks} add up to {sum(chunks)} samples, not {n}.")
    return chunks


def _day_numbers(dates: np.ndarray, origin) -> np.ndarray:
    """Day numbers as the model takes them, NaN for NaT."""
    valid = ~np.isnat(dates)
    days = day_of_year(np.where(valid, dates, np.datetime64("2000-01-01", "ns")), origin)
    return np.where(valid, days, np.nan).astype("float32")


# -- the task ------------------------------------------------------------------------------


def _embed_chunk(job: _PointJob, *blocks) -> np.ndarray:
    """The task: embed a chunk of samples; ``blocks`` are each sensor's ``(n, T, C)`` values, each
    followed by its ``(n, T)`` day numbers for per-sample dates. Returns ``(n, features)``."""
    sensors, blocks = {}, list(blocks)
    for plan in job.sensors:
        x = np.asarray(blocks.pop(0), dtype="float32")
        doy = np.asarray(blocks.pop(0), dtype="float32") if plan.doy is None else \
            np.broadcast_to(np.asarray(plan.doy, "float32"), x.shape[:2])
        valid = np.isfinite(x) & np.isfinite(doy)[:, :, None]
        sensors[plan.name] = (x, doy, valid)
    n = next(iter(sensors.values()))[0].shape[0]
    out = np.full((n, job.features), np.nan, dtype="float32")
    groups = defaultdict(list)
    present = {name: valid.any(axis=(1, 2)) for name, (_, _, valid) in sensors.items()}
    for i in range(n):
        key = tuple(name for name in sensors if present[name][i])
        if key:
            groups[key].append(i)
    if not groups:
        return out
    from xanysat.cube.runtime import get_model

    model = get_model(job.model)
    for key, rows in groups.items():
        for start in range(0, len(rows), job.batch_size):
            index = np.asarray(rows[start:start + job.batch_size])
            out[index] = _forward(model, job, {name: sensors[name] for name in key}, index)
    return out


def _forward(model, job: _PointJob, sensors, index: np.ndarray) -> np.ndarray:
    import torch

    from xanysat.cube.runtime import DTYPES, forward_lock, placement

    device, dtype_name = placement(job.model)
    batch = {}
    for name, (x, doy, valid) in sensors.items():
        x, doy, valid = x[index], doy[index], valid[index]
        keep = valid.any(axis=(0, 2))  # observations valid in some sample of the batch
        x, doy, valid = x[:, keep], doy[:, keep], valid[:, keep]
        data = np.where(valid, x, 0.0).astype("float32")[..., None, None]
        batch[name] = torch.from_numpy(np.ascontiguousarray(data)).to(device, DTYPES[dtype_name])
        if not valid.all():
            batch[f"{name}_mask"] = torch.from_numpy(np.ascontiguousarray(valid[..., None, None])).to(device)
        batch[f"{name}_dates"] = torch.from_numpy(np.where(np.isfinite(doy), doy, 0.0).astype("float32")).to(device)
    with forward_lock(device), torch.inference_mode():
        return model(batch, job.patch_size, "tile").float().cpu().numpy()


# -- the output ----------------------------------------------------------------------------


def _sample_coords(obj) -> xr.Coordinates:
    """The input's coordinates along ``sample`` only (and scalar ones), its 1-D ``sample``
    variables as coordinates."""
    if isinstance(obj, xr.DataTree):  # the first node holding data, with the coordinates it inherits
        obj = next(node for node in obj.subtree if node.has_data).to_dataset(inherit=True)
    keep_vars = [v for v in obj.data_vars if obj[v].dims == (SAMPLE,)] if isinstance(obj, xr.Dataset) else []
    base = obj.coords.to_dataset()
    drop = [c for c in base.variables if base[c].dims not in ((), (SAMPLE,))]
    base = base.drop_vars(drop)
    if keep_vars:
        base = base.assign_coords({v: obj[v].variable for v in keep_vars})
    return base.coords


def _to_dataarray(obj, sensors: dict[str, _PointSensor], job: _PointJob, array, stats) -> xr.DataArray:
    import xanysat

    inputs = {}
    for name, s in sensors.items():
        m = MODALITIES[name]
        indices, missing = s.band_indices
        inputs[name] = {
            "bands": list(s.bands),
            "missing_bands": [b for b in missing
                              if b not in m.derived_bands or not _ratio_sources_present(m, b, indices)],
            "dates": "per sample" if s.per_sample else [str(t)[:10] for t in s.dates.astype("datetime64[D]")],
        }
    attrs = {
        "model_id": job.model.model_id,
        "weights_sha256_16": job.model.weights,
        "patch_size_m": job.patch_size,
        "output": "tile",
        "tile_size_m": [job.patch_size, job.patch_size],
        "samples": f"one pixel per sample ({job.patch_size} m tile)",
        "sensors": list(sensors),
        "inputs": json.dumps(inputs),
        "normalization": json.dumps({
            n: None if v is None else {"mean": list(v.mean), "std": list(v.std), "source": v.source}
            for n, v in stats.items()
        }),
        "dates": "day of year (1 = 1 January)",
        "missing_data": "NaN/nodata values, padded (NaT) observations and absent bands masked; samples with no "
                        "valid value are NaN",
        "xanysat_version": xanysat.__version__,
    }
    out = xr.DataArray(array, dims=(SAMPLE, FEATURE), name=EMBEDDING, attrs=attrs)
    coords = _sample_coords(obj)
    if coords:
        out = out.assign_coords(coords)
    return out.assign_coords({FEATURE: np.arange(job.features)})
