"""``load``: STAC items to the ``xr.DataTree`` that ``xanysat.embed`` takes, with odc-stac or stackstac."""


from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from xanysat.errors import StacError
from xanysat.sensors.table import MODALITIES
from xanysat.stac.client import search
from xanysat.stac.grid import Grid, common_grid
from xanysat.stac.sources import SensorSource, sensor_sources
from xanysat.stac.units import cloudy, temporal_composite, to_model_units

LOADERS = ("odc", "stackstac")


def load(items, *, sensors=None, bbox=None, bbox_crs="EPSG:4326", crs=None, align_m=None, loader: str = "odc",
         chunks: Mapping[str, int] | None = None, cloud_mask: bool | str = "auto", composite: str | None = None,
         resampling: str = "nearest", groupby: str = "solar_day", patch_url: Callable[[str], str] | None = None,
         fail_on_error: bool = True, check_assets: bool = True, retries: int = 2) -> xr.DataTree:
    """Load STAC items into a multi-sensor ``xr.DataTree`` ready for ``xanysat.embed``.

    Args:
        items: pystac Items (e.g. from ``search``).
        sensors: sensor -> collection id / ``SensorSource`` (default: matched from the table;
            Sentinel-1 without ``sat:orbit_state: ascending`` feeds ``s1``: see ``sensor_sources``).
        bbox: area in ``bbox_crs`` (default degrees); default: the items' union.
        crs: output CRS (default: the items' CRS; required when they differ).
        align_m: grid bounds are multiples of this (default: the least common multiple of the
            sensors' pixel sizes), so sensors share their top-left corner.
        loader: ``"odc"`` (odc-stac) or ``"stackstac"``.
        chunks: dask chunks, e.g. ``{"time": 1, "y": 1024, "x": 1024}`` (pixels).
        cloud_mask: mask cloudy pixels with the collection's QA asset (SCL, QA_PIXEL): True
            (the QA asset must be there), ``"auto"`` (where the items carry it; a warning
            otherwise) or False.
        composite: ``"month"``, ``"season"``, ``"year"`` or a pandas frequency: per-period medians
            dated at the middle of the period.
        resampling: how bands at other resolutions are resampled onto the sensor's grid.
        groupby: ``"solar_day"`` merges same-day items (odc-stac semantics; UTC day for stackstac).
        patch_url: rewrites or signs each asset href before reading.
        fail_on_error: False: assets that cannot be read come out as NaN (both loaders) instead
            of failing the computation.
        check_assets: open every asset once before building the cube; failures are reported
            by item and asset after ``retries`` retries.

    Returns:
        DataTree with one node per sensor; each node a Dataset with the sensor's variable
        ``(time, band, y, x)`` and ``spatial_ref``.

    Raises:
        StacError: no items, an unknown loader, unmatched collections, items in several CRSs
            without ``crs``, a missing QA asset with ``cloud_mask=True``, or unreadable assets.

    Example:
        >>> import json, tempfile, pystac
        >>> from xanysat.stac.sample_catalog import write_sample_catalog
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     lines = (write_sample_catalog(tmp) / "items.ndjson").read_text().splitlines()
        ...     items = [pystac.Item.from_dict(json.loads(line)) for line in lines]
        ...     spring = [i for i in items
        ...               if i.collection_id == "sentinel-2-l2a" and i.datetime.month in (3, 4, 5)]
        ...     s2 = load(spring, cloud_mask=False)["s2"]["s2"].compute()
        >>> s2.dims, s2.shape, s2.attrs["stac:collection"]
        (('time', 'band', 'y', 'x'), (3, 9, 100, 100), 'sentinel-2-l2a')
        >>> "B8A" in s2.band, bool(s2.notnull().all())  # the sample catalogue has no B8A
        (False, True)
        >>> load([])
        Traceback (most recent call last):
            ...
        xanysat.errors.StacError: no items to load; run a search that returns items first.
    """
    items = list(items)
    if not items:
        raise StacError("no items to load; run a search that returns items first.")
    if loader not in LOADERS:
        raise StacError(f"loader must be one of {LOADERS}, got {loader!r}.")
    mapped = sensor_sources(items, sensors)
    grid = common_grid(mapped, bbox=bbox, bbox_crs=bbox_crs, crs=crs, align_m=align_m)
    masks = {sensor: _qa_asset(source, group, cloud_mask) for sensor, (source, group) in mapped.items()}
    if check_assets:
        verify_assets(mapped, patch_url=patch_url, retries=retries, qa_assets=masks)
    nodes = {}
    for sensor, (source, group) in mapped.items():
        da = _load_sensor(source, group, grid, loader=loader, chunks=chunks, qa=masks[sensor],
                          resampling=resampling, groupby=groupby, patch_url=patch_url, fail_on_error=fail_on_error)
        if composite:
            da = temporal_composite(da, composite)
        da.attrs.update({
            "anysat:sensor": sensor, "stac:collection": source.source.collection,
            "stac:catalog": source.source.catalog, "stac:items": [i.id for i in group],
            "units": source.source.units if source.source.model_factor is None else "sensor table units",
            "loader": loader, "cloud_mask": f"{masks[sensor]}" if masks[sensor] else "none",
            "composite": composite or "none",
        })
        nodes[sensor] = da.to_dataset(name=sensor).rio.write_crs(grid.crs)
    return xr.DataTree.from_dict(nodes)


