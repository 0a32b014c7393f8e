"""``embed_to_zarr``: embed a cube of any size into one Zarr store, region by region, resumable.

Which to use:

* ``xanysat.embed(cube, ...).to_zarr(store)``: the whole cube in one dask graph, one run,
  nothing to resume. Fine while ``xanysat.plan(cube, ...)`` reports well under
  ``GRAPH_TASK_LIMIT`` (200,000) tasks and the run is short enough to redo if it fails.
* ``xanysat.embed_to_zarr(cube, store, ...)``: any size (a continent), or any run worth
  resuming. It never builds the whole-cube graph: it fixes the whole cube's tiles and blocks
  once, writes the store's metadata once, then for each *region* (a rectangle of
  ``region_blocks`` output blocks) slices the input lazily with its halo, builds that region's
  small graph with ``embed(..., window=...)``, writes it with ``to_zarr(region=...)`` and marks
  the region done. The cells are those of a whole-cube ``embed``: regions are cut on the whole
  cube's tile grid and see the same input around them. ``plan`` reports the regions, their
  task counts and the bytes they read: a region reads the input chunks it touches whole, and
  with ``overlap`` also its neighbours' chunks, so keep input chunks smaller than a region
  (or raise ``region_blocks``) when reads are expensive.

Manifest (crash safety): the store holds a group ``anysat_manifest`` with an array ``done``
of one ``uint8`` per region, one uncompressed chunk (one small object) per region. A region
is marked (its chunk set to 1) only after all its data chunks have been written, so a crash
between the data write and the mark leaves the region unmarked and a resumed run simply
writes it again (writes of a region are idempotent); a marked region is always complete.
Regions write disjoint chunks, so nothing is read-modify-written. The settings of the run
(model weights, patch and tile size, overlap, grid, sensors, normalisation...) are stored as a
fingerprint in the root attributes; a resumed run must have the same fingerprint. One writer
per store at a time. The manifest group is invisible to ``xr.open_zarr`` (it reads the root
group only); once every region is written the store's metadata is consolidated.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import xarray as xr

from xanysat.cube.embed import EMBEDDING, FEATURE, embed_with
from xanysat.cube.grid import grid_coords, output_geobox
from xanysat.cube.job import Setup, setup_job
from xanysat.cube.options import EmbedOptions
from xanysat.cube.options import attrs as provenance_attrs
from xanysat.cube.options import fingerprint as settings_fingerprint
from xanysat.cube.regions import Regions, resolve_region_blocks, slice_pixels, worker_threads

MANIFEST = "anysat_manifest"
DONE = "done"
FINGERPRINT = "anysat_fingerprint"
REGION_BLOCKS = "anysat_region_blocks"


def embed_to_zarr(data, store, patch_size: int = 40, output: str = "patch", *, options: EmbedOptions | None = None,
                  region_blocks=None, resume: bool = True, progress: bool = True, client=None,
                  **embed_kwargs) -> xr.DataArray:
    """Embed a (possibly continental) cube into one Zarr store, region by region.

    Args:
        data, patch_size, output: as for ``xanysat.embed``.
        store: a path or a Zarr store (anything ``xarray.Dataset.to_zarr`` and ``zarr.open_group``
            take), readable by every worker.
        region_blocks: output blocks per region side (int or pair); default: about four embed
            tasks per worker thread, and at least one input chunk wide. A resumed run keeps the
            store's value.
        resume: True: skip the regions the store marks done (the store must have been written
            with the same settings); False: overwrite the store.
        progress: show a progress bar over regions (tqdm).
        client: a ``dask.distributed`` client to compute on; default: the active scheduler
            (the default client if one is set, else dask's threads). No cluster is created.
        options: the settings as one ``xanysat.cube.options.EmbedOptions`` (then ``patch_size``,
            ``output`` and the embed keywords but ``model`` are not given).
        embed_kwargs: ``model``, ``tile_size``, ``overlap``, ``batch_size``, ``device``, ``dtype``,
            ``normalize``, ``output_modality``, ``block_tiles``, ``sensor``, ``date_origin`` as for
            ``xanysat.embed``.

    Returns:
        The embedding, lazily opened from the store: the same cells, coordinates, CRS and attrs
        as ``xanysat.embed(data, ...)``.

    Raises:
        ValueError: ``resume=True`` into a store written with other settings, or not by
            ``embed_to_zarr``: use a new store, or ``resume=False`` to overwrite it.

    Example:
        >>> import xanysat, zarr
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(160, 320), n_dates=2)
        >>> store = zarr.storage.MemoryStore()  # or a path, e.g. "embedding.zarr"
        >>> emb = xanysat.embed_to_zarr(cube, store, 40, model="untrained-tiny", tile_size=160,
        ...                             block_tiles=1, region_blocks=1, progress=False)
        >>> emb.sizes["y"], emb.sizes["x"], emb.chunks[1:]
        (4, 8, ((4,), (4, 4)))
    """
    job = prepare(data, patch_size, output, options=options, region_blocks=region_blocks, client=client,
                  **embed_kwargs)
    done = open_store(job, store, resume=resume, region_blocks=region_blocks)
    todo = [r for r in job.regions if not done[r]]
    bar = _progress(progress, job.regions.count, job.regions.count - len(todo))
    try:
        for region in todo:
            write_region(job, store, region, client=client)
            mark_done(store, region)
            bar.update(1)
    except BaseException as error:
        if hasattr(error, "add_note"):
            error.add_note(f"embed_to_zarr: the regions written so far are kept in {store!r}; run again with "
                           "resume=True to finish.")
        raise
    finally:
        bar.close()
    _consolidate(store)
    return xr.open_zarr(store, decode_coords="all")[EMBEDDING]


# -- the job ----------------------------------------------------------------------------------------------


class RegionJob:
    """The whole-cube setup, its regions and the run's fingerprint (``prepare`` builds it).

    Args:
        setup: the whole-cube ``xanysat.cube.job.Setup``.
        regions: its ``xanysat.cube.regions.Regions``.
        patch_size: patch side in metres.
        output: ``"patch"``, ``"tile"`` or ``"dense"``.

    Attributes:
        fingerprint: ``fingerprint(setup)``.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(160, 320), n_dates=2)
        >>> job = prepare(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1, region_blocks=1)
        >>> type(job).__name__, job.geometry.out_shape, job.regions.shape, list(job.regions)
        ('RegionJob', (4, 8), (1, 2), [(0, 0), (0, 1)])
    """

    def __init__(self, setup: Setup, regions: Regions, patch_size, output):
        self.setup = setup
        self.regions = regions
        self.patch_size = patch_size
        self.output = output
        self.fingerprint = fingerprint(setup)

    @property
    def geometry(self):
        """The whole cube's ``xanysat.cube.tiling.Geometry``."""
        return self.setup.geometry


