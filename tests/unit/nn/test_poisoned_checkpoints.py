"""A pickle payload in any file xanysat reads is refused, never run, with a CheckpointError naming the file."""

import pathlib
import shutil

import pytest
import torch

from xanysat.errors import CheckpointError
from xanysat.nn.state import load_state


class Payload:
    """Unpickling this calls ``Path.touch(marker)``: the marker file proves code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def poison(path, marker, **state):
    torch.save({**state, "payload": Payload(marker)}, path)
    return path


def assert_refused(call, path, marker):
    with pytest.raises(CheckpointError) as info:
        call()
    message = str(info.value)
    assert str(path) in message and "weights_only=False" not in message
    assert not pathlib.Path(marker).exists(), "the payload ran"


def test_training_state_refuses_payload(tmp_path):
    marker = tmp_path / "ran"
    path = poison(tmp_path / "checkpoint.pt", marker, step=3)
    assert_refused(lambda: load_state(path), path, marker)


def test_official_loader_refuses_payload(tmp_path):
    from xanysat.nn.checkpoint import load_official
    from xanysat.nn.encoder import AnySatConfig

    marker = tmp_path / "ran"
    path = poison(tmp_path / "AnySat.pth", marker, state_dict={})
    assert_refused(lambda: load_official(path, AnySatConfig(embed_dim=32, depth=1, num_heads=2)), path, marker)


def test_pretrain_resume_refuses_payload(tmp_path):
    from helpers.training import batches, config

    from xanysat.train.loop import pretrain

    out = tmp_path / "run"
    pretrain(config(out), batches, resume=False, progress=False, stop_after=2)
    marker = tmp_path / "ran"
    path = poison(out / "checkpoint.pt", marker, step=1)
    assert_refused(lambda: pretrain(config(out), batches, resume=True, progress=False), path, marker)


def test_not_a_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        load_state(path)
    with pytest.raises(CheckpointError, match="no training checkpoint"):
        load_state(tmp_path / "absent.pt")


@pytest.mark.slow
def test_finetune_resume_and_saved_head_refuse_payload(tmp_path):
    from helpers.finetuning import LABELS, config

    if not LABELS.is_file():
        pytest.skip("shared WorldCereal fixtures absent")
    from xanysat.apps.finetune import finetune, load_task

    out = tmp_path / "probe"
    finetune(config(out, epochs=1), resume=False)
    marker = tmp_path / "ran"
    path = poison(out / "checkpoint.pt", marker, epoch=1)
    assert_refused(lambda: finetune(config(out), resume=True), path, marker)
    head = poison(out / "task" / "head.pt", marker)
    assert_refused(lambda: load_task(out / "task"), head, marker)
    shutil.rmtree(out)
