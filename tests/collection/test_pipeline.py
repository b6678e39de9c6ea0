"""Executions: what is stored and recorded when a plugin works, fails, hangs or returns garbage."""

from __future__ import annotations

import uuid

import pytest
import structlog
from sqlalchemy import select

from unity.collection.health import Health
from unity.collection.models import PluginExecution, PluginStatus
from unity.components import Components
from unity.core.clock import to_ms
from unity.plugins.service import InstanceRef


async def _instance(c: Components, plugin_id: str, **config: object) -> InstanceRef:
    await c.plugins.set_enabled(plugin_id, tenant_id="default", enabled=True, config=dict(config))
    return await c.plugins.default_instance(plugin_id)


async def _status(c: Components, instance: InstanceRef) -> PluginStatus:
    async with c.database.session() as session:
        row = await session.get(PluginStatus, instance.id)
        assert row is not None
        return row


async def _executions(c: Components, instance: InstanceRef) -> list[PluginExecution]:
    async with c.database.session() as session:
        rows = await session.scalars(
            select(PluginExecution)
            .where(PluginExecution.instance_id == instance.id)
            .order_by(PluginExecution.started_at)
        )
        return list(rows)


async def test_success_stores_samples_snapshot_and_records_execution(
    components: Components,
) -> None:
    c = components
    instance = await _instance(c, "steady", start=10)
    result = await c.pipeline.execute(instance)

    assert result.status == "success"
    assert result.metrics_count == 3
    # samples are committed before execute() returns
    series = await c.store.find_series(
        source_kind="instance", source_id=str(instance.id), name="steady_value"
    )
    assert len(series) == 1
    assert series[0].unit == "count"
    points = await c.store.query(series[0].id, 0, to_ms(result.completed_at) + 1)
    assert [p.value for p in points] == [11.0]
    parts = await c.store.find_series(
        source_id=str(instance.id), name="steady_part", labels={"part": "b"}
    )
    assert len(parts) == 1
    snapshot = await c.store.latest_snapshot(instance.id)
    assert snapshot is not None
    assert snapshot[1] == {"calls": 1}

    [execution] = await _executions(c, instance)
    assert (execution.status, execution.metrics_count, execution.error) == ("success", 3, None)
    assert execution.completed_at is not None
    assert execution.completed_at >= execution.started_at
    status = await _status(c, instance)
    assert status.health == Health.HEALTHY
    assert (status.success_count, status.error_count, status.consecutive_errors) == (1, 0, 0)
    assert status.last_success is not None
    assert status.last_sample_at is not None


async def test_raising_plugin_is_recorded_failed_and_degrades_then_fails(
    components: Components,
) -> None:
    c = components
    instance = await _instance(c, "boom")
    healths = []
    for _ in range(5):
        result = await c.pipeline.execute(instance)
        assert result.status == "failed"
        assert result.error == "RuntimeError: boom"
        healths.append(result.health_after)
    assert healths == [
        Health.UNKNOWN,
        Health.DEGRADED,
        Health.DEGRADED,
        Health.DEGRADED,
        Health.FAILING,
    ]
    status = await _status(c, instance)
    assert (status.consecutive_errors, status.error_count, status.last_error) == (
        5,
        5,
        "RuntimeError: boom",
    )
    assert [e.status for e in await _executions(c, instance)] == ["failed"] * 5


async def test_recovery_after_failures_returns_to_healthy(components: Components) -> None:
    c = components
    instance = await _instance(c, "flaky", fail_times=2)
    assert (await c.pipeline.execute(instance)).health_after is Health.UNKNOWN
    assert (await c.pipeline.execute(instance)).health_after is Health.DEGRADED
    result = await c.pipeline.execute(instance)
    assert result.status == "success"
    assert (result.health_before, result.health_after) == (Health.DEGRADED, Health.HEALTHY)
    assert (await _status(c, instance)).consecutive_errors == 0


