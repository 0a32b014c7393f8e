"""Where training tiles come from: samplers over the same cubes ``xanysat.embed`` reads.

A sampler yields ``TileQuery`` objects (small, picklable): a tile's top-left offset and size in
metres from the cube's top-left corner, and an optional time window. Sizes, strides and
offsets are snapped to the cube's *grid unit*, the least common multiple of its sensors'
pixel sizes (10 m for s2 + naip, 30 m with l7), so every sensor gets whole pixels. Names
follow torchgeo's samplers: ``size``, ``stride``, ``length``, ``roi``, ``toi``, ``units``,
``generator``.

``GridTileSampler`` covers every pixel of the region: the last row and column of tiles are
*shifted back* to end at the region's far edge (overlapping their neighbours), nothing is
dropped; only a region smaller than a tile (or ending off the grid unit) makes a tile reach
past it, and what lies outside the cube is read as missing (NaN, masked).

Example:
    >>> from xanysat.testing import synthetic_cube
    >>> cube = synthetic_cube(("s2",), extent_m=(100, 120), n_dates=2)
    >>> grid = GridTileSampler(cube, 40)
    >>> len(grid), [q.offset_m for q in grid][:4]
    (9, [(0.0, 0.0), (0.0, 40.0), (0.0, 80.0), (40.0, 0.0)])
    >>> [q.offset_m[0] for q in grid][-1]  # the last row is shifted back to end at 100 m
    60.0
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Sampler

from xanysat.cube.read import Cube, as_cube
from xanysat.sensors.rules import grid_unit_m, pixel_lcm_m
from xanysat.sensors.table import MODALITIES

__all__ = ["GridTileSampler", "RandomTileSampler", "TileQuery", "grid_unit", "in_time"]

_EPS = 1e-6
UNITS = ("m", "px")


@dataclass(frozen=True)
class TileQuery:
    """One tile to read from a cube.

    Attributes:
        offset_m: ``(y, x)`` of the tile's top-left corner, in metres down and right from the
            cube's top-left corner.
        size_m: ``(height, width)`` in metres.
        time: ``(start, end)`` dates, both inclusive (either may be None: open), or None for
            every date.

    Example:
        >>> q = TileQuery((40.0, 0.0), (40.0, 40.0))
        >>> q.bounds((600_000.0, 5_700_000.0))
        (600000.0, 5699920.0, 600040.0, 5699960.0)
    """

    offset_m: tuple[float, float]
    size_m: tuple[float, float]
    time: tuple[np.datetime64 | None, np.datetime64 | None] | None = None

    def bounds(self, origin: tuple[float, float]) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)`` in the CRS of a cube whose top-left corner is ``origin``."""
        (oy, ox), (h, w) = self.offset_m, self.size_m
        return origin[0] + ox, origin[1] - oy - h, origin[0] + ox + w, origin[1] - oy


def grid_unit(cube: Cube) -> float:
    """The grid unit of the cube's sensors (``xanysat.sensors.rules.grid_unit_m``): the least
    common multiple of the pixel sizes of its patch-level sensors (all of them if it has none): tile sizes and offsets that are multiples of it cut every sensor at
    pixel edges.

    Args:
        cube: a ``Cube`` (see ``xanysat.cube.read.as_cube``).

    Returns:
        The grid unit in metres.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> grid_unit(as_cube(synthetic_cube(("naip", "s2"), extent_m=40, n_dates=1)))
        10.0
    """
    return grid_unit_m(cube.sensors)


def _pair(value, what: str) -> tuple[float, float]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{what} must be a number or a (height, width) pair, got {value!r}.")
        pair = (float(value[0]), float(value[1]))
    else:
        pair = (float(value), float(value))
    if not all(math.isfinite(v) and v > 0 for v in pair):
        raise ValueError(f"{what} must be positive, got {value!r}.")
    return pair


