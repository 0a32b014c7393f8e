"""Turn images and embeddings into 8-bit RGB pictures (numpy only)."""

from __future__ import annotations

import numpy as np

from xanysat.errors import DimensionError


def percentile_stretch(
    values: np.ndarray, low: float = 2.0, high: float = 98.0
) -> np.ndarray:
    """Stretch each channel (last axis) linearly so its ``low``-``high`` percentiles span 0-255.

    NaN values are ignored when computing the percentiles and come out as 0. A channel
    without spread (constant, or all NaN) comes out as 0.

    Args:
        values: array ``(..., C)``.
        low: percentile mapped to 0.
        high: percentile mapped to 255.

    Returns:
        uint8 array with the shape of ``values``.

    Example:
        >>> percentile_stretch(np.array([[0.0], [5.0], [10.0]]), 0, 100)[:, 0].tolist()
        [0, 128, 255]
    """
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(-1, values.shape[-1])
    out = np.zeros(flat.shape, dtype=np.uint8)
    for channel in range(flat.shape[1]):
        column = flat[:, channel]
        finite = np.isfinite(column)
        if not finite.any():
            continue
        lo, hi = np.percentile(column[finite], [low, high])
        if hi <= lo:
            continue
        scaled = np.clip((column[finite] - lo) / (hi - lo), 0.0, 1.0)
        out[finite, channel] = np.round(scaled * 255).astype(np.uint8)
    return out.reshape(values.shape)


def pca_rgb(features: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """Map features to colours: the first three principal components as R, G, B.

    The components come from an SVD of the centred valid rows; each component's sign is
    fixed so that its largest loading is positive (the colours are deterministic), then
    each component is stretched with :func:`percentile_stretch`. Rows holding any NaN or
    infinity are left out of the fit and come out black. With fewer than three
    components of non-zero spread (e.g. constant features), the missing channels are 0.

    Args:
        features: array ``(..., D)``, e.g. patch embeddings ``(H, W, D)``.
        low: percentile of each component mapped to 0.
        high: percentile of each component mapped to 255.

    Returns:
        uint8 array ``(..., 3)``.

    Raises:
        DimensionError: if ``features`` has no feature axis (a 0-d array).

    Example:
        >>> embeddings = np.random.default_rng(0).normal(size=(6, 6, 768))
        >>> pca_rgb(embeddings).shape
        (6, 6, 3)
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim < 1:
        raise DimensionError(
            "pca_rgb needs features with a last feature axis (..., D); got a scalar."
        )
    flat = features.reshape(-1, features.shape[-1])
    valid = np.all(np.isfinite(flat), axis=1)
    components = np.full((flat.shape[0], 3), np.nan)
    components[valid] = _top3_components(flat[valid])
    return percentile_stretch(components, low, high).reshape(*features.shape[:-1], 3)


def _top3_components(rows: np.ndarray) -> np.ndarray:
    """Scores of ``rows`` (N, D) on their first three principal axes, zero-padded to (N, 3)."""
    scores = np.zeros((rows.shape[0], 3))
    if rows.shape[0] == 0:
        return scores
    centred = rows - rows.mean(axis=0)
    _, singular_values, axes = np.linalg.svd(centred, full_matrices=False)
    n_kept = min(3, int(np.sum(singular_values > singular_values.max(initial=0.0) * 1e-12)))
    for k in range(n_kept):
        axis = axes[k] * np.sign(axes[k][np.argmax(np.abs(axes[k]))])
        scores[:, k] = centred @ axis
    return scores
