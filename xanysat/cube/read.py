"""Reading multi-sensor xarray cubes: which sensor, which bands, which dates, which grid.

``as_cube`` turns a DataTree (one node per sensor), a Dataset (one sensor, or several with
sensor-prefixed dims) or a DataArray into a ``Cube``: one ``SensorCube`` per sensor with its
data as ``(time, band, y, x)`` (or ``(band, y, x)``), still lazy, on one shared grid.
Everything wrong with the input is reported here, before a graph is built.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass

import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from xanysat.errors import DimensionError, ModalityError
from xanysat.sensors.rules import absent_bands
from xanysat.sensors.table import MODALITIES, band_index, get_modality

SENSOR_ATTRS = ("anysat:sensor", "anysat_sensor", "sensor")
_TOLERANCE = 1e-6


@dataclass(frozen=True)
class SensorCube:
    """One sensor of a cube, as read from the user's object.

    Attributes:
        name: sensor key in the sensor table.
        data: ``(time, band, y, x)`` for time series, ``(band, y, x)`` otherwise; point samples
            (``xanysat.cube.read_points``): ``(sample, obs, band)``. Lazy if the input was.
        bands: the input's band names, in the order of ``data``.
        dates: acquisition times (``datetime64[ns]``), ``None`` for single-date sensors; for
            point samples ``(obs,)`` shared or ``(sample, obs)`` per sample (NaT = padding).
        resolution_m: pixel size.
        origin: ``(x, y)`` of the grid's top-left corner in the CRS (``None`` for points).
        nodata: value that marks missing pixels besides NaN, or ``None``.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> s2 = as_cube(synthetic_cube(("s2",), extent_m=(80, 120), n_dates=2)).sensors["s2"]
        >>> s2.data.dims, s2.shape_px, s2.extent_m, s2.resolution_m, s2.nodata
        (('time', 'band', 'y', 'x'), (8, 12), (80.0, 120.0), 10.0, None)
        >>> s2.dates.astype("datetime64[D]").tolist()
        [datetime.date(2021, 3, 1), datetime.date(2021, 3, 17)]
    """

    name: str
    data: xr.DataArray
    bands: tuple[str, ...]
    dates: np.ndarray | None
    resolution_m: float
    origin: tuple[float, float] | None
    nodata: float | None

    @property
    def per_sample(self) -> bool:
        """Whether each point sample has its own dates (a 2-D ``time(sample, obs)``)."""
        return self.dates is not None and self.dates.ndim == 2

    @property
    def shape_px(self) -> tuple[int, int]:
        """``(rows, columns)`` of pixels."""
        return self.data.sizes["y"], self.data.sizes["x"]

    @property
    def extent_m(self) -> tuple[float, float]:
        """``(height, width)`` in metres."""
        ny, nx = self.shape_px
        return ny * self.resolution_m, nx * self.resolution_m

    @property
    def band_indices(self) -> tuple[tuple[int | None, ...], tuple[str, ...]]:
        """Per projector band, its index in ``bands`` (None if absent), and the absent bands' names."""
        return band_index(self.name, self.bands)


@dataclass(frozen=True)
class Cube:
    """The sensors of a cube on one grid.

    Attributes:
        sensors: sensor name -> ``SensorCube``, in input order.
        crs: the shared CRS as WKT.
        origin: top-left corner ``(x, y)``.
        extent_m: ``(height, width)`` of the union of the sensors' extents, in metres.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = as_cube(synthetic_cube(("naip", "s2"), extent_m=(80, 120), n_dates=2))
        >>> list(cube.sensors), cube.origin, cube.extent_m
        (['naip', 's2'], (600000.0, 5700000.0), (80.0, 120.0))
        >>> cube.sensors["naip"].shape_px, cube.sensors["s2"].shape_px
        ((64, 96), (8, 12))
        >>> cube.crs.startswith('PROJCRS["WGS 84 / UTM zone 31N"')
        True
    """

    sensors: dict[str, SensorCube]
    crs: str
    origin: tuple[float, float]
    extent_m: tuple[float, float]