def prepare(data, patch_size=40, output="patch", *, options: EmbedOptions | None = None, region_blocks=None,
            client=None, model=None, **embed_kwargs) -> RegionJob:
    """Prepare the input and fix the whole cube's geometry and regions (no graph, no pixel).

    Args:
        data, patch_size, output, options, region_blocks, client, model, embed_kwargs: as for
            ``embed_to_zarr``.

    Returns:
        The ``RegionJob``.

    Raises:
        TypeError: ``window`` given (``embed_to_zarr`` writes the whole cube), or an unknown option.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(160, 320), n_dates=2)
        >>> job = prepare(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1, region_blocks=1)
        >>> job.regions.count, job.regions.cells((0, 1)), job.setup.features
        (2, (slice(0, 4, None), slice(4, 8, None)), 256)
    """
    if "window" in embed_kwargs:
        raise TypeError("embed_to_zarr writes the whole cube: crop the input instead of passing window=.")
    if options is None:
        options = EmbedOptions.from_kwargs(patch_size, output, **embed_kwargs)
    elif embed_kwargs:
        raise TypeError(f"give the settings either as options= or as keywords, not both ({sorted(embed_kwargs)}).")
    if options.window is not None:
        raise TypeError("embed_to_zarr writes the whole cube: crop the input instead of passing window=.")
    setup = setup_job(data, options, model=model)
    regions = Regions(setup.geometry, resolve_region_blocks(setup.geometry, region_blocks, worker_threads(client),
                                                            setup.cube))
    return RegionJob(setup, regions, options.patch_size, options.output)


def fingerprint(setup: Setup) -> dict:
    """What the store's values depend on; a resumed run must match it key by key
    (``xanysat.cube.options.fingerprint`` of the job's facts).

    Args:
        setup: the whole-cube ``xanysat.cube.job.Setup``.

    Returns:
        A JSON-serialisable dict: weights hash, dtype, features, patch and tile size, overlap,
        blocks, grid, sensors (bands, dates, shapes, nodata), normalisation and date origin.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(160, 320), n_dates=2)
        >>> job = prepare(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1, region_blocks=1)
        >>> fp = fingerprint(job.setup)
        >>> fp["patch_size_m"], fp["tile_size_m"], fp["grid"]["shape"], fp["grid"]["crs"]
        (40, [160, 160], [4, 8], 'EPSG:32631')
        >>> fp["sensors"]["s2"]["dates"]
        ['2021-03-01T00:00:00', '2021-03-17T00:00:00']
    """
    return settings_fingerprint(setup.facts())


