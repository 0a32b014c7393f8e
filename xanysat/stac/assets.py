"""Asset checks before a cube is built: which items lack which assets, and can every asset be read."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from xanysat.errors import StacError
from xanysat.stac.network import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_DELAY_S,
    DEFAULT_TIMEOUT_S,
    asset_deadline_s,
    check_network_options,
    gdal_http_options,
    is_remote,
)

MAX_LISTED = 20
"""Failures (or items lacking assets) listed in one message; the rest are counted."""
WORKERS = 8
"""Assets checked at once."""


def missing_assets(mapped) -> dict[str, dict[str, list[str]]]:
    """Sensor -> item id -> the asset keys the sensor reads that the item lacks (others carry them).

    ``sensor_sources`` keeps every asset that some item of the collection carries; the items
    without one get NaN for its band (``load`` warns with this listing).

    Args:
        mapped: sensor -> ``(SensorSource, items)``, as ``sensor_sources`` gives.

    Returns:
        Only the sensors and items that lack something.

    Example:
        >>> import datetime, pystac
        >>> from xanysat.sensors.table import MODALITIES
        >>> from xanysat.stac.sources import SensorSource
        >>> items = [pystac.Item(f"scene-{i}", None, None, datetime.datetime(2021, 5, i + 1), {}) for i in range(2)]
        >>> for item, keys in zip(items, (["vv", "vh"], ["vv"])):
        ...     for key in keys:
        ...         item.add_asset(key, pystac.Asset(f"{item.id}-{key}.tif"))
        >>> missing_assets({"s1-asc": (SensorSource("s1-asc", MODALITIES["s1-asc"].stac[0]), items)})
        {'s1-asc': {'scene-1': ['vh']}}
    """
    found = {}
    for sensor, (source, group) in mapped.items():
        lacking = {item.id: [k for k in source.assets if k not in item.assets] for item in group}
        lacking = {item_id: keys for item_id, keys in lacking.items() if keys}
        if lacking:
            found[sensor] = lacking
    return found


def describe_missing(sensor: str, collection: str, lacking: dict[str, list[str]], n_items: int) -> str:
    """One line per item (at most ``MAX_LISTED``) saying which assets it lacks.

    Example:
        >>> print(describe_missing("s2", "sentinel-2-l2a", {"a": ["B02"], "b": ["B02", "B03"]}, 5))
        s2: 2 of 5 item(s) of 'sentinel-2-l2a' lack assets the others carry:
          item 'a' lacks B02
          item 'b' lacks B02, B03
    """
    lines = [f"  item {item_id!r} lacks {', '.join(keys)}" for item_id, keys in list(lacking.items())[:MAX_LISTED]]
    more = [f"  ... and {len(lacking) - MAX_LISTED} more"] if len(lacking) > MAX_LISTED else []
    return "\n".join([f"{sensor}: {len(lacking)} of {n_items} item(s) of {collection!r} lack assets the others "
                      "carry:", *lines, *more])


def verify_assets(mapped, *, patch_url: Callable[[str], str] | None = None, retries: int = DEFAULT_RETRIES,
                  qa_assets=None, delay: float = DEFAULT_RETRY_DELAY_S, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Open every asset the cube needs; raise one ``StacError`` listing each failure by item and asset.

    Remote assets are opened with ``gdal_http_options(timeout, retries, delay)``: each HTTP
    request gives up after ``timeout`` seconds and GDAL retries timeouts and HTTP 429/5xx
    ``retries`` times (a second open would only replay GDAL's memory of the failure); local
    files are retried ``retries`` times, ``delay * 2**attempt`` seconds apart. A check that
    has not returned after ``asset_deadline_s(timeout, retries, delay)`` seconds (something
    no timeout reaches, e.g. a file that blocks on open) is reported as not answering; its
    thread is a daemon and does not keep the interpreter alive. Assets an item lacks are not
    checked (``missing_assets`` lists them).

    Args:
        mapped: sensor -> ``(SensorSource, items)``, as ``sensor_sources`` gives.
        patch_url: rewrites or signs each href before opening it.
        retries: retries per asset (default 3).
        qa_assets: sensor -> QA asset key to check too.
        delay: seconds before the first retry (default 0.5).
        timeout: seconds per HTTP request (default 30).

    Raises:
        StacError: some assets cannot be read or did not answer (at most 20 listed), naming
            item, asset and URL.

    Example:
        >>> import datetime, tempfile, numpy as np, pystac, rasterio
        >>> from pathlib import Path
        >>> from rasterio.transform import from_origin
        >>> from xanysat.sensors.table import MODALITIES
        >>> from xanysat.stac.sources import SensorSource
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     vv = Path(tmp) / "vv.tif"
        ...     with rasterio.open(vv, "w", driver="GTiff", width=2, height=2, count=1, dtype="float32",
        ...                        crs="EPSG:32631", transform=from_origin(664000, 5612120, 10, 10)) as f:
        ...         f.write(np.ones((1, 2, 2), "float32"))
        ...     item = pystac.Item("scene", None, None, datetime.datetime(2021, 5, 1), {})
        ...     item.add_asset("vv", pystac.Asset(str(vv)))
        ...     item.add_asset("vh", pystac.Asset(str(Path(tmp) / "vh.tif")))  # not written
        ...     mapped = {"s1-asc": (SensorSource("s1-asc", MODALITIES["s1-asc"].stac[0]), [item])}
        ...     verify_assets(mapped, retries=0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.StacError: 1 asset(s) cannot be read (after 0 retries):
          item 'scene' asset 'vh' (.../vh.tif): RasterioIOError: ...
        ...
    """
    timeout, retries = check_network_options(timeout, retries)
    options = gdal_http_options(timeout, retries, delay)
    jobs = _jobs(mapped, qa_assets or {})

    def check(job):
        item_id, key, href = job
        url = patch_url(href) if patch_url else href
        attempts = 1 if is_remote(url) else retries + 1
        problem = _open_once(url, options, attempts, delay)
        return None if problem is None else (item_id, key, href, problem)

    deadline = asset_deadline_s(timeout, retries, delay)
    results, stuck = run_bounded(check, jobs, per_job_s=deadline)
    failures = [r for r in results if r] + [
        (item_id, key, href, f"no answer within {deadline:g} s (the check was abandoned)")
        for item_id, key, href in stuck
    ]
    if failures:
        lines = "\n".join(f"  item {i!r} asset {k!r} ({h}): {p}" for i, k, h, p in failures[:MAX_LISTED])
        more = f"\n  ... and {len(failures) - MAX_LISTED} more" if len(failures) > MAX_LISTED else ""
        raise StacError(
            f"{len(failures)} asset(s) cannot be read (after {retries} retries):\n{lines}{more}\nFix or drop those "
            f"items; if the host is slow or overloaded, pass a larger timeout= (now {timeout:g} s per request) or "
            "retries= (or pass check_assets=False and fail_on_error=False to load the rest)."
        )