def as_cube(obj, sensor: str | None = None) -> Cube:
    """Read a DataTree, Dataset or DataArray into a ``Cube`` (see the module docstring).

    Args:
        obj: the cube.
        sensor: the sensor of a single-sensor Dataset or DataArray that names it neither by
            its name nor by an ``anysat:sensor`` attribute.

    Example:
        >>> import numpy as np, xarray as xr
        >>> s2 = xr.DataArray(np.zeros((2, 10, 4, 4), "float32"), dims=("time", "band", "y", "x"),
        ...     coords={"time": np.array(["2020-05-01", "2020-06-01"], "datetime64[ns]"),
        ...             "band": ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"],
        ...             "y": 95.0 - 10 * np.arange(4), "x": 5.0 + 10 * np.arange(4)}, name="s2")
        >>> cube = as_cube(s2.rio.write_crs("EPSG:32631"))
        >>> cube.extent_m, cube.origin
        ((40.0, 40.0), (0.0, 100.0))
    """
    if isinstance(obj, Cube):
        return obj
    if isinstance(obj, xr.DataTree):
        parts = _from_datatree(obj)
    elif isinstance(obj, xr.Dataset):
        parts = _from_dataset(obj, sensor)
    elif isinstance(obj, xr.DataArray):
        parts = [(sensor_name(obj.name, obj.attrs, sensor, "the DataArray"), obj, obj.attrs)]
    else:
        raise DimensionError(f"expected an xarray DataTree, Dataset or DataArray, got {type(obj).__name__}.")
    if not parts:
        raise DimensionError(
            "the cube holds no sensor: expected DataTree nodes or variables named after sensors "
            f"({', '.join(MODALITIES)}) or carrying an 'anysat:sensor' attribute."
        )
    sensors: dict[str, SensorCube] = {}
    crs = {}
    for name, da, attrs in parts:
        if name in sensors:
            raise ModalityError(f"sensor {name!r} appears twice in the cube; keep one node or variable per sensor.")
        crs[name] = _crs_of(da, name)  # before the grid: a CRS in degrees or feet explains odd pixel sizes
        check_metric_crs(crs[name], name)
        sensors[name] = _sensor_cube(name, da, attrs)
    return _on_one_grid(sensors, crs)


def sensor_name(name, attrs, given: str | None, where: str) -> str:
    for key in SENSOR_ATTRS:
        if key in attrs:
            return get_modality(str(attrs[key])).name
    if given is not None:
        return get_modality(given).name
    if isinstance(name, str) and name in MODALITIES:
        return name
    raise ModalityError(
        f"cannot tell which sensor {where} (name {name!r}) is. Name it after a sensor "
        f"({', '.join(MODALITIES)}), set attrs['anysat:sensor'], or pass sensor=."
    )


def _from_datatree(tree: xr.DataTree) -> list:
    parts = []
    for node in tree.subtree:
        if node is tree and not node.has_data:
            continue
        ds = node.to_dataset(inherit=True)
        if not ds.data_vars:
            continue
        name = sensor_name(node.name, {**node.attrs}, None, f"DataTree node {node.path!r}")
        parts.append((name, _single_array(ds, name, node.path), node.attrs))
    return parts


def _from_dataset(ds: xr.Dataset, given: str | None) -> list:
    named = [v for v in ds.data_vars if isinstance(v, str) and (v in MODALITIES or attr_sensor(ds[v]))]
    if named and (given is None or len(named) > 1):
        parts = []
        for var in named:
            name = attr_sensor(ds[var]) or var
            parts.append((name, strip_prefix(ds[var], var), ds[var].attrs))
        return parts
    name = sensor_name(None, ds.attrs, given, "the Dataset")
    return [(name, _single_array(ds, name, "the Dataset"), ds.attrs)]


