"""Fine-tuning and probing from a cube and a label raster, resumable, then a georeferenced map."""

import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch
from helpers.finetuning import LABELS, config

from xanysat.apps.finetune import finetune, load_task

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not LABELS.is_file(), reason="shared WorldCereal fixtures absent")]


def test_probe_freezes_encoder_and_resumes_exactly(tmp_path):
    whole, rows = finetune(config(tmp_path / "whole"), resume=False)
    assert [r[0] for r in rows[1:]] == [0, 1] and all(0 <= float(r[3]) <= 1 for r in rows[1:])
    import xanysat

    reference = xanysat.load_model("untrained-tiny").state_dict()
    for name, value in whole.encoder.state_dict().items():
        assert torch.equal(value, reference[name]), name  # linear probing leaves the encoder as it was
    finetune(config(tmp_path / "cut", epochs=1), resume=False)
    resumed, _ = finetune(config(tmp_path / "cut"), resume=True)
    for (name, a), b in zip(whole.head.state_dict().items(), resumed.head.state_dict().values()):
        assert torch.equal(a, b), name
    task, classes = load_task(tmp_path / "whole" / "task")
    assert classes == [0, 1]
    for a, b in zip(task.head.state_dict().values(), whole.head.state_dict().values()):
        assert torch.equal(a, b)


def test_cli_probe_writes_a_class_map(tmp_path):
    toml = tmp_path / "probe.toml"
    toml.write_text(f'out_dir = "{tmp_path / "run"}"\nlabels = "{LABELS}"\nlabel_crs = "EPSG:32631"\n'
                    'model = "untrained-tiny"\nepochs = 1\ntile_m = 200\ntask = "classification"\n')
    result = subprocess.run([sys.executable, "-m", "xanysat.cli", "probe", "--config", str(toml), "--map",
                             str(tmp_path / "classes.tif")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    with rasterio.open(tmp_path / "classes.tif") as src:
        assert src.crs.to_epsg() == 32631 and src.res == (40.0, 40.0)
        values = src.read(1)
    assert set(np.unique(values)) <= {0, 1}
