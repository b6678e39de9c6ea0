"""The 4xx answers of /api/tasks and /api/runs: unknown ids, bad input, conflicts, scopes, tenants."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes import FakeClock
from tests.runs.actions import registry_with_actions
from tests.runs.server import RunServer, next_event, run_server
from tests.runs.test_flow import make_task, start_run
from unity.plugins.builtin.file_cleanup import FileCleanup

ZERO = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunServer]:
    async with run_server(tmp_path / "data", clock=FakeClock()) as s:
        yield s


async def test_unknown_ids_are_404(server: RunServer) -> None:
    client = server.client
    response = await client.post("/api/runs/", json={"task_id": ZERO})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    for method, path in [
        ("GET", f"/api/tasks/{ZERO}"),
        ("PATCH", f"/api/tasks/{ZERO}"),
        ("DELETE", f"/api/tasks/{ZERO}"),
        ("GET", f"/api/runs/{ZERO}"),
        ("DELETE", f"/api/runs/{ZERO}"),
        ("GET", f"/api/runs/{ZERO}/logs"),
        ("GET", f"/api/runs/{ZERO}/approval"),
        ("POST", f"/api/runs/{ZERO}/cancel"),
    ]:
        body = {} if method == "PATCH" else None
        assert (await client.request(method, path, json=body)).status_code == 404, path
    approve = await client.post(f"/api/runs/{ZERO}/approve", json={"approved": True})
    assert approve.status_code == 404
    assert (await client.post(f"/api/runs/{ZERO}/rollback", json={})).status_code == 404
    assert (await client.get("/api/runs/not-a-uuid")).status_code == 422


async def test_bad_task_bodies(server: RunServer) -> None:
    client = server.client
    cases = [
        ({"name": "x", "action": "nope"}, ["body", "action"]),
        ({"name": "x", "action": "steady"}, ["body", "action"]),  # a collector
        ({"name": "x", "action": "write_files", "params": {}}, ["body", "params", "names"]),
        ({"name": "x", "action": "write_files", "params": {"names": ["a"], "x": 1}}, None),
        ({"name": "x", "action": "write_files", "on_timeout": "maybe"}, None),
        ({"name": "x", "action": "write_files", "approval_timeout_s": 0}, None),
        ({"name": "x", "action": "write_files", "schedule": "sometimes"}, None),
        ({"action": "write_files"}, None),
    ]
    for body, loc in cases:
        response = await client.post("/api/tasks/", json=body)
        assert response.status_code == 422, (body, response.text)
        if loc is not None:
            assert response.json()["errors"][0]["loc"] == loc
    assert (await client.get("/api/tasks/", params={"status": "sleeping"})).status_code == 422
    assert (await client.get("/api/tasks/", params={"limit": 101})).status_code == 422
    assert (await client.get("/api/runs/", params={"status": "done"})).status_code == 422


async def test_task_crud(server: RunServer) -> None:
    client = server.client
    task = await make_task(server, name="first")
    await make_task(server, name="second")
    listed = (await client.get("/api/tasks", params={"limit": 1})).json()
    assert (listed["total"], listed["limit"], len(listed["items"])) == (2, 1, 1)
    assert (await client.get("/api/tasks/", params={"status": "pending"})).json()["total"] == 2
    changed = await client.patch(
        f"/api/tasks/{task['id']}",
        json={"params": {"names": ["z"]}, "on_timeout": "approve", "description": "d"},
    )
    assert changed.status_code == 200
    assert (changed.json()["params"], changed.json()["on_timeout"]) == ({"names": ["z"]}, "approve")
    bad = await client.patch(f"/api/tasks/{task['id']}", json={"params": {"names": []}})
    assert bad.status_code == 422
    null = await client.patch(f"/api/tasks/{task['id']}", json={"require_approval": None})
    assert null.status_code == 422
    with server.events() as events:
        run = await start_run(server, task["id"])
        await next_event(events, run["id"], "run.approval_required")
    assert (await client.delete(f"/api/tasks/{task['id']}")).status_code == 409
    assert (await client.delete(f"/api/runs/{run['id']}")).status_code == 409
    await client.post(f"/api/runs/{run['id']}/cancel")
    assert (await client.delete(f"/api/tasks/{task['id']}")).status_code == 204
    assert (await client.get(f"/api/runs/{run['id']}")).status_code == 404
    runs = (await client.get("/api/runs/", params={"task_id": task["id"]})).json()
    assert runs["total"] == 0


async def test_scopes_admin_actions_and_self_approval(server: RunServer) -> None:
    c = server.components
    _, writer = await c.keys.create(tenant_id="default", name="w", scopes=["runs:write"])
    _, approver = await c.keys.create(
        tenant_id="default", name="a", scopes=["runs:approve", "runs:read"]
    )
    _, both = await c.keys.create(
        tenant_id="default", name="b", scopes=["runs:write", "runs:approve", "runs:read"]
    )
    as_writer = {"authorization": f"Bearer {writer}"}
    as_approver = {"authorization": f"Bearer {approver}"}
    as_both = {"authorization": f"Bearer {both}"}

    admin_only = {"name": "x", "action": "admin_only"}
    refused = await server.client.post("/api/tasks/", json=admin_only, headers=as_writer)
    assert refused.status_code == 403
    assert (await server.client.post("/api/tasks/", json=admin_only)).status_code == 201

    task = await make_task(server, key=both, allow_self_approval=False)
    with server.events() as events:
        run = await start_run(server, task["id"])
        await next_event(events, run["id"], "run.approval_required")
    url = f"/api/runs/{run['id']}"
    denied = await server.client.post(f"{url}/approve", json={"approved": True}, headers=as_writer)
    assert denied.status_code == 403
    assert denied.json()["missing_scopes"] == ["runs:approve"]
    own = await server.client.post(f"{url}/approve", json={"approved": True}, headers=as_both)
    assert own.status_code == 403
    view = (await server.client.get(f"{url}/approval", headers=as_both)).json()
    assert (view["pending"], view["can_approve"]) == (True, False)
    assert "forbids" in view["reason"]
    view = (await server.client.get(f"{url}/approval", headers=as_approver)).json()
    assert view["can_approve"] is True
    ok = await server.client.post(f"{url}/approve", json={"approved": False}, headers=as_approver)
    assert ok.status_code == 200
    assert ok.json()["approval"]["key_name"] == "a"


async def test_runs_of_another_tenant_are_invisible(server: RunServer) -> None:
    c = server.components
    await c.tenants.create(tenant_id="beta", name="Beta")
    _, beta_key = await c.keys.create(
        tenant_id="beta", name="beta", scopes=["runs:read", "runs:write", "runs:approve"]
    )
    beta = {"authorization": f"Bearer {beta_key}"}
    task = await make_task(server)
    with server.events() as events:
        run = await start_run(server, task["id"])
        await next_event(events, run["id"], "run.approval_required")
    assert (await server.client.get(f"/api/tasks/{task['id']}", headers=beta)).status_code == 404
    assert (await server.client.get(f"/api/runs/{run['id']}", headers=beta)).status_code == 404
    response = await server.client.post("/api/runs/", json={"task_id": task["id"]}, headers=beta)
    assert response.status_code == 404
    response = await server.client.post(
        f"/api/runs/{run['id']}/approve", json={"approved": True}, headers=beta
    )
    assert response.status_code == 404
    assert (await server.client.get("/api/runs/", headers=beta)).json()["total"] == 0
    # the admin key may act on beta's behalf, and sees nothing there either
    assert (await server.client.get("/api/runs/?tenant=beta")).json()["total"] == 0


async def test_action_plugins_are_never_scheduled(server: RunServer) -> None:
    response = await server.client.post("/api/plugins/write_files/enable", json={"enabled": True})
    assert response.status_code == 409
    assert "tasks" in response.json()["detail"]
    detail = (await server.client.get("/api/plugins/write_files")).json()
    assert detail["kind"] == "action"
    assert detail["config_schema"]["properties"]["names"]["type"] == "array"
    assert detail["instances"] == []
    assert server.components.scheduler is not None
    assert server.components.scheduler.job_ids() == set()


def _old_files(root: Path, names: list[str], age_days: float) -> None:
    root.mkdir(parents=True)
    old = time.time() - age_days * 86_400
    for name in names:
        (root / name).write_text(name)
        os.utime(root / name, (old, old))


def _present(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


async def test_file_cleanup_rollback_restores_the_files(tmp_path: Path) -> None:
    root = tmp_path / "logs" / "app"
    _old_files(root, ["a.log", "b.log"], age_days=30)
    _old_files(root / "new", ["c.log"], age_days=0)
    registry = registry_with_actions(FileCleanup)
    async with run_server(tmp_path / "data", registry=registry) as server:
        with server.events() as events:
            response = await server.client.post(
                "/api/tasks/",
                json={
                    "name": "logs",
                    "action": "file_cleanup",
                    "params": {"root": str(root), "patterns": ["*.log"], "older_than_days": 7},
                },
            )
            assert response.status_code == 201, response.text
            run = await start_run(server, response.json()["id"])
            ready = await next_event(events, run["id"], "run.plan_ready")
            assert len(ready.data["plan"]["steps"]) == 2
            await server.client.post(
                f"/api/runs/{run['id']}/approve",
                json={"approved": True, "plan_hash": ready.data["plan_hash"]},
            )
            await next_event(events, run["id"], "run.completed")
            assert _present(root) == ["new"]
            rollback = await server.client.post(f"/api/runs/{run['id']}/rollback", json={})
            assert rollback.status_code == 202
            await next_event(events, run["id"], "run.completed")
        assert _present(root) == ["a.log", "b.log", "new"]
        body = (await server.client.get(f"/api/runs/{run['id']}")).json()
        assert body["rollback"]["status"] == "completed"
