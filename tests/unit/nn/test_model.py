"""The encoder on every sensor, the fixes to the release, and bad input."""

import pytest
import torch

from xanysat import AnySat, AnySatConfig, DimensionError, ModalityError, PatchSizeError
from xanysat.nn.batch import select_bands
from xanysat.sensors.table import MODALITIES
from xanysat.testing import supported_patch_sizes, synthetic_batch

D = 32
PATCH_SENSORS = sorted(n for n, m in MODALITIES.items() if not m.tile_token)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AnySat(AnySatConfig(embed_dim=D, depth=1, num_heads=2)).eval()


@pytest.mark.parametrize("sensor", sorted(MODALITIES))
def test_every_sensor_alone(model, sensor):
    m = MODALITIES[sensor]
    batch = synthetic_batch((sensor,), extent_m=60, batch_size=2, n_dates=3)
    with torch.no_grad():
        if m.tile_token:
            assert model(batch, 10, "tile").shape == (2, D)
            return
        for ps in supported_patch_sizes(sensor, 60):
            n = 60 // ps
            assert model(batch, ps, "tile").shape == (2, D)
            assert model(batch, ps, "patch").shape == (2, n, n, D)
            assert model(batch, ps, "all").shape == (2, 1 + n * n, D)
            side = round(60 / m.token_m)
            assert model(batch, ps, "dense").shape == (2, side, side, 2 * D)


@pytest.mark.parametrize("sensors, ps", [
    (("s2", "l7", "alos", "modis"), 30),
    (("s2", "l7", "alos", "modis"), 60),
    (("modis", "aerial", "s1"), 20),
    (("naip", "spot", "aerial-flair", "l8", "s1-asc"), 10),
    (("aerial", "s2", "s1"), 60),
])
def test_sensors_mixed(model, sensors, ps):
    batch = synthetic_batch(sensors, extent_m=60, batch_size=2, n_dates=3)
    n = 60 // ps
    with torch.no_grad():
        patch = model(batch, ps, "patch")
        assert patch.shape == (2, n, n, D) and torch.isfinite(patch).all()
        assert model(batch, ps, "all").shape == (2, 1 + n * n, D)


def test_modis_token_changes_the_output(model):
    """MODIS enters the combiner (one token per tile) instead of crashing as in the release."""
    batch = synthetic_batch(("s2", "modis"), extent_m=60)
    other = dict(batch, modis=batch["modis"] + 1.0)
    with torch.no_grad():
        assert not torch.allclose(model(batch, 30, "patch"), model(other, 30, "patch"))


def test_30m_sensors_use_one_token_per_pixel(model):
    """The release lacks reduce_scale=3 for l7/alos, so its tokens don't line up with 10 m sensors."""
    batch = synthetic_batch(("l7",), extent_m=120)
    with torch.no_grad():
        tokens = model.projectors["l7"](batch["l7"], batch["l7_dates"], 60 // 30)
    assert tokens.shape == (2 * 2 * 2, 4, D)  # 2x2 patches of 60 m, 2x2 pixels of 30 m each
    with pytest.raises(PatchSizeError, match="multiple of 30"):
        model(batch, 40)


def test_eval_is_deterministic(model):
    batch = synthetic_batch(("s1", "aerial"), extent_m=60)
    with torch.no_grad():
        torch.testing.assert_close(model(batch, 20), model(batch, 20), atol=0, rtol=0)


def test_rectangular_tiles(model):
    batch = {"s2": torch.randn(1, 2, 10, 4, 6), "s2_dates": torch.tensor([[5, 100]])}
    with torch.no_grad():
        assert model(batch, 20, "patch").shape == (1, 2, 3, D)
        assert model(batch, 10, "dense").shape == (1, 4, 6, 2 * D)


def test_backward_in_train_mode():
    model = AnySat(AnySatConfig(embed_dim=D, depth=1, num_heads=2, sensors=("s2", "aerial"))).train()
    batch = synthetic_batch(("aerial", "s2"), extent_m=20, batch_size=1)
    model(batch, 10, "tile").sum().backward()
    assert model.projectors["s2"].mlp_in[0].weight.grad is not None
    assert model.patch_encoder.blocks[0].attn.rpe_weight.grad is not None


def test_bfloat16_runs(model):
    batch = synthetic_batch(("aerial", "s2"), extent_m=60, dtype=torch.bfloat16)
    with torch.no_grad():
        reference = model(synthetic_batch(("aerial", "s2"), extent_m=60), 20)
        got = model.to(torch.bfloat16)(batch, 20).float()
    model.float()
    assert (got - reference).abs().max() < 0.1 * reference.abs().max()


# -- padded dates -------------------------------------------------------------------------------


def _padded(batch, sensor, extra):
    x, dates = batch[sensor], batch[f"{sensor}_dates"]
    pad = torch.full((x.shape[0], extra, *x.shape[2:]), 1e3)
    mask = torch.cat([torch.ones(x.shape[:2], dtype=torch.bool), torch.zeros(x.shape[0], extra, dtype=torch.bool)], 1)
    return {**batch, sensor: torch.cat([x, pad], 1), f"{sensor}_dates": torch.cat([dates, dates.new_zeros(dates.shape[0], extra)], 1),
            f"{sensor}_mask": mask}


@pytest.mark.parametrize("sensor", ["s2", "s1"])
def test_padded_dates_are_masked(model, sensor):
    """Zero-padded dates change the release's output; with a mask they change nothing."""
    batch = synthetic_batch((sensor,), extent_m=60, n_dates=5)
    padded = _padded(batch, sensor, 3)
    with torch.no_grad():
        reference = model(batch, 20)
        torch.testing.assert_close(model(padded, 20), reference, atol=1e-5, rtol=1e-5)
        official = {k: v for k, v in padded.items() if not k.endswith("_mask")}
        assert (model(official, 20) - reference).abs().max() > 1e-3  # 100x the masked tolerance


def test_padding_is_neutral_for_pixels_without_any_valid_date(model):
    """A pixel with no valid date attends its sample's dates; padded dates stay out."""
    batch = synthetic_batch(("s2",), extent_m=60, n_dates=5)
    mask = torch.ones_like(batch["s2"], dtype=torch.bool)
    mask[:, :, :, 2, 3] = False  # one pixel never observed
    batch = {**batch, "s2_mask": mask}
    padded = _padded({k: v for k, v in batch.items() if k != "s2_mask"}, "s2", 3)
    padded["s2_mask"] = torch.cat([mask, torch.zeros(mask.shape[0], 3, *mask.shape[2:], dtype=torch.bool)], 1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded, 20), model(batch, 20), atol=1e-5, rtol=1e-5)


