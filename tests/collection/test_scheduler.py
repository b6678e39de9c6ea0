"""The scheduler: jobs per instance, live rescheduling, no overlaps, staleness."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.collection.conftest import make_settings
from tests.collection.plugins import Slow, make_registry
from tests.fakes import WallClockFrom
from unity.collection.health import Health
from unity.collection.models import PluginExecution, PluginStatus
from unity.components import Components, build_components, close_components


async def wait_until(
    condition: Callable[[], Awaitable[bool]], within: float = 15.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def execution_count(c: Components, plugin_id: str) -> int:
    async with c.database.session() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(PluginExecution)
            .where(PluginExecution.plugin_id == plugin_id)
        )
        return int(count or 0)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Components]:
    clock = WallClockFrom()
    built = await build_components(
        make_settings(tmp_path, stale_check_interval_s=3600), clock=clock, registry=make_registry()
    )
    assert built.scheduler is not None
    yield built
    await close_components(built)


async def test_enabled_instance_runs_on_its_interval_and_stops_when_disabled(
    running: Components,
) -> None:
    c = running
    assert c.scheduler is not None
    assert c.scheduler.state == "running"
    await c.plugins.set_enabled(
        "steady", tenant_id="default", enabled=True, config={"collection_interval": 1}
    )
    assert len(c.scheduler.job_ids()) == 1
    await wait_until(lambda: _at_least(c, "steady", 2), what="two executions")

    await c.plugins.set_enabled("steady", tenant_id="default", enabled=False)
    assert c.scheduler.job_ids() == set()
    settled = await execution_count(c, "steady")
    await asyncio.sleep(1.5)
    assert await execution_count(c, "steady") == settled


async def test_reconfiguring_reschedules_without_restart(running: Components) -> None:
    c = running
    assert c.scheduler is not None
    await c.plugins.set_enabled(
        "steady",
        tenant_id="default",
        enabled=True,
        config={"collection_interval": 3600, "start": 0},
    )
    await wait_until(lambda: _at_least(c, "steady", 1), what="first run at once")
    await c.plugins.set_enabled(
        "steady", tenant_id="default", enabled=True, config={"collection_interval": 1, "start": 100}
    )
    instance = await c.plugins.default_instance("steady")
    assert instance.interval_s == 1
    await wait_until(lambda: _at_least(c, "steady", 3), what="runs on the new interval")
    [series] = await c.store.find_series(source_id=str(instance.id), name="steady_value")
    latest = await c.store.latest([series.id])
    assert latest[series.id].value > 100  # the new config reached the plugin


async def test_never_two_overlapping_executions(running: Components) -> None:
    c = running
    assert c.scheduler is not None
    Slow.max_running = 0
    Slow.finished = 0
    await c.plugins.set_enabled(
        "slow", tenant_id="default", enabled=True, config={"collection_interval": 1, "delay": 1.5}
    )
    instance = await c.plugins.default_instance("slow")
    # an on-demand run while the scheduled one may be running waits for it
    await asyncio.gather(c.scheduler.run_now(instance), c.scheduler.run_now(instance))
    await wait_until(lambda: _finished(3), within=20, what="three slow runs")
    assert Slow.max_running == 1


async def test_startup_schedules_existing_enabled_instances(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    first = await build_components(settings, registry=make_registry(), with_scheduler=False)
    await first.plugins.set_enabled(
        "steady", tenant_id="default", enabled=True, config={"collection_interval": 1}
    )
    await close_components(first)

    second = await build_components(settings, registry=make_registry())
    try:
        assert second.scheduler is not None
        assert len(second.scheduler.job_ids()) == 1
        await wait_until(lambda: _at_least(second, "steady", 1), what="a run after restart")
    finally:
        await close_components(second)


async def test_instance_without_data_for_three_intervals_turns_stale(running: Components) -> None:
    c = running
    assert c.scheduler is not None
    await c.plugins.set_enabled(
        "steady", tenant_id="default", enabled=True, config={"collection_interval": 3600}
    )
    await wait_until(lambda: _at_least(c, "steady", 1), what="first run")
    instance = await c.plugins.default_instance("steady")
    assert await c.scheduler.check_stale() == []

    assert isinstance(c.clock, WallClockFrom)
    c.clock.offset_s = 3 * 3600 + 1  # three intervals without data
    events: list[tuple[str, dict[str, object]]] = []

    async def publish(event_type: str, data: dict[str, object]) -> None:
        events.append((event_type, data))

    c.scheduler.publish = publish
    assert await c.scheduler.check_stale() == [instance.id]
    async with c.database.session() as session:
        status = await session.get(PluginStatus, instance.id)
        assert status is not None
        assert status.health == Health.STALE
    assert events == [
        (
            "plugin.health_changed",
            {
                "plugin_id": "steady",
                "instance_id": str(instance.id),
                "tenant_id": "default",
                "from": "healthy",
                "to": "stale",
            },
        )
    ]
    # data flowing again ends staleness
    result = await c.scheduler.run_now(instance)
    assert result.health_after is Health.HEALTHY


async def test_failing_plugin_does_not_stop_the_scheduler(running: Components) -> None:
    c = running
    await c.plugins.set_enabled(
        "boom", tenant_id="default", enabled=True, config={"collection_interval": 1}
    )
    await c.plugins.set_enabled(
        "steady", tenant_id="default", enabled=True, config={"collection_interval": 1}
    )
    await wait_until(lambda: _at_least(c, "boom", 3), what="boom keeps being scheduled")
    await wait_until(lambda: _at_least(c, "steady", 3), what="steady keeps running")
    instance = await c.plugins.default_instance("boom")
    async with c.database.session() as session:
        status = await session.get(PluginStatus, instance.id)
        assert status is not None
        assert status.health in (Health.DEGRADED, Health.FAILING)


async def _at_least(c: Components, plugin_id: str, n: int) -> bool:
    return await execution_count(c, plugin_id) >= n


async def _finished(n: int) -> bool:
    return Slow.finished >= n
