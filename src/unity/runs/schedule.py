"""Scheduled tasks: one APScheduler job per enabled task with a ``schedule``.

A tick creates a run like ``POST /api/runs/`` would (it still waits for approval unless
the task says otherwise), except when the task's previous run has not finished: runs
of one task never pile up behind a plan nobody approved. Only the process that runs the
scheduler (role ``all`` or ``scheduler``) schedules tasks; it re-reads the tasks
every ``resync_s`` so changes made through another process take effect too.
"""

from __future__ import annotations

import uuid

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select

from unity.core.db import Database
from unity.errors import NotFoundError
from unity.runs import states as st
from unity.runs.executor import RunEngine
from unity.runs.models import Run, Task
from unity.runs.schemas import interval_seconds

log = structlog.stdlib.get_logger("unity.runs.schedule")

RESYNC_JOB_ID = "unity:tasks-resync"


def trigger_for(schedule: str) -> BaseTrigger:
    """The APScheduler trigger of a task's schedule (interval or 5-field cron, UTC)."""
    seconds = interval_seconds(schedule)
    if seconds is not None:
        return IntervalTrigger(seconds=seconds, timezone="UTC")
    return CronTrigger.from_crontab(schedule, timezone="UTC")


class TaskScheduler:
    """Keeps one job per scheduled task and creates its runs."""

    def __init__(self, *, database: Database, engine: RunEngine, resync_s: float = 30.0) -> None:
        self._db = database
        self._engine = engine
        self._resync_s = resync_s
        self._scheduler: AsyncIOScheduler | None = None
        self._scheduled: dict[uuid.UUID, str] = {}  # task id -> schedule it is scheduled with
        self.skipped = 0
        """Ticks skipped because the task's previous run had not finished."""

    async def start(self) -> None:
        scheduler = AsyncIOScheduler(
            timezone="UTC",
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        )
        self._scheduler = scheduler
        scheduler.start()
        scheduler.add_job(self.sync, IntervalTrigger(seconds=self._resync_s), id=RESYNC_JOB_ID)
        await self.sync()

    async def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        self._scheduled.clear()

    def job_ids(self) -> set[str]:
        """Ids of the task jobs scheduled now."""
        return {str(task_id) for task_id in self._scheduled}

    async def sync(self) -> None:
        """Bring the jobs in line with the tasks table."""
        if self._scheduler is None:
            return
        async with self._db.session() as session:
            rows = await session.execute(
                select(Task.id, Task.schedule).where(
                    Task.enabled.is_(True), Task.schedule.is_not(None)
                )
            )
            wanted = {task_id: schedule for task_id, schedule in rows if schedule}
        for task_id in list(self._scheduled):
            if wanted.get(task_id) != self._scheduled[task_id]:
                job = self._scheduler.get_job(str(task_id))
                if job is not None:
                    job.remove()
                del self._scheduled[task_id]
        for task_id, schedule in wanted.items():
            if task_id in self._scheduled:
                continue
            try:
                trigger = trigger_for(schedule)
            except ValueError:
                log.warning("task has an invalid schedule", task_id=str(task_id), schedule=schedule)
                continue
            self._scheduler.add_job(
                self._tick, trigger, args=[task_id], id=str(task_id), replace_existing=True
            )
            self._scheduled[task_id] = schedule

    async def _tick(self, task_id: uuid.UUID) -> None:
        try:
            async with self._db.session() as session:
                task = await session.get(Task, task_id)
                if task is None or not task.enabled or not task.schedule:
                    return
                busy = await session.scalar(
                    select(Run.id)
                    .where(Run.task_id == task_id, Run.status.not_in(sorted(st.FINISHED)))
                    .limit(1)
                )
                tenant_id = task.tenant_id
            if busy is not None:
                self.skipped += 1
                log.info(
                    "scheduled run skipped: the previous run is not finished", task_id=str(task_id)
                )
                return
            await self._engine.create_run(
                task_id, tenant_id=tenant_id, principal=None, trigger="schedule"
            )
        except NotFoundError:
            return
        except Exception:  # the database may be away; the next tick tries again
            log.exception("scheduled run could not be created", task_id=str(task_id))
