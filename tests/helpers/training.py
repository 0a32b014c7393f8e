"""A small pretraining run: its settings and a seeded stream of synthetic batches."""

import itertools

import torch

from xanysat.testing import synthetic_batch
from xanysat.train.loop import PretrainConfig

MODEL = {"preset": "tiny", "embed_dim": 32, "depth": 1, "num_heads": 2, "sensors": ["s2", "s1-asc"]}
JEPA = {"predictor_depth": 1, "predictor_heads": 2}


def batches(seed):
    g = torch.Generator().manual_seed(seed)
    for _ in itertools.count():
        s = int(torch.randint(0, 10_000, (1,), generator=g))
        yield synthetic_batch(("s2", "s1-asc"), extent_m=60, batch_size=2, n_dates=3, seed=s), 20


def config(out, **changes):
    return PretrainConfig(out_dir=str(out), model=MODEL, jepa=JEPA, steps=6, checkpoint_every=2, monitor_every=3,
                          warmup_steps=1, **changes)
