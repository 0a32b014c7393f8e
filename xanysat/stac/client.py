"""Searching a STAC API (pystac-client) with checked collections, bbox and filters."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from xanysat.errors import StacError


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
        >>> from xanysat.stac.sample_catalog import write_sample_catalog
        >>> from xanysat.stac.server import serve
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
