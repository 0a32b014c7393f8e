"""The sensor table agrees with the official architecture and its STAC entries are consistent."""

import json
import os
import subprocess
import sys

import pytest
from helpers.paths import FIXTURES, REPO_ROOT

from xanysat.errors import AnySatInputError, DimensionError, ModalityError
from xanysat.sensors.table import MODALITIES, Modality, StacSource, band_index

SENSORS = sorted(MODALITIES)
CONFIG = FIXTURES / "parity" / "tiny_config.json"
CATALOGS = {"planetary-computer", "earth-search", "cdse", "usgs"}


@pytest.fixture(scope="module")
def official() -> dict:
    """The official hubconf config (scaled-down widths, same per-sensor settings)."""
    if not CONFIG.exists():
        pytest.skip(f"parity fixture not found at {CONFIG}")
    return json.loads(CONFIG.read_text())["config"]


def test_eleven_sensors():
    assert SENSORS == sorted(
        ["aerial", "aerial-flair", "spot", "naip", "s2", "s1-asc", "s1", "alos", "l7", "l8", "modis"]
    )


def test_sensor_order_matches_official(official):
    assert list(MODALITIES) == official["modalities"]["all"]


@pytest.mark.parametrize("name", SENSORS)
def test_band_count_matches_projector(name, official):
    proj = official["projectors"][name]
    assert MODALITIES[name].n_bands == proj.get("in_chans", proj.get("in_channels"))


@pytest.mark.parametrize("name", SENSORS)
def test_token_size_matches_spatial_encoder(name, official):
    assert MODALITIES[name].token_m == official["spatial_encoder"]["input_res"][name]


@pytest.mark.parametrize("name", SENSORS)
def test_time_series_iff_ltae(name, official):
    m, proj = MODALITIES[name], official["projectors"][name]
    assert m.time_series == ("T" in proj)
    if m.time_series:
        assert m.date_period == proj["T"]
        assert m.in_norm == proj["in_norm"]
        assert m.dropout == proj["dropout"]
        assert m.subpatch_px == 1
    else:
        assert m.subpatch_px == proj["patch_size"]
        assert m.resolution_m == proj.get("resolution", m.resolution_m)


@pytest.mark.parametrize("name", SENSORS)
def test_reduce_scale(name, official):
    m, proj = MODALITIES[name], official["projectors"][name]
    if "reduce_scale" in proj:
        assert m.reduce_scale == proj["reduce_scale"]
    expected = {"modis": 12, "l7": 3, "alos": 3}.get(name, 1)  # l7/alos: SPEC section 9, item 4
    assert m.reduce_scale == expected


def test_only_modis_is_a_tile_token():
    assert [n for n in SENSORS if MODALITIES[n].tile_token] == ["modis"]


@pytest.mark.parametrize("name", SENSORS)
def test_norm_stats_lengths(name):
    norm = MODALITIES[name].norm
    if norm is not None:
        assert len(norm.mean) == len(norm.std) == MODALITIES[name].n_bands
        assert all(s > 0 for s in norm.std)


@pytest.mark.parametrize("name", SENSORS)
def test_derived_bands_are_bands(name):
    m = MODALITIES[name]
    assert set(m.derived_bands) <= set(m.bands)


def _sources() -> list[tuple[str, StacSource]]:
    return [(n, s) for n in SENSORS for s in MODALITIES[n].stac]


@pytest.mark.parametrize(("name", "source"), _sources(), ids=lambda v: getattr(v, "collection", v))
def test_stac_entry_consistent(name, source):
    m = MODALITIES[name]
    assert source.catalog in CATALOGS
    assert len(source.assets) == m.n_bands
    assert source.asset_bands == () or len(source.asset_bands) == m.n_bands
    assert source.notes
    if source.analysis_ready:
        # None only for derived bands; every measured band has an asset
        assert {b for b, a in zip(m.bands, source.assets) if a is None} == set(m.derived_bands)
    for key, value in source.query:
        assert isinstance(key, str) and isinstance(value, str)


def test_stac_coverage():
    served = {n for n in SENSORS if any(s.analysis_ready for s in MODALITIES[n].stac)}
    # no public collection for the IGN/SPOT sensors; l8 needs Level-1 data nobody tabulates
    assert served == set(SENSORS) - {"aerial", "aerial-flair", "spot", "l8"}
    assert MODALITIES["l8"].stac and not any(s.analysis_ready for s in MODALITIES["l8"].stac)


def test_s2_sources_reach_training_units():
    by_catalog = {s.catalog: s for s in MODALITIES["s2"].stac}
    assert set(by_catalog) == {"planetary-computer", "earth-search", "cdse"}
    for s in by_catalog.values():
        assert s.model_factor == 1e4 and s.scale == 1e-4
    pc, es, cdse = by_catalog["planetary-computer"], by_catalog["earth-search"], by_catalog["cdse"]
    assert pc.processing_baseline_offset == -1000 and pc.offset == 0
    assert es.processing_baseline_offset is None and es.offset == 0  # already harmonised
    assert cdse.processing_baseline_offset is None and cdse.offset == pytest.approx(-0.1)
    # DN 1500 of a baseline >= 04.00 item is reflectance 0.05, i.e. 500 in training units
    def training_units(source, dn):
        dn = dn + (source.processing_baseline_offset or 0)
        return (dn * source.scale + source.offset) * source.model_factor

    assert training_units(pc, 1500) == pytest.approx(500)
    assert training_units(cdse, 1500) == pytest.approx(500)
    assert training_units(es, 500) == pytest.approx(500)