def _qa_asset(source: SensorSource, items, cloud_mask) -> str | None:
    if cloud_mask not in (True, False, "auto"):
        raise StacError(f"cloud_mask must be True, False or 'auto', got {cloud_mask!r}.")
    qa = source.source.qa_asset
    if not cloud_mask or qa is None:
        if cloud_mask is True:
            raise StacError(f"{source.sensor}: the sensor table knows no QA asset for {source.source.collection!r}; "
                            "pass cloud_mask=False or mask clouds yourself.")
        return None
    if all(qa in i.assets for i in items):
        return qa
    if cloud_mask is True:
        raise StacError(f"{source.sensor}: cloud_mask=True but items of {source.source.collection!r} lack the "
                        f"{qa!r} asset; pass cloud_mask=False or 'auto'.")
    warnings.warn(f"{source.sensor}: items of {source.source.collection!r} have no {qa!r} asset: clouds are not "
                  "masked (composites usually are cloud-free already).", stacklevel=3)
    return None


def verify_assets(mapped, *, patch_url=None, retries: int = 2, qa_assets=None, delay: float = 0.5) -> None:
    """Open every asset the cube needs; raise one ``StacError`` listing each failure by item and asset.

    Args:
        mapped: sensor -> ``(SensorSource, items)``, as ``sensor_sources`` gives.
        patch_url: rewrites or signs each href before opening it.
        retries: retries per asset, ``delay * 2**attempt`` seconds apart.
        qa_assets: sensor -> QA asset key to check too.
        delay: seconds before the first retry.

    Raises:
        StacError: some assets cannot be read (at most 20 listed).

    Example:
        >>> import datetime, tempfile, numpy as np, pystac, rasterio
        >>> from pathlib import Path
        >>> from rasterio.transform import from_origin
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     vv = Path(tmp) / "vv.tif"
        ...     with rasterio.open(vv, "w", driver="GTiff", width=2, height=2, count=1, dtype="float32",
        ...                        crs="EPSG:32631", transform=from_origin(664000, 5612120, 10, 10)) as f:
        ...         f.write(np.ones((1, 2, 2), "float32"))
        ...     item = pystac.Item("scene", None, None, datetime.datetime(2021, 5, 1), {})
        ...     item.add_asset("vv", pystac.Asset(str(vv)))
        ...     item.add_asset("vh", pystac.Asset(str(Path(tmp) / "vh.tif")))  # not written
        ...     mapped = {"s1-asc": (SensorSource("s1-asc", MODALITIES["s1-asc"].stac[0]), [item])}
        ...     verify_assets(mapped, retries=0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.StacError: 1 asset(s) cannot be read (after 0 retries):
          item 'scene' asset 'vh' (.../vh.tif): RasterioIOError: ...
        ...
    """
    from concurrent.futures import ThreadPoolExecutor

    import rasterio

    jobs = []
    for sensor, (source, group) in mapped.items():
        qa = (qa_assets or {}).get(sensor)
        keys = list(source.assets) + ([qa] if qa else [])
        for item in group:
            for key in keys:
                asset = item.assets.get(key)
                if asset is None:
                    jobs.append((item.id, key, None, "the item has no such asset"))
                else:
                    jobs.append((item.id, key, asset.href, None))

    def open_once(job):
        item_id, key, href, problem = job
        if problem:
            return item_id, key, href, problem
        url = patch_url(href) if patch_url else href
        for attempt in range(retries + 1):
            try:
                with rasterio.open(_gdal_path(url)) as src:
                    src.read(1, window=((0, 1), (0, 1)))
                return None
            except Exception as error:  # rasterio raises RasterioIOError and friends
                if attempt == retries:
                    return item_id, key, href, f"{type(error).__name__}: {error}"
                time.sleep(delay * 2**attempt)

    with ThreadPoolExecutor(8) as pool:
        failures = [f for f in pool.map(open_once, jobs) if f]
    if failures:
        lines = "\n".join(f"  item {i!r} asset {k!r} ({h}): {p}" for i, k, h, p in failures[:20])
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        raise StacError(f"{len(failures)} asset(s) cannot be read (after {retries} retries):\n{lines}{more}\n"
                        "Fix or drop those items (or pass check_assets=False and fail_on_error=False to load the rest).")