async def test_transitions_are_logged_once_each_way(components: Components) -> None:
    c = components
    instance = await _instance(c, "flaky", fail_times=4)
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            await c.pipeline.execute(instance)
    unhealthy = [e for e in logs if e["event"] == "plugin instance unhealthy"]
    recovered = [e for e in logs if e["event"] == "plugin instance recovered"]
    assert len(unhealthy) == 1
    assert unhealthy[0]["health"] == "degraded"
    assert len(recovered) == 1


async def test_retries_within_one_execution(components: Components) -> None:
    c = components
    instance = await _instance(c, "flaky", fail_times=2, retries=2, retry_delay=0)
    result = await c.pipeline.execute(instance)
    assert result.status == "success"
    assert result.attempts == 3
    [execution] = await _executions(c, instance)
    assert execution.attempts == 3


async def test_hanging_plugin_times_out_and_pipeline_goes_on(components: Components) -> None:
    c = components
    instance = await _instance(c, "hang", timeout=0.2)
    result = await c.pipeline.execute(instance)
    assert result.status == "timeout"
    assert result.error == "timed out after 0.2 s"
    # another instance still runs fine afterwards
    ok = await c.pipeline.execute(await _instance(c, "steady"))
    assert ok.status == "success"
    [execution] = await _executions(c, instance)
    assert execution.status == "timeout"


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("dict", "collect() returned dict, expected Collected"),
        ("string_value", "cpu: value 'high' is not a number"),
        ("bad_name", "invalid metric name 'cpu usage'"),
        ("nan", "cpu: value nan is not finite"),
        ("not_a_sample", "Collected.samples holds a tuple, not a Sample"),
        ("bad_snapshot", "snapshot is not JSON-serialisable"),
    ],
)
async def test_malformed_output_is_a_failed_execution_and_stores_nothing(
    components: Components, mode: str, message: str
) -> None:
    c = components
    instance = await _instance(c, "malformed", mode=mode)
    result = await c.pipeline.execute(instance)
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.startswith(message)
    assert await c.store.find_series(source_id=str(instance.id)) == []


async def test_invalid_stored_config_fails_cleanly(components: Components) -> None:
    c = components
    instance = await _instance(c, "steady")
    broken = InstanceRef(
        id=instance.id,
        plugin_id="steady",
        name="default",
        tenant_id="default",
        config={"start": "not a number"},
        interval_s=60,
    )
    result = await c.pipeline.execute(broken)
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.startswith("invalid config")


async def test_published_events(components: Components) -> None:
    c = components
    events: list[tuple[str, dict[str, object]]] = []

    async def publish(event_type: str, data: dict[str, object]) -> None:
        events.append((event_type, data))

    c.pipeline.publish = publish
    instance = await _instance(c, "steady")
    await c.pipeline.execute(instance)
    types = [t for t, _ in events]
    assert types == ["metrics.updated", "execution.completed", "plugin.health_changed"]
    metrics = events[0][1]["metrics"]
    assert metrics == {
        "steady_value": 1.0,
        "steady_part": [
            {"labels": {"part": "a"}, "value": 1.0},
            {"labels": {"part": "b"}, "value": 2.0},
        ],
    }
    execution = events[1][1]["execution"]
    assert isinstance(execution, dict)
    assert execution["success"] is True
    assert execution["metrics_count"] == 3
    assert events[2][1]["from"] == "unknown"
    assert events[2][1]["to"] == "healthy"


async def test_unknown_instance_id_does_not_crash(components: Components) -> None:
    c = components
    assert await c.plugins.instance(uuid.uuid4()) is None


async def test_success_without_samples_is_healthy_but_records_no_data(
    components: Components,
) -> None:
    c = components
    instance = await _instance(c, "silent")
    result = await c.pipeline.execute(instance)
    assert (result.status, result.metrics_count, result.health_after) == (
        "success",
        0,
        Health.HEALTHY,
    )
    status = await _status(c, instance)
    assert status.last_success is not None
    assert status.last_sample_at is None  # so staleness can still see that data stopped
    assert await c.store.find_series(source_id=str(instance.id)) == []
