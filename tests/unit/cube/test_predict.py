"""predict: a head on a cube gives a lazy georeferenced map equal to the head on embed's output."""

import numpy as np
import pytest
import torch
import xarray as xr

import xanysat
from xanysat.cube.predict import predict
from xanysat.nn.heads import ClassificationHead, SegmentationHead, fine_tune, linear_probe
from xanysat.testing import synthetic_cube


@pytest.fixture(scope="module")
def encoder():
    return xanysat.load_model("untrained-tiny")


@pytest.fixture(scope="module")
def cube():
    c = synthetic_cube(("s2",), extent_m=(200, 120), n_dates=3, chunks={"y": 7, "x": 5})
    s2 = c["s2"].to_dataset()
    values = s2["s2"].values.copy()
    values[:, :, :4, :4] = np.nan  # the top-left patch has no data
    return xr.DataTree.from_dict({"s2": s2.assign(s2=(s2["s2"].dims, values))})


def test_patch_probabilities_equal_the_head_on_embed(encoder, cube):
    torch.manual_seed(0)
    task = linear_probe(encoder, ClassificationHead(256, 4), patch_size=40)
    p = predict(cube, task, classes=list("abcd"), tile_size=80, block_tiles=1)
    assert p.chunks is not None and p.dims == ("class", "y", "x") and list(p["class"].values) == list("abcd")
    emb = xanysat.embed(cube, 40, model=encoder, tile_size=80, block_tiles=1).compute()
    with torch.no_grad():
        logits = task.head(torch.from_numpy(np.nan_to_num(emb.values.transpose(1, 2, 0))).reshape(-1, 256))
    expected = logits.softmax(-1).reshape(emb.sizes["y"], emb.sizes["x"], 4).permute(2, 0, 1).numpy()
    values = p.values
    assert np.isnan(values[:, 0, 0]).all()
    np.testing.assert_allclose(values[:, 1:, 1:], expected[:, 1:, 1:], atol=1e-6)
    np.testing.assert_allclose(np.nansum(values, axis=0)[1:, 1:], 1, atol=1e-5)
    assert p.rio.crs == emb.rio.crs and np.array_equal(p.x, emb.x) and p.attrs["kind"] == "probabilities"


def test_classes_map_marks_no_data(encoder, cube, tmp_path):
    task = linear_probe(encoder, ClassificationHead(256, 3), patch_size=40)
    classes = predict(cube, task, kind="classes", tile_size=80)
    probs = predict(cube, task, tile_size=80).compute()
    values = classes.values
    assert values.dtype == np.int16 and values[0, 0] == -1 and classes.rio.nodata == -1
    np.testing.assert_array_equal(values[1:, 1:], probs.values.argmax(0)[1:, 1:])
    classes.to_zarr(tmp_path / "classes.zarr")
    back = xr.open_zarr(tmp_path / "classes.zarr")["classes"]
    assert back.rio.crs == classes.rio.crs


def test_segmentation_head_unfolds_sub_patches(encoder, cube):
    head = SegmentationHead(512, 2, upsample=2)
    task = fine_tune(encoder, head, patch_size=40)
    p = predict(cube, task, tile_size=80)
    dense = xanysat.embed(cube, 40, "dense", model=encoder, tile_size=80).compute()
    assert p.sizes["y"] == 2 * dense.sizes["y"] and p.sizes["x"] == 2 * dense.sizes["x"]
    np.testing.assert_allclose(np.diff(p.x.values), 5.0)
    with torch.no_grad():
        expected = head(torch.from_numpy(np.nan_to_num(dense.values.transpose(1, 2, 0)))[None])[0].softmax(0).numpy()
    np.testing.assert_allclose(p.values[:, 8:, 8:], expected[:, 8:, 8:], atol=1e-5)


def test_bad_kind_and_class_names(encoder, cube):
    task = linear_probe(encoder, ClassificationHead(256, 3), patch_size=40)
    with pytest.raises(ValueError, match="kind must be one of"):
        predict(cube, task, kind="votes")
    with pytest.raises(ValueError, match="classes has 2 names"):
        predict(cube, task, classes=["a", "b"])
