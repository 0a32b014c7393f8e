"""Pictures of embeddings: PCA colour maps, similarity maps, PNG files.

numpy helpers (``percentile_stretch``, ``pca_rgb``) work on plain arrays; ``pca_rgb_map``,
``similarity`` and ``save_png`` take the embedding DataArrays of ``xanysat.embed`` (dims
``("feature", "y", "x")``, possibly dask) and keep their coordinates and CRS. They are also
``emb.anysat.pca_rgb()``, ``emb.anysat.similarity(...)`` and ``emb.anysat.to_png(...)``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import xarray as xr

from xanysat.errors import DimensionError

FEATURE = "feature"
RGB = "rgb"


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
    if rows.shape[0] == 0:
        return np.zeros((0, 3))
    mean, axes = _pca_axes(rows)
    return _scores(rows, mean, axes)


def _pca_axes(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and up to three principal axes ``(k, D)`` of ``rows`` (N >= 1, D), each axis
    signed so that its largest loading is positive; axes without spread are left out."""
    mean = rows.mean(axis=0)
    _, singular_values, axes = np.linalg.svd(rows - mean, full_matrices=False)
    n_kept = min(3, int(np.sum(singular_values > singular_values.max(initial=0.0) * 1e-12)))
    signed = [axes[k] * np.sign(axes[k][np.argmax(np.abs(axes[k]))]) for k in range(n_kept)]
    return mean, np.asarray(signed).reshape(n_kept, rows.shape[1])