def test_masked_dates_are_not_computed(model):
    batch = _padded(synthetic_batch(("s2",), extent_m=20, n_dates=2, batch_size=1), "s2", 6)
    seen = []
    hook = model.projectors["s2"].mlp_in[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    with torch.no_grad():
        model(batch, 10)
    hook.remove()
    assert seen == [2 * 2 * 2]  # 4 pixels x 2 valid dates, not 4 x 8


def test_missing_values_take_the_missing_value_parameter(model):
    batch = synthetic_batch(("s2",), extent_m=20, batch_size=1)
    mask = torch.ones_like(batch["s2"], dtype=torch.bool)
    mask[:, :, 6] = False
    pad = model.projectors["s2"].pad_value.item()
    filled = dict(batch, s2=batch["s2"].clone())
    filled["s2"][:, :, 6] = pad
    with torch.no_grad():
        torch.testing.assert_close(model(dict(batch, s2_mask=mask), 10), model(filled, 10))


def test_missing_band_on_real_60m_sentinel2(model):
    """The 60 m L2A product has no B08: it is filled and reported."""
    rasterio = pytest.importorskip("rasterio")
    from helpers.paths import FIXTURES

    folder = next((FIXTURES / "real" / "s2-l2a-t29unu").glob("*.SAFE/GRANULE/*/IMG_DATA/R60m"), None)
    if folder is None:
        pytest.skip("Sentinel-2 fixture not present")
    names = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12"]
    window = rasterio.windows.Window(1200, 600, 6, 6)
    bands = []
    for name in names:
        with rasterio.open(next(folder.glob(f"*_{name}_60m.jp2"))) as src:
            bands.append(src.read(1, window=window).astype("float32"))
    x = (torch.from_numpy(__import__("numpy").stack(bands))[None, None] - 1000.0 - 2000.0) / 2000.0  # baseline 04.00 offset, rough scaling
    with pytest.warns(UserWarning, match="B08"):
        s2 = select_bands(x, names, "s2")
    assert s2.filled == ("B08",) and s2.data.shape == (1, 1, 10, 6, 6)
    assert not s2.mask[:, :, 6].any() and s2.mask[:, :, [0, 1, 2, 7]].all()
    batch = {"s2": s2.data, "s2_dates": torch.tensor([[278]]), "s2_mask": s2.mask}
    # the 60 m pixels are given to the model as what they are: a 360 m tile at 60 m would need
    # resampling, which xanysat never does silently; here the grid is declared 10 m on purpose.
    with torch.no_grad():
        assert torch.isfinite(model(batch, 20)).all()


# -- the dense layout ---------------------------------------------------------------------------


def test_dense_aerial_is_spatially_correct(model):
    """A bright 2 m sub-patch shows up where it is with the raster layout, not with the official one."""
    batch = {"aerial": torch.zeros(1, 4, 100, 100)}
    row, col = 3, 7  # sub-patch (row 3, col 7) of the 20 m patch at the top left
    batch["aerial"][:, :, row * 10:(row + 1) * 10, col * 10:(col + 1) * 10] = 5.0
    with torch.no_grad():
        raster = model(batch, 20, "dense")[0, :10, :10, D:]
        official = model(batch, 20, "dense", dense_layout="official")[0, :10, :10, D:]
    def brightest(features):
        distance = (features - features.median(dim=0).values.median(dim=0).values).norm(dim=-1)
        return divmod(int(distance.argmax()), 10)
    assert brightest(raster) == (row, col)
    assert brightest(official) != (row, col)


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mutate, error, message", [
    (lambda b: b.update(label=torch.zeros(2)), ModalityError, "unknown key 'label'"),
    (lambda b: b.update({"s1-des": torch.zeros(2, 1, 2, 6, 6)}), ModalityError, "s1-des"),
    (lambda b: b.update(s2a=torch.zeros(2)), ModalityError, "Keys must be sensors"),
    (lambda b: b.update(s1_dates=torch.zeros(2, 3)), ModalityError, "no 's1'"),
    (lambda b: b.update(s2=b["s2"][:, :, :9]), DimensionError, "9 channels"),
    (lambda b: b.update(s2=b["s2"][:, 0]), DimensionError, r"expected \(B, T, C, H, W\)"),
    (lambda b: b.update(aerial=b["aerial"][None]), DimensionError, r"expected \(B, C, H, W\)"),
    (lambda b: b.pop("s2_dates"), DimensionError, "give its dates"),
    (lambda b: b.update(s2_dates=b["s2_dates"][:, :2]), DimensionError, "s2_dates' has shape"),
    (lambda b: b.update(aerial=b["aerial"][:, :, :250, :250]), DimensionError, "same tile"),
    (lambda b: b.update(aerial=b["aerial"][:1]), DimensionError, "batch size"),
    (lambda b: b["s2"].__setitem__((0, 0, 0, 0, 0), float("nan")), DimensionError, "NaN"),
    (lambda b: b.update(s2_mask=torch.ones(2, 3, 1)), DimensionError, "s2_mask' has shape"),
    (lambda b: b.update(aerial_dates=torch.zeros(2, 1)), DimensionError, "single-date"),
    (lambda b: b.update(s2=b["s2"].long()), DimensionError, "floating-point"),
])
def test_bad_batches(model, mutate, error, message):
    batch = synthetic_batch(("aerial", "s2"), extent_m=60, n_dates=3)
    mutate(batch)
    with pytest.raises(error, match=message):
        model(batch, 20)


