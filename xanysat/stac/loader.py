"""``load``: STAC items to the ``xr.DataTree`` that ``xanysat.embed`` takes, with odc-stac or stackstac."""


from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from xanysat.errors import StacError
from xanysat.sensors.table import MODALITIES
from xanysat.stac.assets import describe_missing, gdal_path, missing_assets, verify_assets
from xanysat.stac.client import search
from xanysat.stac.grid import Grid, common_grid
from xanysat.stac.network import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, check_network_options, gdal_http_options
from xanysat.stac.sources import SensorSource, sensor_sources
from xanysat.stac.units import cloudy, temporal_composite, to_model_units

LOADERS = ("odc", "stackstac")


def load(items, *, sensors=None, bbox=None, bbox_crs="EPSG:4326", crs=None, align_m=None, loader: str = "odc",
         chunks: Mapping[str, int] | None = None, cloud_mask: bool | str = "auto", composite: str | None = None,
         resampling: str = "nearest", groupby: str = "solar_day", patch_url: Callable[[str], str] | None = None,
         fail_on_error: bool = True, check_assets: bool = True, timeout: float = DEFAULT_TIMEOUT_S,
         retries: int = DEFAULT_RETRIES) -> xr.DataTree:
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
        timeout: seconds each HTTP request of the asset checks and of the reads (when the cube
            is computed) may take; default 30.
        retries: retries of a request that timed out or answered HTTP 429/5xx; default 3.

    The bands of a sensor are those that any of its items carries: an item that lacks one
    (while others carry it) gives NaN for that band, and a warning lists which items lack
    which assets. odc-stac takes the bands from the first item it is given, so with
    ``loader="odc"`` one item must carry them all (it is passed first); otherwise the error
    names the items and the fix (``loader="stackstac"``). Either way the cube does not depend
    on the order of ``items``.

    Returns:
        DataTree with one node per sensor; each node a Dataset with the sensor's variable
        ``(time, band, y, x)`` and ``spatial_ref``.

    Raises:
        StacError: no items, an unknown loader, unmatched collections, items in several CRSs
            without ``crs``, a ``bbox`` that misses the items, a missing QA asset with
            ``cloud_mask=True``, unreadable assets (after the retries, naming item, asset and
            URL), no item with every band for ``loader="odc"``, or a bad ``timeout`` / ``retries``.

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
    timeout, retries = check_network_options(timeout, retries)
    mapped = sensor_sources(items, sensors)
    grid = common_grid(mapped, bbox=bbox, bbox_crs=bbox_crs, crs=crs, align_m=align_m)
    masks = {sensor: _qa_asset(source, group, cloud_mask) for sensor, (source, group) in mapped.items()}
    _report_missing(mapped, loader)
    if check_assets:
        verify_assets(mapped, patch_url=patch_url, retries=retries, qa_assets=masks, timeout=timeout)
    gdal_options = gdal_http_options(timeout, retries)
    nodes = {}
    for sensor, (source, group) in mapped.items():
        da = _load_sensor(source, load_order(group, source.assets), grid, loader=loader, chunks=chunks,
                          qa=masks[sensor], resampling=resampling, groupby=groupby, patch_url=patch_url,
                          fail_on_error=fail_on_error, gdal_options=gdal_options)
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


def _report_missing(mapped, loader: str) -> None:
    """Warn which items lack which of their sensor's assets (NaN there); with odc-stac, which
    takes the bands from the first item, refuse a sensor none of whose items carries them all."""
    for sensor, lacking in missing_assets(mapped).items():
        source, group = mapped[sensor]
        listing = describe_missing(sensor, source.source.collection, lacking, len(group))
        if loader == "odc" and len(lacking) == len(group):
            raise StacError(
                f"{listing}\nNo item carries all of {list(source.assets)}, and odc-stac takes the bands from the "
                "first item. Load with loader='stackstac' (an item's missing bands come out NaN), or drop the "
                "items or bands that are missing (e.g. sensors= with xanysat.stac.custom_source)."
            )
        warnings.warn(f"{listing}\nThose bands are NaN on those items' dates.", stacklevel=3)


