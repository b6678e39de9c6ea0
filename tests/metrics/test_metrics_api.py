"""``/api/metrics``: run metrics recorded by the engine, instance series, tenant scoping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeClock
from tests.runs.server import RunServer, next_event, run_server
from unity.core.clock import to_ms
from unity.metrics.store import SeriesKey
from unity.metrics.writer import PendingSample


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunServer]:
    async with run_server(tmp_path / "data", clock=FakeClock()) as s:
        yield s


async def completed_run(server: RunServer, task_id: str) -> str:
    with server.events() as events:
        response = await server.client.post("/api/runs/", json={"task_id": task_id})
        run_id = str(response.json()["id"])
        await next_event(events, run_id, "run.completed")
    return run_id


async def auto_task(server: RunServer, names: list[str]) -> dict[str, Any]:
    response = await server.client.post(
        "/api/tasks/",
        json={
            "name": "auto",
            "action": "write_files",
            "params": {"names": names},
            "require_approval": False,
        },
    )
    return dict(response.json())


async def test_runs_record_their_metrics(server: RunServer) -> None:
    task = await auto_task(server, ["a", "b", "c"])
    first = await completed_run(server, task["id"])
    second = await completed_run(server, task["id"])
    await server.components.writer.flush()

    listed = (
        await server.client.get("/api/metrics/", params={"run_id": first, "limit": 100})
    ).json()
    by_name = {item["name"]: item for item in listed["items"]}
    assert set(by_name) == {"duration_ms", "steps", "tokens", "plan_duration_ms", "bytes_written"}
    steps = by_name["steps"]
    assert (steps["source_kind"], steps["source_id"], steps["plugin_id"]) == (
        "run",
        first,
        "write_files",
    )
    assert steps["labels"] == {"task_id": task["id"]}
    assert steps["latest"]["value"] == 3.0
    assert by_name["tokens"]["latest"]["value"] == 42.0
    assert by_name["duration_ms"]["unit"] == "ms"

    only = (await server.client.get("/api/metrics/", params={"name": "steps"})).json()
    assert only["total"] == 2
    assert {item["source_id"] for item in only["items"]} == {first, second}
    assert (await server.client.get("/api/metrics/", params={"plugin_id": "write_files"})).json()[
        "total"
    ] == 10
    assert (
        await server.client.get("/api/metrics/", params={"task_id": task["id"], "limit": 3})
    ).json()["total"] == 10

    detail = (await server.client.get(f"/api/metrics/{steps['id']}")).json()
    assert detail["summary"] == {
        "count": 1,
        "min": 3.0,
        "max": 3.0,
        "avg": 3.0,
        "last": 3.0,
        "last_ts": detail["latest"]["ts"],
    }

    summary = (await server.client.get(f"/api/metrics/task/{task['id']}/summary")).json()
    assert summary["source"] == "task"
    metrics = {m["name"]: m for m in summary["metrics"]}
    assert metrics["steps"]["count"] == 2
    assert metrics["steps"]["series"] == 2
    assert (metrics["steps"]["min"], metrics["steps"]["max"], metrics["steps"]["avg"]) == (
        3.0,
        3.0,
        3.0,
    )
    assert metrics["duration_ms"]["count"] == 2
    assert metrics["duration_ms"]["min"] <= metrics["duration_ms"]["avg"]
    run_summary = (await server.client.get(f"/api/metrics/run/{second}/summary")).json()
    assert {m["name"] for m in run_summary["metrics"]} == set(by_name)
    assert all(m["count"] == 1 for m in run_summary["metrics"])

    # deleting a run deletes its series
    assert (await server.client.delete(f"/api/runs/{first}")).status_code == 204
    assert (await server.client.get(f"/api/metrics/{steps['id']}")).status_code == 404
    assert (await server.client.get("/api/metrics/", params={"run_id": first})).json()["total"] == 0


async def test_unknown_ids_are_404(server: RunServer) -> None:
    zero = "00000000-0000-0000-0000-000000000000"
    assert (await server.client.get(f"/api/metrics/task/{zero}/summary")).status_code == 404
    assert (await server.client.get(f"/api/metrics/run/{zero}/summary")).status_code == 404
    assert (await server.client.get("/api/metrics/999999")).status_code == 404
    assert (await server.client.get("/api/metrics/0")).status_code == 422
    assert (await server.client.get("/api/metrics/", params={"limit": 101})).status_code == 422


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.external_service)])
async def any_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunServer]:
    """A server on SQLite, then on PostgreSQL (the tenant scope casts UUIDs per dialect)."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    async with run_server(tmp_path / "data", clock=FakeClock(), database_url=url) as s:
        yield s


async def test_series_are_scoped_to_the_tenant(any_backend: RunServer) -> None:
    server = any_backend
    c = server.components
    await c.tenants.create(tenant_id="beta", name="Beta")
    _, beta_key = await c.keys.create(tenant_id="beta", name="beta", scopes=["metrics:read"])
    beta = {"authorization": f"Bearer {beta_key}"}
    task = await auto_task(server, ["a"])
    run_id = await completed_run(server, task["id"])
    ours = await c.plugins.default_instance("steady", "default")
    theirs = await c.plugins.default_instance("steady", "beta")
    now = to_ms(c.clock.now())
    samples = [
        PendingSample(
            SeriesKey.of(
                "steady_value", source_kind="instance", source_id=str(i.id), plugin_id="steady"
            ),
            now,
            value,
        )
        for i, value in ((ours, 1.0), (theirs, 2.0))
    ]
    await asyncio.shield(await c.writer.submit(samples))

    mine = (await server.client.get("/api/metrics/", params={"limit": 100})).json()
    sources = {(item["source_kind"], item["source_id"]) for item in mine["items"]}
    assert ("instance", str(ours.id)) in sources
    assert ("instance", str(theirs.id)) not in sources
    assert ("run", run_id) in sources

    seen_by_beta = (await server.client.get("/api/metrics/", headers=beta)).json()
    assert [(i["source_id"], i["latest"]["value"]) for i in seen_by_beta["items"]] == [
        (str(theirs.id), 2.0)
    ]
    run_series = next(item for item in mine["items"] if item["source_kind"] == "run")
    assert (
        await server.client.get(f"/api/metrics/{run_series['id']}", headers=beta)
    ).status_code == 404
    assert (
        await server.client.get(f"/api/metrics/run/{run_id}/summary", headers=beta)
    ).status_code == 404
