"""Readers for odc-stac and stackstac whose failures, once GDAL's retries are spent, are
``StacError`` naming the URL (and, with odc-stac, the item and asset) and the fix.

GDAL's timeouts and retries themselves come from ``xanysat.stac.network.gdal_http_options``;
these readers only turn the error raised while a cube is computed into one that says what
could not be read and what to do. With ``fail_on_error=False`` the loaders turn read errors
into NaN before these readers see them.
"""

from __future__ import annotations

from collections.abc import Mapping

from odc.loader import RioDriver
from rasterio.errors import RasterioError
from stackstac.rio_reader import AutoParallelRioReader

from xanysat.errors import StacError

FIX = ("Check that the host answers; if it is slow or overloaded, pass a larger timeout= or retries= to load "
       "(or fail_on_error=False to get NaN for what cannot be read).")


def read_error(url: str, error: BaseException, names: Mapping[str, tuple[str, str]] | None = None) -> StacError:
    """The ``StacError`` for a failed read of ``url`` (``names``: url -> ``(item id, asset key)``).

    Example:
        >>> error = read_error("https://host/B04.tif", OSError("timed out"), {"https://host/B04.tif": ("scene", "B04")})
        >>> print(error)  # doctest: +ELLIPSIS
        reading item 'scene' asset 'B04' (https://host/B04.tif) failed after GDAL's retries: OSError: timed out. Check ...
    """
    item_id, key = (names or {}).get(url, (None, None))
    where = f"item {item_id!r} asset {key!r} ({url})" if item_id is not None else url
    return StacError(f"reading {where} failed after GDAL's retries: {type(error).__name__}: {error}. {FIX}")


class NamedReader:
    """An odc-stac reader whose rasterio errors become ``read_error``."""

    def __init__(self, reader, url: str, names: Mapping[str, tuple[str, str]]) -> None:
        self._reader, self._url, self._names = reader, url, names

    def read(self, *args, **kwargs):
        try:
            return self._reader.read(*args, **kwargs)
        except RasterioError as error:
            raise read_error(self._url, error, self._names) from error


class NamedRioDriver(RioDriver):
    """odc-stac's rasterio driver, its readers wrapped in ``NamedReader``; pass it as
    ``odc.stac.load(..., driver=NamedRioDriver(names))``.

    Example:
        >>> driver = NamedRioDriver({"https://host/B04.tif": ("scene", "B04")})
        >>> driver.names["https://host/B04.tif"]
        ('scene', 'B04')
    """

    def __init__(self, names: Mapping[str, tuple[str, str]]) -> None:
        super().__init__()
        self.names = dict(names)

    def open(self, src, ctx) -> NamedReader:
        return NamedReader(super().open(src, ctx), src.uri, self.names)


class NamedStackstacReader(AutoParallelRioReader):
    """stackstac's reader, its errors (``RuntimeError`` naming the URL) raised as ``read_error``;
    pass it as ``stackstac.stack(..., reader=NamedStackstacReader)``."""

    def read(self, window, **kwargs):
        try:
            return super().read(window, **kwargs)
        except RuntimeError as error:
            raise read_error(self.url, error) from error
