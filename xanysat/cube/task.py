"""What one block task of ``embed``'s graph needs (small, picklable), and the pixel windows and
input chunks a block reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xanysat.cube.runtime import ModelRef
from xanysat.cube.tiling import Geometry
from xanysat.sensors.table import MODALITIES


@dataclass(frozen=True)
class SensorPlan:
    """What a task needs to know about one sensor (small and picklable).

    Attributes:
        name: the sensor.
        resolution_m: pixel size.
        shape_px: ``(rows, columns)`` of the sensor's whole grid.
        chunk_px: ``(rows, columns)`` of its input chunks (one output block's worth).
        doy: the dates as the model takes them (``day_of_year``), None for single-date sensors.
        n_dates: number of dates (0 for single-date sensors).
        n_bands: the projector's bands.

    Example:
        >>> s2 = SensorPlan("s2", 10.0, (12, 8), (5, 8), (60.0, 76.0, 92.0), 3, 10)
        >>> s2.n_chunks, s2.tile_token
        ((3, 1), False)
    """

    name: str
    resolution_m: float
    shape_px: tuple[int, int]
    chunk_px: tuple[int, int]
    doy: tuple[float, ...] | None
    n_dates: int
    n_bands: int

    @property
    def n_chunks(self) -> tuple[int, int]:
        """Input chunks along y and x."""
        return tuple(math.ceil(n / c) for n, c in zip(self.shape_px, self.chunk_px))

    @property
    def tile_token(self) -> bool:
        """Whether the sensor gives one token per tile (MODIS)."""
        return MODALITIES[self.name].tile_token


@dataclass(frozen=True)
class EmbedJob:
    """Everything a block task needs besides its input chunks.

    Attributes:
        model: the model to run, as a picklable ``ModelRef`` (loaded once per worker process).
        geometry: tiles, blocks and output cells (``xanysat.cube.tiling.Geometry``).
        sensors: one ``SensorPlan`` per sensor, in cube order.
        batch_size: tiles per forward.
        output_modality: the sensor of a ``"dense"`` output, else None.
        features: channels of the output (``2 * embed_dim`` for ``"dense"``).

    Example:
        >>> from xanysat.cube.embed import plan_job
        >>> from xanysat.cube.options import EmbedOptions
        >>> from xanysat.cube.prepare import prepare
        >>> from xanysat.cube.runtime import model_ref
        >>> from xanysat.testing import synthetic_cube
        >>> inputs = prepare(synthetic_cube(("s2",), extent_m=(120, 80), n_dates=3))
        >>> job, arrays = plan_job(inputs, EmbedOptions(40), model_ref("untrained-tiny", device="cpu"))
        >>> job.features, job.batch_size, job.geometry.n_blocks, job.geometry.out_shape, job.model.source
        (256, 16, (1, 1), (3, 2), 'untrained-tiny')
        >>> s2 = job.sensors[0]  # a SensorPlan
        >>> s2.name, s2.shape_px, s2.chunk_px, s2.doy, s2.n_dates, s2.n_bands
        ('s2', (12, 8), (12, 8), (60.0, 76.0, 92.0), 3, 10)
    """

    model: ModelRef
    geometry: Geometry
    sensors: tuple[SensorPlan, ...]
    batch_size: int
    output_modality: str | None
    features: int


def pixel_window(plan: SensorPlan, g: Geometry, block: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Pixel rows and columns ``[start, stop)`` of a block with its halo (may exceed the grid).

    Args:
        plan: the sensor.
        g: the job's geometry.
        block: ``(row, column)`` of the output block.

    Returns:
        ``((row start, row stop), (column start, column stop))`` in the sensor's pixels.

    Example:
        >>> from xanysat.cube.tiling import make_geometry
        >>> g = make_geometry((120, 80), 40, ["s2"], tile_size=40, overlap=40, block_tiles=1)
        >>> s2 = SensorPlan("s2", 10.0, (12, 8), (4, 4), None, 3, 10)  # 40 m tiles of 4 x 4 pixels
        >>> pixel_window(s2, g, (0, 0))  # 40 m tiles of 4 x 4 pixels, 40 m halo
        ((-4, 8), (-4, 8))
    """
    window = []
    for axis in range(2):
        first = block[axis] * g.block_tiles[axis]
        count = min(g.block_tiles[axis], g.n_tiles[axis] - first)
        lo = first * g.tile_m[axis] - g.overlap + g.offset_m[axis]
        hi = (first + count) * g.tile_m[axis] + g.overlap + g.offset_m[axis]
        window.append((math.floor(round(lo / plan.resolution_m, 6)), math.ceil(round(hi / plan.resolution_m, 6))))
    return tuple(window)


def chunk_range(plan: SensorPlan, g: Geometry, block) -> tuple[range, range]:
    """The input chunks (rows, columns) a block's window touches.

    Args:
        plan: the sensor.
        g: the job's geometry.
        block: ``(row, column)`` of the output block.

    Returns:
        ``(rows, columns)`` as ranges of chunk indices, clipped to the grid.

    Example:
        >>> from xanysat.cube.tiling import make_geometry
        >>> g = make_geometry((120, 80), 40, ["s2"], tile_size=40, overlap=40, block_tiles=1)
        >>> s2 = SensorPlan("s2", 10.0, (12, 8), (4, 4), None, 3, 10)  # 40 m tiles of 4 x 4 pixels
        >>> s2.chunk_px, s2.n_chunks, pixel_window(s2, g, (1, 1))
        ((4, 4), (3, 2), ((0, 12), (0, 12)))
        >>> chunk_range(s2, g, (1, 1))
        (range(0, 3), range(0, 2))
    """
    ranges = []
    for (lo, hi), c, n in zip(pixel_window(plan, g, block), plan.chunk_px, plan.n_chunks):
        ranges.append(range(max(0, lo // c), min(n, math.ceil(hi / c))))
    return tuple(ranges)
