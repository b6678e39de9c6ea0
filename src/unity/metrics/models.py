"""Time-series tables: series, raw samples, 1-minute and 1-hour rollups, latest snapshots.

Timestamps of samples are integer milliseconds since the Unix epoch: compact, portable
and usable as a TimescaleDB integer time dimension. ``samples`` is WITHOUT ROWID on
SQLite with primary key (series_id, ts): a range read of one series walks one b-tree.
Sample tables carry no foreign key to ``series``: it would cost a parent lookup per
inserted row on the hottest path; the metric store deletes a series' rows itself.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
)
from sqlalchemy.orm import Mapped, mapped_column

from unity.core.db import Base
from unity.core.types import JSONType, UTCDateTime, UUIDType

# SQLite only makes INTEGER PRIMARY KEY an alias of rowid (autoincrement) for "INTEGER".
SeriesId = BigInteger().with_variant(Integer(), "sqlite")


class Series(Base):
    """One metric name from one source with one label set."""

    __tablename__ = "series"
    # Never reuse the id of a deleted series: another process may still hold it cached.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(SeriesId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    source_kind: Mapped[str] = mapped_column(String(20))  # instance | run | ingest
    source_id: Mapped[str] = mapped_column(String(64))
    plugin_id: Mapped[str | None] = mapped_column(String(64), default=None)
    labels: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    unit: Mapped[str | None] = mapped_column(String(32), default=None)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


Index("ix_series_source", Series.source_kind, Series.source_id, Series.name)
Index("ix_series_plugin_name", Series.plugin_id, Series.name)
Index("ix_series_name", Series.name)
# GIN on PostgreSQL answers label-containment queries; SQLite has no equivalent index.
Index("ix_series_labels", Series.labels, postgresql_using="gin").ddl_if(dialect="postgresql")


def _samples_table(name: str) -> Table:
    return Table(
        name,
        Base.metadata,
        Column("series_id", SeriesId, primary_key=True),
        Column("ts", BigInteger, primary_key=True),
        Column("value", Float, nullable=False),
        sqlite_with_rowid=False,
    )


def _rollup_table(name: str) -> Table:
    return Table(
        name,
        Base.metadata,
        Column("series_id", SeriesId, primary_key=True),
        Column("ts", BigInteger, primary_key=True),  # bucket start, ms
        Column("count", Integer, nullable=False),
        Column("sum", Float, nullable=False),
        Column("min", Float, nullable=False),
        Column("max", Float, nullable=False),
        Column("last", Float, nullable=False),
        Column("last_ts", BigInteger, nullable=False),  # time of ``last``, for out-of-order data
        sqlite_with_rowid=False,
    )


samples = _samples_table("samples")
samples_1m = _rollup_table("samples_1m")
samples_1h = _rollup_table("samples_1h")


class Snapshot(Base):
    """The latest rich JSON payload of one instance (container lists and the like)."""

    __tablename__ = "snapshots"

    instance_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, ForeignKey("plugin_instances.id", ondelete="CASCADE"), primary_key=True
    )
    plugin_id: Mapped[str] = mapped_column(String(64), index=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
