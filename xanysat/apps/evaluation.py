"""Linear probes on held-out real labels: a pretrained model against the same architecture with
random weights (seed 0).

- BigEarthNet, 19-class multi-label: probe trained on the 30 v1 patches, tested on the 24 v2
  patches (held out of pretraining). Features: the tile embedding of each 1.2 km patch
  (s2 + s1-asc, patch 40 m). Metric: micro average precision (AP) and macro AP over the test
  classes present; the label prior (class frequency as the score) is the floor.
- WorldCereal cropland (model outputs of the WorldCereal system used as pseudo-labels, 39 % / 61 %):
  40 m patch embeddings (on 160 m tiles, and on the whole 1 km cube as one tile), majority
  class per patch; probe trained on the western half,
  tested on the eastern half. Metric: accuracy and macro F1; the majority class is the floor.

Probes are L2-regularised logistic regressions on standardised features; the weight decay is
chosen on the training set alone (5 folds for BigEarthNet, north / south halves of the western
half for WorldCereal), the same way for both models.

    python -m xanysat.apps.evaluation --model runs/default/model      (or: xanysat probe --model ...)
"""

from __future__ import annotations

import argparse
import csv
import warnings
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import xanysat
from xanysat.apps.pretraining import BIGEARTHNET, bigearthnet_cube, bigearthnet_files, worldcereal_cube
from xanysat.nn.checkpoint import load_pretrained
from xanysat.nn.encoder import AnySat

CROPTYPE = BIGEARTHNET.parent / "worldcereal" / "worldcereal_cropland_classification.nc"


def random_twin(model: AnySat) -> AnySat:
    """The baseline: the same architecture and normalisation as ``model``, random weights (seed 0).

    The global random state is left as it was.

    Args:
        model: the pretrained encoder.

    Returns:
        A new ``AnySat`` in eval mode, the same for the same ``model.config``.

    Example:
        >>> from xanysat import AnySatConfig
        >>> model = AnySat(AnySatConfig.tiny().with_changes(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> twin = random_twin(model)
        >>> twin.card.model_id, twin.config == model.config, twin.training
        ('random weights, 32d1', True, False)
        >>> all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), random_twin(model).state_dict().values()))
        True
    """
    with torch.random.fork_rng():
        torch.manual_seed(0)
        twin = AnySat(model.config).eval()
    twin.card = model.card.with_changes(model_id=f"random weights, {model.config.embed_dim}d{model.config.depth}")
    return twin


def bigearthnet_labels() -> tuple[dict[str, list[str]], list[str]]:
    """The BigEarthNet labels of the v1 and v2 patches, from the fixtures' CSV files.

    ``BIGEARTHNET/benv1_labels.csv`` (columns ``patch``, ``labels_19``) and
    ``benv2_labels.csv`` (``patch_id``, ``labels``); labels are ``|``-separated.

    Returns:
        ``{patch: [label, ...]}`` and the sorted list of every label seen.

    Example:
        >>> import tempfile
        >>> from unittest import mock
        >>> labels, classes = bigearthnet_labels()  # the fixtures  # doctest: +SKIP
        >>> with tempfile.TemporaryDirectory() as tmp, mock.patch("xanysat.apps.evaluation.BIGEARTHNET", Path(tmp)):
        ...     _ = (Path(tmp) / "benv1_labels.csv").write_text("patch,labels_19\\nA,Pastures|Forests\\n")
        ...     _ = (Path(tmp) / "benv2_labels.csv").write_text("patch_id,labels\\nB,Pastures\\n")
        ...     labels, classes = bigearthnet_labels()
        >>> labels, classes
        ({'A': ['Pastures', 'Forests'], 'B': ['Pastures']}, ['Forests', 'Pastures'])
    """
    labels = {}
    for name, column in (("benv1_labels.csv", "labels_19"), ("benv2_labels.csv", "labels")):
        with open(BIGEARTHNET / name) as f:
            for row in csv.DictReader(f):
                key = row.get("patch") or row.get("patch_id")
                labels[key] = [c for c in row[column].split("|") if c]
    classes = sorted({c for v in labels.values() for c in v})
    return labels, classes


