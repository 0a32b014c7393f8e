"""A local STAC catalogue of real imagery, laid out like the public catalogues.

:func:`write_sample_catalog` turns real Sentinel data into single-band Cloud-Optimized
GeoTIFFs plus STAC Collections and Items that follow a public catalogue's conventions (asset
keys, ``eo:bands``, ``raster:bands``, ``proj:*`` fields, item properties), so that code
written against Planetary Computer or Earth Search can be tested, and demonstrated, offline.
:mod:`xanysat.stac.server` serves such a directory as a live STAC API.

Sources:

``"worldcereal"`` (shipped with xanysat, ``xanysat/data/worldcereal/``)
    The WorldCereal preprocessed-inputs cube: 100 x 100 px at 10 m in EPSG:32631, 12 monthly
    composites 2020-11 ... 2021-10, in **Planetary Computer** conventions. Each item's
    ``datetime`` is the first day of its month (the cube's time label) and
    ``start_datetime``/``end_datetime`` span the month, so a datetime search matches every
    month it overlaps. 2020-12 and 2021-01 hold only S2 nodata (kept, as in the cube).

    - ``sentinel-2-l2a``: one item per month, assets ``B02`` ... ``B12`` as present in the
      cube (no ``B8A``), uint16 DN exactly as stored, ``raster:bands`` nodata 65535 (the
      cube's nodata marker; real PC items use 0) and no scale/offset (PC items carry none).
      ``s2:processing_baseline`` is the ESA L2A baseline in operation at the start of the
      month (02.14, 03.00 or 03.01): the composites' source products are not recorded in the
      cube, but every date precedes baseline 04.00 and the DN carry no BOA offset, which is
      what the property tells a loader. No ``SCL`` asset: the cube has none.
    - ``sentinel-1-rtc``: one item per month, assets ``vv`` and ``vh``, float32 linear power
      converted from the cube's DN (dB = 20 log10(DN) - 83, linear = 10^(dB/10)), nodata
      -32768. The values are WorldCereal's monthly-mean **sigma0**, not PC's terrain-flattened
      gamma0, and the orbit direction is not recorded: items carry no ``sat:orbit_state``.

``"t29unu"`` (tests only; read from ``shared/fixtures/real/s2-l2a-t29unu``)
    A 256 x 256 px crop (60 m) of a real Sentinel-2A L2A product of 2022-10-05, processing
    baseline 04.00, in **Earth Search** conventions (``sentinel-2-l2a``): assets
    ``coastal``, ``blue``, ``green``, ``red``, ``rededge1``-``3``, ``nir08``, ``nir09``,
    ``swir16``, ``swir22`` (all 60 m; the 60 m product has no B08, so no ``nir``) and ``scl``
    (20 m), raw uint16 DN with nodata 0. ``raster:bands`` carry scale 0.0001 and offset
    ``BOA_ADD_OFFSET / BOA_QUANTIFICATION_VALUE`` = -0.1 read from the product metadata, and
    ``earthsearch:boa_offset_applied`` is **false**: the DN still include the +1000 offset
    (reflectance = (DN - 1000) / 10000), unlike the harmonised ``s3://sentinel-cogs`` pixels.

The two sources use different conventions for the same collection id ``sentinel-2-l2a``,
so one catalogue holds one of them: write them into different directories.

Asset hrefs are absolute ``file://`` URIs (GDAL, rasterio, odc-stac and stackstac read them),
so a written catalogue is not relocatable: write it where it will be used.

Layout of a written directory::

    catalog.json                              root catalogue (child links)
    items.ndjson                              every item, one JSON per line, no links
    <collection>/collection.json
    <collection>/<item id>/<item id>.json     item (links relative)
    <collection>/<item id>/<asset key>.tif    single-band COG per asset
"""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import rasterio
from rasterio.transform import Affine, array_bounds
from rasterio.warp import transform_geom
from rasterio.windows import Window

