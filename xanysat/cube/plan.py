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
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from xanysat.cube.graph_size import GRAPH_TASK_LIMIT, graph_tasks, input_chunks, sensor_tasks
from xanysat.cube.job import Setup, setup_job
from xanysat.cube.options import EmbedOptions
from xanysat.cube.regions import Regions, resolve_region_blocks, slice_pixels, worker_threads
from xanysat.sensors.table import MODALITIES

_SECONDS_PER_TILE: dict[tuple, float] = {}


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
         date_origin=None, client=None, options: EmbedOptions | None = None) -> EmbedPlan:
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
        options: the embed settings as one ``xanysat.cube.options.EmbedOptions`` instead of
            ``patch_size``, ``output`` and the embed keywords.

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
    options = options or EmbedOptions(patch_size, output, tile_size=tile_size, overlap=overlap,
                                      block_tiles=block_tiles, dtype=dtype, device=device, sensor=sensor,
                                      batch_size=batch_size, normalize=normalize, output_modality=output_modality,
                                      date_origin=date_origin)
    setup = setup_job(data, options, model=model, statistics=False)
    cube, g, ref = setup.cube, setup.geometry, setup.ref
    workers = worker_threads(client)
    regions = Regions(g, resolve_region_blocks(g, region_blocks, workers, cube))

    read_bytes = {name: int(np.prod(s.data.shape)) * s.data.dtype.itemsize for name, s in cube.sensors.items()}
    chunks = {name: input_chunks(s.data) for name, s in cube.sensors.items()}
    total_tasks = graph_tasks(setup.inputs, g, {name: setup.normalized(name) for name in cube.sensors})

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
        embed_tasks=math.prod(g.n_blocks), input_chunks=chunks, input_tasks=sum(chunks.values()),
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
        >>> setup = setup_job(cube, EmbedOptions(40, tile_size=160, block_tiles=1), model="untrained-tiny")
        >>> mem = task_memory(setup)
        >>> mem["output"] == 256 * 4 * 4 * 4  # 256 features x 4 x 4 cells x float32
        True
        >>> mem["window"] == 3 * 10 * 16 * 16 * 4  # 3 dates x 10 bands x 16 x 16 px x float32
        True
        >>> mem["total"] == sum(v for k, v in mem.items() if k != "total")
        True
    """
    from xanysat.cube.task import SensorPlan, chunk_range, pixel_window

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
        setup: the job (see ``setup_job``); ``options.batch_size`` tiles per forward.

    Returns:
        Bytes.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(320, 480), n_dates=3)
        >>> setup = setup_job(cube, EmbedOptions(40, tile_size=160, block_tiles=1), model="untrained-tiny")
        >>> one = model_memory(setup)
        >>> setup = setup_job(cube, EmbedOptions(40, tile_size=160, block_tiles=1, batch_size=32), model="untrained-tiny")
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
    return int(setup.options.batch_size * per_tile + working)


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
        >>> setup = setup_job(cube, EmbedOptions(40, tile_size=160, block_tiles=1), model="untrained-tiny")
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
        tasks += sensor_tasks(setup.inputs.sensors[name], g.overlap, n_in, blocks, setup.normalized(name),
                              sliced=True)
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
        >>> setup = setup_job(cube, EmbedOptions(40, tile_size=160, block_tiles=1), model="untrained-tiny")
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
