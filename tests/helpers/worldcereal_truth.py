"""What the STAC tests share: the WorldCereal cube's grid and bands, its values read
independently with xarray (``truth``), the items a sample catalogue holds, and the warnings
filter of the STAC tests."""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from xanysat.stac.sample_catalog import WORLDCEREAL_NC

NODATA = 65535
WEST, NORTH = 664000.0, 5612120.0
X_CENTRES = WEST + 5 + 10 * np.arange(100)
Y_CENTRES = NORTH - 5 - 10 * np.arange(100)
S2_BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12"]  # no B8A in the cube
BOTH = ["sentinel-2-l2a", "sentinel-1-rtc"]
YEAR = "2020-11-01/2021-10-31"
MODEL = "untrained-tiny"


@contextlib.contextmanager
def quiet_stac_warnings():
    """The STAC tests' warnings filter (use as an autouse fixture's body)."""
    with warnings.catch_warnings():
        # affine/shapely deprecations inside odc-geo and stackstac; our own warnings are asserted
        # where they matter.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*units of the training data are unconfirmed")
        warnings.filterwarnings("ignore", message=".*clouds are not masked")
        warnings.filterwarnings("ignore", message=".*does not conform to")
        warnings.filterwarnings("ignore", message="All-NaN slice")  # S2 composites of December, January
        yield


@pytest.fixture(scope="module")
def truth() -> dict:
    """The NetCDF read with xarray: S2 DN as float with 65535 -> NaN, S1 DN, dates."""
    ds = xr.open_dataset(WORLDCEREAL_NC, engine="h5netcdf")
    dn = np.stack([ds[f"S2-L2A-{b}"].values for b in S2_BANDS], axis=1)
    s2 = np.where(dn == NODATA, np.nan, dn.astype("float32"))
    s1_dn = np.stack([ds[f"S1-SIGMA0-{p}"].values for p in ("VV", "VH")], axis=1)
    assert np.array_equal(ds["x"].values, X_CENTRES) and np.array_equal(ds["y"].values, Y_CENTRES)
    return {"s2": s2, "s1_dn": s1_dn, "time": ds["t"].values.astype("datetime64[ns]")}


def written_items(catalog: Path, collection: str | None = None) -> list[dict]:
    items = [json.loads(line) for line in (catalog / "items.ndjson").read_text().splitlines()]
    return [it for it in items if collection is None or it["collection"] == collection]
