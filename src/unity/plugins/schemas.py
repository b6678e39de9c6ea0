"""Request and response models of the plugin API (the OpenAPI spec is generated from them)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from unity.collection.health import Health

HealthName = Literal["unknown", "healthy", "degraded", "failing", "stale"]


class MetricInfo(BaseModel):
    """A metric a plugin declares."""

    name: str
    unit: str
    description: str
    type: Literal["gauge", "counter"]
    labels: list[str]


class StatusOut(BaseModel):
    """Health and counters of one instance."""

    model_config = ConfigDict(from_attributes=True)

    health: HealthName = Health.UNKNOWN.value
    consecutive_errors: int = 0
    error_count: int = 0
    success_count: int = 0
    last_run: datetime | None = None
    last_success: datetime | None = None
    last_sample_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_duration_ms: float | None = None
    health_changed_at: datetime | None = None


class InstanceOut(BaseModel):
    """A configured, scheduled use of a plugin."""

    id: uuid.UUID
    name: str
    tenant_id: str
    enabled: bool
    interval_s: int
    config: dict[str, Any]
    status: StatusOut


class PluginSummary(BaseModel):
    """A plugin in a list."""

    plugin_id: str = Field(examples=["system_info"])
    name: str = Field(examples=["System info"])
    version: str = Field(examples=["1.0.0"])
    kind: str = Field(examples=["collector"])
    category: str = Field(examples=["system"])
    description: str
    source: Literal["builtin", "entrypoint", "installed"]
    verified: bool
    enabled: bool
    broken: bool
    error: str | None = Field(default=None, description="Why the plugin is broken.")
    instance_count: int = Field(description="How many instances it has.")
    health: HealthName | None = Field(
        default=None, description="Worst health of its enabled instances; null when none run."
    )


class PluginDetail(PluginSummary):
    """A plugin with its manifest, config schema, metrics and instances."""

    manifest: dict[str, Any]
    config: dict[str, Any]
    config_schema: dict[str, Any]
    metrics: list[MetricInfo]
    instances: list[InstanceOut]


class EnableRequest(BaseModel):
    """Turn a plugin on or off, optionally with a new config."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"enabled": True, "config": {"collection_interval": 30}},
                {"enabled": False},
            ]
        },
    )

    enabled: bool
    config: dict[str, Any] | None = Field(
        default=None,
        description="Validated against the plugin's config schema; replaces the current config.",
    )


class ExecutionOut(BaseModel):
    """One execution of one instance."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    instance_id: uuid.UUID
    plugin_id: str
    started_at: datetime
    completed_at: datetime | None
    status: Literal["success", "failed", "timeout"]
    metrics_count: int
    duration_ms: float
    attempts: int
    error: str | None


class InstanceStatusOut(StatusOut):
    """Status of one instance, with its identity."""

    instance_id: uuid.UUID
    instance_name: str
    enabled: bool


class PluginStatusOut(BaseModel):
    """Health of a plugin: the worst of its instances, summed counters, latest execution."""

    plugin_id: str
    enabled: bool
    health: HealthName
    error_count: int
    success_count: int
    consecutive_errors: int = Field(description="Highest streak among its instances.")
    last_execution: ExecutionOut | None
    last_success: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    instances: list[InstanceStatusOut]


class LatestSample(BaseModel):
    """The newest value of one series."""

    metric_name: str
    labels: dict[str, str]
    value: float
    timestamp: datetime
    unit: str | None
    instance_id: str


class LatestMetricsOut(BaseModel):
    """Latest samples of a plugin, plus its latest snapshot."""

    plugin_id: str
    timestamp: datetime | None = Field(description="Time of the newest sample.")
    metrics: list[LatestSample]
    snapshot: dict[str, Any] | None
    snapshot_timestamp: datetime | None


class HistoryPoint(BaseModel):
    """One point; rollup points also carry min, max and count of their bucket."""

    ts: datetime
    value: float
    min: float | None = None
    max: float | None = None
    count: int | None = None


class HistorySeries(BaseModel):
    """Points of one series."""

    metric_name: str
    labels: dict[str, str]
    unit: str | None
    instance_id: str
    points: list[HistoryPoint]


class HistoryOut(BaseModel):
    """A range of a plugin's metrics at the resolution picked for the span."""

    plugin_id: str
    start: datetime
    end: datetime
    resolution: Literal["raw", "1m", "1h"]
    step_s: float | None
    series: list[HistorySeries]


class StatsSummary(BaseModel):
    """Figures for the dashboard's front page."""

    plugins_total: int
    plugins_enabled: int
    plugins_broken: int
    instances_total: int = Field(description="The tenant's instances, enabled or not.")
    instances_by_health: dict[str, int] = Field(description="Enabled instances by health.")
    series_total: int
    samples_stored: int
    executions_last_hour: int
    success_rate_last_hour: float | None = Field(description="0..1; null with no executions.")
    database: Literal["sqlite", "postgresql"]
    database_size_bytes: int


class CategoryOut(BaseModel):
    """A plugin category and how many plugins it holds."""

    category: str
    plugins: int
    enabled: int
