"""Which collection and assets serve each sensor: the sensor table's STAC rows, or ``custom_source``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from xanysat.errors import StacError
from xanysat.sensors.table import MODALITIES, StacSource, get_modality


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
        sensor -> ``(SensorSource, items)``; the source lists the assets that any of the items
        carries (``None`` for the others), whatever the order of the items.

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


def _asset_keys(items) -> set[str]:
    """The asset keys any of the items carries (not only the first: the result must not depend
    on the order of the items)."""
    return set().union(*(i.assets for i in items))


def _matched(source: StacSource, items) -> int:
    """How many of the source's asset keys the items carry (any of them)."""
    keys = _asset_keys(items)
    return sum(1 for a in dict.fromkeys(source.assets) if a is not None and a in keys)


def _serves(source: StacSource, items, strict: bool) -> bool:
    wanted = {a for a in source.assets if a is not None}
    if 2 * _matched(source, items) < len(wanted):
        return False
    if strict:
        return all(str(i.properties.get(k)) == v for i in items for k, v in source.query)
    return True


def _present(sensor: str, source: StacSource, items) -> SensorSource:
    """The source restricted to the assets any of the items carries (absent bands become
    ``None``: ``embed`` masks and reports them; ``load`` warns about items lacking a kept one)."""
    keys = _asset_keys(items)
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
            keys = sorted(_asset_keys(items))
            raise StacError(
                f"items of {collection!r} have assets {keys}, which match none of the known layouts for "
                f"{sensor!r} ({[s.assets for s in options]}); use xanysat.stac.custom_source."
            )
        options = sorted(fitting, key=lambda s: -_matched(s, items))
        return _present(sensor, options[0], items)
    return SensorSource(sensor, options[0])


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
