"""GeoTIFF outputs every GIS tool opens: an embedding as a float Cloud-Optimized GeoTIFF (one
band per feature), and maps (``pca_rgb_map``, ``similarity``) as tiled COGs.

A COG is a tiled GeoTIFF with internal overviews, readable by GDAL, rasterio, QGIS and any
HTTP range reader. The DataArrays are written block by block through rioxarray
(``to_raster(driver="COG", tiled=True, lock=...)``), so a lazy embedding is computed one dask
chunk at a time.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import xarray as xr

from xanysat.cube.embed import EMBEDDING, FEATURE

RGB = "rgb"
BLOCK_SIZE = 256


def to_cog(emb, path, *, dtype: str = "float32", blocksize: int = BLOCK_SIZE, compress: str = "DEFLATE",
           overviews: str = "AUTO") -> Path:
    """Write an embedding as a tiled Cloud-Optimized GeoTIFF: one band per feature (described
    ``"feature 0"``, ``"feature 1"``...), nodata NaN (cells with no valid input), internal
    overviews, the embedding's CRS and transform.

    Args:
        emb: the embedding ``(feature, y, x)`` with a CRS (``xanysat.embed``, ``embed_to_zarr``,
            ``xr.open_zarr(store)["embedding"]``), or a Dataset holding ``embedding``.
        path: the ``.tif`` to write (its folder is created).
        dtype: ``"float32"`` (default, exact) or ``"float64"`` (GDAL 3.10 has no float16).
        blocksize: tile side in pixels (a multiple of 16, at least 128: GDAL's COG driver).
        compress: GDAL COG compression (``"DEFLATE"``, ``"ZSTD"``, ``"LZW"``, ``"NONE"``).
        overviews: GDAL COG ``OVERVIEWS`` option (``"AUTO"``: halvings down to one tile;
            ``"NONE"``: none).

    Returns:
        The path written.

    Raises:
        ValueError: ``emb`` is not ``(feature, y, x)``, has no CRS, or a bad ``dtype`` or ``blocksize``.

    Example:
        >>> import tempfile, numpy as np, rasterio, xanysat
        >>> from xanysat.testing import synthetic_cube
        >>> emb = xanysat.embed(synthetic_cube(("s2",), extent_m=(160, 320), n_dates=2), 40, model="untrained-tiny")
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     path = to_cog(emb, f"{directory}/embedding.tif")
        ...     with rasterio.open(path) as tif:
        ...         tif.count, tif.crs.to_epsg(), tif.transform.c, tif.descriptions[:2], bool(np.isnan(tif.nodata))
        (256, 32631, 600000.0, ('feature 0', 'feature 1'), True)
    """
    emb = embedding_of(emb)
    _check_blocksize(blocksize)
    if str(np.dtype(dtype)) not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64 (NaN marks cells with no valid input; GeoTIFF in GDAL "
                         f"3.10 has no float16), got {dtype!r}.")
    raster = emb.transpose(FEATURE, "y", "x").astype(dtype)
    raster = raster.assign_attrs(long_name=tuple(f"feature {int(f)}" for f in emb[FEATURE].values))
    raster = raster.rio.write_nodata(np.nan, encoded=False)
    return _write(raster, path, blocksize=blocksize, compress=compress, overviews=overviews, resampling="AVERAGE")


def map_to_cog(picture: xr.DataArray, path, *, blocksize: int = BLOCK_SIZE, compress: str = "DEFLATE") -> Path:
    """Write a map as a tiled COG: an RGBA ``pca_rgb_map(..., alpha=True)`` as 4 uint8 bands
    (red, green, blue, alpha: 0 where the embedding is NaN), or a float map (``similarity``) as
    one band with nodata NaN.

    Args:
        picture: a ``(y, x, rgb)`` uint8 map, or a ``(y, x)`` float map, with a CRS.
        path: the ``.tif`` to write.
        blocksize: tile side in pixels.
        compress: GDAL COG compression.

    Returns:
        The path written.

    Example:
        >>> import tempfile, rasterio, xanysat
        >>> from xanysat.cube.maps import pca_rgb_map
        >>> from xanysat.testing import synthetic_cube
        >>> emb = xanysat.embed(synthetic_cube(("s2",), extent_m=(160, 320), n_dates=2), 40, model="untrained-tiny")
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     path = map_to_cog(pca_rgb_map(emb, alpha=True), f"{directory}/map.tif")
        ...     with rasterio.open(path) as tif:
        ...         tif.count, tif.dtypes[0], [c.name for c in tif.colorinterp], tif.crs.to_epsg()
        (4, 'uint8', ['red', 'green', 'blue', 'alpha'], 32631)
    """
    _check_blocksize(blocksize)
    if RGB in picture.dims:
        raster = picture.transpose(RGB, "y", "x")
        bands = [str(c) for c in raster[RGB].values]
        names = {"r": "red", "g": "green", "b": "blue", "a": "alpha"}
        raster = raster.assign_attrs(long_name=tuple(names.get(b, b) for b in bands))
        return _write(raster, path, blocksize=blocksize, compress=compress, overviews="AUTO", resampling="NEAREST",
                      photometric="RGB" if len(bands) in (3, 4) else None, alpha=bands[-1] == "a")
    raster = picture.astype("float32").rio.write_nodata(np.nan, encoded=False)
    raster = raster.assign_attrs(long_name=str(picture.name or "value"))
    return _write(raster, path, blocksize=blocksize, compress=compress, overviews="AUTO", resampling="AVERAGE")


def embedding_of(obj) -> xr.DataArray:
    """The ``(feature, y, x)`` embedding of a DataArray or of a Dataset holding ``embedding``,
    checked to have a CRS.

    Raises:
        ValueError: no ``embedding``, other dims, or no CRS (the message names the fix).

    Example:
        >>> embedding_of(xr.DataArray(np.zeros((2, 1, 1)), dims=("feature", "y", "x")))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: the embedding has no CRS: ...
    """
    import rioxarray  # noqa: F401  (registers .rio)

    if isinstance(obj, xr.Dataset):
        if EMBEDDING not in obj:
            raise ValueError(f"the Dataset holds no {EMBEDDING!r} variable; open an embedding store with "
                             "xr.open_zarr(store, decode_coords='all').")
        obj = obj[EMBEDDING]
    if set(obj.dims) != {FEATURE, "y", "x"}:
        raise ValueError(f"expected an embedding with dims (feature, y, x), got {obj.dims}; a point embedding "
                         "(sample, feature) has no grid to write as a GeoTIFF.")
    if obj.rio.crs is None:
        raise ValueError("the embedding has no CRS: open its store with xr.open_zarr(store, decode_coords='all'), "
                         "or set one with emb.rio.write_crs('EPSG:...').")
    return obj


def _check_blocksize(blocksize: int) -> None:
    if not isinstance(blocksize, (int, np.integer)) or blocksize < 128 or blocksize % 16:
        raise ValueError(f"blocksize must be a multiple of 16 of at least 128 (GDAL's COG driver), got {blocksize!r}; "
                         f"e.g. {BLOCK_SIZE}.")


def _write(raster: xr.DataArray, path, *, blocksize: int, compress: str, overviews: str, resampling: str,
           photometric: str | None = None, alpha: bool = False) -> Path:
    """Write a tiled GeoTIFF block by block (rioxarray, a lock when dask-backed) beside ``path``,
    describe its bands from ``long_name`` (one per band), then copy it into the COG ``path``
    (GDAL's COG driver builds the overviews) and delete it."""
    import rasterio
    import rasterio.shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.partial.tif")
    options = {"driver": "GTiff", "tiled": True, "blockxsize": blocksize, "blockysize": blocksize,
               "compress": "NONE", "BIGTIFF": "IF_SAFER"}
    if photometric is not None:
        options["photometric"] = photometric
    if alpha:
        options["alpha"] = "YES"  # the last band is GDAL's alpha band (0: transparent)
    if raster.chunks is not None:
        options["lock"] = threading.Lock()
    names = raster.attrs.get("long_name")
    raster = raster.drop_vars([c for c in raster.coords if c not in raster.dims and c != "spatial_ref"])
    if raster.ndim == 3:
        raster = raster.rename({raster.dims[0]: "band"}).assign_coords(band=np.arange(1, raster.shape[0] + 1))
    try:
        raster.rio.to_raster(staging, **options)
        with rasterio.open(staging, "r+") as tif:
            for band, name in enumerate([names] if isinstance(names, str) else names or (), start=1):
                tif.set_band_description(band, name)
        rasterio.shutil.copy(staging, path, driver="COG", blocksize=blocksize, compress=compress,
                             overviews=overviews, resampling=resampling, BIGTIFF="IF_SAFER")
    finally:
        staging.unlink(missing_ok=True)
    return path