def _parse_time(value) -> np.datetime64 | None:
    if value is None:
        return None
    try:
        return np.datetime64(value, "ns")
    except (TypeError, ValueError):
        raise ValueError(f"toi bounds must be dates (e.g. '2021-03-01' or np.datetime64), got {value!r}.") from None


def in_time(dates: np.ndarray, window) -> np.ndarray:
    """Which ``dates`` fall in a query's time window (``(start, end)`` inclusive, None: open).

    Args:
        dates: ``datetime64[ns]`` dates.
        window: ``(start, end)`` (either may be None) or None for every date.

    Returns:
        A boolean array shaped like ``dates``.

    Example:
        >>> dates = np.array(["2021-03-01", "2021-04-01", "2021-05-01"], "datetime64[ns]")
        >>> in_time(dates, (np.datetime64("2021-04-01", "ns"), None))
        array([False,  True,  True])
        >>> in_time(dates, (None, np.datetime64("2021-04-01", "ns"))).tolist(), bool(in_time(dates, None).all())
        ([True, True, False], True)
    """
    keep = np.ones(dates.shape, dtype=bool)
    if window is not None:
        start, end = window
        if start is not None:
            keep &= dates >= start
        if end is not None:
            keep &= dates <= end
    return keep


class _TileSampler(Sampler[TileQuery]):
    """What both samplers share: the cube's grid unit, the snapped size, the region, the time window."""

    def __init__(self, cube, size, *, roi=None, toi=None, units: str = "m", align_m: float | None = None,
                 sensor: str | None = None):
        self.cube = cube if isinstance(cube, Cube) else as_cube(cube, sensor)
        if units not in UNITS:
            raise ValueError(f"units must be one of {UNITS} ('px': pixels of the coarsest patch-level sensor), "
                             f"got {units!r}.")
        self.units = units
        self.unit_m = grid_unit(self.cube)
        if align_m is not None:
            if not align_m > 0:
                raise ValueError(f"align_m must be a positive pixel size in metres, got {align_m!r}.")
            self.unit_m = pixel_lcm_m((self.unit_m, float(align_m)))
        spatial = [s.resolution_m for n, s in self.cube.sensors.items() if not MODALITIES[n].tile_token]
        self.pixel_m = max(spatial) if spatial else self.unit_m
        self._size = tuple(self._snap(v) for v in _pair(self._metres(size), "size"))
        self._region = self._roi_units(roi)
        self.toi = self._toi(toi)

    # -- geometry in whole grid units --------------------------------------------------------

    def _metres(self, value):
        if self.units == "m":
            return value
        if isinstance(value, (tuple, list)):
            return type(value)(v * self.pixel_m for v in value)
        return value * self.pixel_m

    def _snap(self, metres: float) -> int:
        """Metres -> whole grid units, rounded to the nearest (at least one)."""
        return max(1, math.floor(metres / self.unit_m + 0.5))

    @property
    def size_m(self) -> tuple[float, float]:
        """``(height, width)`` of every tile, after snapping."""
        return tuple(n * self.unit_m for n in self._size)

    @property
    def roi_m(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """The region as ``((top, bottom), (left, right))`` offsets in metres, snapped outwards."""
        return tuple((a * self.unit_m, b * self.unit_m) for a, b in self._region)

    def _roi_units(self, roi) -> tuple[tuple[int, int], tuple[int, int]]:
        extent = [math.ceil(e / self.unit_m - _EPS) for e in self.cube.extent_m]
        if roi is None:
            return (0, extent[0]), (0, extent[1])
        if hasattr(roi, "bounds"):
            roi = roi.bounds
        try:
            minx, miny, maxx, maxy = (float(v) for v in roi)
        except (TypeError, ValueError):
            raise ValueError(f"roi must be a (minx, miny, maxx, maxy) bounding box in the cube's CRS, got {roi!r}.") \
                from None
        x0, y0 = self.cube.origin
        spans = ((y0 - maxy, y0 - miny), (minx - x0, maxx - x0))
        out = []
        for (lo, hi), n, axis in zip(spans, extent, "yx"):
            a = max(0, math.floor(lo / self.unit_m + _EPS))
            b = min(n, math.ceil(hi / self.unit_m - _EPS))
            if not hi > lo or b <= a:
                left, bottom, right, top = x0, y0 - self.cube.extent_m[0], x0 + self.cube.extent_m[1], y0
                raise ValueError(
                    f"roi {tuple(roi)} does not overlap the cube along {axis} (the cube spans x {left:g}..{right:g}, "
                    f"y {bottom:g}..{top:g} in its CRS); give (minx, miny, maxx, maxy) inside it."
                )
            out.append((a, b))
        return tuple(out)

    def _toi(self, toi):
        if toi is None:
            return None
        if isinstance(toi, slice):
            toi = (toi.start, toi.stop)
        try:
            start, end = toi
        except (TypeError, ValueError):
            raise ValueError(f"toi must be a (start, end) pair of dates (None for open), got {toi!r}.") from None
        start, end = _parse_time(start), _parse_time(end)
        if start is not None and end is not None and end < start:
            raise ValueError(f"toi ends ({end}) before it starts ({start}).")
        dated = [s for s in self.cube.sensors.values() if s.dates is not None]
        if dated and not any(in_time(s.dates, (start, end)).any() for s in dated):
            first = min(s.dates[0] for s in dated)
            last = max(s.dates[-1] for s in dated)
            raise ValueError(f"toi {start}..{end} holds no date of the cube (its dates run from "
                             f"{np.datetime_as_string(first, 'D')} to {np.datetime_as_string(last, 'D')}).")
        return start, end

    def _query(self, row: int, col: int) -> TileQuery:
        u = self.unit_m
        return TileQuery((row * u, col * u), self.size_m, self.toi)

    def _span(self, axis: int) -> tuple[int, int]:
        """First and last (inclusive) tile start along ``axis``, in grid units."""
        a, b = self._region[axis]
        return a, max(a, b - self._size[axis])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size_m={self.size_m}, {self._extra_repr()}roi_m={self.roi_m}, "
                f"toi={self.toi}, grid unit {self.unit_m:g} m)")

    def _extra_repr(self) -> str:
        return ""


