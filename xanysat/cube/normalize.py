"""Per-sensor input normalisation ``(x - mean) / std`` in projector band order.

Three sources, recorded in the output's attrs: the sensor table (``normalize=True``, the
statistics the weights were trained with), statistics fitted on the cube
(``fit_normalization``), or the user's own; ``normalize=False`` means the cube is already
normalised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from xanysat.errors import AnySatInputError, DimensionError
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


def check_normalize(normalize) -> None:
    """Refuse a ``normalize=`` that is neither a bool, ``None`` nor a mapping, before anything is read.

    Raises:
        AnySatInputError: naming the accepted forms.

    Example:
        >>> check_normalize({"s2": True})
        >>> check_normalize("yes")
        Traceback (most recent call last):
            ...
        xanysat.errors.AnySatInputError: normalize must be True, False or a mapping sensor -> (mean, std), got 'yes'.
    """
    if normalize is not None and not isinstance(normalize, (bool, np.bool_, Mapping)):
        raise AnySatInputError(
            f"normalize must be True, False or a mapping sensor -> (mean, std), got {normalize!r}."
        )


def resolve_normalization(sensors, normalize, model_stats=None, absent=None) -> dict[str, NormStats | None]:
    """``normalize`` (bool, or a mapping sensor -> NormStats / (mean, std) / bool) -> stats per sensor.

    ``True`` takes the model's own statistics (``model_stats``, what its weights were trained
    with) where it has them, else the sensor table's. Every set of statistics is checked
    (``check_statistics``): a finite mean and a finite, positive std for each band the input
    has; NaN is accepted only for the bands in ``absent`` (masked, never standardised), which
    is what ``fit_normalization`` returns for them.

    Args:
        sensors: the cube's sensor names.
        normalize: ``True`` (default statistics), ``False``/``None`` (already normalised), or a
            mapping sensor -> ``NormStats``, ``(mean, std)`` or bool; sensors missing from the
            mapping default to ``True``.
        model_stats: sensor -> ``NormStats`` the model's weights were trained with, if any.
        absent: sensor -> projector bands the input neither has nor derives (default: none).

    Returns:
        sensor -> ``NormStats``, or ``None`` where no normalisation is applied.

    Raises:
        AnySatInputError: ``normalize`` is not a bool or a mapping.
        DimensionError: no statistics known for a sensor, statistics of the wrong length, a
            NaN, infinite, zero or negative value for a band of the input, or a mapping naming
            sensors not in ``sensors``.

    Example:
        >>> stats = resolve_normalization(["s2", "s1"], {"s1": ([0, 0, 0], [1, 1, 1]), "s2": False})
        >>> stats["s2"] is None, stats["s1"].std, stats["s1"].source
        (True, (1.0, 1.0, 1.0), 'given by the user')
        >>> resolve_normalization(["s2"], True)["s2"].mean[:2]  # the sensor table's
        (4304.33, 4159.27)
        >>> resolve_normalization(["s1"], True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.DimensionError: the sensor table has no normalisation statistics for 's1'. ...
        >>> nan = float("nan")
        >>> resolve_normalization(["s1-asc"], {"s1-asc": ([0.1, nan], [0.05, nan])}, absent={"s1-asc": ["VH"]})[
        ...     "s1-asc"].mean  # VH is absent: its NaN statistics are never used
        (0.1, nan)
        >>> resolve_normalization(["s1-asc"], {"s1-asc": ([0.1, nan], [0.05, nan])})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.DimensionError: normalisation for 's1-asc' (given by the user) has a NaN or infinite mean for VH: ...
    """
    check_normalize(normalize)
    absent = absent or {}
    result = {}
    for name in sensors:
        choice = normalize.get(name, True) if isinstance(normalize, Mapping) else normalize
        m = MODALITIES[name]
        if choice is False or choice is None or (isinstance(choice, np.bool_) and not choice):
            result[name] = None
            continue
        if choice is True or isinstance(choice, np.bool_):
            if model_stats and name in model_stats:
                stats = model_stats[name]
            elif m.norm is None:
                raise DimensionError(
                    f"the sensor table has no normalisation statistics for {name!r}. Pass normalize={{'{name}': "
                    "(mean, std)}, fit them with xanysat.fit_normalization(cube), or normalize=False if the cube "
                    "is already normalised."
                )
            else:
                stats = m.norm
        else:
            stats = _as_stats(choice, name)
        check_statistics(stats, name, absent.get(name, ()))
        result[name] = stats
    if isinstance(normalize, Mapping):
        unknown = set(normalize) - set(sensors)
        if unknown:
            raise DimensionError(f"normalize names {sorted(unknown)}, which are not sensors of the cube {list(sensors)}.")
    return result


def _as_stats(choice, name: str) -> NormStats:
    if isinstance(choice, NormStats):
        return choice
    if isinstance(choice, (str, bytes)) or not isinstance(choice, Sequence) or len(choice) != 2:
        raise DimensionError(
            f"normalize[{name!r}] must be True, False, a NormStats or a (mean, std) pair of per-band sequences, "
            f"got {choice!r}."
        )
    try:
        mean, std = (tuple(float(v) for v in part) for part in choice)
    except (TypeError, ValueError):
        raise DimensionError(
            f"normalize[{name!r}] must be a (mean, std) pair of sequences of numbers, one per projector band "
            f"{MODALITIES[name].bands}; got {choice!r}."
        ) from None
    return NormStats(mean, std, source="given by the user")


def check_statistics(stats: NormStats, name: str, absent=()) -> None:
    """Statistics usable for ``name``: one mean and one std per projector band, each mean finite
    and each std finite and positive, except for the ``absent`` bands (never standardised: the
    projector masks them), whose values may be NaN.

    Args:
        stats: the statistics.
        name: the sensor.
        absent: projector bands the input neither has nor derives.

    Raises:
        DimensionError: naming the sensor, the bands and where the statistics come from.

    Example:
        >>> check_statistics(NormStats((0.1, 0.02), (0.05, 0.01), "mine"), "s1-asc")
        >>> check_statistics(NormStats((0.1, 0.02), (0.05, 0.0), "mine"), "s1-asc")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.DimensionError: normalisation for 's1-asc' (mine) has a zero or negative std for VH: ...
    """
    m = MODALITIES[name]
    if not len(stats.mean) == len(stats.std) == m.n_bands:
        raise DimensionError(
            f"normalisation for {name!r} has {len(stats.mean)} means and {len(stats.std)} stds; expected "
            f"{m.n_bands}, one per projector band {m.bands}."
        )
    try:
        mean, std = np.asarray(stats.mean, "float64"), np.asarray(stats.std, "float64")
    except (TypeError, ValueError):
        raise DimensionError(f"normalisation for {name!r} ({stats.source}) holds values that are not numbers: "
                             f"mean {stats.mean}, std {stats.std}.") from None
    used = np.array([band not in set(absent) for band in m.bands])
    fix = (f"give finite statistics for these bands, e.g. normalize={{'{name}': (mean, std)}} with one value per "
           f"projector band {m.bands}, or fit them with xanysat.fit_normalization on a cube that has the bands.")
    for bad, what in ((used & ~np.isfinite(mean), "a NaN or infinite mean"),
                      (used & ~np.isfinite(std), "a NaN or infinite std"),
                      (used & np.isfinite(std) & (std <= 0), "a zero or negative std")):
        if bad.any():
            bands = ", ".join(b for b, flag in zip(m.bands, bad) if flag)
            detail = (": a constant band cannot be standardised" if "zero" in what
                      else " (NaN statistics are accepted only for bands absent from the input)")
            raise DimensionError(
                f"normalisation for {name!r} ({stats.source}) has {what} for {bands}: mean {stats.mean}, "
                f"std {stats.std}{detail}; {fix}"
            )
