"""Request and response bodies of ``/api/tasks`` and ``/api/runs``."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from unity.core.events.catalog import RunStatus

TaskStatus = Literal["pending", "running", "completed", "failed", "cancelled", "timeout"]
OnTimeout = Literal["reject", "approve"]

INTERVAL = re.compile(r"^(\d{1,7})(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
MAX_INTERVAL_S = 366 * 86_400


def interval_seconds(schedule: str) -> int | None:
    """Seconds of an interval schedule (``"90s"``, ``"5m"``, ``"1h"``, ``"1d"``); ``None`` for cron."""
    match = INTERVAL.match(schedule)
    if match is None:
        return None
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def check_schedule(value: str | None) -> str | None:
    """``value`` if it is an interval (``"30s"``, ``"5m"``) or a 5-field cron expression."""
    if value is None:
        return None
    value = value.strip()
    seconds = interval_seconds(value)
    if seconds is not None:
        if not 1 <= seconds <= MAX_INTERVAL_S:
            raise ValueError("an interval must be between 1s and 366d")
        return value
    # Deferred import keeps APScheduler's trigger parsing next to its only use.
    from apscheduler.triggers.cron import CronTrigger

    if len(value.split()) != 5:
        raise ValueError(
            "schedule must be an interval such as '30s', '5m', '1h', '1d' "
            "or a 5-field cron expression such as '0 3 * * *'"
        )
    try:
        CronTrigger.from_crontab(value, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"invalid cron expression: {exc}") from exc
    return value


class TaskCreate(BaseModel):
    """``POST /api/tasks/``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=10_000)
    action: str = Field(
        min_length=1,
        max_length=64,
        description="plugin_id of an action plugin.",
        examples=["file_cleanup"],
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Validated against the action's config_schema."
    )
    require_approval: bool = True
    approval_timeout_s: int = Field(default=300, ge=1, le=30 * 86_400)
    on_timeout: OnTimeout = "reject"
    allow_self_approval: bool = Field(
        default=True, description="Whether the key that created the task may approve its runs."
    )
    max_rounds: int | None = Field(default=None, ge=1, le=100)
    schedule: str | None = Field(
        default=None,
        max_length=100,
        description="Create runs automatically: an interval ('30s', '5m', '1h', '1d') or a "
        "5-field cron expression in UTC ('0 3 * * *').",
    )
    enabled: bool = Field(default=True, description="Whether the schedule creates runs.")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        return check_schedule(value)


class TaskUpdate(BaseModel):
    """``PATCH /api/tasks/{task_id}``: the fields given replace the task's."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)
    action: str | None = Field(default=None, min_length=1, max_length=64)
    params: dict[str, Any] | None = None
    require_approval: bool | None = None
    approval_timeout_s: int | None = Field(default=None, ge=1, le=30 * 86_400)
    on_timeout: OnTimeout | None = None
    allow_self_approval: bool | None = None
    max_rounds: int | None = Field(default=None, ge=1, le=100)
    schedule: str | None = Field(default=None, max_length=100, description="'' removes it.")
    enabled: bool | None = None

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return value
        return check_schedule(value)


class TaskOut(BaseModel):
    """A task with its success figures."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: str
    name: str
    description: str
    action: str
    params: dict[str, Any]
    require_approval: bool
    approval_timeout_s: int
    on_timeout: OnTimeout
    allow_self_approval: bool
    max_rounds: int | None
    schedule: str | None
    enabled: bool
    status: TaskStatus = Field(description="Status of the latest run, summarized.")
    run_count: int
    success_count: int
    failure_count: int
    success_rate: float | None = Field(
        description="Completed runs / (completed + failed); null before any finished."
    )
    last_run_at: datetime | None
    created_by_key_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class RunCreate(BaseModel):
    """``POST /api/runs/``."""

    model_config = ConfigDict(extra="forbid")

    task_id: uuid.UUID


class RunUpdate(BaseModel):
    """``PATCH /api/runs/{run_id}``: the only change a client can make is cancelling."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["cancelled"]


class ApprovalRequest(BaseModel):
    """``POST /api/runs/{run_id}/approve``."""

    model_config = ConfigDict(extra="forbid")

    approved: bool
    feedback: str | None = Field(default=None, max_length=10_000)
    plan_hash: str | None = Field(
        default=None,
        max_length=64,
        description="The plan_hash the decision is about; 409 when the plan is no longer that one.",
    )


class RollbackRequest(BaseModel):
    """``POST /api/runs/{run_id}/rollback``."""

    model_config = ConfigDict(extra="forbid")

    feedback: str | None = Field(default=None, max_length=10_000)


class Decision(BaseModel):
    """Who decided on a plan, when, and about which plan."""

    approved: bool
    automatic: bool = Field(description="Decided by the task's policy, not a person.")
    reason: Literal["decision", "not_required", "timeout"]
    key_id: str | None = None
    key_name: str | None = None
    tenant_id: str | None = None
    feedback: str | None = None
    decided_at: datetime
    plan_hash: str | None


class RunOut(BaseModel):
    """A run: its state, plan, decision and outcome."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    task_id: uuid.UUID
    tenant_id: str
    action: str
    status: RunStatus
    trigger: Literal["manual", "schedule"]
    params: dict[str, Any]
    plan: dict[str, Any] | None
    plan_hash: str | None
    approval: Decision | None
    approval_deadline: datetime | None
    result: dict[str, Any] | None
    error: str | None
    rollback: dict[str, Any] | None = Field(
        description="State of a rollback: status, result or error, and its decision."
    )
    created_by_key_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None


class RunLogOut(BaseModel):
    """One line of a run's log."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    ts: datetime
    level: Literal["info", "warning", "error"]
    event: str
    message: str
    data: dict[str, Any]


class ApprovalOut(BaseModel):
    """``GET /api/runs/{run_id}/approval``: the pending request and whether this key may answer."""

    run_id: uuid.UUID
    status: RunStatus
    pending: bool = Field(description="Whether the run waits for a decision now.")
    plan: dict[str, Any] | None
    plan_hash: str | None
    deadline: datetime | None
    seconds_left: float | None
    on_timeout: OnTimeout
    can_approve: bool = Field(description="Whether the calling key may answer this request.")
    reason: str | None = Field(description="Why it may not, when it may not.")
    decision: Decision | None
