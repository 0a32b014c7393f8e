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
(model weights, patch and tile size, overlap, grid, sensors, normalisation...) and the identity
of its input (per sensor, a hash of in-memory values, or the dask token of a lazy input) are
stored as a fingerprint in the root attributes; a resumed run must have the same fingerprint,
so a store never mixes embeddings of different settings or pixels. One writer per store at a
time.

Writers only delete what they wrote: a store is created in a new or empty place, or over a
store ``embed_to_zarr`` wrote (``resume=False`` replaces that store's own arrays, attributes
and manifest, and leaves other files there alone). A directory holding anything else (other
files, another Zarr store) is refused, with or without ``resume``. The manifest group is invisible to ``xr.open_zarr`` (it reads the root
group only); once every region is written the store's metadata is consolidated.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from xanysat.cube.embed import EMBEDDING, FEATURE, embed_with
from xanysat.cube.grid import grid_coords, output_geobox
from xanysat.cube.job import Setup, setup_job
from xanysat.cube.options import EmbedOptions, strict_json
from xanysat.cube.options import attrs as provenance_attrs
from xanysat.cube.options import fingerprint as settings_fingerprint
from xanysat.cube.regions import Regions, resolve_region_blocks, slice_pixels, worker_threads
from xanysat.errors import AnySatInputError

MANIFEST = "anysat_manifest"
DONE = "done"
FINGERPRINT = "anysat_fingerprint"
REGION_BLOCKS = "anysat_region_blocks"
WRITER = "anysat_writer"
FOREIGN_FILE_WARNING = "Object at .* is not recognized as a component of a Zarr hierarchy"


def embed_to_zarr(data, store, patch_size: int = 40, output: str = "patch", *, options: EmbedOptions | None = None,
                  region_blocks=None, resume: bool = True, progress: bool = True, client=None,
                  zarr_format: int = 2, **embed_kwargs) -> xr.DataArray:
    """Embed a (possibly continental) cube into one Zarr store, region by region.

    Args:
        data, patch_size, output: as for ``xanysat.embed``.
        store: a path or a Zarr store (anything ``xarray.Dataset.to_zarr`` and ``zarr.open_group``
            take), readable by every worker.
        region_blocks: output blocks per region side (int or pair); default: about four embed
            tasks per worker thread, and at least one input chunk wide. A resumed run keeps the
            store's value.
        resume: True: skip the regions the store marks done (the store must have been written
            with the same settings from the same input); False: overwrite a store that
            ``embed_to_zarr`` wrote (its own arrays and manifest only). Either way, a place that
            holds anything else (other files, another Zarr store) is refused, never emptied.
        progress: show a progress bar over regions (tqdm).
        client: a ``dask.distributed`` client to compute on; default: the active scheduler
            (the default client if one is set, else dask's threads). No cluster is created.
        zarr_format: 2 (default: GDAL, QGIS and ``rasterio.open('ZARR:"store":/embedding')``
            read it, with its CRS) or 3 (GDAL 3.10 cannot read xarray's v3 chunks). A resumed
            run keeps the store's format.
        options: the settings as one ``xanysat.cube.options.EmbedOptions`` (then ``patch_size``,
            ``output`` and the embed keywords but ``model`` are not given).
        embed_kwargs: ``model``, ``tile_size``, ``overlap``, ``batch_size``, ``device``, ``dtype``,
            ``normalize``, ``output_modality``, ``block_tiles``, ``sensor``, ``date_origin`` as for
            ``xanysat.embed``.

    Returns:
        The embedding, lazily opened from the store: the same cells, coordinates, CRS and attrs
        as ``xanysat.embed(data, ...)``.

    Raises:
        AnySatInputError: ``store`` holds something ``embed_to_zarr`` did not write: write to a
            new path (the message suggests one).
        ValueError: ``resume=True`` into a store written with other settings or from other
            input pixels: use a new store, or ``resume=False`` to overwrite it.

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
    done = open_store(job, store, resume=resume, region_blocks=region_blocks, zarr_format=zarr_format)
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
    (``xanysat.cube.options.fingerprint`` of the job's facts and its input's identity,
    ``xanysat.cube.prepare.Inputs.identity``: changed pixels are never mixed with old ones).

    Args:
        setup: the whole-cube ``xanysat.cube.job.Setup``.

    Returns:
        A JSON-serialisable dict: weights hash, dtype, features, patch and tile size, overlap,
        blocks, grid, sensors (bands, dates, shapes, nodata), normalisation, date origin and the
        input's identity (per sensor, a hash of in-memory values or the dask token of lazy data).

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(160, 320), n_dates=2)
        >>> job = prepare(cube, 40, model="untrained-tiny", tile_size=160, block_tiles=1, region_blocks=1)
        >>> fp = fingerprint(job.setup)
        >>> fp["patch_size_m"], fp["tile_size_m"], fp["grid"]["shape"], fp["grid"]["crs"]
        (40, [160, 160], [4, 8], 'EPSG:32631')
        >>> fp["sensors"]["s2"]["dates"]
        ['2021-03-01T00:00:00', '2021-03-17T00:00:00']
        >>> fp["input"]["s2"] == fingerprint(prepare(cube.copy(deep=True), 40, model="untrained-tiny", tile_size=160,
        ...                                          block_tiles=1).setup)["input"]["s2"]  # the same pixels
        True
    """
    return settings_fingerprint(setup.facts(), setup.inputs.identity())


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
    emb = embed_with(inputs, job.setup.options.replace(window=window), ref=job.setup.ref, max_tasks=None)
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
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", FOREIGN_FILE_WARNING)  # other files are kept beside the store
        delayed = ds.to_zarr(store, region={FEATURE: slice(None), "y": ys, "x": xs}, mode="r+", consolidated=False,
                             compute=False)
    if client is not None:
        dask.compute(delayed, scheduler=client)
    else:
        dask.compute(delayed)