__all__ = [
    "S1_NODATA",
    "SOURCES",
    "T29UNU_SAFE",
    "T29UNU_WINDOW",
    "WORLDCEREAL_NC",
    "WORLDCEREAL_NODATA",
    "catalog_hrefs",
    "worldcereal_s1_linear",
    "write_sample_catalog",
]

WORLDCEREAL_NC = Path(__file__).parents[1] / "data" / "worldcereal" / "worldcereal_preprocessed_inputs.nc"
WORLDCEREAL_NODATA = 65535
"""Nodata marker of every WorldCereal variable (uint16)."""

SHARED_FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
T29UNU_SAFE = (SHARED_FIXTURES / "real" / "s2-l2a-t29unu"
               / "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE")
T29UNU_WINDOW = Window(col_off=768, row_off=1216, width=256, height=256)
"""The crop, in 60 m pixels of the 1830 x 1830 tile: about 27 % nodata, vegetation, clouds,
shadows and thin cirrus (SCL)."""

SOURCES = ("worldcereal", "t29unu")

STAC_VERSION = "1.0.0"
_COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

_EXT = {
    "eo": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "proj": "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "sat": "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "sar": "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
    "mgrs": "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "grid": "https://stac-extensions.github.io/grid/v1.0.0/schema.json",
    "item_assets": "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json",
    "classification": "https://stac-extensions.github.io/classification/v1.1.0/schema.json",
}

# Sentinel-2 MSI bands: centre wavelength and FWHM in micrometres (stactools sentinel2).
_S2_WAVELENGTHS = {
    "B01": (0.443, 0.027), "B02": (0.49, 0.098), "B03": (0.56, 0.045), "B04": (0.665, 0.038),
    "B05": (0.704, 0.019), "B06": (0.74, 0.018), "B07": (0.783, 0.028), "B08": (0.842, 0.145),
    "B8A": (0.865, 0.033), "B09": (0.945, 0.026), "B11": (1.61, 0.143), "B12": (2.19, 0.242),
}
_S2_TITLES = {
    "B01": "Coastal aerosol (band 1)", "B02": "Blue (band 2)", "B03": "Green (band 3)",
    "B04": "Red (band 4)", "B05": "Red edge 1 (band 5)", "B06": "Red edge 2 (band 6)",
    "B07": "Red edge 3 (band 7)", "B08": "NIR 1 (band 8)", "B8A": "NIR 2 (band 8A)",
    "B09": "NIR 3 (band 9)", "B11": "SWIR 1 (band 11)", "B12": "SWIR 2 (band 12)",
}
# Planetary Computer tags B05-B07 *and* B8A as rededge (STAC.md section 1).
_PC_COMMON = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge",
    "B06": "rededge", "B07": "rededge", "B08": "nir", "B8A": "rededge", "B09": "nir09",
    "B11": "swir16", "B12": "swir22",
}
# Earth Search: asset key = eo:bands name; B8A's common name is nir08.
_ES_KEYS = {
    "B01": ("coastal", "coastal"), "B02": ("blue", "blue"), "B03": ("green", "green"),
    "B04": ("red", "red"), "B05": ("rededge1", "rededge"), "B06": ("rededge2", "rededge"),
    "B07": ("rededge3", "rededge"), "B08": ("nir", "nir"), "B8A": ("nir08", "nir08"),
    "B09": ("nir09", "nir09"), "B11": ("swir16", "swir16"), "B12": ("swir22", "swir22"),
}
_SCL_CLASSES = (
    "no_data", "saturated_or_defective", "dark_area_pixels", "cloud_shadows", "vegetation",
    "not_vegetated", "water", "unclassified", "cloud_medium_probability",
    "cloud_high_probability", "thin_cirrus", "snow",
)
# ESA Sentinel-2 L2A processing baselines by sensing date (Copernicus Data Space
# documentation, "Sentinel-2 L2A Baselines"; 03.01 from the L1C/L2A 2021-06-30 change).
_L2A_BASELINES = (("2020-02-04", "02.14"), ("2021-03-30", "03.00"), ("2021-06-30", "03.01"),
                  ("2022-01-25", "04.00"))