def attr_sensor(da: xr.DataArray) -> str | None:
    for key in SENSOR_ATTRS:
        if key in da.attrs:
            return get_modality(str(da.attrs[key])).name
    return None


def strip_prefix(da: xr.DataArray, prefix: str) -> xr.DataArray:
    """``s2_time`` -> ``time``, ``s2_band`` -> ``band`` ... for several sensors in one Dataset; a
    sensor on its own grid has ``naip_y``/``naip_x`` dims and coordinates (-> ``y``/``x``)."""
    renames = {d: d[len(prefix) + 1:] for d in da.dims if isinstance(d, str) and d.startswith(prefix + "_")}
    renames.update({c: c[len(prefix) + 1:] for c in da.coords if c not in renames and isinstance(c, str)
                    and c.startswith(prefix + "_") and c[len(prefix) + 1:] not in da.coords})
    return da.rename(renames) if renames else da


def _single_array(ds: xr.Dataset, name: str, where: str) -> xr.DataArray:
    """One variable with a ``band`` dim, or one variable per band (odc-stac's layout)."""
    data_vars = [v for v in ds.data_vars if ds[v].ndim >= 2 and {"y", "x"} <= set(ds[v].dims)]
    if not data_vars:
        raise DimensionError(f"{where} has no variable with 'y' and 'x' dims; expected {name!r} data on a grid.")
    with_band = [v for v in data_vars if "band" in ds[v].dims]
    if with_band:
        if len(data_vars) > 1:
            raise DimensionError(
                f"{where} holds several gridded variables {data_vars}; expected one with a 'band' dim "
                "or one variable per band."
            )
        return ds[with_band[0]]
    # odc-stac writes each band's nodata to the band's attrs, which stacking drops: one value
    # shared by all bands becomes the sensor's nodata; different values mask each band here.
    nodata = {v: nodata_of(ds[v], {}) for v in data_vars}
    values = set(nodata.values())
    if len(values) > 1:
        ds = ds.assign({v: ds[v].where(ds[v] != n) for v, n in nodata.items() if n is not None})
    stacked = ds[data_vars].to_dataarray(dim="band").assign_coords(band=[str(v) for v in data_vars])
    if len(values) == 1 and None not in values:
        stacked = stacked.assign_attrs(nodata=values.pop())
    return stacked


def _canonical_dims(da: xr.DataArray, name: str) -> xr.DataArray:
    m = MODALITIES[name]
    expected = ("time", "band", "y", "x") if m.time_series else ("band", "y", "x")
    dims = set(da.dims)
    if m.time_series and "time" not in dims and "band" in dims:
        raise DimensionError(
            f"{name!r} is a time series: it needs a 'time' dim with dates, got dims {da.dims}."
        )
    if not m.time_series and "time" in dims:
        if da.sizes["time"] != 1:
            raise DimensionError(
                f"{name!r} is single-date but has {da.sizes['time']} dates; select one, e.g. "
                f"ds.isel(time=0), or composite them."
            )
        da = da.isel(time=0, drop=True)
        dims = set(da.dims)
    if "band" not in dims:
        raise DimensionError(
            f"{name!r} has dims {da.dims}; expected {expected} with a 'band' coordinate naming "
            f"its bands ({', '.join(m.bands)})."
        )
    if dims != set(expected):
        raise DimensionError(f"{name!r} has dims {da.dims}; expected {expected}.")
    return da.transpose(*expected)


