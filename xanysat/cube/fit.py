"""``fit_normalization``: per-band statistics fitted on a cube (a dask reduction)."""

from __future__ import annotations

import warnings

import numpy as np

from xanysat.cube.prepare import prepare
from xanysat.errors import DimensionError
from xanysat.sensors.table import NormStats


def fit_normalization(data, sensor: str | None = None) -> dict[str, NormStats]:
    """Fit per-band mean and standard deviation on a cube (a dask reduction).

    Missing values are ignored: NaN, nodata and ±inf (``embed`` masks all three, so they are
    never standardised). Bands absent from the input (neither given nor derivable) get NaN
    statistics: ``embed`` accepts NaN statistics for bands absent from the cube it embeds, and
    refuses them for a band the cube has.

    Args:
        data: a DataTree, Dataset or DataArray accepted by ``xanysat.embed``.
        sensor: see ``xanysat.cube.read.as_cube``.

    Returns:
        sensor -> ``NormStats`` in projector band order; pass it as ``normalize=``.

    Raises:
        DimensionError: a band of the input (or a ratio band derived from it) has no finite
            value, so it has no statistics; the message names the band.

    Example:
        >>> import numpy as np, rioxarray, xarray as xr
        >>> values = np.arange(16.0).reshape(1, 4, 2, 2)
        >>> values[0, 0, 0, 0] = np.inf  # ignored, as NaN is
        >>> da = xr.DataArray(values, dims=("band", "time", "y", "x"),
        ...     coords={"band": ["VV"], "time": np.arange(4).astype("datetime64[D]"), "y": [15.0, 5.0],
        ...             "x": [5.0, 15.0]}, name="s1-asc").rio.write_crs("EPSG:32631")
        >>> stats = fit_normalization(da)["s1-asc"]  # VH is absent: NaN
        >>> stats.mean, bool(np.isnan(stats.std[1]))
        ((8.0, nan), True)
        >>> fit_normalization(da * np.nan)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.DimensionError: cannot fit normalisation statistics for 's1-asc' band VV: it has no finite value ...
    """
    import dask

    inputs = prepare(data, sensor=sensor, statistics=False)
    lazy = {}
    for name, s in inputs.sensors.items():
        values = s.values()
        values = values.where(np.isfinite(values))  # ±inf is missing, as NaN and nodata are
        dims = [d for d in values.dims if d != "band"]
        lazy[name] = (values.mean(dims, skipna=True), values.std(dims, skipna=True))
    with warnings.catch_warnings():  # absent bands are all-NaN by design: their statistics are NaN
        warnings.filterwarnings("ignore", message="(invalid value|Mean of empty slice|Degrees of freedom)",
                                category=RuntimeWarning)
        (computed,) = dask.compute(lazy)
    out = {}
    for name, (mean, std) in computed.items():
        bands = [str(b) for b in mean["band"].values]
        empty = [b for b, v in zip(bands, mean.values) if not np.isfinite(v) and b not in inputs.sensors[name].absent]
        if empty:
            raise DimensionError(
                f"cannot fit normalisation statistics for {name!r} band {', '.join(empty)}: it has no finite value "
                "in the cube (all NaN, nodata or ±inf). Drop the band (e.g. ds.drop_sel(band=[...])), fit on a cube "
                "where it has data, or pass its statistics yourself in normalize=."
            )
        out[name] = NormStats(tuple(float(v) for v in mean.values), tuple(float(v) for v in std.values),
                              "fitted on the cube (xanysat.fit_normalization)")
    return out
