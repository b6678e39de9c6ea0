"""Webhook fixtures: real HTTP receivers on 127.0.0.1 and a Unity app with a short retry schedule.

A :class:`Receiver` is an ``http.server`` in a background thread: it records every request
(headers, body) and answers what the test tells it to, or goes away altogether (``stop``)
and comes back on the same port (``start``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.api_client import app_client
from unity.components import Components

#: Fast retries: the ninth failure exhausts a delivery.
FAST_SCHEDULE = [0, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Reply:
    status: int = 204
    headers: dict[str, str] | None = None
    body: bytes = b""
    delay_s: float = 0.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.connections: set[socket.socket] = set()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        self.connections.add(sock)
        return sock, address

    def close_connections(self) -> None:
        """Drop kept-alive connections too: a stopped receiver answers nothing."""
        for sock in list(self.connections):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.connections.clear()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (a timed-out delivery) are expected here."""


class Receiver:
    """A webhook receiver on a fixed loopback port."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.replies: deque[Reply] = deque()
        self.default = Reply()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def reply(self, *replies: Reply) -> None:
        """Answer the next requests with these, then with ``default``."""
        with self._lock:
            self.replies.extend(replies)

    def _next_reply(self) -> Reply:
        with self._lock:
            return self.replies.popleft() if self.replies else self.default

    def _record(self, received: Received) -> None:
        with self._lock:
            self.requests.append(received)

    def bodies(self, path: str | None = None) -> list[Any]:
        with self._lock:
            return [r.json for r in self.requests if path is None or r.path == path]

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                receiver._record(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                reply = receiver._next_reply()
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                self.send_response(reply.status)
                for name, value in (reply.headers or {}).items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening: connections are refused until ``start``."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            assert self._thread is not None
            self._thread.join(timeout=10)
            self._server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def receivers() -> Iterator[Callable[[], Receiver]]:
    made: list[Receiver] = []

    def make() -> Receiver:
        made.append(Receiver())
        return made[-1]

    yield make
    for r in made:
        r.stop()


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], what: str, within: float = 10.0
) -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = condition()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


Api = tuple[httpx.AsyncClient, Components]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """The app (SQLite) with fast retries and polling, and an admin client."""
    async with app_client(
        tmp_path,
        webhook_retry_schedule_s=FAST_SCHEDULE,
        webhook_poll_interval_s=0.05,
        webhook_timeout_s=2.0,
    ) as pair:
        yield pair


def key_event(name: str, tenant: str = "default") -> dict[str, Any]:
    """An ``api_key.created`` payload (a catalog-valid event anyone can publish)."""
    return {
        "key_id": "00000000-0000-0000-0000-000000000001",
        "name": name,
        "prefix": "unity_ab",
        "tenant_id": tenant,
        "scopes": ["metrics:read"],
    }


async def create_webhook(client: httpx.AsyncClient, url: str, **fields: Any) -> dict[str, Any]:
    body = {"name": "receiver", "url": url, "events": ["*"], **fields}
    response = await client.post("/api/webhooks", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created