def _sensor_cube(name: str, da: xr.DataArray, attrs) -> SensorCube:
    m = get_modality(name)
    da = _canonical_dims(da, name)
    if "band" not in da.coords:
        raise DimensionError(f"{name!r} has no 'band' coordinate; name its bands, e.g. ds.assign_coords(band=[...]).")
    bands = tuple(str(b) for b in da["band"].values)
    indices, missing = band_index(m, bands)
    if all(i is None for i in indices):
        raise DimensionError(
            f"none of {name!r}'s bands {list(bands)} is a band of the sensor: expected some of "
            f"{', '.join(m.bands)} (or their STAC asset keys / common names)."
        )
    underived = absent_bands(m, indices)
    if underived:
        warnings.warn(
            f"{name}: bands {', '.join(underived)} absent from the input; they are filled with the "
            "projector's missing-value parameter (recorded in the output's attrs).", stacklevel=3
        )
    if any(s == 0 for s in da.shape):
        raise DimensionError(
            f"{name!r} is empty: dims {dict(da.sizes)}; expected at least one band, pixel (and date). "
            "Select a region and time range that holds data."
        )
    res, origin = _grid_of(da, name)
    if abs(res - m.resolution_m) > _TOLERANCE * m.resolution_m:
        raise DimensionError(
            f"{name!r} has {res:g} m pixels; the model expects {m.resolution_m:g} m. Load or resample it "
            f"at {m.resolution_m:g} m (odc.stac.load(..., resolution={m.resolution_m:g})); xanysat never resamples."
        )
    dates = _dates_of(da, name) if m.time_series else None
    return SensorCube(name, da, bands, dates, m.resolution_m, origin, nodata_of(da, attrs))


def _grid_of(da: xr.DataArray, name: str) -> tuple[float, tuple[float, float]]:
    for dim in ("y", "x"):
        if dim not in da.coords or da[dim].ndim != 1:
            raise DimensionError(f"{name!r} has no 1-D {dim!r} coordinate; the grid must be given by x/y coordinates.")
    steps = {}
    for dim in ("y", "x"):
        c = np.asarray(da[dim].values, dtype="float64")
        if c.size < 2:
            steps[dim] = None
            continue
        d = np.diff(c)
        if not np.allclose(d, d[0], rtol=0, atol=abs(d[0]) * _TOLERANCE):
            raise DimensionError(f"{name!r}'s {dim!r} coordinate is not regularly spaced; expected a regular grid.")
        steps[dim] = float(d[0])
    if steps["y"] is not None and steps["y"] > 0:
        raise DimensionError(
            f"{name!r} has increasing y; expected north-up (decreasing y). Flip it: ds.isel(y=slice(None, None, -1))."
        )
    if steps["x"] is not None and steps["x"] < 0:
        raise DimensionError(
            f"{name!r} has decreasing x; expected west to east (increasing x). "
            "Flip it: ds.isel(x=slice(None, None, -1))."
        )
    res_x = steps["x"] if steps["x"] is not None else None
    res_y = -steps["y"] if steps["y"] is not None else None
    res = res_x or res_y or MODALITIES[name].resolution_m
    if res_x and res_y and abs(res_x - res_y) > _TOLERANCE * res:
        raise DimensionError(f"{name!r} has {res_x:g} m x {res_y:g} m pixels; expected square pixels.")
    origin = (float(da["x"].values[0]) - res / 2, float(da["y"].values[0]) + res / 2)
    return res, origin


