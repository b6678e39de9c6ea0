"""The event catalog: complete, consistent with the domains, and matching what producers publish."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import ValidationError

from tests.collection.plugins import make_registry
from unity.collection.health import Health
from unity.components import build_components, close_components
from unity.config import Settings
from unity.core.events import CATALOG, CATEGORIES, Event, MemoryEventBus, check_pattern, matches
from unity.core.events import catalog as catalog_module
from unity.runs.states import STATUSES

DESIGNED = {
    *(
        f"plugin.{x}"
        for x in ("installed", "updated", "uninstalled", "enabled", "disabled", "health_changed")
    ),
    "execution.completed",
    "execution.failed",
    "metrics.updated",
    "alert.triggered",
    "alert.resolved",
    *(
        f"run.{x}"
        for x in (
            "created",
            "analysis_started",
            "plan_ready",
            "approval_required",
            "approved",
            "rejected",
            "progress",
            "completed",
            "failed",
            "cancelled",
            "timed_out",
        )
    ),
    "export.completed",
    "api_key.created",
    "api_key.rotated",
    "api_key.revoked",
    "webhook.disabled",
    "webhook.test",
}


def test_catalog_names_every_designed_event_type() -> None:
    assert set(CATALOG) == DESIGNED
    assert {"plugin", "execution", "metrics", "alert", "run", "export", "api_key", "webhook"} == (
        CATEGORIES
    )


@pytest.mark.parametrize("name", sorted(DESIGNED))
def test_each_type_documents_its_payload(name: str) -> None:
    event_type = CATALOG[name]
    assert event_type.name == name
    assert event_type.category == name.split(".")[0]
    assert event_type.description
    schema = event_type.schema()
    assert schema["type"] == "object"
    assert schema["properties"]
    json.dumps(schema)


def test_health_values_are_the_collection_domains() -> None:
    assert set(get_args(catalog_module.Health)) == {h.value for h in Health}


def test_run_status_values_are_the_run_state_machines() -> None:
    assert set(get_args(catalog_module.RunStatus)) == set(STATUSES)


def test_health_changed_payload_is_from_and_to() -> None:
    health_changed = CATALOG["plugin.health_changed"]
    assert {"from", "to"} <= set(health_changed.schema()["properties"])
    base = {"plugin_id": "http_check", "instance_id": "i-1", "tenant_id": "default"}
    health_changed.validate({**base, "from": "healthy", "to": "degraded"})
    with pytest.raises(ValidationError):
        health_changed.validate({**base, "from": "healthy", "to": "sleepy"})
    with pytest.raises(ValidationError):
        health_changed.validate({**base, "from": "healthy", "to": "stale", "extra": 1})


@pytest.mark.parametrize(
    ("pattern", "type", "expected"),
    [
        ("*", "run.created", True),
        ("run.*", "run.created", True),
        ("run.*", "run.timed_out", True),
        ("run.*", "runner.created", False),
        ("run.*", "alert.triggered", False),
        ("alert.triggered", "alert.triggered", True),
        ("alert.triggered", "alert.resolved", False),
        ("alert", "alert.triggered", False),
    ],
)
def test_matches(pattern: str, type: str, expected: bool) -> None:
    assert matches(pattern, type) is expected


@pytest.mark.parametrize("pattern", ["*", "run.*", "api_key.*", "metrics.updated"])
def test_check_pattern_accepts_what_selects_something(pattern: str) -> None:
    assert check_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern", ["runs.*", "metric.updated", "run", "", "run.**", "*.created"])
def test_check_pattern_refuses_what_selects_nothing(pattern: str) -> None:
    with pytest.raises(ValueError, match="unknown event type or pattern"):
        check_pattern(pattern)


async def test_collection_pipeline_publishes_payloads_that_fit_the_catalog(
    tmp_path: Path,
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", autoenable_plugins=[], writer_flush_interval_s=0.02
    )
    components = await build_components(settings, registry=make_registry(), with_scheduler=False)
    bus = MemoryEventBus()
    subscription = bus.subscribe()

    async def publish(type: str, data: dict[str, Any]) -> None:
        await bus.publish(type, data, tenant_id=data.get("tenant_id"))

    components.pipeline.publish = publish
    try:
        for plugin_id, runs in (("steady", 2), ("boom", 2)):
            await components.plugins.set_enabled(
                plugin_id, tenant_id="default", enabled=True, config={}
            )
            instance = await components.plugins.default_instance(plugin_id)
            for _ in range(runs):
                await components.pipeline.execute(instance)
    finally:
        await close_components(components)

    events: list[Event] = []
    while len(events) < bus.last_seq:
        item = await subscription.get()
        assert isinstance(item, Event)
        events.append(item)
    assert {e.type for e in events} == {
        "metrics.updated",
        "execution.completed",
        "execution.failed",
        "plugin.health_changed",
    }
    for event in events:
        CATALOG[event.type].validate(event.data)
