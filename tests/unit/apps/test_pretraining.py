"""The default model's recipe: real cubes, seeded batches, model card, probe metrics."""


import numpy as np
import pytest
import torch

from xanysat.apps.evaluation import average_precision, fit_logistic
from xanysat.apps.pretraining import (
    BIGEARTHNET,
    batch_factory,
    bigearthnet_cube,
    bigearthnet_files,
    fit_default_normalization,
    worldcereal_cube,
)


@pytest.fixture(scope="module")
def worldcereal():
    return worldcereal_cube()


@pytest.mark.slow
def test_worldcereal_cube_through_the_stac_loader(worldcereal):
    s2, s1 = worldcereal["s2"]["s2"], worldcereal["s1-asc"]["s1-asc"]
    assert s2.shape == (12, 9, 100, 100) and "B8A" not in s2.band.values
    assert s1.shape == (12, 2, 100, 100) and 0 < float(s1.mean()) < 1  # linear power
    assert worldcereal["s2"].to_dataset().rio.crs.to_epsg() == 32631


@pytest.mark.skipif(not BIGEARTHNET.is_dir(), reason="shared BigEarthNet fixtures absent")
def test_bigearthnet_cubes_and_split():
    train, held_out = bigearthnet_files("pretrain"), bigearthnet_files("heldout")
    assert len(train) == 30 and len(held_out) == 24 and not {p.name for p in train} & {p.name for p in held_out}
    for path in (train[0], held_out[0]):  # v1 and v2 name S1 differently
        cube = bigearthnet_cube(path)
        s2, s1 = cube["s2"]["s2"], cube["s1-asc"]["s1-asc"]
        assert s2.shape == (1, 10, 120, 120) and s1.shape == (1, 2, 120, 120)
        z = np.load(path)
        np.testing.assert_array_equal(s2.sel(band="B05").values[0, ::2, ::2], z["S2_B05"])
        assert float(s1.max()) < 10  # dB converted to linear power


def test_batches_are_seeded_and_model_ready(worldcereal):
    norm = fit_default_normalization([worldcereal])
    assert set(norm) == {"s1-asc"} and all(s > 0 for s in norm["s1-asc"].std)
    factory = batch_factory([worldcereal], norm, tile_m=80, patch_sizes=(20, 40), batch_size=3)
    a, b, c = next(factory(1)), next(factory(1)), next(factory(2))
    s2 = a[0]["s2"]  # the two empty months are left out, as embed leaves them out
    assert a[1] in (20, 40) and s2.shape[0] == 3 and s2.shape[1] <= 12 and s2.shape[2:] == (10, 8, 8)
    for key in a[0]:
        assert torch.equal(a[0][key], b[0][key])
    assert any(not torch.equal(a[0][k], c[0][k]) for k in ("s2", "s1-asc"))
    import xanysat

    model = xanysat.load_model("untrained-tiny")
    batch = {k: v for k, v in a[0].items() if not k.startswith("s1-asc")}
    assert model(batch, a[1], "tile").shape == (3, 256)


def test_average_precision_and_probe_by_hand():
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] > 0).astype(int)
    predict = fit_logistic(x[:100], y[:100], multilabel=False)
    assert (predict(x[100:]).argmax(1) == y[100:]).mean() > 0.9


def test_model_card_reports_the_run(tmp_path):
    from helpers.training import batches, config

    from xanysat.apps.pretraining import write_model_card
    from xanysat.nn.checkpoint import save_pretrained
    from xanysat.train.loop import pretrain

    jepa = pretrain(config(tmp_path / "run"), batches, resume=False, progress=False)
    save_pretrained(jepa.teacher, tmp_path / "model", model_id="card-test")
    card = write_model_card(tmp_path / "run", tmp_path / "model", "| a | b |").read_text()
    assert "card-test" in card and "steps 6" in card and "| a | b |" in card
    assert "effective rank" in card and (tmp_path / "model" / "loss.png").is_file()


def test_select_weight_decay_uses_only_the_training_folds():
    from xanysat.apps.evaluation import select_weight_decay

    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 20))
    y = (x[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(int)  # one informative feature, 19 noise
    folds = np.array_split(np.arange(60), 3)
    seen = []

    def accuracy(scores, truth):
        seen.append(len(truth))
        return float((scores.argmax(1) == truth).mean())

    decay = select_weight_decay(x, y, folds, accuracy, multilabel=False, grid=(1e-3, 1.0, 1e3))
    assert decay in (1e-3, 1.0) and seen == [20] * 9  # 1e3 zeroes the weights: chance, never chosen


@pytest.mark.slow
def test_cli_pretrain_from_a_toml_on_the_real_cubes(tmp_path, worldcereal, monkeypatch):
    import xanysat.apps.pretraining as recipe
    from xanysat.cli import main

    monkeypatch.setattr(recipe, "default_cubes", lambda: [worldcereal])
    (tmp_path / "run.toml").write_text(
        'steps = 3\ncheckpoint_every = 2\nmonitor_every = 2\nwarmup_steps = 1\n'
        'model = {preset = "tiny", embed_dim = 32, depth = 1, num_heads = 2, sensors = ["s2", "s1-asc"]}\n'
        'jepa = {predictor_depth = 1, predictor_heads = 2, predictor_dim = 16, target_norm = "layer+batch"}\n'
        'data = [{tile_m = 80, patch_sizes = [20, 40], batch_size = 2}]\n')
    out = tmp_path / "run"
    assert main(["pretrain", "--config", str(tmp_path / "run.toml"), "--out", str(out)]) == 0
    log = (out / "log.csv").read_text().splitlines()
    assert len(log) == 4 and (out / "loss.png").is_file() and (out / "model" / "config.json").is_file()
    import xanysat

    model = xanysat.load_model(out / "model")
    assert model.config.embed_dim == 32 and set(model.card.normalization) == {"s1-asc"}
    assert main(["pretrain", "--config", str(tmp_path / "run.toml"), "--out", str(out), "--steps", "4"]) == 0
    assert len((out / "log.csv").read_text().splitlines()) == 5  # resumed: one more step
