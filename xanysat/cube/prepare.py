"""One input path: any accepted input -> ``Inputs``, what every consumer needs per sensor.

``prepare`` reads a gridded cube (DataTree, Dataset forms, DataArray: ``xanysat.cube.read``)
or a point collection (a ``sample`` dim: ``xanysat.cube.read_points``) and resolves, once:
bands mapped through the sensor table (absent and derived ratio bands), dates as day numbers
with their origin, nodata, and the normalisation statistics in the order user > the model's
own > the sensor table. ``embed``, ``plan``, ``embed_to_zarr``, ``embed_points``, the torch
datasets, ``finetune``, ``predict`` and the CLI all start here. ``plan`` asks for no
statistics (it reads no pixel).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import xarray as xr

from xanysat.cube.normalize import projector_bands, resolve_normalization
from xanysat.cube.read import Cube, SensorCube, as_cube
from xanysat.cube.read_points import SAMPLE, read_points
from xanysat.sensors.rules import absent_bands, dates_description, day_numbers, derivable, parse_date_origin
from xanysat.sensors.table import MODALITIES, NormStats


@dataclass(frozen=True)
class SensorInput:
    """One sensor of the input, read and mapped through the sensor table.

    Attributes:
        read: the sensor as read (``xanysat.cube.read.SensorCube``): data, input bands, dates,
            nodata, pixel size, grid origin.
        absent: projector bands neither in the input nor derivable (masked by the projector).
        derived: ratio bands computed from their sources.
        days: day numbers as the model takes them (float64, NaN for NaT padding), the shape of
            ``read.dates``; ``None`` for single-date sensors.
        stats: the normalisation applied (``None``: none, or not resolved for a ``plan``).

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> s1 = prepare(synthetic_cube(("s1",), extent_m=40, n_dates=2).sel(band=["VV", "VH"]),
        ...              normalize={"s1": ([0, 0, 0], [1, 1, 1])}).sensors["s1"]
        >>> s1.absent, s1.derived, s1.days.tolist(), s1.stats.source
        ((), ('VV/VH',), [60.0, 76.0], 'given by the user')
        >>> s1.values().band.values.tolist()
        ['VV', 'VH', 'VV/VH']
    """

    read: SensorCube
    absent: tuple[str, ...]
    derived: tuple[str, ...]
    days: np.ndarray | None
    stats: NormStats | None

    @property
    def name(self) -> str:
        return self.read.name

    def values(self) -> xr.DataArray:
        """The data in projector band order, float32, nodata as NaN, ratio bands computed, lazily."""
        return projector_bands(self.read)

    def normalized(self) -> xr.DataArray:
        """``values()`` standardised with ``stats`` (unchanged when ``stats`` is None)."""
        values = self.values()
        if self.stats is None:
            return values
        mean = xr.DataArray(np.asarray(self.stats.mean, "float32"), dims="band")
        std = xr.DataArray(np.asarray(self.stats.std, "float32"), dims="band")
        return (values - mean) / std

    def identity(self) -> str:
        """A token for the sensor's pixels, so that a resumed ``embed_to_zarr`` never mixes
        embeddings of different inputs (``Inputs.identity``).

        * In-memory data (numpy, or a file opened without ``chunks``): a hash of the values in
          C order, with dtype and shape. Memory layout does not matter; the values are read once.
        * Lazy (dask) data: the dask token of the array (``dask.base.tokenize``, its graph's
          name). It names the source and every operation on it, so it changes when the source
          changes (e.g. a file's modification time, other STAC items) or the graph does
          (another chunking, another selection); the same source opened the same way (for
          files xarray opens: the same path string and modification time, the same chunks)
          gives the same token, in any process. A graph built from non-deterministic steps gets a new
          token every time: such an input cannot be resumed (it is refused, never mixed).

        Example:
            >>> from xanysat.testing import synthetic_cube
            >>> cube = synthetic_cube(("s2",), extent_m=40, n_dates=2)
            >>> a = prepare(cube).sensors["s2"]
            >>> a.identity() == prepare(cube.copy(deep=True)).sensors["s2"].identity()  # same values
            True
            >>> a.identity() == prepare(cube * 2).sensors["s2"].identity()  # other pixels
            False
        """
        data = self.read.data
        if data.chunks is not None:
            from dask.base import tokenize

            return f"dask:{tokenize(data.data)}"
        digest = hashlib.blake2b(digest_size=16)
        digest.update(repr((str(data.dtype), data.shape)).encode())
        for index in np.ndindex(*data.shape[:1]):  # slab by slab: no copy of the whole array
            digest.update(np.ascontiguousarray(data[index].values).view("u1").data)
        return f"values:{digest.hexdigest()}"

    def provenance(self) -> dict:
        """The input bands, the bands masked and the dates, for the output's ``inputs`` attr."""
        dates = self.read.dates
        if dates is not None:
            dates = "per sample" if dates.ndim == 2 else [str(t)[:10] for t in dates.astype("datetime64[D]")]
        return {"bands": list(self.read.bands), "missing_bands": list(self.absent), "dates": dates}


@dataclass(frozen=True)
class Inputs:
    """The prepared input: sensors, and the grid they share (gridded cubes) or the sample count.

    Attributes:
        sensors: sensor name -> ``SensorInput``, in input order.
        cube: the gridded ``Cube`` (CRS, origin, extent), or ``None`` for point samples.
        n_samples: the number of point samples, or ``None`` for a gridded cube.
        date_origin: the origin of the day numbers (``None``: day of year).
        statistics: whether ``stats`` were resolved (``False`` for a ``plan``).

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> inputs = prepare(synthetic_cube(("s2", "naip"), extent_m=40, n_dates=2), date_origin="2021-01-01",
        ...                  normalize={"naip": False})
        >>> list(inputs.sensors), inputs.kind, inputs.cube.extent_m, inputs.dates
        (['s2', 'naip'], 'grid', (40.0, 40.0), 'days since 2021-01-01')
        >>> inputs.normalization()["s2"]["source"]
        'TreeSatAI statistics from the official demo.ipynb (SPEC section 2)'
    """

    sensors: dict[str, SensorInput]
    cube: Cube | None
    n_samples: int | None
    date_origin: str | None
    statistics: bool

    @property
    def kind(self) -> str:
        """``"grid"`` or ``"points"``."""
        return "grid" if self.cube is not None else "points"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.sensors)

    @property
    def dates(self) -> str:
        """What the day numbers mean (``dates_description``)."""
        return dates_description(self.date_origin)

    def normalization(self) -> dict:
        """sensor -> ``{"mean", "std", "source"}`` or ``None``, as written to the output's attrs (JSON):
        the NaN statistics of bands absent from the input (``fit_normalization`` gives NaN for
        them; they are never used) are written as ``None``."""
        return {n: None if s.stats is None else {"mean": _json_floats(s.stats.mean), "std": _json_floats(s.stats.std),
                                                 "source": s.stats.source}
                for n, s in self.sensors.items()}

    def identity(self) -> dict[str, str]:
        """sensor -> ``SensorInput.identity``: what a Zarr store's values depend on besides the
        settings (``xanysat.cube.options.fingerprint``).

        Example:
            >>> from xanysat.testing import synthetic_cube
            >>> cube = synthetic_cube(("s2",), extent_m=40, n_dates=2)
            >>> ids = prepare(cube).identity()
            >>> list(ids), ids["s2"].startswith("values:")
            (['s2'], True)
            >>> prepare(cube.chunk({"y": 2})).identity()["s2"].startswith("dask:")
            True
        """
        return {n: s.identity() for n, s in self.sensors.items()}

    def provenance(self) -> dict:
        """The attrs every output of these inputs carries (sensors, inputs, normalisation, dates)."""
        return {
            "sensors": list(self.sensors),
            "inputs": json.dumps({n: s.provenance() for n, s in self.sensors.items()}),
            "normalization": json.dumps(self.normalization(), allow_nan=False),
            "dates": self.dates,
        }

    def crop(self, pixels: Mapping[str, tuple[tuple[int, int], tuple[int, int]]]) -> Inputs:
        """The same inputs on a pixel window of each sensor (``{name: ((row0, row1), (col0, col1))}``);
        sensors not named are left out. The grid origin moves to the window's corner, which must
        be the same point for every sensor named.

        Example:
            >>> from xanysat.testing import synthetic_cube
            >>> inputs = prepare(synthetic_cube(("s2",), extent_m=(80, 120), n_dates=2))
            >>> part = inputs.crop({"s2": ((2, 8), (4, 12))})
            >>> part.cube.extent_m, part.cube.origin, part.sensors["s2"].stats == inputs.sensors["s2"].stats
            ((60.0, 80.0), (600040.0, 5699980.0), True)
        """
        if self.cube is None:
            raise TypeError("crop applies to gridded cubes, not to point samples.")
        sensors, reads = {}, {}
        for name, ((y0, y1), (x0, x1)) in pixels.items():
            s = self.sensors[name]
            r = s.read
            origin = (r.origin[0] + x0 * r.resolution_m, r.origin[1] - y0 * r.resolution_m)
            reads[name] = replace(r, data=r.data.isel(y=slice(y0, y1), x=slice(x0, x1)), origin=origin)
            sensors[name] = replace(s, read=reads[name])
        first = next(iter(reads.values()))
        extent = tuple(max(r.extent_m[i] for r in reads.values()) for i in range(2))
        return replace(self, sensors=sensors, cube=Cube(reads, self.cube.crs, first.origin, extent))


