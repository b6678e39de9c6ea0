"""Metric stores on a real SQLite file and a real PostgreSQL database, migrated."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from unity.core.db import Database
from unity.metrics.store import MetricStore, SeriesKey, create_store
from unity.plugins.models import Plugin, PluginInstance


@pytest.fixture
async def store(database: Database) -> AsyncIterator[MetricStore]:
    """The backend's metric store, set up as ``create_app`` does."""
    metric_store = create_store(database)
    await metric_store.setup()
    yield metric_store
    await metric_store.close()


def key(name: str = "cpu", source_id: str = "a", **labels: str) -> SeriesKey:
    """A series key of an instance source."""
    return SeriesKey.of(
        name, source_kind="instance", source_id=source_id, plugin_id="sys", labels=labels
    )


async def make_instance(database: Database, name: str = "main") -> uuid.UUID:
    """A plugin instance row (snapshots belong to one)."""
    now = datetime.now(UTC)
    plugin_id = f"plugin-{uuid.uuid4().hex[:8]}"
    plugin = Plugin(
        plugin_id=plugin_id,
        name=plugin_id,
        version="1.0.0",
        kind="collector",
        category="system",
        source="builtin",
        created_at=now,
        updated_at=now,
    )
    instance = PluginInstance(plugin=plugin, name=name, created_at=now, updated_at=now)
    async with database.session() as session:
        session.add_all([plugin, instance])
    return instance.id
