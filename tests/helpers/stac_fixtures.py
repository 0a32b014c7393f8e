"""Session fixtures: a local STAC catalogue of real imagery and live STAC APIs over it.

Import them into ``tests/conftest.py``::

    from helpers.stac_fixtures import sample_catalog, stac_api, stac_api_pgstac, t29unu_catalog  # noqa: F401

- ``sample_catalog``: :class:`~pathlib.Path` of a catalogue written once per session by
  ``xanysat.stac.sample_catalog.write_sample_catalog`` from the shipped WorldCereal cube
  (Planetary Computer layout: ``sentinel-2-l2a`` and ``sentinel-1-rtc``, 12 items each).
- ``stac_api``: URL of a live ``rustac serve`` (memory backend) over ``sample_catalog``.
  The memory backend returns **no items** for any ``query`` or ``filter``.
- ``stac_api_pgstac``: URL of ``rustac serve --pgstac`` on a throw-away PostgreSQL with
  pgstac, where ``query`` and CQL2 filters work; skipped when PostgreSQL, PostGIS or
  ``pypgstac`` is missing (``xanysat.stac.server.pgstac_unavailable()`` says which).
- ``t29unu_catalog``: a catalogue of a real Sentinel-2 L2A crop in Earth Search layout;
  skipped without the shared fixtures.

Every server is checked to have released its port when the session ends.
"""

from __future__ import annotations

import socket

import pytest

from xanysat.stac.sample_catalog import T29UNU_SAFE, write_sample_catalog
from xanysat.stac.server import pgstac_unavailable, serve


def port_is_open(url: str) -> bool:
    """Whether something accepts TCP connections at ``http://host:port`` ``url``."""
    host, port = url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def _served(directory, **kwargs):
    with serve(directory, **kwargs) as url:
        yield url
    if port_is_open(url):
        raise AssertionError(f"the STAC API at {url} still accepts connections after the fixture")


@pytest.fixture(scope="session")
def sample_catalog(tmp_path_factory):
    return write_sample_catalog(tmp_path_factory.mktemp("stac-worldcereal"))


@pytest.fixture(scope="session")
def stac_api(sample_catalog):
    yield from _served(sample_catalog)


@pytest.fixture(scope="session")
def stac_api_pgstac(sample_catalog):
    reason = pgstac_unavailable()
    if reason:
        pytest.skip(f"pgstac backend unavailable: {reason}")
    yield from _served(sample_catalog, backend="pgstac")


@pytest.fixture(scope="session")
def t29unu_catalog(tmp_path_factory):
    if not (T29UNU_SAFE / "MTD_MSIL2A.xml").is_file():
        pytest.skip(f"Sentinel-2 fixture {T29UNU_SAFE} not present (expected ../shared/fixtures)")
    return write_sample_catalog(tmp_path_factory.mktemp("stac-t29unu"), sources=("t29unu",))
