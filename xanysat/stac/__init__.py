"""STAC to datacube: search a STAC API, load each sensor at its native resolution on one grid.

``search`` queries an API with pystac-client; ``load`` turns items into the ``xr.DataTree``
that ``xanysat.embed`` takes: one node per sensor, ``(time, band, y, x)`` float32 in the
units of the sensor table's statistics, bands named as the projector names them, nodata and
(optionally) clouds as NaN, all sensors on nested grids sharing one CRS and one top-left
corner. How each catalogue serves a sensor (collection, asset keys, scale/offset, processing
baseline offset, QA) comes from the sensor table (``Modality.stac``); a catalogue the table
does not know is mapped with ``custom_source``.
"""

from xanysat.stac.assets import missing_assets, verify_assets
from xanysat.stac.client import check_lonlat_bbox, search
from xanysat.stac.grid import Grid, common_grid
from xanysat.stac.loader import LOADERS, load, stac_cube
from xanysat.stac.network import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S
from xanysat.stac.sources import SensorSource, custom_source, replace_source, sensor_sources
from xanysat.stac.units import (
    COMPOSITES,
    QA_PIXEL_CLOUDY_BITS,
    SCL_CLOUDY,
    baseline_shift,
    cloudy,
    temporal_composite,
    to_model_units,
)

__all__ = [
    "COMPOSITES", "DEFAULT_RETRIES", "DEFAULT_TIMEOUT_S", "LOADERS", "QA_PIXEL_CLOUDY_BITS", "SCL_CLOUDY", "Grid",
    "SensorSource", "baseline_shift", "check_lonlat_bbox", "cloudy", "common_grid", "custom_source", "load",
    "missing_assets", "replace_source", "search", "sensor_sources", "stac_cube", "temporal_composite",
    "to_model_units", "verify_assets",
]
