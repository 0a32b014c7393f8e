"""``embed``: a multi-sensor cube in, a lazy georeferenced embedding cube out.

One dask task per output block. A task receives, for every sensor, the input chunks under
its block and halo (the input is first rechunked onto the block grid, so the result never
depends on the input's chunks), cuts them into tiles, runs the model on batches of tiles
(loaded once per worker process from a ``ModelRef``), crops the halos and masks cells with
no valid input back to NaN.

Missing data policy: NaN and nodata pixels, and bands the input lacks, are masked (the
projectors use their missing-value parameter); dates, and sensors, with no valid value in a
tile's window are left out of that tile's forward; output cells with no valid input pixel
in any sensor are NaN. Nothing is filled with zeros.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import xarray as xr

from xanysat.cube import blocks
from xanysat.cube.graph_size import GRAPH_TASK_LIMIT, check_graph_size
from xanysat.cube.grid import as_geobox, grid_coords, output_geobox, window_for
from xanysat.cube.options import EmbedOptions, describe
from xanysat.cube.options import attrs as provenance_attrs
from xanysat.cube.prepare import Inputs, prepare
from xanysat.cube.read import Cube, SensorCube
from xanysat.cube.runtime import ModelRef, client_model, model_ref
from xanysat.cube.task import EmbedJob, SensorPlan, chunk_range, pixel_window
from xanysat.cube.tiling import Geometry, make_geometry
from xanysat.sensors.table import MODALITIES

EMBEDDING = "embedding"
FEATURE = "feature"


def embed(data, patch_size: int = 40, output: str = "patch", *, model=None, tile_size=None, overlap: int = 0,
          batch_size: int = 16, device="auto", dtype=None, normalize=True, output_modality: str | None = None,
          block_tiles=None, sensor: str | None = None, date_origin=None, window=None, like=None,
          max_tasks: int | None = GRAPH_TASK_LIMIT) -> xr.DataArray:
    """Embed a multi-sensor cube with AnySat, lazily.

    Args:
        data: ``xr.DataTree`` with one node per sensor at its native resolution, or a
            ``Dataset``/``DataArray`` (see ``xanysat.cube.read``); one CRS, one grid origin.
            Values in the units of the sensor table's statistics (S2 L2A: reflectance x 1e4).
        patch_size: patch side in metres, a multiple of 10 (``patch_size_meters`` in rslearn).
        output: ``"patch"`` (one vector per patch), ``"tile"`` (one per tile, on a coarse
            grid) or ``"dense"`` (one per sub-patch of ``output_modality``: ``[patch, sub-patch]``).
        model: an ``AnySat``, a ``load_model`` name or directory, or None (``load_model()``).
        tile_size: the model's context in metres (default: the tile size the model was trained
            on where it records one, as the shipped default does, else up to 32 x 32 patches).
        overlap: halo in metres around each tile, cropped after the forward (removes seams).
        batch_size: tiles per forward.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:0"``...
        dtype: ``"float32"`` (CPU default), ``"bfloat16"`` (CUDA default) or ``"float16"``.
        normalize: True (sensor table statistics), False (already normalised), or a mapping
            sensor -> ``NormStats`` / ``(mean, std)`` / bool, e.g. from ``fit_normalization``.
        block_tiles: tiles per output chunk side (default: by memory, at most 8).
        sensor: the sensor of a single-sensor input that does not name it.
        date_origin: None for day-of-year dates, or a date to count days from.
        window: ``((y_offset, x_offset), (height, width))`` in metres from the cube's top-left
            corner: embed only this part, the data around it serving as halo. Offsets that are
            multiples of the tile size give exactly the cells of a whole-cube run.
        like: an odc-geo ``GeoBox``, or an xarray object on a grid (e.g. another embedding):
            embed exactly its cells (same CRS and cell size, corner on the cube's grid of cells,
            inside the cube); instead of ``window``.
        max_tasks: the most tasks the whole-cube dask graph may hold (default
            ``GRAPH_TASK_LIMIT``, 200,000), checked from the geometry *before* the graph is
            built; ``None``: no limit. Larger cubes go region by region with ``embed_to_zarr``.

    Returns:
        A lazy ``DataArray`` named ``"embedding"``, dims ``("feature", "y", "x")``, float32, with
        ``x``/``y`` at cell centres, ``spatial_ref`` and provenance attrs.

    Raises:
        GraphTooLargeError: the graph would hold more than ``max_tasks`` tasks (an
            ``AnySatInputError``); the message names the fixes: ``embed_to_zarr``, ``plan``,
            cropping the input, or ``max_tasks=None``.

    Example:
        >>> import xanysat
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(120, 80), n_dates=3)
        >>> emb = xanysat.embed(cube, patch_size=40, model="untrained-tiny")
        >>> emb.sizes["y"], emb.sizes["x"], emb.dims
        (3, 2, ('feature', 'y', 'x'))
    """
    options = EmbedOptions(patch_size, output, tile_size=tile_size, overlap=overlap, window=window,
                           batch_size=batch_size, device=device, dtype=dtype, normalize=normalize,
                           output_modality=output_modality, block_tiles=block_tiles, sensor=sensor,
                           date_origin=date_origin)
    return embed_with(data, options, model=model, like=like, max_tasks=max_tasks)


def embed_with(data, options: EmbedOptions, *, model=None, ref: ModelRef | None = None, like=None,
               max_tasks: int | None = GRAPH_TASK_LIMIT) -> xr.DataArray:
    """``embed`` with its settings as an ``EmbedOptions`` (what ``embed_to_zarr``, ``predict`` and
    the CLI call).

    Args:
        data: any input ``xanysat.cube.prepare.prepare`` accepts, or prepared ``Inputs``.
        options: the settings.
        model: as for ``embed``; ignored when ``ref`` is given.
        ref: the ``ModelRef`` to run (already resolved).
        like: as for ``embed``.
        max_tasks: as for ``embed`` (``embed_to_zarr``'s regions pass None: their graphs are
            bounded by the region).

    Raises:
        GraphTooLargeError: as for ``embed``.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> emb = embed_with(synthetic_cube(("s2",), extent_m=(120, 80), n_dates=2), EmbedOptions(40),
        ...                  model="untrained-tiny")
        >>> emb.dims, emb.attrs["dates"]
        (('feature', 'y', 'x'), 'day of year (1 = 1 January)')
    """
    ref = ref or model_ref(model, device=options.device, dtype=options.dtype)
    inputs = prepare(data, sensor=options.sensor, normalize=options.normalize, date_origin=options.date_origin,
                     model_stats=client_model(ref).card.normalization)
    if like is not None:
        if options.window is not None:
            raise ValueError("give window= or like=, not both.")
        cell = job_geometry(inputs, options, ref).cell_m
        options = options.replace(window=window_for(as_geobox(like), inputs.cube, cell))
    job, arrays = plan_job(inputs, options, ref, max_tasks=max_tasks)
    return to_dataarray(inputs, job, options, _graph(job, arrays))


def job_geometry(inputs: Inputs, options: EmbedOptions, ref: ModelRef) -> Geometry:
    """Tiles, blocks and output cells of an embedding job (``make_geometry`` with the model's
    training tile size as the default, and blocks sized by their input bytes)."""
    offset, extent = _window(inputs.cube, options.window)
    sensors = [s.read for s in inputs.sensors.values()]
    return make_geometry(extent, options.patch_size, inputs.names, output=options.output,
                         tile_size=options.tile_size, overlap=options.overlap, block_tiles=options.block_tiles,
                         output_modality=options.output_modality, offset_m=offset,
                         tile_bytes=lambda tile_m: sum(_window_bytes(s, tile_m, options.overlap) for s in sensors),
                         preferred_tile_m=model_tile_m(ref))


def plan_job(inputs: Inputs, options: EmbedOptions, ref: ModelRef, *, max_tasks: int | None = None):
    """Build the ``EmbedJob`` and the prepared (normalised, block-chunked) dask arrays.

    The first half of ``embed``: geometry, model checks and input chunking; no graph is built
    and no pixel is read.

    Args:
        inputs: the prepared ``Inputs`` (``xanysat.cube.prepare.prepare``) of a gridded cube.
        options: the ``EmbedOptions``.
        ref: the ``ModelRef`` to run.
        max_tasks: check the whole-cube graph's estimated size against this before chunking
            the input (``xanysat.cube.graph_size.check_graph_size``); None: no check.

    Returns:
        ``(job, arrays)``: the ``EmbedJob``, and per sensor its normalised dask array in
        projector band order chunked by output blocks.

    Example:
        >>> from xanysat.cube.prepare import prepare
        >>> from xanysat.testing import synthetic_cube
        >>> ref = model_ref("untrained-tiny", device="cpu")
        >>> job, arrays = plan_job(prepare(synthetic_cube(("s2",), extent_m=(120, 80), n_dates=3)), EmbedOptions(40), ref)
        >>> arrays["s2"].shape, arrays["s2"].chunksize, job.features
        ((3, 10, 12, 8), (3, 10, 12, 8), 256)
    """
    if inputs.cube is None:
        raise ValueError("embed takes a gridded cube (y/x dims); for point samples use xanysat.embed_points.")
    check_model_sensors(ref, inputs.names)
    geometry = job_geometry(inputs, options, ref)
    check_graph_size(inputs, geometry, {n: s.stats is not None for n, s in inputs.sensors.items()}, max_tasks)
    output_modality = dense_sensor(inputs.names, options)
    features = _features(ref) * (2 if options.output == "dense" else 1)
    plans, arrays = [], {}
    for name, s in inputs.sensors.items():
        chunk_px = _chunk_px(s.read, geometry)
        values = s.normalized()
        chunks = {"band": -1, "y": chunk_px[0], "x": chunk_px[1]}
        if "time" in values.dims:
            chunks["time"] = -1
        arrays[name] = values.chunk(chunks).data
        doy = None if s.days is None else tuple(float(d) for d in s.days)
        n_dates = 0 if s.days is None else len(s.days)
        plans.append(SensorPlan(name, s.read.resolution_m, s.read.shape_px, chunk_px, doy, n_dates,
                                MODALITIES[name].n_bands))
    job = EmbedJob(ref, geometry, tuple(plans), options.batch_size, output_modality, features)
    return job, arrays


def dense_sensor(names, options: EmbedOptions) -> str | None:
    """The sensor whose sub-patches a ``"dense"`` output follows (``None`` for other outputs)."""
    if options.output != "dense":
        return options.output_modality
    return options.output_modality or next(n for n in names if not MODALITIES[n].tile_token)


def _window(cube: Cube, window):
    if window is None:
        return (0.0, 0.0), cube.extent_m
    try:
        (oy, ox), (h, w) = window
    except (TypeError, ValueError):
        raise ValueError(f"window must be ((y_offset, x_offset), (height, width)) in metres, got {window!r}.") from None
    if min(oy, ox) < 0 or min(h, w) <= 0 or oy + h > cube.extent_m[0] + 1e-6 or ox + w > cube.extent_m[1] + 1e-6:
        raise ValueError(f"window {window!r} is not inside the cube's {cube.extent_m[0]:g} m x {cube.extent_m[1]:g} m.")
    return (float(oy), float(ox)), (float(h), float(w))


def check_model_sensors(ref: ModelRef, sensors) -> None:
    """Raise ``ModalityError`` before any task runs when the model has no projector for a sensor.

    Example:
        >>> from xanysat.cube.runtime import model_ref
        >>> check_model_sensors(model_ref("untrained-tiny", device="cpu"), ("s2", "naip"))  # every sensor
    """
    from xanysat.errors import ModalityError
    known = tuple(client_model(ref).projectors)
    missing = [n for n in sensors if n not in known]
    if missing:
        hint = ("; select those sensors out of the cube, or use a model that has them "
                "(model='base': the released weights, every sensor; 'untrained-tiny': random weights)")
        if "s1" in missing and "s1-asc" in known:
            hint += ("; ascending-orbit Sentinel-1 loads as 's1-asc': "
                     "xanysat.stac.load(items, sensors={'s1-asc': '<collection>'})")
        raise ModalityError(f"the model {ref.model_id!r} has no projector for {', '.join(missing)}; "
                            f"it knows {', '.join(known)}{hint}.")


def model_tile_m(ref: ModelRef) -> float | None:
    """The tile side (metres) the model was trained on, when it records one (``model.card.tile_m``).

    Example:
        >>> from xanysat.cube.runtime import model_ref
        >>> model_tile_m(model_ref("untrained-tiny", device="cpu")) is None
        True
    """
    return client_model(ref).card.tile_m


def _features(ref: ModelRef) -> int:
    return client_model(ref).config.embed_dim


def _window_bytes(s: SensorCube, tile_m, overlap) -> int:
    m = MODALITIES[s.name]
    dates = 1 if s.dates is None else len(s.dates)
    if m.tile_token:
        px = [math.ceil((t + 2 * overlap) / s.resolution_m) + 1 for t in tile_m]
    else:
        px = [round((t + 2 * overlap) / s.resolution_m) for t in tile_m]
    return dates * m.n_bands * px[0] * px[1] * 4


def _chunk_px(s: SensorCube, g: Geometry) -> tuple[int, int]:
    return tuple(max(1, math.ceil(round(b / s.resolution_m, 6))) for b in g.block_m)


def _graph(job: EmbedJob, arrays: dict):
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    g = job.geometry
    inputs = [arrays[p.name] for p in job.sensors]
    name = f"anysat-embed-{tokenize(job, *[a.name for a in inputs])}"
    layer, halo = {}, {}
    for bi in range(g.n_blocks[0]):
        for bj in range(g.n_blocks[1]):
            args = []
            for k, (plan, array) in enumerate(zip(job.sensors, inputs)):
                pieces = []
                for r, c, key, cut in _pieces(plan, g, (bi, bj), array):
                    if cut is not None:  # only the halo strip of a neighbour chunk travels to the task
                        strip = (f"{name}-halo", k, bi, bj, r, c)
                        halo[strip] = (operator.getitem, key, cut)
                        key = strip
                    pieces.append([key, r * plan.chunk_px[0] + (cut[-2].start if cut else 0),
                                   c * plan.chunk_px[1] + (cut[-1].start if cut else 0)])
                args.append(pieces)
            layer[(name, 0, bi, bj)] = (embed_block, job, bi, bj, *args)
    base = HighLevelGraph.merge(*[a.__dask_graph__() for a in inputs])
    layers, dependencies = dict(base.layers), dict(base.dependencies)
    tops = {top for a in inputs for top in a.__dask_layers__()}
    if halo:
        layers[f"{name}-halo"], dependencies[f"{name}-halo"] = MaterializedLayer(halo), set(tops)
        tops.add(f"{name}-halo")
    layers[name], dependencies[name] = MaterializedLayer(layer), tops
    graph = HighLevelGraph(layers, dependencies)
    chunks = ((job.features,), *g.out_chunks)
    return da.Array(graph, name, chunks=chunks, dtype="float32", meta=np.empty((0, 0, 0), dtype="float32"))


def _pieces(plan: SensorPlan, g: Geometry, block, array):
    """Input chunks under a block's window: ``(row, col, key, cut)``, ``cut`` the slice of a
    chunk that the window only partly covers (None: the whole chunk)."""
    (r0, r1), (c0, c1) = pixel_window(plan, g, block)
    rows, cols = chunk_range(plan, g, block)
    (cy, cx), (ny, nx) = plan.chunk_px, plan.shape_px
    lead = (0,) * (array.ndim - 2)
    for r in rows:
        y0, y1 = r * cy, min((r + 1) * cy, ny)
        for c in cols:
            x0, x1 = c * cx, min((c + 1) * cx, nx)
            ys, ye = max(r0, y0) - y0, min(r1, y1) - y0
            xs, xe = max(c0, x0) - x0, min(c1, x1) - x0
            whole = (ys, ye, xs, xe) == (0, y1 - y0, 0, x1 - x0)
            cut = None if whole else (Ellipsis, slice(ys, ye), slice(xs, xe))
            yield r, c, (array.name, *lead, r, c), cut


def embed_block(job: EmbedJob, bi: int, bj: int, *pieces) -> np.ndarray:
    """The task: embed the tiles of block ``(bi, bj)``; returns ``(features, rows, cols)``.

    Every key of ``embed``'s dask graph is a call of this function (see
    ``xanysat.cube.blocks.run_block``).

    Args:
        job: the ``EmbedJob``.
        bi, bj: row and column of the output block.
        pieces: per sensor, its ``[array, first row, first column]`` input pieces.

    Returns:
        ``(features, rows, cols)`` float32, NaN where no input pixel is valid.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> from xanysat.cube.prepare import prepare
        >>> inputs = prepare(synthetic_cube(("s2",), extent_m=(120, 80), n_dates=3))
        >>> job, arrays = plan_job(inputs, EmbedOptions(40), model_ref("untrained-tiny", device="cpu"))
        >>> out = embed_block(job, 0, 0, [[np.asarray(arrays["s2"]), 0, 0]])
        >>> out.shape, np.allclose(out, embed(inputs, 40, model="untrained-tiny").values)
        ((256, 3, 2), True)
    """
    return blocks.run_block(job, (bi, bj), pieces)


def to_dataarray(inputs: Inputs, job: EmbedJob, options: EmbedOptions, array) -> xr.DataArray:
    """The embedding as a georeferenced ``DataArray``: cells on ``output_geobox``, CRS and
    transform written, provenance attrs from ``describe``."""
    g = job.geometry
    box = output_geobox(inputs.cube, g)
    facts = describe(options, inputs, g, job.model, job.features, job.output_modality)
    out = xr.DataArray(array, dims=(FEATURE, "y", "x"), name=EMBEDDING, attrs=provenance_attrs(facts, inputs),
                       coords={FEATURE: np.arange(job.features), **grid_coords(box)})
    out = out.rio.write_crs(inputs.cube.crs).rio.write_transform(box.affine)
    # Also list spatial_ref in 'coordinates': xarray leaves grid_mapping variables out of it, so
    # a plain xr.open_zarr / open_dataset would read spatial_ref back as a data variable and the
    # embedding would lose its CRS (decode_coords="all" was needed).
    out.encoding["coordinates"] = "spatial_ref"
    return out
