"""Hostile input and faults: each input that used to give a silent wrong answer or an obscure
error now raises a clear ``ValueError`` subclass from ``xanysat.errors`` (naming what was
expected and the fix), or has documented, tested behaviour."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from helpers.cubes import normalise, reference, sensor_numpy

import xanysat
from xanysat.errors import AnySatInputError, CheckpointError, DimensionError, PatchSizeError
from xanysat.nn.checkpoint import load_pretrained, save_pretrained
from xanysat.nn.encoder import AnySat, AnySatConfig
from xanysat.nn.hub import load_model
from xanysat.sensors.table import MODALITIES, NormStats
from xanysat.testing import synthetic_cube

MODEL = "untrained-tiny"
S2 = MODALITIES["s2"]


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(("s2",), extent_m=40, n_dates=2, seed=3)


def points(times, n: int = 2) -> xr.DataArray:
    coords = {"band": list(S2.bands)}
    dims = ("sample", "time", "band")
    t = np.asarray(times)
    if t.ndim == 2:
        dims = ("sample", "obs", "band")
        coords["time"] = (("sample", "obs"), t)
    else:
        coords["time"] = t
    values = np.broadcast_to(np.asarray(S2.norm.mean, "float32"), (n, t.shape[-1], S2.n_bands)).copy()
    return xr.DataArray(values, dims=dims, coords=coords, name="s2")


def embed(data, **kwargs):
    return xanysat.embed(data, **{"patch_size": 40, "model": MODEL, **kwargs})


# -- 1. times must be dates ---------------------------------------------------------------------

NUMERIC_TIMES = {
    "int": [10, 50],
    "float": [10.0, 50.0],
    "object-int": np.array([10, 50], dtype=object),
    "timedelta": np.array([10, 50], "timedelta64[D]"),
}


@pytest.mark.parametrize("times", NUMERIC_TIMES.values(), ids=NUMERIC_TIMES.keys())
def test_numeric_times_of_a_cube_are_refused(cube, times):
    da = cube["s2"]["s2"].assign_coords(time=times)
    with pytest.raises(DimensionError, match=r"'time' coordinate holds (numbers|durations) .*not dates.*"
                                             r"nanoseconds after 1970.*pd.to_datetime"):
        embed(da.to_dataset())


@pytest.mark.parametrize("times", NUMERIC_TIMES.values(), ids=NUMERIC_TIMES.keys())
def test_numeric_times_of_points_are_refused(times):
    with pytest.raises(DimensionError, match=r"holds (numbers|durations) .*not dates.*pd.to_datetime"):
        xanysat.embed_points(points(times), model=MODEL)
    with pytest.raises(DimensionError, match=r"holds numbers .*not dates"):  # per-sample dates
        xanysat.embed_points(points(np.array([[10, 50], [20, 60]])), model=MODEL)


def test_date_strings_and_python_datetimes_are_dates(cube):
    import datetime

    da = cube["s2"]["s2"]
    expected = embed(da.to_dataset()).values
    for times in (["2021-03-01", "2021-03-17"], [datetime.datetime(2021, 3, 1), datetime.datetime(2021, 3, 17)]):
        emb = embed(da.assign_coords(time=np.array(times, dtype=object)).to_dataset())
        assert json.loads(emb.attrs["inputs"])["s2"]["dates"] == ["2021-03-01", "2021-03-17"]
        np.testing.assert_allclose(emb.values, expected, atol=1e-6)
    emb = xanysat.embed_points(points(["2021-03-01", "2021-04-01"]), model=MODEL)
    assert json.loads(emb.attrs["inputs"])["s2"]["dates"] == ["2021-03-01", "2021-04-01"]


# -- 2. statistics ------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
BAD_STATS = {
    "nan-mean": ((NAN,) * 10, (1.0,) * 10, r"NaN or infinite mean for B02, .*B12"),
    "inf-mean": ((0.0,) * 9 + (INF,), (1.0,) * 10, r"NaN or infinite mean for B12:"),
    "nan-std": ((0.0,) * 10, (1.0,) * 4 + (NAN,) + (1.0,) * 5, r"NaN or infinite std for B06:"),
    "inf-std": ((0.0,) * 10, (INF,) * 10, r"NaN or infinite std"),
    "negative-std": ((0.0,) * 10, (-1.0,) + (1.0,) * 9, r"zero or negative std for B02"),
    "strings": (("a",) * 10, (1.0,) * 10, r"sequences of numbers"),
}


@pytest.mark.parametrize("mean, std, match", BAD_STATS.values(), ids=BAD_STATS.keys())
def test_bad_user_statistics_are_refused(cube, mean, std, match):
    with pytest.raises(DimensionError, match=match):
        embed(cube, normalize={"s2": (mean, std)})
    pixels = points(["2021-03-01", "2021-04-01"])
    with pytest.raises(DimensionError, match=match):
        xanysat.embed_points(pixels, model=MODEL, normalize={"s2": (mean, std)})


@pytest.mark.parametrize("value", ["yes", (1, 2, 3), 7])
def test_a_statistics_entry_that_is_no_pair_is_refused(cube, value):
    with pytest.raises(DimensionError, match=r"normalize\['s2'\] must be True, False, a NormStats or a \(mean, std\)"):
        embed(cube, normalize={"s2": value})


def test_bad_model_statistics_are_refused(cube):
    model = load_model(MODEL)
    model.card = model.card.with_changes(normalization={"s2": NormStats((NAN,) * 10, (1.0,) * 10, "the model's card")})
    with pytest.raises(DimensionError, match=r"'s2' \(the model's card\) has a NaN or infinite mean"):
        embed(cube, model=model)
    assert embed(cube, model=model, normalize={"s2": False}).notnull().all()  # user statistics win


def test_nan_statistics_of_absent_bands_are_accepted_and_recorded_as_null(cube):
    da = cube["s2"]["s2"].drop_sel(band=["B05"])
    mean, std = list(S2.norm.mean), list(S2.norm.std)
    mean[3], std[3] = NAN, NAN
    with pytest.warns(UserWarning, match="B05"):
        emb = embed(da.to_dataset(), normalize={"s2": (mean, std)})
    recorded = json.loads(emb.attrs["normalization"])["s2"]
    assert recorded["mean"][3] is None and recorded["std"][3] is None and recorded["mean"][0] == S2.norm.mean[0]
    with pytest.warns(UserWarning, match="B05"):
        expected = embed(da.to_dataset())  # the table's statistics: B05 absent either way
    np.testing.assert_allclose(emb.values, expected.values, atol=1e-6)
    with pytest.raises(DimensionError, match=r"NaN or infinite mean for B05.*absent from the input"):
        embed(cube, normalize={"s2": (mean, std)})  # B05 is present here


def test_fit_normalization_ignores_infinities(cube):
    raw = cube["s2"]["s2"].values.copy()
    hostile = raw.copy()
    hostile[0, 0, 0, 0], hostile[1, 2, 1, 1] = np.inf, -np.inf
    da = cube["s2"]["s2"].copy(data=hostile)
    stats = xanysat.fit_normalization(da.to_dataset())["s2"]
    missing = raw.copy()
    missing[0, 0, 0, 0] = missing[1, 2, 1, 1] = np.nan
    np.testing.assert_allclose(stats.mean, np.nanmean(missing, axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(stats.std, np.nanstd(missing, axis=(0, 2, 3)), rtol=1e-5)
    emb = embed(da.to_dataset(), normalize={"s2": stats}, tile_size=40)  # infinite pixels are masked as NaN ones are
    values, days = sensor_numpy(xr.DataTree.from_dict({"s2": da.to_dataset()}), "s2")
    values[~np.isfinite(values)] = np.nan
    expected = reference({"s2": (normalise(values, "s2", (stats.mean, stats.std)), days)}, (40, 40), 40, 40)
    np.testing.assert_allclose(emb.values, expected, rtol=1e-5, atol=1e-5)


def test_fit_normalization_names_a_band_without_finite_values(cube):
    hostile = cube["s2"]["s2"].values.copy()
    hostile[:, 4] = np.inf
    hostile[:, 6] = np.nan
    with pytest.raises(DimensionError, match=r"'s2' band B06, B08: it has no finite value.*drop_sel"):
        xanysat.fit_normalization(cube["s2"]["s2"].copy(data=hostile).to_dataset())


def test_fitted_statistics_with_an_absent_band_embed_the_cube_they_were_fitted_on(cube):
    da = cube["s2"]["s2"].drop_sel(band=["B8A"])
    with pytest.warns(UserWarning, match="B8A"):
        stats = xanysat.fit_normalization(da.to_dataset())
        assert np.isnan(stats["s2"].mean[7]) and np.isfinite(np.delete(stats["s2"].mean, 7)).all()
        emb = embed(da.to_dataset(), normalize=stats)
    assert emb.notnull().all()
    assert json.loads(emb.attrs["normalization"])["s2"]["std"][7] is None


# -- 3. CRS in metres -----------------------------------------------------------------------------

NOT_METRES = {
    "us-survey-feet": ("EPSG:2263", r"NAD83 / New York Long Island \(ftUS\), whose axes are in US survey foot"),
    "kilometres": ("+proj=utm +zone=31 +datum=WGS84 +units=km", r"whose axes are in kilometre"),
    "geographic": ("EPSG:4326", r"WGS 84, a geographic CRS; expected a projected CRS in metres"),
}


@pytest.mark.parametrize("crs, match", NOT_METRES.values(), ids=NOT_METRES.keys())
def test_a_crs_not_in_metres_is_refused(cube, crs, match):
    with pytest.raises(DimensionError, match=match + r".*rio.reproject\('EPSG:326NN'\).*crs='utm'"):
        embed(cube["s2"]["s2"].rio.write_crs(crs).to_dataset())


def test_a_geographic_grid_in_degrees_names_the_crs_not_the_pixel_size(cube):
    da = cube["s2"]["s2"]
    degrees = da.assign_coords(x=2.0 + 1e-4 * np.arange(da.sizes["x"]), y=51.0 - 1e-4 * np.arange(da.sizes["y"]))
    with pytest.raises(DimensionError, match=r"geographic CRS") as info:
        embed(degrees.rio.write_crs("EPSG:4326").to_dataset())
    assert "pixels" not in str(info.value)


def test_projected_crs_in_metres_are_accepted(cube):
    for crs in ("EPSG:32631", "EPSG:2154", "EPSG:3857"):
        assert embed(cube["s2"]["s2"].rio.write_crs(crs).to_dataset()).sizes["feature"] == 256


# -- 4. settings through embed and embed_points --------------------------------------------------

SETTINGS = {
    "device": ({"device": "tpu"}, AnySatInputError, r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    "device-index": ({"device": "cuda:x"}, AnySatInputError, r"device must be .*got 'cuda:x'"),
    "date-origin": ({"date_origin": "yesterday"}, AnySatInputError,
                    r"date_origin must be None \(day of year\) or a date such as '2018-09-01', got 'yesterday'"),
    "normalize": ({"normalize": "yes"}, AnySatInputError,
                  r"normalize must be True, False or a mapping sensor -> \(mean, std\), got 'yes'"),
    "dtype": ({"dtype": "float64"}, AnySatInputError, r"dtype must be None or one of float32, bfloat16, float16"),
    "batch-size": ({"batch_size": 0}, AnySatInputError, r"batch_size must be a positive"),
}


@pytest.mark.parametrize("kwargs, error, match", SETTINGS.values(), ids=SETTINGS.keys())
def test_bad_settings_are_clear_errors_in_embed_and_embed_points(cube, kwargs, error, match):
    with pytest.raises(error, match=match):
        embed(cube, **kwargs)
    with pytest.raises(error, match=match):
        xanysat.embed_points(points(["2021-03-01", "2021-04-01"]), model=MODEL, **kwargs)


def test_patch_size_as_a_string(cube):
    with pytest.raises(PatchSizeError, match=r"got '40': give a number, not a string"):
        embed(cube, patch_size="40")
    with pytest.raises(TypeError, match="patch_size"):  # embed_points has no patch size: one pixel per sample
        xanysat.embed_points(points(["2021-03-01", "2021-04-01"]), model=MODEL, patch_size="40")


def test_settings_are_checked_before_the_input_is_read():
    with pytest.raises(AnySatInputError, match="device"):
        xanysat.embed_points(points([10, 50]), model=MODEL, device="tpu")  # the dates are bad too


def test_a_torch_device_is_a_device():
    import torch

    emb = xanysat.embed_points(points(["2021-03-01", "2021-04-01"]), model=MODEL, device=torch.device("cpu"))
    assert emb.compute().notnull().all()


# -- 5. checkpoints -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_s2():
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))


def _saved(model, directory):
    return save_pretrained(model, directory, model_id="tiny-s2")


def _truncate(d):
    path = d / "model.safetensors"
    path.write_bytes(path.read_bytes()[:200])


def _garbage(d):
    (d / "model.safetensors").write_bytes(b"\x00" * 64)


def _edit_config(change):
    def edit(d):
        meta = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(change(meta)))
    return edit


BROKEN = {
    "truncated-weights": (_truncate, r"model.safetensors is not a readable safetensors file .*truncated or corrupt"),
    "garbage-weights": (_garbage, r"model.safetensors is not a readable safetensors file"),
    "config-not-json": (lambda d: (d / "config.json").write_text("{'config': 1"), r"config.json is not valid JSON"),
    "config-binary": (lambda d: (d / "config.json").write_bytes(b"\xff\xfe\x00"), r"config.json is not valid JSON"),
    "config-a-list": (lambda d: (d / "config.json").write_text("[]"), r"config.json holds no architecture"),
    "config-lacks-architecture": (_edit_config(lambda m: {k: v for k, v in m.items() if k != "config"}),
                                  r"config.json holds no architecture: expected a JSON object with a 'config'"),
    "config-unknown-field": (_edit_config(lambda m: {**m, "config": {**m["config"], "width": 3}}),
                             r"config.json has an invalid 'config' \(TypeError: .*'width'"),
    "config-bad-heads": (_edit_config(lambda m: {**m, "config": {**m["config"], "num_heads": 5}}),
                         r"config.json has an invalid 'config' \(ValueError: embed_dim 32 must be divisible"),
    "config-unknown-sensor": (_edit_config(lambda m: {**m, "config": {**m["config"], "sensors": ["s3"]}}),
                              r"config.json has an invalid 'config' \(ModalityError: unknown sensor 's3'"),
    "card-bad-statistics": (_edit_config(lambda m: {**m, "normalization": {"s2": 3}}),
                            r"config.json has an invalid model card"),
    "wrong-shapes": (_edit_config(lambda m: {**m, "config": {**m["config"], "embed_dim": 64}}),
                     r"model.safetensors \(the weights; the architecture is in .*config.json\) does not match "
                     r"AnySatConfig\(embed_dim=64.*wrong shape.*keep model.safetensors and config.json"),
    "missing-weights-file": (lambda d: (d / "model.safetensors").unlink(), r"has no model.safetensors"),
}


@pytest.mark.parametrize("damage, match", BROKEN.values(), ids=BROKEN.keys())
def test_broken_checkpoints_raise_checkpoint_errors_naming_the_file(tmp_path, tiny_s2, damage, match):
    directory = _saved(tiny_s2, tmp_path / "model")
    damage(directory)
    with pytest.raises(CheckpointError, match=match) as info:
        load_pretrained(directory)
    assert str(tmp_path / "model") in str(info.value)
    with pytest.raises(CheckpointError, match=match):
        load_model(directory)
    with pytest.raises(CheckpointError, match=match):
        xanysat.embed(synthetic_cube(("s2",), extent_m=40, n_dates=2), 40, model=str(directory))


def test_load_model_with_a_file_or_a_missing_directory(tmp_path, tiny_s2):
    directory = _saved(tiny_s2, tmp_path / "model")
    with pytest.raises(CheckpointError, match=r"model.safetensors is a file; expected a model directory.*"
                                              r"load_model\('base', checkpoint="):
        load_model(directory / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unknown model '.*/nowhere' \(no directory .*/nowhere\)"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"has no model.safetensors"):
        load_model(tmp_path)
