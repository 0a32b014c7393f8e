"""The common grid of several sensors' items: one CRS, a corner snapped to their pixel sizes."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from xanysat.errors import StacError
from xanysat.sensors.rules import pixel_lcm_m
from xanysat.sensors.table import MODALITIES
from xanysat.stac.client import check_lonlat_bbox


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
        StacError: the items carry no CRS or several, a degree ``bbox`` is invalid, or ``bbox``
            overlaps none of a sensor's items (its cube would be all NaN).

    Example:
        >>> import datetime, pystac
        >>> item = pystac.Item("scene", None, None, datetime.datetime(2021, 5, 1),
        ...                    {"proj:code": "EPSG:32631", "proj:bbox": [664003, 5611125, 664995, 5612118]})
        >>> common_grid({"s2": (None, [item])})
        Grid(crs='EPSG:32631', bounds=(664000.0, 5611120.0, 665000.0, 5612120.0), align_m=10.0)
        >>> common_grid({"s2": (None, [item]), "l7": (None, [item])}).bounds  # 10 m and 30 m pixels
        (663990.0, 5611110.0, 665010.0, 5612130.0)
        >>> item.bbox = [5.32, 50.63, 5.34, 50.64]
        >>> common_grid({"s2": (None, [item])}, bbox=(6.0, 51.0, 6.1, 51.1))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.StacError: bbox (6.0, 51.0, 6.1, 51.1) (EPSG:4326) overlaps none of the 1 's2' item(s) ...
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
    else:
        if str(bbox_crs).upper() in ("EPSG:4326", "WGS84", "OGC:CRS84"):
            check_lonlat_bbox(bbox)
        for sensor, (_, group) in items_by_sensor.items():
            check_overlap(bbox, bbox_crs, group, sensor)
    box = BoundingBox(*map(float, bbox), crs=bbox_crs).to_crs(crs)
    if align_m is None:
        align_m = pixel_lcm_m(MODALITIES[s].resolution_m for s in items_by_sensor)
    a = float(align_m)
    bounds = (math.floor(box.left / a) * a, math.floor(box.bottom / a) * a,
              math.ceil(box.right / a) * a, math.ceil(box.top / a) * a)
    return Grid(str(crs), bounds, a)


def check_overlap(bbox, bbox_crs, items, sensor: str) -> None:
    """Raise unless ``bbox`` overlaps the footprint (the degrees ``bbox``) of at least one item:
    a cube of an area no item covers would be all NaN. Items without a ``bbox`` are assumed to
    overlap.

    Args:
        bbox: ``(west, south, east, north)`` in ``bbox_crs``.
        bbox_crs: its CRS.
        items: pystac Items of one sensor.
        sensor: named in the error.

    Raises:
        StacError: naming ``bbox``, the items' extent in degrees and the fix.

    Example:
        >>> import datetime, pystac
        >>> item = pystac.Item("scene", None, [5.32, 50.63, 5.34, 50.64], datetime.datetime(2021, 5, 1), {})
        >>> check_overlap((5.33, 50.635, 5.35, 50.65), "EPSG:4326", [item], "s2")  # overlaps: no error
        >>> check_overlap((700000, 5611120, 701000, 5612120), "EPSG:32631", [item], "s2")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.StacError: bbox (700000, ...) (EPSG:32631) overlaps none of the 1 's2' item(s) (collection None): they cover (5.32, 50.63, 5.34, 50.64) in degrees; ...
    """
    from odc.geo.geom import BoundingBox

    boxes = [i.bbox for i in items]
    if not items or any(b is None for b in boxes):
        return
    ll = BoundingBox(*map(float, bbox), crs=bbox_crs).to_crs("EPSG:4326")
    west, south, east, north = ll.left, ll.bottom, ll.right, ll.top
    if any(w < east and e > west and s < north and n > south for w, s, e, n in (b[:4] for b in boxes)):
        return
    b = np.array([box[:4] for box in boxes], dtype="float64")
    extent = tuple(round(float(v), 6) for v in (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()))
    collections = sorted({str(i.collection_id) for i in items})
    raise StacError(
        f"bbox {tuple(bbox)} ({bbox_crs}) overlaps none of the {len(items)} {sensor!r} item(s) (collection "
        f"{', '.join(collections)}): they cover {extent} in degrees; the cube would be all NaN. Pass a bbox "
        "that overlaps them, or search again with this bbox (search(..., bbox=...)) for items that cover it."
    )


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
