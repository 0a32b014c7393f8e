"""``fit_normalization``: per-band statistics fitted on a cube (a dask reduction)."""

from __future__ import annotations

from xanysat.cube.prepare import prepare
from xanysat.sensors.table import NormStats


def fit_normalization(data, sensor: str | None = None) -> dict[str, NormStats]:
    """Fit per-band mean and standard deviation on a cube (a dask reduction, NaN ignored).

    Args:
        data: a DataTree, Dataset or DataArray accepted by ``xanysat.embed``.
        sensor: see ``xanysat.cube.read.as_cube``.

    Returns:
        sensor -> ``NormStats`` in projector band order; pass it as ``normalize=``.

    Example:
        >>> import numpy as np, rioxarray, xarray as xr
        >>> da = xr.DataArray(np.arange(16.0).reshape(1, 4, 2, 2), dims=("band", "time", "y", "x"),
        ...     coords={"band": ["VV"], "time": np.arange(4).astype("datetime64[D]"), "y": [15.0, 5.0],
        ...             "x": [5.0, 15.0]}, name="s1-asc").rio.write_crs("EPSG:32631")
        >>> stats = fit_normalization(da)["s1-asc"]
        >>> stats.mean, bool(np.isnan(stats.std[1]))
        ((7.5, nan), True)
    """
    import dask


    inputs = prepare(data, sensor=sensor, statistics=False)
    lazy = {}
    for name, s in inputs.sensors.items():
        values = s.values()
        dims = [d for d in values.dims if d != "band"]
        lazy[name] = (values.mean(dims, skipna=True), values.std(dims, skipna=True))
    import warnings

    with warnings.catch_warnings():  # absent bands are all-NaN by design: their statistics are NaN
        warnings.filterwarnings("ignore", message="(invalid value|Mean of empty slice|Degrees of freedom)",
                                category=RuntimeWarning)
        (computed,) = dask.compute(lazy)
    return {
        name: NormStats(tuple(float(v) for v in mean.values), tuple(float(v) for v in std.values),
                        "fitted on the cube (xanysat.fit_normalization)")
        for name, (mean, std) in computed.items()
    }
