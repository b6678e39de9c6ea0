"""``/api/plugins``: what a client of the REST API sees."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.api_client import app_client
from unity.components import Components

Client = tuple[httpx.AsyncClient, Components]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Client]:
    """The API without a scheduler: executions happen only when a test runs them."""
    async with app_client(tmp_path, role="api") as pair:
        yield pair


@pytest.fixture
async def scheduled_api(tmp_path: Path) -> AsyncIterator[Client]:
    """The API with the scheduler running, as ``unity serve`` has it."""
    async with app_client(tmp_path) as pair:
        yield pair


async def _enable(client: httpx.AsyncClient, plugin_id: str, **config: object) -> dict[str, object]:
    response = await client.post(
        f"/api/plugins/{plugin_id}/enable",
        json={"enabled": True, "config": {"collection_interval": 3600, **config}},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _run(c: Components, plugin_id: str, times: int = 1) -> None:
    instance = await c.plugins.default_instance(plugin_id)
    for _ in range(times):
        await c.pipeline.execute(instance)


async def test_list_filters_and_pages(api: Client) -> None:
    client, _ = api
    body = (await client.get("/api/plugins", params={"limit": 3})).json()
    assert body["total"] == 8
    assert (body["skip"], body["limit"]) == (0, 3)
    assert [p["plugin_id"] for p in body["items"]] == ["boom", "firehose", "flaky"]
    await _enable(client, "steady")
    enabled = (await client.get("/api/plugins", params={"enabled": "true"})).json()
    assert [p["plugin_id"] for p in enabled["items"]] == ["steady"]
    assert enabled["items"][0]["instance_count"] == 1
    assert (await client.get("/api/plugins", params={"category": "nope"})).json()["total"] == 0
    assert (await client.get("/api/plugins", params={"kind": "collector"})).json()["total"] == 8


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 101}, {"skip": -1}, {"kind": "nonsense"}, {"enabled": "maybe"}],
)
async def test_bad_list_parameters_are_422_problems(api: Client, params: dict[str, object]) -> None:
    client, _ = api
    response = await client.get("/api/plugins", params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"]


async def test_detail_has_schema_metrics_and_instances(api: Client) -> None:
    client, _ = api
    await _enable(client, "steady", start=5)
    body = (await client.get("/api/plugins/steady")).json()
    assert body["config_schema"]["properties"]["start"]["type"] == "number"
    assert body["metrics"] == [
        {
            "name": "steady_value",
            "unit": "count",
            "description": "calls so far",
            "type": "gauge",
            "labels": [],
        }
    ]
    [instance] = body["instances"]
    assert instance["name"] == "default"
    assert instance["config"]["start"] == 5
    assert instance["status"]["health"] == "unknown"


async def test_unknown_plugin_is_404_everywhere(api: Client) -> None:
    client, _ = api
    for path in ("", "/status", "/metrics", "/metrics/history", "/executions"):
        response = await client.get(f"/api/plugins/nope{path}")
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == "unknown plugin 'nope'"
    response = await client.post("/api/plugins/nope/enable", json={"enabled": True})
    assert response.status_code == 404


async def test_enable_validates_config_with_failing_fields(scheduled_api: Client) -> None:
    client, c = scheduled_api
    response = await client.post(
        "/api/plugins/steady/enable", json={"enabled": True, "config": {"start": "abc", "bogus": 1}}
    )
    assert response.status_code == 422
    problem = response.json()
    locs = {tuple(e["loc"]) for e in problem["errors"]}
    assert locs == {("config", "start"), ("config", "bogus")}
    # nothing changed
    assert (await client.get("/api/plugins/steady")).json()["enabled"] is False
    assert c.scheduler is not None
    assert c.scheduler.job_ids() == set()


@pytest.mark.parametrize(
    "body",
    [{}, {"enabled": "yes please"}, {"enabled": True, "config": [1]}, {"enabled": True, "x": 1}],
)
async def test_malformed_enable_body_is_422(api: Client, body: dict[str, object]) -> None:
    client, _ = api
    response = await client.post("/api/plugins/steady/enable", json=body)
    assert response.status_code == 422


async def test_enable_schedules_and_disable_unschedules(scheduled_api: Client) -> None:
    client, c = scheduled_api
    assert c.scheduler is not None
    await _enable(client, "steady")
    assert len(c.scheduler.job_ids()) == 1
    response = await client.post("/api/plugins/steady/enable", json={"enabled": False})
    assert response.json()["enabled"] is False
    assert c.scheduler.job_ids() == set()


async def test_status_latest_history_and_executions(api: Client) -> None:
    client, c = api
    await _enable(client, "steady")
    await _enable(client, "flaky", fail_times=2)
    await _run(c, "steady", times=3)
    await _run(c, "flaky", times=2)

    status = (await client.get("/api/plugins/flaky/status")).json()
    assert status["health"] == "degraded"
    assert (status["error_count"], status["consecutive_errors"]) == (2, 2)
    assert status["last_error"] == "ConnectionError: attempt 2 failed"
    assert status["last_execution"]["status"] == "failed"

    latest = (await client.get("/api/plugins/steady/metrics")).json()
    values = {
        (m["metric_name"], tuple(sorted(m["labels"].items()))): m["value"]
        for m in latest["metrics"]
    }
    assert values[("steady_value", ())] == 3.0
    assert values[("steady_part", (("part", "b"),))] == 2.0
    assert latest["snapshot"] == {"calls": 3}
    assert (
        len(
            (await client.get("/api/plugins/steady/metrics", params={"limit": 1})).json()["metrics"]
        )
        == 1
    )

    history = (
        await client.get(
            "/api/plugins/steady/metrics/history",
            params={"metric_name": "steady_value", "hours": 1},
        )
    ).json()
    assert history["resolution"] == "raw"
    [series] = history["series"]
    assert [p["value"] for p in series["points"]] == [1.0, 2.0, 3.0]
    by_label = (
        await client.get(
            "/api/plugins/steady/metrics/history",
            params={"metric_name": "steady_part", "label": "part:a"},
        )
    ).json()
    assert [s["labels"] for s in by_label["series"]] == [{"part": "a"}]
    rolled = (
        await client.get(
            "/api/plugins/steady/metrics/history",
            params={"metric_name": "steady_value", "resolution": "1m"},
        )
    ).json()
    [bucket] = rolled["series"][0]["points"]  # three runs within one minute
    assert (bucket["count"], bucket["min"], bucket["max"], bucket["value"]) == (3, 1.0, 3.0, 2.0)

    executions = (await client.get("/api/plugins/steady/executions", params={"limit": 2})).json()
    assert executions["total"] == 3
    assert len(executions["items"]) == 2
    started = [e["started_at"] for e in executions["items"]]
    assert started == sorted(started, reverse=True)
    failed = (await client.get("/api/plugins/flaky/executions", params={"status": "failed"})).json()
    assert failed["total"] == 2


async def test_status_cache_is_invalidated_by_an_execution(api: Client) -> None:
    client, c = api
    await _enable(client, "steady")
    before = (await client.get("/api/plugins/steady/status")).json()
    assert before["success_count"] == 0
    await _run(c, "steady")
    after = (await client.get("/api/plugins/steady/status")).json()
    assert after["success_count"] == 1
    assert after["health"] == "healthy"


@pytest.mark.parametrize(
    "params",
    [
        {"hours": 0},
        {"hours": -5},
        {"step": 0},
        {"resolution": "5m"},
        {"label": "nocolon"},
        {"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
        {"start": "2026-01-01T00:00:00"},
        {"start": "yesterday"},
        {"start": "0.5"},
        {"end": "1700000000"},
        {"instance_id": "not-a-uuid"},
    ],
)
async def test_bad_history_parameters_are_4xx(api: Client, params: dict[str, object]) -> None:
    client, _ = api
    response = await client.get("/api/plugins/steady/metrics/history", params=params)
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_summary_and_categories(api: Client) -> None:
    client, c = api
    await _enable(client, "steady")
    await _enable(client, "boom")
    await _run(c, "steady")
    await _run(c, "boom", times=2)
    await c.cache.delete("dashboard:summary")
    summary = (await client.get("/api/plugins/stats/summary")).json()
    assert summary["plugins_total"] == 8
    assert summary["plugins_enabled"] == 2
    assert summary["instances_total"] == 2
    assert summary["instances_by_health"]["healthy"] == 1
    assert summary["instances_by_health"]["degraded"] == 1
    assert summary["executions_last_hour"] == 3
    assert summary["success_rate_last_hour"] == pytest.approx(1 / 3)
    assert summary["samples_stored"] == 3
    assert summary["database"] == "sqlite"
    assert summary["database_size_bytes"] > 0

    categories = (await client.get("/api/plugins/categories/list")).json()
    assert categories == [{"category": "test", "plugins": 8, "enabled": 2}]


async def test_health_endpoint(scheduled_api: Client) -> None:
    client, c = scheduled_api
    body = (await client.get("/health")).json()
    assert body["status"] == "healthy"
    assert (body["database"], body["scheduler"]) == ("ok", "running")
    assert c.scheduler is not None
    await c.scheduler.shutdown()
    response = await client.get("/health")
    assert response.status_code == 503
    assert response.json()["reason"] == "scheduler is not running"


async def test_prometheus_exposition(api: Client) -> None:
    client, c = api
    await _enable(client, "steady")
    await _run(c, "steady", times=2)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert 'unity_executions_total{status="success"} 2.0' in text
    assert "unity_samples_written_total 6.0" in text
    assert "unity_writer_lag_seconds" in text
    assert 'steady_value{instance="default",plugin="steady"} 2.0' in text
    assert 'steady_part{instance="default",part="b",plugin="steady"} 2.0' in text


async def test_health_without_scheduler_in_this_process(api: Client) -> None:
    client, _ = api
    body = (await client.get("/health")).json()
    assert (body["status"], body["scheduler"]) == ("healthy", "disabled")