def _scores(values: np.ndarray, mean: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """``(..., D)`` -> ``(..., 3)`` scores on ``axes``; channels without an axis are 0."""
    centred = values - mean
    scores = np.zeros((*values.shape[:-1], 3))
    for k, axis in enumerate(axes):
        scores[..., k] = centred @ axis
    return scores


# -- maps (xarray) -------------------------------------------------------------------------


def _embedding_of(obj) -> xr.DataArray:
    """The embedding DataArray of ``obj`` (a DataArray, or a Dataset holding ``embedding``)."""
    if isinstance(obj, xr.Dataset):
        names = ["embedding"] if "embedding" in obj.data_vars else [v for v in obj.data_vars if FEATURE in obj[v].dims]
        if len(names) != 1:
            raise DimensionError(f"expected a Dataset with one embedding variable (dim {FEATURE!r}); it holds "
                                 f"{list(obj.data_vars)}.")
        obj = obj[names[0]]
    if not isinstance(obj, xr.DataArray):
        raise DimensionError(f"expected an embedding DataArray, got {type(obj).__name__}.")
    if FEATURE not in obj.dims:
        raise DimensionError(f"expected an embedding with a {FEATURE!r} dim (xanysat.embed's output), got dims "
                             f"{obj.dims}.")
    return obj


def pca_rgb_map(emb, *, low: float = 2.0, high: float = 98.0, fit_sample: int = 100_000, seed: int = 0,
                alpha: bool = False) -> xr.DataArray:
    """Colour an embedding map by its first three principal components, lazily.

    The PCA (and the ``low``-``high`` percentile stretch of each component) is fitted on up to
    ``fit_sample`` cells drawn at random (seeded) among all cells, NaN cells left out; it is
    then applied block by block to the whole map. With ``fit_sample`` >= the number of cells
    the colours are those of ``pca_rgb`` on the whole map. Fitting reads the sampled cells,
    so a lazy embedding is computed for the fit and again for the picture: persist it, or
    read it from zarr, first. A map small enough to be fitted whole is persisted here.

    Args:
        emb: an embedding with a ``feature`` dim, e.g. ``("feature", "y", "x")`` from
            ``xanysat.embed`` (or ``("sample", "feature")``), or a Dataset holding ``embedding``.
        low: percentile of each component mapped to 0.
        high: percentile of each component mapped to 255.
        fit_sample: most cells the PCA is fitted on.
        seed: seed of the cell sample.
        alpha: add an alpha channel (255 where the embedding is valid, 0 on NaN cells).

    Returns:
        uint8 ``DataArray`` named ``"pca_rgb"`` with the other dims then ``rgb`` (``["r", "g",
        "b"]``, plus ``"a"`` with ``alpha``), coordinates and CRS of ``emb``; NaN cells are black.
        ``.plot.imshow()`` shows it.

    Example:
        >>> import numpy as np, xarray as xr
        >>> emb = xr.DataArray(np.random.default_rng(0).normal(size=(8, 4, 5)), dims=("feature", "y", "x"),
        ...                    coords={"y": [35.0, 25.0, 15.0, 5.0], "x": 5.0 + 10 * np.arange(5)})
        >>> rgb = pca_rgb_map(emb)
        >>> rgb.dims, rgb.shape, rgb.dtype, rgb["rgb"].values.tolist()
        (('y', 'x', 'rgb'), (4, 5, 3), dtype('uint8'), ['r', 'g', 'b'])
    """
    emb = _embedding_of(emb)
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}.")
    if fit_sample < 1:
        raise ValueError(f"fit_sample must be a positive number of cells, got {fit_sample}.")
    other = [d for d in emb.dims if d != FEATURE]
    n_cells = math.prod(emb.sizes[d] for d in other)
    if emb.chunks is not None:
        emb = emb.chunk({FEATURE: -1})
        if n_cells <= fit_sample:
            emb = emb.persist()
    rows = _fit_rows(emb, other, n_cells, fit_sample, seed)
    if rows.shape[0]:
        mean, axes = _pca_axes(rows)
        scores = _scores(rows, mean, axes)
        lo, hi = np.percentile(scores, [low, high], axis=0)
    else:
        mean, axes = np.zeros(emb.sizes[FEATURE]), np.zeros((0, emb.sizes[FEATURE]))
        lo, hi = np.zeros(3), np.zeros(3)
    channels = ["r", "g", "b", "a"] if alpha else ["r", "g", "b"]
    out = xr.apply_ufunc(
        _rgb_block, emb, input_core_dims=[[FEATURE]], output_core_dims=[[RGB]], dask="parallelized",
        output_dtypes=[np.uint8], dask_gufunc_kwargs={"output_sizes": {RGB: len(channels)}},
        kwargs={"mean": mean, "axes": axes, "lo": lo, "hi": hi, "alpha": alpha},
    )
    out = out.assign_coords({RGB: channels}).rename("pca_rgb")
    out.attrs = {
        "long_name": "first three principal components of the embedding as R, G, B",
        "pca_fit_cells": int(rows.shape[0]),
        "stretch_percentiles": [float(low), float(high)],
        "missing_data": "NaN cells are black" + (" and transparent" if alpha else ""),
    }
    for key in ("model_id", "weights_sha256_16"):
        if key in emb.attrs:
            out.attrs[key] = emb.attrs[key]
    return _with_crs(out, emb)


def _fit_rows(emb: xr.DataArray, other, n_cells: int, fit_sample: int, seed: int) -> np.ndarray:
    """Up to ``fit_sample`` finite rows ``(k, D)`` of the map (all cells when they are fewer)."""
    if n_cells > fit_sample:
        picks = np.sort(np.random.default_rng(seed).choice(n_cells, fit_sample, replace=False))
        index = np.unravel_index(picks, [emb.sizes[d] for d in other])
        emb = emb.isel({d: xr.DataArray(i, dims="__cell__") for d, i in zip(other, index)})
        other = ["__cell__"]
    rows = np.asarray(emb.transpose(*other, FEATURE).values, dtype="float64").reshape(-1, emb.sizes[FEATURE])
    return rows[np.all(np.isfinite(rows), axis=1)]


def _rgb_block(values, *, mean, axes, lo, hi, alpha):
    values = np.asarray(values, dtype="float64")
    valid = np.all(np.isfinite(values), axis=-1)
    scores = _scores(np.where(valid[..., None], values, 0.0), mean, axes)
    spread = np.where(hi > lo, hi - lo, 1.0)
    scaled = np.clip((scores - lo) / spread, 0.0, 1.0)
    rgb = np.where(hi > lo, np.round(scaled * 255), 0).astype(np.uint8)
    rgb[~valid] = 0
    if alpha:
        rgb = np.concatenate([rgb, np.where(valid, 255, 0).astype(np.uint8)[..., None]], axis=-1)
    return rgb


