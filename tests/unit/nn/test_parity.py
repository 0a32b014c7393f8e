"""Parity with the official AnySat release, on the scaled-down official checkpoint."""

import json

import pytest
import torch
from helpers.paths import PARITY, load_fixture

from xanysat.nn.checkpoint import config_from_official, load_official

OUTPUTS = load_fixture("expected_outputs.pt") if PARITY.is_dir() else {}
EXTRA = load_fixture("expected_extra_cases.pt") if PARITY.is_dir() else {"outputs": {}}
FLASH = load_fixture("expected_flash_emulated.pt") if PARITY.is_dir() else {}
EXTRA_SENSORS = {"spot": ["spot"], "naip": ["naip"], "s1asc": ["s1-asc", "s1-asc_dates"],
                 "spot_naip_s2": ["spot", "naip", "s2", "s2_dates"]}


def _config():
    return json.loads((PARITY / "tiny_config.json").read_text())


@pytest.fixture(scope="module")
def official_inputs():
    return load_fixture("input.pt")


@pytest.fixture(scope="module")
def model():
    return load_official(load_fixture("tiny_anysat_state_dict.pt"), _config())


def _parse(key):
    parts = key.split("_")
    ps, output = int(parts[0][2:]), parts[1]
    return ps, output, (parts[2] if output == "dense" else None)


@pytest.mark.parametrize("key", sorted(k for k in OUTPUTS if not k.endswith("_f64")))
def test_outputs_float32(model, official_inputs, key):
    ps, output, modality = _parse(key)
    with torch.no_grad():
        got = model(official_inputs, ps, output, modality, dense_layout="official")
    torch.testing.assert_close(got, OUTPUTS[key], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("key", sorted(k for k in OUTPUTS if k.endswith("_f64")))
def test_outputs_float64(model, official_inputs, key):
    ps, output, _ = _parse(key)
    model64 = load_official(load_fixture("tiny_anysat_state_dict.pt"), _config()).double()
    batch = {k: v.double() if v.is_floating_point() else v for k, v in official_inputs.items()}
    with torch.no_grad():
        got = model64(batch, ps, output)
    torch.testing.assert_close(got, OUTPUTS[key], atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("key", sorted(EXTRA["outputs"]))
def test_extra_cases(model, official_inputs, key):
    *name, ps, output = key.split("_")
    name = "_".join(name)
    if name in EXTRA["inputs"]:
        batch = {k: official_inputs[k] for k in EXTRA["inputs"][name]}
    else:
        synthetic = EXTRA["synthetic_inputs"]
        batch = {k: synthetic.get(k, official_inputs.get(k)) for k in EXTRA_SENSORS[name]}
    with torch.no_grad():
        got = model(batch, int(ps[2:]), output)
    torch.testing.assert_close(got, EXTRA["outputs"][key], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("ps", [10, 20])
@pytest.mark.parametrize("sensor", ["aerial", "s2", "s1"])
def test_intermediates(model, official_inputs, ps, sensor):
    expected = load_fixture("expected_intermediates.pt")
    scale = ps // 10
    projector = model.projectors[sensor]
    with torch.no_grad():
        if sensor == "aerial":
            tokens = projector(official_inputs[sensor], scale)
        else:
            tokens = projector(official_inputs[sensor], official_inputs[f"{sensor}_dates"], scale)
        cls, sub = model.patch_encoder(expected[f"ps{ps}_{sensor}_projector"], projector.modality.token_m)
    torch.testing.assert_close(tokens, expected[f"ps{ps}_{sensor}_projector"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cls, expected[f"ps{ps}_{sensor}_spatial_cls"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sub, expected[f"ps{ps}_{sensor}_spatial_subpatches"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("key", sorted(FLASH))
def test_official_flash_attention_emulation(official_inputs, key):
    config = config_from_official(_config()["config"]).with_changes(official_flash_attention=True)
    flash = load_official(load_fixture("tiny_anysat_state_dict.pt"), config)
    ps, output, _ = _parse(key)
    with torch.no_grad():
        got = flash(official_inputs, ps, output)
    torch.testing.assert_close(got, FLASH[key], atol=1e-4, rtol=1e-4)


def test_dense_raster_layout_is_the_documented_permutation(model, official_inputs):
    """At 20 m the corrected aerial layout is the official one un-scrambled (fixture README formula)."""
    with torch.no_grad():
        raster = model(official_inputs, 20, "dense", "aerial")
    official = OUTPUTS["ps20_dense_aerial"]
    for i in range(10):
        for j in range(10):
            k = 10 * i + j
            true_r, true_c = 5 * (k // 50) + (k % 25) // 5, 5 * ((k // 25) % 2) + k % 5
            torch.testing.assert_close(raster[:, true_r::10, true_c::10], official[:, i::10, j::10],
                                       atol=1e-4, rtol=1e-4)
