"""Torch datasets over the cubes ``xanysat.embed`` reads, samples built exactly as embed builds tiles.

A sample is one tile in model layout without the batch dim: per sensor ``(T, C, H, W)``
(``(C, H, W)`` for single-date sensors) float32, normalised like ``embed`` (the sensor
table's statistics by default), missing values set to 0 with ``<sensor>_mask`` (bool, same
shape, True = valid), ``<sensor>_dates`` ``(T,)`` day of year (1 = 1 January); dates with no
valid value in the tile are left out and a sensor with no valid value is left out of the
sample, as ``embed`` does; plus ``label`` when labels are given. ``collate`` pads dates and
stacks samples into the model batch. Pop ``label`` before calling the model.

Samples are computed with dask's synchronous scheduler (no thread pool in DataLoader workers),
and a worker process drops the open files it inherited through ``fork`` (xarray reopens
them), so file-backed cubes are safe with ``num_workers > 0``.

Example:
    >>> import xanysat
    >>> from xanysat.loaders.samplers import GridTileSampler
    >>> from xanysat.testing import synthetic_cube
    >>> cube = synthetic_cube(("s2",), extent_m=80, n_dates=3)
    >>> ds = CubeDataset(cube, GridTileSampler(cube, 40))
    >>> sample = ds[0]
    >>> len(ds), tuple(sample["s2"].shape), sample["s2_dates"].tolist()
    (4, (3, 10, 4, 4), [60.0, 76.0, 92.0])
    >>> batch = collate([ds[0], ds[1]])
    >>> xanysat.load_model("untrained-tiny")(batch, patch_size=20, output="tile").shape
    torch.Size([2, 256])
"""

from __future__ import annotations

import itertools
import os
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from xanysat.cube.normalize import projector_bands
from xanysat.cube.prepare import prepare
from xanysat.cube.read import Cube, SensorCube
from xanysat.errors import DimensionError
from xanysat.loaders.samplers import TileQuery, in_time
from xanysat.sensors.table import MODALITIES

__all__ = ["IGNORE_INDEX", "LABEL_KINDS", "CubeDataset", "IterableCubeDataset", "PointDataset", "collate"]

IGNORE_INDEX = -100
"""Label of unknown pixels / tiles (``torch.nn.CrossEntropyLoss``'s default ``ignore_index``)."""
LABEL_KINDS = ("segmentation", "classification", "multilabel")
_TOL = 1e-6


# -- reading tiles ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """One sensor, ready to cut tiles from (picklable: lazy xarray, numpy)."""

    sensor: SensorCube
    doy: np.ndarray | None
    mean: np.ndarray | None
    std: np.ndarray | None

    @property
    def name(self) -> str:
        return self.sensor.name

    @property
    def tile_token(self) -> bool:
        return MODALITIES[self.name].tile_token

    def read(self, **window) -> np.ndarray:
        """Projector bands of a window (``isel`` keywords), NaN where missing, normalised, float32.

        The window is cut from the input before the band mapping, so the graph to cull and run
        holds only the input's own layers, whatever the size of the cube."""
        return _normalised(self, _load(projector_bands(replace(self.sensor, data=self.sensor.data.isel(window)))))


def _stats(stats):
    if stats is None:
        return None, None
    shape = (-1, 1, 1)
    return np.asarray(stats.mean, "float32").reshape(shape), np.asarray(stats.std, "float32").reshape(shape)


class _ProcessLocal:
    """Drop file handles inherited through ``fork`` on first use in a new process."""

    def _check_process(self) -> None:
        pid = os.getpid()
        if getattr(self, "_pid", pid) != pid:
            from xarray.backends.file_manager import FILE_CACHE

            # Forget the file handles copied by fork (the parent keeps its own): sharing one
            # HDF5/netCDF handle between processes is unsafe. xarray's file managers reopen
            # their files in this process on next access.
            FILE_CACHE.clear()
        self._pid = pid

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_pid", None)
        return state