def _with_crs(out: xr.DataArray, like: xr.DataArray) -> xr.DataArray:
    """Keep ``like``'s grid mapping on ``out`` (its ``spatial_ref`` coordinate is kept already),
    listing the coordinates explicitly so that a file written from ``out`` reads back with
    ``spatial_ref`` as a coordinate (xarray leaves grid mappings out of 'coordinates')."""
    mapping = like.encoding.get("grid_mapping") or like.attrs.get("grid_mapping")
    if mapping and mapping in out.coords:
        out.encoding["grid_mapping"] = mapping
        out.encoding["coordinates"] = " ".join(sorted(str(c) for c in out.coords if c not in out.dims))
    return out


def similarity(emb, x: float | None = None, y: float | None = None, *, vector=None,
               method: str | None = "nearest") -> xr.DataArray:
    """Cosine similarity of every cell of an embedding map to one query, lazily.

    The query is the embedding at map coordinates ``(x, y)`` (in the map's CRS; the cell
    containing the point with ``method="nearest"``, or exactly a cell centre with
    ``method=None``), or a given ``vector``. A point query computes the block holding the
    point now; persist a lazy embedding (or read it from zarr) to avoid computing it twice.

    Args:
        emb: an embedding with a ``feature`` dim (``("feature", "y", "x")`` from ``xanysat.embed``),
            or a Dataset holding ``embedding``.
        x: query easting, in the CRS of ``emb``.
        y: query northing.
        vector: the query embedding instead of a point: one value per feature, a numpy array or
            a DataArray with a ``feature`` dim.
        method: how ``(x, y)`` picks a cell: ``"nearest"`` or None (exact).

    Returns:
        float32 ``DataArray`` named ``"similarity"``, the dims of ``emb`` without ``feature``,
        values in [-1, 1], NaN where the map is NaN (or all zero); attrs say what was queried.

    Raises:
        DimensionError: the point is outside the map or on a NaN cell, the vector has the
            wrong length, or neither (or both) of a point and a vector is given.

    Example:
        >>> import numpy as np, xarray as xr
        >>> emb = xr.DataArray(np.random.default_rng(0).normal(size=(8, 3, 4)), dims=("feature", "y", "x"),
        ...                    coords={"y": [25.0, 15.0, 5.0], "x": 5.0 + 10 * np.arange(4)})
        >>> sim = similarity(emb, x=12.0, y=17.0)
        >>> sim.dims, round(float(sim.sel(x=15.0, y=15.0)), 6), sim.attrs["query_x"], sim.attrs["query_y"]
        (('y', 'x'), 1.0, 15.0, 15.0)
    """
    emb = _embedding_of(emb)
    features = emb.sizes[FEATURE]
    if vector is not None:
        if x is not None or y is not None:
            raise DimensionError("give either a point (x, y) or vector=, not both.")
        query = _query_vector(vector, features)
        attrs = {"query": f"a given vector of {features} features"}
    else:
        if x is None or y is None:
            raise DimensionError("similarity needs a point (x=..., y=...) in the map's CRS, or vector=.")
        query, (cx, cy) = _query_at(emb, x, y, method)
        attrs = {"query": f"embedding of the cell at x={cx:.2f}, y={cy:.2f} (asked: x={x:.2f}, y={y:.2f})",
                 "query_x": cx, "query_y": cy}
    norm = float(np.linalg.norm(query))
    if norm == 0:
        raise DimensionError("the query embedding is all zeros; cosine similarity is undefined.")
    unit = xr.DataArray(query / norm, dims=FEATURE)
    values = emb.astype("float64")
    if "feature" in values.coords:
        values = values.drop_vars(FEATURE)
    length = np.sqrt((values * values).sum(FEATURE, skipna=False))
    sim = (xr.dot(values, unit, dim=FEATURE) / length.where(length > 0)).clip(-1.0, 1.0).astype("float32")
    sim = sim.rename("similarity")
    sim.attrs = {"long_name": "cosine similarity", "units": "1", **attrs}
    for key in ("model_id", "weights_sha256_16"):
        if key in emb.attrs:
            sim.attrs[key] = emb.attrs[key]
    return _with_crs(sim, emb)


