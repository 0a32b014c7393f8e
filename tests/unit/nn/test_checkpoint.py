"""Checkpoint formats: official (strict), xanysat (safetensors + JSON), and load_model."""

import re

import pytest
import torch
from helpers.paths import PARITY, load_fixture

from xanysat import AnySat, AnySatConfig, CheckpointError
from xanysat.nn.checkpoint import load_official, load_pretrained, save_pretrained, to_official_state_dict, weights_hash
from xanysat.nn.hub import ANYSAT_FILE, ANYSAT_REPO, load_model, official_checkpoint_path


def _released_keys():
    path = PARITY / "base_state_dict_keys.txt"
    if not path.is_file():
        pytest.skip("base_state_dict_keys.txt not present")
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    return {key: tuple(int(n) for n in re.findall(r"\d+", shape)) for key, shape, *_ in rows}


@pytest.mark.slow
@pytest.mark.parametrize("preset, n_params", [("tiny", 8_135_015), ("small", 43_811_271), ("base", 125_905_447)])
def test_parameter_counts_match_the_release(preset, n_params):
    model = AnySat(getattr(AnySatConfig, preset)())
    assert sum(p.numel() for p in model.parameters()) == n_params


@pytest.mark.slow
def test_base_official_keys_and_shapes_match_the_released_checkpoint():
    released = _released_keys()
    model = AnySat(AnySatConfig.base())
    ours = {k: tuple(v.shape) for k, v in to_official_state_dict(model).items()}
    assert ours == released


def test_official_round_trip_is_strict():
    model = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2)).eval()
    state = to_official_state_dict(model)
    again = load_official({"state_dict": state}, model.config)
    assert not again.training
    for key, value in again.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[key])
    with pytest.raises(CheckpointError, match="missing"):
        load_official({k: v for k, v in state.items() if k != "cls_token"}, model.config)
    with pytest.raises(CheckpointError, match="not AnySat keys"):
        load_official({**state, "predictor.mask_token": torch.zeros(1)}, model.config)
    with pytest.raises(CheckpointError, match="projector_s1-des"):
        load_official({**state, "projector_s1-des.pad_parameter": torch.zeros(())}, model.config)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_official({**state, "cls_token": torch.zeros(1, 1, 8)}, model.config)


def test_lightning_prefixes_are_stripped():
    model = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
    state = {f"target_encoder.{k}": v for k, v in to_official_state_dict(model).items()}
    loaded = load_official({"state_dict": state}, model.config)
    assert weights_hash(loaded) == weights_hash(model)


def test_official_file_loads_with_weights_only(tmp_path):
    state = load_fixture("tiny_anysat_state_dict.pt")
    path = tmp_path / "AnySat.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    config = __import__("json").loads((PARITY / "tiny_config.json").read_text())
    model = load_official(path, config)
    assert model.config.embed_dim == 64 and not model.training


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": _Unpicklable()}, path)
    with pytest.raises(CheckpointError, match="evil.pth holds objects other than tensors") as info:
        load_official(path, AnySatConfig(embed_dim=32, depth=1, num_heads=2))
    assert "weights_only=False" not in str(info.value)


class _Unpicklable:
    pass


def test_xanysat_format_round_trip(tmp_path):
    model = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2", "aerial")))
    save_pretrained(model, tmp_path / "m", model_id="unit-test")
    loaded = load_pretrained(tmp_path / "m")
    assert loaded.card.model_id == "unit-test" and loaded.config == model.config
    assert weights_hash(loaded) == weights_hash(model)
    assert weights_hash(load_model(tmp_path / "m")) == weights_hash(model)


def _fake_hub_cache(cache, state):
    snapshot = cache / f"models--{ANYSAT_REPO.replace('/', '--')}" / "snapshots" / ("a" * 40)
    (snapshot / ANYSAT_FILE).parent.mkdir(parents=True)
    torch.save({"state_dict": state}, snapshot / ANYSAT_FILE)
    refs = cache / f"models--{ANYSAT_REPO.replace('/', '--')}" / "refs"
    refs.mkdir()
    (refs / "main").write_text("a" * 40)
    return snapshot / ANYSAT_FILE


def test_hub_cache_is_used_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("XANYSAT_ANYSAT_CHECKPOINT", raising=False)
    expected = _fake_hub_cache(tmp_path, {"cls_token": torch.zeros(1)})
    assert official_checkpoint_path(cache_dir=tmp_path, local_files_only=True) == expected


def test_missing_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv("XANYSAT_ANYSAT_CHECKPOINT", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="huggingface-cli download g-astruc/AnySat models/AnySat.pth"):
        load_model("base", cache_dir=tmp_path / "empty", local_files_only=True)
    from xanysat.nn import hub

    monkeypatch.setattr(hub, "DEFAULT_DIR", tmp_path / "no-default")
    with pytest.warns(UserWarning, match="untrained-tiny"):
        model = load_model(None, cache_dir=tmp_path / "empty")
    assert model.config.embed_dim == 256 and "random" in model.card.model_id


def test_checkpoint_env_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("XANYSAT_ANYSAT_CHECKPOINT", str(tmp_path / "nope.pth"))
    with pytest.raises(CheckpointError, match="nope.pth"):
        official_checkpoint_path()


def test_unknown_model_name():
    with pytest.raises(CheckpointError, match="unknown model 'giant'"):
        load_model("giant")


def test_untrained_tiny_is_deterministic():
    assert weights_hash(load_model("untrained-tiny")) == weights_hash(load_model("untrained-tiny"))


def test_default_model_missing_is_a_clear_error(monkeypatch, tmp_path):
    import xanysat.nn.hub as hub
    from xanysat import CheckpointError

    monkeypatch.setattr(hub, "DEFAULT_DIR", tmp_path / "none")
    with pytest.raises(CheckpointError, match="embedded default model is missing"):
        hub.load_model("default")


def test_default_model_is_used_when_base_is_absent(monkeypatch, tmp_path):
    import xanysat.nn.hub as hub
    from xanysat.nn.checkpoint import save_pretrained
    from xanysat.sensors.table import NormStats

    model = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2", "s1-asc")))
    model.card = model.card.with_changes(normalization={"s1-asc": NormStats((0.1, 0.02), (0.05, 0.01), "test")})
    save_pretrained(model, tmp_path / "default", model_id="test-default")
    monkeypatch.setattr(hub, "DEFAULT_DIR", tmp_path / "default")
    monkeypatch.setenv("XANYSAT_ANYSAT_CHECKPOINT", str(tmp_path / "no-such.pth"))
    loaded = hub.load_model()
    assert loaded.card.model_id == "test-default" and loaded.card.normalization["s1-asc"].mean == (0.1, 0.02)


def test_the_shipped_default_model():
    """The package carries its pretrained default: small, safetensors, with its statistics and card."""
    from xanysat.nn.hub import DEFAULT_DIR

    files = {p.name: p.stat().st_size for p in DEFAULT_DIR.iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "loss.png"} <= set(files)
    assert sum(files.values()) < 20e6
    model = load_model("default")
    assert set(model.projectors) == {"s2", "s1-asc"} and not model.training
    assert all(s > 0 for s in model.card.normalization["s1-asc"].std)
    card = (DEFAULT_DIR / "README.md").read_text()
    assert "effective rank" in card and "| pretrained |" in card and "| random |" in card
    batch = {"s2": torch.rand(2, 3, 10, 4, 4), "s2_dates": torch.tensor([[10, 120, 200]] * 2)}
    out = model(batch, 20, "patch")
    assert out.shape == (2, 2, 2, 192) and torch.isfinite(out).all()
