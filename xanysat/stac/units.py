"""Model units from catalogue values: scale, offset, processing-baseline shift, cloud masks, composites."""

from __future__ import annotations

import warnings

import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from xanysat.errors import StacError
from xanysat.sensors.table import StacSource

SCL_CLOUDY = (0, 1, 3, 8, 9, 10)
"""Sentinel-2 SCL classes masked by ``cloud_mask``: no data, saturated, cloud shadow, cloud
medium and high probability, thin cirrus."""
QA_PIXEL_CLOUDY_BITS = (0, 1, 2, 3, 4)
"""Landsat Collection 2 QA_PIXEL bits masked by ``cloud_mask``: fill, dilated cloud, cirrus,
cloud, cloud shadow."""
COMPOSITES = {"month": "MS", "season": "QS-DEC", "year": "YS"}


def to_model_units(values: xr.DataArray, src: StacSource, items, sensor: str) -> xr.DataArray:
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
        >>> from xanysat.sensors import MODALITIES
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
