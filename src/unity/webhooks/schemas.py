"""Request and response shapes of ``/api/webhooks``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from unity.core.events.catalog import CATEGORIES, check_pattern
from unity.core.params import IsoDatetime
from unity.webhooks.signing import secret_key

DeliveryStatus = Literal["pending", "success", "exhausted", "failed"]
DELIVERY_STATUSES: tuple[str, ...] = DeliveryStatus.__args__  # type: ignore[attr-defined]


def normalize_events(values: list[str]) -> list[str]:
    """Event patterns checked against the catalog; a bare category ``run`` means ``run.*``."""
    out: list[str] = []
    for value in values:
        pattern = f"{value}.*" if value in CATEGORIES else value
        check_pattern(pattern)
        if pattern not in out:
            out.append(pattern)
    return out


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_secret(value: str | None) -> str | None:
    if value is not None:
        secret_key(value)  # raises ValueError naming what is wrong
    return value


#: A secret a client may give (``whsec_`` + base64), checked as it arrives.
GivenSecret = Annotated[str | None, AfterValidator(_check_secret)]


class WebhookCreate(_Body):
    """``POST /api/webhooks``."""

    name: str = Field(min_length=1, max_length=200)
    url: str = Field(
        min_length=1, max_length=2000, examples=["https://ntfy.example.net/unity-alerts"]
    )
    events: list[str] = Field(
        min_length=1,
        max_length=100,
        description="Event types, categories (`run.*` or `run`), or `*` for every event.",
        examples=[["alert.triggered", "run.*"]],
    )
    description: str | None = Field(default=None, max_length=2000)
    secret: GivenSecret = Field(
        default=None,
        description="`whsec_` + base64 of 24-64 bytes; generated when left out.",
    )
    active: bool = True

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        return normalize_events(value)


class WebhookUpdate(_Body):
    """``PUT /api/webhooks/{id}``: fields left out keep their value.

    Setting ``active`` to true re-enables an endpoint that was disabled (its pending
    deliveries resume); false pauses it.
    """

    name: str | None = Field(default=None, min_length=1, max_length=200)
    url: str | None = Field(default=None, min_length=1, max_length=2000)
    events: list[str] | None = Field(default=None, min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=2000)
    active: bool | None = None

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else normalize_events(value)


class WebhookOut(BaseModel):
    """A webhook endpoint (never its secret)."""

    id: uuid.UUID
    tenant_id: str
    name: str
    description: str | None
    url: str
    events: list[str]
    active: bool
    disabled_reason: str | None = Field(description="Why Unity disabled it, if it did.")
    disabled_at: datetime | None
    failing_since: datetime | None = Field(
        description="First failed attempt since the last success."
    )
    previous_secret_expires_at: datetime | None = Field(
        description="Until when the previous secret also signs (after a rotation)."
    )
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookOut):
    """A new webhook with its secret (shown here and after a rotation only)."""

    secret: str


class RotateSecret(_Body):
    """``POST /api/webhooks/{id}/rotate-secret``."""

    secret: GivenSecret = Field(default=None, description="The new secret; generated if left out.")


class SecretRotated(BaseModel):
    """The new secret; deliveries carry signatures with both until the previous one expires."""

    secret: str
    previous_secret_expires_at: datetime


class AttemptOut(BaseModel):
    """One HTTP request made for a delivery."""

    attempt: int = Field(description="1 for the first attempt.")
    started_at: datetime
    success: bool
    status_code: int | None
    response_ms: float | None
    response_body: str | None = Field(description="The first 2 KB of the response body.")
    error: str | None


class DeliveryOut(BaseModel):
    """One event for one endpoint, with every attempt made so far (oldest first)."""

    id: int
    message_id: str = Field(description="The `webhook-id` header, the same on every attempt.")
    webhook_id: uuid.UUID
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    completed_at: datetime | None
    payload: dict[str, Any] = Field(description="The body sent: {type, timestamp, data}.")
    attempt_log: list[AttemptOut]


class TestOutcome(BaseModel):
    """What ``POST /api/webhooks/{id}/test`` got back from the endpoint."""

    success: bool
    status_code: int | None
    response_ms: float | None
    response_body: str | None
    error: str | None
    delivery: DeliveryOut


class RecoverRequest(_Body):
    """``POST /api/webhooks/{id}/recover``."""

    since: IsoDatetime = Field(description="Resend failed deliveries created at or after this.")


class RecoverOut(BaseModel):
    requeued: int = Field(description="Deliveries queued again.")


class StatsOut(BaseModel):
    """Delivery figures of one endpoint."""

    deliveries: int
    by_status: dict[str, int]
    attempts: int
    success_rate: float | None = Field(
        description="Successful attempts / attempts (0-1); null before the first attempt."
    )
    avg_response_ms: float | None
    p95_response_ms: float | None = Field(description="Over the last 1,000 attempts.")
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_failure_error: str | None


class EventTypeOut(BaseModel):
    """One event type of the catalog."""

    type: str
    category: str
    description: str
    schema_: dict[str, Any] = Field(alias="schema", description="JSON Schema of `data`.")

    model_config = ConfigDict(populate_by_name=True)


class CategoryOut(BaseModel):
    name: str
    pattern: str = Field(description="The pattern that selects the category, e.g. `run.*`.")
    events: list[str]


class EventCatalogOut(BaseModel):
    """Every event type a webhook can subscribe to (the whole catalog, unpaged)."""

    items: list[EventTypeOut]
    total: int
    categories: list[CategoryOut]


__all__ = [
    "DELIVERY_STATUSES",
    "AttemptOut",
    "CategoryOut",
    "DeliveryOut",
    "DeliveryStatus",
    "EventCatalogOut",
    "EventTypeOut",
    "RecoverOut",
    "RecoverRequest",
    "RotateSecret",
    "SecretRotated",
    "StatsOut",
    "TestOutcome",
    "WebhookCreate",
    "WebhookCreated",
    "WebhookOut",
    "WebhookUpdate",
    "normalize_events",
]
