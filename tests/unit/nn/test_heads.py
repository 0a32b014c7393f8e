"""Task heads, linear probing, fine-tuning and new-sensor projectors."""

import math

import pytest
import torch
from torch import nn

from xanysat import AnySat, AnySatConfig, Modality
from xanysat.nn.heads import (
    ClassificationHead,
    SegmentationHead,
    TaskModel,
    add_sensor,
    fine_tune,
    linear_probe,
    pool_tokens,
    task_loss,
    train_only_projectors,
)
from xanysat.sensors.table import MODALITIES
from xanysat.testing import synthetic_batch
from xanysat.train.schedules import build_optimizer

D = 32


def tiny(sensors=("s2", "s1")):
    torch.manual_seed(0)
    return AnySat(AnySatConfig(embed_dim=D, depth=1, num_heads=2, sensors=sensors))


def test_pooling_and_classification_shapes():
    tokens = torch.randn(3, 1 + 4, D)
    assert torch.equal(pool_tokens(tokens, "token"), tokens[:, 0])
    torch.testing.assert_close(pool_tokens(tokens, "avg"), sum(tokens[:, k] for k in range(1, 5)) / 4)
    assert torch.equal(pool_tokens(tokens, "max"), torch.maximum(
        torch.maximum(tokens[:, 1], tokens[:, 2]), torch.maximum(tokens[:, 3], tokens[:, 4])))
    with pytest.raises(ValueError, match="pooling"):
        ClassificationHead(D, 3, pooling="mean")
    assert ClassificationHead(D, 7)(tokens).shape == (3, 7)
    head = ClassificationHead(D, 7, hidden=(16, 8), pooling="avg")
    assert [type(m) for m in head.head] == [nn.LayerNorm, nn.Linear, nn.Dropout, nn.ReLU, nn.Linear, nn.Dropout,
                                            nn.ReLU, nn.Linear]
    assert head(tokens).shape == (3, 7) and head(tokens[:, 0]).shape == (3, 7)


def test_segmentation_unfold_places_pixels():
    K, r, H, W = 2, 3, 2, 4
    head = SegmentationHead(K * r * r, K, upsample=r)
    head.head[0] = nn.Identity()  # no LayerNorm, identity Linear: output channel c = feature c
    with torch.no_grad():
        head.head[1].weight.copy_(torch.eye(K * r * r))
        head.head[1].bias.zero_()
    features = torch.zeros(1, H, W, K * r * r)
    for h in range(H):
        for w in range(W):
            for c in range(K * r * r):
                features[0, h, w, c] = 1000 * h + 100 * w + c
    out = head(features)
    assert out.shape == (1, K, H * r, W * r)
    for k in range(K):
        for y in range(H * r):
            for x in range(W * r):
                h, i, w, j = y // r, y % r, x // r, x % r
                assert out[0, k, y, x] == 1000 * h + 100 * w + k * r * r + i * r + j


def test_segmentation_on_dense_output():
    model = TaskModel(tiny().eval(), SegmentationHead(2 * D, 5), patch_size=20, output_modality="s1")
    assert model.output == "dense"
    batch = synthetic_batch(("s2", "s1"), extent_m=60)
    assert model(batch).shape == (2, 5, 6, 6)
    fine = TaskModel(tiny(), SegmentationHead(2 * D, 5, upsample=4, hidden=(16,)), patch_size=20)
    assert fine(batch).shape == (2, 5, 24, 24)


def test_linear_probe_freezes_encoder():
    probe = linear_probe(tiny(), ClassificationHead(D, 4), patch_size=20)
    probe.train()
    assert not probe.encoder.training and probe.head.training
    assert all(not p.requires_grad for p in probe.encoder.parameters())
    assert {id(p) for p in probe.trainable_parameters()} == {id(p) for p in probe.head.parameters()}
    encoder0 = {k: v.clone() for k, v in probe.encoder.state_dict().items()}
    head0 = {k: v.clone() for k, v in probe.head.state_dict().items()}
    optimizer = build_optimizer(probe.trainable_parameters(), lr=1e-2)
    batch = synthetic_batch(("s2", "s1"), extent_m=60)
    loss = task_loss(probe(batch), torch.tensor([0, 3]))
    loss.backward()
    optimizer.step()
    assert all(torch.equal(v, probe.encoder.state_dict()[k]) for k, v in encoder0.items())
    assert any(not torch.equal(v, probe.head.state_dict()[k]) for k, v in head0.items())


def test_fine_tune_trains_encoder():
    model = fine_tune(tiny(), ClassificationHead(D, 4), patch_size=20).train()
    assert model.encoder.training
    before = model.encoder.combiner.blocks[0].mlp.fc1.weight.clone()
    optimizer = build_optimizer(model, lr=1e-3)
    task_loss(model(synthetic_batch(("s2", "s1"), extent_m=60)), torch.tensor([1, 2])).backward()
    optimizer.step()
    assert not torch.equal(before, model.encoder.combiner.blocks[0].mlp.fc1.weight)


def test_multi_scale_averages_logits():
    encoder, head = tiny().eval(), ClassificationHead(D, 3).eval()
    batch = synthetic_batch(("s2", "s1"), extent_m=60)
    with torch.no_grad():
        both = TaskModel(encoder, head, patch_size=(10, 20))(batch)
        each = [TaskModel(encoder, head, patch_size=ps)(batch) for ps in (10, 20)]
    torch.testing.assert_close(both, (each[0] + each[1]) / 2)


def test_losses_by_hand():
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, -0.5]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    hand = 0.0
    for x, y in zip(logits.flatten().tolist(), labels.flatten().tolist()):
        p = 1 / (1 + math.exp(-x))
        hand -= y * math.log(p) + (1 - y) * math.log(1 - p)
    assert float(task_loss(logits, labels, multilabel=True)) == pytest.approx(hand / 6)
    target = torch.tensor([2, -1])  # the second is ignored
    ce = -(2.0 - math.log(sum(math.exp(v) for v in (0.5, -1.0, 2.0))))
    assert float(task_loss(logits, target)) == pytest.approx(ce)


@pytest.fixture
def hls():
    modality = Modality("hls-test", ("B02", "B03", "B04", "B8A", "B11", "B12"), 30.0, 1, True, reduce_scale=3)
    yield modality
    MODALITIES.pop("hls-test", None)


def test_add_sensor_new_projector(hls):
    model = tiny(("s2",))
    s2_before = {k: v.clone() for k, v in model.projectors["s2"].state_dict().items()}
    projector = add_sensor(model, hls)
    assert model.projectors["hls-test"] is projector and "hls-test" in model.config.sensors
    assert projector.key.weight.std() > 0  # random init
    assert all(torch.equal(v, model.projectors["s2"].state_dict()[k]) for k, v in s2_before.items())
    batch = synthetic_batch(("s2", "hls-test"), extent_m=60)
    assert model.eval()(batch, 30).shape == (2, 2, 2, D)
    with pytest.raises(ValueError, match="already"):
        add_sensor(model, hls)
    train_only_projectors(model, ["hls-test"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("projectors.hls-test.") for n in trainable)
    with pytest.raises(ValueError, match="no projector"):
        train_only_projectors(model, ["naip"])
