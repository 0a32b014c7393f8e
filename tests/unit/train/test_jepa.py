"""JEPA pretraining blocks: masks, predictor, EMA, schedules, losses, the full step."""

import math

import pytest
import torch
from torch import nn

from xanysat import AnySat, AnySatConfig
from xanysat.nn.layers import irpe_buckets_at
from xanysat.testing import synthetic_batch
from xanysat.train.jepa import JEPA, JEPAConfig, train_step
from xanysat.train.losses import jepa_loss, mil_nce_loss, prediction_loss, target_embeddings, variance_covariance_loss
from xanysat.train.masks import apply_modality_mask, drop_dates, sample_block_masks, sample_modality_mask
from xanysat.train.monitor import effective_rank, embedding_std
from xanysat.train.predictor import Predictor
from xanysat.train.schedules import build_optimizer, lr_at, weight_decay_at
from xanysat.train.student import encode_context
from xanysat.train.teacher import ema_update, momentum_at

D = 32


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return AnySat(AnySatConfig(embed_dim=D, depth=1, num_heads=2, sensors=("s2", "s1", "modis"))).eval()


# -- block masks ------------------------------------------------------------------------------


def _rect(index, width):
    rows, cols = index // width, index % width
    h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    return h, w, h * w == len(index)


def test_block_masks_shapes_counts_and_rectangles():
    m = sample_block_masks(5, (8, 8), generator=gen(0))
    assert m.context.dtype == m.targets.dtype == torch.int64
    assert m.context.shape[0] == 5 and m.targets.shape[:2] == (4, 5)
    assert 0 < m.context.shape[1] and 0 < m.targets.shape[2]
    for idx in (m.context, m.targets):
        assert int(idx.min()) >= 0 and int(idx.max()) < 64
    # target sizes are drawn once per batch: every target block is the same full h x w rectangle
    shapes = {_rect(t, 8) for t in m.targets.reshape(-1, m.targets.shape[2])}
    assert len(shapes) == 1 and next(iter(shapes))[2]
    h, w, _ = next(iter(shapes))
    assert 0.75 * 0.8 <= h / w <= 1.5 / 0.8  # aspect range (rounding allowed)
    for row in m.context:
        assert len(set(row.tolist())) == len(row)


def test_context_is_a_square_block_without_exclusion():
    m = sample_block_masks(4, (10, 10), generator=gen(1), allow_overlap=True)
    for row in m.context:
        h, w, full = _rect(row, 10)
        assert full and h == w  # context aspect ratio is 1
        assert 0.85 * 100 >= h * w - 20  # ~85-100 % of the grid, capped at side-1 (I-JEPA)


@pytest.mark.parametrize("seed", range(5))
def test_targets_removed_from_context(seed):
    # small targets: the exclusion never needs relaxing, so no overlap may remain
    m = sample_block_masks(6, (10, 10), generator=gen(seed), target_scale=(0.05, 0.1))
    for b in range(6):
        assert not set(m.context[b].tolist()) & set(m.targets[:, b].flatten().tolist())


def test_min_keep_and_impossible_min_keep():
    m = sample_block_masks(4, (6, 6), generator=gen(0), target_scale=(0.5, 0.8), min_keep=10)
    assert m.context.shape[1] > 10 and m.targets.shape[2] > 10
    with pytest.raises(ValueError, match="min_keep=40"):
        sample_block_masks(1, (6, 6), generator=gen(0), min_keep=40)


def test_masks_deterministic_under_seed():
    a = sample_block_masks(8, (8, 8), generator=gen(3))
    b = sample_block_masks(8, (8, 8), generator=gen(3))
    c = sample_block_masks(8, (8, 8), generator=gen(4))
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert not (a.context.shape == c.context.shape and torch.equal(a.context, c.context)
                and torch.equal(a.targets, c.targets))


# -- modality masking, temporal dropout ---------------------------------------------------------


def test_modality_mask_counts_and_one_sensor_per_patch():
    B, M, P = 4, 3, 7
    keep = sample_modality_mask(B, M, P, ratio=0.5, generator=gen(0))
    assert keep.shape == (B, M * P)
    assert keep.sum(1).tolist() == [P + int(P * (M - 1) * 0.5)] * B
    assert keep.view(B, M, P).any(dim=1).all()
    assert sample_modality_mask(2, 1, 5, generator=gen(0)).all()  # one sensor: nothing masked
    assert torch.equal(keep, sample_modality_mask(B, M, P, ratio=0.5, generator=gen(0)))
    tokens, token = torch.randn(B, M * P, 5), torch.randn(1, 1, 5)
    out = apply_modality_mask(tokens, keep, token)
    assert torch.equal(out[keep], tokens[keep])
    assert torch.equal(out[~keep], token[0].expand(int((~keep).sum()), -1))


