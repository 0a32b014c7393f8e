"""Linear probes on held-out real labels: a pretrained model against the same architecture with
random weights (seed 0).

- BigEarthNet, 19-class multi-label: probe trained on the 30 v1 patches, tested on the 24 v2
  patches (held out of pretraining). Features: the tile embedding of each 1.2 km patch
  (s2 + s1-asc, patch 40 m). Metric: micro average precision (AP) and macro AP over the test
  classes present; the label prior (class frequency as the score) is the floor.
- WorldCereal cropland (model outputs of the WorldCereal system used as pseudo-labels, 39 % / 61 %):
  40 m patch embeddings, majority class per patch; probe trained on the western half,
  tested on the eastern half. Metric: accuracy and macro F1; the majority class is the floor.

Probes are L2-regularised logistic regressions on standardised features; the weight decay is
chosen on the training set alone (5 folds for BigEarthNet, north / south halves of the western
half for WorldCereal), the same way for both models.

    python -m xanysat.evaluation --model runs/default/model      (or: xanysat probe --model ...)
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
from xanysat.checkpoint import load_pretrained
from xanysat.model import AnySat
from xanysat.pretraining import BIGEARTHNET, bigearthnet_cube, bigearthnet_files, worldcereal_cube

CROPTYPE = BIGEARTHNET.parent / "worldcereal" / "worldcereal_cropland_classification.nc"


def random_twin(model: AnySat) -> AnySat:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        twin = AnySat(model.config).eval()
    twin.normalization = dict(model.normalization)
    twin.model_id = f"random weights, {model.config.embed_dim}d{model.config.depth}"
    return twin


def bigearthnet_labels() -> tuple[dict[str, list[str]], list[str]]:
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
    arrays) of the training set only; the test set never takes part. Ties go to the stronger decay."""
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
    order = np.argsort(-scores, kind="stable")
    hits = truth[order].astype(bool)
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / (np.arange(len(hits)) + 1)
    return float(precision[hits].mean())


def standardise(train, test):
    mean, std = train.mean(0), train.std(0) + 1e-6
    return (train - mean) / std, (test - mean) / std


def bigearthnet_probe(model) -> dict:
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


def worldcereal_probe(model, cube) -> dict:
    emb = xanysat.embed(cube, 40, model=model).compute()
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


def compare(model_dir) -> list[dict]:
    """Probe results of the model in ``model_dir`` and of its random-weights twin."""
    torch.manual_seed(0)
    trained = load_pretrained(model_dir)
    cube = worldcereal_cube()
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, model in (("pretrained", trained), ("random", random_twin(trained))):
            ben = bigearthnet_probe(model) if BIGEARTHNET.is_dir() else {}
            wc = worldcereal_probe(model, cube) if CROPTYPE.is_file() else {}
            results.append({"model": name, "bigearthnet": ben, "worldcereal": wc})
    return results


def table(results: list[dict]) -> str:
    """The probe results as a Markdown table."""
    lines = ["| weights | BigEarthNet micro AP | macro AP | label-prior AP | WorldCereal accuracy | macro F1 | majority accuracy |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        b, w = r["bigearthnet"], r["worldcereal"]
        cells = [b.get("micro_ap"), b.get("macro_ap"), b.get("prior_micro_ap"), w.get("accuracy"), w.get("macro_f1"),
                 w.get("majority_accuracy")]
        lines.append(f"| {r['model']} | " + " | ".join("n/a" if c is None else f"{c:.3f}" for c in cells) + " |")
    b, w = results[0]["bigearthnet"], results[0]["worldcereal"]
    if b:
        lines.append(f"\nBigEarthNet: probe trained on {b['n_train']} v1 patches, tested on {b['n_test']} v2 patches "
                     f"held out of pretraining ({b['classes_in_test']} of 19 classes present).")
    if w:
        lines.append(f"WorldCereal cropland (pseudo-labels): {w['n_train']} patches of the western half for "
                     f"training, {w['n_test']} of the eastern half for testing; classes {w['classes']}.")
    lines.append("Weight decay chosen by cross-validation on the training part: "
                 + ", ".join(f"{r['model']} {r['bigearthnet'].get('weight_decay')} / {r['worldcereal'].get('weight_decay')}"
                             for r in results) + " (BigEarthNet / WorldCereal).")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a directory written by save_pretrained")
    args = parser.parse_args(argv)
    print(table(compare(args.model)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