# WorldCereal S1 integer encoding (openeo-gfmap compress_backscatter_uint16).
_S1_DB_OFFSET = 83.0
S1_NODATA = -32768.0


CATALOG_ID = "xanysat-sample"
"""The root catalogue's id: how ``write_sample_catalog`` knows a directory it wrote before."""


@dataclass
class _Asset:
    key: str
    data: np.ndarray
    transform: Affine
    nodata: float
    fields: dict


def write_sample_catalog(directory: str | Path, *, sources: Sequence[str] = ("worldcereal",)) -> Path:
    """Write COGs and a STAC catalogue of real imagery into ``directory``; return it.

    Args:
        directory: created if missing; the collections an earlier call wrote there are
            deleted first.
        sources: any of :data:`SOURCES` (see the module docstring). ``"t29unu"`` needs the
            shared test fixtures (``FileNotFoundError`` otherwise). Sources with different
            conventions for the same collection cannot share a directory (``ValueError``).

    Returns:
        ``directory`` as an absolute :class:`~pathlib.Path`; it holds ``catalog.json``,
        ``items.ndjson`` and one folder per collection (see the module docstring).
        :func:`catalog_hrefs` lists what a STAC API server should load.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     root = write_sample_catalog(tmp)
        ...     print(sorted(p.parent.name for p in root.glob("*/collection.json")),
        ...           len((root / "items.ndjson").read_text().splitlines()))
        ['sentinel-1-rtc', 'sentinel-2-l2a'] 24
    """
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise ValueError(f"unknown sources {unknown or list(sources)}; choose from {SOURCES}")
    if len(set(sources)) != len(sources):
        raise ValueError(f"duplicate sources in {list(sources)}")
    if "worldcereal" in sources and "t29unu" in sources:
        raise ValueError(
            "'worldcereal' (Planetary Computer conventions) and 't29unu' (Earth Search "
            "conventions) both write collection 'sentinel-2-l2a' with different asset keys: "
            "write them into separate directories"
        )
    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    _remove_previous(root)

    collections: dict[str, tuple[dict, list[dict]]] = {}
    for source in sources:
        builder = {"worldcereal": _worldcereal, "t29unu": _t29unu}[source]
        for collection, items in builder(root):
            collections[collection["id"]] = (collection, items)

    _write_json(root / "catalog.json", {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": CATALOG_ID,
        "title": "xanysat sample catalogue",
        "description": "Real Sentinel imagery as single-band COGs, laid out like public STAC "
                       f"catalogues; written by xanysat.stac.sample_catalog from {', '.join(sources)}.",
        "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"}]
        + [{"rel": "child", "href": f"./{cid}/collection.json", "type": "application/json"}
           for cid in collections],
    })
    lines = []
    for cid, (collection, items) in collections.items():
        collection["links"] = [
            {"rel": "root", "href": "../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
        ] + [{"rel": "item", "href": f"./{it['id']}/{it['id']}.json", "type": "application/geo+json"}
             for it in items] + collection.get("links", [])
        _write_json(root / cid / "collection.json", collection)
        for item in items:
            lines.append(json.dumps(item, separators=(",", ":")))
            item = dict(item, links=[
                {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
                {"rel": "parent", "href": "../collection.json", "type": "application/json"},
                {"rel": "collection", "href": "../collection.json", "type": "application/json"},
            ])
            _write_json(root / cid / item["id"] / f"{item['id']}.json", item)
    (root / "items.ndjson").write_text("\n".join(lines) + "\n")
    return root


def _remove_previous(root: Path) -> None:
    """Delete what an earlier call wrote into ``root`` (its collections), so that no stale
    collection is left beside the new ones. A ``catalog.json`` this module did not write (another
    catalogue) is refused: nothing of it is deleted or overwritten."""
    catalog = root / "catalog.json"
    if not catalog.is_file():
        return
    try:
        previous = json.loads(catalog.read_text())
    except ValueError:
        previous = None
    if not isinstance(previous, dict) or previous.get("id") != CATALOG_ID:
        raise ValueError(f"{root} holds a catalog.json not written by write_sample_catalog (its id is not "
                         f"{CATALOG_ID!r}): it is left alone. Write the sample catalogue into a new directory.")
    links = previous.get("links", [])
    for link in links:
        if link.get("rel") == "child":
            folder = (root / link["href"]).resolve().parent
            if folder.parent == root and (folder / "collection.json").is_file():
                shutil.rmtree(folder)
    (root / "items.ndjson").unlink(missing_ok=True)


def catalog_hrefs(directory: str | Path) -> list[str]:
    """What a STAC API server loads from a catalogue written by :func:`write_sample_catalog`:
    every ``*/collection.json`` (sorted), then ``items.ndjson``, as local paths.

    Args:
        directory: the catalogue's root.

    Returns:
        The paths, collections first (a server must know a collection before its items).

    Raises:
        FileNotFoundError: ``directory`` holds no collection or no ``items.ndjson``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     for name in ("sentinel-2-l2a", "sentinel-1-rtc"):
        ...         (Path(tmp) / name).mkdir()
        ...         _ = (Path(tmp) / name / "collection.json").write_text("{}")
        ...     _ = (Path(tmp) / "items.ndjson").write_text("")
        ...     [Path(h).relative_to(tmp).as_posix() for h in catalog_hrefs(tmp)]
        ['sentinel-1-rtc/collection.json', 'sentinel-2-l2a/collection.json', 'items.ndjson']
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     catalog_hrefs(tmp)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        FileNotFoundError: ... holds no */collection.json and items.ndjson: not a catalogue written by write_sample_catalog
    """
    root = Path(directory)
    collections = sorted(root.glob("*/collection.json"))
    items = root / "items.ndjson"
    if not collections or not items.is_file():
        raise FileNotFoundError(f"{root} holds no */collection.json and items.ndjson: "
                                "not a catalogue written by write_sample_catalog")
    return [str(p) for p in collections] + [str(items)]


# -- WorldCereal: Planetary Computer conventions --------------------------------------------


def _worldcereal(root: Path) -> Iterable[tuple[dict, list[dict]]]:
    with h5py.File(WORLDCEREAL_NC, "r") as nc:
        days = nc["t"][()].astype("int64")
        units = nc["t"].attrs["units"].decode()
        x = nc["x"][()]
        y = nc["y"][()]
        wkt = nc["crs"].attrs["crs_wkt"].decode()
        variables = {name: nc[name][()].view("uint16") for name in nc
                     if name.startswith(("S2-L2A-", "S1-SIGMA0-"))}
    match = re.fullmatch(r"days since (\d{4}-\d{2}-\d{2})", units)
    assert match, f"unexpected time units {units!r} in {WORLDCEREAL_NC}"
    dates = np.datetime64(match.group(1)) + days.astype("timedelta64[D]")
    epsg = rasterio.crs.CRS.from_wkt(wkt).to_epsg()
    res = float(x[1] - x[0])
    transform = Affine(res, 0.0, float(x[0]) - res / 2, 0.0, -res, float(y[0]) + res / 2)
    assert np.allclose(np.diff(y), -res), "WorldCereal y axis is not regular and north-up"

    s2_bands = sorted(v.removeprefix("S2-L2A-") for v in variables if v.startswith("S2-L2A-"))
    provider = {"name": "ESA WorldCereal", "roles": ["producer", "processor", "licensor"],
                "url": "https://github.com/WorldCereal/worldcereal-classification"}
    note = ("Monthly composite from the WorldCereal preprocessed-inputs test cube "
            "(xanysat/data/worldcereal/SOURCE.md), rewritten by xanysat.stac.sample_catalog.")
    s2_items, s1_items = [], []
    for t, date in enumerate(dates):
        day = str(date)
        month_end = str((date.astype("datetime64[M]") + 1).astype("datetime64[D]") - 1)
        when = {"datetime": f"{day}T00:00:00Z", "start_datetime": f"{day}T00:00:00Z",
                "end_datetime": f"{month_end}T23:59:59Z"}
        stamp = day.replace("-", "")

        assets = []
        for band in s2_bands:
            centre, fwhm = _S2_WAVELENGTHS[band]
            assets.append(_Asset(band, variables[f"S2-L2A-{band}"][t], transform, WORLDCEREAL_NODATA, {
                "title": f"Band {band.lstrip('B0')} - {_S2_TITLES[band].split(' (')[0]} - {res:g}m",
                "gsd": res,
                "eo:bands": [{"name": band, "common_name": _PC_COMMON[band],
                              "description": _S2_TITLES[band], "center_wavelength": centre,
                              "full_width_half_max": fwhm}],
                "raster:bands": [{"nodata": WORLDCEREAL_NODATA, "data_type": "uint16",
                                  "spatial_resolution": res}],
            }))
        s2_items.append(_item(
            root, "sentinel-2-l2a", f"S2_MSIL2A_{stamp}_WORLDCEREAL_MONTHLY_MEDIAN", epsg, assets,
            properties={
                **when, "constellation": "Sentinel 2", "instruments": ["msi"],
                "s2:processing_baseline": _l2a_baseline(day), "s2:product_type": "S2MSI2A",
                "description": note + " Median of cloud-masked L2A acquisitions; 20 m bands "
                "resampled to 10 m; s2:processing_baseline is the ESA baseline operational at "
                "the start of the month (source products not recorded); DN without BOA offset; "
                "nodata 65535.",
            },
            extensions=("eo", "proj", "raster"), pc=True))

        assets = []
        for pol in ("VV", "VH"):
            dn = variables[f"S1-SIGMA0-{pol}"][t]
            assets.append(_Asset(pol.lower(), worldcereal_s1_linear(dn), transform, S1_NODATA, {
                "title": f"{pol}: {'vertical transmit, vertical receive' if pol == 'VV' else 'vertical transmit, horizontal receive'}",
                "description": f"Monthly mean sigma0 backscatter (linear power), {pol} "
                               "polarisation, from WorldCereal's DN: 10 ** ((20 log10(DN) - 83) / 10). "
                               "Not terrain-flattened gamma0.",
                "raster:bands": [{"nodata": S1_NODATA, "data_type": "float32",
                                  "spatial_resolution": res}],
            }))
        s1_items.append(_item(
            root, "sentinel-1-rtc", f"S1_IW_SIGMA0_{stamp}_WORLDCEREAL_MONTHLY_MEAN", epsg, assets,
            properties={
                **when, "constellation": "Sentinel-1", "sar:instrument_mode": "IW",
                "sar:frequency_band": "C", "sar:center_frequency": 5.405,
                "sar:polarizations": ["VV", "VH"], "sar:product_type": "GRD",
                "description": note + " Mean of sigma0 (GRD, openEO sar_backscatter at 20 m, "
                "upsampled to 10 m); one orbit direction, which is not recorded.",
            },
            extensions=("sar", "proj", "raster"), pc=True))

    yield _collection(
        "sentinel-2-l2a", s2_items, title="Sentinel-2 Level-2A (WorldCereal monthly composites)",
        description="Planetary Computer layout: assets B02-B12 as present (no B8A), uint16 DN, "
        "no scale/offset metadata (reflectance = DN / 10000), nodata 65535. " + note,
        license="MIT", providers=[provider], extensions=("eo", "raster", "item_assets"),
        summaries={"constellation": ["Sentinel 2"], "instruments": ["msi"], "gsd": [res]}), s2_items
    yield _collection(
        "sentinel-1-rtc", s1_items, title="Sentinel-1 backscatter (WorldCereal monthly sigma0)",
        description="Planetary Computer sentinel-1-rtc layout: assets vv, vh, float32 linear "
        "power, nodata -32768. The values are sigma0 monthly means, not PC's RTC gamma0. " + note,
        license="MIT", providers=[provider], extensions=("sar", "raster", "item_assets"),
        summaries={"constellation": ["Sentinel-1"], "sar:instrument_mode": ["IW"],
                   "sar:polarizations": [["VV", "VH"]], "sar:frequency_band": ["C"]}), s1_items


def worldcereal_s1_linear(dn: np.ndarray) -> np.ndarray:
    """WorldCereal S1 DN (uint16, 65535 nodata) -> float32 linear power, nodata -32768.

    dB = 20 log10(DN) - 83 and linear = 10^(dB/10), computed in float64 (as
    ``tests/helpers/cubes.py`` does) and rounded once to float32.

    Args:
        dn: WorldCereal ``S1-SIGMA0-*`` values (uint16).

    Returns:
        float32 linear backscatter, ``S1_NODATA`` where ``dn`` is nodata.

    Example:
        >>> linear = worldcereal_s1_linear(np.array([10000, 65535], dtype="uint16"))
        >>> linear.dtype, [round(float(v), 4) for v in linear]
        (dtype('float32'), [0.5012, -32768.0])
    """
    dn = np.asarray(dn)
    valid = dn != WORLDCEREAL_NODATA
    with np.errstate(divide="ignore"):
        db = 20 * np.log10(np.where(valid, dn, 1).astype("float64")) - _S1_DB_OFFSET
    return np.where(valid, 10 ** (db / 10), S1_NODATA).astype("float32")


def _l2a_baseline(day: str) -> str:
    """ESA's operational L2A processing baseline on ``day`` (ISO date), 2020-02-04 onwards."""
    if day < _L2A_BASELINES[0][0]:
        raise ValueError(f"no baseline table before {_L2A_BASELINES[0][0]}: {day}")
    return [baseline for start, baseline in _L2A_BASELINES if day >= start][-1]


# -- T29UNU: Earth Search conventions -------------------------------------------------------


def _t29unu(root: Path) -> Iterable[tuple[dict, list[dict]]]:
    safe = T29UNU_SAFE
    if not (safe / "MTD_MSIL2A.xml").is_file():
        raise FileNotFoundError(f"Sentinel-2 product {safe} not found (shared test fixtures)")
    meta = _safe_metadata(safe)
    granule = next((safe / "GRANULE").iterdir())
    images = granule / "IMG_DATA"
    win = T29UNU_WINDOW
    assets = []
    epsg = None
    for band, (key, common) in _ES_KEYS.items():
        files = list((images / "R60m").glob(f"*_{band}_60m.jp2"))
        if not files:
            continue  # B08 has no 60 m product
        with rasterio.open(files[0]) as src:
            data = src.read(1, window=win)
            transform = src.window_transform(win)
            epsg = src.crs.to_epsg()
        centre, fwhm = _S2_WAVELENGTHS[band]
        scale, offset = meta["scale_offset"][band]
        assets.append(_Asset(key, data, transform, 0, {
            "title": f"{_S2_TITLES[band]} - 60m",
            "eo:bands": [{"name": key, "common_name": common, "description": _S2_TITLES[band],
                          "center_wavelength": centre, "full_width_half_max": fwhm}],
            "gsd": 60,
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "bits_per_sample": 15,
                              "spatial_resolution": 60, "scale": scale, "offset": offset}],
        }))
    scl_file = next((images / "R20m").glob("*_SCL_20m.jp2"))
    factor = 3  # 60 m -> 20 m
    scl_win = Window(win.col_off * factor, win.row_off * factor, win.width * factor, win.height * factor)
    with rasterio.open(scl_file) as src:
        scl = src.read(1, window=scl_win)
        scl_transform = src.window_transform(scl_win)
    assets.append(_Asset("scl", scl, scl_transform, 0, {
        "title": "Scene classification map (SCL)",
        "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}],
        "classification:classes": [{"value": v, "name": n} for v, n in enumerate(_SCL_CLASSES)],
    }))
    tile = meta["tile"]  # "29UNU"
    date = meta["datetime"][:10].replace("-", "")
    item = _item(
        root, "sentinel-2-l2a", f"S{meta['spacecraft'][-2:].upper()}_{tile}_{date}_0_L2A", epsg,
        assets,
        properties={
            "datetime": meta["datetime"], "platform": meta["spacecraft"].lower(),
            "constellation": "sentinel-2", "instruments": ["msi"],
            "eo:cloud_cover": meta["cloud_cover"],
            "s2:nodata_pixel_percentage": meta["nodata_percentage"],
            "s2:processing_baseline": meta["baseline"], "s2:product_type": "S2MSI2A",
            "s2:product_uri": meta["product_uri"], "s2:granule_id": meta["granule_id"],
            "s2:datatake_id": meta["datatake_id"],
            "earthsearch:boa_offset_applied": False,
            "sat:orbit_state": meta["orbit_direction"].lower(),
            "sat:relative_orbit": meta["relative_orbit"],
            "mgrs:utm_zone": int(tile[:2]), "mgrs:latitude_band": tile[2],
            "mgrs:grid_square": tile[3:], "grid:code": f"MGRS-{tile}",
            "description": f"{win.width} x {win.height} px crop (60 m; col {win.col_off}, row "
            f"{win.row_off}) of {meta['product_uri']}, rewritten as COGs by xanysat.stac.sample_catalog. "
            "Raw DN including the +1000 BOA offset of baseline 04.00; eo:cloud_cover and "
            "s2:nodata_pixel_percentage are those of the whole tile.",
        },
        extensions=("eo", "proj", "raster", "sat", "mgrs", "grid", "classification"), pc=False)
    yield _collection(
        "sentinel-2-l2a", [item], title="Sentinel-2 Level-2A (Earth Search layout, one crop)",
        description="Earth Search v1 layout: asset keys coastal ... swir22 and scl, eo:bands "
        "names equal to the keys, raster:bands scale 0.0001 and offset from the product's "
        "BOA_ADD_OFFSET. Source: stactools-packages/sentinel2 test data (Apache-2.0), "
        "Copernicus Sentinel data 2022.",
        license="proprietary", extensions=("eo", "raster", "item_assets"),
        providers=[{"name": "ESA", "roles": ["producer", "licensor"],
                    "url": "https://sentinel.esa.int/web/sentinel/missions/sentinel-2"}],
        summaries={"constellation": ["sentinel-2"], "instruments": ["msi"]}), [item]