def test_s1_asc_filters_ascending_orbits():
    for s in MODALITIES["s1-asc"].stac:
        assert ("sat:orbit_state", "ascending") in s.query
    assert all(s.query == () for s in MODALITIES["s1"].stac)


def test_inconsistent_row_is_rejected():
    with pytest.raises(ValueError, match="2 assets"):
        Modality("x", ("a", "b", "c"), 10.0, 1, True, stac=(StacSource("usgs", "c", ("a", "b")),))
    with pytest.raises(ValueError, match="alias"):
        Modality("x", ("a",), 10.0, 1, True, band_aliases={"z": ("nope",)})


# -- band_index ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SENSORS)
def test_band_index_identity(name):
    m = MODALITIES[name]
    assert band_index(name, m.bands) == (tuple(range(m.n_bands)), ())
    assert band_index(m, [b.lower() for b in reversed(m.bands)])[0] == tuple(reversed(range(m.n_bands)))


@pytest.mark.parametrize(
    ("name", "source"),
    [(n, s) for n, s in _sources() if not s.asset_bands],  # NAIP: one asset holds all bands
    ids=lambda v: getattr(v, "collection", v),
)
def test_band_index_accepts_asset_keys(name, source):
    keys = [k for k in source.assets if k is not None]
    indices, missing = band_index(name, keys)
    m = MODALITIES[name]
    assert missing == tuple(b for b, k in zip(m.bands, source.assets) if k is None)
    assert [i for i in indices if i is not None] == list(range(len(keys)))


def test_band_index_s2_aliases():
    names = ["B2", "b03", "B04_10m", "rededge1", "B06_20m", "rededge078", "nir", "B8a", "swir16", "SWIR22"]
    assert band_index("s2", names) == (tuple(range(10)), ())
    indices, missing = band_index("s2", ["coastal", "red", "green", "blue", "nir", "B09", "scl"])
    assert indices == (3, 2, 1, None, None, None, 4, None, None, None)
    assert missing == ("B05", "B06", "B07", "B8A", "B11", "B12")


def test_band_index_s1():
    assert band_index("s1", ["VH", "vv"]) == ((1, 0, None), ("VV/VH",))
    assert band_index("s1", ["vv", "vh", "ratio"]) == ((0, 1, 2), ())
    assert band_index("s1-asc", ["vv", "vh", "hh"]) == ((0, 1), ())


def test_band_index_common_names_per_sensor():
    assert band_index("l8", ["pan", "coastal", "blue", "green", "red", "nir08", "swir16", "swir22",
                             "cirrus", "lwir11", "lwir12"]) == (tuple(range(11)), ())
    assert band_index("l7", ["nir", "red"]) == ((None, None, 1, 0, None, None), ("B1", "B2", "B5", "B7"))
    assert band_index("modis", ["red", "nir08"])[0][:2] == (0, 1)
    assert band_index("naip", ["red", "green", "blue", "NiR"]) == ((0, 1, 2, 3), ())
    assert band_index("aerial", ["R", "G", "B", "NIR"]) == ((3, 0, 1, 2), ())


@pytest.mark.parametrize(("name", "alias"), [("s2", "rededge"), ("s2", "RedEdge"), ("l8", "lwir")])
def test_band_index_ambiguous_alias_raises(name, alias):
    with pytest.raises(DimensionError, match="ambiguous"):
        band_index(name, ["B02", alias])


def test_band_index_two_names_for_one_band_raise():
    with pytest.raises(DimensionError, match="both name"):
        band_index("s2", ["B08", "red", "nir"])
    with pytest.raises(DimensionError, match="both name"):
        band_index("s2", ["B02", "b2"])


def test_band_index_rejects_unnamed_bands():
    with pytest.raises(DimensionError, match="must be strings"):
        band_index("naip", [1, 2, 3, 4])


def test_band_index_unknown_sensor():
    with pytest.raises(ModalityError, match="Known sensors"):
        band_index("s2a", ["B02"])


def test_errors_are_value_errors():
    assert issubclass(DimensionError, AnySatInputError) and issubclass(AnySatInputError, ValueError)


@pytest.mark.parametrize("name", SENSORS)
def test_aliases_never_shadow_another_band(name):
    """A band's own name, normalised, resolves to that band only."""
    m = MODALITIES[name]
    for b in m.bands:
        assert band_index(m, [b])[0] == tuple(0 if x == b else None for x in m.bands)


def test_import_does_not_need_torch():
    code = "import sys, xanysat.sensors.table; sys.exit('torch' in sys.modules)"
    path = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, (
        "importing xanysat.sensors.table imported torch; the table must stay importable without it "
        f"(xanysat/__init__.py has to import torch-dependent modules lazily)\n{result.stderr}"
    )