# -- one region -----------------------------------------------------------------------------------------


def region_input(job: RegionJob, region):
    """The prepared input of a region, cropped lazily with its halo (clipped to the cube), and the
    ``window`` of the region inside it.

    Args:
        job: the ``RegionJob``.
        region: ``(row, column)`` of the region.

    Returns:
        ``(inputs, window)``: the cropped ``xanysat.cube.prepare.Inputs`` (statistics as resolved
        for the whole cube), and ``((y_offset, x_offset), (height, width))`` in metres, as
        ``embed(..., window=)`` takes it.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(160, 320), n_dates=2)
        >>> job = prepare(cube, 40, model="untrained-tiny", tile_size=160, overlap=40, block_tiles=1,
        ...               region_blocks=1)
        >>> inputs, window = region_input(job, (0, 1))  # the eastern half and a 40 m halo to its west
        >>> window, dict(inputs.sensors["s2"].read.data.sizes)
        (((0.0, 40.0), (160.0, 160.0)), {'time': 2, 'band': 10, 'y': 16, 'x': 20})
    """
    cube, g = job.setup.cube, job.geometry
    metres = job.regions.metres(region)
    starts, pixels = slice_pixels(cube, g, metres)
    window = (tuple(lo - start for (lo, _), start in zip(metres, starts)), tuple(hi - lo for lo, hi in metres))
    return job.setup.inputs.crop(pixels), window


def region_embedding(job: RegionJob, region) -> xr.DataArray:
    """The lazy embedding of one region: ``embed`` on the region's input slice, on the whole cube's
    tile grid (its cells are the whole-cube run's). Builds a graph of the region's size only.

    Args:
        job: the ``RegionJob``.
        region: ``(row, column)`` of the region.

    Returns:
        The region's lazy embedding, with the coordinates of its cells in the whole cube.

    Raises:
        RuntimeError: the region's cells do not match the whole cube's (a bug).

    Example:
        >>> import numpy as np, xanysat
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(160, 320), n_dates=2)
        >>> job = prepare(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1, region_blocks=1)
        >>> east = region_embedding(job, (0, 1))
        >>> whole = xanysat.embed(cube, 40, model="untrained-tiny", tile_size=160)
        >>> dict(east.sizes), np.allclose(east.values, whole.isel(x=slice(4, 8)).values)
        ({'feature': 256, 'y': 4, 'x': 4}, True)
    """
    inputs, window = region_input(job, region)
    emb = embed_with(inputs, job.setup.options.replace(window=window), ref=job.setup.ref)
    ys, xs = job.regions.cells(region)
    expected = (ys.stop - ys.start, xs.stop - xs.start)
    if (emb.sizes["y"], emb.sizes["x"]) != expected:
        raise RuntimeError(f"region {region}: embed gave {emb.sizes['y']} x {emb.sizes['x']} cells, expected "
                           f"{expected} (xanysat bug: please report).")
    return emb


def write_region(job: RegionJob, store, region, *, client=None) -> None:
    """Compute one region and write it into its cells of the store (the active scheduler, or ``client``).

    The store must have been created by ``open_store``; ``mark_done`` the region afterwards.

    Args:
        job: the ``RegionJob``.
        store: the Zarr store.
        region: ``(row, column)`` of the region.
        client: a ``dask.distributed`` client, or None.

    Raises:
        RuntimeError: the region's cells do not match the store's (a bug).

    Example:
        >>> import zarr
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(160, 320), n_dates=2)
        >>> job = prepare(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1, region_blocks=1)
        >>> store = zarr.storage.MemoryStore()
        >>> open_store(job, store, resume=False).tolist()
        [[False, False]]
        >>> write_region(job, store, (0, 1))
        >>> emb = xr.open_zarr(store, consolidated=False)[EMBEDDING]
        >>> np.isnan(emb.values).all(axis=(0, 1)).tolist()  # the western region is not written yet
        [True, True, True, True, False, False, False, False]
    """
    import dask

    emb = region_embedding(job, region)
    ys, xs = job.regions.cells(region)
    x0, y0 = job.setup.cube.origin
    ch, cw = job.geometry.cell_m
    if not (np.allclose(emb["y"].values, y0 - (np.arange(ys.start, ys.stop) + 0.5) * ch, atol=1e-3)
            and np.allclose(emb["x"].values, x0 + (np.arange(xs.start, xs.stop) + 0.5) * cw, atol=1e-3)):
        raise RuntimeError(f"region {region}: cell coordinates do not match the store's (xanysat bug: please report).")
    ds = xr.Dataset({EMBEDDING: ((FEATURE, "y", "x"), emb.data)})
    delayed = ds.to_zarr(store, region={FEATURE: slice(None), "y": ys, "x": xs}, mode="r+", consolidated=False,
                         compute=False)
    if client is not None:
        dask.compute(delayed, scheduler=client)
    else:
        dask.compute(delayed)