# -- the store: template, fingerprint and manifest ----------------------------------------------------------


def open_store(job: RegionJob, store, *, resume: bool, region_blocks=None, zarr_format: int = 2) -> np.ndarray:
    """Create the store (or check it, to resume) and return the regions already done as booleans.

    Writers only delete what they wrote: a store is created in a new or empty place, or over a
    store ``embed_to_zarr`` wrote before (its own arrays, coordinates, attributes and manifest
    are replaced; other files beside them are left alone). Anything else is refused.

    Args:
        job: the ``RegionJob``; on resume its regions become the store's.
        store: the Zarr store.
        resume: check the store's fingerprint and read its manifest (a new store is created);
            False: overwrite a store written by ``embed_to_zarr``.
        region_blocks: the caller's ``region_blocks``, checked against the store's on resume.
        zarr_format: 2 or 3, for a store created here (a resumed store keeps its format).

    Returns:
        One boolean per region (``job.regions.shape``): True where the region is done.

    Raises:
        AnySatInputError: ``store`` holds something ``embed_to_zarr`` did not write (other files,
            another Zarr store), with or without ``resume``: the message offers a new path.
        ValueError: resuming into a store written with other settings or from another input.

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
        >>> changed = prepare(cube * 2, 40, model="untrained-tiny", tile_size=160, block_tiles=1, region_blocks=1)
        >>> open_store(changed, store, resume=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: cannot resume into ...: the input is not the one the store was written from (s2: ...
    """
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format must be 2 (GDAL and QGIS read it) or 3, got {zarr_format!r}.")
    kind, existing = store_kind(store)
    if kind == "foreign":
        raise AnySatInputError(_refusal(store, existing["what"], "embed_to_zarr"))
    if kind == "new" or not resume:
        _create(job, store, zarr_format)
        return np.zeros(job.regions.shape, dtype=bool)
    _check_fingerprint(store, strict_json(json.loads(existing[FINGERPRINT])), job.fingerprint)
    kept = tuple(existing.get(REGION_BLOCKS, job.regions.region_blocks))
    if region_blocks is not None and tuple(job.regions.region_blocks) != kept:
        raise ValueError(
            f"cannot resume into {store!r} with region_blocks={job.regions.region_blocks}: it was written with "
            f"region_blocks={kept}. Pass region_blocks=None (or {kept}) to resume, or resume=False to start over."
        )
    job.regions = Regions(job.geometry, kept)
    done = _read_done(store, job.regions.shape)
    if done is None:  # interrupted while being created (the manifest comes last): nothing was written yet
        _create(job, store, zarr_format)
        return np.zeros(job.regions.shape, dtype=bool)
    return done


