"""The shipped TreeSatAI tile loads in the official layout and matches the parity fixture."""

import numpy as np
import pytest
import torch
from helpers.paths import FIXTURES

from xanysat.cube.sample_data import treesatai_tile

PARITY_INPUT = FIXTURES / "parity" / "input.pt"

EXPECTED_SHAPES = {
    "aerial": (1, 4, 300, 300),
    "s2": (1, 146, 10, 6, 6),
    "s2_dates": (1, 146),
    "s1": (1, 60, 3, 6, 6),
    "s1_dates": (1, 60),
}


@pytest.fixture(scope="module")
def tile() -> dict:
    return treesatai_tile()


@pytest.fixture(scope="module")
def raw_tile() -> dict:
    return treesatai_tile(normalize=False)


def test_batch_has_official_layout(tile):
    batch = tile["batch"]
    assert {name: tuple(value.shape) for name, value in batch.items()} == EXPECTED_SHAPES
    for name in ("aerial", "s2", "s1"):
        assert batch[name].dtype == torch.float32
    for name in ("s2_dates", "s1_dates"):
        assert batch[name].dtype == torch.int64


@pytest.mark.skipif(
    not PARITY_INPUT.exists(),
    reason=f"parity fixture not found at {PARITY_INPUT} (the shared fixtures sit next to the repo)",
)
@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_matches_parity_fixture_sample_0(tile, name):
    # The fixture was built by the official demo with full-precision statistics and the
    # .pth copy of the S1 ratio band; the 4-decimal constants and the ratio recomputed from
    # the .h5 differ from it by at most ~3e-5 relative (on S1 ratio values around 165).
    expected = torch.load(PARITY_INPUT, weights_only=True)[name][0:1]
    np.testing.assert_allclose(
        tile["batch"][name].numpy(), expected.numpy(), rtol=1e-4, atol=1e-4
    )


def test_georeference(tile):
    a, b, c, d, e, f = tile["transform"]
    assert tile["crs"] == "EPSG:25832"
    assert tile["extent_m"] == 60.0
    assert (b, d) == (0.0, 0.0)
    assert a == pytest.approx(0.2) and e == pytest.approx(-0.2)
    # Cropping 2 px off the 304 px GeoTIFF (origin 565642.6, 5770980.4) moves the origin 0.4 m.
    assert (c, f) == (pytest.approx(565643.0), pytest.approx(5770980.0))
    assert 300 * a == pytest.approx(tile["extent_m"])


def test_dates_are_day_of_year_2020(tile):
    for sensor, (first_doy, last_doy) in {"s2": (2, 365), "s1": (3, 363)}.items():
        dates = tile["dates"][sensor]
        doy = tile["batch"][f"{sensor}_dates"][0].numpy()
        assert dates.dtype == np.dtype("datetime64[D]")
        assert np.all(dates.astype("datetime64[Y]") == np.datetime64("2020", "Y"))
        assert np.all(np.diff(dates) > np.timedelta64(0, "D"))
        assert (doy[0], doy[-1]) == (first_doy, last_doy)
        np.testing.assert_array_equal(doy, (dates - np.datetime64("2020-01-01")).astype(int) + 1)


def test_raw_values_are_unnormalised(raw_tile):
    batch = raw_tile["batch"]
    aerial = batch["aerial"]
    assert aerial.min() >= 0 and aerial.max() <= 255
    assert 1 <= batch["s2"].min() and batch["s2"].max() <= 14664
    vv, vh, ratio = batch["s1"][0].unbind(dim=1)
    torch.testing.assert_close(ratio, torch.clamp(vv / (vh + 1e-10), -1e4, 1e4))


def test_normalisation_is_per_band_affine(tile, raw_tile):
    # Normalising must not mix bands or dates: each band is an exact affine map of the raw one.
    raw = raw_tile["batch"]["s2"][0, :, 0].flatten().double()
    normalised = tile["batch"]["s2"][0, :, 0].flatten().double()
    slope, intercept = np.polyfit(raw.numpy(), normalised.numpy(), deg=1)
    assert slope == pytest.approx(1 / 3538.00, rel=1e-6)
    assert intercept == pytest.approx(-4304.33 / 3538.00, rel=1e-6)