# -- the store: template, fingerprint and manifest ----------------------------------------------------------


def open_store(job: RegionJob, store, *, resume: bool, region_blocks=None) -> np.ndarray:
    """Create the store (or check it, to resume) and return the regions already done as booleans.

    Args:
        job: the ``RegionJob``; on resume its regions become the store's.
        store: the Zarr store.
        resume: check the store's fingerprint and read its manifest (a new store is created);
            False: overwrite the store.
        region_blocks: the caller's ``region_blocks``, checked against the store's on resume.

    Returns:
        One boolean per region (``job.regions.shape``): True where the region is done.

    Raises:
        ValueError: resuming into a store written by something else or with other settings.

    Example:
        >>> import zarr
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(160, 320), n_dates=2)
        >>> job = prepare(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1, region_blocks=1)
        >>> store = zarr.storage.MemoryStore()
        >>> open_store(job, store, resume=False).tolist()
        [[False, False]]
        >>> mark_done(store, (0, 0))
        >>> open_store(job, store, resume=True).tolist()
        [[True, False]]
        >>> other = prepare(cube, 20, model="untrained-tiny", tile_size=160, block_tiles=1, region_blocks=1)
        >>> open_store(other, store, resume=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: cannot resume into ...: it was written with other settings (...patch_size_m: 40 in the store, 20 now...
    """
    existing = _root_attrs(store) if resume else None
    if existing is None:
        _create(job, store)
        return np.zeros(job.regions.shape, dtype=bool)
    stored = existing.get(FINGERPRINT)
    if stored is None:
        raise ValueError(
            f"{store!r} exists but was not written by xanysat.embed_to_zarr (no {FINGERPRINT!r} attribute): write to "
            "a new store, or pass resume=False to overwrite it."
        )
    differences = _differences(json.loads(stored), job.fingerprint)
    if differences:
        raise ValueError(
            f"cannot resume into {store!r}: it was written with other settings ({'; '.join(differences)}). Write to a "
            "new store, or pass resume=False to overwrite it."
        )
    kept = tuple(existing.get(REGION_BLOCKS, job.regions.region_blocks))
    if region_blocks is not None and tuple(job.regions.region_blocks) != kept:
        raise ValueError(
            f"cannot resume into {store!r} with region_blocks={job.regions.region_blocks}: it was written with "
            f"region_blocks={kept}. Pass region_blocks=None (or {kept}) to resume, or resume=False to start over."
        )
    job.regions = Regions(job.geometry, kept)
    return _read_done(store, job.regions.shape)


def mark_done(store, region) -> None:
    """Mark a region written (after its data: see the module docstring).

    Args:
        store: a store created by ``open_store``.
        region: ``(row, column)`` of the region.

    Example:
        >>> import zarr
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(160, 320), n_dates=2)
        >>> job = prepare(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1, region_blocks=1)
        >>> store = zarr.storage.MemoryStore()
        >>> _ = open_store(job, store, resume=False)
        >>> mark_done(store, (0, 1))
        >>> zarr.open_array(store, path=f"{MANIFEST}/{DONE}", mode="r")[...].tolist()
        [[0, 1]]
    """
    import zarr

    zarr.open_array(store, path=f"{MANIFEST}/{DONE}", mode="r+")[region] = 1


