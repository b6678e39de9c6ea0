"""Real local peers for the built-in collectors: an HTTP(S) site and a small Docker engine.

Both are ``http.server`` servers on 127.0.0.1 in a background thread, so the plugins talk to
them over real sockets with their real client libraries (httpx, the docker SDK).
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import structlog
import trustme

from tests.http_handlers import JsonHandler
from unity.core.clock import SystemClock
from unity.plugins.sdk import Collected, Collector, Context, PluginConfig


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    # The TLS handshake happens on accept; a client that rejects the certificate is a case
    # under test, not an error to print.
    ssl_context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.ssl_context is not None:
            try:
                sock = self.ssl_context.wrap_socket(sock, server_side=True)
            except OSError:
                sock.close()
                raise
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up or refuse our certificate are expected here."""


@dataclass
class LocalServer:
    """A running server: its base URL and port."""

    server: _QuietServer
    scheme: str

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"


@pytest.fixture
def serve() -> Iterator[Callable[..., LocalServer]]:
    """Start ``http.server`` handlers on 127.0.0.1; all are shut down after the test."""
    running: list[tuple[_QuietServer, threading.Thread]] = []

    def start(
        handler: type[BaseHTTPRequestHandler], ssl_context: ssl.SSLContext | None = None
    ) -> LocalServer:
        server = _QuietServer(("127.0.0.1", 0), handler)
        server.ssl_context = ssl_context
        # A short poll interval keeps shutdown() (which waits for the next poll) quick.
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        running.append((server, thread))
        return LocalServer(server, "https" if ssl_context else "http")

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# ---------------------------------------------------------------------------- the web site

PAGE = "<html><body>Hello from the Unity test site</body></html>"
LARGE_BODY_BYTES = 11 * 1024 * 1024


class SiteHandler(BaseHTTPRequestHandler):
    """A small web site with the answers an uptime check meets."""

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean."""

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/ok":
            self._send(200, PAGE.encode())
        elif path == "/error":
            self._send(500, b"internal error")
        elif path == "/redirect":
            self._send(302, b"", {"Location": "/ok"})
        elif path == "/echo-header":
            self._send(200, (self.headers.get("X-Check") or "").encode())
        elif path == "/large":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(LARGE_BODY_BYTES))
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range(LARGE_BODY_BYTES // len(chunk)):
                    self.wfile.write(chunk)
            except OSError:
                pass  # the check stops reading at its limit and hangs up
        else:
            self._send(404, b"not found")

    do_HEAD = do_GET


@pytest.fixture
def site(serve: Callable[..., LocalServer]) -> LocalServer:
    """The web site over plain HTTP."""
    return serve(SiteHandler)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A private certificate authority for the HTTPS site."""
    return trustme.CA()


@dataclass
class TlsSite:
    """The web site over HTTPS, and the certificate it presents."""

    server: LocalServer
    cert: trustme.LeafCert

    def url(self, path: str = "/") -> str:
        return self.server.url(path)


@pytest.fixture
def tls_site(serve: Callable[..., LocalServer], ca: trustme.CA) -> Callable[..., TlsSite]:
    """Start the web site over HTTPS with a certificate for 127.0.0.1 expiring at ``not_after``."""

    def start(not_after: datetime) -> TlsSite:
        cert = ca.issue_cert("127.0.0.1", not_after=not_after)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        return TlsSite(serve(SiteHandler, context), cert)

    return start


@pytest.fixture
def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local TCP port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


# ------------------------------------------------------------------------ the Docker engine


@dataclass
class FakeEngine:
    """The state a small Docker Engine API server answers from; tests change it between calls."""

    api_version: str = "1.47"
    containers: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    networks: list[dict[str, Any]] = field(default_factory=list)
    failing_paths: set[str] = field(default_factory=set)
    stats_queries: list[str] = field(default_factory=list)
    base_url: str = ""

    def version(self) -> dict[str, Any]:
        return {
            "Version": "27.3.1",
            "ApiVersion": self.api_version,
            "MinAPIVersion": "1.24",
            "Os": "linux",
            "Arch": "amd64",
            "KernelVersion": "6.1.0-test",
        }


def engine_handler(engine: FakeEngine) -> type[BaseHTTPRequestHandler]:
    """A handler speaking the part of the Docker Engine API the monitor uses."""
    versioned = re.compile(r"^/v\d+\.\d+(/.*)$")
    stats_path = re.compile(r"^/containers/([^/]+)/stats$")

    class EngineHandler(JsonHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            match = versioned.match(parts.path)
            path = match.group(1) if match else parts.path
            if path in engine.failing_paths:
                self._json(500, {"message": "engine is having a bad day"})
            elif path == "/version":
                self._json(200, engine.version())
            elif path == "/containers/json":
                self._json(200, engine.containers)
            elif stats := stats_path.match(path):
                engine.stats_queries.append(parts.query)
                found = engine.stats.get(stats.group(1))
                if found is None:
                    self._json(404, {"message": f"No such container: {stats.group(1)}"})
                else:
                    self._json(200, found)
            elif path == "/images/json":
                self._json(200, engine.images)
            elif path == "/volumes":
                self._json(200, {"Volumes": engine.volumes, "Warnings": None})
            elif path == "/networks":
                self._json(200, engine.networks)
            else:
                self._json(404, {"message": f"page not found: {path}"})

    return EngineHandler


@pytest.fixture
def docker_engine(serve: Callable[..., LocalServer]) -> FakeEngine:
    """An empty engine listening on ``engine.base_url`` (tcp://127.0.0.1:PORT)."""
    engine = FakeEngine()
    server = serve(engine_handler(engine))
    engine.base_url = f"tcp://127.0.0.1:{server.port}"
    return engine


# ----------------------------------------------------------------------------- contexts


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client with the system's trust store (does not trust the test CA)."""
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def make_context(http_client: httpx.AsyncClient) -> Callable[..., Context[Any]]:
    """Build the context a plugin gets for one execution."""

    def make(
        config: PluginConfig, plugin_id: str, http: httpx.AsyncClient | None = None
    ) -> Context[Any]:
        return Context(
            config=config,
            http=http or http_client,
            clock=SystemClock(),
            log=structlog.get_logger(),
            plugin_id=plugin_id,
            instance_id="test",
        )

    return make


@pytest.fixture
def assert_declared() -> Callable[[type[Collector[Any]], Collected], None]:
    """Check that every sample a collector returned is one of its declared ``metrics``."""

    def check(plugin: type[Collector[Any]], collected: Collected) -> None:
        declared = {metric.name: set(metric.labels) for metric in plugin.metrics}
        assert collected.samples
        for sample in collected.samples:
            assert sample.problem() is None
            assert sample.name in declared, f"{sample.name} is not in {plugin.__name__}.metrics"
            assert set(sample.labels) == declared[sample.name], sample

    return check
