"""Embed the shipped TreeSatAI tile with AnySat; save a georeferenced Zarr cube and a picture.

Run it with ``python -m xanysat.demo [--out DIR] [--model NAME]``. It writes

- ``embedding.zarr``: the 10 m patch embeddings as a DataArray ``embedding`` with dims
  ``(y, x, embedding)``, patch-centre coordinates in the tile's CRS (EPSG:25832). Open it
  with ``xr.open_dataarray(path, engine="zarr", decode_coords="all")`` (the variable name
  equals a dimension name, so xarray stores it under a placeholder name that
  ``open_dataarray`` restores);
- ``treesatai_embedding.png``: the aerial image in false colour next to PCA colourings
  of the dense (2 m) aerial features and of the 10 m patch embeddings.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import torch
import xarray as xr
from PIL import Image, ImageDraw
from rasterio.transform import Affine

import xanysat
from xanysat.errors import AnySatInputError, DimensionError
from xanysat.sample_data import treesatai_tile
from xanysat.viz import pca_rgb, percentile_stretch

PATCH_SIZE_M = 10
PANEL_PX = 300
GAP_PX = 10
CAPTION_PX = 20
FALSE_COLOUR_BANDS = (0, 1, 2)  # aerial NIR, R, G shown as R, G, B
PANEL_CAPTIONS = ("aerial (NIR, R, G)", "dense aerial features, 2 m", "patch embeddings, 10 m")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; see the module docstring. Returns the process exit code."""
    args = _parse_args(argv)
    started = time.perf_counter()

    tile = treesatai_tile()
    model = xanysat.load_model(args.model)
    device = next(model.parameters()).device
    batch = {name: value.to(device) for name, value in tile["batch"].items()}
    with torch.inference_mode():
        patches = model(batch, patch_size=PATCH_SIZE_M, output="patch")
        dense = model(batch, patch_size=PATCH_SIZE_M, output="dense", output_modality="aerial")
    patch_features = patches[0].float().cpu().numpy()
    dense_features = dense[0].float().cpu().numpy()

    args.out.mkdir(parents=True, exist_ok=True)
    embedding = patch_embedding_dataarray(
        patch_features, tile["transform"], tile["crs"],
        patch_size_m=PATCH_SIZE_M, model_id=model.model_id,
    )
    zarr_path = args.out / "embedding.zarr"
    with warnings.catch_warnings():
        # zarr-python 3 warns that consolidated metadata is not yet in the v3 spec; xarray
        # writes it anyway so readers open the store without listing it.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        embedding.to_zarr(zarr_path, mode="w")

    aerial = tile["batch"]["aerial"][0].numpy()
    png_path = args.out / "treesatai_embedding.png"
    embedding_figure(aerial, dense_features, patch_features).save(png_path)

    print(f"model:            {model.model_id}")
    print(f"patch embeddings: {tuple(patches.shape)} (B, rows, cols, D) at {PATCH_SIZE_M} m")
    print(f"dense aerial:     {tuple(dense.shape)} (B, rows, cols, 2D)")
    print(f"wrote {zarr_path}")
    print(f"wrote {png_path}")
    print(f"wall time:        {time.perf_counter() - started:.1f} s")
    return 0