def _safe_metadata(safe: Path) -> dict:
    """What the items need from the product metadata (MTD_MSIL2A.xml, MTD_TL.xml)."""
    product = ET.parse(safe / "MTD_MSIL2A.xml").getroot()

    def text(root, tag):
        node = root.find(f".//{tag}")
        assert node is not None and node.text, f"{tag} missing from the metadata of {safe}"
        return node.text.strip()

    quantification = float(text(product, "BOA_QUANTIFICATION_VALUE"))
    band_ids = {int(e.get("bandId")): e.get("physicalBand")
                for e in product.iter("Spectral_Information")}
    offsets = {int(e.get("band_id")): float(e.text) for e in product.iter("BOA_ADD_OFFSET")}
    scale_offset = {}
    for index, physical in band_ids.items():
        band = physical if physical == "B8A" else f"B{int(physical[1:]):02d}"
        # stactools rule: offset = BOA_ADD_OFFSET / quantification (0 when absent).
        scale_offset[band] = (1 / quantification, offsets.get(index, 0.0) / quantification)
    granule_meta = next((safe / "GRANULE").glob("*/MTD_TL.xml"))
    tile_meta = ET.parse(granule_meta).getroot()
    sensing = text(tile_meta, "SENSING_TIME")
    tile_id = text(tile_meta, "TILE_ID")
    datatake = product.find(".//Datatake")
    assert datatake is not None
    return {
        "product_uri": text(product, "PRODUCT_URI").removesuffix(".SAFE"),
        "baseline": text(product, "PROCESSING_BASELINE"),
        "spacecraft": text(product, "SPACECRAFT_NAME"),  # "Sentinel-2A"
        "orbit_direction": text(product, "SENSING_ORBIT_DIRECTION"),
        "relative_orbit": int(text(product, "SENSING_ORBIT_NUMBER")),
        "datatake_id": datatake.get("datatakeIdentifier"),
        "cloud_cover": float(text(product, "Cloud_Coverage_Assessment")),
        "nodata_percentage": float(text(product, "NODATA_PIXEL_PERCENTAGE")),
        "datetime": sensing.replace("+00:00", "Z"),
        "granule_id": tile_id,
        "tile": re.search(r"_T(\d{2}[A-Z]{3})_", tile_id).group(1),
        "scale_offset": scale_offset,
    }


