"""Rules derived from the sensor table, used by every layer: ratio bands, patch sizes, the grid
unit, and dates as day numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fractions import Fraction

import numpy as np

from xanysat.errors import AnySatInputError, PatchSizeError
from xanysat.sensors.table import MODALITIES, Modality

RATIO_EPS = 1e-10
RATIO_LIMIT = 1e4
DAY_OF_YEAR = "day of year (1 = 1 January)"


def ratio(numerator, denominator):
    """The derived ratio bands (``VV/VH``, ``HH/HV``) as the official loaders compute them.

    Args:
        numerator: the first band (``VV``, ``HH``): a number, numpy or xarray array.
        denominator: the second band (``VH``, ``HV``), broadcastable against ``numerator``.

    Returns:
        ``numerator / (denominator + 1e-10)``, clipped to ``[-1e4, 1e4]``.

    Example:
        >>> ratio(np.array([0.2, 0.1]), np.array([0.05, 0.0])).round(6)  # x / 0 is clamped
        array([4.e+00, 1.e+04])
    """
    return np.clip(numerator / (denominator + RATIO_EPS), -RATIO_LIMIT, RATIO_LIMIT)


def ratio_sources(band: str) -> tuple[str, str]:
    """A derived band ``"A/B"`` is ``A / (B + 1e-10)``: return ``(A, B)``.

    Example:
        >>> ratio_sources("VV/VH")
        ('VV', 'VH')
    """
    numerator, denominator = band.split("/")
    return numerator, denominator


def derivable(m: Modality, band: str, indices: Sequence[int | None]) -> bool:
    """Whether a band the input lacks is a ratio band whose two sources it has.

    Args:
        m: the sensor.
        band: one of ``m.bands``.
        indices: per projector band, its index in the input (``band_index``), None if absent.

    Example:
        >>> s1 = MODALITIES["s1"]
        >>> derivable(s1, "VV/VH", (0, 1, None)), derivable(s1, "VV/VH", (0, None, None))
        (True, False)
    """
    return band in m.derived_bands and all(indices[m.bands.index(b)] is not None for b in ratio_sources(band))


def absent_bands(m: Modality, indices: Sequence[int | None]) -> tuple[str, ...]:
    """Projector bands neither in the input nor derivable from it (the projector masks them).

    Example:
        >>> absent_bands(MODALITIES["s1"], (0, 1, None)), absent_bands(MODALITIES["s1"], (0, None, None))
        ((), ('VH', 'VV/VH'))
    """
    return tuple(b for b, i in zip(m.bands, indices) if i is None and not derivable(m, b, indices))


def check_patch_size(patch_size, sensors: Iterable[str]) -> int:
    """A valid patch side in metres: a positive multiple of 10, and of the token size of every
    patch-level sensor whose tokens are coarser than 10 m (l7 and alos: 30 m).

    Args:
        patch_size: the patch side in metres.
        sensors: sensor names.

    Returns:
        ``patch_size`` as an int.

    Raises:
        PatchSizeError: naming the rule that failed.

    Example:
        >>> check_patch_size(40.0, ("s2", "naip"))
        40
        >>> check_patch_size(20, ("l7",))
        Traceback (most recent call last):
            ...
        xanysat.errors.PatchSizeError: 'l7' has 30 m tokens, so patch_size must be a multiple of 30 m; got 20.
        >>> check_patch_size("40", ("s2",))
        Traceback (most recent call last):
            ...
        xanysat.errors.PatchSizeError: patch_size must be a positive multiple of 10 metres, got '40': give a number, not a string.
    """
    if isinstance(patch_size, (bool, str)) or not isinstance(patch_size, (int, float, np.integer, np.floating)) \
            or not float(patch_size).is_integer() or patch_size <= 0 or patch_size % 10:
        hint = ": give a number, not a string" if isinstance(patch_size, str) else ""
        raise PatchSizeError(f"patch_size must be a positive multiple of 10 metres, got {patch_size!r}{hint}.")
    patch_size = int(patch_size)
    for name in sensors:
        m = MODALITIES[name]
        if not m.tile_token and m.token_m > 10 and patch_size % m.token_m:
            raise PatchSizeError(
                f"{name!r} has {m.token_m:g} m tokens, so patch_size must be a multiple of {m.token_m:g} m; "
                f"got {patch_size}."
            )
    return patch_size


def pixel_lcm_m(resolutions: Iterable[float]) -> float:
    """The shortest length that is a whole number of pixels of every resolution (to 1/1000 m).

    Example:
        >>> pixel_lcm_m([1.25, 0.2]), pixel_lcm_m([10, 30]), pixel_lcm_m([10, 250])
        (5.0, 30.0, 250.0)
    """
    unit = None
    for r in resolutions:
        f = Fraction(float(r)).limit_denominator(1000)
        if unit is None:
            unit = f
        else:
            den = math.lcm(unit.denominator, f.denominator)
            unit = Fraction(math.lcm(int(unit * den), int(f * den)), den)
    if unit is None:
        raise ValueError("pixel_lcm_m needs at least one resolution.")
    return float(unit)


def grid_unit_m(sensors: Iterable[str]) -> float:
    """The unit of tile sizes and offsets: the pixel ``pixel_lcm_m`` of the patch-level sensors
    (of all of them when every sensor gives one token per tile, like MODIS alone). Tiles on
    multiples of it cut every patch-level sensor at pixel edges.

    Example:
        >>> grid_unit_m(("naip", "s2")), grid_unit_m(("s2", "l7", "modis")), grid_unit_m(("modis",))
        (10.0, 30.0, 250.0)
    """
    names = list(sensors)
    spatial = [n for n in names if not MODALITIES[n].tile_token] or names
    return pixel_lcm_m(MODALITIES[n].resolution_m for n in spatial)


def parse_date_origin(origin):
    """``None`` (day of year) or the date day numbers count from, as ``datetime64[D]``.

    Raises:
        AnySatInputError: the origin is not a date.

    Example:
        >>> parse_date_origin("2018-09-01"), parse_date_origin(None)
        (np.datetime64('2018-09-01'), None)
        >>> parse_date_origin("yesterday")
        Traceback (most recent call last):
            ...
        xanysat.errors.AnySatInputError: date_origin must be None (day of year) or a date such as '2018-09-01', got 'yesterday'.
    """
    if origin is None:
        return None
    try:
        day = np.datetime64(origin, "D")
    except (TypeError, ValueError):
        day = np.datetime64("NaT")
    if np.isnat(day) or isinstance(origin, (bool, int, float)):
        raise AnySatInputError(
            f"date_origin must be None (day of year) or a date such as '2018-09-01', got {origin!r}."
        )
    return day


def day_numbers(times, origin=None) -> np.ndarray:
    """Dates as the model takes them: 1-based day of year (the official loaders), or days since
    ``origin`` (e.g. ``"2018-09-01"`` for PASTIS-style weights); NaN where a date is NaT.

    Args:
        times: dates (anything ``np.asarray(..., "datetime64[D]")`` takes), any shape.
        origin: None, or the date to count days from.

    Returns:
        float64 day numbers, the shape of ``times``.

    Example:
        >>> times = np.array(["2021-01-01", "2021-03-01T12:00", "NaT"], "datetime64[ns]")
        >>> day_numbers(times).tolist(), day_numbers(times, origin="2020-09-01").tolist()
        ([1.0, 60.0, nan], [122.0, 181.0, nan])
    """
    start = parse_date_origin(origin)
    t = np.asarray(times, dtype="datetime64[D]")
    valid = ~np.isnat(t)
    safe = np.where(valid, t, np.datetime64("2000-01-01", "D"))
    days = (safe - safe.astype("datetime64[Y]")).astype("int64") + 1 if start is None else (safe - start).astype("int64")
    return np.where(valid, days, np.nan).astype("float64")


def dates_description(origin=None) -> str:
    """What the day numbers mean, for provenance attrs.

    Example:
        >>> dates_description(), dates_description("2018-09-01")
        ('day of year (1 = 1 January)', 'days since 2018-09-01')
    """
    start = parse_date_origin(origin)
    return DAY_OF_YEAR if start is None else f"days since {start}"
