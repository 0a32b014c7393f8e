"""Misbehaving HTTP servers on 127.0.0.1 for fault tests: a STAC API and COG hosting that hang or fail.

:func:`loopback_server` runs ``http.server`` in a thread on ``127.0.0.1`` and a free port (port 0)
for the duration of a ``with`` block. It answers with :func:`stac_api_routes` (a minimal STAC
API: landing page, ``/conformance``, ``/collections``, ``/search`` by GET or POST) and
:func:`file_routes` (files with ``HEAD`` and ``Range`` support, as GDAL's ``/vsicurl/`` needs),
and misbehaves as its :class:`Faults` say:

- ``hang_s``: accept the connection and the request, then say nothing for that long (or
  until the server stops), as an API or a bucket that never answers;
- ``fail_first``: answer ``503 Service Unavailable`` to the first N requests of each path,
  as an overloaded API that recovers.

Every request is logged (``server.log``: ``(method, path, status)``); the server stops its
sleeping handlers and joins all its threads when the block ends.
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

Response = tuple[int, str, bytes]
Route = Callable[[str, str, bytes, dict, str], "Response | None"]


@dataclass
class Faults:
    """How the server misbehaves on the paths that start with ``prefix`` (all by default)."""

    hang_s: float = 0.0
    fail_first: int = 0
    prefix: str = "/"

    def applies(self, path: str) -> bool:
        return path.startswith(self.prefix)


@dataclass
class LoopbackServer:
    """A running server: its base URL, the request log, and the event that wakes hanging handlers
    (``log_file``: where a server in a child process logs, one JSON list per request)."""

    url: str
    log: list[tuple[str, str, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    log_file: Path | None = None

    def requests(self, path_prefix: str = "/") -> list[tuple[str, str, int]]:
        """``(method, path, status)`` of the requests so far to paths starting with ``path_prefix``
        (status 0: left unanswered)."""
        log = self.log
        if self.log_file is not None and self.log_file.exists():
            log = [tuple(json.loads(line)) for line in self.log_file.read_text().splitlines() if line]
        return [entry for entry in log if entry[1].startswith(path_prefix)]


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads
    block_on_close = True

    def handle_error(self, request, client_address):  # a client that timed out and left: expected
        pass


@contextlib.contextmanager
def loopback_server(routes: Sequence[Route], faults: Faults | None = None) -> Iterator[LoopbackServer]:
    """Serve ``routes`` on ``127.0.0.1`` (a free port), misbehaving as ``faults`` say.

    A route is ``route(method, path, body, query, base_url)`` returning
    ``(status, content_type, body)`` or ``None`` (not mine); the first answer wins, 404 if none.
    """
    faults = faults or Faults()
    seen: dict[str, int] = {}
    lock = threading.Lock()
    state: LoopbackServer | None = None

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

        def do_HEAD(self):
            self._answer(head=True)

        def do_GET(self):
            self._answer()

        def do_POST(self):
            self._answer()

        def _answer(self, head: bool = False):
            parsed = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = parsed.path
            if faults.applies(path):
                if faults.hang_s:
                    _record(state, self.command, path, 0)
                    state.stop.wait(faults.hang_s)
                    return  # the connection closes without an answer
                with lock:
                    seen[path] = seen.get(path, 0) + 1
                    failing = seen[path] <= faults.fail_first
                if failing:
                    self._send(503, "text/plain", b"overloaded, try again", head)
                    return
            query = urllib.parse.parse_qs(parsed.query)
            for route in routes:
                answer = route(self.command, path, body, query, state.url)
                if answer is not None:
                    status, content_type, content = answer
                    if status == 200 and content_type == "image/tiff":
                        status, content, extra = _ranged(content, self.headers.get("Range"))
                        self._send(status, content_type, content, head, extra)
                    else:
                        self._send(status, content_type, content, head)
                    return
            self._send(404, "text/plain", b"not found", head)

        def _send(self, status, content_type, content, head, extra=None):
            _record(state, self.command, urllib.parse.urlsplit(self.path).path, status)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(content)))
            self.send_header("Accept-Ranges", "bytes")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self.wfile.write(content)

    server = _Server(("127.0.0.1", 0), Handler)
    state = LoopbackServer(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def _record(state: LoopbackServer, method: str, path: str, status: int) -> None:
    state.log.append((method, path, status))
    if state.log_file is not None:
        with state.log_file.open("a") as f:
            f.write(json.dumps([method, path, status]) + "\n")


@contextlib.contextmanager
def file_server(directory: Path, faults: Faults | None = None, startup_s: float = 30.0) -> Iterator[LoopbackServer]:
    """``file_routes(directory)`` served from a child process on ``127.0.0.1``, misbehaving as
    ``faults`` say.

    A child process, not a thread: GDAL keeps the GIL through some of its HTTP reads (rasterio's
    ``read_transform`` fetching sidecar files, for one), so a server in a thread of the same
    process could not answer them and the test would deadlock rather than test the timeouts.
    """
    import subprocess
    import sys
    import tempfile

    faults = faults or Faults()
    with tempfile.TemporaryDirectory() as tmp:
        log_file = Path(tmp) / "requests.jsonl"
        command = [sys.executable, __file__, str(directory), str(log_file), str(faults.hang_s),
                   str(faults.fail_first), faults.prefix]
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            url = _first_line(child, startup_s)
            yield LoopbackServer(url, log_file=log_file)
        finally:
            child.stdin.close()  # the child stops when its stdin closes
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)
            child.stdout.close()


def _first_line(child, timeout_s: float) -> str:
    import selectors
    import time

    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(0.1):
                line = child.stdout.readline().strip()
                if line.startswith("http://"):
                    return line
                raise RuntimeError(f"the file server exited or said {line!r} instead of its URL")
    raise TimeoutError(f"the file server did not start within {timeout_s} s")


def _ranged(content: bytes, header: str | None) -> tuple[int, bytes, dict]:
    if not header or not header.startswith("bytes="):
        return 200, content, {}
    start, _, end = header.removeprefix("bytes=").split(",")[0].partition("-")
    first = int(start)
    last = min(int(end) if end else len(content) - 1, len(content) - 1)
    return 206, content[first:last + 1], {"Content-Range": f"bytes {first}-{last}/{len(content)}"}


def file_routes(directory: Path, prefix: str = "/files/") -> Route:
    """Files under ``directory`` at ``<base>/files/<relative path>``."""
    root = Path(directory).resolve()

    def route(method, path, body, query, base):
        if not path.startswith(prefix):
            return None
        target = (root / urllib.parse.unquote(path.removeprefix(prefix))).resolve()
        if root not in target.parents or not target.is_file():
            return 404, "text/plain", b"no such file"
        return 200, "image/tiff", target.read_bytes()

    return route


def stac_api_routes(collections: Sequence[dict], items: Callable[[str], Sequence[dict]]) -> Route:
    """A minimal STAC API over ``collections`` and ``items(base_url)``: no paging, search by
    collection ids only (other parameters are ignored)."""

    def landing(base):
        return {
            "type": "Catalog", "id": "faults", "description": "a misbehaving STAC API", "stac_version": "1.0.0",
            "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search",
                           "https://api.stacspec.org/v1.0.0/collections"],
            "links": [
                {"rel": "self", "href": f"{base}/", "type": "application/json"},
                {"rel": "root", "href": f"{base}/", "type": "application/json"},
                {"rel": "data", "href": f"{base}/collections", "type": "application/json"},
                {"rel": "search", "href": f"{base}/search", "type": "application/geo+json", "method": "GET"},
                {"rel": "search", "href": f"{base}/search", "type": "application/geo+json", "method": "POST"},
            ],
        }

    def route(method, path, body, query, base):
        if path in ("/", ""):
            return _json(landing(base))
        if path == "/conformance":
            return _json({"conformsTo": landing(base)["conformsTo"]})
        if path == "/collections":
            return _json({"collections": [dict(c, links=[]) for c in collections], "links": []})
        if path == "/search":
            wanted = json.loads(body).get("collections") if body else query.get("collections", [""])[0].split(",")
            found = [dict(it, links=[]) for it in items(base) if not wanted or it["collection"] in wanted]
            return _json({"type": "FeatureCollection", "features": found, "links": []})
        return None

    return route


def _json(value: dict) -> Response:
    return 200, "application/json", json.dumps(value).encode()


if __name__ == "__main__":  # the child process of ``file_server``
    import sys

    root, log, hang_s, fail_first, prefix = sys.argv[1:6]
    with loopback_server([file_routes(Path(root))], Faults(float(hang_s), int(fail_first), prefix)) as running:
        running.log_file = Path(log)
        print(running.url, flush=True)
        sys.stdin.read()  # until the parent closes our stdin