# -- writing --------------------------------------------------------------------------------


def _item(root: Path, collection: str, item_id: str, epsg: int, assets: list[_Asset], *,
          properties: dict, extensions: Sequence[str], pc: bool) -> dict:
    """Write the assets as COGs under ``root/collection/item_id/`` and return the item dict
    (links empty: the caller adds them)."""
    folder = root / collection / item_id
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    footprint = None
    for asset in assets:
        path = folder / f"{asset.key}.tif"
        _write_cog(path, asset.data, transform=asset.transform, epsg=epsg, nodata=asset.nodata)
        height, width = asset.data.shape
        bounds = array_bounds(height, width, asset.transform)  # (west, south, east, north)
        fields = {
            "href": path.as_uri(), "type": _COG_TYPE, "roles": ["data"], **asset.fields,
            "proj:shape": [height, width],
            "proj:transform": [float(v) for v in tuple(asset.transform)[:6]],
        }
        if pc:
            fields["proj:bbox"] = [bounds[0], bounds[1], bounds[2], bounds[3]]
        out[asset.key] = fields
        footprint = footprint or bounds
    west, south, east, north = footprint
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    geometry = transform_geom(f"EPSG:{epsg}", "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    geometry = {"type": "Polygon", "coordinates": [[[round(x, 7), round(y, 7)] for x, y in
                                                     geometry["coordinates"][0]]]}
    lons = [p[0] for p in geometry["coordinates"][0]]
    lats = [p[1] for p in geometry["coordinates"][0]]
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [_EXT[e] for e in extensions],
        "id": item_id,
        "collection": collection,
        "geometry": geometry,
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "properties": {**properties, "proj:epsg": epsg},
        "links": [],
        "assets": out,
    }