def _patch_key(path: Path) -> str:
    return path.stem.split("_", 1)[1]


def tile_features(model, files) -> np.ndarray:
    """The tile embedding of each BigEarthNet patch (one 1.2 km tile, patches of 40 m).

    Args:
        model: the encoder (with ``normalization`` for ``s1-asc``).
        files: BigEarthNet ``.npz`` paths (``bigearthnet_files``).

    Returns:
        ``(len(files), embed_dim)``.

    Raises:
        ValueError: ``files`` is empty.

    Example:
        >>> from xanysat.nn.checkpoint import load_pretrained
        >>> model = load_pretrained("runs/default/model")  # doctest: +SKIP
        >>> tile_features(model, bigearthnet_files("heldout")).shape  # doctest: +SKIP
        (24, 192)
        >>> tile_features(None, [])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: need at least one array...
    """
    rows = []
    for path in files:
        cube = bigearthnet_cube(path)
        emb = xanysat.embed(cube, 40, "tile", model=model, tile_size=1200)
        rows.append(emb.values[:, 0, 0])
    return np.stack(rows)


WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def fit_logistic(x, y, *, multilabel: bool, weight_decay: float = 1e-2, steps: int = 200):
    """L2-regularised logistic regression (softmax, or one sigmoid per label) fitted with L-BFGS.

    Returns:
        ``predict(x) -> logits`` as a NumPy array.

    Example:
        >>> x = np.array([[0.0], [1.0], [2.0], [3.0]]); y = np.array([0, 0, 1, 1])
        >>> fit_logistic(x, y, multilabel=False)(x).argmax(1).tolist()
        [0, 0, 1, 1]
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y)
    n_out = y.shape[1] if multilabel else int(y.max()) + 1
    w = torch.zeros(x.shape[1], n_out, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_out, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = x @ w + b
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y.double()) if multilabel
                else torch.nn.functional.cross_entropy(logits, y.long()))
        loss = loss + weight_decay * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda z: (torch.as_tensor(z, dtype=torch.float64) @ w + b).detach().numpy()


def select_weight_decay(x, y, folds, score, *, multilabel: bool, grid=WEIGHT_DECAYS) -> float:
    """The weight decay with the best mean ``score(logits, y)`` over ``folds`` (validation index
    arrays) of the training set only; the test set never takes part. Ties go to the stronger decay.

    Each fold's probe is trained on the other rows, standardised with their statistics.

    Args:
        x: ``(N, F)`` training features.
        y: ``(N,)`` class indices, or ``(N, C)`` 0/1 labels with ``multilabel``.
        folds: validation index arrays into ``x``.
        score: ``score(logits, y) -> float``, higher is better (NaN ignored in the mean).
        multilabel: one sigmoid per label instead of a softmax (``fit_logistic``).
        grid: the weight decays tried.

    Returns:
        The chosen weight decay.

    Example:
        >>> x, y = np.arange(6.0)[:, None], np.array([0, 0, 0, 1, 1, 1])
        >>> folds = [np.array([0, 5]), np.array([1, 4])]
        >>> accuracy = lambda logits, y: float((logits.argmax(1) == y).mean())
        >>> select_weight_decay(x, y, folds, accuracy, multilabel=False, grid=(0.01, 1.0))  # a tie: the stronger
        1.0
        >>> margin = lambda logits, y: float((logits[:, 1] - logits[:, 0])[y == 1].mean())
        >>> select_weight_decay(x, y, folds, margin, multilabel=False, grid=(0.01, 1.0))  # larger margins
        0.01
    """
    best, best_score = grid[-1], -np.inf
    for decay in sorted(grid, reverse=True):
        values = []
        for valid in folds:
            train = np.setdiff1d(np.arange(len(x)), valid)
            xt, xv = standardise(x[train], x[valid])
            values.append(score(fit_logistic(xt, y[train], multilabel=multilabel, weight_decay=decay)(xv), y[valid]))
        if np.nanmean(values) > best_score + 1e-9:
            best, best_score = decay, float(np.nanmean(values))
    return best


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Average precision: the mean of the precision at the rank of every positive.

    Args:
        scores: ``(N,)``, higher = more likely positive (ties keep the input order).
        truth: ``(N,)`` 0/1 or bool.

    Returns:
        The AP, NaN when there is no positive.

    Example:
        >>> round(average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])), 4)  # (1/1 + 2/3) / 2
        0.8333
        >>> average_precision(np.array([0.9, 0.8]), np.array([0, 0]))
        nan
    """
    order = np.argsort(-scores, kind="stable")
    hits = truth[order].astype(bool)
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / (np.arange(len(hits)) + 1)
    return float(precision[hits].mean())


