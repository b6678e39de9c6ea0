"""Tasks and runs end to end through a real server: plan → approval → apply, and every way out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeClock
from tests.runs.actions import Block
from tests.runs.server import RunServer, next_event, run_server
from unity.core.events import CATALOG, Event, Subscription


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def server(tmp_path: Path, clock: FakeClock) -> AsyncIterator[RunServer]:
    async with run_server(tmp_path / "data", clock=clock) as s:
        yield s


async def make_task(server: RunServer, key: str | None = None, **body: Any) -> dict[str, Any]:
    payload = {"name": "tidy", "action": "write_files", "params": {"names": ["a", "b"]}, **body}
    headers = {"authorization": f"Bearer {key}"} if key else None
    response = await server.client.post("/api/tasks/", json=payload, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def start_run(server: RunServer, task_id: str) -> dict[str, Any]:
    response = await server.client.post("/api/runs/", json={"task_id": task_id})
    assert response.status_code == 201, response.text
    return dict(response.json())


def exist(paths: list[str]) -> list[bool]:
    return [Path(p).exists() for p in paths]


def contents(paths: list[str]) -> list[str]:
    return [Path(p).read_text() for p in paths]


def validate(events: list[Event]) -> None:
    """Every run event fits its catalog payload model."""
    for event in events:
        CATALOG[event.type].validate(event.data)
        assert event.seq > 0


async def collect_until(
    subscription: Subscription, run_id: str, last: str, within: float = 10.0
) -> list[Event]:
    seen: list[Event] = []

    async def wait() -> None:
        async for item in subscription:
            if isinstance(item, Event) and item.data.get("run_id") == run_id:
                seen.append(item)
                if item.type == last:
                    return

    await asyncio.wait_for(wait(), within)
    return seen


async def test_plan_approve_apply(server: RunServer) -> None:
    task = await make_task(server, description="write two files")
    assert task["require_approval"] is True
    assert task["approval_timeout_s"] == 300
    assert task["on_timeout"] == "reject"
    with server.events() as events:
        run = await start_run(server, task["id"])
        assert run["task_id"] == task["id"]
        assert run["status"] == "pending"
        before = await collect_until(events, run["id"], "run.approval_required")
        assert [e.type for e in before] == [
            "run.created",
            "run.analysis_started",
            "run.plan_ready",
            "run.approval_required",
        ]
        plan_ready = before[2].data
        assert plan_ready["plan"]["summary"] == "write 2 files"
        assert before[3].data["expires_at"] is not None

        current = (await server.client.get(f"/api/runs/{run['id']}")).json()
        assert current["status"] == "awaiting_approval"
        assert current["plan_hash"] == plan_ready["plan_hash"]
        assert current["approval"] is None
        approval = (await server.client.get(f"/api/runs/{run['id']}/approval")).json()
        assert approval["pending"] is True
        assert approval["can_approve"] is True
        assert approval["seconds_left"] == 300
        assert approval["plan_hash"] == current["plan_hash"]

        decided = await server.client.post(
            f"/api/runs/{run['id']}/approve",
            json={"approved": True, "feedback": "go", "plan_hash": current["plan_hash"]},
        )
        assert decided.status_code == 200, decided.text
        after = await collect_until(events, run["id"], "run.completed")
    assert [e.type for e in after] == [
        "run.approved",
        "run.progress",
        "run.progress",
        "run.progress",
        "run.completed",
    ]
    assert [(e.data["step"], e.data["percent"]) for e in after[1:4]] == [
        (0, 0.0),
        (1, 50.0),
        (2, 100.0),
    ]
    validate(before + after)
    assert [e.seq for e in before + after] == sorted(e.seq for e in before + after)

    done = (await server.client.get(f"/api/runs/{run['id']}")).json()
    assert done["status"] == "completed"
    assert done["result"]["summary"] == "wrote 2 files"
    assert done["error"] is None
    me = (await server.client.get("/api/keys/me")).json()
    assert done["approval"]["approved"] is True
    assert done["approval"]["key_id"] == me["id"]
    assert done["approval"]["tenant_id"] == "default"
    assert done["approval"]["feedback"] == "go"
    assert done["approval"]["plan_hash"] == done["plan_hash"]
    assert done["approval"]["automatic"] is False
    assert contents(done["result"]["data"]["written"]) == ["x", "x"]

    logs = (await server.client.get(f"/api/runs/{run['id']}/logs", params={"limit": 100})).json()
    events_logged = [line["event"] for line in logs["items"]]
    assert events_logged[:4] == ["created", "analyzing", "awaiting_approval", "approved"]
    assert events_logged.count("progress") == 2
    assert events_logged[-1] == "completed"

    figures = (await server.client.get(f"/api/tasks/{task['id']}")).json()
    assert figures["status"] == "completed"
    assert (figures["run_count"], figures["success_count"], figures["success_rate"]) == (1, 1, 1.0)
    again = await server.client.post(f"/api/runs/{run['id']}/approve", json={"approved": True})
    assert again.status_code == 409


async def test_reject_applies_nothing(server: RunServer) -> None:
    task = await make_task(server)
    with server.events() as events:
        run = await start_run(server, task["id"])
        await next_event(events, run["id"], "run.approval_required")
        rejected = await server.client.post(
            f"/api/runs/{run['id']}/approve", json={"approved": False, "feedback": "not today"}
        )
        assert rejected.status_code == 200
        event = await next_event(events, run["id"], "run.rejected")
    validate([event])
    assert event.data["feedback"] == "not today"
    body = (await server.client.get(f"/api/runs/{run['id']}")).json()
    assert body["status"] == "rejected"
    assert body["result"] is None
    assert body["approval"]["approved"] is False
    folder = server.components.settings.data_dir / "actions" / "write_files" / run["id"]
    assert not folder.exists()
    tasks = (await server.client.get("/api/tasks/", params={"status": "cancelled"})).json()
    assert [t["id"] for t in tasks["items"]] == [task["id"]]


@pytest.mark.parametrize("on_timeout", ["reject", "approve"])
async def test_approval_timeout(server: RunServer, clock: FakeClock, on_timeout: str) -> None:
    task = await make_task(server, approval_timeout_s=60, on_timeout=on_timeout)
    with server.events() as events:
        run = await start_run(server, task["id"])
        await next_event(events, run["id"], "run.approval_required")
        clock.advance(59)
        await asyncio.sleep(0.2)  # several sweeps: still before the deadline
        assert (await server.client.get(f"/api/runs/{run['id']}")).json()["status"] == (
            "awaiting_approval"
        )
        clock.advance(2)
        timed_out = await next_event(events, run["id"], "run.timed_out")
        assert timed_out.data["on_timeout"] == on_timeout
        if on_timeout == "approve":
            await next_event(events, run["id"], "run.completed")
    validate([timed_out])
    body = (await server.client.get(f"/api/runs/{run['id']}")).json()
    assert body["approval"]["reason"] == "timeout"
    assert body["approval"]["automatic"] is True
    if on_timeout == "reject":
        assert body["status"] == "timed_out"
        assert body["result"] is None
        listed = (await server.client.get("/api/tasks/", params={"status": "timeout"})).json()
        assert listed["total"] == 1
    else:
        assert body["status"] == "completed"
        assert body["approval"]["approved"] is True
    late = await server.client.post(f"/api/runs/{run['id']}/approve", json={"approved": True})
    assert late.status_code == 409


async def test_cancel_while_running(server: RunServer) -> None:
    Block.started = asyncio.Event()
    cancelled_before = Block.cancelled
    task = await make_task(server, action="block", params={}, require_approval=False)
    with server.events() as events:
        run = await start_run(server, task["id"])
        await asyncio.wait_for(Block.started.wait(), 10)
        assert (await server.client.get(f"/api/runs/{run['id']}")).json()["status"] == "running"
        # a running run cannot be deleted
        assert (await server.client.delete(f"/api/runs/{run['id']}")).status_code == 409
        response = await server.client.post(f"/api/runs/{run['id']}/cancel")
        assert response.status_code == 200
        assert response.json()["status"] == "cancelled"
        event = await next_event(events, run["id"], "run.cancelled")
    validate([event])
    for _ in range(100):
        if Block.cancelled > cancelled_before:
            break
        await asyncio.sleep(0.02)
    assert Block.cancelled == cancelled_before + 1
    assert (await server.client.post(f"/api/runs/{run['id']}/cancel")).status_code == 409
    patch = await server.client.patch(f"/api/runs/{run['id']}", json={"status": "cancelled"})
    assert patch.status_code == 409
    assert (await server.client.delete(f"/api/runs/{run['id']}")).status_code == 204
    assert (await server.client.get(f"/api/runs/{run['id']}")).status_code == 404


async def test_cancel_through_patch_while_awaiting(server: RunServer) -> None:
    task = await make_task(server)
    with server.events() as events:
        run = await start_run(server, task["id"])
        await next_event(events, run["id"], "run.approval_required")
        wrong = await server.client.patch(f"/api/runs/{run['id']}", json={"status": "running"})
        assert wrong.status_code == 422
        response = await server.client.patch(f"/api/runs/{run['id']}", json={"status": "cancelled"})
        assert response.json()["status"] == "cancelled"
    approve = await server.client.post(f"/api/runs/{run['id']}/approve", json={"approved": True})
    assert approve.status_code == 409


async def test_changed_plan_is_409(server: RunServer) -> None:
    task = await make_task(server)
    with server.events() as events:
        run = await start_run(server, task["id"])
        ready = await next_event(events, run["id"], "run.plan_ready")
    stale = "0" * 64
    response = await server.client.post(
        f"/api/runs/{run['id']}/approve", json={"approved": True, "plan_hash": stale}
    )
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["plan_hash"] == ready.data["plan_hash"]
    body = (await server.client.get(f"/api/runs/{run['id']}")).json()
    assert body["status"] == "awaiting_approval"
    assert body["approval"] is None


async def test_plan_failure_and_empty_plan(server: RunServer) -> None:
    failing = await make_task(server, action="plan_fails", params={})
    empty = await make_task(server, action="nothing", params={})
    with server.events() as events:
        run = await start_run(server, failing["id"])
        failed = await next_event(events, run["id"], "run.failed")
        nothing = await start_run(server, empty["id"])
        completed = await next_event(events, nothing["id"], "run.completed")
    validate([failed, completed])
    assert failed.data["error"] == "planning failed: cannot reach the host"
    body = (await server.client.get(f"/api/runs/{run['id']}")).json()
    assert (body["status"], body["plan"]) == ("failed", None)
    assert (await server.client.get(f"/api/tasks/{failing['id']}")).json()["failure_count"] == 1
    body = (await server.client.get(f"/api/runs/{nothing['id']}")).json()
    assert body["status"] == "completed"
    assert body["approval"] is None  # nothing was applied, nothing needed approving


async def test_apply_error_fails_the_run(server: RunServer) -> None:
    task = await make_task(server, params={"names": ["a"], "fail": True}, require_approval=False)
    with server.events() as events:
        run = await start_run(server, task["id"])
        failed = await next_event(events, run["id"], "run.failed")
    assert failed.data["error"] == "disk on fire"
    body = (await server.client.get(f"/api/runs/{run['id']}")).json()
    assert body["approval"]["reason"] == "not_required"
    figures = (await server.client.get(f"/api/tasks/{task['id']}")).json()
    assert (figures["status"], figures["success_rate"]) == ("failed", 0.0)


async def test_rollback_undoes_a_completed_run(server: RunServer) -> None:
    task = await make_task(server, require_approval=False)
    with server.events() as events:
        run = await start_run(server, task["id"])
        await next_event(events, run["id"], "run.completed")
        written = (await server.client.get(f"/api/runs/{run['id']}")).json()["result"]["data"][
            "written"
        ]
        assert all(exist(written))
        response = await server.client.post(f"/api/runs/{run['id']}/rollback", json={})
        assert response.status_code == 202, response.text
        rolled = await collect_until(events, run["id"], "run.completed")
    validate(rolled)
    assert rolled[-1].data["result"]["rollback"]["summary"] == "removed 2 files"
    assert not any(exist(written))
    body = (await server.client.get(f"/api/runs/{run['id']}")).json()
    assert body["status"] == "completed"
    assert body["rollback"]["status"] == "completed"
    assert body["rollback"]["approval"]["approved"] is True
    again = await server.client.post(f"/api/runs/{run['id']}/rollback", json={})
    assert again.status_code == 409
    figures = (await server.client.get(f"/api/tasks/{task['id']}")).json()
    assert figures["success_count"] == 1


async def test_rollback_needs_an_action_that_supports_it(server: RunServer) -> None:
    task = await make_task(server, action="admin_only", params={}, require_approval=False)
    with server.events() as events:
        run = await start_run(server, task["id"])
        await next_event(events, run["id"], "run.completed")
    response = await server.client.post(f"/api/runs/{run['id']}/rollback", json={})
    assert response.status_code == 409
    assert "cannot roll back" in response.json()["detail"]


async def test_composed_action_uses_other_actions_as_steps(server: RunServer) -> None:
    c = server.components
    _, writer = await c.keys.create(tenant_id="default", name="w", scopes=["runs:write"])
    task = await make_task(server, key=writer, action="compose", require_approval=False)
    with server.events() as events:
        run = await start_run(server, task["id"])
        await next_event(events, run["id"], "run.completed")
    body = (await server.client.get(f"/api/runs/{run['id']}")).json()
    offered = body["plan"]["data"]["offered"]
    assert "write_files" in offered
    assert "compose" not in offered  # never itself
    assert "admin_only" not in offered  # the task's creator is no admin
    assert body["result"]["summary"] == "compose: wrote 2 files"
    assert all(exist(body["result"]["data"]["written"]))
