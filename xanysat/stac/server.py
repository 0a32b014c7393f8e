"""A live local STAC API over a local catalogue, with ``rustac serve``.

:func:`serve` starts ``rustac serve`` (the command-line interface of the PyPI package
``rustac``) on ``127.0.0.1`` and a free port, waits until the API answers, yields its URL and
stops the server afterwards. It serves what :func:`xanysat.stac.sample_catalog.write_sample_catalog`
writes, or any collections / items / item collections (JSON or ndjson) given as hrefs, to
``pystac_client``, odc-stac, stackstac and xanysat exactly as a public catalogue would be.

Backends:

``"memory"`` (default)
    rustac's in-process store. Supports ``collections``, ``ids``, ``bbox``, ``intersects``,
    ``datetime``, ``limit`` and paging, but cannot evaluate ``query`` or CQL2 ``filter``:
    a search with either (even an empty ``query``) answers with **no items** and no error
    (rustac 0.9.18), so a client must leave them out and filter on its side.
``"pgstac"``
    A throw-away PostgreSQL cluster (``initdb`` in a temporary directory, its own free port,
    trust authentication on 127.0.0.1 only, fsync off), the pgstac schema from the
    ``pypgstac`` package's migration SQL, and ``rustac serve --pgstac``: ``query`` and CQL2
    filters (JSON and text) work. Needs the PostgreSQL server binaries, PostGIS and the
    ``pypgstac`` package (its SQL only; ``pip install --no-deps pypgstac`` is enough):
    :func:`pgstac_unavailable` says what is missing. Run as root, PostgreSQL runs as the
    ``postgres`` system user. Items come back in descending datetime order.

How rustac is run: ``rustac.main()`` parses the process's own command line minus its first
word, so ``python -c`` cannot drive it and there is no ``python -m rustac``; the console
script works, and so does any script file that calls ``rustac.main()``. :func:`serve`
writes such a file into its temporary directory and runs it with ``sys.executable``, so the
server is always the ``rustac`` importable by this interpreter.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["free_port", "pgstac_unavailable", "serve"]

_RUNNER = "import sys\nimport rustac\n\nsys.exit(rustac.main())\n"
_LINK_RELS_DROPPED = {"item", "child", "root", "parent", "self", "collection"}


@contextlib.contextmanager
def serve(directory_or_hrefs: str | Path | Sequence[str | Path], *, port: int | None = None,
          backend: str = "memory", timeout: float = 60.0) -> Iterator[str]:
    """Run a STAC API on ``127.0.0.1`` for the duration of a ``with`` block.

    Args:
        directory_or_hrefs: a directory written by
            :func:`~xanysat.stac.sample_catalog.write_sample_catalog` (its collections, without
            their static links, plus ``items.ndjson``), or hrefs of STAC collections, items
            and item collections that ``rustac serve`` loads as they are (rustac follows a
            collection's ``item`` links, resolving relative ones against the current
            directory).
        port: TCP port of the API; a free one by default.
        backend: ``"memory"`` or ``"pgstac"`` (see the module docstring).
        timeout: seconds to wait for the database and the API to come up.

    Yields:
        The API's URL, ``http://127.0.0.1:<port>``.

    Raises:
        RuntimeError: the server (or database) failed or exited; the message names the
            command and holds its output.
        TimeoutError: the API did not answer within ``timeout`` seconds.

    Example:
        >>> import tempfile, pystac_client
        >>> from xanysat.stac.sample_catalog import write_sample_catalog
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with serve(write_sample_catalog(tmp)) as url:
        ...         client = pystac_client.Client.open(url)
        ...         print(sorted(c.id for c in client.get_collections()))
        ['sentinel-1-rtc', 'sentinel-2-l2a']
    """
    if backend not in ("memory", "pgstac"):
        raise ValueError(f"backend must be 'memory' or 'pgstac', not {backend!r}")
    if importlib.util.find_spec("rustac") is None:
        raise RuntimeError("the 'rustac' package is not installed for "
                           f"{sys.executable} (pip install 'rustac>=0.9.18')")
    with tempfile.TemporaryDirectory(prefix="xanysat-stac-") as tmp:
        work = Path(tmp)
        hrefs = _hrefs(directory_or_hrefs, work)
        runner = work / "rustac_cli.py"
        runner.write_text(_RUNNER)
        with contextlib.ExitStack() as stack:
            options = []
            if backend == "pgstac":
                options = ["--pgstac", stack.enter_context(_pgstac_database(work, timeout))]
            for attempt in range(3):
                chosen = port or free_port()
                command = [sys.executable, str(runner), "serve", "--addr", f"127.0.0.1:{chosen}",
                           *options, *hrefs]
                log = work / f"rustac-{attempt}.log"
                with open(log, "wb") as out:
                    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL)
                url = f"http://127.0.0.1:{chosen}"
                try:
                    _wait_for_api(url, process, command, log, timeout)
                    break
                except BaseException:
                    _stop(process)
                    # A free port can be taken between free_port() and rustac's bind: retry.
                    if port is not None or attempt == 2 or "Address already in use" not in _tail(log):
                        raise
            stack.callback(_stop, process)
            yield url


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (free when asked).

    Another process may take it before the caller binds it: :func:`serve` retries.

    Returns:
        The port number.

    Example:
        >>> import socket
        >>> port = free_port()
        >>> with socket.socket() as sock:
        ...     sock.bind(("127.0.0.1", port))  # free: binding works
        ...     sock.getsockname()[1] == port
        True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pgstac_unavailable() -> str | None:
    """Why ``backend="pgstac"`` cannot run here, or ``None`` when it can.

    Checks, in order: the ``rustac`` package, the PostgreSQL server binaries, PostGIS, the
    ``pypgstac`` package's SQL, and (as root) a ``postgres`` system user.

    Returns:
        A sentence saying what is missing, or ``None``.

    Example:
        >>> reason = pgstac_unavailable()
        >>> reason is None or reason.startswith(("the", "PostgreSQL", "PostGIS", "running as root"))
        True
        >>> from unittest import mock
        >>> with mock.patch("importlib.util.find_spec", return_value=None):  # as if not installed
        ...     pgstac_unavailable()
        "the 'rustac' package is not installed"
    """
    if importlib.util.find_spec("rustac") is None:
        return "the 'rustac' package is not installed"
    try:
        bindir = _postgres_bindir()
    except RuntimeError as err:
        return str(err)
    sharedir = Path(_run([str(bindir / "pg_config"), "--sharedir"]).strip()) if (bindir / "pg_config").exists() else None
    if sharedir is None or not (sharedir / "extension" / "postgis.control").is_file():
        return (f"PostGIS is not installed for the PostgreSQL in {bindir} "
                "(Debian: apt-get install postgresql-<version>-postgis-3)")
    try:
        _pgstac_sql()
    except RuntimeError as err:
        return str(err)
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' system user to run PostgreSQL"
    return None


# -- helpers --------------------------------------------------------------------------------


def _hrefs(source, work: Path) -> list[str]:
    """The hrefs to give ``rustac serve``."""
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        root = Path(source)
        items = root / "items.ndjson"
        collections = sorted(root.glob("*/collection.json"))
        if not collections or not items.is_file():
            raise FileNotFoundError(f"{root} holds no */collection.json and items.ndjson "
                                    "(write it with xanysat.stac.sample_catalog.write_sample_catalog)")
        # rustac follows a collection's item links (relative ones from the current directory)
        # and keeps the static links in what it serves: hand it link-free copies instead.
        hrefs = []
        for path in collections:
            collection = json.loads(path.read_text())
            collection["links"] = [link for link in collection.get("links", [])
                                   if link.get("rel") not in _LINK_RELS_DROPPED]
            copy = work / "collections" / f"{collection['id']}.json"
            copy.parent.mkdir(exist_ok=True)
            copy.write_text(json.dumps(collection))
            hrefs.append(str(copy))
        return hrefs + [str(items.resolve())]
    if isinstance(source, (str, Path)):
        return [str(source)]
    hrefs = [str(h) for h in source]
    if not hrefs:
        raise ValueError("no hrefs to serve")
    return hrefs


def _wait_for_api(url: str, process: subprocess.Popen, command: list[str], log: Path,
                  timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"`{' '.join(command)}` exited with code {process.returncode}:\n"
                               f"{_tail(log)}")
        try:
            with urllib.request.urlopen(url + "/", timeout=2) as response:
                if response.status == 200 and json.loads(response.read()).get("type") == "Catalog":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no STAC API at {url} after {timeout:g} s from "
                               f"`{' '.join(command)}`; its output:\n{_tail(log)}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a child: ``sig``, then SIGKILL after 10 s."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output)"
    return text[-limit:] or "(no output)"


def _run(command: list[str], **kwargs) -> str:
    done = subprocess.run(command, check=False, capture_output=True, text=True, **kwargs)
    if done.returncode:
        raise RuntimeError(f"`{' '.join(command)}` failed with code {done.returncode}:\n"
                           f"{(done.stdout + done.stderr)[-4000:]}")
    return done.stdout


# -- pgstac ---------------------------------------------------------------------------------


def _postgres_bindir() -> Path:
    """Directory of ``initdb``/``postgres``: on PATH, else Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    raise RuntimeError("PostgreSQL server binaries (initdb, postgres) not found on PATH nor in "
                       "/usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)")