def as_datetimes(values, name: str) -> np.ndarray:
    """A ``time`` coordinate's values as ``datetime64[ns]``, or a ``DimensionError``.

    Datetimes (numpy, pandas or Python) and strings numpy parses as dates are accepted.
    Numbers are refused: numpy would read ``[10, 50]`` as nanoseconds after 1970-01-01, so
    every date would silently be 1 January 1970.

    Args:
        values: the coordinate's values: datetimes, or strings numpy parses as dates.
        name: the sensor, for the error message.

    Returns:
        The values as ``datetime64[ns]``.

    Raises:
        DimensionError: the values are not dates (numbers, durations, or unparseable strings).

    Example:
        >>> as_datetimes(["2021-03-01", "2021-03-17T10:30"], "s2")
        array(['2021-03-01T00:00:00.000000000', '2021-03-17T10:30:00.000000000'],
              dtype='datetime64[ns]')
        >>> as_datetimes(["spring"], "s2")
        Traceback (most recent call last):
            ...
        xanysat.errors.DimensionError: 's2''s 'time' coordinate holds <U6; expected dates (datetime64).
        >>> as_datetimes([10, 50], "s2")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.DimensionError: 's2''s 'time' coordinate holds numbers (int64), not dates: ...
    """
    t = np.asarray(values)
    if t.dtype.kind in "biufcm" or (t.dtype.kind == "O" and any(_is_number(v) for v in t.ravel())):
        what = "durations" if t.dtype.kind == "m" else "numbers"
        raise DimensionError(
            f"{name!r}'s 'time' coordinate holds {what} ({t.dtype}), not dates: numbers would be read as "
            "nanoseconds after 1970-01-01. Convert them to datetimes, e.g. day numbers of 2021: "
            "ds.assign_coords(time=pd.to_datetime('2021-01-01') + pd.to_timedelta(ds.time - 1, unit='D')); "
            "Unix seconds: ds.assign_coords(time=pd.to_datetime(ds.time, unit='s')); or build the "
            "coordinate with np.datetime64 / np.array([...], 'datetime64[ns]')."
        )
    if not np.issubdtype(t.dtype, np.datetime64):
        try:
            t = np.asarray(t, dtype="datetime64[ns]")
        except (TypeError, ValueError):
            raise DimensionError(f"{name!r}'s 'time' coordinate holds {t.dtype}; expected dates (datetime64).") from None
    return t.astype("datetime64[ns]")


def _is_number(value) -> bool:
    """A number in an object array (``datetime``/``Timestamp`` objects and strings are not)."""
    return isinstance(value, (numbers.Number, np.number, np.timedelta64)) and not isinstance(value, np.datetime64)


def _dates_of(da: xr.DataArray, name: str) -> np.ndarray:
    if "time" not in da.coords:
        raise DimensionError(f"{name!r} has a 'time' dim but no 'time' coordinate; give the acquisition dates.")
    t = as_datetimes(da["time"].values, name)
    if np.isnat(t).any():
        raise DimensionError(f"{name!r} has missing (NaT) times; drop those dates.")
    d = np.diff(t.astype("int64"))
    if (d == 0).any():
        dup = t[1:][d == 0][0]
        raise DimensionError(
            f"{name!r} has duplicate time {np.datetime_as_string(dup, unit='s')}; merge or drop duplicates "
            "(e.g. ds.groupby('time').first() or odc.stac.load(groupby='solar_day'))."
        )
    if (d < 0).any():
        raise DimensionError(f"{name!r}'s times are not sorted; sort them with ds.sortby('time').")
    return t


def nodata_of(da: xr.DataArray, attrs) -> float | None:
    for source in (da.attrs, da.encoding, attrs):
        for key in ("nodata", "_FillValue"):
            value = source.get(key)
            if value is not None and not (isinstance(value, float) and np.isnan(value)):
                return float(value)
    return None


def _crs_of(da: xr.DataArray, name: str) -> str:
    crs = None
    try:
        crs = da.rio.crs
    except Exception:  # rioxarray raises several types on malformed grid mappings
        crs = None
    if crs is None:
        geobox = getattr(getattr(da, "odc", None), "geobox", None)
        crs = getattr(geobox, "crs", None)
    if crs is None:
        raise DimensionError(
            f"{name!r} has no CRS. Set one with rioxarray, e.g. ds = ds.rio.write_crs('EPSG:32631'), "
            "or load with odc-stac, which writes 'spatial_ref'."
        )
    return crs.to_wkt()


