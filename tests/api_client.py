"""An in-process client for the real app: its lifespan builds real components (SQLite file)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.collection.plugins import make_registry
from unity.app import create_app
from unity.components import Components
from unity.config import Settings


@asynccontextmanager
async def app_client(
    tmp_path: Path, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Components]]:
    """The app with the test plugins, its lifespan running, and a client bound to it that
    sends the admin key."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "autoenable_plugins": [],
        "writer_flush_interval_s": 0.02,
        "stale_check_interval_s": 3600,
        **settings,
    }
    app = create_app(Settings(**values), registry=make_registry())
    async with app.router.lifespan_context(app):
        components: Components = app.state.components
        assert components.admin_key is not None  # a new database: the admin key was just made
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://unity.test",
            headers={"authorization": f"Bearer {components.admin_key}"},
        ) as client:
            yield client, components
