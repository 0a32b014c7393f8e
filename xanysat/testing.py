"""Test helpers: seeded synthetic model inputs built from the sensor table alone.

Example:
    >>> batch = synthetic_batch(("aerial", "s2"), extent_m=60)
    >>> {k: tuple(v.shape) for k, v in batch.items()}
    {'aerial': (2, 4, 300, 300), 's2': (2, 4, 10, 6, 6), 's2_dates': (2, 4)}
"""

from __future__ import annotations

import numbers
import zlib
from collections.abc import Sequence

import torch

from xanysat.errors import AnySatInputError, DimensionError, PatchSizeError
from xanysat.sensors.table import Modality, get_modality

__all__ = ["synthetic_batch", "synthetic_cube", "supported_patch_sizes"]

_DAYS = 365


def _whole(value: float, unit: float) -> int | None:
    """``value / unit`` when it is a whole number (within float error), else ``None``."""
    n = round(value / unit)
    return n if n > 0 and abs(n * unit - value) <= 1e-6 * max(1.0, abs(value)) else None


def _side_px(m: Modality, extent_m: float) -> int:
    if m.tile_token:
        return 1
    px = _whole(extent_m, m.resolution_m)
    if px is None:
        raise DimensionError(
            f"extent_m={extent_m:g} is not a whole number of {m.name!r} pixels ({m.resolution_m:g} m). "
            f"Use a multiple of {m.resolution_m:g} m (and of {m.token_m:g} m for whole tokens)."
        )
    return px


def _generator(seed: int, name: str) -> torch.Generator:
    # One stream per sensor: a sensor's tensors do not depend on which others are requested.
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)


def _dates(batch_size: int, n_dates: int, g: torch.Generator) -> torch.Tensor:
    """Sorted day-of-year in 1..365, distinct within a sample when ``n_dates`` allows."""
    if n_dates <= _DAYS:
        doy = torch.stack([torch.randperm(_DAYS, generator=g)[:n_dates] for _ in range(batch_size)])
    else:
        doy = torch.randint(0, _DAYS, (batch_size, n_dates), generator=g)
    return (doy + 1).sort(dim=1).values.to(torch.int64)