def test_drop_dates_keeps_half_of_each_sample_dates():
    batch = synthetic_batch(("aerial", "s2", "s1"), extent_m=60, n_dates=6, batch_size=3)
    batch["s1_mask"] = torch.rand(3, 6) > 0.3
    out = drop_dates(batch, ratio=0.5, generator=gen(0))
    assert out["aerial"] is batch["aerial"]
    for name in ("s2", "s1"):
        assert out[name].shape[:2] == out[f"{name}_dates"].shape == (3, 3)
        for b in range(3):
            for t in range(3):
                src = int((batch[f"{name}_dates"][b] == out[f"{name}_dates"][b, t]).nonzero()[0])
                assert torch.equal(out[name][b, t], batch[name][b, src])
                if name == "s1":
                    assert out["s1_mask"][b, t] == batch["s1_mask"][b, src]
    assert not torch.equal(out["s2_dates"][0], out["s2_dates"][1]) or not torch.equal(
        out["s2_dates"][1], out["s2_dates"][2])  # per-sample draws
    one = drop_dates(synthetic_batch(("s2",), n_dates=1), generator=gen(0))
    assert one["s2"].shape[1] == 1


# -- masked student forward ---------------------------------------------------------------------


@pytest.mark.parametrize("sensors, ps, extent", [(("s2", "s1"), 10, 60), (("s2", "s1", "modis"), 20, 120)])
def test_full_context_equals_encoder(encoder, sensors, ps, extent):
    batch = synthetic_batch(sensors, extent_m=extent)
    with torch.no_grad():
        ref = encoder(batch, ps, "all")
        P = ref.shape[1] - 1
        out, tokens = encode_context(encoder, batch, ps, torch.arange(P).expand(2, -1))
    torch.testing.assert_close(out, ref)
    assert set(tokens) == {"s2", "s1"} and tokens["s2"].shape == (2, P, D)


def test_permuted_context_permutes_outputs(encoder):
    # per-sample query positions and iRPE buckets must follow the tokens they belong to
    batch = synthetic_batch(("s2", "s1"), extent_m=60)
    perm = torch.stack([torch.randperm(36, generator=gen(b)) for b in range(2)])
    with torch.no_grad():
        ref = encoder(batch, 10, "all")[:, 1:]
        out, _ = encode_context(encoder, batch, 10, perm)
    torch.testing.assert_close(out[:, 1:], torch.stack([ref[b, perm[b]] for b in range(2)]))


def test_student_runs_the_encoders_own_modules(encoder):
    called = []
    hooks = [module.register_forward_hook(lambda *_, name=name: called.append(name))
             for name, module in (("patch", encoder.patch_encoder), ("block", encoder.combiner.blocks[0]),
                                  ("cross", encoder.combiner.cross), ("projector", encoder.projectors["s2"]))]
    try:
        with torch.no_grad():
            encode_context(encoder, synthetic_batch(("s2", "s1"), extent_m=60), 20, torch.tensor([[0, 4], [1, 8]]))
    finally:
        for hook in hooks:
            hook.remove()
    assert sorted(set(called)) == ["block", "cross", "patch", "projector"]


def test_context_buckets_by_hand():
    context = torch.tensor([[0, 2, 8], [4, 5, 7]])  # on a 3x3 grid
    buckets = irpe_buckets_at((3, 3), 1, context, n_blocks=2)
    assert buckets.shape == (2, 4, 7)
    assert (buckets[:, 0] == 7).all() and (buckets[:, :, 0] == 7).all()  # class token bucket
    expected = {0: 3, 1: 4, 2: 5, 3: 5}  # rounded distance -> bucket; >= 4: 6
    for b in range(2):
        for i, p in enumerate(context[b].tolist()):
            for j, q in enumerate(context[b].tolist() * 2):
                d = round(math.hypot(p // 3 - q // 3, p % 3 - q % 3))
                assert buckets[b, 1 + i, 1 + j] == expected.get(d, 6)


# -- predictor ----------------------------------------------------------------------------------


def test_predictor_base_size_and_shapes():
    base = Predictor(768)  # SPEC 3.7 / 5: 29.54 M
    assert round(sum(p.numel() for p in base.parameters()) / 1e6, 2) == 29.54
    p = Predictor(D, depth=1, num_heads=2)
    ctx = torch.tensor([[0, 1, 2], [3, 4, 5]])
    tgt = torch.tensor([[[6, 7], [0, 8]], [[8, 6], [1, 2]]])  # (2 blocks, B 2, 2)
    out = p(torch.randn(2, 3, D), ctx, tgt, grid=(3, 3), scale=1)
    assert out.shape == (4, 2, D)
    # two mask tokens at different positions give different predictions
    assert not torch.allclose(out[0, 0], out[0, 1])


# -- EMA and schedules -------------------------------------------------------------------------


def test_ema_update_hand_formula_and_teacher_without_grad(encoder):
    jepa = JEPA(AnySat(AnySatConfig(embed_dim=D, depth=1, num_heads=2, sensors=("s2",))),
                JEPAConfig(predictor_depth=1, predictor_heads=2))
    assert all(not p.requires_grad for p in jepa.teacher.parameters())
    with torch.no_grad():
        for p in jepa.student.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in jepa.teacher.parameters()]
    jepa.update_teacher(0.9)
    for t0, t, s in zip(before, jepa.teacher.parameters(), jepa.student.parameters()):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s.detach())
        assert not t.requires_grad and t.grad is None
    assert not jepa.teacher.training and not jepa.train().teacher.training
    with pytest.raises(ValueError, match="parameters"):
        ema_update(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 0.5)