def template(job: RegionJob) -> xr.Dataset:
    """The store's layout: the whole-cube embedding as a lazy (never computed) array chunked by
    output blocks, with coordinates, CRS and the attrs of ``embed``.

    Args:
        job: the ``RegionJob``.

    Returns:
        A Dataset with the ``embedding`` variable and the fingerprint in its attrs.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(160, 320), n_dates=2)
        >>> job = prepare(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1, region_blocks=1)
        >>> ds = template(job)
        >>> ds[EMBEDDING].shape, ds[EMBEDDING].chunks, str(ds.rio.crs)
        ((256, 4, 8), ((256,), (4,), (4, 4)), 'EPSG:32631')
        >>> json.loads(ds.attrs[FINGERPRINT]) == job.fingerprint, ds.attrs[REGION_BLOCKS]
        (True, [1, 1])
    """
    import dask.array as dsa

    g, cube = job.geometry, job.setup.cube
    box = output_geobox(cube, g)
    chunks = ((job.setup.features,), *g.out_chunks)
    data = dsa.full((job.setup.features, *g.out_shape), np.nan, dtype="float32", chunks=chunks)
    emb = xr.DataArray(
        data, dims=(FEATURE, "y", "x"), name=EMBEDDING, attrs=provenance_attrs(job.setup.facts(), job.setup.inputs),
        coords={FEATURE: np.arange(job.setup.features), **grid_coords(box)},
    )
    emb = emb.rio.write_crs(cube.crs).rio.write_transform(box.affine)
    ds = emb.to_dataset()
    ds[EMBEDDING].encoding["coordinates"] = "spatial_ref"  # so that plain xr.open_zarr keeps the CRS
    ds.attrs[FINGERPRINT] = json.dumps(job.fingerprint, sort_keys=True)
    ds.attrs[REGION_BLOCKS] = list(job.regions.region_blocks)
    ds.attrs["anysat_writer"] = "xanysat.embed_to_zarr (regions marked in the anysat_manifest group)"
    return ds


def _create(job: RegionJob, store) -> None:
    import zarr

    template(job).to_zarr(store, mode="w", compute=False, consolidated=False)
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    manifest = group.require_group(MANIFEST)
    manifest.create_array(DONE, shape=job.regions.shape, chunks=(1, 1), dtype="uint8", fill_value=0,
                          compressors=None, overwrite=True)
    manifest.attrs.update({"region_blocks": list(job.regions.region_blocks),
                           "regions": "done[i, j] = 1 once region (i, j) is completely written"})


def _root_attrs(store) -> dict | None:
    """The root group's attributes, or None when the store holds no group (a new store)."""
    import os

    import zarr

    try:
        group = zarr.open_group(store, mode="r", use_consolidated=False)
    except FileNotFoundError:  # zarr's "no group here" errors derive from it
        if isinstance(store, (str, os.PathLike)) and os.path.isdir(store) and os.listdir(store):
            raise ValueError(f"{store!r} is a non-empty directory that holds no Zarr group: write to a new store, "
                             "or pass resume=False to overwrite it.") from None
        return None
    attrs = dict(group.attrs)
    if not attrs and not list(group.array_keys()):
        return None
    return attrs


def _read_done(store, shape) -> np.ndarray:
    import zarr

    try:
        done = zarr.open_array(store, path=f"{MANIFEST}/{DONE}", mode="r")
    except FileNotFoundError:
        # crashed between the metadata and the manifest: nothing was written yet
        group = zarr.open_group(store, mode="r+", use_consolidated=False).require_group(MANIFEST)
        group.create_array(DONE, shape=shape, chunks=(1, 1), dtype="uint8", fill_value=0, compressors=None)
        return np.zeros(shape, dtype=bool)
    if tuple(done.shape) != tuple(shape):
        raise ValueError(f"the store's manifest has {done.shape} regions, expected {shape}: pass resume=False.")
    try:
        return np.asarray(done[...]) == 1
    except (ValueError, OSError):  # a mark torn by a crash: read marks one by one, unreadable = not done
        out = np.zeros(shape, dtype=bool)
        for i, j in np.ndindex(*shape):
            try:
                out[i, j] = done[i, j] == 1
            except (ValueError, OSError):
                out[i, j] = False
        return out


def _differences(stored: dict, current: dict) -> list[str]:
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True):
            continue
        if key == "grid" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"grid {k}: {a.get(k)} in the store, {b.get(k)} now" for k in sorted(set(a) | set(b))
                    if json.dumps(a.get(k)) != json.dumps(b.get(k))]
            continue
        out.append(f"{key}: {_short(a)} in the store, {_short(b)} now")
    return out


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _consolidate(store) -> None:
    """Consolidate the metadata once every region is written (fast, warning-free ``xr.open_zarr``)."""
    import zarr

    with warnings.catch_warnings():  # zarr format 3 calls consolidated metadata an extension
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(store)


def _progress(enabled: bool, total: int, initial: int):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with huggingface_hub
        enabled = False
    if not enabled:
        class _Silent:
            def update(self, n=1):
                pass

            def close(self):
                pass

        return _Silent()
    return tqdm(total=total, initial=initial, desc="anysat regions", unit="region")
