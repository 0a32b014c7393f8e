"""Cubes and a reference embedding for the datacube tests.

``reference`` is an independent, deliberately naive re-statement of what ``xanysat.embed``
promises: cut the cube into tiles anchored at its top-left corner, grow each by the halo,
normalise with the given statistics, call the model once per tile (NaN -> mask, dates and
sensors with no valid value in the tile left out), crop the halo, and set cells without any valid pixel to NaN. It
works on plain numpy arrays and never calls the code under test.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers .rio)
import torch
import xarray as xr

from helpers.paths import FIXTURES
from xanysat.sensors.table import MODALITIES

WORLDCEREAL = FIXTURES / "real" / "worldcereal" / "worldcereal_preprocessed_inputs.nc"
WORLDCEREAL_NODATA = 65535


@functools.lru_cache(maxsize=1)
def tiny_model():
    from xanysat.nn.hub import load_model

    return load_model("untrained-tiny")


# -- plain numpy views of a cube ------------------------------------------------------------


def doy(times) -> np.ndarray:
    """1-based day of year, computed with pandas (not with xanysat)."""
    return np.asarray(pd.DatetimeIndex(np.asarray(times)).dayofyear, dtype="float32")


def sensor_numpy(tree: xr.DataTree, name: str, bands=None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(values, day_of_year)`` of a DataTree node's variable named ``name`` as float64 numpy,
    bands in projector order (or ``bands``), ``(T, C, H, W)`` / ``(C, H, W)``."""
    da = tree[name][name]
    m = MODALITIES[name]
    da = da.sel(band=list(bands or m.bands))
    dims = ("time", "band", "y", "x") if m.time_series else ("band", "y", "x")
    values = np.asarray(da.transpose(*dims).values, dtype="float64")
    return values, (doy(da["time"].values) if m.time_series else None)


def normalise(values: np.ndarray, name: str, stats=None) -> np.ndarray:
    """``(x - mean) / std`` on the band axis (third from last) with the table's (or given) stats."""
    mean, std = stats if stats is not None else (MODALITIES[name].norm.mean, MODALITIES[name].norm.std)
    shape = (-1, 1, 1)
    return (values - np.asarray(mean).reshape(shape)) / np.asarray(std).reshape(shape)


def crop(values: np.ndarray, res: float, y0: float, x0: float, h: float, w: float) -> np.ndarray:
    """Pixels of the window ``[y0, y0 + h) x [x0, x0 + w)`` metres from the top-left corner;
    outside the array: NaN."""
    r0, c0 = round(y0 / res), round(x0 / res)
    nr, nc = round(h / res), round(w / res)
    out = np.full((*values.shape[:-2], nr, nc), np.nan)
    H, W = values.shape[-2:]
    rs, re = max(r0, 0), min(r0 + nr, H)
    cs, ce = max(c0, 0), min(c0 + nc, W)
    if rs < re and cs < ce:
        out[..., rs - r0:re - r0, cs - c0:ce - c0] = values[..., rs:re, cs:ce]
    return out


# -- direct model calls ---------------------------------------------------------------------


def direct(inputs: dict, dates: dict, patch_size: int, output: str = "patch", output_modality=None,
           model=None) -> np.ndarray:
    """One model call on one tile: ``inputs`` name -> normalised numpy (NaN = missing),
    ``dates`` name -> day of year. Returns the sample (channels last), float64."""
    model = model or tiny_model()
    batch = {}
    for name, x in inputs.items():
        x = np.asarray(x, dtype="float32")[None]
        valid = np.isfinite(x)
        if not valid.all():
            batch[f"{name}_mask"] = torch.from_numpy(valid)
        batch[name] = torch.from_numpy(np.where(valid, x, 0).astype("float32"))
        if dates.get(name) is not None:
            batch[f"{name}_dates"] = torch.as_tensor(np.asarray(dates[name], dtype="float32"))[None]
    with torch.inference_mode():
        y = model(batch, patch_size, output, output_modality)
    return y[0].double().numpy()


