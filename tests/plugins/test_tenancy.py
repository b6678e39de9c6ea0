"""Two tenants use the same plugin: each has its own instance, health, data and events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.collection.conftest import make_settings
from tests.collection.plugins import make_registry
from unity.components import Components, build_components, close_components


@pytest.fixture
async def c(tmp_path: Path) -> AsyncIterator[Components]:
    built = await build_components(
        make_settings(tmp_path), registry=make_registry(), with_scheduler=False
    )
    yield built
    await close_components(built)


async def test_each_tenant_sees_only_its_own_instances_data_and_executions(c: Components) -> None:
    a = await c.plugins.set_enabled(
        "steady", tenant_id="alpha", enabled=True, config={"start": 100}
    )
    b = await c.plugins.set_enabled("steady", tenant_id="beta", enabled=True, config={"start": 200})
    assert a.id != b.id
    await c.pipeline.execute(a)
    await c.pipeline.execute(a)
    await c.pipeline.execute(b)

    alpha = await c.catalog.detail("steady", tenant_id="alpha")
    beta = await c.catalog.detail("steady", tenant_id="beta")
    assert [i.id for i in alpha.instances] == [a.id]
    assert [i.id for i in beta.instances] == [b.id]
    assert alpha.config == {"start": 100.0}
    nobody = await c.catalog.detail("steady", tenant_id="gamma")
    assert (nobody.instances, nobody.enabled, nobody.config) == ([], False, {})

    latest_a = await c.metrics.latest("steady", tenant_id="alpha", instance_ids=[a.id])
    values_a = {m.metric_name: m.value for m in latest_a.metrics if not m.labels}
    assert values_a == {"steady_value": 102.0}
    latest_b = await c.metrics.latest("steady", tenant_id="beta", instance_ids=[b.id])
    assert {m.instance_id for m in latest_b.metrics} == {str(b.id)}

    _, total_a = await c.collection.executions("steady", tenant_id="alpha")
    _, total_b = await c.collection.executions("steady", tenant_id="beta")
    assert (total_a, total_b) == (2, 1)
    status_b = await c.collection.plugin_status("steady", tenant_id="beta")
    assert (status_b.success_count, [i.instance_id for i in status_b.instances]) == (1, [b.id])

    listed, _ = await c.catalog.list_plugins(tenant_id="beta", enabled=True)
    assert [p.plugin_id for p in listed] == ["steady"]
    listed, _ = await c.catalog.list_plugins(tenant_id="gamma", enabled=True)
    assert listed == []
    summary = await c.collection.summary(tenant_id="alpha")
    assert (summary.instances_total, summary.executions_last_hour) == (1, 2)

    history = await c.metrics.history(
        "steady", instance_ids=[b.id], metric_name="steady_value", start=None, end=None, hours=1
    )
    assert [s.instance_id for s in history.series] == [str(b.id)]


async def test_disabling_in_one_tenant_leaves_the_other_running(c: Components) -> None:
    await c.plugins.set_enabled("steady", tenant_id="alpha", enabled=True)
    await c.plugins.set_enabled("steady", tenant_id="beta", enabled=True)
    await c.plugins.set_enabled("steady", tenant_id="alpha", enabled=False)
    runnable = await c.plugins.runnable_instances()
    assert [r.tenant_id for r in runnable] == ["beta"]


async def test_events_carry_the_tenant(c: Components) -> None:
    events: list[tuple[str, dict[str, object]]] = []

    async def publish(event_type: str, data: dict[str, object]) -> None:
        events.append((event_type, data))

    c.pipeline.publish = publish
    instance = await c.plugins.set_enabled("steady", tenant_id="beta", enabled=True)
    await c.pipeline.execute(instance)
    assert {d["tenant_id"] for _, d in events} == {"beta"}
