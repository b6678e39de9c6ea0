"""A real uvicorn server on a loopback port, running in the test's own event loop.

Tests talk to it over real sockets (HTTP and WebSocket) and can still reach its
components, e.g. to publish an event at a chosen moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import uvicorn

from tests.collection.plugins import make_registry
from tests.services import free_port
from unity.app import create_app
from unity.components import Components
from unity.config import Settings


class LiveServer:
    def __init__(self, server: uvicorn.Server, port: int) -> None:
        self.server = server
        self.port = port
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}"

    @property
    def key(self) -> str:
        """The admin key made at start-up."""
        key = self.components.admin_key
        assert key is not None
        return key

    def ws_url(self, path: str, *, key: str | None = None, **params: object) -> str:
        """A WebSocket URL on this server, authenticated with ``key`` (default: admin)."""
        query = "&".join(f"{k}={v}" for k, v in {"token": key or self.key, **params}.items())
        return f"{self.ws}{path}?{query}"

    @property
    def components(self) -> Components:
        app: Any = self.server.config.app
        components: Components = app.state.components
        return components


LiveServerT = TypeVar("LiveServerT", bound=LiveServer)


async def start_server(
    app: Any, cls: type[LiveServerT], *args: Any
) -> tuple[LiveServerT, asyncio.Task[None]]:
    """Serve ``app`` on a free loopback port in this event loop; wrap it in ``cls``."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server exited during start-up")
        await asyncio.sleep(0.01)
    return cls(server, port, *args), task


@asynccontextmanager
async def live_server(tmp_path: Path, **settings: Any) -> AsyncIterator[LiveServer]:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "autoenable_plugins": [],
        "writer_flush_interval_s": 0.02,
        "stale_check_interval_s": 3600,
        "role": "api",
        **settings,
    }
    app = create_app(Settings(**values), registry=make_registry())
    running, task = await start_server(app, LiveServer)
    try:
        yield running
    finally:
        running.server.should_exit = True
        await task
