"""A restart of Unity loses no run: waiting runs keep waiting, expired deadlines time out."""

from __future__ import annotations

from pathlib import Path

from tests.fakes import FakeClock
from tests.runs.server import next_event, run_server
from tests.runs.test_flow import make_task, start_run


async def test_restart_while_awaiting_approval(tmp_path: Path) -> None:
    clock = FakeClock()
    data = tmp_path / "data"
    async with run_server(data, clock=clock) as server:
        task = await make_task(server, approval_timeout_s=600)
        with server.events() as events:
            run = await start_run(server, task["id"])
            await next_event(events, run["id"], "run.approval_required")
        before = (await server.client.get(f"/api/runs/{run['id']}")).json()
    clock.advance(300)  # down for five minutes: the deadline has not passed
    async with run_server(data, clock=clock) as server:
        after = (await server.client.get(f"/api/runs/{run['id']}")).json()
        assert after["status"] == "awaiting_approval"
        assert after["approval_deadline"] == before["approval_deadline"]
        approval = (await server.client.get(f"/api/runs/{run['id']}/approval")).json()
        assert approval["seconds_left"] == 300
        with server.events() as events:
            response = await server.client.post(
                f"/api/runs/{run['id']}/approve",
                json={"approved": True, "plan_hash": before["plan_hash"]},
            )
            assert response.status_code == 200
            await next_event(events, run["id"], "run.completed")


async def test_deadline_passing_while_down_times_out_at_start(tmp_path: Path) -> None:
    clock = FakeClock()
    data = tmp_path / "data"
    async with run_server(data, clock=clock) as server:
        task = await make_task(server, approval_timeout_s=60)
        with server.events() as events:
            run = await start_run(server, task["id"])
            await next_event(events, run["id"], "run.approval_required")
    clock.advance(61)
    async with run_server(data, clock=clock, run_check_interval_s=3600) as server:
        # No sweep tick can have run yet: the start itself enforced the deadline.
        body = (await server.client.get(f"/api/runs/{run['id']}")).json()
        assert body["status"] == "timed_out"
        assert body["approval"]["reason"] == "timeout"
        response = await server.client.post(
            f"/api/runs/{run['id']}/approve", json={"approved": True}
        )
        assert response.status_code == 409


async def test_interrupted_apply_fails_and_analysis_is_planned_again(tmp_path: Path) -> None:
    clock = FakeClock()
    data = tmp_path / "data"
    async with run_server(data, clock=clock) as server:
        task = await make_task(server, action="block", params={}, require_approval=False)
        with server.events() as events:
            run = await start_run(server, task["id"])
            await next_event(events, run["id"], "run.progress")
    async with run_server(data, clock=clock) as server:
        body = (await server.client.get(f"/api/runs/{run['id']}")).json()
        assert body["status"] == "failed"
        assert body["error"].startswith("interrupted")
