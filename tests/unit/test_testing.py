"""Synthetic batches follow the official input layout for every sensor."""

import pytest
import torch

from xanysat.errors import AnySatInputError, DimensionError, ModalityError, PatchSizeError
from xanysat.sensors.table import MODALITIES
from xanysat.testing import supported_patch_sizes, synthetic_batch

SENSORS = sorted(MODALITIES)


@pytest.mark.parametrize("name", SENSORS)
def test_shapes_and_dtypes(name):
    m = MODALITIES[name]
    batch = synthetic_batch((name,), extent_m=120, batch_size=3, n_dates=5)
    side = 1 if m.tile_token else round(120 / m.resolution_m)
    x = batch[name]
    assert x.dtype == torch.float32
    if m.time_series:
        assert set(batch) == {name, f"{name}_dates"}
        assert x.shape == (3, 5, m.n_bands, side, side)
        dates = batch[f"{name}_dates"]
        assert dates.dtype == torch.int64 and dates.shape == (3, 5)
        assert dates.min() >= 1 and dates.max() <= 365
        assert torch.equal(dates, dates.sort(dim=1).values)
    else:
        assert set(batch) == {name}
        assert x.shape == (3, m.n_bands, side, side)


def test_official_treesatai_layout():
    batch = synthetic_batch(("aerial", "s2", "s1-asc"), extent_m=60, batch_size=1, n_dates=7)
    assert list(batch) == ["aerial", "s2", "s2_dates", "s1-asc", "s1-asc_dates"]
    assert batch["aerial"].shape == (1, 4, 300, 300)
    assert batch["s2"].shape == (1, 7, 10, 6, 6)
    assert batch["s1-asc"].shape == (1, 7, 2, 6, 6)


def test_all_sensors_at_once():
    batch = synthetic_batch(SENSORS, extent_m=30, batch_size=1, n_dates=2)
    assert batch["naip"].shape[-1] == 24 and batch["l7"].shape[-1] == 1 and batch["modis"].shape[-1] == 1


def test_values_look_normalised():
    x = synthetic_batch(("s2",), extent_m=100, batch_size=4, n_dates=8)["s2"]
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def test_same_seed_same_batch():
    a = synthetic_batch(("aerial", "s2"), seed=3)
    b = synthetic_batch(("aerial", "s2"), seed=3)
    c = synthetic_batch(("aerial", "s2"), seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["s2"], c["s2"]) and not torch.equal(a["aerial"], c["aerial"])


def test_sensor_independent_of_companions():
    alone = synthetic_batch(("s2",), seed=1)
    together = synthetic_batch(("aerial", "s2", "s1"), seed=1)
    assert torch.equal(alone["s2"], together["s2"]) and torch.equal(alone["s2_dates"], together["s2_dates"])


def test_dates_distinct_within_sample():
    dates = synthetic_batch(("s2",), n_dates=300, batch_size=2, extent_m=10)["s2_dates"]
    assert all(len(set(row.tolist())) == 300 for row in dates)
    many = synthetic_batch(("s2",), n_dates=400, batch_size=1, extent_m=10)["s2_dates"]
    assert many.shape == (1, 400) and many.min() >= 1 and many.max() <= 365


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype(dtype):
    batch = synthetic_batch(("naip", "s2"), extent_m=20, dtype=dtype)
    assert batch["naip"].dtype == batch["s2"].dtype == dtype
    assert batch["s2_dates"].dtype == torch.int64


def test_single_string_sensor():
    assert list(synthetic_batch("s1")) == ["s1", "s1_dates"]


@pytest.mark.parametrize(("sensors", "extent"), [(("s2",), 65), (("naip",), 10.5), (("l7", "s2"), 40)])
def test_extent_not_a_pixel_multiple(sensors, extent):
    with pytest.raises(DimensionError, match="whole number"):
        synthetic_batch(sensors, extent_m=extent)


def test_modis_ignores_extent():
    assert synthetic_batch(("modis",), extent_m=65)["modis"].shape[-2:] == (1, 1)


@pytest.mark.parametrize(
    "kwargs",
    [{"sensors": ()}, {"sensors": ("s2", "s2")}, {"batch_size": 0}, {"n_dates": 0}, {"n_dates": 2.0},
     {"dtype": torch.int64}],
)
def test_bad_arguments(kwargs):
    with pytest.raises(AnySatInputError):
        synthetic_batch(**kwargs)


@pytest.mark.parametrize("extent", [0, -10])
def test_non_positive_extent(extent):
    with pytest.raises(DimensionError):
        synthetic_batch(("s2",), extent_m=extent)


def test_unknown_sensor():
    with pytest.raises(ModalityError, match="Known sensors"):
        synthetic_batch(("s1-des",))


@pytest.mark.parametrize(
    ("sensor", "extent", "expected"),
    [
        ("s2", 60, [10, 20, 30, 60]),
        ("aerial", 60, [10, 20, 30, 60]),
        ("naip", 40, [10, 20, 40]),
        ("l7", 60, [30, 60]),
        ("alos", 120, [30, 60, 120]),
        ("l7", 40, []),
        ("modis", 60, [10, 20, 30, 60]),
        ("s2", 65, []),
        ("s2", 1280, [10, 20, 40, 80, 160, 320, 640, 1280]),
    ],
)
def test_supported_patch_sizes(sensor, extent, expected):
    assert supported_patch_sizes(sensor, extent) == expected


@pytest.mark.parametrize("name", SENSORS)
def test_supported_patch_sizes_rule(name):
    m = MODALITIES[name]
    for p in supported_patch_sizes(name, 240):
        assert p % 10 == 0 and 240 % p == 0
        assert m.tile_token or m.token_m <= 10 or p % m.token_m == 0


def test_supported_patch_sizes_errors():
    with pytest.raises(PatchSizeError):
        supported_patch_sizes("s2", 0)
    with pytest.raises(ModalityError):
        supported_patch_sizes("s1-des", 60)
