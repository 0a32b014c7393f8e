"""Searching a STAC API (pystac-client) with checked collections, bbox and filters."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from xanysat.errors import StacError
from xanysat.stac.network import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, check_network_options, stac_api_io


def search(url: str, collections: str | Sequence[str], *, bbox=None, datetime=None, query=None, filter=None,
           filter_lang: str | None = None, max_items: int | None = None, limit: int = 100,
           modifier: Callable | None = None, timeout: float = DEFAULT_TIMEOUT_S,
           retries: int = DEFAULT_RETRIES):
    """Search a STAC API; return a ``pystac.ItemCollection``.

    Every request (the landing page, ``/collections``, each page of ``/search``) times out
    after ``timeout`` seconds and is retried ``retries`` times on connection errors, timeouts
    and HTTP 429/500/502/503/504 (see ``xanysat.stac.network``).

    Args:
        url: STAC API root.
        collections: collection ids (at least one: an empty list would search every
            collection of the API).
        bbox: ``(west, south, east, north)`` in degrees.
        datetime: RFC 3339 interval, e.g. ``"2021-01-01/2021-12-31"``.
        query, filter: STAC query (``{"eo:cloud_cover": {"lt": 20}}``) / CQL2 filter, a dict
            (CQL2 JSON) or a string (CQL2 text); the API must support them (an API that cannot
            evaluate them may answer with no items: the error then says so).
        filter_lang: ``"cql2-json"`` or ``"cql2-text"``; default: from the type of ``filter``.
        max_items: stop after this many items.
        modifier: pystac-client ``modifier`` (e.g. ``planetary_computer.sign_inplace``).
        timeout: seconds per request (connect, and each read); default 30.
        retries: retries of a failed request; default 3.

    Returns:
        The items found.

    Raises:
        StacError: unreachable API (after the retries, naming the URL), unknown collection, no
            collection named, no items found, a ``bbox`` that is not in degrees, or a bad
            ``timeout`` / ``retries``.

    Example:
        >>> import tempfile
        >>> from xanysat.stac.sample_catalog import write_sample_catalog
        >>> from xanysat.stac.server import serve
        >>> with tempfile.TemporaryDirectory() as tmp, serve(write_sample_catalog(tmp)) as url:
        ...     items = search(url, "sentinel-2-l2a", bbox=(5.32, 50.63, 5.33, 50.64),
        ...                    datetime="2021-03-01/2021-05-31", timeout=10, retries=1)
        >>> [item.datetime.strftime("%Y-%m") for item in items]
        ['2021-03', '2021-04', '2021-05']
        >>> search(url, "sentinel-2-l2a", bbox=(664000, 5611120, 665000, 5612120))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.StacError: bbox (...) is not in degrees (...): ... e.g. with rasterio.warp.transform_bounds(...).
        >>> search(url, [])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.StacError: no collection given: ... name at least one, e.g. search(url, ['sentinel-2-l2a'], ...).
    """
    from pystac_client import Client

    collections = _collection_list(url, collections)
    timeout, retries = check_network_options(timeout, retries)
    if bbox is not None:
        check_lonlat_bbox(bbox, fix="STAC searches take degrees: convert projected bounds first, e.g. with "
                                    "rasterio.warp.transform_bounds(crs, 'EPSG:4326', *bounds).")
    if filter is not None and filter_lang is None:
        filter_lang = "cql2-text" if isinstance(filter, str) else "cql2-json"
    tries = f"after {retries} retries, {timeout:g} s per request"
    api_errors = _api_errors()
    try:
        client = Client.open(url, modifier=modifier, stac_io=stac_api_io(timeout, retries), timeout=timeout)
    except api_errors as error:
        raise StacError(f"cannot reach the STAC API at {url} ({tries}): {_describe(error)}. Check the URL and "
                        "your network; if the API is slow or overloaded, pass a larger timeout= or retries=.") from error
    known = _collection_ids(client, url, tries)
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
    except api_errors as error:
        raise StacError(f"the search at {url} failed ({tries}): {_describe(error)}. If the API is slow or "
                        "overloaded, pass a larger timeout= or retries=, or search fewer items (max_items=, "
                        "a smaller bbox or datetime).") from error
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


def _api_errors() -> tuple[type[BaseException], ...]:
    """What pystac-client raises for a failed request (``APIError`` wraps requests' errors and
    HTTP errors), bad search parameters, or an answer that is not STAC JSON."""
    import pystac
    from pystac_client.exceptions import APIError, ParametersError

    return APIError, ParametersError, pystac.STACError, pystac.STACTypeError, ValueError, OSError


def _describe(error: BaseException) -> str:
    status = getattr(error, "status_code", None)
    return f"{type(error).__name__}" + (f" (HTTP {status})" if status else "") + f": {error}"


def _collection_list(url: str, collections) -> list[str]:
    """``collections`` as a non-empty list of ids (pystac-client would search every collection
    of the API for an empty one)."""
    collections = [collections] if isinstance(collections, str) else list(collections or [])
    if not collections or not all(isinstance(c, str) and c for c in collections):
        raise StacError(f"no collection given: collections={collections!r} would search every collection of "
                        f"{url}; name at least one, e.g. search(url, ['sentinel-2-l2a'], ...).")
    return collections


def _conforms(client, name: str) -> bool:
    from pystac_client import ConformanceClasses

    return bool(client.conforms_to(getattr(ConformanceClasses, name)))


def _collection_ids(client, url: str, tries: str) -> set[str] | None:
    """The ids the API lists, or ``None`` where it answers ``/collections`` with an HTTP error or
    something that is not a list of collections (some APIs have none; the search then decides).
    No answer at all (timeouts, refused connections, after the retries) is an error."""
    import pystac
    import requests
    from pystac_client.exceptions import APIError

    try:
        return {c.id for c in client.get_collections()}
    except APIError as error:
        # pystac-client raises APIError from the requests error it caught (its __context__)
        if not isinstance(error.__context__, requests.RequestException):
            return None
        raise StacError(f"listing the collections of the STAC API at {url} failed ({tries}): {_describe(error)}. "
                        "If the API is slow or overloaded, pass a larger timeout= or retries=.") from error
    except (pystac.STACError, pystac.STACTypeError, KeyError, TypeError, ValueError):
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
