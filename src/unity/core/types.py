"""Portable column types: JSON (JSONB on PostgreSQL), UUID, and UTC datetimes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Uuid
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

#: JSON document; JSONB on PostgreSQL so it can carry a GIN index.
JSONType: TypeEngine[Any] = JSON().with_variant(JSONB(), "postgresql")

#: UUID; native ``uuid`` on PostgreSQL, 32-char hex on SQLite.
UUIDType: TypeEngine[uuid.UUID] = Uuid(as_uuid=True)


def new_id() -> uuid.UUID:
    """A new random primary key."""
    return uuid.uuid4()


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where UTC is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