class GridTileSampler(_TileSampler):
    """Tiles on a regular grid covering every pixel of the cube (or of ``roi``), row-major.

    Starts step by ``stride`` from the region's top-left corner; the last row and column are
    shifted back to end at the region's far edge, so nothing is dropped and no tile is padded
    unless the region is smaller than a tile.

    Args:
        cube: a ``Cube`` or anything ``xanysat.cube.read.as_cube`` reads (DataTree, Dataset, DataArray).
        size: tile side, a number or ``(height, width)``; snapped to the grid unit.
        stride: step between tiles (default ``size``: no overlap); snapped to the grid unit.
        roi: ``(minx, miny, maxx, maxy)`` in the cube's CRS (or an object with ``.bounds``);
            snapped outwards to the grid unit and clipped to the cube.
        toi: ``(start, end)`` dates (inclusive, None for open) or a ``slice``; every query carries it.
        units: ``"m"`` (metres) or ``"px"`` (pixels of the coarsest patch-level sensor).
        align_m: also cut whole pixels of this size (e.g. a coarser label raster's): the grid
            unit becomes the least common multiple of both.
        sensor: passed to ``as_cube`` for a single-sensor input that does not name its sensor.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=80, n_dates=2)
        >>> s = GridTileSampler(cube, 4, stride=3, units="px", roi=(600_000, 5_699_920, 600_080, 5_700_000))
        >>> s.size_m, [q.offset_m for q in s]
        ((40.0, 40.0), [(0.0, 0.0), (0.0, 30.0), (0.0, 40.0), (30.0, 0.0), (30.0, 30.0), (30.0, 40.0), (40.0, 0.0), (40.0, 30.0), (40.0, 40.0)])
    """

    def __init__(self, cube, size, stride=None, *, roi=None, toi=None, units: str = "m", align_m: float | None = None,
                 sensor: str | None = None):
        super().__init__(cube, size, roi=roi, toi=toi, units=units, align_m=align_m, sensor=sensor)
        self._stride = self._size if stride is None else tuple(
            self._snap(v) for v in _pair(self._metres(stride), "stride"))

    @property
    def stride_m(self) -> tuple[float, float]:
        return tuple(n * self.unit_m for n in self._stride)

    def _starts(self, axis: int) -> list[int]:
        first, last = self._span(axis)
        return [*range(first, last, self._stride[axis]), last]

    def __iter__(self) -> Iterator[TileQuery]:
        for row in self._starts(0):
            for col in self._starts(1):
                yield self._query(row, col)

    def __len__(self) -> int:
        return len(self._starts(0)) * len(self._starts(1))

    def _extra_repr(self) -> str:
        return f"stride_m={self.stride_m}, "


