"""STAC to datacube: search a STAC API, load each sensor at its native resolution on one grid.

``search`` queries an API with pystac-client; ``load`` turns items into the ``xr.DataTree``
that ``xanysat.embed`` takes: one node per sensor, ``(time, band, y, x)`` float32 in the
units of the sensor table's statistics, bands named as the projector names them, nodata and
(optionally) clouds as NaN, all sensors on nested grids sharing one CRS and one top-left
corner. How each catalogue serves a sensor (collection, asset keys, scale/offset, processing
baseline offset, QA) comes from the sensor table (``Modality.stac``); a catalogue the table
does not know is mapped with ``custom_source``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from xanysat.errors import StacError
from xanysat.modalities import MODALITIES, StacSource, get_modality

LOADERS = ("odc", "stackstac")
SCL_CLOUDY = (0, 1, 3, 8, 9, 10)
"""Sentinel-2 SCL classes masked by ``cloud_mask``: no data, saturated, cloud shadow, cloud
medium and high probability, thin cirrus."""
QA_PIXEL_CLOUDY_BITS = (0, 1, 2, 3, 4)
"""Landsat Collection 2 QA_PIXEL bits masked by ``cloud_mask``: fill, dilated cloud, cirrus,
cloud, cloud shadow."""
COMPOSITES = {"month": "MS", "season": "QS-DEC", "year": "YS"}


@dataclass(frozen=True)
class SensorSource:
    """A collection feeding one sensor: the sensor and how the catalogue serves it.

    Attributes:
        sensor: the sensor's name in the sensor table.
        source: how the catalogue serves it (a row of ``Modality.stac`` or ``custom_source``).

    ``assets`` lists the distinct asset keys to read (derived and absent bands left out);
    ``bands`` names the projector band of each.

    Example:
        >>> s1 = SensorSource("s1", MODALITIES["s1"].stac[0])  # VV/VH is derived: no asset
        >>> s1.assets, s1.bands
        (('vv', 'vh'), ('VV', 'VH'))
        >>> SensorSource("naip", MODALITIES["naip"].stac[0]).assets  # one 4-band COG
        ('image',)
    """

    sensor: str
    source: StacSource

    @property
    def assets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a for a in self.source.assets if a is not None))

    @property
    def bands(self) -> tuple[str, ...]:
        """Projector band names of ``assets``, in the same order."""
        m = MODALITIES[self.sensor]
        first = {}
        for band, asset in zip(m.bands, self.source.assets):
            if asset is not None and asset not in first:
                first[asset] = band
        return tuple(first[a] for a in self.assets)


def custom_source(sensor: str, collection: str, assets: Sequence[str | None], *, scale: float = 1.0,
                  offset: float = 0.0, nodata: float | None = None, model_factor: float | None = 1.0,
                  qa_asset: str | None = None, processing_baseline_offset: float | None = None,
                  units: str = "model units") -> SensorSource:
    """Map a collection the sensor table does not know onto a sensor.

    Args:
        sensor: sensor name (``"s2"``...).
        collection: the STAC collection id.
        assets: asset keys in the sensor's projector band order (``None`` for a band the
            collection lacks or a derived band).
        scale, offset: physical value = DN * scale + offset.
        model_factor: physical value x ``model_factor`` = the units of the sensor table's
            statistics (Sentinel-2 reflectance: 1e4).

    Example:
        >>> src = custom_source("s1-asc", "my-s1", ["VV_lin", "VH_lin"])
        >>> src.bands
        ('VV', 'VH')
    """
    m = get_modality(sensor)
    assets = tuple(assets)
    if len(assets) != m.n_bands:
        raise StacError(f"{sensor!r} has {m.n_bands} bands {m.bands}; give one asset key (or None) per band, got {len(assets)}.")
    source = StacSource("custom", collection, assets, scale=scale, offset=offset, nodata=nodata, qa_asset=qa_asset,
                        units=units, model_factor=model_factor, processing_baseline_offset=processing_baseline_offset)
    return SensorSource(m.name, source)


def search(url: str, collections: str | Sequence[str], *, bbox=None, datetime=None, query=None, filter=None,
           filter_lang: str | None = None, max_items: int | None = None, limit: int = 100,
           modifier: Callable | None = None):
    """Search a STAC API; return a ``pystac.ItemCollection``.

    Args:
        url: STAC API root.
        collections: collection ids.
        bbox: ``(west, south, east, north)`` in degrees.
        datetime: RFC 3339 interval, e.g. ``"2021-01-01/2021-12-31"``.
        query, filter: STAC query (``{"eo:cloud_cover": {"lt": 20}}``) / CQL2 filter, a dict
            (CQL2 JSON) or a string (CQL2 text); the API must support them (an API that cannot
            evaluate them may answer with no items: the error then says so).
        filter_lang: ``"cql2-json"`` or ``"cql2-text"``; default: from the type of ``filter``.
        max_items: stop after this many items.
        modifier: pystac-client ``modifier`` (e.g. ``planetary_computer.sign_inplace``).

    Returns:
        The items found.

    Raises:
        StacError: unreachable API, unknown collection, no items found, or a ``bbox`` that is
            not in degrees.

    Example:
        >>> import tempfile
        >>> from xanysat.sample_catalog import write_sample_catalog
        >>> from xanysat.stac_server import serve
        >>> with tempfile.TemporaryDirectory() as tmp, serve(write_sample_catalog(tmp)) as url:
        ...     items = search(url, "sentinel-2-l2a", bbox=(5.32, 50.63, 5.33, 50.64),
        ...                    datetime="2021-03-01/2021-05-31")
        >>> [item.datetime.strftime("%Y-%m") for item in items]
        ['2021-03', '2021-04', '2021-05']
        >>> search(url, "sentinel-2-l2a", bbox=(664000, 5611120, 665000, 5612120))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.StacError: bbox (...) is not in degrees (...): ... e.g. with rasterio.warp.transform_bounds(...).
    """
    from pystac_client import Client

    collections = [collections] if isinstance(collections, str) else list(collections)
    if bbox is not None:
        check_lonlat_bbox(bbox, fix="STAC searches take degrees: convert projected bounds first, e.g. with "
                                    "rasterio.warp.transform_bounds(crs, 'EPSG:4326', *bounds).")
    if filter is not None and filter_lang is None:
        filter_lang = "cql2-text" if isinstance(filter, str) else "cql2-json"
    try:
        client = Client.open(url, modifier=modifier)
    except Exception as error:  # pystac-client raises APIError, ConnectionError, JSON errors...
        raise StacError(f"cannot reach the STAC API at {url}: {type(error).__name__}: {error}. "
                        "Check the URL and your network.") from error
    known = _collection_ids(client)
    unknown = [c for c in collections if known is not None and c not in known]
    if unknown:
        raise StacError(f"collection(s) {unknown} not found at {url}; it serves {sorted(known)}.")
    kwargs = {"collections": collections, "bbox": bbox, "datetime": datetime, "max_items": max_items, "limit": limit}
    if query:
        kwargs["query"] = query
    if filter:
        kwargs["filter"] = filter
        kwargs["filter_lang"] = filter_lang
    try:
        items = client.search(**kwargs).item_collection()
    except Exception as error:
        raise StacError(f"the search at {url} failed: {type(error).__name__}: {error}") from error
    if not len(items):
        unsupported = [name for name, given, conformance in (("query", query, "QUERY"), ("filter", filter, "FILTER"))
                       if given and not _conforms(client, conformance)]
        raise StacError(
            f"no items found at {url} for collections={collections}, bbox={bbox}, datetime={datetime}"
            + (f", query={query}" if query else "") + (f", filter={filter}" if filter else "")
            + ". Widen the area or the dates, or check the collection ids."
            + (f" The API does not advertise STAC API {' and '.join(unsupported)} support: it may have ignored "
               f"or failed to evaluate {' and '.join(unsupported)}; search without, then filter the items "
               "yourself (e.g. on item.properties)." if unsupported else "")
        )
    return items


def _conforms(client, name: str) -> bool:
    from pystac_client import ConformanceClasses

    try:
        return bool(client.conforms_to(getattr(ConformanceClasses, name)))
    except Exception:
        return False


def _collection_ids(client) -> set[str] | None:
    try:
        return {c.id for c in client.get_collections()}
    except Exception:  # some APIs do not list collections; then the search decides
        return None


def check_lonlat_bbox(bbox, fix: str = "Give (west, south, east, north) in degrees, or pass bbox_crs= with its "
                                        "CRS.") -> tuple[float, float, float, float]:
    """Return ``bbox`` as four floats or raise if it cannot be degrees west, south, east, north
    (``fix``: how the caller can fix projected coordinates).

    Args:
        bbox: ``(west, south, east, north)``.
        fix: appended to the error for a bbox that looks projected.

    Returns:
        ``(west, south, east, north)`` as floats.

    Raises:
        StacError: not four numbers, out of the degree ranges, or empty / inverted.

    Example:
        >>> check_lonlat_bbox(["5.3", 50.6, 5.4, 50.7])
        (5.3, 50.6, 5.4, 50.7)
        >>> check_lonlat_bbox((5.4, 50.6, 5.3, 50.7))
        Traceback (most recent call last):
            ...
        xanysat.errors.StacError: bbox (5.4, 50.6, 5.3, 50.7) is empty or inverted; expected west < east and south < north.
        >>> check_lonlat_bbox((664000, 5611120, 665000, 5612120), fix="Reproject it.")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.StacError: bbox (664000, ...) is not in degrees (...): it looks like projected coordinates. Reproject it.
    """
    try:
        west, south, east, north = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise StacError(f"bbox must be (west, south, east, north) in degrees, got {bbox!r}.") from None
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= 90 and -90 <= north <= 90):
        raise StacError(
            f"bbox {bbox!r} is not in degrees (longitude/latitude, EPSG:4326): it looks like projected "
            f"coordinates. {fix}"
        )
    if west >= east or south >= north:
        raise StacError(f"bbox {bbox!r} is empty or inverted; expected west < east and south < north.")
    return west, south, east, north


def sensor_sources(items, sensors=None) -> dict[str, tuple[SensorSource, list]]:
    """Assign items to sensors: sensor -> (its source, its items).

    ``sensors`` maps a sensor to a collection id, a ``SensorSource`` (e.g. from
    ``custom_source``) or a ``StacSource``; by default every collection is matched against the
    sensor table by collection id and asset keys (and item properties such as
    ``sat:orbit_state``).

    Sentinel-1 by default: a collection whose items all say ``sat:orbit_state: ascending``
    feeds ``"s1-asc"`` (VV, VH, in TreeSatAI's linear units); any other (descending, mixed, or
    orbit not recorded, as in PC items trimmed of it and the sample catalogue) feeds ``"s1"``
    (VV, VH and the derived VV/VH ratio; its training units are unconfirmed, so ``load`` warns
    and ``embed`` needs statistics, e.g. from ``xanysat.fit_normalization``). Nothing is claimed
    ascending that does not say so: pass ``sensors={"s1-asc": "sentinel-1-rtc"}`` when you know
    it is. An explicit mapping is refused where items contradict it (descending items for
    ``"s1-asc"``).

    Args:
        items: pystac Items.
        sensors: sensor -> collection id, ``SensorSource`` or ``StacSource``; None: match
            every collection against the sensor table.

    Returns:
        sensor -> ``(SensorSource, items)``; the source lists only the assets the items
        carry (``None`` for the others).

    Raises:
        StacError: a collection matching no sensor (or two collections one sensor), no items
            of a mapped collection, or items contradicting the mapping.

    Example:
        >>> import datetime, pystac
        >>> def s1_item(i, orbit):
        ...     item = pystac.Item(f"s1-{i}", None, None, datetime.datetime(2021, 5, i + 1),
        ...                        {"sat:orbit_state": orbit}, collection="sentinel-1-rtc")
        ...     for key in ("vv", "vh"):
        ...         item.add_asset(key, pystac.Asset(f"{key}.tif"))
        ...     return item
        >>> ascending = [s1_item(0, "ascending"), s1_item(1, "ascending")]
        >>> {name: (src.source.collection, src.bands, len(group))
        ...  for name, (src, group) in sensor_sources(ascending).items()}
        {'s1-asc': ('sentinel-1-rtc', ('VV', 'VH'), 2)}
        >>> mixed = ascending + [s1_item(2, "descending")]
        >>> list(sensor_sources(mixed))  # not all ascending: the s1 projector
        ['s1']
        >>> sensor_sources(mixed, {"s1-asc": "sentinel-1-rtc"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.StacError: 's1-asc' needs sat:orbit_state = 'ascending', but 1 item(s) of 'sentinel-1-rtc' say otherwise (s1-2). ...
    """
    by_collection: dict[str, list] = {}
    for item in items:
        by_collection.setdefault(item.collection_id, []).append(item)
    result = {}
    if sensors:
        for sensor, spec in sensors.items():
            m = get_modality(sensor)
            if isinstance(spec, SensorSource):
                source = _present(m.name, spec.source, by_collection.get(spec.source.collection, []))
            elif isinstance(spec, StacSource):
                source = _present(m.name, spec, by_collection.get(spec.collection, []))
            else:
                source = _table_source(m.name, str(spec), by_collection.get(str(spec), []), strict=False)
            chosen = by_collection.get(source.source.collection)
            if not chosen:
                raise StacError(
                    f"no items of collection {source.source.collection!r} (mapped to {sensor!r}); the items "
                    f"are from {sorted(by_collection)}."
                )
            _check_properties(m.name, source.source, chosen)
            result[m.name] = (source, chosen)
        return result
    for collection, group in by_collection.items():
        candidates = [
            (name, s) for name, m in MODALITIES.items() for s in m.stac
            if s.collection == collection and s.analysis_ready and _serves(s, group, strict=True)
        ]
        if not candidates:
            raise StacError(
                f"collection {collection!r} does not match any sensor in the sensor table (by id, asset keys "
                "and properties). Map it yourself: load(items, sensors={'<sensor>': "
                "xanysat.stac.custom_source('<sensor>', '" + collection + "', [asset keys in band order]...)})."
            )
        name, source = max(candidates, key=lambda c: (_matched(c[1], group), c[1].model_factor is not None,
                                                      len(c[1].query)))
        if name in result:
            raise StacError(f"collections {result[name][0].source.collection!r} and {collection!r} both map to "
                            f"{name!r}; pass sensors= to say which to use.")
        result[name] = (_present(name, source, group), group)
    return result


def _check_properties(sensor: str, source: StacSource, items) -> None:
    """Refuse items whose properties contradict the source's (``sat:orbit_state: descending``
    mapped to ``s1-asc``); items that do not carry the property are accepted."""
    for key, value in source.query:
        wrong = [i.id for i in items if i.properties.get(key) is not None and str(i.properties[key]) != value]
        if wrong:
            listing = ", ".join(wrong[:3]) + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else "")
            others = [n for n, m in MODALITIES.items() if n != sensor
                      and any(s.collection == source.collection and key not in dict(s.query) for s in m.stac)]
            raise StacError(
                f"{sensor!r} needs {key} = {value!r}, but {len(wrong)} item(s) of {source.collection!r} say otherwise "
                f"({listing}). Search with query={{'{key}': {{'eq': '{value}'}}}} (or drop them)"
                + (f", or map the collection to {' or '.join(map(repr, others))}." if others else ".")
            )


def _matched(source: StacSource, items) -> int:
    """How many of the source's asset keys the items carry."""
    keys = set(items[0].assets)
    return sum(1 for a in dict.fromkeys(source.assets) if a is not None and a in keys)


def _serves(source: StacSource, items, strict: bool) -> bool:
    wanted = {a for a in source.assets if a is not None}
    if 2 * _matched(source, items) < len(wanted):
        return False
    if strict:
        return all(str(i.properties.get(k)) == v for i in items for k, v in source.query)
    return True


def _present(sensor: str, source: StacSource, items) -> SensorSource:
    """The source restricted to the assets the items carry (absent bands become ``None``:
    ``embed`` masks and reports them)."""
    keys = set(items[0].assets) if items else set()
    assets = tuple(a if a in keys else None for a in source.assets)
    return SensorSource(sensor, replace(source, assets=assets))


def _table_source(sensor: str, collection: str, items, strict: bool) -> SensorSource:
    m = MODALITIES[sensor]
    options = [s for s in m.stac if s.collection == collection]
    if not options:
        raise StacError(
            f"the sensor table has no {collection!r} source for {sensor!r} (it knows "
            f"{sorted({s.collection for s in m.stac}) or 'none'}); use xanysat.stac.custom_source."
        )
    if items:
        fitting = [s for s in options if _serves(s, items, strict)]
        if not fitting:
            keys = sorted(items[0].assets)
            raise StacError(
                f"items of {collection!r} have assets {keys}, which match none of the known layouts for "
                f"{sensor!r} ({[s.assets for s in options]}); use xanysat.stac.custom_source."
            )
        options = sorted(fitting, key=lambda s: -_matched(s, items))
        return _present(sensor, options[0], items)
    return SensorSource(sensor, options[0])


@dataclass(frozen=True)
class Grid:
    """The shared grid: CRS and bounds ``(left, bottom, right, top)`` snapped to ``align_m``.

    Attributes:
        crs: the grid's CRS, e.g. ``"EPSG:32631"``.
        bounds: ``(left, bottom, right, top)`` in ``crs``, multiples of ``align_m``.
        align_m: the snapping step in metres.

    Example:
        >>> grid = Grid("EPSG:32631", (663990.0, 5611110.0, 665010.0, 5612130.0), 30.0)
        >>> width = grid.bounds[2] - grid.bounds[0]
        >>> width / 10, width / 30  # whole pixels of a 10 m (s2) and a 30 m (l7) sensor
        (102.0, 34.0)
    """

    crs: str
    bounds: tuple[float, float, float, float]
    align_m: float


def common_grid(items_by_sensor, *, bbox=None, bbox_crs="EPSG:4326", crs=None, align_m=None) -> Grid:
    """CRS (given, or the items' one) and bounds (bbox, or the items' union) snapped outward to a
    multiple of every sensor's pixel size, so that each sensor's grid starts at the same corner.

    Args:
        items_by_sensor: sensor -> ``(source, items)``, as ``sensor_sources`` gives.
        bbox: area in ``bbox_crs``; default: the union of the items' footprints.
        bbox_crs: CRS of ``bbox`` (default degrees).
        crs: the grid's CRS; default: the items' (which must agree).
        align_m: snapping step; default: the least common multiple of the sensors' pixel sizes.

    Returns:
        A ``Grid``.

    Raises:
        StacError: the items carry no CRS or several, or a degree ``bbox`` is invalid.

    Example:
        >>> import datetime, pystac
        >>> item = pystac.Item("scene", None, None, datetime.datetime(2021, 5, 1),
        ...                    {"proj:code": "EPSG:32631", "proj:bbox": [664003, 5611125, 664995, 5612118]})
        >>> common_grid({"s2": (None, [item])})
        Grid(crs='EPSG:32631', bounds=(664000.0, 5611120.0, 665000.0, 5612120.0), align_m=10.0)
        >>> common_grid({"s2": (None, [item]), "l7": (None, [item])}).bounds  # 10 m and 30 m pixels
        (663990.0, 5611110.0, 665010.0, 5612130.0)
    """
    from odc.geo.geom import BoundingBox

    all_items = [i for _, group in items_by_sensor.values() for i in group]
    if crs is None:
        codes = Counter(_item_crs(i) for i in all_items)
        codes.pop(None, None)
        if not codes:
            raise StacError("the items carry no proj:epsg / proj:code; pass crs= (e.g. 'EPSG:32631').")
        if len(codes) > 1:
            listing = ", ".join(f"{c} ({n} items)" for c, n in codes.most_common())
            raise StacError(f"the items are in several CRSs: {listing}. Pass crs= to load them onto one grid.")
        crs = next(iter(codes))
    if bbox is None:
        bbox, bbox_crs = _items_bounds(all_items, crs)
    elif str(bbox_crs).upper() in ("EPSG:4326", "WGS84", "OGC:CRS84"):
        check_lonlat_bbox(bbox)
    box = BoundingBox(*map(float, bbox), crs=bbox_crs).to_crs(crs)
    if align_m is None:
        align_m = _lcm([MODALITIES[s].resolution_m for s in items_by_sensor])
    a = float(align_m)
    bounds = (math.floor(box.left / a) * a, math.floor(box.bottom / a) * a,
              math.ceil(box.right / a) * a, math.ceil(box.top / a) * a)
    return Grid(str(crs), bounds, a)


def _items_bounds(items, crs):
    """Union of the items' footprints in ``crs``: their native ``proj:bbox`` (or the bounds
    given by the assets' ``proj:shape`` and ``proj:transform``, as Earth Search items carry),
    reprojected where an item is in another CRS; else (an item without them) the degrees bbox,
    which is larger: a UTM square's lon/lat bbox is not a square."""
    from odc.geo.geom import BoundingBox

    native = []
    for item in items:
        box = item.properties.get("proj:bbox")
        if box is None:
            for asset in item.assets.values():
                box = asset.extra_fields.get("proj:bbox")
                if box is not None:
                    break
        if box is None:
            box = _shape_transform_bounds(item)
        item_crs = _item_crs(item)
        if box is None or item_crs is None:
            native = None
            break
        if item_crs != str(crs):
            moved = BoundingBox(*map(float, box[:4]), crs=item_crs).to_crs(crs)
            box = (moved.left, moved.bottom, moved.right, moved.top)
        native.append(box[:4])
    if native:
        b = np.array(native, dtype="float64")
        return (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()), crs
    b = np.array([i.bbox for i in items], dtype="float64")
    return (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()), "EPSG:4326"


def _shape_transform_bounds(item):
    """Union of the bounds of the item's assets that carry ``proj:shape`` and a north-up
    ``proj:transform`` (item-level ones as the default), or ``None``."""
    boxes = []
    for asset in item.assets.values():
        shape = asset.extra_fields.get("proj:shape", item.properties.get("proj:shape"))
        t = asset.extra_fields.get("proj:transform", item.properties.get("proj:transform"))
        if not shape or not t or len(t) < 6 or t[1] != 0 or t[3] != 0:
            continue
        height, width = shape[:2]
        x0, y0 = t[2], t[5]
        x1, y1 = x0 + t[0] * width, y0 + t[4] * height
        boxes.append((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    if not boxes:
        return None
    b = np.array(boxes, dtype="float64")
    return b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()


def _item_crs(item) -> str | None:
    code = item.properties.get("proj:code")
    if code:
        return str(code)
    epsg = item.properties.get("proj:epsg")
    if epsg is None:
        for asset in item.assets.values():
            epsg = asset.extra_fields.get("proj:epsg")
            code = asset.extra_fields.get("proj:code")
            if epsg or code:
                break
    return f"EPSG:{epsg}" if epsg else (str(code) if code else None)


def _lcm(values) -> float:
    fractions = [Fraction(v).limit_denominator(1000) for v in values]
    result = fractions[0]
    for f in fractions[1:]:
        num = math.lcm(result.numerator * f.denominator, f.numerator * result.denominator)
        result = Fraction(num, result.denominator * f.denominator)
    return float(result)


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
        >>> from xanysat.sample_catalog import write_sample_catalog
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
    values = _to_model_units(values, src, items, m.name)
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


def _to_model_units(values: xr.DataArray, src: StacSource, items, sensor: str) -> xr.DataArray:
    """DN -> ((DN + baseline offset) * scale + offset) * model_factor, per date."""
    per_day = {}
    for item in items:
        shift = baseline_shift(item, src)
        if shift:
            per_day[np.datetime64(item.datetime.replace(tzinfo=None), "D")] = shift
    if per_day:
        days = values["time"].values.astype("datetime64[D]")
        shift = xr.DataArray(np.array([per_day.get(d, 0.0) for d in days], "float32"), dims="time")
        shifted = values + shift
        values = xr.where(shift != 0, shifted.clip(min=0), shifted, keep_attrs=True)
    if src.model_factor is None:
        warnings.warn(
            f"{sensor}: the units of the training data are unconfirmed for {src.catalog}/{src.collection}; the "
            f"cube holds {src.units} unconverted. Fit statistics with xanysat.fit_normalization.", stacklevel=4
        )
        factor, offset = float(src.scale), float(src.offset)
    else:
        # One multiply-add with the factors combined in float64: S2 DN * 1e-4 * 1e4 is exactly DN
        # (two float32 multiplications are off by up to 2e-3 for a quarter of the DN).
        factor, offset = float(src.scale) * src.model_factor, float(src.offset) * src.model_factor
    if factor != 1.0:
        values = values * np.float32(factor)
    if offset != 0.0:
        values = values + np.float32(offset)
    return values.astype("float32")


def baseline_shift(item, src: StacSource) -> float:
    """DN to add to a Sentinel-2 item's pixels to undo the BOA offset of processing baseline
    04.00 and later: the item's ``earthsearch:boa_offset_applied`` flag decides where present
    (False: the offset is still in the pixels), else the sensor table's
    ``processing_baseline_offset`` for the catalogue (PC: -1000); 0 for older baselines.

    Args:
        item: a pystac Item (only its ``properties`` are read).
        src: how its catalogue serves the sensor.

    Returns:
        The DN to add (0.0 or negative).

    Example:
        >>> from types import SimpleNamespace
        >>> pc, es = MODALITIES["s2"].stac[:2]  # Planetary Computer, Earth Search
        >>> baseline_shift(SimpleNamespace(properties={"s2:processing_baseline": "05.10"}), pc)
        -1000.0
        >>> baseline_shift(SimpleNamespace(properties={"s2:processing_baseline": "02.14"}), pc)
        0.0
        >>> applied = {"s2:processing_baseline": "05.10", "earthsearch:boa_offset_applied": True}
        >>> baseline_shift(SimpleNamespace(properties=applied), es)
        0.0
    """
    props = item.properties
    baseline = str(props.get("s2:processing_baseline") or props.get("processing:version") or "")
    if not baseline or baseline < "04.00":
        return 0.0
    flag = props.get("earthsearch:boa_offset_applied")
    if flag is not None:
        return 0.0 if flag else -1000.0
    return float(src.processing_baseline_offset or 0.0)


def cloudy(qa: xr.DataArray, qa_asset: str) -> xr.DataArray:
    """Cloud (and no-data) mask from a QA band: SCL classes or QA_PIXEL bits.

    Args:
        qa: the QA band's values.
        qa_asset: its asset key (``"SCL"``, ``"scl"``, ``"SCL_20m"``, ``"qa_pixel"``).

    Returns:
        True where cloudy or no data (see ``SCL_CLOUDY`` and ``QA_PIXEL_CLOUDY_BITS``).

    Raises:
        StacError: a QA asset with no known rule.

    Example:
        >>> scl = xr.DataArray([4, 8, 9, 5, 0])  # vegetation, cloud medium / high, bare soil, no data
        >>> cloudy(scl, "SCL").values.tolist()
        [False, True, True, False, True]
        >>> qa_pixel = xr.DataArray([21824, 22280, 1])  # Landsat clear, cloud (bit 3), fill (bit 0)
        >>> cloudy(qa_pixel, "qa_pixel").values.tolist()
        [False, True, True]
    """
    key = qa_asset.lower()
    if key.startswith("scl"):
        return qa.isin(SCL_CLOUDY)
    if key.startswith("qa_pixel"):
        bits = qa.fillna(1).astype("uint16")
        flagged = sum(((bits >> b) & 1) for b in QA_PIXEL_CLOUDY_BITS)
        return flagged > 0
    raise StacError(f"no cloud rule for QA asset {qa_asset!r}; pass cloud_mask=False or mask clouds yourself.")


def temporal_composite(da: xr.DataArray, composite: str) -> xr.DataArray:
    """Per-period NaN-median, dated at the middle of each period. Periods with no data are
    dropped from in-memory cubes; in lazy cubes they stay all-NaN (``embed`` skips such dates).

    Args:
        da: ``(time, ...)`` values.
        composite: ``"month"``, ``"season"``, ``"year"`` or a pandas frequency.

    Returns:
        The composite, one date per period.

    Raises:
        StacError: an unknown period.

    Example:
        >>> times = np.array(["2021-01-05", "2021-01-20", "2021-02-10", "2021-04-01"], "datetime64[ns]")
        >>> da = xr.DataArray([1.0, 3.0, 5.0, 7.0], dims="time", coords={"time": times})
        >>> monthly = temporal_composite(da, "month")  # March has no data: dropped
        >>> monthly.values.tolist(), monthly["time"].dt.strftime("%m-%d %H:%M").values.tolist()
        ([2.0, 5.0, 7.0], ['01-16 12:00', '02-15 00:00', '04-16 00:00'])
        >>> temporal_composite(da, "fortnight")
        Traceback (most recent call last):
            ...
        xanysat.errors.StacError: composite must be one of ['month', 'season', 'year'] or a pandas frequency, got 'fortnight'.
    """
    import pandas as pd

    freq = COMPOSITES.get(composite, composite)
    try:
        median = da.resample(time=freq).median(skipna=True)
    except (ValueError, TypeError) as error:
        raise StacError(f"composite must be one of {list(COMPOSITES)} or a pandas frequency, got {composite!r}.") from error
    starts = pd.DatetimeIndex(median["time"].values)
    ends = starts + pd.tseries.frequencies.to_offset(freq)
    middles = starts + (ends - starts) / 2
    median = median.assign_coords(time=middles.values.astype("datetime64[ns]"))
    if median.chunks is not None:
        return median  # lazy: empty periods stay, and embed leaves all-NaN dates out of each tile
    has_data = median.notnull().any([d for d in median.dims if d != "time"])
    return median.isel(time=np.flatnonzero(has_data.values))


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


def replace_source(source: SensorSource, **changes) -> SensorSource:
    """A copy of ``source`` with ``StacSource`` fields changed (e.g. ``nodata=65535``).

    Args:
        source: the source to copy.
        **changes: ``StacSource`` fields and their new values.

    Returns:
        A new ``SensorSource``; ``source`` is unchanged (both are frozen).

    Example:
        >>> pc = SensorSource("s2", MODALITIES["s2"].stac[0])
        >>> changed = replace_source(pc, nodata=65535)
        >>> changed.source.nodata, pc.source.nodata, changed.source.collection
        (65535, 0, 'sentinel-2-l2a')
    """
    return SensorSource(source.sensor, replace(source.source, **changes))