def standardise(train, test):
    """Standardise both sets per feature with the training set's mean and standard deviation (+ 1e-6).

    Args:
        train: ``(N, F)``.
        test: ``(M, F)``.

    Returns:
        The standardised ``(train, test)``.

    Example:
        >>> train, test = standardise(np.array([[0.0], [2.0]]), np.array([[4.0]]))  # mean 1, std 1
        >>> train.ravel().round(4).tolist(), test.ravel().round(4).tolist()
        ([-1.0, 1.0], [3.0])
    """
    mean, std = train.mean(0), train.std(0) + 1e-6
    return (train - mean) / std, (test - mean) / std


def bigearthnet_probe(model) -> dict:
    """The BigEarthNet multi-label probe: trained on the v1 patches, tested on the held-out v2 ones.

    Needs the fixtures under ``BIGEARTHNET``. The weight decay is chosen by 5-fold
    cross-validation (micro AP) on the training patches.

    Args:
        model: the encoder (``tile_features``).

    Returns:
        ``{"micro_ap", "macro_ap", "prior_micro_ap", "n_train", "n_test", "classes_in_test",
        "weight_decay"}``; micro AP ranks every (patch, class) pair together, macro AP is the
        mean of the per-class APs over the classes present in the test set.

    Example:
        >>> result = bigearthnet_probe(random_twin(load_pretrained("runs/default/model")))  # doctest: +SKIP
        >>> result["n_train"], result["n_test"]  # doctest: +SKIP
        (30, 24)
        >>> scores, truth = np.array([[0.9, 0.2], [0.4, 0.8]]), np.array([[1, 0], [0, 1]])
        >>> average_precision(scores.ravel(), truth.ravel()), average_precision(scores[:, 0], truth[:, 0])
        (1.0, 1.0)
    """
    labels, classes = bigearthnet_labels()
    train_files, test_files = bigearthnet_files("pretrain"), bigearthnet_files("heldout")

    def targets(files):
        return np.array([[c in labels[_patch_key(p)] for c in classes] for p in files], dtype=float)

    y_train, y_test = targets(train_files), targets(test_files)
    x_train, x_test = tile_features(model, train_files), tile_features(model, test_files)
    folds = np.array_split(np.random.default_rng(0).permutation(len(x_train)), 5)
    decay = select_weight_decay(x_train, y_train, folds, lambda s, t: average_precision(s.ravel(), t.ravel()),
                                multilabel=True)
    x_train, x_test = standardise(x_train, x_test)
    scores = fit_logistic(x_train, y_train, multilabel=True, weight_decay=decay)(x_test)
    present = y_test.any(0)
    prior = np.broadcast_to(y_train.mean(0), y_test.shape)
    return {
        "micro_ap": average_precision(scores.ravel(), y_test.ravel()),
        "macro_ap": float(np.nanmean([average_precision(scores[:, k], y_test[:, k]) for k in np.flatnonzero(present)])),
        "prior_micro_ap": average_precision(prior.ravel() + 1e-9 * np.random.default_rng(0).random(prior.size),
                                            y_test.ravel()),
        "n_train": len(train_files), "n_test": len(test_files), "classes_in_test": int(present.sum()),
        "weight_decay": decay,
    }


