"""The sensor table: one row per AnySat sensor, plain data, no torch.

Everything that depends on a sensor (projectors, validation, STAC band mapping, synthetic
data, test parametrisation) reads this table; nothing else hard-codes sensor facts.
STAC facts come from ``shared/STAC.md``; where it says "unconfirmed", the notes say so too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StacSource:
    """How one public STAC catalogue serves a sensor.

    Physical value = (DN + processing-baseline offset, if any) * scale + offset, in ``units``;
    multiply by ``model_factor`` to get the units the projector was trained on.

    Example:
        >>> src = MODALITIES["s2"].stac[0]
        >>> src.catalog, src.collection, src.assets[:3]
        ('planetary-computer', 'sentinel-2-l2a', ('B02', 'B03', 'B04'))
        >>> src.scale * src.model_factor  # DN -> reflectance -> training units
        1.0
    """

    catalog: str
    """``"planetary-computer"``, ``"earth-search"``, ``"cdse"`` or ``"usgs"``."""
    collection: str
    assets: tuple[str | None, ...]
    """Asset keys in projector band order; ``None`` for a band derived from the others (see
    ``Modality.derived_bands``) or, only where ``analysis_ready`` is False, a band the
    collection does not serve."""
    scale: float = 1.0
    offset: float = 0.0
    """What a loader should apply, which is not always what the metadata says (see notes)."""
    nodata: float | None = None
    qa_asset: str | None = None
    notes: str = ""
    units: str = "DN"
    """What ``DN * scale + offset`` is: ``"surface reflectance"``, ``"gamma0 linear"``, ...."""
    model_factor: float | None = None
    """Physical value x ``model_factor`` = training units (s2: reflectance x 1e4 = L2A DN).
    ``None`` where the units of the training data are unconfirmed."""
    processing_baseline_offset: float | None = None
    """Sentinel-2 only: DN to add when ``s2:processing_baseline >= "04.00"`` and the
    metadata does not carry the offset (PC: -1000). ``None``: nothing to add."""
    query: tuple[tuple[str, str], ...] = ()
    """Item property filters, ``(property, value)`` pairs that must be equal."""
    asset_bands: tuple[int, ...] = ()
    """1-based band inside each asset, parallel to ``assets``, for multi-band assets (NAIP's
    one 4-band COG); empty when every asset holds one band."""
    analysis_ready: bool = True
    """False where the collection cannot feed the projector without processing xanysat does
    not do (GRD calibration and geocoding; Level-2 data for a Level-1 projector)."""


@dataclass(frozen=True)
class NormStats:
    """Per-band normalisation ``(x - mean) / std`` in projector band order.

    Attributes:
        mean: per-band means, in projector band order.
        std: per-band standard deviations, same order.
        source: where the statistics come from.

    Example:
        >>> stats = MODALITIES["s2"].norm
        >>> len(stats.mean) == len(stats.std) == MODALITIES["s2"].n_bands
        True
        >>> Modality("x", ("a",), 10.0, 1, True, norm=NormStats((0.0, 1.0), (1.0, 1.0), "demo"))
        Traceback (most recent call last):
            ...
        ValueError: sensor 'x' has 1 bands ('a',); inconsistent: norm stats of length 2/2
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str


