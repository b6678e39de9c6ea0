"""Collection tables: per-instance health status and the record of every execution."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from unity.core.db import Base
from unity.core.types import UTCDateTime, UUIDType, new_id


class PluginStatus(Base):
    """Health and counters of one plugin instance (one row per instance)."""

    __tablename__ = "plugin_status"

    instance_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, ForeignKey("plugin_instances.id", ondelete="CASCADE"), primary_key=True
    )
    health: Mapped[str] = mapped_column(String(20), default="unknown", index=True)
    last_run: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_success: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_sample_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    consecutive_errors: Mapped[int] = mapped_column(Integer, default=0)
    success_count: Mapped[int] = mapped_column(Integer, default=0)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    last_duration_ms: Mapped[float | None] = mapped_column(Float, default=None)
    health_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class PluginExecution(Base):
    """One execution of one instance: success, failed or timeout."""

    __tablename__ = "plugin_executions"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_id)
    instance_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, ForeignKey("plugin_instances.id", ondelete="CASCADE")
    )
    plugin_id: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    status: Mapped[str] = mapped_column(String(20))  # success | failed | timeout
    metrics_count: Mapped[int] = mapped_column(Integer, default=0)
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    error: Mapped[str | None] = mapped_column(Text, default=None)


Index(
    "ix_plugin_executions_instance_started", PluginExecution.instance_id, PluginExecution.started_at
)
Index("ix_plugin_executions_plugin_started", PluginExecution.plugin_id, PluginExecution.started_at)
Index("ix_plugin_executions_started", PluginExecution.started_at)
