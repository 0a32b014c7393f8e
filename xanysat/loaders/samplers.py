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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from xanysat.cube.read import Cube, as_cube
from xanysat.sensors.table import MODALITIES

__all__ = [
    "GridTileSampler", "MultiBatch", "MultiDataset", "MultiDatasetSampler", "MultiIndex", "RandomTileSampler",
    "TileQuery", "collate_multi", "grid_unit", "in_time", "multi_dataset_batches",
]

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
    """The least common multiple of the pixel sizes of the cube's patch-level sensors (all of
    them if it has none): tile sizes and offsets that are multiples of it cut every sensor at
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
    names = [n for n in cube.sensors if not MODALITIES[n].tile_token] or list(cube.sensors)
    unit = None
    for name in names:
        res = Fraction(cube.sensors[name].resolution_m).limit_denominator(1000)
        unit = res if unit is None else _lcm(unit, res)
    return float(unit)


def _lcm(a: Fraction, b: Fraction) -> Fraction:
    den = math.lcm(a.denominator, b.denominator)
    return Fraction(math.lcm(int(a * den), int(b * den)), den)


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
            self.unit_m = float(_lcm(Fraction(self.unit_m).limit_denominator(1000),
                                     Fraction(float(align_m)).limit_denominator(1000)))
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


# -- several datasets (SPEC section 5: multi-dataset sampling) ----------------------------------


class MultiIndex(NamedTuple):
    """One sample of a multi-dataset batch: which dataset, which item, at which patch size.

    Attributes:
        dataset: the dataset's name (or position).
        index: the item's index in that dataset.
        patch_size: patch size in metres drawn for the item's batch.

    Example:
        >>> key = MultiIndex("pastis", 7, 40)
        >>> key.dataset, key.index, key.patch_size
        ('pastis', 7, 40)
    """

    dataset: str | int
    index: int
    patch_size: int


class MultiBatch(NamedTuple):
    """A batch from one dataset, with the patch size drawn for it (``batch, patch_size = item[:2]``,
    the pairs ``xanysat.train.loop`` takes).

    Attributes:
        batch: the model batch (see ``xanysat.loaders.datasets.collate``).
        patch_size: patch size in metres.
        dataset: the dataset's name (or position).

    Example:
        >>> mb = MultiBatch({"s2": torch.zeros(4, 2, 10, 4, 4)}, 20, "small")
        >>> batch, patch_size = mb[:2]
        >>> patch_size, mb.dataset, tuple(batch["s2"].shape)
        (20, 'small', (4, 2, 10, 4, 4))
    """

    batch: dict
    patch_size: int
    dataset: str | int


def _per_dataset(value, names, what: str) -> list:
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        if missing:
            raise ValueError(f"{what} has no entry for datasets {missing}; give one per dataset ({list(names)}).")
        return [value[n] for n in names]
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise ValueError(f"{what} has {len(value)} entries for {len(names)} datasets.")
        return list(value)
    return [value] * len(names)


class MultiDatasetSampler(Sampler[list[MultiIndex]]):
    """Batches from several datasets, each batch from one of them (SPEC section 5, GeoPlex).

    Every step draws a dataset among those not yet exhausted with probability proportional
    to ``weights`` (default: uniform), takes that dataset's next ``batch_size`` items (of a
    shuffled order) and a patch size drawn uniformly from its set. The iteration ends when
    every dataset is exhausted or after ``length`` batches. Use it as ``batch_sampler=`` of
    a ``DataLoader`` over ``MultiDataset(datasets)`` with ``collate_fn=collate_multi``, or
    through ``multi_dataset_batches``.

    Args:
        datasets: a mapping name -> dataset, or a sequence (names are then positions); only
            their lengths (and ``tile_size_m``, to check patch sizes, where they have one) are used.
        batch_sizes: one per dataset (mapping or sequence), or one for all.
        patch_sizes: per dataset an int or a sequence of patch sizes in metres (multiples of 10
            dividing the dataset's tiles), or one for all.
        weights: per dataset, relative probabilities of being drawn (GeoPlex: PLANTED 2,
            PASTIS 1, FLAIR 1, TreeSatAI 1, S2NAIP 4); default uniform.
        length: at most this many batches per iteration.
        shuffle: shuffle each dataset's items every iteration.
        drop_last: a dataset whose remaining items do not fill a batch is exhausted.
        generator: a ``torch.Generator``.

    Example:
        >>> s = MultiDatasetSampler({"a": range(5), "b": range(8)}, {"a": 2, "b": 4}, {"a": 10, "b": (20, 40)},
        ...                         generator=torch.Generator().manual_seed(0))
        >>> [(b[0].dataset, len(b), b[0].patch_size) for b in s]
        [('a', 2, 10), ('b', 4, 20), ('a', 2, 10), ('b', 4, 40), ('a', 1, 10)]
    """

    def __init__(self, datasets, batch_sizes, patch_sizes, *, weights=None, length: int | None = None,
                 shuffle: bool = True, drop_last: bool = False, generator: torch.Generator | None = None):
        self.names = list(datasets) if isinstance(datasets, Mapping) else list(range(len(datasets)))
        items = [datasets[n] for n in self.names]
        if not items:
            raise ValueError("no datasets given.")
        self.sizes = [len(d) for d in items]
        self.batch_sizes = [int(b) for b in _per_dataset(batch_sizes, self.names, "batch_sizes")]
        self.patch_sizes = [tuple(int(p) for p in (ps if isinstance(ps, (list, tuple)) else [ps]))
                            for ps in _per_dataset(patch_sizes, self.names, "patch_sizes")]
        self.weights = [float(w) for w in _per_dataset(1.0 if weights is None else weights, self.names, "weights")]
        for name, item, b, ps, w in zip(self.names, items, self.batch_sizes, self.patch_sizes, self.weights):
            if b < 1 or w <= 0 or not ps:
                raise ValueError(f"dataset {name!r}: batch size {b}, weight {w}, patch sizes {ps}; expected a positive "
                                 "batch size and weight and at least one patch size.")
            tile = getattr(item, "tile_size_m", None)
            for p in ps:
                if p <= 0 or p % 10 or (tile is not None and any(round(t) % p for t in tile)):
                    raise ValueError(f"dataset {name!r}: patch size {p} m must be a positive multiple of 10 m"
                                     + (f" dividing its {tile[0]:g} x {tile[1]:g} m tiles." if tile else "."))
        self.length = length
        self.shuffle, self.drop_last, self.generator = shuffle, drop_last, generator

    def _batches(self, d: int) -> int:
        n, b = self.sizes[d], self.batch_sizes[d]
        return n // b if self.drop_last else -(-n // b)

    def __len__(self) -> int:
        total = sum(self._batches(d) for d in range(len(self.names)))
        return total if self.length is None else min(total, self.length)

    def __iter__(self) -> Iterator[list[MultiIndex]]:
        g = self.generator
        order = [torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n)) for n in self.sizes]
        left = [self._batches(d) for d in range(len(self.names))]
        position = [0] * len(self.names)
        for _ in range(len(self)):
            open_ = [d for d in range(len(self.names)) if left[d]]
            w = torch.tensor([self.weights[d] for d in open_], dtype=torch.float64)
            d = open_[int(torch.multinomial(w, 1, generator=g))]
            ps = self.patch_sizes[d]
            patch = ps[int(torch.randint(len(ps), (1,), generator=g))]
            start, position[d], left[d] = position[d], position[d] + self.batch_sizes[d], left[d] - 1
            yield [MultiIndex(self.names[d], i, patch) for i in order[d][start:position[d]]]


class MultiDataset(Dataset):
    """Several datasets behind one, indexed by ``MultiIndex`` (for ``MultiDatasetSampler``).

    Items are ``(key, sample)`` pairs, which ``collate_multi`` turns into a ``MultiBatch``.

    Args:
        datasets: a mapping name -> dataset, or a sequence (names are then positions).

    Example:
        >>> ds = MultiDataset({"a": ["a0", "a1"], "b": ["b0", "b1", "b2"]})
        >>> len(ds), ds[MultiIndex("b", 2, 20)]
        (5, (MultiIndex(dataset='b', index=2, patch_size=20), 'b2'))
        >>> MultiDataset([["x"], ["y"]])[MultiIndex(1, 0, 10)][1]
        'y'
    """

    def __init__(self, datasets):
        self.datasets = dict(datasets) if isinstance(datasets, Mapping) else dict(enumerate(datasets))

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets.values())

    def __getitem__(self, key: MultiIndex):
        return key, self.datasets[key.dataset][key.index]


def collate_multi(items) -> MultiBatch:
    """``collate`` for ``MultiDataset`` items: a ``MultiBatch(batch, patch_size, dataset)``.

    Args:
        items: ``(MultiIndex, sample)`` pairs, all of one dataset and patch size.

    Returns:
        A ``MultiBatch`` whose batch is ``xanysat.loaders.datasets.collate`` of the samples.

    Raises:
        ValueError: the items mix datasets or patch sizes.

    Example:
        >>> sample = {"s2": torch.zeros(2, 10, 4, 4), "s2_dates": torch.tensor([5.0, 9.0]),
        ...           "s2_mask": torch.ones(2, 10, 4, 4, dtype=torch.bool)}
        >>> mb = collate_multi([(MultiIndex("a", i, 20), sample) for i in range(3)])
        >>> mb.patch_size, mb.dataset, tuple(mb.batch["s2"].shape)
        (20, 'a', (3, 2, 10, 4, 4))
        >>> collate_multi([(MultiIndex("a", 0, 20), sample), (MultiIndex("a", 1, 40), sample)])
        Traceback (most recent call last):
            ...
        ValueError: a multi-dataset batch mixes datasets / patch sizes [('a', 20), ('a', 40)].
    """
    from xanysat.loaders.datasets import collate

    keys = {(k.dataset, k.patch_size) for k, _ in items}
    if len(keys) != 1:
        raise ValueError(f"a multi-dataset batch mixes datasets / patch sizes {sorted(keys, key=str)}.")
    (dataset, patch), = keys
    return MultiBatch(collate([sample for _, sample in items]), patch, dataset)


def multi_dataset_batches(datasets, batch_sizes, patch_sizes, *, generator: torch.Generator | None = None,
                          weights=None, length: int | None = None, num_workers: int = 0, **loader_kwargs):
    """A ``DataLoader`` of ``MultiBatch`` es: each batch from one dataset, with its batch size and
    a patch size drawn from its set (see ``MultiDatasetSampler``).

    Args:
        datasets, batch_sizes, patch_sizes, weights, length, generator: as for
            ``MultiDatasetSampler``.
        num_workers: ``DataLoader`` worker processes.
        **loader_kwargs: further ``DataLoader`` arguments (``pin_memory``...).

    Returns:
        A ``DataLoader`` over ``MultiDataset(datasets)`` yielding ``MultiBatch`` es.

    Example:
        >>> from xanysat.loaders.datasets import CubeDataset
        >>> from xanysat.testing import synthetic_cube
        >>> small = synthetic_cube(("s2",), extent_m=80, n_dates=2)
        >>> large = synthetic_cube(("s2",), extent_m=240, n_dates=2, seed=1)
        >>> sets = {"small": CubeDataset(small, GridTileSampler(small, 40)),
        ...         "large": CubeDataset(large, GridTileSampler(large, 120))}
        >>> loader = multi_dataset_batches(sets, {"small": 4, "large": 2}, {"small": [20, 40], "large": 60},
        ...                                generator=torch.Generator().manual_seed(0))
        >>> sorted((b.dataset, b.patch_size, tuple(b.batch["s2"].shape)) for b in loader)
        [('large', 60, (2, 2, 10, 12, 12)), ('large', 60, (2, 2, 10, 12, 12)), ('small', 20, (4, 2, 10, 4, 4))]
    """
    from torch.utils.data import DataLoader

    sampler = MultiDatasetSampler(datasets, batch_sizes, patch_sizes, weights=weights, length=length,
                                  generator=generator)
    return DataLoader(MultiDataset(datasets), batch_sampler=sampler, collate_fn=collate_multi,
                      num_workers=num_workers, **loader_kwargs)