def reference(sensors: dict, extent_m, patch_size: int, tile_m, *, overlap: int = 0, output: str = "patch",
              output_modality=None, model=None) -> np.ndarray:
    """The whole embedding cube ``(features, y, x)`` by one direct model call per tile.

    ``sensors``: name -> ``(normalised values, day of year or None)`` on grids sharing the
    top-left corner; ``extent_m``: ``(height, width)`` of the cube.
    """
    model = model or tiny_model()
    th, tw = (tile_m, tile_m) if np.isscalar(tile_m) else tile_m
    spatial = [n for n in sensors if not MODALITIES[n].tile_token]
    if output == "tile":
        cell = (th, tw)
    elif output == "dense":
        output_modality = output_modality or spatial[0]
        cell = (MODALITIES[output_modality].token_m,) * 2
    else:
        cell = (patch_size, patch_size)
    shape = [math.ceil(round(e / c, 6)) for e, c in zip(extent_m, cell)]
    per_tile = (round(th / cell[0]), round(tw / cell[1]))
    out = None
    for ty in range(math.ceil(round(extent_m[0] / th, 6))):
        for tx in range(math.ceil(round(extent_m[1] / tw, 6))):
            inputs, dates = {}, {}
            for name, (values, days) in sensors.items():
                res = MODALITIES[name].resolution_m
                x = crop(values, res, ty * th - overlap, tx * tw - overlap, th + 2 * overlap, tw + 2 * overlap)
                if days is not None:  # dates without any valid value in the tile: left out
                    kept = np.isfinite(x).any(axis=(1, 2, 3))
                    x, days = x[kept], days[kept]
                if np.isfinite(x).any():
                    inputs[name], dates[name] = x, days
            if not any(n in spatial for n in inputs) or (output == "dense" and output_modality not in inputs):
                continue
            y = direct(inputs, dates, patch_size, output, output_modality, model)
            if out is None:
                out = np.full((y.shape[-1], *shape), np.nan)
            if output == "tile":
                out[:, ty, tx] = y
                continue
            halo = round(overlap / cell[0])
            core = y[halo:halo + per_tile[0], halo:halo + per_tile[1]]
            r0, c0 = ty * per_tile[0], tx * per_tile[1]
            rows, cols = min(per_tile[0], shape[0] - r0), min(per_tile[1], shape[1] - c0)
            out[:, r0:r0 + rows, c0:c0 + cols] = np.moveaxis(core[:rows, :cols], -1, 0)
    if output != "tile":
        valid = np.zeros(shape, dtype=bool)
        for name, (values, _) in sensors.items():
            if MODALITIES[name].tile_token or (output == "dense" and name != output_modality):
                continue
            res = MODALITIES[name].resolution_m
            for i in range(shape[0]):
                for j in range(shape[1]):
                    window = crop(values, res, i * cell[0], j * cell[1], cell[0], cell[1])
                    valid[i, j] |= bool(np.isfinite(window).any())
        out[:, ~valid] = np.nan
    return out


# -- cubes ----------------------------------------------------------------------------------


def node(values: np.ndarray, name: str, *, bands=None, times=None, res=None, origin=(600_000.0, 5_700_000.0),
         crs="EPSG:32631", attrs=None) -> xr.Dataset:
    """A DataTree node: a variable ``name`` with ``(time,) band, y, x`` on a grid from ``origin``."""
    res = res or MODALITIES[name].resolution_m
    ny, nx = values.shape[-2:]
    coords = {
        "band": list(bands or MODALITIES[name].bands),
        "y": origin[1] - (np.arange(ny) + 0.5) * res,
        "x": origin[0] + (np.arange(nx) + 0.5) * res,
    }
    dims = ("band", "y", "x")
    if times is not None:
        coords["time"] = np.asarray(times, dtype="datetime64[ns]")
        dims = ("time", *dims)
    da = xr.DataArray(values, dims=dims, coords=coords, name=name, attrs=attrs or {})
    ds = da.to_dataset()
    return ds.rio.write_crs(crs) if crs else ds


def worldcereal_tree(y=slice(None), x=slice(None)) -> xr.DataTree:
    """The WorldCereal preprocessed-inputs cube as xanysat takes it: ``/s2`` L2A DN and
    ``/s1-asc`` linear backscatter, both ``(time, band, y, x)`` at 10 m in EPSG:32631.

    S1 goes to the ``s1-asc`` row: its table says linear backscatter (TreeSatAI: VV ~0.11,
    VH ~0.03, ``model_factor`` 1.0 from gamma0 linear), which is what 10 ** (dB / 10) gives,
    whereas the ``s1`` row's statistics (means 3.3 and -3.7, stds ~40) fit no linear
    backscatter and its units are unconfirmed. WorldCereal composites both orbit directions
    monthly, so "ascending" is an approximation. ``s1-asc`` has no table statistics: the tests
    fit them with ``fit_normalization``. ``y``, ``x``: pixel slices of a part of the cube.
    """
    import pytest

    if not WORLDCEREAL.is_file():
        pytest.skip(f"WorldCereal fixture {WORLDCEREAL} not present (expected ../shared/fixtures beside the repo)")
    ds = xr.open_dataset(WORLDCEREAL, engine="h5netcdf").rename(t="time").isel(y=y, x=x)
    from pyproj import CRS

    crs = CRS.from_wkt(ds["crs"].attrs["crs_wkt"])
    s2_vars = [v for v in ds.data_vars if str(v).startswith("S2-L2A-")]
    s2 = (ds[s2_vars].to_dataarray("band").transpose("time", "band", "y", "x")
          .assign_coords(band=[v.removeprefix("S2-L2A-") for v in s2_vars]))
    # Keep the uint16 DN with their nodata marker: xanysat must mask it.
    s2 = s2.rename("s2").assign_attrs(nodata=WORLDCEREAL_NODATA)
    s1_dn = ds[["S1-SIGMA0-VV", "S1-SIGMA0-VH"]].to_dataarray("band").transpose("time", "band", "y", "x")
    s1_dn = s1_dn.where(s1_dn != WORLDCEREAL_NODATA).astype("float64")
    s1_db = 20 * np.log10(s1_dn) - 83
    s1 = (10 ** (s1_db / 10)).astype("float32").assign_coords(band=["VV", "VH"]).rename("s1-asc")
    nodes = {}
    for da in (s2, s1):
        da = da.drop_vars("crs", errors="ignore")
        da.attrs.pop("grid_mapping", None)
        nodes[da.name] = da.to_dataset().rio.write_crs(crs)
    return xr.DataTree.from_dict(nodes)
