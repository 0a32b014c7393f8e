"""The JEPA pretraining loop: seeded, resumable step for step, logged as CSV and PNG.

``pretrain(config, batches)`` trains an ``AnySat`` with ``xanysat.train.jepa.JEPA`` on an iterator of
``(batch, patch_size)`` pairs built from datacubes (``xanysat.loaders.datasets``). Every ``checkpoint_every``
steps it saves the student, teacher, predictor, mask token, optimizer and every random state,
so that ``resume=True`` continues exactly as an uninterrupted run would; the batch iterator is
rebuilt from its own seed and fast-forwarded. Each step appends a row to ``log.csv`` (losses,
lr, momentum, seconds); every ``monitor_every`` steps the teacher's embeddings of a fixed batch
are checked for collapse (``std``, ``effective_rank``).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xanysat.errors import AnySatInputError
from xanysat.nn.encoder import AnySat, AnySatConfig
from xanysat.nn.state import load_state, rng_state, save_state, set_rng_state
from xanysat.train.jepa import JEPA, JEPAConfig
from xanysat.train.monitor import collapse_stats
from xanysat.train.schedules import build_optimizer, lr_at, set_hyperparameters
from xanysat.train.teacher import momentum_at

LOG_FIELDS = ("step", "loss", "prediction_loss", "contrastive_loss", "lr", "momentum", "patch_size", "seconds")
MONITOR_FIELDS = ("step", "teacher_std", "teacher_effective_rank", "teacher_within_tile_std")


@dataclass
class PretrainConfig:
    """Settings of a pretraining run (a TOML file maps onto it: see ``load_config``).

    Attributes:
        out_dir: where checkpoints, logs and the final model go.
        model: ``AnySatConfig`` fields (``preset`` = ``"tiny"``/``"small"``/``"base"`` plus overrides).
        jepa: ``JEPAConfig`` fields.
        steps: optimizer steps.
        lr, final_lr, warmup_steps: learning rate schedule (``lr_at``).
        seed: seeds the model init, the masks and the data sampling.
        checkpoint_every, monitor_every: in steps.
        threads: torch intra-op threads (None: torch's default).
        data: settings of the batch stream, for the recipe that builds it (e.g.
            ``xanysat.apps.pretraining.pretrain_default`` reads ``data[0]``); ``pretrain`` only
            records them in ``config.json``.
        init_from: a model directory (``save_pretrained``) whose weights start the student and
            the teacher (continued pretraining); its architecture must match ``model``.

    Example:
        >>> config = PretrainConfig(model={"preset": "tiny", "embed_dim": 32, "sensors": ["s2"]},
        ...                         jepa={"predictor_depth": 1, "target_aspect": [1.0, 1.0]})
        >>> model = config.model_config()  # the preset's other fields kept
        >>> model.embed_dim, model.depth, model.sensors
        (32, 2, ('s2',))
        >>> config.jepa_config().target_aspect, config.jepa_config().n_targets
        ((1.0, 1.0), 4)
    """

    out_dir: str = "runs/pretrain"
    model: dict = field(default_factory=lambda: {"preset": "tiny"})
    jepa: dict = field(default_factory=dict)
    steps: int = 1000
    lr: float = 2e-4
    final_lr: float | None = 1e-5
    warmup_steps: int = 50
    seed: int = 0
    checkpoint_every: int = 200
    monitor_every: int = 100
    threads: int | None = None
    data: list = field(default_factory=list)
    init_from: str | None = None

    def model_config(self) -> AnySatConfig:
        """The ``AnySatConfig``: the ``preset`` (default ``"tiny"``) with the other ``model`` fields."""
        fields = dict(self.model)
        preset = fields.pop("preset", "tiny")
        if "sensors" in fields:
            fields["sensors"] = tuple(fields["sensors"])
        return getattr(AnySatConfig, preset)().with_changes(**fields)

    def jepa_config(self) -> JEPAConfig:
        """The ``JEPAConfig`` from the ``jepa`` fields (lists become tuples)."""
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in self.jepa.items()}
        return JEPAConfig(**fields)


def load_config(path, cls=PretrainConfig):
    """Read a TOML file into ``cls`` (a dataclass); unknown keys raise with the known ones listed.

    Args:
        path: the TOML file; its top-level keys are ``cls`` fields (tables for dict fields).
        cls: the dataclass to build.

    Returns:
        ``cls(**settings)``.

    Raises:
        OSError: the file cannot be read.
        tomllib.TOMLDecodeError: the file is not TOML.
        AnySatInputError: a key is not a field of ``cls``, or a value of the wrong type
            (``config_from_settings``).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = Path(tmp) / "run.toml"
        ...     _ = path.write_text('steps = 7\\n[model]\\npreset = "tiny"\\nembed_dim = 32\\n')
        ...     config = load_config(path)
        ...     _ = path.write_text("stepz = 7\\n")
        ...     load_config(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        xanysat.errors.AnySatInputError: .../run.toml: unknown settings ['stepz']; known: ['checkpoint_every', ...].
        >>> config.steps, config.model_config().embed_dim
        (7, 32)
    """
    import tomllib

    return config_from_settings(tomllib.loads(Path(path).read_text()), cls, source=str(path))


_TOML_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,),
               "list": (list,), "None": ()}


def config_from_settings(settings: dict, cls=PretrainConfig, source: str = "settings"):
    """``cls(**settings)``, each key checked to be a field of ``cls`` and each value to have the
    type the field is annotated with (where that is a plain TOML type: int, float, str, bool,
    dict, list, or ``X | None``).

    Args:
        settings: field -> value, e.g. a parsed TOML file.
        cls: the dataclass to build.
        source: where the settings come from (the file), named in the errors.

    Returns:
        ``cls(**settings)``.

    Raises:
        AnySatInputError: an unknown key (the known ones listed) or a value of another type.

    Example:
        >>> config_from_settings({"steps": 7}).steps
        7
        >>> config_from_settings({"steps": "ten"}, source="run.toml")
        Traceback (most recent call last):
            ...
        xanysat.errors.AnySatInputError: run.toml: steps must be int, got 'ten' (str); e.g. steps = 1.
    """
    known = set(cls.__dataclass_fields__)
    unknown = set(settings) - known
    if unknown:
        raise AnySatInputError(f"{source}: unknown settings {sorted(unknown)}; known: {sorted(known)}.")
    for name, value in settings.items():
        _check_setting_type(source, name, value, cls.__dataclass_fields__[name].type)
    return cls(**settings)


def _check_setting_type(source: str, name: str, value, annotation) -> None:
    parts = [part.strip() for part in str(annotation).split("|")]
    if not all(part in _TOML_TYPES for part in parts) or parts == ["None"]:
        return  # not a plain TOML type: the dataclass decides
    allowed = tuple(t for part in parts for t in _TOML_TYPES[part])
    if isinstance(value, allowed) and (not isinstance(value, bool) or "bool" in parts):
        return
    expected = [part for part in parts if part != "None"]
    examples = {"int": f"{name} = 1", "float": f"{name} = 0.5", "str": f'{name} = "text"', "bool": f"{name} = true",
                "dict": f"a [{name}] table", "list": f"{name} = [1, 2]"}
    raise AnySatInputError(f"{source}: {name} must be {' or '.join(expected)}, got {value!r} ({type(value).__name__}); "
                           f"e.g. {examples[expected[0]]}.")


BatchFactory = Callable[[int], Iterator[tuple[dict, int]]]
"""``factory(seed)`` -> an endless iterator of ``(batch, patch_size)``, the same for the same seed."""


def _remove_own_csv(path: Path, fields: tuple[str, ...]) -> None:
    """Delete a log ``pretrain`` wrote (its header is ``fields``); refuse any other file there."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    if tuple(header) != fields:
        raise ValueError(f"{path} exists and was not written by pretrain (its header is not {','.join(fields)}): "
                         "it is left alone. Use a new out_dir for this run, or move the file away.")
    path.unlink()


def pretrain(config: PretrainConfig, batches: BatchFactory, *, resume: bool = True, progress: bool = True,
             stop_after: int | None = None) -> JEPA:
    """Run (or resume) JEPA pretraining; returns the trained ``JEPA`` (student = the encoder).

    Args:
        config: the run's settings.
        batches: builds the batch stream from a seed (see ``BatchFactory``).
        resume: continue from ``out_dir/checkpoint.pt`` when it exists.
        progress: show a tqdm progress bar.
        stop_after: stop after this step (for tests of interrupted runs); the final checkpoint is
            written as at any checkpoint step.

    Returns:
        The ``JEPA``; ``out_dir`` then holds ``checkpoint.pt``, ``config.json``, ``log.csv``,
        ``monitor.csv`` and ``loss.png``.

    Example:
        >>> import itertools, tempfile
        >>> from xanysat.testing import synthetic_batch
        >>> def batches(seed):  # the same endless stream for the same seed
        ...     for k in itertools.count(seed):
        ...         yield synthetic_batch(("s2",), extent_m=60, batch_size=2, n_dates=3, seed=k), 20
        >>> model = {"preset": "tiny", "embed_dim": 32, "depth": 1, "num_heads": 2, "sensors": ["s2"]}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     config = PretrainConfig(out_dir=tmp, model=model, jepa={"predictor_depth": 1, "predictor_heads": 2},
        ...                             steps=2, warmup_steps=1)
        ...     jepa = pretrain(config, batches, progress=False)
        ...     log = list(csv.DictReader((Path(tmp) / "log.csv").read_text().splitlines()))
        ...     sorted(p.name for p in Path(tmp).iterdir())
        ['checkpoint.pt', 'config.json', 'log.csv', 'loss.png', 'monitor.csv']
        >>> [row["step"] for row in log], jepa.student.config.embed_dim
        (['0', '1'], 32)
    """
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    jepa = JEPA(AnySat(config.model_config()), config.jepa_config())
    if config.init_from:
        from xanysat.nn.checkpoint import load_pretrained

        start_weights = load_pretrained(config.init_from).state_dict()
        jepa.student.load_state_dict(start_weights)
        jepa.teacher.load_state_dict(start_weights)
    jepa.train()
    optimizer = build_optimizer(jepa, lr=config.lr, weight_decay=jepa.config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed + 1)
    start = 0
    checkpoint = out / "checkpoint.pt"
    if resume and checkpoint.is_file():
        start = _restore(checkpoint, jepa, optimizer, generator, config)
    elif not resume:
        for name, fields in (("log.csv", LOG_FIELDS), ("monitor.csv", MONITOR_FIELDS)):
            _remove_own_csv(out / name, fields)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=1))
    stream = batches(config.seed + 2)
    for _ in range(start):
        next(stream)
    monitor_batch = next(batches(config.seed + 2))  # fixed: the first batch of the stream
    last = config.steps if stop_after is None else min(config.steps, stop_after)
    bar = _bar(progress, config.steps, start)
    with open(out / "log.csv", "a", newline="") as log_file, open(out / "monitor.csv", "a", newline="") as mon_file:
        log, mon = csv.writer(log_file), csv.writer(mon_file)
        if start == 0:
            log.writerow(LOG_FIELDS)
            mon.writerow(MONITOR_FIELDS)
        for step in range(start, last):
            batch, patch_size = next(stream)
            if step % config.monitor_every == 0:
                mon.writerow([step, *_monitor(jepa, *monitor_batch).values()])
                log_file.flush()
                mon_file.flush()
            lr = lr_at(step, base_lr=config.lr, warmup_steps=config.warmup_steps, total_steps=config.steps,
                       final_lr=config.final_lr)
            momentum = momentum_at(step, config.steps, start=jepa.config.ema_start, end=jepa.config.ema_end)
            set_hyperparameters(optimizer, lr=lr)
            began = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            result = jepa(batch, patch_size, generator=generator)
            result.loss.backward()
            jepa.update_teacher(momentum)
            optimizer.step()
            loss, prediction, contrastive = (float(t.detach()) for t in
                                             (result.loss, result.prediction_loss, result.contrastive_loss))
            log.writerow([step, f"{loss:.6f}", f"{prediction:.6f}", f"{contrastive:.6f}", f"{lr:.3e}",
                          f"{momentum:.6f}", patch_size, f"{time.perf_counter() - began:.3f}"])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            done = step + 1
            if done % config.checkpoint_every == 0 or done == last:
                log_file.flush()
                mon_file.flush()
                _save(checkpoint, jepa, optimizer, generator, done)
        if last == config.steps:
            mon.writerow([config.steps, *_monitor(jepa, *monitor_batch).values()])
    if bar is not None:
        bar.close()
    trained = [k for k, w in (("prediction_loss", jepa.config.prediction_weight),
                              ("contrastive_loss", jepa.config.contrastive_weight)) if w]
    plot_losses(out / "log.csv", out / "loss.png", columns=("loss", *trained))
    return jepa


