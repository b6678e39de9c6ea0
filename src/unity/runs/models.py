"""Run tables: tasks (what to do), runs (one plan → approval → apply cycle) and run logs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from unity.core.db import Base
from unity.core.types import JSONType, UTCDateTime, UUIDType, new_id

# SQLite only makes INTEGER PRIMARY KEY an alias of rowid (autoincrement) for "INTEGER".
LogId = BigInteger().with_variant(Integer(), "sqlite")


class Task(Base):
    """An action plugin with its parameters and approval policy; runs are its executions."""

    __tablename__ = "tasks"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(64), default="default", index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    action: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    require_approval: Mapped[bool] = mapped_column(Boolean, default=True)
    approval_timeout_s: Mapped[int] = mapped_column(Integer, default=300)
    on_timeout: Mapped[str] = mapped_column(String(10), default="reject")  # reject | approve
    allow_self_approval: Mapped[bool] = mapped_column(Boolean, default=True)
    max_rounds: Mapped[int | None] = mapped_column(Integer, default=None)
    schedule: Mapped[str | None] = mapped_column(String(100), default=None)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    run_count: Mapped[int] = mapped_column(Integer, default=0)
    success_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_count: Mapped[int] = mapped_column(Integer, default=0)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_by_key_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, default=None)
    created_by_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Run(Base):
    """One plan → approval → apply cycle of a task; its state is persisted at every step."""

    __tablename__ = "runs"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_id)
    task_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, ForeignKey("tasks.id", ondelete="CASCADE"), index=True
    )
    tenant_id: Mapped[str] = mapped_column(String(64), default="default", index=True)
    action: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), index=True)
    trigger: Mapped[str] = mapped_column(String(20), default="manual")  # manual | schedule
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    plan_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    approval: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    approval_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    rollback: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    created_by_key_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


Index("ix_runs_status_deadline", Run.status, Run.approval_deadline)


class RunLog(Base):
    """One line of a run's log: a state change, a progress step, an error."""

    __tablename__ = "run_logs"

    id: Mapped[int] = mapped_column(LogId, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, ForeignKey("runs.id", ondelete="CASCADE"), index=True
    )
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    level: Mapped[str] = mapped_column(String(10), default="info")
    event: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