class _TileReader(_ProcessLocal):
    """Cuts one ``TileQuery`` out of a cube into a sample dict."""

    def __init__(self, data, *, normalize, sensor, date_origin, labels, label_kind, num_classes, ignore_index):
        inputs = prepare(data, sensor=sensor, normalize=normalize, date_origin=date_origin)
        if inputs.cube is None:
            raise DimensionError("CubeDataset takes a gridded cube (y/x dims); for point samples use PointDataset.")
        cube = inputs.cube
        self.origin, self.crs = cube.origin, cube.crs
        self.sources = {}
        for name, s in inputs.sensors.items():
            doy = None if s.days is None else s.days.astype("float32")
            self.sources[name] = _Source(s.read, doy, *_stats(s.stats))
        self.labels = None if labels is None else _read_labels(labels, cube, label_kind, num_classes, ignore_index)
        self._check_process()

    def __call__(self, query: TileQuery) -> dict[str, torch.Tensor]:
        self._check_process()
        sample = {}
        for source in self.sources.values():
            sample.update(_sensor_sample(source, query))
        if self.labels is not None:
            sample["label"] = self.labels.for_tile(query)
        return sample


def _sensor_sample(s: _Source, query: TileQuery) -> dict[str, torch.Tensor]:
    (oy, ox), (h, w) = query.offset_m, query.size_m
    dates, res = s.sensor.dates, s.sensor.resolution_m
    dated = dates is not None
    window, times = {}, None
    if dated:
        times = np.flatnonzero(in_time(dates, query.time))
        if times.size == 0:
            return {}
        if times.size < dates.size:
            window["time"] = times
    ny, nx = s.sensor.shape_px
    if s.tile_token:
        # one series per tile: the mean of the pixels whose centres fall in the tile (as embed)
        picks = [_centred(lo, lo + size, res, n) for lo, size, n in ((oy, h, ny), (ox, w, nx))]
        if any(p is None for p in picks):
            return {}
        x = s.read(**window, y=picks[0], x=picks[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            x = np.nanmean(x, axis=(-2, -1), keepdims=True)
    else:
        r0, r1, c0, c1 = round(oy / res), round((oy + h) / res), round(ox / res), round((ox + w) / res)
        lead = (len(times), MODALITIES[s.name].n_bands) if dated else (MODALITIES[s.name].n_bands,)
        x = np.full((*lead, r1 - r0, c1 - c0), np.nan, dtype="float32")
        rs, re, cs, ce = max(r0, 0), min(r1, ny), max(c0, 0), min(c1, nx)
        if rs < re and cs < ce:
            x[..., rs - r0:re - r0, cs - c0:ce - c0] = s.read(**window, y=slice(rs, re), x=slice(cs, ce))
    valid = np.isfinite(x)
    out = {}
    if dated:
        kept = valid.reshape(valid.shape[0], -1).any(axis=1)  # dates without a valid value: left out
        x, valid, times = x[kept], valid[kept], times[kept]
    if not valid.any():
        return {}
    out[s.name] = torch.from_numpy(np.where(valid, x, 0.0).astype("float32"))
    if dated:
        out[f"{s.name}_dates"] = torch.from_numpy(s.doy[times])
    out[f"{s.name}_mask"] = torch.from_numpy(valid)
    return out


def _load(da: xr.DataArray) -> np.ndarray:
    """Read a small lazy selection in this thread: dask's synchronous scheduler (no thread
    pool inside DataLoader workers; the global scheduler setting is left alone)."""
    return np.asarray(da.compute(scheduler="synchronous").values)


def _centred(lo: float, hi: float, res: float, n: int) -> slice | None:
    centres = (np.arange(n) + 0.5) * res
    inside = np.flatnonzero((centres >= lo) & (centres < hi))
    if inside.size == 0:
        middle = int(((lo + hi) / 2) // res)
        return slice(middle, middle + 1) if 0 <= middle < n else None
    return slice(int(inside[0]), int(inside[-1]) + 1)


def _normalised(s: _Source, values) -> np.ndarray:
    x = np.asarray(values, dtype="float32")
    return x if s.mean is None else (x - s.mean) / s.std


# -- labels -----------------------------------------------------------------------------------


def _read_labels(labels, cube: Cube, kind, num_classes, ignore_index):
    if isinstance(labels, xr.DataArray) and {"y", "x"} <= set(labels.dims):
        kind = kind or "segmentation"
        _check_kind(kind, LABEL_KINDS)
        return _RasterLabels.read(labels, cube, kind, num_classes, ignore_index)
    if isinstance(labels, xr.DataArray):
        raise DimensionError(f"raster labels need 'y' and 'x' dims, got dims {labels.dims}; for point labels pass a "
                             "table with x, y (, radius) and label columns.")
    kind = kind or "classification"
    _check_kind(kind, LABEL_KINDS[1:], "point labels give one label per tile: ")
    return _PointLabels.read(labels, cube, kind, num_classes, ignore_index)


def _check_kind(kind, allowed, why: str = "") -> None:
    if kind not in allowed:
        raise ValueError(f"{why}label_kind must be one of {allowed}, got {kind!r}.")


def _class_vector(classes: np.ndarray, kind: str, num_classes, ignore_index: int) -> torch.Tensor:
    """Class ids found in a tile -> the majority class (ties: the smallest id), or a multi-hot vector."""
    if kind == "classification":
        if classes.size == 0:
            return torch.tensor(ignore_index, dtype=torch.int64)
        ids, counts = np.unique(classes, return_counts=True)
        return torch.tensor(int(ids[np.argmax(counts)]), dtype=torch.int64)
    if classes.size == 0:
        return torch.full((num_classes,), ignore_index, dtype=torch.int64)
    bad = classes[(classes < 0) | (classes >= num_classes)]
    if bad.size:
        raise ValueError(f"class id {int(bad[0])} is outside 0..{num_classes - 1}; set num_classes= to cover every "
                         "class id (multilabel labels are multi-hot vectors of num_classes).")
    out = torch.zeros(num_classes, dtype=torch.int64)
    out[torch.from_numpy(np.unique(classes).astype("int64"))] = 1
    return out


def _need_classes(kind, num_classes) -> None:
    if kind == "multilabel" and not num_classes:
        raise ValueError("label_kind='multilabel' needs num_classes= (the length of the multi-hot vector).")


@dataclass(frozen=True)
class _RasterLabels:
    """Class ids on a grid sharing the cube's CRS whose pixels align with the cube's corner."""

    values: xr.DataArray
    res: float
    corner_px: tuple[int, int]
    nodata: float | None
    kind: str
    num_classes: int | None
    ignore_index: int

    @classmethod
    def read(cls, da: xr.DataArray, cube: Cube, kind, num_classes, ignore_index) -> _RasterLabels:
        from pyproj import CRS

        from xanysat.cube.read import nodata_of

        _need_classes(kind, num_classes)
        extra = [d for d in da.dims if d not in ("y", "x")]
        if any(da.sizes[d] != 1 for d in extra):
            raise DimensionError(f"raster labels have dims {dict(da.sizes)}; expected one class id per pixel, (y, x).")
        crs = da.rio.crs
        if crs is not None and not CRS.from_user_input(crs).equals(CRS.from_wkt(cube.crs)):
            raise DimensionError(f"the labels are in {CRS.from_user_input(crs).name} but the cube in "
                                 f"{CRS.from_wkt(cube.crs).name}; reproject them onto the cube's CRS.")
        da = da.isel({d: 0 for d in extra}, drop=True).transpose("y", "x")
        steps = [np.diff(np.asarray(da[d].values, "float64")) for d in ("y", "x")]
        if not any(s.size for s in steps):
            raise DimensionError("raster labels of one pixel have no resolution; give at least two pixels.")
        res = float(abs(next(s for s in steps if s.size)[0]))
        if steps[0].size and steps[0][0] > 0:
            raise DimensionError("raster labels have increasing y; expected north-up: labels.isel(y=slice(None, None, -1)).")
        x0, y0 = float(da["x"].values[0]) - res / 2, float(da["y"].values[0]) + res / 2
        corner = ((y0 - cube.origin[1]) / res, (cube.origin[0] - x0) / res)
        if any(abs(c - round(c)) > 1e-3 / res for c in corner):
            raise DimensionError(
                f"the labels' pixels ({res:g} m, top-left corner ({x0:.3f}, {y0:.3f})) do not line up with the cube's "
                f"corner ({cube.origin[0]:.3f}, {cube.origin[1]:.3f}); the offset must be a whole number of label pixels."
            )
        return cls(da, res, (round(corner[0]), round(corner[1])), nodata_of(da, {}), kind, num_classes, ignore_index)

    def bounds(self, query: TileQuery) -> tuple[tuple[int, int], tuple[int, int]]:
        """The tile's rows and columns in the label raster."""
        bounds = []
        for lo, size, corner in zip(query.offset_m, query.size_m, self.corner_px):
            a, b = lo / self.res, (lo + size) / self.res
            if abs(a - round(a)) > _TOL or abs(b - round(b)) > _TOL:
                raise DimensionError(
                    f"the tile ({query.offset_m} m, {query.size_m} m) does not cut the {self.res:g} m label pixels "
                    f"at their edges; build the sampler with align_m={self.res:g}."
                )
            bounds.append((round(a) + corner, round(b) + corner))
        return tuple(bounds)

    def patch(self, query: TileQuery) -> np.ndarray:
        """The label pixels under the tile, int64, ``ignore_index`` for nodata and outside the raster."""
        (r0, r1), (c0, c1) = self.bounds(query)
        ny, nx = self.values.shape
        out = np.full((r1 - r0, c1 - c0), self.ignore_index, dtype="int64")
        rs, re, cs, ce = max(r0, 0), min(r1, ny), max(c0, 0), min(c1, nx)
        if rs < re and cs < ce:
            v = _load(self.values.isel(y=slice(rs, re), x=slice(cs, ce)))
            bad = np.isnan(v) if v.dtype.kind == "f" else np.zeros(v.shape, bool)
            if self.nodata is not None:
                bad |= v == self.nodata
            out[rs - r0:re - r0, cs - c0:ce - c0] = np.where(bad, self.ignore_index, np.where(bad, 0, v).astype("int64"))
        return out

    def for_tile(self, query: TileQuery) -> torch.Tensor:
        patch = self.patch(query)
        if self.kind == "segmentation":
            return torch.from_numpy(patch)
        return _class_vector(patch[patch != self.ignore_index], self.kind, self.num_classes, self.ignore_index)


@dataclass(frozen=True)
class _PointLabels:
    """Labelled points (or discs) at offsets from the cube's corner."""

    oy: np.ndarray
    ox: np.ndarray
    radius: np.ndarray
    classes: np.ndarray
    """``(n,)`` class ids, or ``(n, K)`` multi-hot rows."""
    kind: str
    num_classes: int | None
    ignore_index: int

    @classmethod
    def read(cls, table, cube: Cube, kind, num_classes, ignore_index) -> _PointLabels:
        if isinstance(table, xr.Dataset):
            table = table.to_dataframe()
        table = pd.DataFrame(table)
        missing = [c for c in ("x", "y", "label") if c not in table.columns]
        if missing:
            raise ValueError(f"point labels lack columns {missing}; expected x, y (in the cube's CRS), label "
                             f"(class id or multi-hot), optional radius (m). Got {list(table.columns)}.")
        column = table["label"].to_numpy()
        if column.dtype == object and len(column) and np.ndim(column[0]) == 1:
            classes = np.stack([np.asarray(v, "int64") for v in column])
            if kind == "classification":
                raise ValueError("multi-hot point labels need label_kind='multilabel'.")
            num_classes = num_classes or classes.shape[1]
            if classes.shape[1] != num_classes:
                raise ValueError(f"multi-hot labels have {classes.shape[1]} entries, num_classes is {num_classes}.")
        else:
            if column.dtype.kind not in "iub" and not (column.dtype.kind == "f" and np.all(column == np.round(column))):
                raise ValueError(f"point labels must be integer class ids (or multi-hot rows), got {column.dtype}; map "
                                 "class names to ids first, e.g. table['label'].astype('category').cat.codes.")
            classes = column.astype("int64")
            _need_classes(kind, num_classes)
        radius = table["radius"].to_numpy("float64") if "radius" in table.columns else np.zeros(len(table))
        x0, y0 = cube.origin
        return cls(y0 - table["y"].to_numpy("float64"), table["x"].to_numpy("float64") - x0, radius, classes, kind,
                   num_classes, ignore_index)

    def inside(self, query: TileQuery) -> np.ndarray:
        """Points in the tile ``[top, bottom) x [left, right)``; discs overlapping it."""
        (top, left), (h, w) = query.offset_m, query.size_m
        dy = np.maximum.reduce([top - self.oy, np.zeros_like(self.oy), self.oy - (top + h)])
        dx = np.maximum.reduce([left - self.ox, np.zeros_like(self.ox), self.ox - (left + w)])
        point = (self.oy >= top) & (self.oy < top + h) & (self.ox >= left) & (self.ox < left + w)
        return np.where(self.radius > 0, dy**2 + dx**2 < self.radius**2, point)

    def for_tile(self, query: TileQuery) -> torch.Tensor:
        hits = self.classes[self.inside(query)]
        if hits.ndim == 2:
            if not len(hits):
                return torch.full((self.num_classes,), self.ignore_index, dtype=torch.int64)
            return torch.from_numpy(hits.max(axis=0))
        return _class_vector(hits, self.kind, self.num_classes, self.ignore_index)


# -- datasets ---------------------------------------------------------------------------------


class CubeDataset(Dataset):
    """Map-style dataset of the tiles a sampler yields over a cube.

    Args:
        data: the cube: a DataTree, Dataset or DataArray as ``xanysat.embed`` takes it, or a ``Cube``.
        sampler: a ``GridTileSampler``/``RandomTileSampler`` (or any iterable of ``TileQuery``);
            its queries are listed once: ``ds[i]`` is the i-th. ``ds[query]`` reads any query,
            so a sampler can also be given to the ``DataLoader`` (``sampler=``) for fresh
            random tiles every epoch.
        labels: a ``DataArray`` of class ids with ``y``/``x`` dims on a grid in the cube's CRS
            whose pixels line up with the cube's corner (any resolution); or a table
            (``DataFrame``, dict of columns, ``Dataset``) of points with ``x``, ``y`` in the
            cube's CRS, ``label`` (class id or multi-hot row) and optional ``radius`` in metres.
        label_kind: ``"segmentation"`` (raster only: the label patch ``(H_l, W_l)`` at the
            raster's resolution), ``"classification"`` (the majority class of the tile's
            valid label pixels or points, ties to the smallest id) or ``"multilabel"`` (a
            multi-hot ``(num_classes,)`` vector of the classes present). Default:
            segmentation for a raster, classification for points.
        num_classes: length of multilabel vectors.
        ignore_index: the label of nodata pixels and of tiles without a label (a multilabel
            vector is all ``ignore_index`` then). A point counts for a tile when it lies in
            it (``[top, bottom) x [left, right)``) or, with a radius, when its disc overlaps it.
        normalize: as ``xanysat.embed``: True (sensor table), False, or sensor -> stats.
        sensor: the sensor of a single-sensor input that does not name it.
        date_origin: None for day-of-year dates, or a date to count days from.

    Example:
        >>> import numpy as np, xarray as xr
        >>> from xanysat.loaders.samplers import GridTileSampler
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=40, n_dates=2)
        >>> s2 = cube["s2"]["s2"]
        >>> classes = xr.DataArray(np.arange(16).reshape(4, 4) % 3, dims=("y", "x"),
        ...                        coords={"y": s2.y, "x": s2.x})
        >>> ds = CubeDataset(cube, GridTileSampler(cube, 20), labels=classes)
        >>> ds[1]["label"].tolist()
        [[2, 0], [0, 1]]
    """

    def __init__(self, data, sampler, *, labels=None, label_kind: str | None = None, num_classes: int | None = None,
                 ignore_index: int = IGNORE_INDEX, normalize=True, sensor: str | None = None, date_origin=None):
        self.reader = _TileReader(data, normalize=normalize, sensor=sensor, date_origin=date_origin, labels=labels,
                                  label_kind=label_kind, num_classes=num_classes, ignore_index=ignore_index)
        _check_sampler(sampler, self.reader)
        self.queries: list[TileQuery] = list(sampler)
        if isinstance(self.reader.labels, _RasterLabels):
            for query in self.queries:
                self.reader.labels.bounds(query)
        self.tile_size_m = getattr(sampler, "size_m", None)
        self.ignore_index = ignore_index

    @property
    def sensors(self) -> tuple[str, ...]:
        return tuple(self.reader.sources)

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, index: int | TileQuery) -> dict[str, torch.Tensor]:
        return self.reader(index if isinstance(index, TileQuery) else self.queries[index])


class IterableCubeDataset(IterableDataset):
    """The tiles of a sampler as a stream, drawn anew at every iteration (random sampling).

    Takes the arguments of ``CubeDataset``. In ``DataLoader`` workers the queries are split
    between workers (worker ``k`` reads queries ``k, k + n, ...``); a ``RandomTileSampler``
    is then reseeded from the DataLoader's per-epoch base seed, shared by the workers, so
    the workers together read one random stream per epoch (seed the ``DataLoader``'s
    ``generator`` for reproducible runs; it differs from the sampler's own stream, which
    ``num_workers=0`` reads).

    Example:
        >>> import torch
        >>> from xanysat.loaders.samplers import RandomTileSampler
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=200, n_dates=2)
        >>> sampler = RandomTileSampler(cube, 40, 5, generator=torch.Generator().manual_seed(0))
        >>> loader = torch.utils.data.DataLoader(IterableCubeDataset(cube, sampler), batch_size=2,
        ...                                      collate_fn=collate)
        >>> [tuple(b["s2"].shape) for b in loader]
        [(2, 2, 10, 4, 4), (2, 2, 10, 4, 4), (1, 2, 10, 4, 4)]
    """

    def __init__(self, data, sampler, *, labels=None, label_kind: str | None = None, num_classes: int | None = None,
                 ignore_index: int = IGNORE_INDEX, normalize=True, sensor: str | None = None, date_origin=None):
        self.reader = _TileReader(data, normalize=normalize, sensor=sensor, date_origin=date_origin, labels=labels,
                                  label_kind=label_kind, num_classes=num_classes, ignore_index=ignore_index)
        _check_sampler(sampler, self.reader, grid=True)
        self.sampler = sampler
        self.tile_size_m = getattr(sampler, "size_m", None)
        self.ignore_index = ignore_index

    def __iter__(self):
        info = get_worker_info()
        if info is None:
            queries = iter(self.sampler)
        else:
            sampler = self.sampler.reseeded(info.seed - info.id) if hasattr(self.sampler, "reseeded") else self.sampler
            queries = itertools.islice(sampler, info.id, None, info.num_workers)
        for query in queries:
            yield self.reader(query)

    def __len__(self) -> int:
        return len(self.sampler)


def _check_sampler(sampler, reader: _TileReader, *, grid: bool = False) -> None:
    """The sampler's cube is the dataset's; with ``grid``, its grid unit is whole label pixels
    (queries not known in advance: every one it can draw cuts whole label pixels)."""
    cube = getattr(sampler, "cube", None)
    if cube is not None and not all(abs(a - b) <= 1e-3 for a, b in zip(cube.origin, reader.origin)):
        raise DimensionError(f"the sampler's cube starts at {cube.origin} but the dataset's at {reader.origin}; "
                             "build the sampler on the same cube.")
    labels, unit = reader.labels, getattr(sampler, "unit_m", None)
    if grid and isinstance(labels, _RasterLabels) and unit is not None:
        steps = unit / labels.res
        if abs(steps - round(steps)) > _TOL:
            raise DimensionError(
                f"the sampler cuts tiles on a {unit:g} m grid but the labels have {labels.res:g} m pixels; build the "
                f"sampler with align_m={labels.res:g} so that every tile covers whole label pixels."
            )


class PointDataset(_ProcessLocal, Dataset):
    """Point samples (pixel time series, as ``xanysat.embed_points`` reads them) as one-pixel tiles.

    A sample holds, per sensor, ``(T, C, 1, 1)`` values, mask and the sample's own dates:
    observations that are padding (NaT) or have no valid value are left out, so ``T`` varies
    between samples (``collate`` pads), and a sensor without any valid value is left out, as
    ``embed_points`` does. The model's patch size for these tiles is ``ds.patch_size`` (the
    pixel: 10 m for Sentinel-2).

    Args:
        data: a Dataset, DataArray or DataTree with a ``sample`` dim (see ``embed_points``).
        labels: a coordinate or variable name along ``sample``, or an array: 1-D class ids or
            class names (names are mapped to ids in the order of ``classes``), or 2-D
            ``(sample, class)`` multi-hot rows. Missing labels (NaN, None, "") become
            ``ignore_index``.
        classes: the class names in id order (default: the sorted distinct names).
        ignore_index: label of samples without a label.
        normalize, sensor, date_origin: as ``CubeDataset``.

    Example:
        >>> import numpy as np, xarray as xr
        >>> s2 = xr.DataArray(np.full((2, 3, 10), 1000.0, "float32"), dims=("sample", "time", "band"), name="s2",
        ...     coords={"time": np.array(["2021-01-01", "2021-02-01", "2021-03-01"], "datetime64[ns]"),
        ...             "band": ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"],
        ...             "crop": ("sample", ["wheat", "maize"])})
        >>> ds = PointDataset(s2, labels="crop")
        >>> ds.classes, ds[0]["label"].item(), tuple(ds[0]["s2"].shape), ds[0]["s2_dates"].tolist()
        (['maize', 'wheat'], 1, (3, 10, 1, 1), [1.0, 32.0, 60.0])
    """

    def __init__(self, data, *, labels=None, classes=None, ignore_index: int = IGNORE_INDEX, normalize=True,
                 sensor: str | None = None, date_origin=None):
        from xanysat.cube.points import point_tile_m

        inputs = prepare(data, sensor=sensor, normalize=normalize, date_origin=date_origin)
        if inputs.kind != "points":
            raise DimensionError("PointDataset takes point samples (a 'sample' dim); for a gridded cube use "
                                 "CubeDataset.")
        self.patch_size = point_tile_m(inputs.names)
        self.tile_size_m = (float(self.patch_size),) * 2
        self.sources = {}
        for name, s in inputs.sensors.items():
            mean, std = _stats(s.stats)
            self.sources[name] = (s.read, s.days.astype("float32"),
                                  None if mean is None else mean.reshape(-1), None if std is None else std.reshape(-1))
        self.n = inputs.n_samples
        self.ignore_index = ignore_index
        self.labels, self.classes = (None, None) if labels is None else _sample_labels(
            data, labels, classes, ignore_index, self.n)
        self._check_process()

    @property
    def sensors(self) -> tuple[str, ...]:
        return tuple(self.sources)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        self._check_process()
        index = range(self.n)[index]
        sample = {}
        for name, (points, doy, mean, std) in self.sources.items():
            x = _load(projector_bands(replace(points, data=points.data.isel(sample=[index]))))[0]
            if mean is not None:
                x = (x - mean) / std
            days = doy[index] if doy.ndim == 2 else doy
            valid = np.isfinite(x) & np.isfinite(days)[:, None]
            kept = valid.any(axis=1)
            if not kept.any():
                continue
            x, valid = x[kept][..., None, None], valid[kept][..., None, None]
            sample[name] = torch.from_numpy(np.where(valid, x, 0.0).astype("float32"))
            sample[f"{name}_dates"] = torch.from_numpy(days[kept].astype("float32"))
            sample[f"{name}_mask"] = torch.from_numpy(valid)
        if self.labels is not None:
            sample["label"] = torch.as_tensor(self.labels[index])
        return sample


def _sample_labels(data, labels, classes, ignore_index: int, n: int):
    if isinstance(labels, str):
        source = data
        if isinstance(data, xr.DataTree):
            source = next(node for node in data.subtree if node.has_data).to_dataset(inherit=True)
        if labels not in source.coords and labels not in getattr(source, "data_vars", {}):
            raise ValueError(f"no coordinate or variable {labels!r} along 'sample' to take labels from.")
        values = np.asarray(source[labels].values)
    else:
        values = np.asarray(labels)
    if values.shape[0] != n:
        raise ValueError(f"{values.shape[0]} labels for {n} samples.")
    if values.ndim == 2:
        missing = ~np.isfinite(values.astype("float64")).all(axis=1)
        out = np.where(missing[:, None], ignore_index, np.nan_to_num(values.astype("float64"))).astype("int64")
        return out, None
    if values.ndim != 1:
        raise ValueError(f"labels must be 1-D class ids/names or 2-D multi-hot rows, got shape {values.shape}.")
    if values.dtype.kind in "iub":
        return values.astype("int64"), classes
    if values.dtype.kind == "f":
        ok = np.isfinite(values)
        return np.where(ok, np.nan_to_num(values), ignore_index).astype("int64"), classes
    missing = np.array([v is None or (isinstance(v, float) and np.isnan(v)) or v == "" for v in values])
    names = list(classes) if classes is not None else sorted({str(v) for v in values[~missing]})
    lookup = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(v) for v in values[~missing]} - set(lookup))
    if unknown:
        raise ValueError(f"labels {unknown} are not in classes {names}.")
    return np.array([ignore_index if m else lookup[str(v)] for v, m in zip(values, missing)], "int64"), names


