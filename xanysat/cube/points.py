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

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import xarray as xr

from xanysat.cube.embed import EMBEDDING, FEATURE
from xanysat.cube.normalize import check_normalize
from xanysat.cube.options import check_device, check_dtype
from xanysat.cube.prepare import Inputs, SensorInput, is_points, prepare
from xanysat.cube.read_points import OBS, SAMPLE, no_sample_message
from xanysat.cube.runtime import ModelRef, client_model, model_ref
from xanysat.errors import AnySatInputError, DimensionError, ModalityError
from xanysat.sensors.rules import parse_date_origin
from xanysat.sensors.table import MODALITIES

DEFAULT_CHUNK = 4096
"""Samples per task when neither ``chunks`` nor a dask-backed input says otherwise."""


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
        AnySatInputError: a bad setting (``batch_size``, ``device``, ``dtype``, ``normalize``,
            ``date_origin``), checked as ``embed`` checks them, before anything is read.
        DimensionError: no ``sample`` dim, no dates (or numbers instead of dates), unsorted or
            duplicate dates in a sample, unknown dims or bands, unusable statistics.
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
        raise AnySatInputError(f"batch_size must be a positive number of samples, got {batch_size!r}.")
    device = check_device(device)  # the settings embed checks with EmbedOptions, before anything is read
    check_dtype(dtype)
    check_normalize(normalize)
    parse_date_origin(date_origin)
    if not is_points(data):
        raise DimensionError(no_sample_message(getattr(data, "name", None) or type(data).__name__,
                                               tuple(getattr(data, "dims", ()))))
    ref = model_ref(model, device=device, dtype=dtype)
    inputs = prepare(data, sensor=sensor, normalize=normalize, date_origin=date_origin,
                     model_stats=client_model(ref).card.normalization)
    names = inputs.names
    patch_size = point_tile_m(names)
    features = _check_model(ref, names)
    sample_chunks = _sample_chunks(chunks, inputs.sensors, inputs.n_samples)

    plans, pairs, letters = [], [], iter("abcdeghijklmnopqrtuvwxyz")
    for name, s in inputs.sensors.items():
        values = s.normalized().transpose(SAMPLE, OBS, "band").chunk({SAMPLE: sample_chunks, OBS: -1, "band": -1})
        obs, band = next(letters), next(letters)
        pairs += [values.data, f"s{obs}{band}"]
        doy = s.days.astype("float32")
        if s.read.per_sample:
            pairs += [xr.DataArray(doy, dims=(SAMPLE, OBS)).chunk({SAMPLE: sample_chunks, OBS: -1}).data, f"s{obs}"]
            plans.append(_PointPlan(name, None))
        else:
            plans.append(_PointPlan(name, tuple(float(d) for d in doy)))
    job = _PointJob(ref, tuple(plans), patch_size, int(batch_size), features)
    arrays = pairs[::2]
    array = da.blockwise(
        _embed_chunk, "sf", job, None, *pairs, new_axes={"f": features}, concatenate=True, dtype="float32",
        meta=np.empty((0, 0), dtype="float32"), name=f"anysat-points-{tokenize(job, *[a.name for a in arrays])}",
    )
    return _to_dataarray(data, inputs, job, array)


def point_tile_m(sensors) -> int:
    """The tile side of a one-pixel sample: the pixel of the spatial sensors (which must agree),
    10 m for modis alone.

    Example:
        >>> point_tile_m(("s2", "s1-asc")), point_tile_m(("l7",)), point_tile_m(("modis",))
        (10, 30, 10)
    """
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


def _sample_chunks(chunks, sensors: dict[str, SensorInput], n: int):
    if isinstance(chunks, dict):
        chunks = chunks.get(SAMPLE)
    if chunks is None:
        for s in sensors.values():
            if s.read.data.chunks is not None:
                return s.read.data.chunks[0]
        return min(n, DEFAULT_CHUNK)
    if isinstance(chunks, (int, np.integer)):
        if chunks < 1 and chunks != -1:
            raise AnySatInputError(f"chunks must be a positive number of samples, got {chunks}.")
        return n if chunks == -1 else int(chunks)
    chunks = tuple(int(c) for c in chunks)
    if sum(chunks) != n:
        raise AnySatInputError(f"chunks {chunks} add up to {sum(chunks)} samples, not {n}.")
    return chunks


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


def _to_dataarray(obj, inputs: Inputs, job: _PointJob, array) -> xr.DataArray:
    import xanysat

    attrs = {
        "model_id": job.model.model_id,
        "weights_sha256_16": job.model.weights,
        "patch_size_m": job.patch_size,
        "output": "tile",
        "tile_size_m": [job.patch_size, job.patch_size],
        "samples": f"one pixel per sample ({job.patch_size} m tile)",
        **inputs.provenance(),
        "missing_data": "NaN/nodata values, padded (NaT) observations and absent bands masked; samples with no "
                        "valid value are NaN",
        "xanysat_version": xanysat.__version__,
    }
    if inputs.date_origin is not None:
        attrs["date_origin"] = inputs.date_origin
    out = xr.DataArray(array, dims=(SAMPLE, FEATURE), name=EMBEDDING, attrs=attrs)
    coords = _sample_coords(obj)
    if coords:
        out = out.assign_coords(coords)
    return out.assign_coords({FEATURE: np.arange(job.features)})