def test_schedules_at_start_middle_end():
    assert momentum_at(0, 1000) == 0.996
    assert momentum_at(500, 1000) == pytest.approx(0.998)
    assert momentum_at(1000, 1000) == 1.0 and momentum_at(5000, 1000) == 1.0
    assert momentum_at(250, 1000, shape="cosine") == pytest.approx(1 - 0.004 * (1 + math.cos(math.pi / 4)) / 2)
    assert momentum_at(500, 1000, shape="cosine") == pytest.approx(0.998)
    assert lr_at(0) == lr_at(10**6) == 5e-5  # SPEC: constant, plateau-reduced per epoch
    assert lr_at(4, base_lr=1e-3, warmup_steps=10) == pytest.approx(5e-4)
    assert lr_at(10, base_lr=1e-3, warmup_steps=10, total_steps=110, final_lr=1e-5) == pytest.approx(1e-3)
    assert lr_at(60, base_lr=1e-3, warmup_steps=10, total_steps=110, final_lr=1e-5) == pytest.approx(5.05e-4)
    assert lr_at(110, base_lr=1e-3, warmup_steps=10, total_steps=110, final_lr=1e-5) == pytest.approx(1e-5)
    assert weight_decay_at(0) == weight_decay_at(10**6) == 0.05
    assert weight_decay_at(50, start=0.04, end=0.4, total_steps=100) == pytest.approx(0.22)


# -- losses -------------------------------------------------------------------------------------


def test_smooth_l1_by_hand():
    pred = torch.tensor([[0.0, 0.5], [3.0, -1.0]])
    target = torch.tensor([[0.2, 2.5], [1.0, -1.0]])
    hand = []
    for p, t in zip(pred.flatten().tolist(), target.flatten().tolist()):
        d = abs(p - t)
        hand.append(0.5 * d * d if d < 1 else d - 0.5)
    assert float(prediction_loss(pred, target)) == pytest.approx(sum(hand) / 4)


def test_target_embeddings_layer_norm_and_gather():
    tokens = torch.randn(2, 9, 4)
    targets = torch.tensor([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])
    out = target_embeddings(tokens, targets)
    assert out.shape == (4, 2, 4)
    for k in range(2):
        for b in range(2):
            for j in range(2):
                x = tokens[b, int(targets[k, b, j])].tolist()
                mean = sum(x) / 4
                var = sum((v - mean) ** 2 for v in x) / 4
                hand = [(v - mean) / math.sqrt(var + 1e-5) for v in x]
                assert out[k * 2 + b, j].tolist() == pytest.approx(hand, abs=1e-5)


def test_target_embeddings_batch_norm_removes_the_shared_component():
    shared = 10 * torch.randn(4)
    tokens = shared + 0.01 * torch.randn(3, 5, 4)
    targets = torch.tensor([[[0, 1], [2, 3], [4, 0]]])
    layer = target_embeddings(tokens, targets)
    batch = target_embeddings(tokens, targets, norm="layer+batch")
    h = torch.nn.functional.layer_norm(tokens, (4,)).reshape(-1, 4)
    hand = (h - h.mean(0)) / h.std(0)
    for b in range(3):
        for j in range(2):
            assert batch[b, j].tolist() == pytest.approx(hand[b * 5 + int(targets[0, b, j])].tolist(), abs=1e-4)
    assert float(layer.std(dim=(0, 1)).mean()) < 0.05  # official targets: nearly one vector
    assert float(batch.reshape(-1, 4).std(0).mean()) > 0.5
    with pytest.raises(ValueError, match="target_norm must be"):
        target_embeddings(tokens, targets, norm="batch")