@pytest.mark.parametrize("ps, message", [(15, "multiple of 10"), (40, "does not divide"), (0, "positive"),
                                         (-10, "positive"), (True, "multiple of 10")])
def test_bad_patch_sizes(model, ps, message):
    with pytest.raises(PatchSizeError, match=message):
        model(synthetic_batch(("s2",), extent_m=60), ps)


def test_nan_under_a_mask_is_fine(model):
    batch = synthetic_batch(("s2",), extent_m=20, n_dates=2)
    batch["s2"][0, 1] = float("nan")
    mask = torch.ones(batch["s2"].shape[:2], dtype=torch.bool)
    mask[0, 1] = False
    with torch.no_grad():
        assert torch.isfinite(model(dict(batch, s2_mask=mask), 10)).all()


def test_modis_must_be_one_pixel(model):
    batch = synthetic_batch(("s2", "modis"), extent_m=60)
    batch["modis"] = batch["modis"].expand(-1, -1, -1, 2, 2)
    with pytest.raises(DimensionError, match="H = W = 1"):
        model(batch, 30)


def test_modis_alone_gives_a_tile_embedding_only(model):
    batch = synthetic_batch(("modis",), extent_m=60)
    with pytest.raises(ModalityError, match="output='tile'"):
        model(batch, 30, "patch")


def test_unknown_sensor_in_config():
    with pytest.raises(ModalityError, match="Known sensors"):
        AnySatConfig(sensors=("s2", "sentinel2"))


def test_sensor_outside_the_model():
    model = AnySat(AnySatConfig(embed_dim=D, depth=1, num_heads=2, sensors=("s2",)))
    with pytest.raises(ModalityError, match="no projector for 'aerial'"):
        model(synthetic_batch(("aerial",), extent_m=20), 10)


def test_dense_needs_a_patch_sensor(model):
    with pytest.raises(ModalityError, match="output_modality 'modis'"):
        model(synthetic_batch(("s2", "modis"), extent_m=60), 30, "dense", "modis")


def test_torch_modules_do_not_import_xarray():
    """The model stays pure torch: its modules import neither xarray nor dask (the package
    itself imports xarray to register the accessor)."""
    import ast
    from pathlib import Path

    import xanysat

    root = Path(xanysat.__file__).parent
    files = sorted((root / "nn").glob("*.py")) + sorted((root / "train").glob("*.py"))
    assert len(files) > 8
    for path in files:
        name = path.name
        tree = ast.parse(path.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"xarray", "dask"}, name


def test_training_after_inference_mode():
    """Cached positions and iRPE buckets built under inference_mode must not break autograd later."""
    from xanysat.nn.layers import _irpe_buckets_cpu, _sincos_2d_cpu, _sincos_2d_on, irpe_buckets

    for cache in (_irpe_buckets_cpu, _sincos_2d_cpu, _sincos_2d_on, irpe_buckets):
        cache.cache_clear()
    model = AnySat(AnySatConfig(embed_dim=D, depth=1, num_heads=2, sensors=("s2",)))
    batch = synthetic_batch(("s2",), extent_m=40, batch_size=1)
    with torch.inference_mode():
        model.eval()(batch, 20)
    model.train()(batch, 20).sum().backward()
    assert model.cls_token.grad is not None
