"""Alert tables. The evaluator comes later; the tables and their indexes exist from the start."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from unity.core.db import Base
from unity.core.types import JSONType, UTCDateTime, UUIDType, new_id


class AlertRule(Base):
    """A threshold on a metric, with hysteresis and a duration before it fires."""

    __tablename__ = "alert_rules"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(64), default="default", index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    metric_name: Mapped[str] = mapped_column(String(200), index=True)
    plugin_id: Mapped[str | None] = mapped_column(String(64), default=None)
    instance_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, default=None)
    labels: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    operator: Mapped[str] = mapped_column(String(4))  # > >= < <= == !=
    threshold: Mapped[float] = mapped_column(Float)
    clear_threshold: Mapped[float | None] = mapped_column(Float, default=None)  # hysteresis
    for_s: Mapped[int] = mapped_column(Integer, default=0)
    severity: Mapped[str] = mapped_column(String(20), default="warning")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    notify: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AlertState(Base):
    """Current state of a rule for one series: ok, pending or firing."""

    __tablename__ = "alert_states"

    rule_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, ForeignKey("alert_rules.id", ondelete="CASCADE"), primary_key=True
    )
    series_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(20), default="ok", index=True)
    value: Mapped[float | None] = mapped_column(Float, default=None)
    pending_since: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    firing_since: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AlertHistory(Base):
    """Every transition of an alert: triggered and resolved."""

    __tablename__ = "alert_history"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_id)
    rule_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, ForeignKey("alert_rules.id", ondelete="CASCADE")
    )
    tenant_id: Mapped[str] = mapped_column(String(64), default="default")
    series_key: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(20))  # triggered | resolved
    value: Mapped[float | None] = mapped_column(Float, default=None)
    message: Mapped[str] = mapped_column(Text, default="")
    ts: Mapped[datetime] = mapped_column(UTCDateTime)


Index("ix_alert_history_rule_ts", AlertHistory.rule_id, AlertHistory.ts)
Index("ix_alert_history_tenant_ts", AlertHistory.tenant_id, AlertHistory.ts)
