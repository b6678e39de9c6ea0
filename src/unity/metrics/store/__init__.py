"""Time-series storage behind one interface; :func:`create_store` picks the backend.

SQLite is the embedded default; PostgreSQL (with TimescaleDB when present) is the
scale-out backend. Both keep 1-minute and 1-hour rollups as samples arrive.
"""

from __future__ import annotations

from unity.core.db import Database
from unity.errors import ConfigError
from unity.metrics.store.abc import (
    MetricStore,
    Point,
    Resolution,
    SeriesInfo,
    SeriesKey,
    SnapshotWrite,
)
from unity.metrics.store.sqlite import SqliteMetricStore

__all__ = [
    "MetricStore",
    "Point",
    "Resolution",
    "SeriesInfo",
    "SeriesKey",
    "SnapshotWrite",
    "SqliteMetricStore",
    "create_store",
]


def create_store(database: Database) -> MetricStore:
    """The metric store for ``database``'s dialect (SQLite or PostgreSQL)."""
    if database.is_sqlite:
        return SqliteMetricStore(database)
    if database.is_postgres:
        # Imported here: asyncpg is an optional dependency (the ``postgres`` extra).
        from unity.metrics.store.postgres import PostgresMetricStore

        return PostgresMetricStore(database)
    raise ConfigError(f"no metric store for the {database.dialect!r} database dialect")
