"""The real TreeSatAI tile shipped with xanysat, in the official AnySat input layout.

The files in ``xanysat/data/treesatai/`` come from the ``.media/`` folder of the official
AnySat repository (see ``SOURCE.md`` there). :func:`treesatai_tile` loads them the way the
official ``demo.ipynb`` does, so the batch can be fed straight to an AnySat model.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from xanysat.sensors.table import MODALITIES, NormStats

TREESATAI_DIR = Path(__file__).parents[1] / "data" / "treesatai"
TREESATAI_TILE = "Abies_alba_1_1005_WEFL_NLF"

# The official demo crops the 304 x 304 px (60.8 m) aerial image to 300 x 300 px (60 m),
# the ground extent covered by the 6 x 6 px Sentinel series.
_AERIAL_WINDOW = Window(col_off=2, row_off=2, width=300, height=300)
_EXTENT_M = 60.0

# S1 statistics from the official demo.ipynb (VV, VH, VV/VH). SPEC section 2 flags them as
# suspect: they do not match the linear backscatter they are applied to (sample VV ~ 0.11,
# VH ~ 0.03), so normalised VV and VH come out as near-constants. Kept for parity with the
# official demo until better statistics exist.
_S1_DEMO_NORM = NormStats(
    mean=(3.2893, -3.6829, 0.6116),
    std=(40.1115, 40.5353, 1.0343),
    source="official demo.ipynb (flagged as suspect in SPEC section 2)",
)

# Field of the '_'-separated product name that holds the acquisition date (YYYYMMDD...).
_S2_DATE_FIELD = 2  # S2A_MSIL2A_20200102T102421_N0213_R065_T32UNC_20200102T115419
_S1_DATE_FIELD = 4  # S1A_IW_GRDH_1SDV_20200103T170841_20200103T170906_030639_0382D5_360A

_S1_RATIO_EPS = 1e-10
_S1_RATIO_LIMIT = 1e4


def treesatai_tile(normalize: bool = True) -> dict:
    """Load the shipped 60 m x 60 m TreeSatAI tile as an AnySat batch of one sample.

    Args:
        normalize: apply ``(x - mean) / std`` per band with the official demo statistics
            (``MODALITIES[...].norm`` for aerial and s2, the demo's S1 constants for s1).
            ``False`` returns raw values: aerial DN 0-255, S2 L2A reflectance x 1e4,
            S1 linear backscatter.

    Returns:
        A dict with

        - ``batch``: ``aerial`` float32 ``(1, 4, 300, 300)``; ``s2`` float32
          ``(1, 146, 10, 6, 6)``; ``s2_dates`` int64 ``(1, 146)``; ``s1`` float32
          ``(1, 60, 3, 6, 6)`` (ascending VV, VH, VV/VH); ``s1_dates`` int64 ``(1, 60)``.
          Dates are 1-based days of year 2020, as the official loaders produce them.
        - ``crs``: CRS of the aerial image, ``"EPSG:25832"``.
        - ``transform``: affine of the cropped 300 x 300 aerial image as a 6-tuple
          ``(a, b, c, d, e, f)`` (0.2 m pixels, north up).
        - ``extent_m``: side of the tile on the ground, 60.0.
        - ``dates``: ``{"s2": ..., "s1": ...}`` acquisition dates as ``datetime64[D]`` arrays.

    Example:
        >>> tile = treesatai_tile()
        >>> tile["batch"]["s2"].shape
        torch.Size([1, 146, 10, 6, 6])
        >>> tile["crs"], tile["extent_m"]
        ('EPSG:25832', 60.0)
    """
    aerial, crs, transform = _read_aerial(TREESATAI_DIR / f"{TREESATAI_TILE}.tif")
    with h5py.File(TREESATAI_DIR / f"{TREESATAI_TILE}.h5", "r") as h5:
        s2 = h5["sen-2-data"][()].astype(np.float32)
        s2_dates = _dates_from_product_names(h5["sen-2-products"][()], _S2_DATE_FIELD)
        s1 = _s1_with_ratio(h5["sen-1-asc-data"][()].astype(np.float32))
        s1_dates = _dates_from_product_names(h5["sen-1-asc-products"][()], _S1_DATE_FIELD)

    arrays = {"aerial": aerial, "s2": s2, "s1": s1}
    if normalize:
        arrays = {name: _normalize(values, _norm_stats(name)) for name, values in arrays.items()}

    batch = {name: torch.from_numpy(values).unsqueeze(0) for name, values in arrays.items()}
    batch["s2_dates"] = torch.from_numpy(_day_of_year(s2_dates)).unsqueeze(0)
    batch["s1_dates"] = torch.from_numpy(_day_of_year(s1_dates)).unsqueeze(0)
    return {
        "batch": batch,
        "crs": crs,
        "transform": transform,
        "extent_m": _EXTENT_M,
        "dates": {"s2": s2_dates, "s1": s1_dates},
    }


def _read_aerial(path: Path) -> tuple[np.ndarray, str, tuple[float, ...]]:
    """Read the aerial GeoTIFF, crop it as the demo does; return (C, H, W) float32, CRS, affine."""
    with rasterio.open(path) as src:
        pixels = src.read(window=_AERIAL_WINDOW)
        crs = src.crs.to_string()
        a, b, c, d, e, f = tuple(src.transform)[:6]
    col, row = _AERIAL_WINDOW.col_off, _AERIAL_WINDOW.row_off
    crop_transform = (a, b, c + a * col + b * row, d, e, f + d * col + e * row)
    return pixels.astype(np.float32), crs, crop_transform


def _s1_with_ratio(vv_vh: np.ndarray) -> np.ndarray:
    """Append the VV/VH ratio band to (T, 2, H, W) linear backscatter, as the official loaders do."""
    vv, vh = vv_vh[:, 0], vv_vh[:, 1]
    ratio = np.clip(vv / (vh + _S1_RATIO_EPS), -_S1_RATIO_LIMIT, _S1_RATIO_LIMIT)
    return np.concatenate([vv_vh, ratio[:, None].astype(np.float32)], axis=1)


def _dates_from_product_names(names: np.ndarray, field: int) -> np.ndarray:
    """Acquisition dates (``datetime64[D]``) from the ``field``-th '_' part of product names."""
    dates = []
    for name in names:
        text = name.decode() if isinstance(name, bytes) else str(name)
        stamp = text.split("_")[field]
        dates.append(f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]}")
    return np.array(dates, dtype="datetime64[D]")


def _day_of_year(dates: np.ndarray) -> np.ndarray:
    """1-based day of year (1 January = 1) as int64, like Python's ``tm_yday``."""
    year_start = dates.astype("datetime64[Y]").astype("datetime64[D]")
    return (dates - year_start).astype(np.int64) + 1


def _norm_stats(name: str) -> NormStats:
    stats = MODALITIES[name].norm
    if stats is None and name == "s1":
        stats = _S1_DEMO_NORM
    assert stats is not None, f"no normalisation statistics for {name!r}"
    return stats


def _normalize(values: np.ndarray, stats: NormStats) -> np.ndarray:
    """``(x - mean) / std`` over the band axis (third from last), in float32."""
    band_shape = (-1, 1, 1)
    mean = np.asarray(stats.mean, dtype=np.float32).reshape(band_shape)
    std = np.asarray(stats.std, dtype=np.float32).reshape(band_shape)
    return ((values - mean) / std).astype(np.float32)