class RandomTileSampler(_TileSampler):
    """``length`` tiles at random positions of the grid unit, each wholly inside ``roi``.

    Every iteration draws fresh positions from ``generator``; two samplers built with
    generators seeded alike yield the same tiles. Pass it to a ``DataLoader`` as
    ``sampler=`` over a ``CubeDataset`` to get new tiles every epoch, identical for any
    ``num_workers`` (the sampler runs in the main process).

    Args:
        cube: a ``Cube`` or anything ``as_cube`` reads.
        size: tile side, a number or ``(height, width)``; snapped to the grid unit.
        length: tiles per iteration.
        roi: ``(minx, miny, maxx, maxy)`` in the cube's CRS; a region smaller than a tile
            gives tiles starting at its corner.
        toi: ``(start, end)`` dates (inclusive) or a ``slice``.
        generator: a ``torch.Generator``; None: torch's default generator.
        units: ``"m"`` or ``"px"``.
        align_m: see ``GridTileSampler``.
        sensor: see ``GridTileSampler``.

    Example:
        >>> import torch
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=200, n_dates=2)
        >>> draw = lambda seed: [q.offset_m for q in RandomTileSampler(
        ...     cube, 40, 3, generator=torch.Generator().manual_seed(seed))]
        >>> draw(0) == draw(0), draw(0) == draw(1)
        (True, False)
    """

    def __init__(self, cube, size, length: int, *, roi=None, toi=None, generator: torch.Generator | None = None,
                 units: str = "m", align_m: float | None = None, sensor: str | None = None):
        super().__init__(cube, size, roi=roi, toi=toi, units=units, align_m=align_m, sensor=sensor)
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise ValueError(f"length must be a positive number of tiles, got {length!r}.")
        self.length = int(length)
        self.generator = generator

    def reseeded(self, seed: int) -> RandomTileSampler:
        """A copy drawing from a new generator seeded with ``seed`` (used by ``IterableCubeDataset``
        to give all DataLoader workers one shared stream per epoch)."""
        return _replace_generator(self, torch.Generator().manual_seed(int(seed) % 2**63))

    def __iter__(self) -> Iterator[TileQuery]:
        (y0, y1), (x0, x1) = self._span(0), self._span(1)
        rows = torch.randint(y0, y1 + 1, (self.length,), generator=self.generator).tolist()
        cols = torch.randint(x0, x1 + 1, (self.length,), generator=self.generator).tolist()
        for row, col in zip(rows, cols):
            yield self._query(row, col)

    def __len__(self) -> int:
        return self.length

    def _extra_repr(self) -> str:
        return f"length={self.length}, "


def _replace_generator(sampler: RandomTileSampler, generator: torch.Generator | None) -> RandomTileSampler:
    """A shallow copy of ``sampler`` drawing from ``generator``."""
    import copy

    out = copy.copy(sampler)
    out.generator = generator
    return out
