"""``predict``: a task head on a cube, lazily, as a georeferenced class or probability map.

The encoder runs through ``xanysat.embed`` (same tiles, halos, masks, per-worker model cache);
the head (small) is applied block by block to the embedding. A ``ClassificationHead`` labels
every patch (``output="patch"``) or every tile (``output="tile"``); a ``SegmentationHead``
labels every sub-patch of the dense output, unfolded to ``upsample`` x ``upsample`` pixels.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

KINDS = ("probabilities", "classes", "logits")


def predict(data, task, *, kind: str = "probabilities", classes=None, patch_size: int | None = None,
            output: str | None = None, **embed_kwargs) -> xr.DataArray:
    """Apply ``task`` (a ``xanysat.nn.heads.TaskModel``) to a cube; lazy like ``embed``.

    Args:
        data: a cube ``xanysat.embed`` accepts.
        task: encoder + head; its first patch size is used unless ``patch_size`` is given.
        kind: ``"probabilities"`` (softmax, or sigmoid for multi-label heads with
            ``task.head.multilabel``), ``"classes"`` (argmax, int16, -1 where no data) or ``"logits"``.
        classes: class names for the ``class`` coordinate (default 0..K-1).
        output: ``"patch"`` or ``"tile"`` for a classification head (default ``"patch"``);
            segmentation heads always read ``"dense"``.
        embed_kwargs: passed to ``xanysat.embed`` (tile_size, overlap, batch_size, device...).

    Returns:
        ``(class, y, x)`` float32 for probabilities/logits, ``(y, x)`` int16 for classes, with
        the cube's CRS and the embedding's provenance attributes.

    Example:
        >>> import torch, xanysat
        >>> from xanysat.nn.heads import ClassificationHead, linear_probe
        >>> from xanysat.testing import synthetic_cube
        >>> task = linear_probe(xanysat.load_model("untrained-tiny"), ClassificationHead(256, 3), patch_size=40)
        >>> p = predict(synthetic_cube(("s2",), extent_m=(120, 80), n_dates=2), task)
        >>> p.dims, p.sizes["class"]
        (('class', 'y', 'x'), 3)
    """
    from xanysat.cube.embed import embed
    from xanysat.nn.heads import SegmentationHead

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    head = task.head.eval()
    dense = isinstance(head, SegmentationHead)
    output = "dense" if dense else (output or "patch")
    if not dense and output not in ("patch", "tile"):
        raise ValueError(f"a classification head labels patches or tiles: output must be 'patch' or 'tile', got {output!r}.")
    emb = embed(data, patch_size or task.patch_sizes[0], output, model=task.encoder,
                output_modality=task.output_modality, **embed_kwargs)
    r = head.upsample if dense else 1
    n_classes = _n_classes(head)
    multilabel = bool(getattr(head, "multilabel", False))
    array = emb.data.map_blocks(
        _apply_head, head, kind, multilabel, r, dtype="int16" if kind == "classes" else "float32",
        chunks=((n_classes,), *(tuple(c * r for c in cs) for cs in emb.data.chunks[1:])),
        meta=np.empty((0, 0, 0), dtype="int16" if kind == "classes" else "float32"),
    )
    y, x = _fine_coords(emb["y"].values, r), _fine_coords(emb["x"].values, r)
    names = list(classes) if classes is not None else list(range(n_classes))
    if len(names) != n_classes:
        raise ValueError(f"classes has {len(names)} names but the head predicts {n_classes} classes.")
    attrs = {**emb.attrs, "head": type(head).__name__, "kind": kind, "classes": [str(c) for c in names]}
    if kind == "classes":
        out = xr.DataArray(array[0], dims=("y", "x"), coords={"y": y, "x": x}, name="classes", attrs=attrs)
        out = out.rio.write_nodata(-1)
    else:
        out = xr.DataArray(array, dims=("class", "y", "x"), coords={"class": names, "y": y, "x": x}, name=kind,
                           attrs=attrs)
    out = out.rio.write_crs(emb.rio.crs)
    out.encoding["coordinates"] = "spatial_ref"
    return out


def _n_classes(head) -> int:
    last = [m for m in head.modules() if hasattr(m, "out_features")][-1].out_features
    return last // (head.upsample**2) if hasattr(head, "upsample") else last


def _fine_coords(centres: np.ndarray, r: int) -> np.ndarray:
    if r == 1:
        return centres
    step = (centres[1] - centres[0]) if len(centres) > 1 else 0.0
    offsets = (np.arange(r) + 0.5) / r - 0.5
    return (centres[:, None] + offsets[None, :] * step).reshape(-1)


def _apply_head(block: np.ndarray, head, kind: str, multilabel: bool, r: int) -> np.ndarray:
    import torch

    valid = np.isfinite(block).all(axis=0)
    features = torch.from_numpy(np.nan_to_num(np.moveaxis(block, 0, -1))).float()[None]
    with torch.inference_mode():
        if r > 1 or hasattr(head, "upsample"):
            logits = head(features)[0]  # (K, H*r, W*r)
        else:
            logits = head(features.reshape(-1, features.shape[-1])).reshape(*features.shape[1:3], -1).permute(2, 0, 1)
    valid = np.repeat(np.repeat(valid, r, axis=0), r, axis=1)
    if kind == "classes":
        classes = logits.argmax(0).numpy().astype("int16")
        classes[~valid] = -1
        return classes[None]
    values = logits.sigmoid() if (kind == "probabilities" and multilabel) else (
        logits.softmax(0) if kind == "probabilities" else logits)
    values = values.numpy().astype("float32")
    values[:, ~valid] = np.nan
    return values
