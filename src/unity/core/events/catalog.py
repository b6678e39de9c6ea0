"""The event catalog: every event type Unity publishes, its category and its payload schema.

Names are dotted, ``<category>.<what happened>``. A payload is a JSON object described by a
Pydantic model; ``EventType.schema()`` gives its JSON Schema, which the webhooks API lists
and the docs show. The bus does not validate payloads when publishing (that would cost
every publish a model validation); the test suite checks that what producers publish
validates against these models, so the catalog and the producers cannot drift apart.

Subscribers (the bus, webhooks) select types with patterns: ``"*"`` (everything),
``"run.*"`` (a category) or an exact name; see :func:`matches` and :func:`check_pattern`.

This module imports no domain: the value sets it repeats (plugin health, run status) are
kept equal to the domains' own by tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CATALOG",
    "CATEGORIES",
    "EventType",
    "Payload",
    "RunStatus",
    "check_pattern",
    "matches",
]

Health = Literal["unknown", "healthy", "degraded", "failing", "stale"]
RunStatus = Literal[
    "pending",
    "analyzing",
    "awaiting_approval",
    "approved",
    "rejected",
    "timed_out",
    "running",
    "completed",
    "failed",
    "cancelled",
]


class Payload(BaseModel):
    """Base of every payload model: unknown fields are an error, so the schema stays complete."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- plugins -------------------------------------------------------------------------------


class PluginPayload(Payload):
    plugin_id: str = Field(description="The plugin's slug, e.g. system_info.")


class PluginInstalled(PluginPayload):
    name: str
    version: str
    kind: str = Field(description="collector, action, notifier, exporter, transform, ...")
    category: str
    source: Literal["builtin", "entrypoint", "installed"]
    verified: bool


class PluginUpdated(PluginPayload):
    name: str
    version: str
    previous_version: str


class PluginUninstalled(PluginPayload):
    version: str


class PluginToggled(PluginPayload):
    name: str


class InstancePayload(PluginPayload):
    instance_id: str = Field(description="UUID of the plugin instance.")
    tenant_id: str | None


class HealthChanged(InstancePayload):
    from_: Health = Field(alias="from", description="Health before the change.")
    to: Health = Field(description="Health after the change.")


# --- collection ----------------------------------------------------------------------------


class ExecutionInfo(Payload):
    id: str = Field(description="UUID of the execution record.")
    success: bool
    status: Literal["success", "failed", "timeout"]
    duration_ms: float
    metrics_count: int = Field(description="Samples the execution produced.")
    error: str | None
    started_at: datetime


class ExecutionFinished(InstancePayload):
    execution: ExecutionInfo


class LabelledValue(Payload):
    labels: dict[str, str]
    value: float


class MetricsUpdated(InstancePayload):
    timestamp: datetime = Field(description="When the collection started.")
    metrics: dict[str, float | list[LabelledValue]] = Field(
        description="Unlabelled metrics as name -> value; labelled ones as name -> "
        "[{labels, value}, ...]."
    )


# --- alerts --------------------------------------------------------------------------------


class AlertPayload(Payload):
    rule_id: str
    rule_name: str
    tenant_id: str | None
    severity: str = Field(description="info, warning or critical.")
    metric_name: str
    plugin_id: str | None
    instance_id: str | None
    labels: dict[str, str] = Field(description="Labels of the series the rule fired on.")
    operator: str = Field(description="One of > >= < <= == !=.")
    threshold: float
    value: float | None = Field(description="The value that triggered or resolved the alert.")
    message: str
    timestamp: datetime


# --- runs ----------------------------------------------------------------------------------


class RunPayload(Payload):
    run_id: str
    task_id: str
    tenant_id: str | None
    status: RunStatus


class RunCreated(RunPayload):
    action: str = Field(description="plugin_id of the action plugin the task runs.")


class RunPlanReady(RunPayload):
    plan: dict[str, Any]
    plan_hash: str


class RunApprovalRequired(RunPayload):
    plan_hash: str
    expires_at: datetime | None = Field(description="When the approval times out.")


class RunDecision(RunPayload):
    feedback: str | None
    decided_by: str | None = Field(description="Id of the API key that decided, if any.")


class RunProgress(RunPayload):
    step: int
    total: int | None
    percent: float | None = Field(default=None, description="0-100 when the action knows it.")
    message: str


class RunCompleted(RunPayload):
    result: dict[str, Any] | None


class RunFailed(RunPayload):
    error: str


class RunCancelled(RunPayload):
    reason: str | None


class RunTimedOut(RunPayload):
    on_timeout: Literal["reject", "approve"]


# --- exports, keys, webhooks ---------------------------------------------------------------


class ExportCompleted(Payload):
    export_id: str
    tenant_id: str | None
    format: str
    rows: int
    size_bytes: int
    location: str = Field(description="Where the export can be fetched.")


class ApiKeyPayload(Payload):
    key_id: str
    name: str
    prefix: str = Field(description="The key's public prefix (never the secret).")
    tenant_id: str | None
    scopes: list[str]


class ApiKeyRotated(ApiKeyPayload):
    previous_prefix: str


