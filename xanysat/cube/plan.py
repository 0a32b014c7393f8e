"""``plan``: what an embedding job will cost, from shapes and dtypes alone (no pixel is read).

A plan answers, before anything runs: how many tiles and blocks (one dask task per block),
how big the whole-cube dask graph would be, the output grid and its size, the bytes the job
reads, the memory one task needs, how ``embed_to_zarr`` would cut the job into regions, and how
long the model would take (seconds per tile measured on this machine on one synthetic tile of
the plan's shape, or given as ``throughput=``). It builds no dask graph, so it answers in
seconds for a continental cube.

Task counts of the whole-cube graph are estimates: the embed tasks are exact (one per block),
the input side follows the layers ``embed`` adds per input chunk (band selection, concatenation,
normalisation, the rechunk onto the block grid), which match dask's graphs to about 20 %.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from xanysat.cube.read import Cube, as_cube
from xanysat.sensors.table import MODALITIES
from xanysat.cube.tiling import Geometry, make_geometry

GRAPH_TASK_LIMIT = 200_000
"""Above about this many tasks, a single dask graph gets slow to build, ship and schedule."""
TASKS_PER_WORKER = 4
"""Default ``region_blocks``: about this many embed tasks per worker thread in a region."""
EMBED_OPTIONS = ("model", "tile_size", "overlap", "batch_size", "device", "dtype", "normalize",
                 "output_modality", "block_tiles", "sensor", "date_origin")

_SECONDS_PER_TILE: dict[tuple, float] = {}


# -- the job as embed would build it, without its graph -------------------------------------------


@dataclass(frozen=True)
class Setup:
    """The whole-cube job: cube, geometry, model and options, as ``embed`` resolves them.

    Built by ``setup_job``. ``doy(name)`` gives a sensor's dates as the day-of-year values the
    model sees (``None`` for single-date sensors).

    Attributes:
        cube: the validated ``xanysat.cube.read.Cube``.
        geometry: tiles, blocks and output grid (``xanysat.cube.tiling.Geometry``).
        ref: the resolved ``xanysat.cube.runtime.ModelRef``.
        features: output features per cell (``2 * embed_dim`` for ``output="dense"``).
        embed_dim: the model's token width.
        num_heads: the model's attention heads.
        mlp_ratio: the model's MLP width ratio.
        stats: sensor -> ``NormStats`` or ``None`` (see ``resolve_normalization``).
        output_modality: the sensor of dense outputs, else as given.
        options: ``embed`` keyword arguments, with the tiling fixed from ``geometry``.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(320, 480), n_dates=3)
        >>> setup = setup_job(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1)
        >>> setup.features, setup.geometry.n_tiles, setup.options["tile_size"]
        (256, (2, 3), (160, 160))
        >>> setup.doy("s2")  # dates every 16 days from 2021-03-01
        array([60, 76, 92])
    """

    cube: Cube
    geometry: Geometry
    ref: object  # xanysat.cube.runtime.ModelRef
    features: int
    embed_dim: int
    num_heads: int
    mlp_ratio: float
    stats: dict
    output_modality: str | None
    options: dict
    """``embed`` keyword arguments (those of ``EMBED_OPTIONS`` the caller gave), with the model
    resolved; ``tile_size``, ``block_tiles`` and ``overlap`` fixed from ``geometry``."""

    def doy(self, name: str):
        from xanysat.cube.embed import day_of_year

        s = self.cube.sensors[name]
        return None if s.dates is None else day_of_year(s.dates, self.options.get("date_origin"))


def setup_job(data, patch_size=40, output="patch", **options) -> Setup:
    """Read the cube and resolve tiling, model and normalisation exactly as ``embed`` does.

    Args:
        data: a DataTree, Dataset or DataArray accepted by ``xanysat.embed``.
        patch_size: patch side in metres.
        output: ``"tile"``, ``"patch"``, ``"all"`` or ``"dense"``.
        **options: ``embed`` keyword arguments, some of ``EMBED_OPTIONS``.

    Returns:
        A ``Setup``; no pixel is read and no dask graph is built.

    Raises:
        TypeError: an option that ``embed`` does not take.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(320, 480), n_dates=3)
        >>> setup = setup_job(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1)
        >>> setup.geometry.n_blocks, setup.embed_dim, list(setup.stats)
        ((2, 3), 256, ['s2'])
        >>> setup_job(cube, 40, tile=160)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        TypeError: unexpected options ['tile']; expected some of model, tile_size, ...
    """
    from xanysat.cube.embed import _window_bytes
    from xanysat.cube.normalize import resolve_normalization
    from xanysat.cube.runtime import client_model, model_ref

    unknown = set(options) - set(EMBED_OPTIONS)
    if unknown:
        raise TypeError(f"unexpected options {sorted(unknown)}; expected some of {', '.join(EMBED_OPTIONS)}.")
    cube = as_cube(data, options.get("sensor"))
    names = tuple(cube.sensors)
    tile_size, overlap = options.get("tile_size"), options.get("overlap", 0)
    output_modality, block_tiles = options.get("output_modality"), options.get("block_tiles")
    ref = model_ref(options.get("model"), device=options.get("device", "auto"), dtype=options.get("dtype"))
    cpu_model = client_model(ref)
    tile_bytes = None
    if block_tiles is None:  # the same default as embed: blocks sized by their input bytes
        g0 = make_geometry(cube.extent_m, patch_size, names, output=output, tile_size=tile_size, overlap=overlap,
                           block_tiles=1, output_modality=output_modality,
                           preferred_tile_m=getattr(cpu_model, "tile_m", None))
        tile_bytes = sum(_window_bytes(s, g0.tile_m, overlap) for s in cube.sensors.values())
    g = make_geometry(cube.extent_m, patch_size, names, output=output, tile_size=tile_size, overlap=overlap,
                      block_tiles=block_tiles, output_modality=output_modality, tile_bytes=tile_bytes,
                      preferred_tile_m=getattr(cpu_model, "tile_m", None))
    if output == "dense":
        output_modality = output_modality or next(n for n in names if not MODALITIES[n].tile_token)
    config = cpu_model.config
    stats = resolve_normalization(names, options.get("normalize", True), getattr(cpu_model, "normalization", {}))
    fixed = {k: v for k, v in options.items() if k != "sensor"}
    fixed.update(tile_size=g.tile_m, block_tiles=g.block_tiles, overlap=g.overlap)
    features = config.embed_dim * (2 if output == "dense" else 1)
    return Setup(cube, g, ref, features, config.embed_dim, config.num_heads, config.mlp_ratio, stats,
                 output_modality, fixed)


# -- regions: rectangles of whole blocks, embedded and written one at a time --------------------------


@dataclass(frozen=True)
class Regions:
    """The whole cube's blocks grouped into rectangles of ``region_blocks`` blocks.

    Iterating gives the regions' ``(row, column)`` indices, row-major; ``blocks``, ``metres``
    and ``cells`` locate one region.

    Attributes:
        geometry: the whole-cube ``Geometry``.
        region_blocks: blocks per region along y and x.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(320, 480), n_dates=3)
        >>> setup = setup_job(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1)
        >>> regions = Regions(setup.geometry, (1, 2))  # 2 x 3 blocks of one 160 m tile
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
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(320, 480), n_dates=3)
        >>> setup = setup_job(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1)
        >>> setup.geometry.n_blocks
        (2, 3)
        >>> default_region_blocks(setup.geometry, 1), default_region_blocks(setup.geometry, 8)
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
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(320, 480), n_dates=3)
        >>> setup = setup_job(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1)
        >>> resolve_region_blocks(setup.geometry, 5, workers=1)  # clipped to 2 x 3 blocks
        (2, 3)
        >>> resolve_region_blocks(setup.geometry, 0, workers=1)
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
    """Smallest length that is a whole number of pixels of every sensor: region slices start on it,
    so that every sensor's slice keeps the shared grid origin.

    Args:
        cube: the input ``Cube``.

    Returns:
        The least common multiple of the sensors' pixel sizes (to the millimetre), in metres.

    Example:
        >>> from xanysat.cube.read import as_cube
        >>> from xanysat.testing import synthetic_cube
        >>> alignment_m(as_cube(synthetic_cube(("naip", "aerial"), extent_m=10)))  # 1.25 m and 0.2 m
        5.0
    """
    mm = [max(1, round(s.resolution_m * 1000)) for s in cube.sensors.values()]
    step = 1
    for m in mm:
        step = step * m // math.gcd(step, m)
    return step / 1000


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
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(320, 480), n_dates=3)
        >>> setup = setup_job(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1)
        >>> slice_pixels(setup.cube, setup.geometry, ((160.0, 320.0), (320.0, 480.0)))
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


