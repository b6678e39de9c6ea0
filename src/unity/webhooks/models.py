"""Webhook tables: endpoints, the delivery outbox, every attempt, and the dispatcher's cursor.

``webhook_deliveries`` is the durable outbox: one row per (event, endpoint), written when the
event is recorded and kept for its whole life, so its ``message_id`` (the ``webhook-id``
header) is the same on every retry and across restarts. Its integer ``id`` gives the order
in which one endpoint receives its deliveries.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from unity.core.db import Base
from unity.core.types import JSONType, UTCDateTime, UUIDType, new_id

# SQLite only makes INTEGER PRIMARY KEY an alias of rowid (autoincrement) for "INTEGER".
RowId = BigInteger().with_variant(Integer(), "sqlite")


class Webhook(Base):
    """An endpoint that receives signed deliveries of the events it subscribes to."""

    __tablename__ = "webhooks"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("tenants.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text, default=None)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSONType, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Secrets are encrypted at rest (Fernet, key in the data dir); never stored in clear.
    secret_encrypted: Mapped[str] = mapped_column(Text)
    previous_secret_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    disabled_reason: Mapped[str | None] = mapped_column(Text, default=None)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # First failed attempt since the last success: the endpoint is disabled once this is
    # older than the failure window (5 days by default).
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Which process delivers this endpoint's outbox rows right now, and until when.
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """One event for one endpoint: the outbox row, with where its delivery stands.

    ``status``: ``pending`` (an attempt is due at ``next_attempt_at``; ``NULL`` while an
    API call attempts it directly), ``success``, ``exhausted`` (every scheduled attempt
    failed) or ``failed`` (stopped without success, e.g. the endpoint answered 410).
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    webhook_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, ForeignKey("webhooks.id", ondelete="CASCADE")
    )
    tenant_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(100))
    # The bus position of the event (NULL for rows written in a producer's transaction):
    # unique per endpoint, so two processes reading the same Redis stream enqueue it once.
    event_seq: Mapped[int | None] = mapped_column(BigInteger, default=None)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


# The head of an endpoint's queue (lowest pending id) and the per-endpoint listings.
Index(
    "ix_webhook_deliveries_webhook_status_id",
    WebhookDelivery.webhook_id,
    WebhookDelivery.status,
    WebhookDelivery.id,
)
Index(
    "ix_webhook_deliveries_webhook_seq",
    WebhookDelivery.webhook_id,
    WebhookDelivery.event_seq,
    unique=True,
)
Index("ix_webhook_deliveries_status_next", WebhookDelivery.status, WebhookDelivery.next_attempt_at)


class WebhookAttempt(Base):
    """One HTTP request made for a delivery, with what came back."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    webhook_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, ForeignKey("webhooks.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    success: Mapped[bool] = mapped_column(Boolean)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    response_ms: Mapped[float | None] = mapped_column(Float, default=None)
    response_body: Mapped[str | None] = mapped_column(Text, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)


Index("ix_webhook_attempts_delivery_id", WebhookAttempt.delivery_id, WebhookAttempt.id)
Index("ix_webhook_attempts_webhook_started", WebhookAttempt.webhook_id, WebhookAttempt.started_at)


class WebhookCursor(Base):
    """The last event bus position whose events are in the outbox (resume point)."""

    __tablename__ = "webhook_cursor"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