def patch_embedding_dataarray(
    features: np.ndarray,
    image_transform: tuple[float, ...],
    crs: str,
    *,
    patch_size_m: float,
    model_id: str,
) -> xr.DataArray:
    """Wrap ``(rows, cols, D)`` patch embeddings of a north-up tile as a georeferenced DataArray.

    Args:
        features: patch embeddings, channels last, row 0 at the top (north) of the tile.
        image_transform: affine ``(a, b, c, d, e, f)`` of the input image the patches cover;
            its origin ``(c, f)`` is the top-left corner of patch (0, 0).
        crs: CRS of the tile, e.g. ``"EPSG:25832"``.
        patch_size_m: ground size of one patch side.
        model_id: recorded in the attributes.

    Returns:
        DataArray ``embedding`` with dims ``(y, x, embedding)``, patch-centre coordinates
        (x increasing, y decreasing), CRS and transform written with rioxarray.

    Raises:
        DimensionError: if ``features`` is not 3-D.
        AnySatInputError: if the image is not north-up (rotated, or rows running south-up).

    Example:
        >>> grid = patch_embedding_dataarray(
        ...     np.zeros((6, 6, 8), np.float32), (0.2, 0, 500.0, 0, -0.2, 900.0), "EPSG:25832",
        ...     patch_size_m=10, model_id="test")
        >>> grid.x.values[:2].tolist(), grid.y.values[:2].tolist()
        ([505.0, 515.0], [895.0, 885.0])
    """
    if features.ndim != 3:
        raise DimensionError(
            f"patch features have shape {features.shape}; expected (rows, cols, D)."
        )
    a, b, left, d, e, top = image_transform[:6]
    if not (b == 0 and d == 0 and a > 0 and e < 0):
        raise AnySatInputError(
            f"image transform {tuple(image_transform[:6])} is not north-up; expected "
            "(a > 0, 0, left, 0, e < 0, top). Reproject the image first."
        )
    n_rows, n_cols, _ = features.shape
    x = left + (np.arange(n_cols) + 0.5) * patch_size_m
    y = top - (np.arange(n_rows) + 0.5) * patch_size_m
    grid = xr.DataArray(
        features,
        dims=("y", "x", "embedding"),
        coords={"y": y, "x": x},
        name="embedding",
        attrs={"model_id": model_id, "patch_size_m": float(patch_size_m)},
    )
    grid = grid.rio.write_crs(crs)
    patch_transform = (patch_size_m, 0.0, left, 0.0, -patch_size_m, top)
    return grid.rio.write_transform(Affine(*patch_transform))


def embedding_figure(
    aerial: np.ndarray, dense_features: np.ndarray, patch_features: np.ndarray
) -> Image.Image:
    """Three captioned panels: aerial false colour, PCA of dense features, PCA of patches.

    Args:
        aerial: ``(C, H, W)`` aerial image (any scaling; each band is stretched 2-98 %).
        dense_features: ``(rows, cols, D)`` dense features.
        patch_features: ``(rows, cols, D)`` patch embeddings.

    Returns:
        RGB image ``3 * PANEL_PX + 2 * GAP_PX`` wide, ``PANEL_PX + CAPTION_PX`` high.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> figure = embedding_figure(
        ...     rng.normal(size=(4, 300, 300)), rng.normal(size=(30, 30, 16)),
        ...     rng.normal(size=(6, 6, 8)))
        >>> figure.size
        (920, 320)
    """
    false_colour = percentile_stretch(np.moveaxis(aerial[list(FALSE_COLOUR_BANDS)], 0, -1))
    panels = [false_colour, pca_rgb(dense_features), pca_rgb(patch_features)]

    width = 3 * PANEL_PX + 2 * GAP_PX
    figure = Image.new("RGB", (width, PANEL_PX + CAPTION_PX), "white")
    draw = ImageDraw.Draw(figure)
    for index, (panel, caption) in enumerate(zip(panels, PANEL_CAPTIONS)):
        left = index * (PANEL_PX + GAP_PX)
        image = Image.fromarray(panel).resize(
            (PANEL_PX, PANEL_PX), Image.Resampling.NEAREST
        )
        figure.paste(image, (left, 0))
        draw.text((left + 4, PANEL_PX + 4), caption, fill="black")
    return figure


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m xanysat.demo",
        description="Embed the shipped TreeSatAI tile with AnySat and save the results.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results/demo"),
        help="output folder (default: results/demo)",
    )
    parser.add_argument(
        "--model", default=None,
        help="model name for xanysat.load_model (default: the package's choice)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