def store_kind(store, writer: str | None = None) -> tuple[str, dict]:
    """What ``store`` holds: ``("new", {})`` (nothing: no path, an empty directory or store, an
    empty group), ``("xanysat", attrs)`` (a store ``embed_to_zarr``, or ``writer``, wrote: its
    root attributes) or ``("foreign", {"what": description})`` (anything else: never written over).

    Args:
        store: a path or a Zarr store.
        writer: None: a store of ``embed_to_zarr`` (its fingerprint); else the ``anysat_writer``
            attribute ``write_zarr`` records.

    Returns:
        ``(kind, details)``.

    Example:
        >>> import tempfile, zarr
        >>> from pathlib import Path
        >>> store_kind(zarr.storage.MemoryStore())
        ('new', {})
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     _ = (Path(directory) / "thesis.tex").write_text("...")
        ...     store_kind(directory)[0]
        'foreign'
    """
    import zarr
    from zarr.errors import ContainsArrayError

    local = _local_path(store)
    if local is not None:
        if not local.exists():
            return "new", {}
        if not local.is_dir():
            return "foreign", {"what": "a file, not a directory"}
        if not any(local.iterdir()):
            return "new", {}
    try:
        group = zarr.open_group(store, mode="r", use_consolidated=False)
    except ContainsArrayError:
        return "foreign", {"what": "a Zarr array"}
    except FileNotFoundError:  # zarr's "no group here" errors derive from it
        if local is not None:
            return "foreign", {"what": f"other files ({_listing(local)}) and no Zarr store"}
        if not _is_empty(store):
            return "foreign", {"what": "other data and no Zarr store"}
        return "new", {}
    attrs = dict(group.attrs)
    if (FINGERPRINT in attrs) if writer is None else (attrs.get(WRITER) == writer):
        return "xanysat", attrs
    if not attrs and not list(group.keys()):
        return "new", {}
    if writer is None:
        return "foreign", {"what": f"a Zarr store not written by xanysat.embed_to_zarr (no {FINGERPRINT!r} attribute)"}
    return "foreign", {"what": f"a Zarr store not written by {writer} (its {WRITER!r} attribute is not {writer!r})"}


def write_zarr(ds: xr.Dataset, store, *, writer: str, consolidated: bool = True) -> None:
    """Write ``ds`` as a Zarr store into a new or empty place, or over a store that ``writer``
    wrote before; anything else is refused. Writers only delete what they wrote: over its own
    store, only the variables of ``ds`` are replaced and other files stay (unlike
    ``to_zarr(mode="w")``, which empties the whole directory).

    Args:
        ds: the Dataset (computed on write).
        store: a path or a Zarr store.
        writer: who writes, recorded in the root attribute ``anysat_writer``, e.g.
            ``"xanysat finetune --map"``.
        consolidated: consolidate the metadata.

    Raises:
        AnySatInputError: ``store`` holds something else; the message offers a new path.

    Example:
        >>> import shutil, tempfile
        >>> from pathlib import Path
        >>> ds = xr.Dataset({"classes": (("y", "x"), np.zeros((2, 3), "int16"))})
        >>> directory = Path(tempfile.mkdtemp())
        >>> write_zarr(ds, directory / "map.zarr", writer="the docs")
        >>> write_zarr(ds + 1, directory / "map.zarr", writer="the docs")  # its own store: replaced
        >>> int(xr.open_zarr(directory / "map.zarr")["classes"].max())
        1
        >>> _ = (directory / "thesis.tex").write_text("...")
        >>> write_zarr(ds, directory, writer="the docs")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.AnySatInputError: ... holds other files (map.zarr/, thesis.tex) and no Zarr store: xanysat ...
        >>> shutil.rmtree(directory)
    """
    kind, details = store_kind(store, writer=writer)
    if kind == "foreign":
        raise AnySatInputError(_refusal(store, details["what"], writer))
    ds = ds.assign_attrs({WRITER: writer})
    _delete_members(store, list(ds.variables))
    with warnings.catch_warnings():  # zarr format 3 calls consolidated metadata an extension
        warnings.filterwarnings("ignore", "Consolidated metadata")
        warnings.filterwarnings("ignore", FOREIGN_FILE_WARNING)  # other files are kept beside the store
        ds.to_zarr(store, mode="a", consolidated=consolidated)


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
    ds.attrs[FINGERPRINT] = json.dumps(job.fingerprint, sort_keys=True, allow_nan=False)
    ds.attrs[REGION_BLOCKS] = list(job.regions.region_blocks)
    ds.attrs[WRITER] = "xanysat.embed_to_zarr (regions marked in the anysat_manifest group)"
    return ds


def _create(job: RegionJob, store, zarr_format: int = 2) -> None:
    """Write the store's layout and an empty manifest, over the store's own members only (never a
    foreign file: no ``mode="w"``, which empties the whole directory). The manifest goes first
    and comes back last, so an interrupted creation reads as one (``open_store`` creates again)."""
    import zarr

    ds = template(job)
    _delete_members(store, [MANIFEST, *ds.variables], keep_format=zarr_format)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", FOREIGN_FILE_WARNING)  # other files are kept beside the store
        ds.to_zarr(store, mode="a", compute=False, consolidated=False, zarr_format=zarr_format)
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    manifest = group.require_group(MANIFEST)
    dims = ("region_y", "region_x")  # named, so that xr.open_datatree reads the manifest too
    named = {"dimension_names": dims} if group.metadata.zarr_format == 3 else {"attributes": {"_ARRAY_DIMENSIONS": dims}}
    manifest.create_array(DONE, shape=job.regions.shape, chunks=(1, 1), dtype="uint8", fill_value=0,
                          compressors=None, overwrite=True, **named)
    manifest.attrs.update({"region_blocks": list(job.regions.region_blocks),
                           "regions": "done[i, j] = 1 once region (i, j) is completely written"})


