"""Auth tables: tenants, API keys, their usage counters and recent requests, the audit log.

A key's secret is never stored: ``secret_hash`` is its SHA-256, ``prefix`` the visible part
that lets a user tell keys apart. Usage is written in batches by
:class:`unity.auth.service.KeyService`, never one row per request.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import BigInteger, Date, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from unity.core.db import Base
from unity.core.types import JSONType, UTCDateTime, UUIDType, new_id

# SQLite only makes INTEGER PRIMARY KEY an alias of rowid (autoincrement) for "INTEGER".
RowId = BigInteger().with_variant(Integer(), "sqlite")


class Tenant(Base):
    """A group of keys and the resources they own; ``default`` exists from the start."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKey(Base):
    """An API key: its hash, scopes, tenant, lifetime and rate limits."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("tenants.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text, default=None)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer, default=None)
    rate_limit_per_hour: Mapped[int | None] = mapped_column(Integer, default=None)
    rate_limit_per_day: Mapped[int | None] = mapped_column(Integer, default=None)
    # Rotation keeps the replaced secret valid until previous_valid_until (grace period).
    previous_secret_hash: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    previous_valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_by_key_id: Mapped[uuid.UUID | None] = mapped_column(
        UUIDType, ForeignKey("api_keys.id", ondelete="SET NULL"), default=None
    )


class ApiKeyUsage(Base):
    """Requests made with a key, per UTC day and status class (``2xx`` … ``5xx``)."""

    __tablename__ = "api_key_usage"

    key_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    status_class: Mapped[str] = mapped_column(String(3), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class ApiKeyRequest(Base):
    """One recent request made with a key; only the newest 100 per key are kept."""

    __tablename__ = "api_key_requests"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    key_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, ForeignKey("api_keys.id", ondelete="CASCADE")
    )
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[int] = mapped_column(Integer)
    duration_ms: Mapped[float] = mapped_column(Float)


# Newest-first reads and the keep-100 prune both walk this index.
Index("ix_api_key_requests_key_id", ApiKeyRequest.key_id, ApiKeyRequest.id)


class AuditEntry(Base):
    """One write through the API: who, what, when and how it ended.

    No foreign key to ``api_keys``: the log must outlive what it describes.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    key_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, default=None)
    tenant_id: Mapped[str | None] = mapped_column(String(64), default=None)
    method: Mapped[str] = mapped_column(String(10))
    route: Mapped[str] = mapped_column(String(500))
    path: Mapped[str] = mapped_column(Text)
    resource_id: Mapped[str | None] = mapped_column(String(200), default=None)
    status: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(10))  # success | failure


Index("ix_audit_log_tenant_ts", AuditEntry.tenant_id, AuditEntry.ts)
Index("ix_audit_log_key_ts", AuditEntry.key_id, AuditEntry.ts)