def _mil_nce_by_hand(tokens, tau, valid=None, negatives="all"):
    M, B, P, _ = tokens.shape
    ids = [(m, b, p) for m in range(M) for b in range(B) for p in range(P)]
    ok = (lambda i: True) if valid is None else (lambda i: bool(valid[i]))

    def cos(i, j):
        a, c = tokens[i].tolist(), tokens[j].tolist()
        return sum(x * y for x, y in zip(a, c)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in c))

    terms = []
    for i in ids:
        if not ok(i):
            continue
        same = (lambda j: j[0] == i[0]) if negatives == "other-sensors" else (lambda j: j[0] == i[0] and j[1] == i[1])
        others = [j for j in ids if ok(j) and not same(j)]
        pos = [j for j in others if j[1] == i[1] and j[2] == i[2]]
        if not pos:
            continue
        terms.append(math.log(sum(math.exp(cos(i, j) / tau) for j in others))
                     - math.log(sum(math.exp(cos(i, j) / tau) for j in pos)))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("M", [2, 3])
def test_mil_nce_by_hand(M):
    tokens = torch.randn(M, 2, 3, 4, generator=gen(M), dtype=torch.float64)
    assert float(mil_nce_loss(list(tokens), tau=0.1)) == pytest.approx(_mil_nce_by_hand(tokens, 0.1), rel=1e-6)
    assert float(mil_nce_loss(tokens, tau=0.5)) == pytest.approx(_mil_nce_by_hand(tokens, 0.5), rel=1e-6)
    cross = float(mil_nce_loss(tokens, tau=0.1, negatives="other-sensors"))
    assert cross == pytest.approx(_mil_nce_by_hand(tokens, 0.1, negatives="other-sensors"), rel=1e-6)


def test_mil_nce_collapsed_tokens():
    same = torch.ones(2, 3, 4, 5)  # every token one vector: loss = log(columns)
    assert float(mil_nce_loss(same)) == pytest.approx(math.log(2 * 3 * 4 - 4), rel=1e-6)
    assert float(mil_nce_loss(same, negatives="other-sensors")) == pytest.approx(math.log(3 * 4), rel=1e-6)
    with pytest.raises(ValueError, match="negatives must be"):
        mil_nce_loss(same, negatives="none")


def test_mil_nce_with_validity_and_single_sensor():
    tokens = torch.randn(2, 2, 3, 4, generator=gen(7), dtype=torch.float64)
    valid = torch.ones(2, 2, 3, dtype=torch.bool)
    valid[0, 0, 1] = valid[1, 1, 2] = False
    got = float(mil_nce_loss(tokens, tau=0.1, valid=valid))
    assert got == pytest.approx(_mil_nce_by_hand(tokens, 0.1, valid), rel=1e-6)
    single = torch.randn(1, 2, 3, 4, requires_grad=True)
    zero = mil_nce_loss(single)
    assert zero.requires_grad and float(zero.detach()) == 0.0


def test_jepa_loss_weights():
    pred, target = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    tokens = [torch.randn(2, 3, 5), torch.randn(2, 3, 5)]
    out = jepa_loss(pred, target, tokens, prediction_weight=2.0, contrastive_weight=0.5)
    expected = 2.0 * prediction_loss(pred, target) + 0.5 * mil_nce_loss(tokens, tau=0.1)
    torch.testing.assert_close(out["loss"], expected)
    assert set(out) == {"loss", "prediction_loss", "contrastive_loss"}


# -- collapse monitor --------------------------------------------------------------------------


def test_collapse_monitor_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])
    assert float(embedding_std(x)) == pytest.approx((2.0 + 0.0) / 2)  # unbiased std of 1,3,5 is 2
    assert float(embedding_std(torch.ones(10, 4))) == 0.0
    assert float(effective_rank(torch.eye(5))) == pytest.approx(5.0)
    assert float(effective_rank(torch.ones(6, 3))) == pytest.approx(1.0, abs=1e-4)
    p = (0.75, 0.25)  # singular values 3 and 1
    hand = math.exp(-sum(v * math.log(v) for v in p))
    assert float(effective_rank(torch.diag(torch.tensor([3.0, 1.0])))) == pytest.approx(hand)


# -- the full step ------------------------------------------------------------------------------


