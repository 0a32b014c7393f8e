"""Fine-tuning and linear probing from a cube and a label raster, resumable, then a map.

``finetune(FinetuneConfig(...))`` reads tiles of the cube with ``CubeDataset`` (the loaders
``embed`` uses), splits them spatially (western tiles train, eastern tiles validate, so that
neighbouring pixels do not leak), trains a head (and, unless ``freeze``, the encoder) with
AdamW, logs ``log.csv`` per epoch (train loss, validation loss and metric), checkpoints every
epoch (``resume`` continues exactly) and saves the task: ``task/encoder`` (``save_pretrained``),
``task/head.pt`` and ``task/task.json``. ``load_task`` reads it back for ``xanysat.predict``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from xanysat.nn.state import load_state, rng_state, save_state, set_rng_state

TASKS = ("segmentation", "classification")


@dataclass
class FinetuneConfig:
    """Settings of a fine-tuning / probing run (a TOML file maps onto it with ``load_config``).

    Attributes:
        cube: ``"worldcereal"`` (the shipped sample) or a path ``xr.open_datatree`` reads.
        labels: path of a label raster (NetCDF/Zarr/GeoTIFF) on the cube's CRS; ``label_variable``
            and ``label_band`` pick the array, ``label_crs`` gives a CRS the file lacks; ``classes``: the label values to learn, in order
            (others are ignored).
        task: ``"segmentation"`` (dense head at the output sensor's sub-patches) or
            ``"classification"`` (majority label of each tile).
        freeze: linear probing (only the head trains).
        out_dir: run directory: ``log.csv``, ``checkpoint.pt``, ``config.json`` and ``task/``.
        model: the encoder to start from, as ``xanysat.load_model`` takes it.
        patch_size: patch side in metres.
        tile_m: side of the training tiles in metres.
        batch_size, epochs, lr, weight_decay, seed: the optimisation (AdamW).
        train_fraction: share of the tiles, western first, that train; the others validate.

    Example:
        >>> cfg = FinetuneConfig(labels="labels.tif", classes=[1, 2], task="classification")
        >>> cfg.freeze, cfg.model, cfg.patch_size, cfg.tile_m
        (True, None, 40, 320)
        >>> asdict(cfg)["classes"]
        [1, 2]
    """

    out_dir: str = "runs/finetune"
    cube: str = "worldcereal"
    labels: str = ""
    label_variable: str | None = None
    label_band: int = 0
    label_crs: str | None = None
    classes: list = field(default_factory=list)
    task: str = "segmentation"
    freeze: bool = True
    model: str | None = None
    patch_size: int = 40
    tile_m: int = 320
    batch_size: int = 8
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.05
    seed: int = 0
    train_fraction: float = 0.5


def load_config(path) -> FinetuneConfig:
    r"""Read a TOML file of ``FinetuneConfig`` settings (what ``xanysat finetune --config`` takes).

    Args:
        path: the TOML file; its keys are ``FinetuneConfig`` fields.

    Returns:
        The ``FinetuneConfig`` (defaults for the keys the file leaves out).

    Raises:
        ValueError: a key that is not a ``FinetuneConfig`` field (the message lists the known ones).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     toml = Path(directory) / "probe.toml"
        ...     _ = toml.write_text('labels = "labels.tif"\nclasses = [1, 2]\nepochs = 3\ntask = "classification"\n')
        ...     cfg = load_config(toml)
        ...     _ = toml.write_text("epoch = 3\n")
        ...     try:
        ...         load_config(toml)
        ...     except ValueError as error:
        ...         message = str(error)
        >>> cfg.labels, cfg.classes, cfg.epochs, cfg.task, cfg.freeze
        ('labels.tif', [1, 2], 3, 'classification', True)
        >>> message.split(": ", 1)[1][:40]
        "unknown settings ['epoch']; known: ['bat"
    """
    from xanysat.train.loop import load_config as load

    return load(path, FinetuneConfig)


def open_cube(spec: str):
    """The cube a fine-tuning config names: ``"worldcereal"`` (the shipped sample) or a DataTree file."""
    if spec == "worldcereal":
        from xanysat.apps.pretraining import worldcereal_cube

        return worldcereal_cube()
    return xr.open_datatree(spec, decode_coords="all")


def _labels(cfg: FinetuneConfig) -> xr.DataArray:
    import rioxarray

    path = Path(cfg.labels)
    if path.suffix.lower() in (".tif", ".tiff"):
        da = rioxarray.open_rasterio(path).isel(band=cfg.label_band, drop=True)
    else:
        ds = xr.open_dataset(path, engine="zarr" if path.suffix == ".zarr" else None, decode_coords="all")
        da = ds[cfg.label_variable or list(ds.data_vars)[0]]
        extra = [d for d in da.dims if d not in ("y", "x")]
        da = da.isel({d: cfg.label_band for d in extra}, drop=True)
    values = da.values
    classes = cfg.classes or sorted(int(v) for v in np.unique(values[np.isfinite(values)]))
    lookup = {int(v): i for i, v in enumerate(classes)}
    from xanysat.loaders.datasets import IGNORE_INDEX

    index = np.full(values.shape, IGNORE_INDEX, dtype="int64")
    for value, i in lookup.items():
        index[values == value] = i
    out = da.copy(data=index)
    if out.rio.crs is None and cfg.label_crs:
        out = out.rio.write_crs(cfg.label_crs)
    if out.rio.crs is None:
        raise ValueError(f"{path} has no CRS; write one with rioxarray (da.rio.write_crs(...)) or set label_crs.")
    return out.assign_attrs(classes=[int(c) for c in classes])


def finetune(cfg: FinetuneConfig, *, resume: bool = True, progress: bool = False):
    """Train (or resume) and save the task; returns the ``TaskModel`` and its epoch log.

    Args:
        cfg: the run's settings.
        resume: continue from ``cfg.out_dir/checkpoint.pt`` when it exists (exactly: same
            weights, optimiser and random state as an uninterrupted run).
        progress: unused; runs are logged to ``log.csv``.

    Returns:
        ``(task, rows)``: the trained ``TaskModel`` (also saved in ``out_dir/task``, see
        ``load_task``) and the rows of ``log.csv``, header first.

    Raises:
        ValueError: an unknown ``task``, or labels without a CRS.

    Example:
        >>> import tempfile
        >>> from xanysat import AnySat, AnySatConfig
        >>> from xanysat.nn.checkpoint import save_pretrained
        >>> from xanysat.testing import synthetic_cube
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     cube = synthetic_cube(("s2",), extent_m=160, n_dates=2)
        ...     cube.to_netcdf(f"{directory}/cube.nc")
        ...     south = np.repeat(np.arange(16)[:, None] >= 8, 16, axis=1).astype("int32")  # classes 0 and 1
        ...     labels = cube["s2"]["s2"].isel(time=0, band=0, drop=True).copy(data=south).rename("label")
        ...     labels.rio.write_crs("EPSG:32631").to_netcdf(f"{directory}/labels.nc")
        ...     encoder = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        ...     _ = save_pretrained(encoder, f"{directory}/encoder")
        ...     cfg = FinetuneConfig(out_dir=f"{directory}/run", cube=f"{directory}/cube.nc",
        ...                          labels=f"{directory}/labels.nc", model=f"{directory}/encoder",
        ...                          task="classification", tile_m=80, epochs=2, batch_size=2)
        ...     task, rows = finetune(cfg, resume=False)
        ...     written = sorted(p.name for p in Path(cfg.out_dir).iterdir())
        >>> rows[0], [row[0] for row in rows[1:]]
        (['epoch', 'train_loss', 'val_loss', 'val_accuracy', 'val_miou'], [0, 1])
        >>> written, type(task.head).__name__, task.freeze
        (['checkpoint.pt', 'config.json', 'log.csv', 'task'], 'ClassificationHead', True)
        >>> finetune(FinetuneConfig(cube="worldcereal", labels="cropland.nc"))  # doctest: +SKIP
    """
    from torch.utils.data import DataLoader

    import xanysat
    from xanysat.cube.read import as_cube
    from xanysat.loaders.datasets import IGNORE_INDEX, CubeDataset, collate
    from xanysat.loaders.samplers import GridTileSampler
    from xanysat.nn.heads import ClassificationHead, SegmentationHead, TaskModel, task_loss

    if cfg.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {cfg.task!r}.")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    cube = as_cube(open_cube(cfg.cube))
    labels = _labels(cfg)
    n_classes = len(labels.attrs["classes"])
    encoder = xanysat.load_model(cfg.model)
    D = encoder.config.embed_dim
    head = SegmentationHead(2 * D, n_classes) if cfg.task == "segmentation" else ClassificationHead(D, n_classes)
    output_modality = next(iter(cube.sensors)) if cfg.task == "segmentation" else None
    task = TaskModel(encoder, head, patch_size=cfg.patch_size, output_modality=output_modality, freeze=cfg.freeze)
    queries = list(GridTileSampler(cube, cfg.tile_m))
    order = sorted(range(len(queries)), key=lambda i: (queries[i].offset_m[1], queries[i].offset_m[0]))
    n_train = max(1, round(cfg.train_fraction * len(order)))
    split = {"train": [queries[i] for i in order[:n_train]], "val": [queries[i] for i in order[n_train:]]}
    kind = "segmentation" if cfg.task == "segmentation" else "classification"
    inputs = _prepared(cube, encoder)
    data = {k: CubeDataset(inputs, v, labels=labels, label_kind=kind, ignore_index=IGNORE_INDEX)
            for k, v in split.items()}
    optimizer = torch.optim.AdamW(task.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    start, checkpoint = 0, out / "checkpoint.pt"
    if resume and checkpoint.is_file():
        state = load_state(checkpoint)
        task.load_state_dict(state["task"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], generator)
        start = state["epoch"]
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    log_path = out / "log.csv"
    rows = list(csv.reader(log_path.read_text().splitlines()))[: start + 1] if (resume and log_path.is_file()) else []
    rows = rows or [["epoch", "train_loss", "val_loss", "val_accuracy", "val_miou"]]

    def run(name, train):
        task.train(train)
        loader = DataLoader(data[name], batch_size=cfg.batch_size, shuffle=train, collate_fn=collate,
                            generator=generator if train else None)
        total, count, confusion = 0.0, 0, np.zeros((n_classes, n_classes), dtype=np.int64)
        for batch in loader:
            target = batch.pop("label")
            with torch.set_grad_enabled(train):
                logits = task(batch)
                loss = task_loss(logits, target, ignore_index=IGNORE_INDEX)
            if train:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            valid = target != IGNORE_INDEX
            if bool(valid.any()):
                total += float(loss.detach()) * int(valid.sum())
                count += int(valid.sum())
                predicted = logits.argmax(1)
                np.add.at(confusion, (target[valid].numpy(), predicted[valid].numpy()), 1)
        return total / max(count, 1), confusion

    for epoch in range(start, cfg.epochs):
        train_loss, _ = run("train", True)
        with torch.no_grad():
            val_loss, confusion = run("val", False)
        accuracy = np.trace(confusion) / max(confusion.sum(), 1)
        union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
        miou = float(np.mean(np.diag(confusion)[union > 0] / union[union > 0])) if (union > 0).any() else float("nan")
        rows.append([epoch, f"{train_loss:.5f}", f"{val_loss:.5f}", f"{accuracy:.4f}", f"{miou:.4f}"])
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerows(rows)
        save_state({"epoch": epoch + 1, "task": task.state_dict(), "optimizer": optimizer.state_dict(),
                    "rng": rng_state(generator)}, checkpoint)
    save_task(task, out / "task", cfg, labels.attrs["classes"])
    return task, rows


def _prepared(cube, encoder):
    """The cube prepared with the model's own statistics, else the sensor table's, else statistics
    fitted on the cube (written to the encoder's card, so that ``predict`` normalises the same way)."""
    from xanysat.cube.fit import fit_normalization
    from xanysat.cube.prepare import prepare
    from xanysat.sensors.table import MODALITIES

    known = encoder.card.normalization
    missing = [n for n in cube.sensors if n not in known and MODALITIES[n].norm is None]
    if missing:
        fitted = fit_normalization(cube)
        encoder.card = encoder.card.with_changes(normalization={**known, **{n: fitted[n] for n in missing}})
    return prepare(cube, model_stats=encoder.card.normalization)


def save_task(task, directory: Path, cfg: FinetuneConfig, classes) -> Path:
    """Save a ``TaskModel`` as ``finetune`` does: ``encoder/``, ``head.pt`` and ``task.json``.

    Args:
        task: the ``TaskModel`` (its head a ``SegmentationHead`` or ``ClassificationHead``
            without hidden layers, as ``finetune`` builds them).
        directory: created if needed.
        cfg: the run's settings (``task`` and ``patch_size`` are recorded).
        classes: the label values of the head's outputs, in order.

    Returns:
        ``directory`` as a ``Path``.

    Example:
        >>> import tempfile
        >>> from xanysat import AnySat, AnySatConfig
        >>> from xanysat.nn.heads import ClassificationHead, TaskModel
        >>> encoder = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> task = TaskModel(encoder, ClassificationHead(32, 2), patch_size=20, freeze=True)
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     saved = save_task(task, Path(directory) / "task", FinetuneConfig(task="classification", patch_size=20),
        ...                       [10, 20])
        ...     files = sorted(p.name for p in saved.iterdir())
        ...     meta = json.loads((saved / "task.json").read_text())
        >>> files, meta["classes"], meta["embed_dim"]
        (['encoder', 'head.pt', 'task.json'], [10, 20], 32)
    """
    from xanysat.nn.checkpoint import save_pretrained

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_pretrained(task.encoder, directory / "encoder")
    torch.save(task.head.state_dict(), directory / "head.pt")
    meta = {"task": cfg.task, "classes": list(classes), "patch_size": cfg.patch_size,
            "output_modality": task.output_modality, "embed_dim": task.encoder.config.embed_dim}
    (directory / "task.json").write_text(json.dumps(meta, indent=1))
    return directory


def load_task(directory):
    """A ``TaskModel`` saved by ``finetune`` (in eval mode), and its class values.

    Args:
        directory: the ``task`` directory of a run (or one written by ``save_task``).

    Returns:
        ``(task, classes)``: the frozen ``TaskModel`` in eval mode and the label values of its
        outputs, for ``xanysat.predict``.

    Example:
        >>> import tempfile
        >>> from xanysat import AnySat, AnySatConfig
        >>> from xanysat.nn.heads import SegmentationHead, TaskModel
        >>> from xanysat.testing import synthetic_batch
        >>> encoder = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> task = TaskModel(encoder, SegmentationHead(64, 3), patch_size=20, output_modality="s2").eval()
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     _ = save_task(task, Path(directory), FinetuneConfig(patch_size=20), [1, 2, 4])
        ...     loaded, classes = load_task(directory)
        >>> batch = synthetic_batch(("s2",), extent_m=60)
        >>> classes, loaded.training, loaded(batch).shape, torch.allclose(loaded(batch), task(batch))
        ([1, 2, 4], False, torch.Size([2, 3, 6, 6]), True)
    """
    from xanysat.nn.checkpoint import load_pretrained
    from xanysat.nn.heads import ClassificationHead, SegmentationHead, TaskModel

    directory = Path(directory)
    meta = json.loads((directory / "task.json").read_text())
    encoder = load_pretrained(directory / "encoder")
    D, K = meta["embed_dim"], len(meta["classes"])
    head = SegmentationHead(2 * D, K) if meta["task"] == "segmentation" else ClassificationHead(D, K)
    head.load_state_dict(load_state(directory / "head.pt"))
    task = TaskModel(encoder, head, patch_size=meta["patch_size"], output_modality=meta["output_modality"], freeze=True)
    return task.eval(), meta["classes"]
