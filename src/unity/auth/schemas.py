"""Request and response models of ``/api/keys``, ``/api/audit`` and ``/api/tenants``."""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from unity.auth.principal import Scope
from unity.core.params import IsoDatetime

#: A tenant id: a lowercase slug such as ``default`` or ``team-a``.
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
TenantId = Annotated[str, Field(pattern=TENANT_PATTERN, max_length=64, examples=["default"])]

KeyStatus = Literal["active", "expired", "revoked"]
StatusClass = Literal["2xx", "3xx", "4xx", "5xx"]
Outcome = Literal["success", "failure"]

MAX_EXPIRY = timedelta(days=3650)
MAX_GRACE_S = 30 * 86_400
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}

RateLimit = Annotated[int | None, Field(ge=1, le=10_000_000)]


def parse_duration(value: str | int) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"45s"``, ``"2w"`` or a number of seconds, as a timedelta.

    Raises ``ValueError`` for anything else, for zero and for more than ten years.
    """
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30d, 12h, 90m or seconds)")
        seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    if seconds > MAX_EXPIRY.total_seconds():
        raise ValueError("a duration may not exceed ten years")
    return timedelta(seconds=seconds)


class KeyCreate(BaseModel):
    """A new API key. Give ``expires_at`` or ``expires_in`` (or neither: it never expires)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "grafana", "scopes": ["metrics:read"], "rate_limit_per_minute": 120},
                {"name": "ci", "scopes": ["plugins:read", "runs:write"], "expires_in": "30d"},
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(min_length=1, description="What the key may do.")
    tenant: TenantId | None = Field(
        default=None, description="Tenant of the new key; another than the caller's needs admin."
    )
    description: str | None = Field(default=None, max_length=2000)
    expires_at: IsoDatetime | None = None
    expires_in: int | str | None = Field(
        default=None,
        description="Lifetime from now: seconds, or a duration such as 30d, 12h, 90m.",
        examples=["30d", 86400],
    )
    rate_limit_per_minute: RateLimit = None
    rate_limit_per_hour: RateLimit = None
    rate_limit_per_day: RateLimit = None

    @field_validator("expires_in")
    @classmethod
    def _duration(cls, value: int | str | None) -> int | None:
        return None if value is None else int(parse_duration(value).total_seconds())

    @model_validator(mode="after")
    def _one_expiry(self) -> KeyCreate:
        if self.expires_at is not None and self.expires_in is not None:
            raise ValueError("give expires_at or expires_in, not both")
        return self

    @property
    def lifetime(self) -> timedelta | None:
        """``expires_in`` as a duration."""
        return None if self.expires_in is None else parse_duration(self.expires_in)


class KeyUpdate(BaseModel):
    """Fields to change; those left out keep their value, ``null`` removes a rate limit."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"scopes": ["metrics:read"], "rate_limit_per_hour": None}]},
    )

    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    scopes: list[Scope] | None = Field(default=None, min_length=1)
    rate_limit_per_minute: RateLimit = None
    rate_limit_per_hour: RateLimit = None
    rate_limit_per_day: RateLimit = None


class RotateRequest(BaseModel):
    """How long the replaced secret keeps working."""

    model_config = ConfigDict(extra="forbid")

    grace_period_s: int = Field(
        default=86_400,
        ge=0,
        le=MAX_GRACE_S,
        description="Seconds the old secret stays valid (0: it stops at once).",
    )


class ApiKeyOut(BaseModel):
    """An API key as clients see it: never its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None
    tenant_id: str
    prefix: str = Field(description="The visible start of the secret, to tell keys apart.")
    scopes: list[str]
    status: KeyStatus
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="Updated every few seconds, not live.")
    revoked_at: datetime | None
    rate_limit_per_minute: int | None
    rate_limit_per_hour: int | None
    rate_limit_per_day: int | None
    previous_valid_until: datetime | None = Field(
        description="After a rotation: until when the replaced secret still works."
    )
    created_by_key_id: uuid.UUID | None


class ApiKeyCreated(ApiKeyOut):
    """A key with its secret, returned once (on creation and rotation)."""

    key: str = Field(description="The secret. Shown only this once: store it now.")


class UsageDay(BaseModel):
    """Requests made with a key on one UTC day."""

    day: date
    total: int
    by_status: dict[StatusClass, int] = Field(description="Requests per status class.")


class RecentRequest(BaseModel):
    """One of a key's latest requests."""

    model_config = ConfigDict(from_attributes=True)

    ts: datetime
    method: str
    path: str
    status: int
    duration_ms: float


class UsageOut(BaseModel):
    """Requests per day and status class, and the last 100 requests (newest first)."""

    key_id: uuid.UUID
    days: list[UsageDay]
    recent: list[RecentRequest]


class AuditEntryOut(BaseModel):
    """One write through the API."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    ts: datetime
    key_id: uuid.UUID | None = Field(description="The key that made the request, if any.")
    tenant_id: str | None
    method: str
    route: str = Field(examples=["/api/plugins/{plugin_id}/enable"])
    path: str
    resource_id: str | None
    status: int
    outcome: Outcome


class TenantCreate(BaseModel):
    """A new tenant."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"id": "team-a", "name": "Team A"}]}
    )

    id: TenantId
    name: str = Field(min_length=1, max_length=200)


class TenantOut(BaseModel):
    """A tenant."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    created_at: datetime