def _jobs(mapped, qa_assets) -> list[tuple[str, str, str]]:
    jobs = []
    for sensor, (source, group) in mapped.items():
        qa = qa_assets.get(sensor)
        keys = list(source.assets) + ([qa] if qa else [])
        jobs += [(item.id, key, item.assets[key].href) for item in group for key in keys if key in item.assets]
    return jobs


def gdal_path(href: str) -> str:
    """The path GDAL opens for an asset href (``file://`` URLs as plain paths).

    Example:
        >>> gdal_path("file:///data/B04.tif"), gdal_path("https://example.com/B04.tif")
        ('/data/B04.tif', 'https://example.com/B04.tif')
    """
    return href.removeprefix("file://")


def _open_once(url: str, options: dict[str, str], attempts: int, delay: float) -> str | None:
    """``None`` if ``url`` opens and its first pixel reads, else the last error as text."""
    import rasterio
    from rasterio.errors import RasterioError

    for attempt in range(attempts):
        try:
            with rasterio.Env(**options), rasterio.open(gdal_path(url)) as src:
                src.read(1, window=((0, 1), (0, 1)))
            return None
        except (RasterioError, OSError) as error:
            if attempt == attempts - 1:
                return f"{type(error).__name__}: {error}"
            time.sleep(delay * 2**attempt)


def run_bounded(fn: Callable, jobs: list, *, per_job_s: float, workers: int = WORKERS) -> tuple[list, list]:
    """Run ``fn`` on each job in at most ``workers`` daemon threads; give up on a job still running
    ``per_job_s`` seconds after it started (a fresh thread takes over the jobs still queued).

    Args:
        fn: called with one job; the first exception it raises is raised here once every job
            finished or was given up on.
        jobs: the jobs.
        per_job_s: seconds a job may run.
        workers: threads at once, not counting those left to stuck jobs.

    Returns:
        ``(results, stuck)``: the results of the jobs that finished, in job order, and the
        jobs given up on (their threads finish on their own; as daemons they do not keep the
        interpreter alive).

    Example:
        >>> import threading
        >>> never = threading.Event()
        >>> run_bounded(lambda j: never.wait() if j == "stuck" else j * 2, [1, "stuck", 3], per_job_s=0.2)
        ([2, 6], ['stuck'])
        >>> never.set()
    """
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for index, job in enumerate(jobs):
        todo.put((index, job))
    results: dict[int, object] = {}
    errors: list[BaseException] = []
    started: dict[int, float] = {}
    lock = threading.Lock()

    def worker():
        while True:
            try:
                index, job = todo.get_nowait()
            except queue.Empty:
                return
            with lock:
                started[index] = time.monotonic()
            try:
                value = fn(job)
            except Exception as error:  # not hidden: raised again in the caller's thread below
                value = None
                errors.append(error)
            with lock:
                results[index] = value

    def spawn(n: int) -> None:
        for _ in range(n):
            threading.Thread(target=worker, daemon=True, name="xanysat-asset-check").start()

    spawn(min(workers, len(jobs)))
    stuck: set[int] = set()
    while True:
        with lock:
            now = time.monotonic()
            late = {i for i, t in started.items() if i not in results and i not in stuck and now - t > per_job_s}
            stuck |= late
            if all(i in results or i in stuck for i in range(len(jobs))):
                finished = [results[i] for i in range(len(jobs)) if i in results and i not in stuck]
                break
        spawn(len(late))
        time.sleep(0.02)
    if errors:
        raise errors[0]
    return finished, [jobs[i] for i in sorted(stuck)]