def check_metric_crs(crs: str, name: str) -> None:
    """Refuse a CRS whose coordinates are not metres: xanysat reads pixel sizes and patch sizes
    in metres from the ``x``/``y`` coordinates, so degrees (a geographic CRS) or US survey feet
    would give wrong pixel sizes, or wrong embeddings.

    Args:
        crs: the sensor's CRS (anything ``pyproj.CRS.from_user_input`` takes: WKT, ``"EPSG:32631"``).
        name: the sensor, for the message.

    Raises:
        DimensionError: a geographic CRS, a CRS that is not projected, or a projected CRS whose
            axes are not in metres; the message says how to reproject.

    Example:
        >>> check_metric_crs("EPSG:32631", "s2")  # UTM: metres
        >>> check_metric_crs("EPSG:4326", "s2")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.DimensionError: 's2' is in WGS 84, a geographic CRS; expected a projected CRS in metres (e.g. UTM), not degrees. ...
        >>> check_metric_crs("EPSG:2263", "s2")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.DimensionError: 's2' is in NAD83 / New York Long Island (ftUS), whose axes are in US survey foot; ...
    """
    from pyproj import CRS

    crs = CRS.from_user_input(crs)
    fix = ("Reproject it, e.g. ds.rio.reproject('EPSG:326NN') with the UTM zone NN of the area "
           "(ds.rio.estimate_utm_crs() finds it), or load it with odc.stac.load(..., crs='utm').")
    if crs.is_geographic:
        raise DimensionError(f"{name!r} is in {crs.name}, a geographic CRS; expected a projected CRS in metres "
                             f"(e.g. UTM), not degrees. {fix}")
    if not crs.is_projected:
        raise DimensionError(f"{name!r} is in {crs.name}, which is not a projected CRS; expected a projected CRS in "
                             f"metres (e.g. UTM). {fix}")
    horizontal = crs.sub_crs_list[0] if crs.is_compound and crs.sub_crs_list else crs
    units = {(a.unit_name, a.unit_conversion_factor) for a in horizontal.axis_info[:2]}
    if not units or any(factor != 1.0 for _, factor in units):
        names = ", ".join(sorted({unit for unit, _ in units})) or "unknown units"
        raise DimensionError(f"{name!r} is in {crs.name}, whose axes are in {names}; expected a projected CRS in "
                             f"metres: xanysat reads pixel sizes in metres. {fix}")


def _on_one_grid(sensors: dict[str, SensorCube], crs: dict[str, str]) -> Cube:
    from pyproj import CRS

    names = list(sensors)
    first = names[0]
    ref_crs = CRS.from_wkt(crs[first])
    for name in names[1:]:
        if not CRS.from_wkt(crs[name]).equals(ref_crs):
            raise DimensionError(
                f"{name!r} is in {CRS.from_wkt(crs[name]).name} but {first!r} in {ref_crs.name}; all sensors "
                f"must share one CRS. Load them with odc.stac.load(..., like=<first sensor>)."
            )
    origin = sensors[first].origin
    for name in names[1:]:
        o = sensors[name].origin
        if abs(o[0] - origin[0]) > 1e-3 or abs(o[1] - origin[1]) > 1e-3:
            raise DimensionError(
                f"{name!r}'s grid starts at ({o[0]:.3f}, {o[1]:.3f}) but {first!r}'s at ({origin[0]:.3f}, "
                f"{origin[1]:.3f}) (top-left corners); sensors must share a grid origin. Crop them to a "
                "common top-left corner, or load them with odc-stac on nested GeoBoxes."
            )
    extent = tuple(max(s.extent_m[i] for s in sensors.values()) for i in range(2))
    for s in sensors.values():
        if s.extent_m != extent and not MODALITIES[s.name].tile_token:
            warnings.warn(
                f"{s.name} covers {s.extent_m[0]:g} m x {s.extent_m[1]:g} m of the {extent[0]:g} m x "
                f"{extent[1]:g} m grid; the rest is treated as missing.", stacklevel=3
            )
    return Cube(sensors, ref_crs.to_wkt(), origin, extent)