def load_order(items, assets) -> list:
    """The items sorted by date and id, the first that carries every asset in ``assets`` moved
    first (odc-stac takes the bands from the first item; both loaders sort by date again).

    Args:
        items: pystac Items.
        assets: the asset keys the load reads.

    Returns:
        A new list: the same cube whatever the order of ``items``.

    Example:
        >>> import datetime, pystac
        >>> items = [pystac.Item(f"day-{d}", None, None, datetime.datetime(2021, 5, d), {}) for d in (3, 1, 2)]
        >>> for item in items[:2]:
        ...     item.add_asset("vv", pystac.Asset("vv.tif"))
        >>> [i.id for i in load_order(items, ["vv"])]
        ['day-1', 'day-2', 'day-3']
        >>> [i.id for i in load_order(items[::-1], ["vv", "vh"])]  # no item has both: date order
        ['day-1', 'day-2', 'day-3']
        >>> items[2].add_asset("vh", pystac.Asset("vh.tif")); items[2].add_asset("vv", pystac.Asset("vv.tif"))
        >>> [i.id for i in load_order(items, ["vv", "vh"])]
        ['day-2', 'day-1', 'day-3']
    """
    ordered = sorted(items, key=lambda i: (_when(i), i.id))
    complete = next((i for i in ordered if all(k in i.assets for k in assets)), None)
    return ordered if complete is None else [complete] + [i for i in ordered if i is not complete]


def _when(item) -> str:
    """The item's datetime (or start_datetime) as ISO text, for sorting."""
    when = item.datetime or item.common_metadata.start_datetime
    return when.isoformat() if when is not None else ""


def _geobox(grid: Grid, resolution: float):
    from odc.geo.geobox import GeoBox

    return GeoBox.from_bbox(grid.bounds, grid.crs, resolution=resolution)


def _load_sensor(source: SensorSource, items, grid: Grid, *, loader, chunks, qa, resampling, groupby,
                 patch_url, fail_on_error, gdal_options) -> xr.DataArray:
    m = MODALITIES[source.sensor]
    src = source.source
    assets = list(source.assets)
    wanted = assets + ([qa] if qa else [])
    res = m.resolution_m
    chunks = dict(chunks or {"time": 1, "y": 1024, "x": 1024})
    patch = (lambda href: gdal_path(patch_url(href))) if patch_url else gdal_path
    if loader == "odc":
        import odc.stac
        import rasterio

        from xanysat.stac.readers import NamedRioDriver

        names = {patch(i.assets[k].href): (i.id, k) for i in items for k in wanted if k in i.assets}
        # odc-stac captures the rasterio environment here and restores it in every read task
        with rasterio.Env(**gdal_options):
            ds = odc.stac.load(
                items, bands=wanted, geobox=_geobox(grid, res), chunks=chunks, groupby=groupby,
                resampling={"*": resampling, **({qa: "nearest"} if qa else {})}, patch_url=patch,
                fail_on_error=fail_on_error, driver=NamedRioDriver(names),
            )
        raw = ds[assets].to_dataarray(dim="band").transpose("time", "band", "y", "x")
        qa_values = ds[qa] if qa else None
    else:
        raw, qa_values = _stackstac(items, wanted, assets, qa, grid, res, chunks, resampling, patch, fail_on_error,
                                    gdal_options)
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
    """The asset's ``raster:bands`` (or STAC 1.1 ``nodata``) value in the first item that has it,
    else the sensor table's."""
    asset = next((i.assets[key] for i in items if key in i.assets), None)
    fields = asset.extra_fields if asset is not None else {}
    bands = fields.get("raster:bands") or fields.get("bands") or []
    for candidate in [fields.get("nodata"), *(b.get("nodata") for b in bands if isinstance(b, dict))]:
        if candidate is not None:
            return float(candidate)
    return default


def _stackstac(items, wanted, assets, qa, grid: Grid, res, chunks, resampling, patch, fail_on_error: bool,
               gdal_options: dict[str, str]):
    import stackstac
    from rasterio.enums import Resampling

    from xanysat.stac.readers import NamedStackstacReader

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
        gdal_env=stackstac.DEFAULT_GDAL_ENV.updated(always=gdal_options), reader=NamedStackstacReader,
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
              modifier=None, timeout: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES,
              **load_kwargs) -> xr.DataTree:
    """``search`` then ``load``: a STAC query straight to an embeddable cube.

    Args:
        url, collections, bbox, datetime, query, filter, max_items, modifier: as for ``search``
            (``bbox`` in degrees, also the area loaded).
        timeout, retries: for the search, the asset checks and the reads (default 30 s, 3).
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
                   max_items=max_items, modifier=modifier, timeout=timeout, retries=retries)
    return load(items, bbox=bbox, timeout=timeout, retries=retries, **load_kwargs)