@dataclass(frozen=True)
class Modality:
    """One AnySat sensor.

    Attributes:
        name: key of the sensor in model inputs (``"s2"``) and of its projector.
        bands: band names in the order the projector expects them.
        resolution_m: pixel size (GSD) the weights were trained at.
        subpatch_px: pixels per token side (the VHR conv kernel; 1 for time series).
        time_series: input is ``(B, T, C, H, W)`` with ``<name>_dates``; else ``(B, C, H, W)``.
        reduce_scale: LTAE projectors only: the patch scale (in 10 m units) is divided by it
            to get pixels per patch side (30 m sensors: 3; MODIS: 12).
        date_period: period of the LTAE temporal encoding, in days.
        in_norm: LTAE input GroupNorm (Sentinel-2 only).
        dropout: projector dropout used in training (no effect at inference).
        tile_token: the sensor gives one token per tile, not per patch (MODIS).
        derived_bands: band name -> description of how loaders compute it.
        norm: default normalisation statistics, or ``None`` where none are known.
        stac: public STAC catalogues serving this sensor, the most usable first.
        band_aliases: other names users give bands (lower case) -> the projector bands they
            may mean; more than one band marks an ambiguous name, which ``band_index``
            rejects. Band names and STAC asset keys are aliases without being listed here.

    Example:
        >>> naip = MODALITIES["naip"]
        >>> naip.bands, naip.n_bands, naip.is_vhr
        (('R', 'G', 'B', 'NIR'), 4, True)
        >>> naip.token_m  # 1.25 m pixels, 8 pixels per token side
        10.0
        >>> MODALITIES["s2"].time_series
        True
    """

    name: str
    bands: tuple[str, ...]
    resolution_m: float
    subpatch_px: int
    time_series: bool
    description: str = ""
    reduce_scale: int = 1
    date_period: int = 367
    in_norm: bool = False
    dropout: float = 0.2
    tile_token: bool = False
    derived_bands: dict[str, str] = field(default_factory=dict)
    norm: NormStats | None = None
    stac: tuple[StacSource, ...] = ()
    band_aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = set(self.bands)
        problems = [f"derived band {b!r}" for b in self.derived_bands if b not in known]
        problems += [
            f"alias {a!r} -> {b!r}" for a, bs in self.band_aliases.items() for b in bs if b not in known
        ]
        for s in self.stac:
            if len(s.assets) != self.n_bands or (s.asset_bands and len(s.asset_bands) != self.n_bands):
                problems.append(f"{s.catalog}/{s.collection}: {len(s.assets)} assets")
        if self.norm is not None and not len(self.norm.mean) == len(self.norm.std) == self.n_bands:
            problems.append(f"norm stats of length {len(self.norm.mean)}/{len(self.norm.std)}")
        if problems:
            raise ValueError(
                f"sensor {self.name!r} has {self.n_bands} bands {self.bands}; inconsistent: "
                + "; ".join(problems)
            )

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    @property
    def token_m(self) -> float:
        """Ground size of one token (sub-patch) side in metres."""
        return self.resolution_m * self.subpatch_px

    @property
    def is_vhr(self) -> bool:
        """Single-date very-high-resolution image with a conv + MLP projector."""
        return not self.time_series


_S1_RATIO = "VV / (VH + 1e-10), clamped to [-1e4, 1e4] (official loaders)"
_ALOS_RATIO = "HH / (HV + 1e-10), clamped to [-1e4, 1e4] (official PLANTED loader)"

_TREESATAI_DEMO = "TreeSatAI statistics from the official demo.ipynb (SPEC section 2)"

_RGBN_ALIASES = {"red": ("R",), "green": ("G",), "blue": ("B",), "nir": ("NIR",)}

# -- Sentinel-2 ----------------------------------------------------------------------------

