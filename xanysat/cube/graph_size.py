"""How many tasks a whole-cube ``embed`` graph holds, from shapes and chunks alone.

``embed`` checks this estimate *before* it builds its graph (building one for a continental
cube takes minutes and gigabytes before anything runs), and ``plan`` reports it. The embed
tasks are exact (one per output block); the input side follows the layers ``embed`` adds per
input chunk (band selection, concatenation, normalisation, the rechunk onto the block grid),
which match dask's graphs to about 20 %.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from xanysat.cube.prepare import Inputs, SensorInput
from xanysat.cube.read import SensorCube
from xanysat.cube.tiling import Geometry
from xanysat.errors import AnySatInputError

GRAPH_TASK_LIMIT = 200_000
"""Above about this many tasks, a single dask graph gets slow to build, ship and schedule."""


class GraphTooLargeError(AnySatInputError):
    """``embed`` would build a whole-cube dask graph of more than ``max_tasks`` tasks; the
    message names the fixes (``embed_to_zarr`` region by region, ``plan``, ``max_tasks=None``)."""


def input_chunks(data) -> int:
    """Chunks of the user's array; 0 for numpy-backed data (no input tasks).

    Example:
        >>> import dask.array as da, numpy as np
        >>> input_chunks(da.zeros((4, 10, 100, 100), chunks=(1, -1, 50, 50))), input_chunks(np.zeros(3))
        (16, 0)
    """
    chunks = getattr(data, "chunks", None)
    return math.prod(len(c) for c in chunks) if chunks else 0


def sensor_blocks(read: SensorCube, geometry: Geometry) -> int:
    """Chunks of a sensor's prepared array: one per block of pixels (the whole input, also when
    ``embed`` has a ``window``: the input is chunked onto the block grid as a whole)."""
    return math.prod(math.ceil(n / max(1, math.ceil(round(b / read.resolution_m, 6))))
                     for n, b in zip(read.shape_px, geometry.block_m))


def sensor_tasks(sensor: SensorInput, overlap: float, n_in: int, n_blocks: int, normalized: bool,
                 sliced: bool = False) -> int:
    """Tasks ``embed`` adds for one sensor's input: the input chunks, then per (date, y, x) chunk a
    cast, a selection per band, concatenation, transpose and normalisation, then the rechunk onto
    the block grid (splits and merges). Numpy input: one task per block chunk.

    Args:
        sensor: the prepared sensor.
        overlap: the job's halo in metres (halo strips add tasks).
        n_in: input chunks (``input_chunks``; 0 for numpy-backed data).
        n_blocks: chunks of the prepared array (``sensor_blocks``).
        normalized: whether ``embed`` standardises this sensor.
        sliced: the input is a slice of a larger dask array (a region): one more task per chunk.

    Returns:
        The estimated number of tasks.
    """
    data = sensor.read.data
    if n_in == 0:
        return n_blocks
    band_chunks = len(data.chunks[data.dims.index("band")])
    n_tyx = max(1, n_in // band_chunks)
    per_chunk = (data.dtype != np.float32) + (sensor.read.nodata is not None)
    per_tyx = per_chunk + 4 + 2 * normalized + 4 * len(sensor.derived) + 2 * len(sensor.absent)
    halo = 8 * n_blocks if overlap else 0
    return n_in * (2 if sliced else 1) + n_tyx * per_tyx + n_blocks + halo


def graph_tasks(inputs: Inputs, geometry: Geometry, normalized: Mapping[str, bool]) -> int:
    """The estimated tasks of a whole-cube ``embed`` graph: every sensor's input side, plus one
    embed task per output block. Cheap: counts chunks and blocks, builds nothing.

    Args:
        inputs: the prepared ``Inputs`` of a gridded cube.
        geometry: the job's ``Geometry``.
        normalized: sensor -> whether ``embed`` standardises it.

    Returns:
        The estimated number of tasks.

    Example:
        >>> from xanysat.cube.prepare import prepare
        >>> from xanysat.cube.tiling import make_geometry
        >>> from xanysat.testing import synthetic_cube
        >>> inputs = prepare(synthetic_cube(("s2",), extent_m=(320, 480), n_dates=2))  # numpy-backed
        >>> g = make_geometry((320.0, 480.0), 40, ("s2",), tile_size=160, block_tiles=1)
        >>> g.n_blocks, graph_tasks(inputs, g, {"s2": True})  # 6 input blocks + 6 embed tasks
        ((2, 3), 12)
    """
    total = math.prod(geometry.n_blocks)
    for name, s in inputs.sensors.items():
        total += sensor_tasks(s, geometry.overlap, input_chunks(s.read.data), sensor_blocks(s.read, geometry),
                              normalized[name])
    return int(total)


def check_graph_size(inputs: Inputs, geometry: Geometry, normalized: Mapping[str, bool],
                     max_tasks: int | None) -> None:
    """Raise ``GraphTooLargeError`` when the whole-cube graph would exceed ``max_tasks`` (before it
    is built); ``max_tasks=None`` checks nothing.

    Args:
        inputs, geometry, normalized: as for ``graph_tasks``.
        max_tasks: the most tasks allowed, or None.

    Raises:
        GraphTooLargeError: the estimate is above ``max_tasks``; the message names the fixes.

    Example:
        >>> from xanysat.cube.prepare import prepare
        >>> from xanysat.cube.tiling import make_geometry
        >>> from xanysat.testing import synthetic_cube
        >>> inputs = prepare(synthetic_cube(("s2",), extent_m=(320, 480), n_dates=2))
        >>> g = make_geometry((320.0, 480.0), 40, ("s2",), tile_size=160, block_tiles=1)
        >>> check_graph_size(inputs, g, {"s2": True}, max_tasks=12)  # within the limit: nothing
        >>> check_graph_size(inputs, g, {"s2": True}, max_tasks=10)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.cube.graph_size.GraphTooLargeError: embed would build one dask graph of about 12 tasks ...
    """
    if max_tasks is None:
        return
    if isinstance(max_tasks, bool) or not isinstance(max_tasks, (int, np.integer)) or max_tasks < 1:
        raise AnySatInputError(f"max_tasks must be a positive whole number of tasks or None, got {max_tasks!r}.")
    tasks = graph_tasks(inputs, geometry, normalized)
    if tasks <= max_tasks:
        return
    chunks = sum(input_chunks(s.read.data) for s in inputs.sensors.values())
    ny, nx = geometry.n_blocks
    raise GraphTooLargeError(
        f"embed would build one dask graph of about {tasks:,} tasks ({ny:,} x {nx:,} output blocks, {chunks:,} input "
        f"chunks), more than max_tasks={max_tasks:,}: building and scheduling it would take minutes and gigabytes "
        "before anything runs. Write the cube region by region with xanysat.embed_to_zarr(data, store, ...) "
        "(small graphs, resumable); xanysat.plan(data, ...) shows its regions and costs. To embed a part, crop the "
        "input to it (a window= on a large cube still chunks the whole input). Or pass max_tasks=None to build the "
        "graph anyway."
    )