# -- batches ----------------------------------------------------------------------------------


def _sensor_order(samples) -> list[str]:
    """Sensors of all samples, each sample's order kept (they are sub-sequences of one cube's order)."""
    order: list[str] = []
    for sample in samples:
        previous = -1
        for name in (k for k in sample if k in MODALITIES):
            if name in order:
                previous = order.index(name)
            else:
                order.insert(previous + 1, name)
                previous += 1
    return order


def collate(samples: list[dict[str, torch.Tensor]], *, missing: str = "mask") -> dict[str, torch.Tensor]:
    """Stack samples into a model batch, padding dates.

    Time series of different lengths are padded at the end (data 0, date 0, mask False);
    the model leaves padded dates out of the temporal attention of every pixel that has a
    valid date. A sensor some samples lack (no valid pixel in their tile) is, with
    ``missing="mask"``, given to them fully masked (one padded date for time series), which
    the model fills with its missing-value parameter; ``embed`` instead leaves such a sensor
    out of the tile. ``missing="raise"`` refuses such batches. Labels are stacked.

    Args:
        samples: dicts from ``CubeDataset``/``PointDataset``; all tiles the same size.
        missing: ``"mask"`` or ``"raise"``.

    Returns:
        ``{sensor: (B, T, C, H, W) or (B, C, H, W), sensor_dates: (B, T), sensor_mask: like
        the data, label: (B, ...)}``, sensors in the cube's order.

    Example:
        >>> a = {"s2": torch.ones(2, 10, 1, 1), "s2_dates": torch.tensor([5.0, 9.0]),
        ...      "s2_mask": torch.ones(2, 10, 1, 1, dtype=torch.bool)}
        >>> b = {"s2": torch.ones(1, 10, 1, 1), "s2_dates": torch.tensor([7.0]),
        ...      "s2_mask": torch.ones(1, 10, 1, 1, dtype=torch.bool)}
        >>> batch = collate([a, b])
        >>> batch["s2_dates"].tolist(), batch["s2_mask"][:, :, 0, 0, 0].tolist()
        ([[5.0, 9.0], [7.0, 0.0]], [[True, True], [True, False]])
    """
    if missing not in ("mask", "raise"):
        raise ValueError(f"missing must be 'mask' or 'raise', got {missing!r}.")
    if not samples:
        raise ValueError("collate got no samples.")
    batch = {}
    for name in _sensor_order(samples):
        lacking = [i for i, s in enumerate(samples) if name not in s]
        if lacking and missing == "raise":
            raise ValueError(f"samples {lacking} have no {name!r} (no valid pixel in their tile); use "
                             "collate(..., missing='mask') or batch samples with the same sensors.")
        present = [s[name] for s in samples if name in s]
        shape = present[0].shape[-3:]
        for s in present:
            if s.shape[-3:] != shape:
                raise DimensionError(f"{name!r} samples have shapes {tuple(shape)} and {tuple(s.shape[-3:])} "
                                     "(C, H, W); batch tiles of one size.")
        if MODALITIES[name].time_series:
            T = max(s.shape[0] for s in present)
            data = torch.zeros(len(samples), T, *shape)
            mask = torch.zeros(len(samples), T, *shape, dtype=torch.bool)
            dates = torch.zeros(len(samples), T)
            for i, s in enumerate(samples):
                if name in s:
                    t = s[name].shape[0]
                    data[i, :t], mask[i, :t], dates[i, :t] = s[name], s[f"{name}_mask"], s[f"{name}_dates"]
            batch[name], batch[f"{name}_dates"], batch[f"{name}_mask"] = data, dates, mask
        else:
            data = torch.zeros(len(samples), *shape)
            mask = torch.zeros(len(samples), *shape, dtype=torch.bool)
            for i, s in enumerate(samples):
                if name in s:
                    data[i], mask[i] = s[name], s[f"{name}_mask"]
            batch[name], batch[f"{name}_mask"] = data, mask
    labelled = ["label" in s for s in samples]
    if any(labelled):
        if not all(labelled):
            raise ValueError("some samples have a label and some do not; batch samples from one dataset.")
        batch["label"] = torch.stack([torch.as_tensor(s["label"]) for s in samples])
    return batch