def _pgstac_sql() -> Path:
    """The full-install migration SQL of the installed ``pypgstac``."""
    spec = importlib.util.find_spec("pypgstac")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the 'pypgstac' package (which ships the pgstac schema SQL) is not "
                           "installed: pip install --no-deps 'pypgstac>=0.9,<0.10'")
    migrations = Path(next(iter(spec.submodule_search_locations))) / "migrations"
    from pypgstac.version import __version__ as version

    sql = migrations / f"pgstac.{version}.sql"
    if not sql.is_file():
        raise RuntimeError(f"pgstac migration {sql} not found in the pypgstac package")
    return sql


@contextlib.contextmanager
def _pgstac_database(work: Path, timeout: float) -> Iterator[str]:
    """A throw-away PostgreSQL cluster with pgstac; yields its DSN."""
    reason = pgstac_unavailable()
    if reason:
        raise RuntimeError(f"backend='pgstac' unavailable: {reason}")
    bindir = _postgres_bindir()
    sql = _pgstac_sql()
    as_user: dict = {}
    db = work / "pg"
    db.mkdir()
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        import pwd

        entry = pwd.getpwnam("postgres")
        os.chown(work, entry.pw_uid, entry.pw_gid)
        os.chown(db, entry.pw_uid, entry.pw_gid)
        as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    data = db / "data"
    _run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
          "-E", "UTF8", "--no-locale", "--no-sync"], **as_user)
    port = free_port()
    command = [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(db),
               "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
               "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    log = db / "postgres.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, **as_user)
    try:
        psql = [str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                "-d", "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        deadline = time.monotonic() + timeout
        while subprocess.run(psql + ["-c", "SELECT 1"], check=False, capture_output=True).returncode:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: `{' '.join(command)}`:\n{_tail(log)}")
            time.sleep(0.1)
        _run(psql + ["-1", "-f", str(sql)])  # one transaction, as `pypgstac migrate` does
        # pgstac's functions resolve their tables through the search path.
        _run(psql + ["-c", "ALTER DATABASE postgres SET search_path TO pgstac, public"])
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        _stop(process, signal.SIGINT)  # fast shutdown
