"""Plugin tables: the catalog of known plugins and their configured instances."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from unity.core.db import Base
from unity.core.types import JSONType, UTCDateTime, UUIDType, new_id


class Plugin(Base):
    """A plugin Unity knows about (built-in, from an entry point, or installed).

    The plugin is code, shared by every tenant; whether it runs, and with which config,
    belongs to each tenant's instances.
    """

    __tablename__ = "plugins"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_id)
    plugin_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(50))
    kind: Mapped[str] = mapped_column(String(20), index=True)
    category: Mapped[str] = mapped_column(String(50), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(20))  # builtin | entrypoint | installed
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    config_schema: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    broken_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    instances: Mapped[list[PluginInstance]] = relationship(
        back_populates="plugin", cascade="all, delete-orphan", lazy="raise"
    )


class PluginInstance(Base):
    """A configured, scheduled use of a plugin; five HTTP checks are five instances."""

    __tablename__ = "plugin_instances"
    __table_args__ = (UniqueConstraint("plugin_pk", "tenant_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_id)
    plugin_pk: Mapped[uuid.UUID] = mapped_column(
        UUIDType, ForeignKey("plugins.id", ondelete="CASCADE"), index=True
    )
    tenant_id: Mapped[str] = mapped_column(String(64), default="default", index=True)
    name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    interval_s: Mapped[int] = mapped_column(Integer, default=60)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    plugin: Mapped[Plugin] = relationship(back_populates="instances", lazy="raise")


Index("ix_plugin_instances_enabled_plugin", PluginInstance.enabled, PluginInstance.plugin_pk)