def test_full_jepa_step_decreases_loss():
    torch.manual_seed(0)
    encoder = AnySat(AnySatConfig(embed_dim=D, depth=1, num_heads=2, sensors=("s2", "s1")))
    jepa = JEPA(encoder, JEPAConfig(predictor_depth=1, predictor_heads=2)).train()
    teacher0 = [p.clone() for p in jepa.teacher.parameters()]
    optimizer = build_optimizer(jepa, lr=1e-3)
    assert all(g["weight_decay"] == 0.05 for g in optimizer.param_groups)
    n_trainable = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert n_trainable == sum(p.numel() for n, p in jepa.named_parameters()
                              if p.requires_grad and not n.startswith("teacher."))
    batch = synthetic_batch(("s2", "s1"), extent_m=60, batch_size=2, n_dates=4)
    losses = []
    for step in range(20):
        out = train_step(jepa, batch, 10, optimizer, momentum=momentum_at(step, 20, start=0.9),
                         generator=gen(0))  # the same masks every step: a fixed problem
        losses.append((float(out.loss.detach()), float(out.prediction_loss.detach()),
                       float(out.contrastive_loss.detach())))
    assert out.predictions.shape == out.targets.shape
    assert out.predictions.shape[0] == 4 * 2 and out.targets.requires_grad is False
    first, last = torch.tensor(losses[:3]).mean(0), torch.tensor(losses[-3:]).mean(0)
    assert torch.isfinite(torch.tensor(losses)).all()
    assert last[0] < 0.97 * first[0], losses  # total
    assert last[1] < 0.8 * first[1], losses  # latent prediction
    assert last[2] < first[2], losses  # contrastive
    assert all(p.grad is None for p in jepa.teacher.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(teacher0, jepa.teacher.parameters()))


def test_variance_covariance_loss_by_hand():
    x = torch.randn(2, 5, 3, generator=gen(3), dtype=torch.float64)
    rows = x.reshape(10, 3).tolist()
    mean = [sum(r[k] for r in rows) / 10 for k in range(3)]
    cov = [[sum((r[i] - mean[i]) * (r[j] - mean[j]) for r in rows) / 9 for j in range(3)] for i in range(3)]
    variance = sum(max(0.0, 1.0 - math.sqrt(cov[k][k] + 1e-4)) for k in range(3)) / 3
    covariance = sum(cov[i][j] ** 2 for i in range(3) for j in range(3) if i != j) / 3
    got = variance_covariance_loss(x)
    assert float(got[0]) == pytest.approx(variance, rel=1e-5) and float(got[1]) == pytest.approx(covariance, rel=1e-5)


def test_jepa_regulariser_weights_enter_the_loss():
    config = AnySatConfig.tiny().with_changes(embed_dim=32, depth=1, num_heads=2, sensors=("s2",))
    batch = synthetic_batch("s2", extent_m=80, batch_size=2, seed=0)
    losses = []
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        jepa = JEPA(AnySat(config), JEPAConfig(predictor_depth=1, predictor_heads=2, variance_weight=weight))
        out = jepa(batch, 20, generator=torch.Generator().manual_seed(1))
        losses.append((float(out.loss), float(out.prediction_loss)))
    assert losses[0][1] == pytest.approx(losses[1][1])  # same masks, same prediction
    assert losses[1][0] > losses[0][0] + 0.1  # the variance hinge adds up to 1


def test_target_embeddings_position_norm_removes_what_every_sample_shares_at_a_position():
    position_code = 3 * torch.randn(1, 6, 4)  # the same at each position in every sample
    content = 0.1 * torch.randn(5, 6, 4)
    targets = torch.tensor([[[0, 1]] * 5])
    out = target_embeddings(position_code + content, targets, norm="layer+position")
    h = torch.nn.functional.layer_norm(position_code + content, (4,))
    centred = h - h.mean(0, keepdim=True)
    hand = centred / centred.reshape(-1, 4).std(0)
    assert torch.allclose(out, hand[:, :2], atol=1e-4)
    assert float(out.mean(0).abs().max()) < 1e-5  # no position left in the targets


def test_variance_per_position_ignores_positional_spread():
    grid = torch.arange(8.0)[:, None].repeat(1, 3) * 2  # each position its own vector, no content
    x = grid[None].repeat(4, 1, 1)  # (B=4, N=8, D=3): every sample identical
    positions = torch.arange(8)[None].repeat(4, 1)
    assert float(variance_covariance_loss(x)[0]) == 0.0  # spread by position: no penalty globally
    per_position = variance_covariance_loss(x, positions=positions)[0]
    assert float(per_position) == pytest.approx(1 - math.sqrt(1e-4), rel=1e-6)  # but no content variance