def _monitor(jepa: JEPA, batch, patch_size) -> dict[str, float]:
    with torch.no_grad():
        tokens = jepa.teacher(batch, patch_size, "patch")
        normed = F.layer_norm(tokens, tokens.shape[-1:]).flatten(1, -2)
        within = float(normed.float().std(dim=1).mean())
    stats = collapse_stats(tokens)
    return {"teacher_std": round(stats["std"], 6), "teacher_effective_rank": round(stats["effective_rank"], 4),
            "teacher_within_tile_std": round(within, 6)}


def _save(path: Path, jepa: JEPA, optimizer, generator: torch.Generator, step: int) -> None:
    save_state({"step": step, "jepa": jepa.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": rng_state(generator)}, path)


def _restore(path: Path, jepa: JEPA, optimizer, generator: torch.Generator, config: PretrainConfig) -> int:
    state = load_state(path)
    jepa.load_state_dict(state["jepa"])
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"], generator)
    _truncate_logs(path.parent, state["step"])
    return int(state["step"])


def _truncate_logs(directory: Path, step: int) -> None:
    """Drop log rows past the checkpoint (written after it by an interrupted run)."""
    for name in ("log.csv", "monitor.csv"):
        path = directory / name
        if not path.is_file():
            continue
        rows = list(csv.reader(path.read_text().splitlines()))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < step]
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows(kept)


def _bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="pretrain", unit="step")