def _query_vector(vector, features: int) -> np.ndarray:
    if isinstance(vector, xr.DataArray):
        if FEATURE not in vector.dims:
            raise DimensionError(f"vector has dims {vector.dims}; expected a {FEATURE!r} dim.")
        extra = [d for d in vector.dims if d != FEATURE and vector.sizes[d] != 1]
        if extra:
            raise DimensionError(f"vector has dims {dict(vector.sizes)}; expected one {FEATURE!r} vector "
                                 f"(select along {extra}).")
        vector = vector.squeeze([d for d in vector.dims if d != FEATURE]).values
    query = np.asarray(vector, dtype="float64")
    if query.ndim != 1:
        raise DimensionError(f"vector has shape {query.shape}; expected one value per feature ({features},).")
    if query.shape[0] != features:
        raise DimensionError(f"vector has {query.shape[0]} values; the embedding has {features} features.")
    if not np.isfinite(query).all():
        raise DimensionError("vector holds NaN or infinite values.")
    return query


def _query_at(emb: xr.DataArray, x: float, y: float, method) -> tuple[np.ndarray, tuple[float, float]]:
    if not {"x", "y"} <= set(emb.dims):
        raise DimensionError(f"a point query needs 'x' and 'y' dims; the embedding has {emb.dims}. Use vector=.")
    for name, value in (("x", x), ("y", y)):
        lo, hi = _bounds(emb, name)
        if not lo <= value <= hi:
            raise DimensionError(
                f"point (x={x:.2f}, y={y:.2f}) is outside the map: it spans x {_bounds(emb, 'x')[0]:.2f} to "
                f"{_bounds(emb, 'x')[1]:.2f}, y {_bounds(emb, 'y')[0]:.2f} to {_bounds(emb, 'y')[1]:.2f}"
                f"{_crs_note(emb)}. Give the point in the map's CRS."
            )
    try:
        cell = emb.sel(x=x, y=y, method=method)
    except KeyError:
        raise DimensionError(f"no cell centre at exactly x={x:.2f}, y={y:.2f}; use method='nearest'.") from None
    query = np.asarray(cell.transpose(FEATURE).values, dtype="float64")
    cx, cy = float(cell["x"]), float(cell["y"])
    if not np.isfinite(query).all():
        raise DimensionError(f"the map is NaN at the cell x={cx:.2f}, y={cy:.2f} (no valid input there); pick another "
                             "point or pass vector=.")
    return query, (cx, cy)


def _bounds(emb: xr.DataArray, dim: str) -> tuple[float, float]:
    """Extent of the cells along ``dim`` (centres +- half a cell)."""
    values = np.asarray(emb[dim].values, dtype="float64")
    if values.size > 1:
        half = abs(values[1] - values[0]) / 2
    else:
        try:
            res = emb.rio.resolution()
            half = abs(res[0 if dim == "x" else 1]) / 2
        except (RuntimeError, ValueError, KeyError):  # no transform: a one-cell axis accepts only its centre
            half = 0.0
    return float(values.min() - half), float(values.max() + half)


def _crs_note(emb: xr.DataArray) -> str:
    try:
        crs = emb.rio.crs
    except (RuntimeError, ValueError, KeyError):  # rioxarray / pyproj errors on malformed grid mappings
        crs = None
    return f" ({crs})" if crs is not None else ""


# -- PNG files -----------------------------------------------------------------------------

_MIN_SIDE_PX = 256
_NAN_GREY = (200, 200, 200)
# viridis at 0, 1/8, ..., 1 (matplotlib's values, rounded); interpolated linearly.
_VIRIDIS = np.array([
    (68, 1, 84), (71, 44, 122), (59, 82, 139), (44, 113, 142), (33, 145, 140),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
], dtype="float64")


