"""A continental cube that raises if a pixel is computed, and statistics for ``s1-asc``."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

import xanysat

S1_STATS = {"s1-asc": ((0.1, 0.03), (0.1, 0.03))}  # the sensor table has none for s1-asc


def _never_computed(block):
    raise AssertionError("a pixel of the continental cube was computed")


def continental_cube(extent_km: float = 708, n_dates: int = 36, chunk: int = 2048) -> xr.DataTree:
    """Sentinel-2 (10 bands) and Sentinel-1 ascending at 10 m over ``extent_km`` x ``extent_km``, one
    chunk per date like a STAC loader's, from dask arrays that raise if any pixel is computed."""
    n = round(extent_km * 100)
    times = np.datetime64("2021-01-03", "ns") + np.arange(n_dates) * np.timedelta64(365 // n_dates, "D")
    coords = {"time": times, "y": 5_800_000 - (np.arange(n) + 0.5) * 10, "x": 200_000 + (np.arange(n) + 0.5) * 10}
    nodes = {}
    for name, bands, dtype in (("s2", xanysat.MODALITIES["s2"].bands, "uint16"), ("s1-asc", ("VV", "VH"), "float32")):
        data = da.empty((n_dates, len(bands), n, n), chunks=(1, -1, chunk, chunk), dtype=dtype)
        data = data.map_blocks(_never_computed, dtype=dtype)
        array = xr.DataArray(data, dims=("time", "band", "y", "x"), coords={**coords, "band": list(bands)}, name=name)
        nodes[name] = array.to_dataset().rio.write_crs("EPSG:32631")
    return xr.DataTree.from_dict(nodes)
