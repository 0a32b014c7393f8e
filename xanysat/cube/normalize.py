"""Per-sensor input normalisation ``(x - mean) / std`` in projector band order.

Three sources, recorded in the output's attrs: the sensor table (``normalize=True``, the
statistics the weights were trained with), statistics fitted on the cube
(``fit_normalization``), or the user's own; ``normalize=False`` means the cube is already
normalised.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from xanysat.errors import DimensionError
from xanysat.sensors.rules import derivable, ratio, ratio_sources
from xanysat.sensors.table import MODALITIES, NormStats


def projector_bands(sensor) -> xr.DataArray:
    """A ``SensorCube``'s data in projector band order, lazily: derived bands computed, absent
    bands all-NaN, nodata as NaN, float32.

    Args:
        sensor: one ``xanysat.cube.read.SensorCube`` (a value of ``as_cube(data).sensors``).

    Returns:
        A float32 ``xr.DataArray`` with the sensor's dims and ``band`` = the projector bands.

    Example:
        >>> import numpy as np
        >>> from xanysat.cube.read import as_cube
        >>> from xanysat.sensors.rules import ratio
        >>> from xanysat.testing import synthetic_cube
        >>> ds = synthetic_cube(("s1",), extent_m=40, n_dates=2)["s1"].to_dataset()
        >>> s1 = as_cube(ds.sel(band=["VH", "VV"])).sensors["s1"]  # no ratio band, wrong order
        >>> out = projector_bands(s1)
        >>> out.band.values.tolist(), out.dims, out.dtype
        (['VV', 'VH', 'VV/VH'], ('time', 'band', 'y', 'x'), dtype('float32'))
        >>> bool(np.allclose(out.sel(band="VV/VH"), ratio(out.sel(band="VV"), out.sel(band="VH"))))
        True
    """
    m = MODALITIES[sensor.name]
    indices, _ = sensor.band_indices
    data = sensor.data
    if sensor.nodata is not None:
        data = data.where(data != sensor.nodata)
    data = data.astype("float32")
    present = [(band, index) for band, index in zip(m.bands, indices) if index is not None]
    pieces = [data.isel(band=[i for _, i in present]).assign_coords(band=[b for b, _ in present])]
    for band, index in zip(m.bands, indices):
        if index is not None:
            continue
        if derivable(m, band, indices):
            a, b = (data.isel(band=indices[m.bands.index(x)], drop=True) for x in ratio_sources(band))
            layer = ratio(a, b)
        else:
            layer = xr.full_like(data.isel(band=0, drop=True), np.nan)
        pieces.append(layer.expand_dims(band=[band]))
    stacked = pieces[0] if len(pieces) == 1 else xr.concat(pieces, dim="band")
    stacked = stacked.sel(band=list(m.bands))
    return stacked.transpose(*sensor.data.dims)


def resolve_normalization(sensors, normalize, model_stats=None) -> dict[str, NormStats | None]:
    """``normalize`` (bool, or a mapping sensor -> NormStats / (mean, std) / bool) -> stats per sensor.

    ``True`` takes the model's own statistics (``model_stats``, what its weights were trained
    with) where it has them, else the sensor table's.

    Args:
        sensors: the cube's sensor names.
        normalize: ``True`` (default statistics), ``False``/``None`` (already normalised), or a
            mapping sensor -> ``NormStats``, ``(mean, std)`` or bool; sensors missing from the
            mapping default to ``True``.
        model_stats: sensor -> ``NormStats`` the model's weights were trained with, if any.

    Returns:
        sensor -> ``NormStats``, or ``None`` where no normalisation is applied.

    Raises:
        DimensionError: no statistics known for a sensor, statistics of the wrong length, a
            non-positive std, or a mapping naming sensors not in ``sensors``.

    Example:
        >>> stats = resolve_normalization(["s2", "s1"], {"s1": ([0, 0, 0], [1, 1, 1]), "s2": False})
        >>> stats["s2"] is None, stats["s1"].std, stats["s1"].source
        (True, (1, 1, 1), 'given by the user')
        >>> resolve_normalization(["s2"], True)["s2"].mean[:2]  # the sensor table's
        (4304.33, 4159.27)
        >>> resolve_normalization(["s1"], True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.DimensionError: the sensor table has no normalisation statistics for 's1'. ...
    """
    result = {}
    for name in sensors:
        choice = normalize.get(name, True) if isinstance(normalize, Mapping) else normalize
        m = MODALITIES[name]
        if choice is False or choice is None:
            result[name] = None
            continue
        if choice is True:
            if model_stats and name in model_stats:
                result[name] = model_stats[name]
                continue
            if m.norm is None:
                raise DimensionError(
                    f"the sensor table has no normalisation statistics for {name!r}. Pass normalize={{'{name}': "
                    "(mean, std)}, fit them with xanysat.fit_normalization(cube), or normalize=False if the cube "
                    "is already normalised."
                )
            result[name] = m.norm
            continue
        stats = choice if isinstance(choice, NormStats) else NormStats(*map(tuple, choice), source="given by the user")
        if not len(stats.mean) == len(stats.std) == m.n_bands:
            raise DimensionError(
                f"normalisation for {name!r} has {len(stats.mean)} means and {len(stats.std)} stds; expected "
                f"{m.n_bands}, one per projector band {m.bands}."
            )
        std = np.asarray(stats.std, dtype="float64")
        if np.any(np.isfinite(std) & (std <= 0)):
            raise DimensionError(
                f"normalisation for {name!r} has a zero or negative std: {stats.std}; a constant band cannot be "
                "standardised: give its statistics explicitly."
            )
        result[name] = stats
    if isinstance(normalize, Mapping):
        unknown = set(normalize) - set(sensors)
        if unknown:
            raise DimensionError(f"normalize names {sorted(unknown)}, which are not sensors of the cube {list(sensors)}.")
    return result