def synthetic_batch(
    sensors: str | Sequence[str] = ("s2",),
    *,
    extent_m: float = 60,
    batch_size: int = 2,
    n_dates: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """A random, already normalised model batch in the official AnySat input layout.

    Single-date (VHR) sensors give ``(B, C, H, W)``; time series give ``(B, T, C, H, W)`` and
    ``<name>_dates`` (int64 ``(B, T)``, sorted day of year in 1..365). ``H = W =
    extent_m / resolution_m``, except for tile-token sensors (MODIS): ``H = W = 1``. Values
    are ~N(0, 1). Each sensor draws from its own generator seeded from ``seed`` and its name,
    so a sensor's tensors do not depend on the other sensors requested.

    Args:
        sensors: sensor names (keys of ``xanysat.MODALITIES``), in the dict order wanted.
        extent_m: ground side of the square tile, a multiple of every sensor's pixel size.
        batch_size: B.
        n_dates: T for every time-series sensor.
        seed: random seed.
        dtype: floating dtype of the data tensors (dates are always int64).

    Returns:
        ``{name: data, name + "_dates": dates, ...}``.

    Raises:
        ModalityError: unknown sensor.
        DimensionError: ``extent_m`` is not a whole number of a sensor's pixels.
        AnySatInputError: no sensors, repeated sensors, or a non-positive size.

    Example:
        >>> b = synthetic_batch(("s2", "modis"), extent_m=120, batch_size=1, n_dates=3)
        >>> tuple(b["s2"].shape), tuple(b["modis"].shape), b["s2_dates"].dtype
        ((1, 3, 10, 12, 12), (1, 3, 7, 1, 1), torch.int64)
    """
    names = (sensors,) if isinstance(sensors, str) else tuple(sensors)
    if not names:
        raise AnySatInputError("sensors is empty; give at least one sensor, e.g. ('s2',).")
    if len(set(names)) != len(names):
        raise AnySatInputError(f"sensors {names} repeats a sensor; each may appear once.")
    for arg, value in (("batch_size", batch_size), ("n_dates", n_dates)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise AnySatInputError(f"{arg} must be a positive integer, got {value!r}.")
    if not extent_m > 0:
        raise DimensionError(f"extent_m must be positive, got {extent_m!r}.")
    if not dtype.is_floating_point:
        raise AnySatInputError(f"dtype must be a floating-point dtype (normalised values), got {dtype}.")

    batch_size, n_dates = int(batch_size), int(n_dates)
    modalities = [get_modality(name) for name in names]
    sides = [_side_px(m, extent_m) for m in modalities]  # validate all before drawing
    batch: dict[str, torch.Tensor] = {}
    for m, side in zip(modalities, sides):
        g = _generator(seed, m.name)
        if m.time_series:
            shape = (batch_size, n_dates, m.n_bands, side, side)
        else:
            shape = (batch_size, m.n_bands, side, side)
        batch[m.name] = torch.randn(shape, generator=g, dtype=dtype)
        if m.time_series:
            batch[f"{m.name}_dates"] = _dates(batch_size, n_dates, g)
    return batch


def supported_patch_sizes(sensor: str, extent_m: float) -> list[int]:
    """Patch sizes (metres) a tile of ``extent_m`` can be cut into for ``sensor``.

    A patch size is a multiple of 10 m that divides the extent and, for sensors whose token
    is coarser than 10 m (l7, alos: 30 m), a multiple of the token size. Tile-token sensors
    (MODIS) accept any.

    Args:
        sensor: sensor name.
        extent_m: ground side of the square tile.

    Returns:
        The sizes in increasing order (empty when none fits, e.g. an extent of 65 m).

    Raises:
        ModalityError: unknown sensor.
        PatchSizeError: ``extent_m`` is not positive.

    Example:
        >>> supported_patch_sizes("s2", 60), supported_patch_sizes("l7", 60)
        ([10, 20, 30, 60], [30, 60])
    """
    m = get_modality(sensor)
    if not extent_m > 0:
        raise PatchSizeError(f"extent_m must be positive, got {extent_m!r}.")
    sizes = [p for p in range(10, int(extent_m) + 1, 10) if _whole(extent_m, p) is not None]
    if m.tile_token or m.token_m <= 10:
        return sizes
    return [p for p in sizes if _whole(p, m.token_m) is not None]


def synthetic_cube(
    sensors: Sequence[str] | dict = ("s2",),
    *,
    extent_m: float | tuple[float, float] = (1280, 1280),
    n_dates: int = 4,
    seed: int = 0,
    origin: tuple[float, float] = (600_000.0, 5_700_000.0),
    crs: str = "EPSG:32631",
    chunks: dict | None = None,
    start: str = "2021-03-01",
):
    """A seeded multi-sensor ``xr.DataTree`` as ``xanysat.embed`` takes it.

    One node per sensor at the sensor's native resolution, a variable named after the sensor
    with dims ``(time, band, y, x)`` (``(band, y, x)`` for single-date sensors), raw values
    ``mean + std * smooth noise`` from the sensor table's statistics (so that default
    normalisation gives unit-scale inputs), sorted dates every 16 days from ``start``, one CRS
    and one top-left corner ``origin``.

    Args:
        sensors: sensor names, or a mapping name -> number of dates (time series only).
        extent_m: ``(height, width)`` in metres (or one number for a square).
        chunks: dask chunks for every node (e.g. ``{"y": 64, "x": 64}``); None: numpy-backed.

    Example:
        >>> cube = synthetic_cube(("naip", "s2"), extent_m=(80, 120), n_dates=2)
        >>> cube["naip"]["naip"].shape, cube["s2"]["s2"].dims
        ((4, 64, 96), ('time', 'band', 'y', 'x'))
    """
    import numpy as np
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    extent = (extent_m, extent_m) if isinstance(extent_m, numbers.Number) else tuple(extent_m)
    counts = dict(sensors) if isinstance(sensors, dict) else {s: n_dates for s in sensors}
    nodes = {}
    for name, dates in counts.items():
        m = get_modality(name)
        ny, nx = (max(1, round(e / m.resolution_m)) for e in extent)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        lead = (dates, m.n_bands) if m.time_series else (m.n_bands,)
        coarse = rng.standard_normal((*lead, -(-ny // 4) + 1, -(-nx // 4) + 1)).astype("float32")
        noise = coarse.repeat(4, -2).repeat(4, -1)[..., :ny, :nx]
        noise += 0.3 * rng.standard_normal(noise.shape).astype("float32")
        mean = np.asarray(m.norm.mean if m.norm else [0.0] * m.n_bands, "float32")
        std = np.asarray(m.norm.std if m.norm else [1.0] * m.n_bands, "float32")
        shape = (m.n_bands, 1, 1)
        values = mean.reshape(shape) + std.reshape(shape) * noise
        coords = {
            "band": list(m.bands),
            "y": origin[1] - (np.arange(ny) + 0.5) * m.resolution_m,
            "x": origin[0] + (np.arange(nx) + 0.5) * m.resolution_m,
        }
        dims = ("band", "y", "x")
        if m.time_series:
            coords["time"] = np.datetime64(start, "ns") + np.arange(dates) * np.timedelta64(16, "D")
            dims = ("time", *dims)
        da = xr.DataArray(values, dims=dims, coords=coords, name=name)
        if chunks:
            da = da.chunk({k: v for k, v in chunks.items() if k in dims})
        nodes[name] = da.to_dataset().rio.write_crs(crs)
    return xr.DataTree.from_dict(nodes)
