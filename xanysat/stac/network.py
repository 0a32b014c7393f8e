"""Timeouts and bounded retries for every network call of ``xanysat.stac``.

Three kinds of calls go over the network, each bounded by ``timeout`` seconds per request and
``retries`` retries:

- STAC API requests (landing page, ``/collections``, ``/search`` pages) through pystac-client,
  with :func:`stac_api_io`: requests' connect and read timeouts, urllib3 retries on connection
  errors, timeouts and HTTP 429/500/502/503/504, ``retry_delay * 2**n`` seconds apart
  (no wait before the first retry);
- asset checks (``verify_assets``) and reads while a cube is computed, through GDAL, with
  :func:`gdal_http_options`: ``GDAL_HTTP_TIMEOUT`` (the whole transfer),
  ``GDAL_HTTP_CONNECTTIMEOUT``, ``GDAL_HTTP_MAX_RETRY`` and ``GDAL_HTTP_RETRY_DELAY`` (GDAL
  retries timeouts and the same HTTP codes, each wait about 2 to 2.5 times the previous one).
  They are passed through ``rasterio.Env`` (odc-stac captures it when the cube is built)
  and stackstac's ``gdal_env``; ``os.environ`` is never changed.

Retries of a remote asset are left to GDAL: GDAL remembers a failed URL for the rest of the
process, so opening it again would only replay the failure.
"""

from __future__ import annotations

import math
import numbers

from xanysat.errors import StacError

DEFAULT_TIMEOUT_S = 30.0
"""Seconds one request may take (STAC API: per connect and per read; GDAL: the whole transfer)."""
DEFAULT_RETRIES = 3
"""Retries after a failed request (so at most 4 tries)."""
DEFAULT_RETRY_DELAY_S = 0.5
"""Seconds before the first retry of an asset (STAC API: before the second retry); later waits grow."""
RETRY_STATUSES = (429, 500, 502, 503, 504)
"""HTTP status codes retried: too many requests and the server errors that usually pass."""
REQUESTS_PER_OPEN = 4
"""Requests GDAL makes at most to open a COG and read one pixel (HEAD, header, tile, spare)."""


def check_network_options(timeout: float, retries: int) -> tuple[float, int]:
    """Return ``(timeout, retries)`` checked: a positive finite number of seconds and a count >= 0.

    Args:
        timeout: seconds per request.
        retries: retries after a failed request.

    Returns:
        ``(float(timeout), int(retries))``.

    Raises:
        StacError: a timeout that is not a positive finite number, or retries that are not a
            non-negative integer.

    Example:
        >>> check_network_options(10, 0)
        (10.0, 0)
        >>> check_network_options(0, 3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.StacError: timeout must be a positive number of seconds (e.g. 30), got 0. ...
    """
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not math.isfinite(timeout) \
            or timeout <= 0:
        raise StacError(f"timeout must be a positive number of seconds (e.g. {DEFAULT_TIMEOUT_S:g}), got "
                        f"{timeout!r}. It bounds each request; a request that takes longer is retried.")
    if isinstance(retries, bool) or not isinstance(retries, numbers.Integral) or retries < 0:
        raise StacError(f"retries must be an integer >= 0 (e.g. {DEFAULT_RETRIES}), got {retries!r}.")
    return float(timeout), int(retries)


def stac_api_io(timeout: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES,
                retry_delay: float = DEFAULT_RETRY_DELAY_S):
    """A pystac-client ``StacApiIO`` whose requests time out after ``timeout`` seconds (connect,
    and each read) and are retried ``retries`` times on connection errors, timeouts and
    ``RETRY_STATUSES``; after the last try the last answer stands (pystac-client raises
    ``APIError``). A ``Retry-After`` header is not obeyed, so the total time stays bounded.

    Args:
        timeout: seconds per connect and per read.
        retries: retries of a failed request (any method: STAC searches by POST are safe to repeat).
        retry_delay: backoff factor: the n-th consecutive retry waits ``retry_delay * 2**(n-1)``
            seconds (none before the first).

    Returns:
        A ``pystac_client.stac_api_io.StacApiIO``; give ``Client.open`` the same ``timeout``
        (it resets the one of the ``stac_io`` it is given).

    Example:
        >>> io = stac_api_io(timeout=5, retries=2)
        >>> io.timeout, io.session.get_adapter("https://example.com").max_retries.total
        (5.0, 2)
    """
    from pystac_client.stac_api_io import StacApiIO
    from urllib3 import Retry

    timeout, retries = check_network_options(timeout, retries)
    retry = Retry(total=retries, connect=retries, read=retries, status=retries, other=retries,
                  backoff_factor=retry_delay, status_forcelist=RETRY_STATUSES, allowed_methods=None,
                  raise_on_status=False, respect_retry_after_header=False)
    return StacApiIO(timeout=timeout, max_retries=retry)


def gdal_http_options(timeout: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES,
                      retry_delay: float = DEFAULT_RETRY_DELAY_S) -> dict[str, str]:
    """GDAL configuration options that bound every HTTP request of a read.

    Besides the timeouts and retries, ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR`` keeps GDAL
    from listing the asset's directory and probing for sidecar files (requests that can
    fail or hang too), as odc-stac's and stackstac's cloud defaults do.

    Args:
        timeout: seconds one HTTP transfer may take, connection included.
        retries: retries of a request that timed out or answered 429/5xx.
        retry_delay: seconds before the first retry.

    Returns:
        Option -> value, for ``rasterio.Env(**options)`` or stackstac's ``gdal_env``.

    Example:
        >>> gdal_http_options(timeout=10, retries=2)  # doctest: +NORMALIZE_WHITESPACE
        {'GDAL_HTTP_TIMEOUT': '10', 'GDAL_HTTP_CONNECTTIMEOUT': '10', 'GDAL_HTTP_MAX_RETRY': '2',
         'GDAL_HTTP_RETRY_DELAY': '0.5', 'GDAL_DISABLE_READDIR_ON_OPEN': 'EMPTY_DIR'}
    """
    timeout, retries = check_network_options(timeout, retries)
    return {
        "GDAL_HTTP_TIMEOUT": f"{timeout:g}", "GDAL_HTTP_CONNECTTIMEOUT": f"{timeout:g}",
        "GDAL_HTTP_MAX_RETRY": str(retries), "GDAL_HTTP_RETRY_DELAY": f"{retry_delay:g}",
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    }


def is_remote(href: str) -> bool:
    """Whether GDAL reads ``href`` over the network (``http(s)://``, ``s3://``, ``/vsicurl/``...).

    Example:
        >>> is_remote("https://example.com/B04.tif"), is_remote("/vsis3/bucket/B04.tif")
        (True, True)
        >>> is_remote("file:///data/B04.tif"), is_remote("/data/B04.tif")
        (False, False)
    """
    return href.startswith("/vsi") or ("://" in href and not href.startswith("file://"))


def asset_deadline_s(timeout: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES,
                     retry_delay: float = DEFAULT_RETRY_DELAY_S) -> float:
    """Seconds after which an asset check that has not returned is given up: every request of
    an open (``REQUESTS_PER_OPEN``) timing out on every try, plus GDAL's growing waits, plus
    one second. Only something the timeouts cannot stop (a file that blocks on open, a hung
    network file system) gets there.

    Example:
        >>> asset_deadline_s(timeout=1, retries=1, retry_delay=0.5)
        11.0
    """
    waits = sum(retry_delay * 2.5**k for k in range(retries))
    return REQUESTS_PER_OPEN * ((retries + 1) * timeout + waits) + 1.0
