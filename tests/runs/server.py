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

from tests.live_server import LiveServer, start_server
from tests.runs.actions import registry_with_actions
from unity.app import create_app
from unity.config import Settings
from unity.core.clock import Clock
from unity.core.events import Event, Subscription
from unity.plugins.registry import PluginRegistry


class RunServer(LiveServer):
    def __init__(self, server: uvicorn.Server, port: int, data_dir: Path) -> None:
        super().__init__(server, port)
        self.url = self.http
        self._key = (data_dir / "admin.key").read_text().strip()
        self.client = httpx.AsyncClient(
            base_url=self.url, headers={"authorization": f"Bearer {self.key}"}, timeout=10
        )

    @property
    def key(self) -> str:
        """The admin key, read from the data directory (also after a restart)."""
        return self._key

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
    app = create_app(Settings(**values), clock=clock, registry=registry or registry_with_actions())
    running, task = await start_server(app, RunServer, data_dir)
    try:
        yield running
    finally:
        await running.client.aclose()
        running.server.should_exit = True
        await task
