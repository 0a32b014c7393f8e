"""Regions: rectangles of whole output blocks that ``embed_to_zarr`` embeds and writes one at a
time, and the input slice (with its halo) each one reads.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from xanysat.cube.read import Cube
from xanysat.cube.tiling import Geometry
from xanysat.sensors.rules import pixel_lcm_m
from xanysat.sensors.table import MODALITIES

TASKS_PER_WORKER = 4
"""Default ``region_blocks``: about this many embed tasks per worker thread in a region."""


@dataclass(frozen=True)
class Regions:
    """The whole cube's blocks grouped into rectangles of ``region_blocks`` blocks.

    Iterating gives the regions' ``(row, column)`` indices, row-major; ``blocks``, ``metres``
    and ``cells`` locate one region.

    Attributes:
        geometry: the whole-cube ``Geometry``.
        region_blocks: blocks per region along y and x.

    Example:
        >>> from xanysat.cube.tiling import make_geometry
        >>> g = make_geometry((320, 480), 40, ["s2"], tile_size=160, block_tiles=1)
        >>> regions = Regions(g, (1, 2))  # 2 x 3 blocks of one 160 m tile
        >>> regions.shape, regions.count, list(regions)
        ((2, 2), 4, [(0, 0), (0, 1), (1, 0), (1, 1)])
        >>> regions.blocks((1, 1)), regions.metres((1, 1))
        (((1, 2), (2, 3)), ((160.0, 320.0), (320.0, 480.0)))
        >>> regions.cells((1, 1))
        (slice(4, 8, None), slice(8, 12, None))
    """

    geometry: Geometry
    region_blocks: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(math.ceil(n / r) for n, r in zip(self.geometry.n_blocks, self.region_blocks))

    @property
    def count(self) -> int:
        return self.shape[0] * self.shape[1]

    def __iter__(self):
        for i in range(self.shape[0]):
            for j in range(self.shape[1]):
                yield i, j

    def blocks(self, region) -> tuple[tuple[int, int], tuple[int, int]]:
        """Blocks ``[start, stop)`` along y and x."""
        return tuple((r * rb, min((r + 1) * rb, nb))
                     for r, rb, nb in zip(region, self.region_blocks, self.geometry.n_blocks))

    def metres(self, region) -> tuple[tuple[float, float], tuple[float, float]]:
        """The region's ``[start, stop)`` in metres from the cube's top-left corner, clipped to the cube."""
        g = self.geometry
        out = []
        for axis, (b0, b1) in enumerate(self.blocks(region)):
            t0 = b0 * g.block_tiles[axis]
            t1 = min(b1 * g.block_tiles[axis], g.n_tiles[axis])
            out.append((float(t0 * g.tile_m[axis]), float(min(t1 * g.tile_m[axis], g.extent_m[axis]))))
        return tuple(out)

    def cells(self, region) -> tuple[slice, slice]:
        """The region's output cells (rows, columns) in the whole-cube output."""
        g = self.geometry
        out = []
        for axis, (b0, b1) in enumerate(self.blocks(region)):
            step = g.block_tiles[axis] * g.cells_per_tile[axis]
            out.append(slice(b0 * step, min(b1 * step, g.out_shape[axis])))
        return tuple(out)


def default_region_blocks(geometry: Geometry, workers: int, cube: Cube | None = None) -> tuple[int, int]:
    """About ``TASKS_PER_WORKER`` blocks per worker thread, square-ish, and at least one input
    chunk wide (a region reads whole input chunks: narrower regions would read them again and again).

    Args:
        geometry: the whole-cube ``Geometry``.
        workers: worker threads (see ``worker_threads``).
        cube: the input ``Cube``, to widen regions to its dask chunks; None: ignore chunks.

    Returns:
        Blocks per region along y and x, at most the cube's.

    Example:
        >>> from xanysat.cube.tiling import make_geometry
        >>> g = make_geometry((320, 480), 40, ["s2"], tile_size=160, block_tiles=1)
        >>> g.n_blocks
        (2, 3)
        >>> default_region_blocks(g, 1), default_region_blocks(g, 8)
        ((2, 2), (2, 3))
    """
    target = max(4, TASKS_PER_WORKER * max(1, workers))
    ny, nx = geometry.n_blocks
    side = max(1, math.isqrt(target))
    ry = min(ny, side)
    rx = min(nx, max(1, math.ceil(target / ry)))
    if rx == nx and ry < ny:
        ry = min(ny, max(ry, math.ceil(target / rx)))
    chunk_m = _input_chunk_m(cube) if cube is not None else (0.0, 0.0)
    ry, rx = (min(n, max(r, math.ceil(round(c / b, 6))))
              for n, r, c, b in zip((ny, nx), (ry, rx), chunk_m, geometry.block_m))
    return ry, rx