def plot_losses(log_csv, png, *, width: int = 640, height: int = 360,
                columns=("loss", "prediction_loss", "contrastive_loss")) -> Path:
    """Loss curves from ``log.csv`` as a PNG (total, prediction and contrastive; smoothed).

    Args:
        log_csv: a ``log.csv`` written by ``pretrain`` (columns ``LOG_FIELDS``).
        png: the image to write.
        width: image width in pixels.
        height: image height in pixels.
        columns: the curves to draw (leave out a term whose weight is 0: it is logged, not trained).

    Returns:
        ``Path(png)``.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> rows = [[step, 2 - step, 1, 1 - step, 1e-4, 0.996, 20, 0.1] for step in range(3)]  # as LOG_FIELDS
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     log = Path(tmp) / "log.csv"
        ...     with open(log, "w", newline="") as f:
        ...         csv.writer(f).writerows([LOG_FIELDS, *rows])
        ...     png = plot_losses(log, Path(tmp) / "loss.png", width=320, height=200)
        ...     png.name, Image.open(png).size
        ('loss.png', (320, 200))
    """
    from PIL import Image, ImageDraw

    rows = list(csv.DictReader(Path(log_csv).read_text().splitlines()))
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    if not rows:
        out.save(png)
        return Path(png)
    steps = np.array([int(r["step"]) for r in rows])
    series = {k: np.array([float(r[k]) for r in rows]) for k in columns}
    window = max(1, len(steps) // 50)
    smooth = {k: np.convolve(v, np.ones(window) / window, mode="valid") for k, v in series.items()}
    xs = steps[window - 1:]
    lo = min(float(v.min()) for v in smooth.values())
    hi = max(float(v.max()) for v in smooth.values())
    left, top, right, bottom = 60, 20, width - 20, height - 40
    draw.rectangle((left, top, right, bottom), outline="black")
    span = max(hi - lo, 1e-12)
    for k, colour in zip(smooth, ("black", "#1f77b4", "#d62728")):
        v = smooth[k]
        points = [(left + (right - left) * (x - xs[0]) / max(xs[-1] - xs[0], 1), bottom - (bottom - top) * (y - lo) / span)
                  for x, y in zip(xs, v)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        draw.text((right - 150, top + 5 + 14 * list(smooth).index(k)), k, fill=colour)
    draw.text((5, top), f"{hi:.3f}", fill="black")
    draw.text((5, bottom - 10), f"{lo:.3f}", fill="black")
    draw.text((left, bottom + 8), f"step {xs[0]}", fill="black")
    draw.text((right - 70, bottom + 8), f"step {xs[-1]}", fill="black")
    out.save(png)
    return Path(png)
