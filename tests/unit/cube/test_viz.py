"""pca_rgb and percentile_stretch: structure recovery, NaN handling, degenerate inputs."""

import numpy as np
import pytest

from xanysat.cube.maps import pca_rgb, percentile_stretch
from xanysat.errors import DimensionError


def _embedded_gradient_cube(n: int = 8, dim: int = 16) -> np.ndarray:
    """Features (n, n, n, dim): a 3-D grid of (x, y, z) ramps with spreads 3 > 2 > 1,
    mapped into ``dim`` dimensions by a random orthonormal matrix plus an offset."""
    ramp = np.linspace(-1.0, 1.0, n)
    x, y, z = np.meshgrid(3 * ramp, 2 * ramp, 1 * ramp, indexing="ij")
    rgb = np.stack([x, y, z], axis=-1)
    rng = np.random.default_rng(0)
    orthonormal, _ = np.linalg.qr(rng.normal(size=(dim, 3)))
    return rgb @ orthonormal.T + rng.normal(size=dim)


def _is_monotone(values: np.ndarray) -> bool:
    steps = np.diff(values.astype(int))
    return bool(np.all(steps >= 0) or np.all(steps <= 0))


def test_recovers_each_gradient_as_one_monotone_channel():
    rgb = pca_rgb(_embedded_gradient_cube())
    assert rgb.shape == (8, 8, 8, 3) and rgb.dtype == np.uint8
    for channel in range(3):
        image = rgb[..., channel]
        # Channel k varies only along grid axis k, monotonically, over most of 0..255.
        line = np.moveaxis(image, channel, 0).reshape(8, -1)
        assert np.all(line == line[:, :1]), f"channel {channel} varies along other axes"
        assert _is_monotone(line[:, 0])
        assert int(line[:, 0].max()) - int(line[:, 0].min()) > 200


def test_colours_ignore_offset_and_scale_of_the_features():
    features = _embedded_gradient_cube()
    expected = pca_rgb(features)
    np.testing.assert_array_equal(pca_rgb(features), expected)
    np.testing.assert_array_equal(pca_rgb(4.0 * features - 7.0), expected)


def test_nan_rows_are_black_and_do_not_change_the_rest():
    features = np.random.default_rng(1).normal(size=(10, 10, 32))
    with_nans = features.copy()
    with_nans[0, 0, 5] = np.nan
    with_nans[3, 7, :] = np.nan
    with_nans[9, 9, 0] = np.inf
    rgb = pca_rgb(with_nans)
    bad = ~np.all(np.isfinite(with_nans), axis=-1)
    assert np.all(rgb[bad] == 0)
    np.testing.assert_array_equal(rgb[~bad], pca_rgb(features[~bad]))


def test_all_nan_input_is_black():
    rgb = pca_rgb(np.full((4, 4, 8), np.nan))
    assert rgb.shape == (4, 4, 3) and not rgb.any()


@pytest.mark.parametrize("shape", [(5, 5, 8), (1, 8), (5, 5, 1)])
def test_constant_input_gives_black_without_warnings(shape):
    with np.errstate(all="raise"):
        rgb = pca_rgb(np.full(shape, 3.5))
    assert rgb.shape == shape[:-1] + (3,) and not rgb.any()


def test_fewer_than_three_components_leaves_channels_black():
    ramp = np.linspace(0, 1, 20)[:, None] * np.ones((1, 6))  # rank 1 after centring
    rgb = pca_rgb(ramp)
    assert _is_monotone(rgb[:, 0]) and rgb[:, 0].max() == 255
    assert not rgb[:, 1:].any()


def test_scalar_input_is_rejected():
    with pytest.raises(DimensionError, match="feature axis"):
        pca_rgb(np.float64(1.0))


def test_percentile_stretch_maps_range_and_ignores_nan():
    values = np.array([[0.0, 7.0], [5.0, 7.0], [10.0, np.nan]])
    out = percentile_stretch(values, low=0, high=100)
    assert out[:, 0].tolist() == [0, 128, 255]
    assert out[:, 1].tolist() == [0, 0, 0]