def prepare(data, *, sensor: str | None = None, normalize=True, model_stats: Mapping[str, NormStats] | None = None,
            date_origin=None, statistics: bool = True) -> Inputs:
    """Read any accepted input and resolve everything per sensor once (see the module docstring).

    Args:
        data: a DataTree, Dataset or DataArray: a gridded cube (``xanysat.embed``) or point
            samples with a ``sample`` dim (``xanysat.embed_points``); or ``Inputs`` already.
        sensor: the sensor of a single-sensor input that names it neither by its name nor by
            an ``anysat:sensor`` attribute.
        normalize: ``True`` (the model's own statistics where it has them, else the sensor
            table's), ``False`` (already normalised), or a mapping sensor -> ``NormStats`` /
            ``(mean, std)`` / bool.
        model_stats: the statistics the model was trained with (its card's ``normalization``).
        date_origin: None for day-of-year dates, or a date to count days from.
        statistics: resolve the statistics (``False``: leave ``stats`` None, for a plan).

    Returns:
        ``Inputs``.

    Raises:
        DimensionError, ModalityError: bad input, naming the fix.

    Example:
        >>> import numpy as np, xarray as xr
        >>> points = xr.DataArray(np.ones((3, 2, 2), "float32"), dims=("sample", "time", "band"), name="s1-asc",
        ...     coords={"time": np.array(["2021-01-05", "2021-02-01"], "datetime64[ns]"), "band": ["VV", "VH"]})
        >>> inputs = prepare(points, model_stats={"s1-asc": NormStats((0, 0), (1, 1), "the model's")})
        >>> inputs.kind, inputs.n_samples, inputs.sensors["s1-asc"].stats.source
        ('points', 3, "the model's")
        >>> prepare(points, statistics=False).sensors["s1-asc"].stats is None
        True
    """
    if isinstance(data, Inputs):
        return data
    origin = parse_date_origin(date_origin)
    if is_points(data):
        reads, cube = read_points(data, sensor), None
        n_samples = next(iter(reads.values())).data.sizes[SAMPLE]
    else:
        cube = as_cube(data, sensor)
        reads, n_samples = cube.sensors, None
    absent = {name: absent_bands(MODALITIES[name], r.band_indices[0]) for name, r in reads.items()}
    stats = resolve_normalization(tuple(reads), normalize, model_stats, absent) if statistics \
        else dict.fromkeys(reads)
    sensors = {}
    for name, r in reads.items():
        m = MODALITIES[name]
        indices, _ = r.band_indices
        derived = tuple(b for b, i in zip(m.bands, indices) if i is None and derivable(m, b, indices))
        days = None if r.dates is None else day_numbers(r.dates, date_origin)
        sensors[name] = SensorInput(r, absent[name], derived, days, stats[name])
    return Inputs(sensors, cube, n_samples, None if origin is None else str(origin), statistics)


def _json_floats(values) -> list:
    return [None if v is None or not np.isfinite(float(v)) else float(v) for v in values]


def is_points(data) -> bool:
    """Whether ``data`` is a point collection (a ``sample`` dim) rather than a gridded cube."""
    if isinstance(data, Cube):
        return False
    if isinstance(data, xr.DataTree):
        return any(SAMPLE in node.dims for node in data.subtree if node.has_data)
    return isinstance(data, (xr.Dataset, xr.DataArray)) and SAMPLE in data.dims
