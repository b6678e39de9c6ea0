"""A Unity server on a loopback port, in the test's event loop, with the test actions.

Unlike ``tests.live_server`` it takes the clock and registry, runs the engine (role
``all``) and can be started again on the same data directory to test restarts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tests.runs.actions import registry_with_actions
from tests.services import free_port
from unity.app import create_app
from unity.components import Components
from unity.config import Settings
from unity.core.clock import Clock
from unity.core.events import Event, Subscription
from unity.plugins.registry import PluginRegistry


class RunServer:
    def __init__(self, server: uvicorn.Server, port: int, data_dir: Path) -> None:
        self.server = server
        self.url = f"http://127.0.0.1:{port}"
        self.key = (data_dir / "admin.key").read_text().strip()
        self.client = httpx.AsyncClient(
            base_url=self.url, headers={"authorization": f"Bearer {self.key}"}, timeout=10
        )

    @property
    def components(self) -> Components:
        app: Any = self.server.config.app
        components: Components = app.state.components
        return components

    def events(self) -> Subscription:
        """A subscription to run events from now on."""
        return self.components.bus.subscribe(types=["run.*"])


async def next_event(
    subscription: Subscription, run_id: str, *types: str, within: float = 10.0
) -> Event:
    """The next event of ``run_id`` whose type is one of ``types`` (others are skipped)."""

    async def wait() -> Event:
        async for item in subscription:
            if isinstance(item, Event) and item.data.get("run_id") == run_id and item.type in types:
                return item
        raise AssertionError("subscription closed")

    return await asyncio.wait_for(wait(), within)


@asynccontextmanager
async def run_server(
    data_dir: Path,
    *,
    clock: Clock | None = None,
    registry: PluginRegistry | None = None,
    **settings: Any,
) -> AsyncIterator[RunServer]:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "autoenable_plugins": [],
        "writer_flush_interval_s": 0.02,
        "stale_check_interval_s": 3600,
        "run_check_interval_s": 0.05,
        "run_shutdown_grace_s": 0.5,
        "role": "all",
        **settings,
    }
    port = free_port()
    app = create_app(Settings(**values), clock=clock, registry=registry or registry_with_actions())
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server exited during start-up")
        await asyncio.sleep(0.01)
    running = RunServer(server, port, data_dir)
    try:
        yield running
    finally:
        await running.client.aclose()
        server.should_exit = True
        await task
