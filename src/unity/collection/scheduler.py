"""The collection scheduler: one APScheduler 3.x interval job per enabled instance.

- interval from the instance's ``collection_interval``;
- at start-up, first runs are spread at random across each interval so a hundred
  instances do not fire in the same second; an instance that has never run starts within
  a couple of seconds, and one enabled or reconfigured later runs at once (the user wants
  to see data), then on its interval;
- ``max_instances=1`` and a per-instance lock: never two overlapping executions of one
  instance, scheduled or on demand; misfires are coalesced into one run;
- a periodic job marks instances stale when their data stopped.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Literal

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select

from unity.collection.cache_keys import plugin_keys
from unity.collection.health import Health, HealthPolicy
from unity.collection.models import PluginStatus
from unity.collection.pipeline import ExecutionResult, Pipeline, Publisher
from unity.core.cache import Cache
from unity.core.clock import Clock
from unity.core.db import Database
from unity.errors import NotFoundError
from unity.plugins.models import Plugin, PluginInstance
from unity.plugins.service import InstanceRef, PluginService

SchedulerState = Literal["stopped", "running"]
#: A periodic housekeeping job: (id starting with "unity:", interval in seconds, coroutine).
MaintenanceJob = tuple[str, float, Callable[[], Awaitable[object]]]
STALE_JOB_ID = "unity:stale-check"
NEW_INSTANCE_SPREAD_S = 2.0

log = structlog.stdlib.get_logger("unity.scheduler")


class CollectionScheduler:
    """Keeps one job per runnable instance and runs them through the pipeline."""

    def __init__(
        self,
        *,
        pipeline: Pipeline,
        plugins: PluginService,
        database: Database,
        cache: Cache,
        clock: Clock,
        policy: HealthPolicy,
        stale_check_interval_s: float = 15.0,
        spread_first_runs: bool = True,
        publish: Publisher | None = None,
        maintenance: Sequence[MaintenanceJob] = (),
    ) -> None:
        self._pipeline = pipeline
        self._plugins = plugins
        self._db = database
        self._cache = cache
        self._clock = clock
        self._policy = policy
        self._stale_check_interval_s = stale_check_interval_s
        self._spread = spread_first_runs
        self.publish = publish
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}
        self._scheduler: AsyncIOScheduler | None = None
        self._maintenance = list(maintenance)
        self.skipped_overlaps = 0

    @property
    def state(self) -> SchedulerState:
        return "running" if self._scheduler is not None and self._scheduler.running else "stopped"

    async def start(self) -> None:
        """Schedule every runnable instance and the staleness check."""
        scheduler = AsyncIOScheduler(
            timezone="UTC",
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        scheduler.add_listener(self._on_overlap, EVENT_JOB_MAX_INSTANCES)
        self._scheduler = scheduler
        scheduler.start()
        ran_before = await self._instances_with_history()
        for instance in await self._plugins.runnable_instances():
            if not self._spread:
                spread = 0.0
            elif instance.id in ran_before:
                spread = float(instance.interval_s)
            else:
                spread = min(float(instance.interval_s), NEW_INSTANCE_SPREAD_S)
            self._add_job(instance, spread_s=spread)
        scheduler.add_job(
            self.check_stale,
            IntervalTrigger(seconds=self._stale_check_interval_s),
            id=STALE_JOB_ID,
            replace_existing=True,
        )
        for job_id, interval_s, job in self._maintenance:
            scheduler.add_job(
                job, IntervalTrigger(seconds=interval_s), id=job_id, replace_existing=True
            )
        log.info("scheduler started", jobs=len(self.job_ids()))

    async def shutdown(self, *, wait_s: float = 10.0) -> None:
        """Stop scheduling and give executions in flight up to ``wait_s`` to finish."""
        if self._scheduler is None:
            return
        self._scheduler.shutdown(wait=False)
        self._scheduler = None
        busy = [lock for lock in self._locks.values() if lock.locked()]
        if busy:
            try:
                await asyncio.wait_for(_all_released(busy), timeout=wait_s)
            except TimeoutError:
                log.warning("executions still running at shutdown", count=len(busy))
        log.info("scheduler stopped")

    def job_ids(self) -> set[str]:
        """Ids of the instance jobs currently scheduled."""
        if self._scheduler is None:
            return set()
        return {job.id for job in self._scheduler.get_jobs() if not job.id.startswith("unity:")}

    async def sync_instance(self, instance_id: uuid.UUID) -> None:
        """(Re)schedule or unschedule one instance after it changed; no restart needed."""
        found = await self._plugins.instance(instance_id)
        await self._pipeline.forget(instance_id)
        if found is None or not found[1]:
            self._remove_job(instance_id)
            return
        if self._scheduler is not None:
            self._add_job(found[0], spread_s=0.0)

    async def run_now(self, instance: InstanceRef) -> ExecutionResult:
        """Execute ``instance`` at once, waiting if a scheduled execution is in flight."""
        async with self._lock(instance.id):
            return await self._pipeline.execute(instance)

    async def check_stale(self) -> list[uuid.UUID]:
        """Mark healthy/unknown instances whose data stopped for N intervals as stale."""
        now = self._clock.now()
        marked: list[tuple[uuid.UUID, str, str, Health]] = []
        async with self._db.session() as session:
            rows = await session.execute(
                select(PluginStatus, PluginInstance, Plugin.plugin_id)
                .join(PluginInstance, PluginStatus.instance_id == PluginInstance.id)
                .join(Plugin, PluginInstance.plugin_pk == Plugin.id)
                .where(
                    PluginInstance.enabled.is_(True),
                    PluginStatus.health.in_([Health.HEALTHY.value, Health.UNKNOWN.value]),
                )
            )
            for status, instance, plugin_id in rows:
                last_data = status.last_sample_at or instance.updated_at
                current = Health(status.health)
                if self._policy.is_stale(
                    current, last_data=last_data, interval_s=instance.interval_s, now=now
                ):
                    status.health = Health.STALE.value
                    status.health_changed_at = now
                    marked.append((instance.id, plugin_id, instance.tenant_id, current))
        for instance_id, plugin_id, tenant_id, before in marked:
            log.warning(
                "plugin instance stale: no data", plugin_id=plugin_id, instance_id=str(instance_id)
            )
            await self._cache.delete(*plugin_keys(plugin_id, tenant_id))
            if self.publish is not None:
                await self.publish(
                    "plugin.health_changed",
                    {
                        "plugin_id": plugin_id,
                        "instance_id": str(instance_id),
                        "tenant_id": tenant_id,
                        "from": before.value,
                        "to": Health.STALE.value,
                    },
                )
        return [m[0] for m in marked]

    async def _instances_with_history(self) -> set[uuid.UUID]:
        async with self._db.session() as session:
            rows = await session.scalars(
                select(PluginStatus.instance_id).where(PluginStatus.last_run.is_not(None))
            )
            return set(rows)

    def _add_job(self, instance: InstanceRef, *, spread_s: float) -> None:
        """Schedule ``instance``; its first run falls at random within ``spread_s`` from now."""
        assert self._scheduler is not None
        interval = max(1, instance.interval_s)
        offset = random.uniform(0, spread_s) if spread_s > 0 else 0.0
        self._scheduler.add_job(
            self._run_scheduled,
            IntervalTrigger(seconds=interval, jitter=min(interval * 0.05, 5.0) or None),
            args=[instance],
            id=str(instance.id),
            name=f"{instance.plugin_id}/{instance.name}",
            replace_existing=True,
            next_run_time=self._clock.now() + timedelta(seconds=offset),
        )

    def _remove_job(self, instance_id: uuid.UUID) -> None:
        if self._scheduler is not None and self._scheduler.get_job(str(instance_id)) is not None:
            self._scheduler.remove_job(str(instance_id))

    async def _run_scheduled(self, instance: InstanceRef) -> None:
        lock = self._lock(instance.id)
        if lock.locked():  # an on-demand run is in flight: this tick is covered by it
            self.skipped_overlaps += 1
            return
        async with lock:
            try:
                await self._pipeline.execute(instance)
            except NotFoundError:
                log.warning("plugin vanished; unscheduling", plugin_id=instance.plugin_id)
                self._remove_job(instance.id)
            except Exception:  # the database may be down; the next tick tries again
                log.exception("execution could not be recorded", plugin_id=instance.plugin_id)

    def _lock(self, instance_id: uuid.UUID) -> asyncio.Lock:
        return self._locks.setdefault(instance_id, asyncio.Lock())

    def _on_overlap(self, event: JobExecutionEvent) -> None:
        self.skipped_overlaps += 1


async def _all_released(locks: list[asyncio.Lock]) -> None:
    for lock in locks:
        async with lock:
            pass