def _input_chunk_m(cube: Cube) -> tuple[float, float]:
    """The largest input chunk side in metres along y and x (0 for numpy-backed sensors)."""
    out = [0.0, 0.0]
    for s in cube.sensors.values():
        chunks = getattr(s.data, "chunks", None)
        if not chunks or MODALITIES[s.name].tile_token:
            continue
        for axis, dim in enumerate(("y", "x")):
            out[axis] = max(out[axis], max(chunks[s.data.dims.index(dim)]) * s.resolution_m)
    return tuple(out)


def resolve_region_blocks(geometry: Geometry, region_blocks, workers: int, cube: Cube | None = None) -> tuple[int, int]:
    """``region_blocks`` as a pair clipped to the cube, or the default (see ``default_region_blocks``).

    Args:
        geometry: the whole-cube ``Geometry``.
        region_blocks: an int, a ``(rows, cols)`` pair, or None for the default.
        workers: worker threads, for the default.
        cube: the input ``Cube``, for the default.

    Returns:
        Blocks per region along y and x.

    Raises:
        ValueError: ``region_blocks`` is not a positive int or pair.

    Example:
        >>> from xanysat.cube.tiling import make_geometry
        >>> g = make_geometry((320, 480), 40, ["s2"], tile_size=160, block_tiles=1)
        >>> resolve_region_blocks(g, 5, workers=1)  # clipped to 2 x 3 blocks
        (2, 3)
        >>> resolve_region_blocks(g, 0, workers=1)
        Traceback (most recent call last):
            ...
        ValueError: region_blocks must be a positive int or a (rows, cols) pair, got 0.
    """
    if region_blocks is None:
        return default_region_blocks(geometry, workers, cube)
    rb = (region_blocks, region_blocks) if isinstance(region_blocks, (int, np.integer)) else tuple(region_blocks)
    if len(rb) != 2 or min(int(r) for r in rb) < 1:
        raise ValueError(f"region_blocks must be a positive int or a (rows, cols) pair, got {region_blocks!r}.")
    return tuple(min(int(r), n) for r, n in zip(rb, geometry.n_blocks))


def worker_threads(client=None) -> int:
    """Threads that will run tasks: the distributed client's (given or default), else this machine's.

    Args:
        client: a ``dask.distributed`` client, or None for the default client if any.

    Returns:
        The number of threads, at least 1.

    Example:
        >>> class FakeClient:  # two workers of 2 and 4 threads
        ...     def nthreads(self):
        ...         return {"tcp://a": 2, "tcp://b": 4}
        >>> worker_threads(FakeClient())
        6
        >>> worker_threads() >= 1
        True
    """
    if client is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    import dask

    return int(dask.config.get("num_workers", None) or os.cpu_count() or 1)


def alignment_m(cube: Cube) -> float:
    """Smallest length that is a whole number of pixels of every sensor (``pixel_lcm_m``, MODIS
    included): region slices start on it, so that every sensor's slice keeps the shared grid origin.

    Example:
        >>> from xanysat.cube.read import as_cube
        >>> from xanysat.testing import synthetic_cube
        >>> alignment_m(as_cube(synthetic_cube(("naip", "aerial"), extent_m=10)))  # 1.25 m and 0.2 m
        5.0
    """
    return pixel_lcm_m(s.resolution_m for s in cube.sensors.values())


def slice_pixels(cube: Cube, g: Geometry, metres) -> tuple[float, dict]:
    """Where a region's input slice starts (metres, on ``alignment_m``) and each sensor's pixel
    rows/columns ``(start, stop)`` covering the region and its ``overlap`` halo (clipped to the
    sensor's grid; a sensor with no pixel there is left out).

    Args:
        cube: the input ``Cube``.
        g: the whole-cube ``Geometry``.
        metres: the region's ``((y0, y1), (x0, x1))`` from the cube's top-left corner, as
            ``Regions.metres`` gives it.

    Returns:
        ``(starts, pixels)``: the slice's start in metres along y and x, and sensor ->
        ``((row0, row1), (col0, col1))``.

    Example:
        >>> from xanysat.cube.read import as_cube
        >>> from xanysat.cube.tiling import make_geometry
        >>> from xanysat.testing import synthetic_cube
        >>> cube = as_cube(synthetic_cube(("s2",), extent_m=(320, 480), n_dates=3))
        >>> g = make_geometry(cube.extent_m, 40, ["s2"], tile_size=160, block_tiles=1)
        >>> slice_pixels(cube, g, ((160.0, 320.0), (320.0, 480.0)))
        ((160.0, 320.0), {'s2': ((16, 32), (32, 48))})
    """
    step = alignment_m(cube)
    starts = tuple(math.floor(round(max(0.0, lo - g.overlap) / step, 6)) * step for lo, _ in metres)
    pixels = {}
    for name, s in cube.sensors.items():
        box = []
        for axis, ((lo, hi), start) in enumerate(zip(metres, starts)):
            p0 = round(start / s.resolution_m)
            p1 = min(s.shape_px[axis], math.ceil(round((hi + g.overlap) / s.resolution_m, 6)))
            box.append((p0, p1))
        if all(p1 > p0 for p0, p1 in box):
            pixels[name] = tuple(box)
    return starts, pixels