# -- the plan -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedPlan:
    """What ``embed`` / ``embed_to_zarr`` will do and cost (see ``plan``). Sizes in bytes.

    ``print(plan)`` shows a table; ``to_dict()`` gives the figures as JSON-able types.

    Example:
        >>> import xanysat
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(320, 480), n_dates=3)
        >>> p = xanysat.plan(cube, 40, model="untrained-tiny", tile_size=160, throughput=2.0)
        >>> p.n_tiles, p.compute_hours == 6 / 2.0 / 3600, p.to_dict()["tiles"]
        (6, True, [2, 3])
        >>> str(p).splitlines()[0]
        'AnySat embedding plan'
    """

    model_id: str
    weights: str
    device: str
    dtype: str
    patch_size: int
    output: str
    tile_size_m: tuple[int, int]
    overlap_m: int
    tiles: tuple[int, int]
    n_tiles: int
    block_tiles: tuple[int, int]
    blocks: tuple[int, int]
    embed_tasks: int
    input_chunks: dict
    input_tasks: int
    total_tasks: int
    out_shape: tuple[int, int, int]
    out_chunks: tuple[int, int, int]
    cell_m: tuple[float, float]
    crs: str
    bounds: tuple[float, float, float, float]
    output_bytes: int
    read_bytes: dict
    read_bytes_total: int
    read_bytes_regions: int
    task_memory: dict
    region_blocks: tuple[int, int]
    regions: tuple[int, int]
    n_regions: int
    tasks_per_region: int
    embed_tasks_per_region: int
    workers: int
    seconds_per_tile: float
    tiles_per_second: float
    throughput_source: str
    compute_hours: float
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        """The plan as plain JSON-able types."""
        return json.loads(json.dumps(asdict(self)))

    def __str__(self) -> str:
        f, ny, nx = self.out_shape
        reads = ", ".join(f"{k} {_size(v)}" for k, v in self.read_bytes.items())
        mem = self.task_memory
        rows = [
            ("model", f"{self.model_id} [{self.weights}] on {self.device} {self.dtype}"),
            ("output", f"{self.output}: {f} features x {ny:,} x {nx:,} cells of {_num(self.cell_m[0])} m, "
                       f"float32 {_size(self.output_bytes)}, chunks {self.out_chunks[1]} x {self.out_chunks[2]}"),
            ("grid", f"{self.crs}, bounds {tuple(round(b, 3) for b in self.bounds)}"),
            ("tiles", f"{self.tiles[0]:,} x {self.tiles[1]:,} = {self.n_tiles:,} of {self.tile_size_m[0]} x "
                      f"{self.tile_size_m[1]} m, overlap {self.overlap_m} m"),
            ("blocks", f"{self.blocks[0]:,} x {self.blocks[1]:,} = {self.embed_tasks:,} embed tasks of "
                       f"{self.block_tiles[0]} x {self.block_tiles[1]} tiles"),
            ("graph", f"~{self.total_tasks:,} tasks in one whole-cube graph ({self.input_tasks:,} input chunks)"),
            ("reads", f"{_size(self.read_bytes_total)} ({reads}); {_size(self.read_bytes_regions)} region by region "
                      f"(x{self.read_bytes_regions / max(1, self.read_bytes_total):.2g}: halos, whole input chunks)"),
            ("task memory", f"~{_size(mem['total'])} (input chunks {_size(mem['input_chunks'])}, window "
                            f"{_size(mem['window'])}, output {_size(mem['output'])}, model ~{_size(mem['model'])})"),
            ("regions", f"{self.regions[0]:,} x {self.regions[1]:,} = {self.n_regions:,} of {self.region_blocks[0]} x "
                        f"{self.region_blocks[1]} blocks, ~{self.tasks_per_region:,} tasks each "
                        f"({self.workers} threads)"),
            ("compute", f"{self.tiles_per_second:.3g} tiles/s ({self.throughput_source}) -> "
                        f"{self.compute_hours:.3g} h on one device"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = ["AnySat embedding plan"] + [f"  {k:<{width}}  {v}" for k, v in rows]
        lines += [f"  ! {w}" for w in self.warnings]
        return "\n".join(lines)


def plan(data, patch_size: int = 40, output: str = "patch", *, model=None, tile_size=None, overlap: int = 0,
         block_tiles=None, region_blocks=None, throughput: float | None = None, dtype=None, device="auto",
         sensor: str | None = None, batch_size: int = 16, normalize=True, output_modality: str | None = None,
         date_origin=None, client=None) -> EmbedPlan:
    """Plan an embedding job without reading any pixel: sizes, tasks, bytes, memory and time.

    Args:
        data, patch_size, output, model, tile_size, overlap, block_tiles: as for ``xanysat.embed``.
        dtype, device, sensor, batch_size, normalize, output_modality, date_origin: as for
            ``xanysat.embed``.
        region_blocks: blocks per region side for ``embed_to_zarr`` (default: about
            ``TASKS_PER_WORKER`` embed tasks per worker thread).
        throughput: tiles per second; default: measured here by running the model on one
            synthetic tile of the plan's shape (cached per weights, tile shape, device, dtype).
        client: a ``dask.distributed`` client whose threads count as workers (default: the
            active client, else this machine's cores).

    Returns:
        An ``EmbedPlan``; ``print(plan)`` shows a table, ``plan.to_dict()`` the figures.

    Warns:
        UserWarning: the whole-cube graph would hold more than ``GRAPH_TASK_LIMIT`` tasks: use
            ``embed_to_zarr`` (region by region).

    Example:
        >>> import xanysat
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(320, 480), n_dates=3)
        >>> p = xanysat.plan(cube, 40, model="untrained-tiny", tile_size=160, throughput=10.0)
        >>> p.tiles, p.embed_tasks, p.out_shape
        ((2, 3), 1, (256, 8, 12))
        >>> p.read_bytes_total == 3 * 10 * 32 * 48 * 4
        True
    """
    setup = setup_job(data, patch_size, output, model=model, tile_size=tile_size, overlap=overlap,
                      block_tiles=block_tiles, dtype=dtype, device=device, sensor=sensor, batch_size=batch_size,
                      normalize=normalize, output_modality=output_modality, date_origin=date_origin)
    cube, g, ref = setup.cube, setup.geometry, setup.ref
    workers = worker_threads(client)
    regions = Regions(g, resolve_region_blocks(g, region_blocks, workers, cube))

    read_bytes, input_chunks, total_tasks = {}, {}, 0
    for name, s in cube.sensors.items():
        read_bytes[name] = int(np.prod(s.data.shape)) * s.data.dtype.itemsize
        input_chunks[name] = _n_chunks(s.data)
        total_tasks += _sensor_tasks(setup, name, _n_chunks(s.data), _sensor_blocks(s, g))
    total_tasks += math.prod(g.n_blocks)

    memory = task_memory(setup)
    tasks_region, reads_regions = _region_costs(setup, regions)
    if throughput is not None:
        if not throughput > 0:
            raise ValueError(f"throughput must be a positive number of tiles per second, got {throughput!r}.")
        spt, source = 1.0 / float(throughput), "given"
    else:
        spt = seconds_per_tile(setup)
        source = "measured on one tile, {} {}".format(*_placement(ref))
    n_tiles = math.prod(g.n_tiles)
    ch, cw = g.cell_m
    x0, y0 = cube.origin
    ny, nx = g.out_shape
    notes = []
    if total_tasks > GRAPH_TASK_LIMIT:
        notes.append(
            f"the whole-cube graph would hold about {total_tasks:,} tasks (more than {GRAPH_TASK_LIMIT:,}): building "
            f"and scheduling it is slow and memory-hungry. Write it region by region with xanysat.embed_to_zarr(data, "
            f"store, ...): {regions.count:,} regions of about {tasks_region:,} tasks."
        )
    if memory["total"] > 8 * 2**30:
        notes.append(f"a task needs about {_size(memory['total'])}: pass smaller block_tiles (now {g.block_tiles}).")
    for note in notes:
        warnings.warn(note, stacklevel=2)
    from pyproj import CRS

    return EmbedPlan(
        model_id=ref.model_id, weights=ref.weights, device=ref.device, dtype=ref.dtype,
        patch_size=g.patch_size, output=g.output, tile_size_m=g.tile_m, overlap_m=g.overlap,
        tiles=g.n_tiles, n_tiles=n_tiles, block_tiles=g.block_tiles, blocks=g.n_blocks,
        embed_tasks=math.prod(g.n_blocks), input_chunks=input_chunks, input_tasks=sum(input_chunks.values()),
        total_tasks=int(total_tasks), out_shape=(setup.features, ny, nx),
        out_chunks=(setup.features, g.out_chunks[0][0], g.out_chunks[1][0]), cell_m=g.cell_m,
        crs=CRS.from_wkt(cube.crs).to_string(), bounds=(x0, y0 - ny * ch, x0 + nx * cw, y0),
        output_bytes=setup.features * ny * nx * 4, read_bytes=read_bytes, read_bytes_total=sum(read_bytes.values()),
        read_bytes_regions=reads_regions, task_memory=memory, region_blocks=regions.region_blocks,
        regions=regions.shape, n_regions=regions.count, tasks_per_region=tasks_region,
        embed_tasks_per_region=math.prod(regions.region_blocks), workers=workers, seconds_per_tile=spt,
        tiles_per_second=1.0 / spt, throughput_source=source, compute_hours=n_tiles * spt / 3600,
        warnings=tuple(notes),
    )


# -- tasks and bytes ------------------------------------------------------------------------------------


def _n_chunks(data) -> int:
    """Chunks of the user's array; 0 for numpy-backed data (no input tasks)."""
    chunks = getattr(data, "chunks", None)
    return math.prod(len(c) for c in chunks) if chunks else 0


def _sensor_blocks(s, g: Geometry) -> int:
    """Chunks of a sensor's prepared array: one per block of pixels."""
    return math.prod(math.ceil(n / max(1, math.ceil(round(b / s.resolution_m, 6))))
                     for n, b in zip(s.shape_px, g.block_m))


def _sensor_tasks(setup: Setup, name: str, n_in: int, n_blocks: int, sliced: bool = False) -> int:
    """Tasks ``embed`` adds for one sensor's input: the input chunks, then per (date, y, x) chunk a
    cast, a selection per band, concatenation, transpose and normalisation, then the rechunk onto
    the block grid (splits and merges). Numpy input: one task per block chunk."""
    s = setup.cube.sensors[name]
    if n_in == 0:
        return n_blocks
    band_chunks = len(s.data.chunks[s.data.dims.index("band")])
    n_tyx = max(1, n_in // band_chunks)
    m = MODALITIES[name]
    indices, missing = s.band_indices
    derived = sum(1 for b in missing if b in m.derived_bands and all(indices[m.bands.index(x)] is not None for x in b.split("/")))
    per_chunk = (s.data.dtype != np.float32) + (s.nodata is not None)
    per_tyx = per_chunk + 4 + 2 * (setup.stats.get(name) is not None) + 4 * derived + 2 * (len(missing) - derived)
    halo = 8 * n_blocks if setup.geometry.overlap else 0
    return n_in * (2 if sliced else 1) + n_tyx * per_tyx + n_blocks + halo


def task_memory(setup: Setup) -> dict:
    """Bytes one (interior) task holds: its input chunks (float32, the block's and, with a halo,
    its neighbours'), the assembled window with halo, the output block and the model's activations.

    Args:
        setup: the job (see ``setup_job``).

    Returns:
        Bytes per part: ``input_chunks``, ``window``, ``output``, ``model`` and their ``total``.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(320, 480), n_dates=3)
        >>> setup = setup_job(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1)
        >>> mem = task_memory(setup)
        >>> mem["output"] == 256 * 4 * 4 * 4  # 256 features x 4 x 4 cells x float32
        True
        >>> mem["window"] == 3 * 10 * 16 * 16 * 4  # 3 dates x 10 bands x 16 x 16 px x float32
        True
        >>> mem["total"] == sum(v for k, v in mem.items() if k != "total")
        True
    """
    from xanysat.cube.embed import SensorPlan, chunk_range, pixel_window

    g = setup.geometry
    block = tuple(min(1, n - 1) for n in g.n_blocks)
    chunks = window = 0
    for name, s in setup.cube.sensors.items():
        m = MODALITIES[name]
        chunk_px = tuple(max(1, math.ceil(round(b / s.resolution_m, 6))) for b in g.block_m)
        sp = SensorPlan(name, s.resolution_m, s.shape_px, chunk_px, None, 0, m.n_bands)
        lead = m.n_bands * (1 if s.dates is None else len(s.dates)) * 4
        rows, cols = chunk_range(sp, g, block)
        chunks += lead * len(rows) * len(cols) * chunk_px[0] * chunk_px[1]
        (r0, r1), (c0, c1) = pixel_window(sp, g, block)
        window += lead * (r1 - r0) * (c1 - c0)
    cells = math.prod(b * c for b, c in zip(g.block_tiles, g.cells_per_tile))
    output = setup.features * cells * 4
    model = model_memory(setup)
    return {"input_chunks": int(chunks), "window": int(window), "output": int(output), "model": int(model),
            "total": int(chunks + window + output + model)}


def model_memory(setup: Setup) -> int:
    """Rough bytes of one forward of ``batch_size`` tiles (float32): per tile its input tensors,
    the sub-patch tokens (projector and patch encoder outputs) and the patch tokens through the
    combiner, plus the projectors' and patch encoder's fixed-size working chunks. Checked against
    the peak RSS of CPU forwards of the tiny model (within about 1.5x).

    Args:
        setup: the job (see ``setup_job``); ``options["batch_size"]`` defaults to 16.

    Returns:
        Bytes.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(320, 480), n_dates=3)
        >>> setup = setup_job(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1)
        >>> one = model_memory(setup)
        >>> setup.options["batch_size"] = 32
        >>> model_memory(setup) > one > 0
        True
    """
    from xanysat.nn.encoder import PatchEncoder
    from xanysat.nn.projectors import CHUNK_OBSERVATIONS

    g, d = setup.geometry, setup.embed_dim
    side = [t + 2 * g.overlap for t in g.tile_m]
    sub, patches = 0, 1
    for name in setup.cube.sensors:
        m = MODALITIES[name]
        if m.tile_token:
            patches += 1
            continue
        sub += math.prod(round(e / m.token_m) for e in side)
        patches += math.prod(round(e / g.patch_size) for e in side)
    inputs = sum(m_bands(setup, name) * math.prod(round(e / setup.cube.sensors[name].resolution_m) for e in side)
                 for name in setup.cube.sensors if not MODALITIES[name].tile_token)
    per_tile = 4 * (inputs + 2 * sub * d + patches * d * (4 + setup.mlp_ratio))
    working = 4 * (CHUNK_OBSERVATIONS * 4 * d + PatchEncoder.chunk_tokens * d * (4 + setup.mlp_ratio))
    return int(setup.options.get("batch_size", 16) * per_tile + working)


def m_bands(setup: Setup, name: str) -> int:
    """Values per pixel of a sensor's model input: bands x dates.

    Args:
        setup: the job (see ``setup_job``).
        name: one of its sensors.

    Returns:
        ``n_bands`` times the number of dates (1 for single-date sensors).

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(320, 480), n_dates=3)
        >>> setup = setup_job(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1)
        >>> m_bands(setup, "s2")  # 10 bands x 3 dates
        30
    """
    s = setup.cube.sensors[name]
    return MODALITIES[name].n_bands * (1 if s.dates is None else len(s.dates))


def _axis_cover(bounds: list[tuple[int, int]], chunks) -> list[tuple[int, int]]:
    """For each ``[p0, p1)`` pixel range: (chunks touched, pixels of those chunks); no chunks: the range."""
    if chunks is None:
        return [(1, p1 - p0) for p0, p1 in bounds]
    edges = np.concatenate([[0], np.cumsum(chunks)])
    out = []
    for p0, p1 in bounds:
        first = int(np.searchsorted(edges, p0, side="right") - 1)
        last = int(np.searchsorted(edges, p1, side="left"))
        out.append((last - first, int(edges[last] - edges[first])))
    return out


def _region_costs(setup: Setup, regions: Regions) -> tuple[int, int]:
    """(tasks of the largest region's graph, bytes read over all regions incl. halos and whole chunks)."""
    cube, g = setup.cube, setup.geometry
    ny, nx = regions.shape
    rows = [slice_pixels(cube, g, (regions.metres((i, 0))[0], (0.0, 1.0)))[1] for i in range(ny)]
    cols = [slice_pixels(cube, g, ((0.0, 1.0), regions.metres((0, j))[1]))[1] for j in range(nx)]
    reads, tasks = 0, 0
    for name, s in cube.sensors.items():
        dask_chunks = getattr(s.data, "chunks", None)
        ydim, xdim = s.data.dims.index("y"), s.data.dims.index("x")
        ys = _axis_cover([r[name][0] for r in rows if name in r], dask_chunks[ydim] if dask_chunks else None)
        xs = _axis_cover([c[name][1] for c in cols if name in c], dask_chunks[xdim] if dask_chunks else None)
        lead = math.prod(n for d, n in zip(s.data.dims, s.data.shape) if d not in ("y", "x"))
        reads += lead * s.data.dtype.itemsize * sum(p for _, p in ys) * sum(p for _, p in xs)
        if dask_chunks:
            other = math.prod(len(c) for d, c in zip(s.data.dims, dask_chunks) if d not in ("y", "x"))
            n_in = other * max(n for n, _ in ys) * max(n for n, _ in xs)
        else:
            n_in = 0
        region_px = [math.ceil((r * b + 2 * g.overlap) / s.resolution_m) + 1
                     for r, b in zip(regions.region_blocks, g.block_m)]
        blocks = math.prod(math.ceil(p / max(1, math.ceil(round(b / s.resolution_m, 6))))
                           for p, b in zip(region_px, g.block_m))
        tasks += _sensor_tasks(setup, name, n_in, blocks, sliced=True)
    writes = math.prod(regions.region_blocks)
    return int(tasks + 2 * writes + 1), int(reads)


# -- throughput ------------------------------------------------------------------------------------------


def seconds_per_tile(setup: Setup) -> float:
    """Seconds the model takes on one tile of the job's shape (with its halo), measured once per
    process for each (weights, tile input shapes, patch size, output, device, dtype).

    Args:
        setup: the job (see ``setup_job``).

    Returns:
        Seconds per tile (the median of a few runs after a warm-up when the first is fast).

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(320, 480), n_dates=3)
        >>> setup = setup_job(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1)
        >>> first = seconds_per_tile(setup)
        >>> 0 < first < 60, seconds_per_tile(setup) == first  # the second call is cached
        (True, True)
    """
    import torch

    from xanysat.cube.runtime import DTYPES, forward_lock, get_model, placement

    ref, g = setup.ref, setup.geometry
    device, dtype = placement(ref)
    rng = np.random.default_rng(0)
    shapes, batch = [], {}
    for name, s in setup.cube.sensors.items():
        m = MODALITIES[name]
        px = (1, 1) if m.tile_token else tuple(round((t + 2 * g.overlap) / s.resolution_m) for t in g.tile_m)
        lead = (m.n_bands,) if s.dates is None else (len(s.dates), m.n_bands)
        shapes.append((name, lead, px))
        x = rng.standard_normal((1, *lead, *px), dtype=np.float32)
        batch[name] = torch.from_numpy(x).to(device, DTYPES[dtype])
        if s.dates is not None:
            batch[f"{name}_dates"] = torch.tensor(np.asarray(setup.doy(name), "float32"))[None].to(device)
    key = (ref.weights, tuple(shapes), g.patch_size, g.output, setup.output_modality, device, dtype)
    if key in _SECONDS_PER_TILE:
        return _SECONDS_PER_TILE[key]
    model = get_model(ref)
    cuda = device.startswith("cuda")
    modality = setup.output_modality if g.output == "dense" else None

    def once() -> float:
        start = time.perf_counter()
        with forward_lock(device), torch.inference_mode():
            model(batch, g.patch_size, g.output, modality)
            if cuda:
                torch.cuda.synchronize(device)
        return time.perf_counter() - start

    first = once()
    if cuda or first < 0.5:  # warm-up done: time a few more runs within about a second
        runs = [once() for _ in range(max(1, min(5, int(1.0 / max(first, 1e-3)))))]
        first = float(np.median(runs))
    _SECONDS_PER_TILE[key] = first
    return first


# -- formatting --------------------------------------------------------------------------------------------


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.3g} PB"


def _num(x: float) -> str:
    return f"{x:g}"


def _placement(ref) -> tuple[str, str]:
    from xanysat.cube.runtime import placement

    return placement(ref)