def _gdal_path(href: str) -> str:
    return href.removeprefix("file://")


def _geobox(grid: Grid, resolution: float):
    from odc.geo.geobox import GeoBox

    return GeoBox.from_bbox(grid.bounds, grid.crs, resolution=resolution)


def _load_sensor(source: SensorSource, items, grid: Grid, *, loader, chunks, qa, resampling, groupby,
                 patch_url, fail_on_error) -> xr.DataArray:
    m = MODALITIES[source.sensor]
    src = source.source
    assets = list(source.assets)
    wanted = assets + ([qa] if qa else [])
    res = m.resolution_m
    chunks = dict(chunks or {"time": 1, "y": 1024, "x": 1024})
    patch = (lambda href: _gdal_path(patch_url(href))) if patch_url else _gdal_path
    if loader == "odc":
        import odc.stac

        ds = odc.stac.load(
            items, bands=wanted, geobox=_geobox(grid, res), chunks=chunks, groupby=groupby,
            resampling={"*": resampling, **({qa: "nearest"} if qa else {})}, patch_url=patch,
            fail_on_error=fail_on_error,
        )
        raw = ds[assets].to_dataarray(dim="band").transpose("time", "band", "y", "x")
        qa_values = ds[qa] if qa else None
    else:
        raw, qa_values = _stackstac(items, wanted, assets, qa, grid, res, chunks, resampling, patch, fail_on_error)
    raw = raw.assign_coords(band=list(source.bands))
    nodata = [_asset_nodata(items, key, src.nodata) for key in assets]
    if any(n is not None for n in nodata):
        marker = xr.DataArray(np.array([np.nan if n is None else n for n in nodata], "float64"), dims="band")
        raw = raw.where(raw != marker)
    values = raw.astype("float32")
    values = to_model_units(values, src, items, m.name)
    if qa_values is not None:
        values = values.where(~cloudy(qa_values, src.qa_asset))
    values = values.drop_vars([c for c in values.coords if c not in ("time", "band", "y", "x")])
    return values


def _asset_nodata(items, key: str, default):
    """The asset's ``raster:bands`` (or STAC 1.1 ``nodata``) value, else the sensor table's."""
    asset = items[0].assets.get(key)
    fields = asset.extra_fields if asset is not None else {}
    bands = fields.get("raster:bands") or fields.get("bands") or []
    for candidate in [fields.get("nodata"), *(b.get("nodata") for b in bands if isinstance(b, dict))]:
        if candidate is not None:
            return float(candidate)
    return default