def _collection(cid: str, items: list[dict], *, title: str, description: str, license: str,
                providers: list[dict], extensions: Sequence[str], summaries: dict) -> dict:
    bboxes = np.array([it["bbox"] for it in items])
    times = sorted(it["properties"].get("start_datetime", it["properties"]["datetime"]) for it in items)
    ends = sorted(it["properties"].get("end_datetime", it["properties"]["datetime"]) for it in items)
    item_assets = {}
    for item in items:
        for key, asset in item["assets"].items():
            item_assets.setdefault(key, {k: v for k, v in asset.items()
                                         if k in ("type", "roles", "title", "eo:bands", "raster:bands", "gsd")})
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [_EXT[e] for e in extensions],
        "id": cid,
        "title": title,
        "description": description,
        "license": license,
        "providers": providers,
        "extent": {
            "spatial": {"bbox": [[float(bboxes[:, 0].min()), float(bboxes[:, 1].min()),
                                  float(bboxes[:, 2].max()), float(bboxes[:, 3].max())]]},
            "temporal": {"interval": [[times[0], ends[-1]]]},
        },
        "summaries": summaries,
        "item_assets": item_assets,
        "links": [],
    }


def _write_cog(path: Path, data: np.ndarray, *, transform: Affine, epsg: int, nodata: float) -> None:
    """One band as a Cloud-Optimized GeoTIFF (GDAL COG driver, DEFLATE, 256 px tiles;
    overviews where the image exceeds one tile)."""
    predictor = "3" if data.dtype.kind == "f" else "2"
    profile = {
        "driver": "COG", "width": data.shape[1], "height": data.shape[0], "count": 1,
        "dtype": data.dtype.name, "crs": f"EPSG:{epsg}", "transform": transform,
        "nodata": nodata, "compress": "DEFLATE", "predictor": predictor, "blocksize": 256,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")