def worldcereal_probe(model, cube, *, tile_size=None) -> dict:
    """The WorldCereal cropland probe on 40 m patch embeddings: western half for training, eastern for testing.

    Needs the pseudo-labels ``CROPTYPE``; each 40 m patch takes the majority class of its 4 x 4
    label pixels. The weight decay is chosen on the north / south halves of the western half.

    Args:
        model: the encoder.
        cube: the WorldCereal cube (``worldcereal_cube()``).

    Returns:
        ``{"accuracy", "macro_f1", "majority_accuracy", "classes", "n_train", "n_test",
        "weight_decay"}``.

    Example:
        >>> result = worldcereal_probe(load_pretrained("runs/default/model"), worldcereal_cube())  # doctest: +SKIP
        >>> result["classes"]  # doctest: +SKIP
        [0, 1]
        >>> CROPTYPE.relative_to(BIGEARTHNET.parent).as_posix()
        'worldcereal/worldcereal_cropland_classification.nc'
    """
    emb = xanysat.embed(cube, 40, model=model, tile_size=tile_size).compute()
    classes = xr.open_dataset(CROPTYPE, engine="h5netcdf")["__xarray_dataarray_variable__"].isel(bands=0).values
    k = 4
    grid = classes[: emb.sizes["y"] * k, : emb.sizes["x"] * k].reshape(emb.sizes["y"], k, emb.sizes["x"], k)
    grid = grid.transpose(0, 2, 1, 3).reshape(emb.sizes["y"], emb.sizes["x"], -1)
    majority = np.array([[np.bincount(c).argmax() for c in row] for row in grid])
    values, codes = np.unique(majority, return_inverse=True)
    codes = codes.reshape(majority.shape)
    feats = np.moveaxis(emb.values, 0, -1)
    half = emb.sizes["x"] // 2
    x_train, x_test = feats[:, :half].reshape(-1, feats.shape[-1]), feats[:, half:].reshape(-1, feats.shape[-1])
    y_train, y_test = codes[:, :half].ravel(), codes[:, half:].ravel()
    rows = np.repeat(np.arange(feats.shape[0]), half)
    folds = [np.flatnonzero(rows < feats.shape[0] // 2), np.flatnonzero(rows >= feats.shape[0] // 2)]  # north / south
    decay = select_weight_decay(x_train, y_train, folds, lambda s, t: float((s.argmax(1) == t).mean()),
                                multilabel=False)
    x_train, x_test = standardise(x_train, x_test)
    predicted = fit_logistic(x_train, y_train, multilabel=False, weight_decay=decay)(x_test).argmax(1)
    f1 = []
    for c in np.unique(y_test):
        tp = np.sum((predicted == c) & (y_test == c))
        precision = tp / max(1, np.sum(predicted == c))
        recall = tp / max(1, np.sum(y_test == c))
        f1.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return {
        "accuracy": float((predicted == y_test).mean()), "macro_f1": float(np.mean(f1)),
        "majority_accuracy": float((y_test == np.bincount(y_train).argmax()).mean()),
        "classes": [int(v) for v in values], "n_train": int(y_train.size), "n_test": int(y_test.size),
        "weight_decay": decay,
    }


WORLDCEREAL_TILE_M = 160
"""Tile side of the WorldCereal probe's embeddings: the default model's pretraining tile."""


def compare(model_dir) -> list[dict]:
    """Probe results of the model in ``model_dir`` and of its random-weights twin.

    A probe whose fixtures are absent gives ``{}``.

    Args:
        model_dir: a directory written by ``xanysat.nn.checkpoint.save_pretrained``.

    Returns:
        ``[{"model": "pretrained", "bigearthnet": {...}, "worldcereal": {...}}, {"model": "random", ...}]``.

    Example:
        >>> results = compare("runs/default/model")  # doctest: +SKIP
        >>> [r["model"] for r in results]  # doctest: +SKIP
        ['pretrained', 'random']
        >>> table([{"model": "pretrained", "bigearthnet": {}, "worldcereal": {}}]).splitlines()[2]  # no fixtures
        '| pretrained | n/a | n/a | n/a | n/a | n/a | n/a | n/a |'
    """
    torch.manual_seed(0)
    trained = load_pretrained(model_dir)
    cube = worldcereal_cube()
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, model in (("pretrained", trained), ("random", random_twin(trained))):
            ben = bigearthnet_probe(model) if BIGEARTHNET.is_dir() else {}
            wc = worldcereal_probe(model, cube, tile_size=WORLDCEREAL_TILE_M) if CROPTYPE.is_file() else {}
            wide = worldcereal_probe(model, cube) if CROPTYPE.is_file() else {}
            results.append({"model": name, "bigearthnet": ben, "worldcereal": wc, "worldcereal_1km": wide})
    return results


def table(results: list[dict]) -> str:
    """The probe results as a Markdown table.

    Args:
        results: as ``compare`` returns them.

    Returns:
        The table, then notes on the data (from the first result) and the chosen weight decays.

    Example:
        >>> ben = {"micro_ap": 0.5, "macro_ap": 0.4, "prior_micro_ap": 0.3, "n_train": 30, "n_test": 24,
        ...        "classes_in_test": 12, "weight_decay": 0.1}
        >>> lines = table([{"model": "pretrained", "bigearthnet": ben, "worldcereal": {}}]).splitlines()
        >>> lines[2]
        '| pretrained | 0.500 | 0.400 | 0.300 | n/a | n/a | n/a | n/a |'
        >>> print(lines[-1])
        Weight decay chosen by cross-validation on the training part: pretrained 0.1 / None (BigEarthNet / WorldCereal).
    """
    lines = ["| weights | BigEarthNet micro AP | macro AP | label-prior AP | WorldCereal accuracy | macro F1 "
             "| majority accuracy | WorldCereal accuracy, 1 km tiles |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        b, w, wide = r["bigearthnet"], r["worldcereal"], r.get("worldcereal_1km", {})
        cells = [b.get("micro_ap"), b.get("macro_ap"), b.get("prior_micro_ap"), w.get("accuracy"), w.get("macro_f1"),
                 w.get("majority_accuracy"), wide.get("accuracy")]
        lines.append(f"| {r['model']} | " + " | ".join("n/a" if c is None else f"{c:.3f}" for c in cells) + " |")
    b, w = results[0]["bigearthnet"], results[0]["worldcereal"]
    if b:
        lines.append(f"\nBigEarthNet: probe trained on {b['n_train']} v1 patches, tested on {b['n_test']} v2 patches "
                     f"held out of pretraining ({b['classes_in_test']} of 19 classes present).")
    if w:
        lines.append(f"WorldCereal cropland (pseudo-labels): {w['n_train']} patches (40 m) of the western half for "
                     f"training, {w['n_test']} of the eastern half for testing; classes {w['classes']}; embedded "
                     f"on {WORLDCEREAL_TILE_M} m tiles (the last column: the whole 1 km cube as one tile).")
    lines.append("Weight decay chosen by cross-validation on the training part: "
                 + ", ".join(f"{r['model']} {r['bigearthnet'].get('weight_decay')} / {r['worldcereal'].get('weight_decay')}"
                             for r in results) + " (BigEarthNet / WorldCereal).")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m xanysat.apps.evaluation --model DIR``: print the probe table of ``compare(DIR)``.

    Args:
        argv: command-line arguments (None: ``sys.argv[1:]``).

    Returns:
        0 (the exit status).

    Example:
        >>> import contextlib, io
        >>> main(["--model", "runs/default/model"])  # doctest: +SKIP
        >>> with contextlib.redirect_stdout(io.StringIO()) as text, contextlib.suppress(SystemExit):
        ...     main(["--help"])
        >>> "[-h] --model MODEL" in text.getvalue()  # --model is required
        True
    """
    parser = argparse.ArgumentParser(prog="python -m xanysat.apps.evaluation",
                                     description="Linear probes of a saved model against the same architecture "
                                                 "with random weights (BigEarthNet, WorldCereal cropland).")
    parser.add_argument("--model", required=True, help="a directory written by save_pretrained")
    args = parser.parse_args(argv)
    print(table(compare(args.model)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