def _stackstac(items, wanted, assets, qa, grid: Grid, res, chunks, resampling, patch, fail_on_error: bool = True):
    import stackstac
    from rasterio.enums import Resampling

    epsg = int(str(grid.crs).split(":")[-1]) if str(grid.crs).upper().startswith("EPSG:") else None
    if epsg is None:
        raise StacError(f"stackstac needs an EPSG code; the grid CRS is {grid.crs}. Use loader='odc'.")
    patched = [_patched_item(i, patch, wanted) for i in items]
    stack = stackstac.stack(
        patched, assets=wanted, epsg=epsg, resolution=res, bounds=grid.bounds, snap_bounds=False,
        xy_coords="center", rescale=False, dtype="float32", fill_value=np.float32(np.nan),
        chunksize=(chunks.get("time", 1), 1, chunks.get("y", 1024), chunks.get("x", 1024)),
        resampling=getattr(Resampling, resampling), properties=False, band_coords=False,
        # as odc-stac's fail_on_error: every read error raises, or none does (NaN instead); stackstac's
        # own default turns HTTP 404s into NaN silently
        errors_as_nodata=() if fail_on_error else (Exception(".*"),),
    )
    days = stack["time"].values.astype("datetime64[D]")
    stack = stack.assign_coords(time=days.astype("datetime64[ns]"))
    if len(np.unique(days)) < len(days):
        stack = stack.groupby("time").map(stackstac.mosaic)
    raw = stack.sel(band=assets).transpose("time", "band", "y", "x")
    qa_values = stack.sel(band=qa, drop=True) if qa else None
    return raw, qa_values


def _patched_item(item, patch, keys) -> dict:
    """An item as the dict stackstac reads: hrefs patched, ``proj:epsg`` restored (pystac turns
    it into ``proj:code``, which stackstac ignores)."""
    data = item.to_dict(transform_hrefs=False)
    for where in [data["properties"], *data["assets"].values()]:
        code = where.get("proj:code")
        if code and "proj:epsg" not in where and str(code).upper().startswith("EPSG:"):
            where["proj:epsg"] = int(str(code).split(":")[1])
    for key in keys:
        if key in data["assets"]:
            data["assets"][key]["href"] = patch(data["assets"][key]["href"])
    return data


def stac_cube(url: str, collections, *, bbox, datetime=None, query=None, filter=None, max_items=None,
              modifier=None, **load_kwargs) -> xr.DataTree:
    """``search`` then ``load``: a STAC query straight to an embeddable cube.

    Args:
        url, collections, bbox, datetime, query, filter, max_items, modifier: as for ``search``
            (``bbox`` in degrees, also the area loaded).
        **load_kwargs: as for ``load``.

    Returns:
        The DataTree ``load`` gives.

    Raises:
        StacError: as ``search`` and ``load``.

    Example:
        >>> import planetary_computer  # doctest: +SKIP
        >>> cube = stac_cube("https://planetarycomputer.microsoft.com/api/stac/v1", "sentinel-2-l2a",
        ...                  bbox=(5.32, 50.63, 5.33, 50.64), datetime="2021-04-01/2021-09-30",
        ...                  query={"eo:cloud_cover": {"lt": 20}}, composite="month",
        ...                  modifier=planetary_computer.sign_inplace)  # doctest: +SKIP
        >>> stac_cube("http://127.0.0.1:1", "sentinel-2-l2a", bbox=(5.33, 50.63, 5.32, 50.64))
        Traceback (most recent call last):
            ...
        xanysat.errors.StacError: bbox (5.33, 50.63, 5.32, 50.64) is empty or inverted; expected west < east and south < north.
    """
    items = search(url, collections, bbox=bbox, datetime=datetime, query=query, filter=filter,
                   max_items=max_items, modifier=modifier)
    return load(items, bbox=bbox, **load_kwargs)