def _delete_members(store, names, keep_format: int | None = None) -> None:
    """Delete these arrays or groups of the store's root group, in this order (nothing else);
    with ``keep_format``, also the root group's metadata when it is of the other Zarr format."""
    import zarr
    from zarr.core.sync import sync

    try:
        group = zarr.open_group(store, mode="r+", use_consolidated=False)
    except FileNotFoundError:  # a new store
        return
    for name in names:
        if name in group:
            del group[name]
    if keep_format is not None and group.metadata.zarr_format != keep_format:
        for key in ("zarr.json",) if group.metadata.zarr_format == 3 else (".zgroup", ".zattrs", ".zmetadata"):
            sync(group.store_path.store.delete(key))


def _local_path(store) -> Path | None:
    """The directory of a local store (a path, or a ``zarr.storage.LocalStore``), else None."""
    import zarr

    if isinstance(store, zarr.storage.LocalStore):
        return Path(store.root)
    if isinstance(store, os.PathLike) or (isinstance(store, str) and "://" not in store):
        return Path(store)
    return None


def _is_empty(store) -> bool:
    """Whether a non-local store holds no key at all (a store object or an fsspec URL)."""
    import zarr
    from zarr.abc.store import Store
    from zarr.core.sync import sync

    if isinstance(store, str):
        store = zarr.storage.FsspecStore.from_url(store, read_only=True)
    if isinstance(store, Store):
        return sync(store.is_empty(""))
    return not len(store)  # a plain mapping


def _listing(directory: Path, most: int = 4) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _refusal(store, what: str, writer: str) -> str:
    """The message refusing ``store``: the rule, and a new path beside (or, in a plain directory
    of other files, inside) it that does not exist yet."""
    local = _local_path(store)
    name = "embedding" if writer == "embed_to_zarr" else "output"
    if local is not None:
        inside = local.is_dir() and what.startswith("other files")
        base = local / name if inside else local.with_name(f"{local.stem}-{name}")
        new, n = base.with_name(f"{base.name}.zarr"), 1
        while new.exists():
            n += 1
            new = base.with_name(f"{base.name}-{n}.zarr")
        fix = f"Write to a new directory instead, e.g. {str(new)!r} (or any path that does not exist yet)."
    else:
        fix = "Write to a new store (a new path or prefix) instead."
    if writer == "embed_to_zarr":
        rule = ("embed_to_zarr writes only into a new or empty place, or over a store it wrote itself, and never "
                "deletes what it did not write (resume=False overwrites only its own stores)")
    else:
        rule = (f"xanysat writes only into a new or empty place, or over a store {writer} wrote itself, and never "
                "deletes what it did not write")
    return f"{store!r} holds {what}: {rule}. {fix}"


def _check_fingerprint(store, stored: dict, current: dict) -> None:
    """Raise ``ValueError`` naming what differs between the store's fingerprint and the run's."""
    settings = _differences({k: v for k, v in stored.items() if k != "input"},
                            {k: v for k, v in current.items() if k != "input"})
    if settings:
        raise ValueError(
            f"cannot resume into {store!r}: it was written with other settings ({'; '.join(settings)}). Write to a "
            "new store, or pass resume=False to overwrite it."
        )
    before, now = stored.get("input"), current["input"]
    if before == now:
        return
    if before is None:
        what = "the store records no identity of its input (written by an older xanysat), so it cannot be checked"
    else:
        what = "the input is not the one the store was written from (" + "; ".join(
            f"{n}: {before.get(n)} in the store, {now.get(n)} now" for n in sorted(set(before) | set(now))
            if before.get(n) != now.get(n)) + ")"
    raise ValueError(
        f"cannot resume into {store!r}: {what}. Resuming would mix embeddings of different pixels. Write to a new "
        "store, or pass resume=False to overwrite it. (A lazy dask input is identified by its dask token: open the "
        "same source the same way, with the same chunks, to resume; in-memory data by its values.)"
    )


def _read_done(store, shape) -> np.ndarray | None:
    """The manifest's marks, or None when there is no manifest (creation interrupted before it)."""
    import zarr

    try:
        done = zarr.open_array(store, path=f"{MANIFEST}/{DONE}", mode="r")
    except FileNotFoundError:
        return None
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