def colormap(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map values to viridis-like RGB uint8 ``(..., 3)``; NaN becomes light grey.

    Args:
        values: the values, any shape.
        vmin: value mapped to the first colour (values below are clipped).
        vmax: value mapped to the last colour (values above are clipped); ``vmax <= vmin``
            maps everything to the first colour.

    Returns:
        ``uint8`` array of shape ``values.shape + (3,)``.

    Example:
        >>> colormap(np.array([0.0, 1.0, np.nan]), 0.0, 1.0).tolist()
        [[68, 1, 84], [253, 231, 37], [200, 200, 200]]
    """
    values = np.asarray(values, dtype="float64")
    finite = np.isfinite(values)
    t = np.zeros(values.shape) if vmax <= vmin else np.clip((np.where(finite, values, vmin) - vmin) / (vmax - vmin), 0, 1)
    position = t * (len(_VIRIDIS) - 1)
    left = np.minimum(position.astype(int), len(_VIRIDIS) - 2)
    frac = (position - left)[..., None]
    rgb = _VIRIDIS[left] * (1 - frac) + _VIRIDIS[left + 1] * frac
    rgb[~finite] = _NAN_GREY
    return np.round(rgb).astype(np.uint8)


def save_png(obj, path, *, title: str | None = None, scale: int | None = None, vmin: float | None = None,
             vmax: float | None = None) -> Path:
    """Write a PNG a person can look at.

    * an embedding (a ``feature`` dim): its ``pca_rgb_map`` colours;
    * an RGB map (an ``rgb`` dim of 3 or 4 uint8 channels, e.g. from ``pca_rgb_map``): as is;
    * a 2-D map (e.g. from ``similarity``): viridis-coloured, with a colour bar showing the
      ``vmin``-``vmax`` range (default: the 2nd and 98th percentiles; for a similarity map the
      top is the maximum), NaN light grey, the query point of a similarity map circled.

    North is up (rows sorted by decreasing ``y``). Every cell becomes a ``scale`` x ``scale``
    block of pixels (default: enough to make the longer side at least 256 pixels), so an
    RGB picture is exactly ``(width * scale, height * scale)`` pixels, plus an 18-pixel band
    on top for a ``title``. Uses Pillow only.

    Args:
        obj: a DataArray (or a Dataset holding ``embedding``) as above; computed if lazy.
        path: the file to write.
        title: text written above the picture.
        scale: pixels per cell side.
        vmin: value at the bottom of the colour scale (2-D maps).
        vmax: value at the top of the colour scale (2-D maps).

    Returns:
        ``path`` as a ``pathlib.Path``.

    Example:
        >>> import numpy as np, xarray as xr, tempfile, PIL.Image
        >>> emb = xr.DataArray(np.random.default_rng(0).normal(size=(8, 4, 5)), dims=("feature", "y", "x"))
        >>> out = save_png(emb, tempfile.mkdtemp() + "/emb.png", scale=10)
        >>> with PIL.Image.open(out) as image:
        ...     image.size
        (50, 40)
    """
    from PIL import Image

    path = Path(path)
    if isinstance(obj, xr.Dataset) or (isinstance(obj, xr.DataArray) and FEATURE in obj.dims):
        obj = pca_rgb_map(obj)
    if not isinstance(obj, xr.DataArray):
        raise DimensionError(f"save_png takes an xarray DataArray or Dataset, got {type(obj).__name__}.")
    if RGB in obj.dims:
        image = _north_up(obj.transpose(..., RGB))
        if image.ndim != 3 or image.sizes[RGB] not in (3, 4):
            raise DimensionError(f"an RGB map needs two spatial dims and 3 or 4 {RGB!r} channels; got {dict(obj.sizes)}.")
        pixels = np.asarray(image.values)
        if pixels.dtype != np.uint8:
            pixels = np.clip(np.nan_to_num(pixels.astype("float64")), 0, 255).round().astype(np.uint8)
        k = _scale(pixels.shape[:2], scale)
        picture = Image.fromarray(_upscale(pixels, k), "RGBA" if pixels.shape[-1] == 4 else "RGB")
    elif obj.ndim == 2:
        image = _north_up(obj)
        values = np.asarray(image.values, dtype="float64")
        k = _scale(values.shape, scale)
        lo, hi = _value_range(values, vmin, vmax, is_similarity="query" in obj.attrs)
        picture = Image.fromarray(_upscale(colormap(values, lo, hi), k), "RGB")
        _mark_query(picture, image, k)
        picture = _with_colourbar(picture, lo, hi, obj.attrs.get("long_name", obj.name))
    else:
        raise DimensionError(f"save_png needs an embedding (a {FEATURE!r} dim), an RGB map (an {RGB!r} dim) or a 2-D "
                             f"map; got dims {obj.dims}.")
    if title:
        picture = _with_title(picture, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, format="PNG")
    return path


def _north_up(da: xr.DataArray) -> xr.DataArray:
    spatial = [d for d in da.dims if d != RGB]
    if "y" in spatial and "x" in spatial:
        da = da.transpose("y", "x", *([RGB] if RGB in da.dims else []))
        y = np.asarray(da["y"].values) if "y" in da.coords else None
        if y is not None and y.size > 1 and y[1] > y[0]:
            da = da.isel(y=slice(None, None, -1))
    return da


def _scale(shape, scale) -> int:
    if scale is None:
        return max(1, math.ceil(_MIN_SIDE_PX / max(shape)))
    if int(scale) < 1:
        raise ValueError(f"scale must be a positive number of pixels per cell, got {scale}.")
    return int(scale)


def _upscale(pixels: np.ndarray, k: int) -> np.ndarray:
    return np.ascontiguousarray(pixels.repeat(k, axis=0).repeat(k, axis=1))


def _value_range(values, vmin, vmax, *, is_similarity: bool) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (0.0 if vmin is None else vmin), (1.0 if vmax is None else vmax)
    lo = float(np.percentile(finite, 2)) if vmin is None else float(vmin)
    hi = float(finite.max() if is_similarity else np.percentile(finite, 98)) if vmax is None else float(vmax)
    return lo, hi


def _mark_query(picture, image: xr.DataArray, k: int) -> None:
    """Circle the query cell of a similarity map."""
    from PIL import ImageDraw

    qx, qy = image.attrs.get("query_x"), image.attrs.get("query_y")
    if qx is None or qy is None or not {"x", "y"} <= set(image.coords):
        return
    col = int(np.argmin(np.abs(np.asarray(image["x"].values) - qx)))
    row = int(np.argmin(np.abs(np.asarray(image["y"].values) - qy)))
    cx, cy, r = (col + 0.5) * k, (row + 0.5) * k, max(4.0, 0.8 * k)
    draw = ImageDraw.Draw(picture)
    draw.ellipse((cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1), outline=(0, 0, 0), width=1)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(255, 64, 64), width=2)


def _with_colourbar(picture, lo: float, hi: float, label) -> object:
    from PIL import Image, ImageDraw

    gap, bar, text = 8, 14, 80
    height = max(picture.height, 48)
    canvas = Image.new("RGB", (picture.width + gap + bar + text, height), "white")
    canvas.paste(picture, (0, 0))
    ramp = np.linspace(hi, lo, height)[:, None].repeat(bar, axis=1)
    canvas.paste(Image.fromarray(colormap(ramp, lo, hi), "RGB"), (picture.width + gap, 0))
    draw = ImageDraw.Draw(canvas)
    x = picture.width + gap + bar + 4
    draw.text((x, 0), f"{hi:.3g}", fill="black")
    draw.text((x, height - 12), f"{lo:.3g}", fill="black")
    lines = _wrap(str(label), 11) if label else []
    for i, line in enumerate(lines[:3]):
        draw.text((x, height // 2 - 6 * len(lines[:3]) + 12 * i), line, fill="black")
    return canvas


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _with_title(picture, title: str):
    from PIL import Image, ImageDraw

    band = 18
    canvas = Image.new(picture.mode, (picture.width, picture.height + band), "white")
    canvas.paste(picture, (0, band))
    ImageDraw.Draw(canvas).text((4, 3), title, fill="black")
    return canvas