class WebhookDisabled(Payload):
    webhook_id: str
    name: str
    url: str
    tenant_id: str | None
    reason: str = Field(description="Why delivery stopped, e.g. the endpoint answered 410.")


class WebhookTest(Payload):
    webhook_id: str
    message: str


# --- the catalog ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventType:
    """One kind of event: its dotted name, category, meaning and payload model."""

    name: str
    category: str
    description: str
    payload_model: type[Payload]

    def __post_init__(self) -> None:
        if self.name.partition(".")[0] != self.category:
            raise ValueError(f"event {self.name!r} is not in category {self.category!r}")

    def schema(self) -> dict[str, Any]:
        """The JSON Schema of this event's ``data``."""
        return self.payload_model.model_json_schema()

    def validate(self, data: Mapping[str, Any]) -> Payload:
        """``data`` parsed by the payload model; raises ``pydantic.ValidationError`` if it does not fit."""
        return self.payload_model.model_validate(data)


_TYPES = (
    EventType("plugin.installed", "plugin", "A plugin became known to Unity.", PluginInstalled),
    EventType(
        "plugin.updated", "plugin", "A plugin was replaced by another version.", PluginUpdated
    ),
    EventType("plugin.uninstalled", "plugin", "A plugin was removed.", PluginUninstalled),
    EventType("plugin.enabled", "plugin", "A plugin was enabled.", PluginToggled),
    EventType("plugin.disabled", "plugin", "A plugin was disabled.", PluginToggled),
    EventType(
        "plugin.health_changed",
        "plugin",
        "A plugin instance's health changed (unknown, healthy, degraded, failing, stale).",
        HealthChanged,
    ),
    EventType(
        "execution.completed",
        "execution",
        "A plugin instance ran successfully.",
        ExecutionFinished,
    ),
    EventType(
        "execution.failed",
        "execution",
        "A plugin instance's run failed or timed out.",
        ExecutionFinished,
    ),
    EventType(
        "metrics.updated",
        "metrics",
        "A successful run stored new samples for a plugin instance.",
        MetricsUpdated,
    ),
    EventType("alert.triggered", "alert", "An alert rule started firing.", AlertPayload),
    EventType("alert.resolved", "alert", "A firing alert rule cleared.", AlertPayload),
    EventType("run.created", "run", "A task run was created.", RunCreated),
    EventType("run.analysis_started", "run", "A run started planning.", RunPayload),
    EventType("run.plan_ready", "run", "A run's plan is ready.", RunPlanReady),
    EventType(
        "run.approval_required",
        "run",
        "A run's plan waits for a human decision.",
        RunApprovalRequired,
    ),
    EventType("run.approved", "run", "A run's plan was approved.", RunDecision),
    EventType("run.rejected", "run", "A run's plan was rejected.", RunDecision),
    EventType("run.progress", "run", "A run applied one more step.", RunProgress),
    EventType("run.completed", "run", "A run finished successfully.", RunCompleted),
    EventType("run.failed", "run", "A run stopped with an error.", RunFailed),
    EventType("run.cancelled", "run", "A run was cancelled.", RunCancelled),
    EventType(
        "run.timed_out",
        "run",
        "Nobody decided on a run's plan in time; the task's on_timeout applied.",
        RunTimedOut,
    ),
    EventType("export.completed", "export", "A data export is ready to download.", ExportCompleted),
    EventType("api_key.created", "api_key", "An API key was created.", ApiKeyPayload),
    EventType("api_key.rotated", "api_key", "An API key's secret was replaced.", ApiKeyRotated),
    EventType("api_key.revoked", "api_key", "An API key was revoked.", ApiKeyPayload),
    EventType(
        "webhook.disabled",
        "webhook",
        "A webhook stopped receiving deliveries (410 Gone or too many failures).",
        WebhookDisabled,
    ),
    EventType("webhook.test", "webhook", "A test delivery requested through the API.", WebhookTest),
)

CATALOG: Mapping[str, EventType] = MappingProxyType({t.name: t for t in _TYPES})
"""Every event type by name."""

CATEGORIES: frozenset[str] = frozenset(t.category for t in _TYPES)
"""Every category, the part of a name before the dot."""


def matches(pattern: str, type: str) -> bool:
    """Whether the event type ``type`` is selected by ``pattern`` (``"*"``, ``"run.*"`` or a name)."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return type.startswith(pattern[:-1])
    return pattern == type


def check_pattern(pattern: str) -> str:
    """``pattern`` unchanged if it selects something in the catalog; ``ValueError`` otherwise.

    Catches typos such as ``"runs.*"`` or ``"metric.updated"`` where a subscription or a
    webhook is declared, instead of silently receiving nothing.
    """
    if pattern == "*" or pattern in CATALOG:
        return pattern
    if pattern.endswith(".*") and pattern[:-2] in CATEGORIES:
        return pattern
    raise ValueError(
        f"unknown event type or pattern {pattern!r}: use '*', '<category>.*' "
        f"({', '.join(sorted(CATEGORIES))}) or an event name"
    )
