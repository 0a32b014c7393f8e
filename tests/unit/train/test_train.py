"""The pretraining loop: loss logged, collapse monitored, resume identical step for step."""

import csv

import pytest
import torch
from helpers.training import batches, config

from xanysat.train.loop import load_config, plot_losses, pretrain


def rows(path):
    return list(csv.reader(path.read_text().splitlines()))


@pytest.mark.slow
def test_resumed_run_matches_uninterrupted_run(tmp_path):
    whole = pretrain(config(tmp_path / "whole"), batches, resume=False, progress=False)
    pretrain(config(tmp_path / "cut"), batches, resume=False, progress=False, stop_after=3)
    resumed = pretrain(config(tmp_path / "cut"), batches, resume=True, progress=False)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    a, b = rows(tmp_path / "whole" / "log.csv"), rows(tmp_path / "cut" / "log.csv")
    assert [r[:7] for r in a] == [r[:7] for r in b] and len(a) == 7  # header + 6 steps, seconds aside


def test_log_monitor_and_loss_curve(tmp_path):
    pretrain(config(tmp_path), batches, resume=False, progress=False)
    log = rows(tmp_path / "log.csv")
    assert log[0] == ["step", "loss", "prediction_loss", "contrastive_loss", "lr", "momentum", "patch_size", "seconds"]
    assert [int(r[0]) for r in log[1:]] == list(range(6))
    for r in log[1:]:
        assert float(r[1]) == pytest.approx(float(r[2]) + float(r[3]), abs=1e-5)
    momentum = [float(r[5]) for r in log[1:]]
    assert momentum == sorted(momentum) and momentum[0] == pytest.approx(0.996)
    monitor = rows(tmp_path / "monitor.csv")
    assert [int(r[0]) for r in monitor[1:]] == [0, 3, 6]
    assert all(float(r[1]) > 0 and float(r[2]) >= 1 for r in monitor[1:])
    from PIL import Image

    assert Image.open(tmp_path / "loss.png").size == (640, 360)
    assert plot_losses(tmp_path / "log.csv", tmp_path / "again.png").is_file()


@pytest.mark.slow
def test_different_seed_different_run(tmp_path):
    a = pretrain(config(tmp_path / "a"), batches, resume=False, progress=False)
    b = pretrain(config(tmp_path / "b", seed=1), batches, resume=False, progress=False)
    assert not torch.equal(a.student.cls_token, b.student.cls_token)


def test_toml_config(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('steps = 7\nlr = 1e-4\n[model]\npreset = "tiny"\nembed_dim = 32\n[jepa]\ntau = 0.2\n')
    cfg = load_config(path)
    assert cfg.steps == 7 and cfg.model_config().embed_dim == 32 and cfg.jepa_config().tau == 0.2
    path.write_text("stepz = 7\n")
    with pytest.raises(ValueError, match="unknown settings.*stepz"):
        load_config(path)


def test_init_from_a_saved_model_starts_student_and_teacher_there(tmp_path):
    from xanysat.nn.checkpoint import save_pretrained, weights_hash

    first = pretrain(config(tmp_path / "a"), batches, resume=False, progress=False)
    saved = save_pretrained(first.teacher, tmp_path / "model", model_id="a")
    second = config(tmp_path / "b")
    second.init_from = str(saved)
    second.steps = 0
    continued = pretrain(second, batches, resume=False, progress=False)
    assert weights_hash(continued.student) == weights_hash(continued.teacher) == weights_hash(first.teacher)


def test_a_fresh_run_deletes_only_its_own_logs(tmp_path):
    """resume=False deletes the logs an earlier run wrote, and refuses (keeps) a log.csv of someone else."""
    pretrain(config(tmp_path), batches, resume=False, progress=False, stop_after=1)
    pretrain(config(tmp_path), batches, resume=False, progress=False, stop_after=1)  # its own logs: replaced
    assert len(rows(tmp_path / "log.csv")) == 2  # header + step 0: replaced, not appended
    other = tmp_path / "other"
    other.mkdir()
    (other / "log.csv").write_text("date,mood\n2021-03-01,fine\n")
    with pytest.raises(ValueError, match="not written by pretrain.*new out_dir"):
        pretrain(config(other), batches, resume=False, progress=False, stop_after=1)
    assert (other / "log.csv").read_text() == "date,mood\n2021-03-01,fine\n"
