"""Validation of model inputs: every bad batch gets an error naming what was expected."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from xanysat.errors import DimensionError, ModalityError, PatchSizeError
from xanysat.sensors import rules
from xanysat.sensors.table import MODALITIES, Modality, get_modality

OUTPUTS = ("tile", "patch", "all", "dense")


@dataclass(frozen=True)
class BatchLayout:
    """What a valid batch holds, as the model needs it (``check_batch`` returns it).

    Attributes:
        sensors: the batch's sensor keys, in batch order.
        batch_size: B.
        scale: patch side in 10 m units (``patch_size // 10``).
        grid: patches along y and x (``(0, 0)`` when only tile-token sensors are given).
        output_modality: the sensor of a ``"dense"`` output, else None.
        masks: sensor -> boolean mask (True where valid) expanded to the data's shape, for the
            sensors that came with a ``<sensor>_mask``.

    Example:
        >>> from xanysat.testing import synthetic_batch
        >>> layout = check_batch(synthetic_batch(("s2",), extent_m=60), 20, ("s2",))
        >>> layout.sensors, layout.batch_size, layout.scale, layout.grid, layout.masks
        (('s2',), 2, 2, (3, 3), {})
    """

    sensors: tuple[str, ...]
    batch_size: int
    scale: int
    grid: tuple[int, int]
    output_modality: str | None
    masks: dict[str, Tensor] = field(default_factory=dict)


def _expected_dims(m: Modality) -> str:
    bands = f"{m.n_bands} bands {', '.join(m.bands)}"
    if m.time_series:
        return f"(B, T, C, H, W) = (batch, dates, {bands}, y, x)"
    return f"(B, C, H, W) = (batch, {bands}, y, x)"


def _split_keys(batch: Mapping[str, Tensor], known: tuple[str, ...]) -> tuple[str, ...]:
    sensors = tuple(k for k in batch if not k.endswith(("_dates", "_mask")))
    for name in sensors:
        if name not in MODALITIES:
            extra = " ('s1-des' has no projector in AnySat; use 's1' or 's1-asc')" if name == "s1-des" else ""
            raise ModalityError(
                f"unknown key {name!r} in the batch{extra}. Keys must be sensors ({', '.join(MODALITIES)}), "
                "'<sensor>_dates' or '<sensor>_mask'; remove labels and other entries before calling the model."
            )
        if name not in known:
            raise ModalityError(f"this model has no projector for {name!r}; it knows {', '.join(known)}.")
    for key in batch:
        for suffix in ("_dates", "_mask"):
            if key.endswith(suffix) and key[: -len(suffix)] not in sensors:
                raise ModalityError(f"{key!r} given but there is no {key[: -len(suffix)]!r} in the batch.")
    if not sensors:
        raise ModalityError(f"the batch holds no sensor; expected some of {', '.join(known)}.")
    return sensors


def _check_sensor(name: str, batch: Mapping[str, Tensor], batch_size: int | None) -> Tensor | None:
    m = MODALITIES[name]
    x = batch[name]
    if not isinstance(x, Tensor):
        raise DimensionError(f"{name!r} must be a torch.Tensor, got {type(x).__name__}.")
    if x.ndim != (5 if m.time_series else 4):
        raise DimensionError(f"{name!r} has shape {tuple(x.shape)}; expected {_expected_dims(m)}.")
    if x.shape[-3] != m.n_bands:
        raise DimensionError(
            f"{name!r} has {x.shape[-3]} channels on dim {x.ndim - 3}; expected {_expected_dims(m)}. "
            "Reorder or fill bands with xanysat.nn.batch.select_bands."
        )
    if batch_size is not None and x.shape[0] != batch_size:
        raise DimensionError(f"{name!r} has batch size {x.shape[0]}, other sensors {batch_size}.")
    if not x.is_floating_point():
        raise DimensionError(f"{name!r} must be a floating-point tensor (normalised values), got {x.dtype}.")
    if m.time_series:
        dates = batch.get(f"{name}_dates")
        if dates is None:
            raise DimensionError(f"{name!r} is a time series; give its dates as '{name}_dates' of shape (B, T).")
        if tuple(dates.shape) != tuple(x.shape[:2]):
            raise DimensionError(
                f"'{name}_dates' has shape {tuple(dates.shape)}; expected (B, T) = {tuple(x.shape[:2])}, "
                f"one day of year per date of {name!r}."
            )
    elif f"{name}_dates" in batch:
        raise DimensionError(f"{name!r} is a single-date sensor; remove '{name}_dates'.")
    mask = batch.get(f"{name}_mask")
    if mask is not None:
        if mask.ndim == 2 and m.time_series and tuple(mask.shape) == tuple(x.shape[:2]):
            mask = mask[:, :, None, None, None]
        elif tuple(mask.shape) != tuple(x.shape):
            shapes = f"{tuple(x.shape)} or (B, T) = {tuple(x.shape[:2])}" if m.time_series else f"{tuple(x.shape)}"
            raise DimensionError(f"'{name}_mask' has shape {tuple(mask.shape)}; expected {shapes}.")
        mask = mask.bool().expand_as(x)
    nan = torch.isnan(x)
    if mask is not None:
        nan = nan & mask
    if bool(nan.any()):
        raise DimensionError(
            f"{name!r} holds {int(nan.sum())} NaN values. The model does not guess: pass "
            f"'{name}_mask' (False where missing; missing values take the projector's missing-value "
            "parameter, fully missing dates are left out) or fill them. xanysat.embed does this for you."
        )
    return mask


def _extent(name: str, x: Tensor) -> tuple[float, float]:
    res = MODALITIES[name].resolution_m
    return round(x.shape[-2] * res, 6), round(x.shape[-1] * res, 6)


def check_patch_size(patch_size: int, extent: tuple[float, float], sensors: tuple[str, ...]) -> int:
    """Return the scale (patch side in 10 m units) or raise ``PatchSizeError``.

    Args:
        patch_size: patch side in metres: a positive multiple of 10 that divides both sides of
            ``extent`` and, for sensors with tokens coarser than 10 m (l7, alos), a multiple
            of their token size.
        extent: ``(height, width)`` of the tile in metres.
        sensors: the patch-level sensors of the batch.

    Returns:
        ``patch_size // 10``.

    Raises:
        PatchSizeError: the patch size is not a multiple of 10 m, does not divide the tile or
            is finer than a sensor's token.

    Example:
        >>> check_patch_size(20, (60.0, 60.0), ("s2",))
        2
        >>> check_patch_size(20, (60.0, 60.0), ("l7",))
        Traceback (most recent call last):
            ...
        xanysat.errors.PatchSizeError: 'l7' has 30 m tokens, so patch_size must be a multiple of 30 m; got 20.
    """
    patch_size = rules.check_patch_size(patch_size, sensors)
    for side in extent:
        if side % patch_size:
            ok = [p for p in range(10, int(min(extent)) + 1, 10) if all(e % p == 0 for e in extent)]
            raise PatchSizeError(
                f"patch_size {patch_size} m does not divide the {extent[0]:g} m x {extent[1]:g} m tile "
                f"(the release would silently crop it). Use one of {ok} or pad/crop the tile."
            )
    return patch_size // 10


def check_batch(batch: Mapping[str, Tensor], patch_size: int, known: tuple[str, ...], output: str = "patch",
                output_modality: str | None = None) -> BatchLayout:
    """Validate a model batch and describe it.

    Args:
        batch: ``{sensor: data, "<sensor>_dates": (B, T), "<sensor>_mask": ...}`` as
            ``AnySat.forward`` takes it.
        patch_size: patch side in metres.
        known: the sensors the model has projectors for.
        output: ``"tile"``, ``"patch"``, ``"all"`` or ``"dense"``.
        output_modality: the sensor of a ``"dense"`` output (default: the first patch-level one).

    Returns:
        The batch's ``BatchLayout``.

    Raises:
        ModalityError: unknown or unsupported sensor, stray keys.
        DimensionError: wrong dims, channels, dates, masks, extents, NaN.
        PatchSizeError: a patch size the tile or a sensor cannot be cut into.

    Example:
        >>> from xanysat.testing import synthetic_batch
        >>> batch = synthetic_batch(("s2", "modis"), extent_m=60)
        >>> check_batch(batch, 30, ("s2", "modis"), output="dense").output_modality
        's2'
        >>> del batch["s2_dates"]
        >>> check_batch(batch, 30, ("s2", "modis"))
        Traceback (most recent call last):
            ...
        xanysat.errors.DimensionError: 's2' is a time series; give its dates as 's2_dates' of shape (B, T).
    """
    if not isinstance(batch, Mapping):
        raise DimensionError(f"the batch must be a dict of tensors, got {type(batch).__name__}.")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}.")
    sensors = _split_keys(batch, known)
    batch_size = None
    masks = {}
    for name in sensors:
        mask = _check_sensor(name, batch, batch_size)
        batch_size = batch[name].shape[0]
        if mask is not None:
            masks[name] = mask
    spatial = [n for n in sensors if not MODALITIES[n].tile_token]
    for name in sensors:
        if MODALITIES[name].tile_token and tuple(batch[name].shape[-2:]) != (1, 1):
            raise DimensionError(
                f"{name!r} gives one token per tile and must be a single pixel series (H = W = 1), got "
                f"{tuple(batch[name].shape[-2:])}; average it over the tile first, e.g. .mean(dim=(-2, -1), keepdim=True)."
            )
    if not spatial:
        if output != "tile":
            raise ModalityError(f"{', '.join(sensors)} alone gives only a tile embedding: use output='tile'.")
        return BatchLayout(sensors, batch_size, 1, (0, 0), None, masks)
    extents = {n: _extent(n, batch[n]) for n in spatial}
    extent = extents[spatial[0]]
    for name, other in extents.items():
        if other != extent:
            raise DimensionError(
                f"{spatial[0]!r} covers {extent[0]:g} m x {extent[1]:g} m but {name!r} covers "
                f"{other[0]:g} m x {other[1]:g} m ({tuple(batch[name].shape[-2:])} pixels of "
                f"{MODALITIES[name].resolution_m:g} m); all sensors must cover the same tile."
            )
    scale = check_patch_size(patch_size, extent, spatial)
    grid = (round(extent[0] / (10 * scale)), round(extent[1] / (10 * scale)))
    if output == "dense":
        output_modality = output_modality or spatial[0]
        if output_modality not in spatial:
            raise ModalityError(
                f"output_modality {output_modality!r} is not a patch-level sensor of this batch; use one of {spatial}."
            )
    return BatchLayout(sensors, batch_size, scale, grid, output_modality, masks)


@dataclass(frozen=True)
class SensorInput:
    """A sensor's data in projector band order, with the mask of what was filled (``select_bands``).

    Attributes:
        data: the data, bands in the projector's order (absent bands are 0).
        mask: False on the filled bands, True elsewhere; None when no band was filled.
        filled: names of the filled bands.

    Example:
        >>> s2 = select_bands(torch.ones(1, 2, 10, 6, 6), MODALITIES["s2"].bands, "s2")
        >>> tuple(s2.data.shape), s2.mask, s2.filled
        ((1, 2, 10, 6, 6), None, ())
    """

    data: Tensor
    mask: Tensor | None
    filled: tuple[str, ...]


def select_bands(x: Tensor, band_names, sensor: str, *, band_dim: int = -3) -> SensorInput:
    """Put a sensor's bands in projector order; absent bands are filled and reported.

    Absent bands get value 0 and mask False: the model then gives them the projector's
    missing-value parameter (``pad_value`` of the L-TAE projectors; 0, the normalised mean, for
    the conv projectors), as AnySat does for missing data. Bands the projector does not use are
    dropped. A ``UserWarning`` names the filled bands.

    Args:
        x: data with bands on ``band_dim``.
        band_names: names of the bands of ``x``, in order (see ``xanysat.sensors.table.band_index``).
        sensor: sensor name.
        band_dim: the band dim of ``x`` (kept in the output).

    Returns:
        A ``SensorInput``: the data with ``n_bands`` bands on ``band_dim``, the mask, the filled names.

    Example:
        >>> import warnings
        >>> x = torch.zeros(1, 2, 9, 6, 6)  # a 60 m Sentinel-2 product has no B08
        >>> names = ["B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12"]
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     s2 = select_bands(x, names, "s2")
        >>> s2.filled, tuple(s2.data.shape), s2.mask[0, 0, :, 0, 0].tolist()
        (('B08',), (1, 2, 10, 6, 6), [True, True, True, True, True, True, False, True, True, True])
        >>> str(caught[0].message)
        "s2: bands B08 absent from the input; filled with the projector's missing-value parameter."
    """
    import warnings

    from xanysat.sensors.table import band_index

    m = get_modality(sensor)
    if x.shape[band_dim] != len(band_names):
        raise DimensionError(f"{sensor!r} has {x.shape[band_dim]} bands on dim {band_dim} but {len(band_names)} names.")
    indices, missing = band_index(m, band_names)
    x = x.movedim(band_dim, -3)
    shape = list(x.shape)
    shape[-3] = m.n_bands
    data = x.new_zeros(shape)
    mask = torch.ones(shape, dtype=torch.bool, device=x.device) if missing else None
    for target, source in enumerate(indices):
        if source is None:
            mask[..., target, :, :] = False
        else:
            data[..., target, :, :] = x[..., source, :, :]
    if missing:
        warnings.warn(f"{sensor}: bands {', '.join(missing)} absent from the input; filled with the "
                      "projector's missing-value parameter.", stacklevel=2)
    return SensorInput(data.movedim(-3, band_dim), None if mask is None else mask.movedim(-3, band_dim), tuple(missing))