_S2_TRAINING = (
    "Training data are L2A DN = reflectance x 1e4 on the pre-04.00 scale (no +1000 BOA offset); "
    "the loader must deliver exactly that. "
)
_S2 = (
    StacSource(
        "planetary-computer", "sentinel-2-l2a",
        ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"),
        scale=1e-4, nodata=0, qa_asset="SCL", units="surface reflectance", model_factor=1e4,
        processing_baseline_offset=-1000.0,
        notes=_S2_TRAINING
        + "PC has no scale/offset metadata; the values here are hard-coded. Keep the uint16 DN; "
        "for items with s2:processing_baseline >= '04.00' mask nodata 0 first, then clip at 1000 "
        "and subtract 1000. Key on the baseline, not the date: Collection-1 reprocessed items "
        "(baseline 05.xx) of pre-2022 dates carry the offset too, which the PC notebook's "
        "2022-01-25 date cutoff misses. B05-B07, B8A, B11, B12 are 20 m: resample to 10 m. PC "
        "tags B05-B07 and B8A all 'rededge': select by asset key. Items reprocessed by Esri with "
        "Sen2Cor 02.12 (granule id contains 'ESRI') can show artefacts (PlanetaryComputer#291). "
        "Hrefs need SAS signing; tokens last about 45 min.",
    ),
    StacSource(
        "earth-search", "sentinel-2-l2a",
        ("blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "swir16", "swir22"),
        scale=1e-4, offset=0.0, nodata=0, qa_asset="scl", units="surface reflectance",
        model_factor=1e4,
        notes=_S2_TRAINING
        + "The pixels are already harmonised (s3://sentinel-cogs applies the BOA offset; "
        "rslearn PR #501), yet raster:bands says offset -0.1 even when "
        "earthsearch:boa_offset_applied is true. offset is 0.0 here on purpose: use the raw DN as "
        "the model input and do NOT apply the metadata offset (stackstac applies raster:bands by "
        "default: rescale=False). The flag itself is wrong for some 2022 and 2025 scenes "
        "(earth-search#66, #71) and the ES docs say to apply any non-zero offset, so this is not "
        "settled: check dark-pixel statistics when in doubt. eo:bands names equal the asset keys; "
        "B8A's common name is nir08. Scenes crossing the antimeridian are missing. JP2 twins "
        "('*-jp2') are on s3://sentinel-s2-l2a. The Collection-1 sentinel-2-c1-l2a (offset "
        "carried in raster:bands, not applied to pixels; asset keys unconfirmed) is not tabulated.",
    ),
    StacSource(
        "cdse", "sentinel-2-l2a",
        ("B02_10m", "B03_10m", "B04_10m", "B05_20m", "B06_20m", "B07_20m", "B08_10m", "B8A_20m",
         "B11_20m", "B12_20m"),
        scale=1e-4, offset=-0.1, nodata=0, qa_asset="SCL_20m", units="surface reflectance",
        model_factor=1e4,
        notes=_S2_TRAINING
        + "scale/offset are those of a processing:version 05.11 item (asset-level raster:scale "
        "and raster:offset, STAC 1.1); (DN * 1e-4 - 0.1) * 1e4 = DN - 1000. Read them per item: "
        "whether older-baseline items carry offset 0 is unconfirmed. odc-stac does not apply "
        "them (odc-stac#55). B05-B07 have no 10 m asset: resample the 20 m ones. JP2 on "
        "s3://eodata; needs CDSE S3 or OIDC credentials (auth:refs). Only proj:code, no "
        "proj:epsg: stackstac cannot read it (stackstac#262), odc-stac needs the #187 fix. "
        "Common names rededge071/075/078 and nir08.",
    ),
)

# -- Sentinel-1 ----------------------------------------------------------------------------

_S1_RTC_NOTES = (
    "Terrain-flattened gamma0 (Catalyst), linear power, float32, 10 m, UTM. Do not convert to "
    "dB (the PC notebook's 10*log10 is for display). Item proj:transform/proj:bbox went stale "
    "after a reprocessing: trust the asset's own georeferencing (PlanetaryComputer#417). "
    "Reading needs a PC account (SAS tokens). No ratio asset: compute it (derived_bands). "
)
_S1_GRD_NOTES = (
    "Not analysis ready: GRD amplitude DN in radar geometry, referenced by GCPs; the advertised "
    "transform is derived from the bbox and silently mis-places pixels (titiler-openeo#338, "
    "PlanetaryComputer#272); calibration and terrain correction are needed. Use "
    "sentinel-1-rtc. CDSE sentinel-1-grd (uint16 amplitude COGs) has unconfirmed asset keys. "
)


def _s1_sources(assets: tuple[str | None, ...], *, query: tuple[tuple[str, str], ...],
                model_factor: float | None, training: str) -> tuple[StacSource, ...]:
    return (
        StacSource(
            "planetary-computer", "sentinel-1-rtc", assets, nodata=-32768, units="gamma0 linear",
            model_factor=model_factor, query=query, notes=_S1_RTC_NOTES + training,
        ),
        StacSource(
            "planetary-computer", "sentinel-1-grd", assets, units="GRD amplitude DN", query=query,
            analysis_ready=False,
            notes=_S1_GRD_NOTES + "Calibration XML is in the schema-calibration-* assets; "
            "descending scenes appear flipped.",
        ),
        StacSource(
            "earth-search", "sentinel-1-grd", assets, units="GRD amplitude DN", query=query,
            analysis_ready=False, notes=_S1_GRD_NOTES + "proj:epsg is 4326 with a fake transform.",
        ),
    )


# -- Landsat -------------------------------------------------------------------------------

_L7_KEYS = ("blue", "green", "red", "nir08", "swir16", "swir22")
_LANDSAT_UNITS = (
    "The units of the training series (PLANTED l7: SR or TOA, scaled or not) are unconfirmed, "
    "so no conversion to training units is known. The collection mixes Landsat 4-9: keep "
    "Landsat 7 ETM+ items (platform). ETM+ has no cirrus QA bits. Scenes after the scan-line "
    "corrector failure (31 May 2003) have striped nodata gaps. "
)
_L7 = (
    StacSource(
        "planetary-computer", "landsat-c2-l2", _L7_KEYS, scale=2.75e-5, offset=-0.2, nodata=0,
        qa_asset="qa_pixel", units="surface reflectance",
        notes=_LANDSAT_UNITS + "scale/offset from raster:bands. qa_pixel is uint16 with nodata 1; "
        "ETM+ items also have cloud_qa and qa_radsat.",
    ),
    StacSource(
        "earth-search", "landsat-c2-l2", _L7_KEYS, scale=2.75e-5, offset=-0.2, nodata=0,
        qa_asset="qa_pixel", units="surface reflectance",
        notes=_LANDSAT_UNITS + "Keys follow stactools landsat; scale/offset and nodata as PC "
        "(unconfirmed). Hrefs are requester-pays s3; items can hold dead links after USGS "
        "reprocessing; ids omit the processing date.",
    ),
    StacSource(
        "usgs", "landsat-c2l2-sr", _L7_KEYS, scale=2.75e-5, offset=-0.2, nodata=0,
        qa_asset="qa_pixel", units="surface reflectance",
        notes=_LANDSAT_UNITS + "LandsatLook items have no raster:bands: scale/offset are "
        "hard-coded; nodata 0 is unconfirmed. https hrefs plus requester-pays s3 'alternate'.",
    ),
)
_L8_L2 = StacSource(
    "planetary-computer", "landsat-c2-l2",
    (None, "coastal", "blue", "green", "red", "nir08", "swir16", "swir22", None, "lwir11", None),
    scale=2.75e-5, offset=-0.2, nodata=0, qa_asset="qa_pixel", units="surface reflectance",
    analysis_ready=False,
    notes="Not usable for l8: the projector was trained on Level-1 data (S2NAIP) incl. pan B8, "
    "cirrus B9 and TIRS B10/B11, while Level-2 has no B8, B9, B11, and lwir11 is surface "
    "temperature in K (scale 0.00341802, offset 149.0), not B10. PC landsat-c2-l1 holds MSS "
    "only; hls2-l30 (no pan; int16 x 1e-4 unconfirmed) is harmonised reflectance; USGS "
    "landsat-c2l1 has B1-B11 files but unconfirmed asset keys and DN->TOA via MTL, so no "
    "public Level-1 source is tabulated. The same holds for ES landsat-c2-l2 and USGS "
    "landsat-c2l2-sr.",
)

# -- MODIS, ALOS, NAIP ---------------------------------------------------------------------

_MODIS_09A1 = StacSource(
    "planetary-computer", "modis-09A1-061",
    tuple(f"sur_refl_b0{i}" for i in range(1, 8)),
    scale=1e-4, qa_asset="sur_refl_state_500m", units="surface reflectance",
    notes="No collection offers B1-B7 at 250 m; this is the 8-day 500 m (really 463.3127 m) "
    "product. The sensor is a tile token (one pixel series per tile; PLANTED: 1 px per 120 m "
    "tile, inferred), so take the 500 m pixel covering the tile centre, or resample to 250 m. "
    "modis-09Q1-061 has b01/b02 only at 250 m (sur_refl_state_250m). How PLANTED made its "
    "250 m data and in which units is unconfirmed: no conversion to training units is known. "
    "int16, no offset; fill value not declared (unconfirmed). qa: also sur_refl_qc_500m "
    "(uint32). Sinusoidal grid: proj:epsg is null, only proj:wkt2; stackstac needs an EPSG "
    "code (stackstac#67, #214), odc-stac falls back to wkt2. PC common names: b02 nir08, b05 "
    "lwir12 (wrong: 1230-1250 nm), b06 swir16, b07 swir22: select by asset key. No MODIS on "
    "ES or CDSE.",
)
_ALOS_MOSAIC = StacSource(
    "planetary-computer", "alos-palsar-mosaic", ("HH", "HV", None), qa_asset="mask",
    units="DN (uint16 amplitude)",
    notes="Annual mosaic at 25 m in EPSG:4326: reproject to the tile's 30 m grid; one mosaic "
    "per year (further assets: 'date', 'linci'). The mask asset "
    "is uint8 with nodata 0; HH/HV nodata is not declared. Calibration factor stored as "
    "'83.0 dB'; the DN->dB formula 10*log10(DN^2) - 83.0 is unconfirmed, and so are the units "
    "of PLANTED's ALOS series: no conversion to training units is known. The ratio band "
    "divides whatever units are fed (a dB difference is not a power ratio). ES has no ALOS; "
    "CDSE presumably neither (unconfirmed).",
)
_NAIP_NOTES = (
    "One 4-band uint8 COG 'image' (eo:bands red, green, blue, nir: see asset_bands). GSD "
    "varies from 0.3 to 1 m by state and year: resample to 1.25 m. Older NAIP may be RGB only "
    "(the projector needs NIR). Item datetime may fall in the year after naip:year. Whether "
    "S2NAIP's NAIP was 8-bit DN like this is unconfirmed. "
)
_NAIP = (
    StacSource(
        "planetary-computer", "naip", ("image",) * 4, nodata=0, asset_bands=(1, 2, 3, 4),
        notes=_NAIP_NOTES + "nodata 0 is from stactools, unconfirmed for PC items; gsd and "
        "proj:epsg are read from the file. Extent 2010-2023.",
    ),
    StacSource(
        "earth-search", "naip", ("image",) * 4, nodata=0, asset_bands=(1, 2, 3, 4),
        notes=_NAIP_NOTES + "Filter on naip:year / naip:state.",
    ),
)

_NO_STAC = "No public STAC collection (PC, ES) serves it."

MODALITIES: dict[str, Modality] = {
    m.name: m
    for m in (
        Modality(
            "aerial", ("NIR", "R", "G", "B"), 0.2, 10, False,
            description="IGN aerial CIR orthophoto (TreeSatAI), 0.2 m. Band order ambiguous: the "
            "README says R,G,B,NIR, but the sample's first band has by far the highest mean "
            "(137 vs 86/82/76, NIR-like) as do the demo's norm means, so NIR-first is kept "
            "(unconfirmed). " + _NO_STAC,
            norm=NormStats(
                (150.893, 92.714, 84.854, 80.704), (36.765, 27.625, 22.479, 26.734), _TREESATAI_DEMO
            ),
            band_aliases=_RGBN_ALIASES,
        ),
        Modality(
            "aerial-flair", ("R", "G", "B", "NIR", "elevation"), 0.2, 10, False,
            description="IGN aerial RGBN + elevation (FLAIR), 0.2 m. " + _NO_STAC,
            band_aliases=_RGBN_ALIASES,
        ),
        Modality(
            "spot", ("R", "G", "B"), 1.0, 10, False,
            description="SPOT 6/7 RGB resampled to 1 m (PASTIS-HD). " + _NO_STAC,
            band_aliases={"red": ("R",), "green": ("G",), "blue": ("B",)},
        ),
        Modality(
            "naip", ("R", "G", "B", "NIR"), 1.25, 8, False,
            description="NAIP RGBN (S2NAIP), 1.25 m. NIR inferred from in_chans 4 (the README "
            "and rslearn say RGB).",
            stac=_NAIP, band_aliases=_RGBN_ALIASES,
        ),
        Modality(
            "s2", ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"), 10.0, 1, True,
            description="Sentinel-2 L2A surface reflectance x 1e4 (DN without the baseline-04.00 "
            "offset)",
            in_norm=True, dropout=0.0,
            norm=NormStats(
                (4304.33, 4159.27, 4057.78, 4328.95, 4571.22, 4644.87, 4837.25, 4700.26, 2823.26, 2319.97),
                (3538.00, 3324.23, 3270.07, 3250.53, 2897.39, 2754.50, 2821.52, 2625.95, 1731.56, 1549.30),
                _TREESATAI_DEMO,
            ),
            stac=_S2,
            band_aliases={
                "nir": ("B08",), "rededge071": ("B05",), "rededge075": ("B06",),
                "rededge078": ("B07",), "swir1": ("B11",), "swir2": ("B12",),
                "rededge": ("B05", "B06", "B07", "B8A"),  # PC's common name for all four
            },
        ),
        Modality(
            "s1-asc", ("VV", "VH"), 10.0, 1, True,
            description="Sentinel-1 ascending (TreeSatAI), linear backscatter",
            stac=_s1_sources(
                ("vv", "vh"), query=(("sat:orbit_state", "ascending"),), model_factor=1.0,
                training="TreeSatAI is linear backscatter (sample VV ~0.11, VH ~0.03); whether "
                "sigma0 or gamma0 is unconfirmed.",
            ),
        ),
        Modality(
            "s1", ("VV", "VH", "VV/VH"), 10.0, 1, True,
            description="Sentinel-1 VV, VH and their ratio (PLANTED, S2NAIP, PASTIS). The demo "
            "feeds TreeSatAI linear backscatter here, but the demo's norm stats look dB-like: "
            "the units of the pretraining data are unconfirmed.",
            derived_bands={"VV/VH": _S1_RATIO},
            stac=_s1_sources(
                ("vv", "vh", None), query=(), model_factor=None,
                training="The units of the pretraining S1 data are unconfirmed (see description); "
                "no conversion to training units is known.",
            ),
            band_aliases={"ratio": ("VV/VH",), "vv_vh": ("VV/VH",)},
        ),
        Modality(
            "alos", ("HH", "HV", "HH/HV"), 30.0, 1, True, reduce_scale=3,
            description="ALOS-2 PALSAR-2 HH, HV and their ratio (PLANTED), 30 m; units of the "
            "training data unconfirmed",
            derived_bands={"HH/HV": _ALOS_RATIO}, stac=(_ALOS_MOSAIC,),
            band_aliases={"ratio": ("HH/HV",), "hh_hv": ("HH/HV",)},
        ),
        Modality(
            "l7", ("B1", "B2", "B3", "B4", "B5", "B7"), 30.0, 1, True, reduce_scale=3,
            description="Landsat 7 ETM+ B1-B5, B7 (PLANTED), 30 m; product level and units of the "
            "training data unconfirmed",
            stac=_L7, band_aliases={"nir": ("B4",), "swir1": ("B5",), "swir2": ("B7",)},
        ),
        Modality(
            "l8", ("B8", "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11"), 10.0, 1, True,
            date_period=366,
            description="Landsat 8 Level-1 (S2NAIP): pan and the 30/100 m bands resampled to a "
            "10 m grid. No public Level-1 source is tabulated (see stac).",
            stac=(_L8_L2,),
            band_aliases={
                "pan": ("B8",), "nir": ("B5",), "swir1": ("B6",), "swir2": ("B7",),
                "cirrus": ("B9",), "lwir12": ("B11",),
                "lwir": ("B10", "B11"),  # older Landsat STAC tags both TIRS bands 'lwir'
            },
        ),
        Modality(
            "modis", ("B1", "B2", "B3", "B4", "B5", "B6", "B7"), 250.0, 1, True, reduce_scale=12,
            tile_token=True,
            description="MODIS surface reflectance B1-B7 at 250 m (PLANTED), one pixel series "
            "per tile; no public collection serves B1-B7 at 250 m (see stac)",
            stac=(_MODIS_09A1,),
            band_aliases={
                "red": ("B1",), "nir": ("B2",), "nir08": ("B2",), "blue": ("B3",), "green": ("B4",),
                "lwir12": ("B5",),  # PC's (wrong) common name for the 1230-1250 nm band
                "swir16": ("B6",), "swir22": ("B7",),
            },
        ),
    )
}


def get_modality(name: str) -> Modality:
    """Return the table row for ``name`` or raise a ``ModalityError`` listing known sensors.

    Args:
        name: sensor key, e.g. ``"s2"``.

    Returns:
        The sensor's ``Modality``.

    Raises:
        ModalityError: ``name`` is not in ``MODALITIES``.

    Example:
        >>> get_modality("s1").bands
        ('VV', 'VH', 'VV/VH')
        >>> get_modality("s3")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.ModalityError: unknown sensor 's3'. Known sensors: aerial, aerial-flair, spot, naip, s2, ...
    """
    from xanysat.errors import ModalityError

    try:
        return MODALITIES[name]
    except KeyError:
        raise ModalityError(
            f"unknown sensor {name!r}. Known sensors: {', '.join(MODALITIES)}."
        ) from None


# -- band names ----------------------------------------------------------------------------

_BAND_NUMBER = re.compile(r"b0*(\d+)(a?)")
_RES_SUFFIX = re.compile(r"_\d+m$")  # CDSE asset keys: B02_10m


def _normalise(name: str) -> str:
    """Case-fold, drop a ``_10m`` suffix and leading zeros of band numbers (B02 -> b2)."""
    key = _RES_SUFFIX.sub("", name.strip().lower())
    match = _BAND_NUMBER.fullmatch(key)
    return f"b{match[1]}{match[2]}" if match else key


def _alias_table(modality: Modality) -> dict[str, set[str]]:
    """Normalised name -> projector bands it may mean: band names, STAC asset keys, aliases."""
    table: dict[str, set[str]] = {}
    pairs = [(b, b) for b in modality.bands]
    pairs += [
        (key, band)
        for source in modality.stac
        if not source.asset_bands  # one multi-band asset names several bands
        for key, band in zip(source.assets, modality.bands)
        if key is not None
    ]
    pairs += [(alias, band) for alias, bands in modality.band_aliases.items() for band in bands]
    for alias, band in pairs:
        table.setdefault(_normalise(alias), set()).add(band)
    return table


def band_index(
    modality: str | Modality, band_names: Sequence[str]
) -> tuple[tuple[int | None, ...], tuple[str, ...]]:
    """Map a user's band names onto the projector's band order.

    Names match case-insensitively, as band ids (``"B2"`` = ``"B02"``, ``"B8a"`` = ``"B8A"``),
    STAC asset keys of any catalogue in the table (``"nir08"``, ``"B05_20m"``, ``"vv"``) or
    common names (``"nir"``). Names that match no projector band are ignored.

    Args:
        modality: sensor name or table row.
        band_names: the user's band names, e.g. an xarray ``band`` coordinate.

    Returns:
        ``(indices, missing)``: for each projector band, in projector order, its position in
        ``band_names`` or ``None``; and the projector bands not found (derived bands such as
        ``"VV/VH"`` included: see ``Modality.derived_bands``).

    Raises:
        ModalityError: unknown sensor.
        DimensionError: a name that may mean several bands (``"rededge"`` for s2), two names
            for the same band, or a name that is not a string.

    Example:
        >>> band_index("s2", ["red", "green", "blue", "nir"])
        ((2, 1, 0, None, None, None, 3, None, None, None), ('B05', 'B06', 'B07', 'B8A', 'B11', 'B12'))
    """
    from xanysat.errors import DimensionError

    m = get_modality(modality) if isinstance(modality, str) else modality
    names = (band_names,) if isinstance(band_names, str) else tuple(band_names)
    table = _alias_table(m)
    found: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise DimensionError(
                f"band names must be strings; got {name!r} ({type(name).__name__}) at position {i}. "
                f"Name the bands, e.g. ds.assign_coords(band=[...]) with {m.name!r} bands {m.bands}."
            )
        candidates = table.get(_normalise(name), set())
        if len(candidates) > 1:
            options = ", ".join(b for b in m.bands if b in candidates)
            raise DimensionError(
                f"band name {name!r} is ambiguous for {m.name!r}: it may mean any of {options}. "
                "Name the band by its id or STAC asset key instead."
            )
        if candidates:
            (band,) = candidates
            if band in found:
                raise DimensionError(
                    f"{names[found[band]]!r} (position {found[band]}) and {name!r} (position {i}) "
                    f"both name {m.name!r} band {band!r}; keep only one."
                )
            found[band] = i
    indices = tuple(found.get(b) for b in m.bands)
    missing = tuple(b for b in m.bands if b not in found)
    return indices, missing
