"""Scheduled tasks create runs on their own, still waiting for approval."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runs.server import run_server
from tests.runs.test_flow import make_task
from unity.core.events import Event

pytestmark = pytest.mark.slow  # waits on APScheduler's real-time interval


async def test_interval_schedule_creates_runs_that_wait_for_approval(tmp_path: Path) -> None:
    async with run_server(tmp_path / "data") as server:
        with server.events() as events:
            task = await make_task(server, schedule="1s")
            seen: list[Event] = []
            async for item in events:
                if isinstance(item, Event) and item.data["task_id"] == task["id"]:
                    seen.append(item)
                    if item.type == "run.approval_required":
                        break
            run_id = seen[0].data["run_id"]
            run = (await server.client.get(f"/api/runs/{run_id}")).json()
            assert run["trigger"] == "schedule"
            assert run["status"] == "awaiting_approval"
            assert run["created_by_key_id"] is None
            approve = await server.client.post(
                f"/api/runs/{run_id}/approve", json={"approved": True}
            )
            assert approve.status_code == 200
            # the next tick after the first run finished creates the second run
            async for item in events:
                if (
                    isinstance(item, Event)
                    and item.type == "run.created"
                    and item.data["task_id"] == task["id"]
                ):
                    assert item.data["run_id"] != run_id
                    break
        runs = (await server.client.get("/api/runs/", params={"task_id": task["id"]})).json()
        # one run at a time: ticks while a run waits for approval create nothing
        assert runs["total"] == 2
        assert server.components.task_scheduler is not None
        assert str(task["id"]) in server.components.task_scheduler.job_ids()

        paused = await server.client.patch(f"/api/tasks/{task['id']}", json={"schedule": ""})
        assert paused.json()["schedule"] is None
        assert str(task["id"]) not in server.components.task_scheduler.job_ids()


def test_invalid_schedules_are_refused() -> None:
    from unity.runs.schemas import TaskCreate

    base = {"name": "n", "action": "write_files"}
    assert TaskCreate.model_validate({**base, "schedule": "0 3 * * *"}).schedule == "0 3 * * *"
    assert TaskCreate.model_validate({**base, "schedule": "5m"}).schedule == "5m"
    for bad in ("every day", "0 3 * *", "61 * * * *", "0s"):
        with pytest.raises(ValueError, match=r"schedule|cron|interval"):
            TaskCreate.model_validate({**base, "schedule": bad})
