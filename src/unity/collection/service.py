"""Read models of collection: per-plugin status, execution history, the summary figures.

Reads go through the cache (status: ``cache_ttl_status_s``, summary: dashboard TTL) and the
pipeline invalidates the status key after every execution.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select

from unity.collection.cache_keys import status_key, summary_key
from unity.collection.health import Health, worst
from unity.collection.models import PluginExecution, PluginStatus
from unity.core.cache import Cache, CacheTTL
from unity.core.cache.abc import decode
from unity.core.clock import Clock
from unity.core.db import Database
from unity.metrics.store import MetricStore
from unity.plugins.models import Plugin, PluginInstance
from unity.plugins.schemas import (
    ExecutionOut,
    InstanceStatusOut,
    PluginStatusOut,
    StatsSummary,
    StatusOut,
)

since_epoch = datetime(1970, 1, 1, tzinfo=UTC)


class CollectionService:
    """Status, executions and summary figures, cached."""

    def __init__(
        self,
        *,
        database: Database,
        store: MetricStore,
        cache: Cache,
        ttl: CacheTTL,
        clock: Clock,
    ) -> None:
        self._db = database
        self._store = store
        self._cache = cache
        self._ttl = ttl
        self._clock = clock

    async def instance_statuses(self, plugin_id: str, tenant_id: str) -> list[InstanceStatusOut]:
        """Status of each instance of ``plugin_id`` in a tenant (no cache: the caller caches)."""
        async with self._db.session() as session:
            rows = await session.execute(
                select(PluginInstance, PluginStatus)
                .join(Plugin, PluginInstance.plugin_pk == Plugin.id)
                .outerjoin(PluginStatus, PluginStatus.instance_id == PluginInstance.id)
                .where(Plugin.plugin_id == plugin_id, PluginInstance.tenant_id == tenant_id)
                .order_by(PluginInstance.name)
            )
            out = []
            for instance, status in rows:
                base = StatusOut.model_validate(status) if status is not None else StatusOut()
                out.append(
                    InstanceStatusOut(
                        **base.model_dump(),
                        instance_id=instance.id,
                        instance_name=instance.name,
                        enabled=instance.enabled,
                    )
                )
            return out

    async def plugin_status(self, plugin_id: str, *, tenant_id: str) -> PluginStatusOut:
        """The plugin's health (worst enabled instance), counters and latest execution."""
        return PluginStatusOut.model_validate(
            await self.plugin_status_data(plugin_id, tenant_id=tenant_id)
        )

    async def plugin_status_data(self, plugin_id: str, *, tenant_id: str) -> dict[str, Any]:
        """:meth:`plugin_status` as the JSON values the cache holds (no model built)."""
        data: dict[str, Any] = decode(await self.plugin_status_json(plugin_id, tenant_id=tenant_id))
        return data

    async def plugin_status_json(self, plugin_id: str, *, tenant_id: str) -> bytes:
        """:meth:`plugin_status` as the JSON bytes the cache holds (what the API answers)."""

        async def build() -> dict[str, Any]:
            instances = await self.instance_statuses(plugin_id, tenant_id)
            running = [Health(i.health) for i in instances if i.enabled]
            enabled = bool(running)
            executions, _ = await self.executions(plugin_id, tenant_id=tenant_id, limit=1)
            errored = sorted(
                (i for i in instances if i.last_error_at is not None),
                key=lambda i: i.last_error_at or since_epoch,
            )
            newest_error = errored[-1] if errored else None
            successes = [i.last_success for i in instances if i.last_success is not None]
            status = PluginStatusOut(
                plugin_id=plugin_id,
                enabled=enabled,
                health=((worst(running) if enabled else None) or Health.UNKNOWN).value,
                error_count=sum(i.error_count for i in instances),
                success_count=sum(i.success_count for i in instances),
                consecutive_errors=max((i.consecutive_errors for i in instances), default=0),
                last_execution=executions[0] if executions else None,
                last_success=max(successes, default=None),
                last_error=newest_error.last_error if newest_error else None,
                last_error_at=newest_error.last_error_at if newest_error else None,
                instances=instances,
            )
            return status.model_dump(mode="json")

        return await self._cache.get_or_set_encoded(
            status_key(plugin_id, tenant_id), self._ttl.status_s, build
        )

    async def executions(
        self,
        plugin_id: str,
        *,
        tenant_id: str,
        status: str | None = None,
        instance_id: uuid.UUID | None = None,
        skip: int = 0,
        limit: int = 50,
    ) -> tuple[list[ExecutionOut], int]:
        """Executions of a plugin's instances in a tenant, newest first, and how many match."""
        of_tenant = select(PluginInstance.id).where(PluginInstance.tenant_id == tenant_id)
        where = [PluginExecution.plugin_id == plugin_id, PluginExecution.instance_id.in_(of_tenant)]
        if status is not None:
            where.append(PluginExecution.status == status)
        if instance_id is not None:
            where.append(PluginExecution.instance_id == instance_id)
        async with self._db.session() as session:
            total = await session.scalar(
                select(func.count()).select_from(PluginExecution).where(*where)
            )
            rows = await session.scalars(
                select(PluginExecution)
                .where(*where)
                .order_by(PluginExecution.started_at.desc())
                .offset(skip)
                .limit(limit)
            )
            return [ExecutionOut.model_validate(r) for r in rows], int(total or 0)

    async def summary(self, *, tenant_id: str) -> StatsSummary:
        """Front-page figures of a tenant (cached for the dashboard TTL).

        Series and sample counts are store-wide: the store counts rows, not tenants.
        """
        return StatsSummary.model_validate(await self.summary_data(tenant_id=tenant_id))

    async def summary_data(self, *, tenant_id: str) -> dict[str, Any]:
        """:meth:`summary` as the JSON values the cache holds (no model built)."""
        data: dict[str, Any] = decode(await self.summary_json(tenant_id=tenant_id))
        return data

    async def summary_json(self, *, tenant_id: str) -> bytes:
        """:meth:`summary` as the JSON bytes the cache holds (what the API answers)."""

        async def build() -> dict[str, Any]:
            since = self._clock.now() - timedelta(hours=1)
            async with self._db.session() as session:
                plugins_total, plugins_broken = (
                    await session.execute(
                        select(
                            func.count(),
                            func.coalesce(
                                func.sum(case((Plugin.broken_error.is_not(None), 1), else_=0)), 0
                            ),
                        ).select_from(Plugin)
                    )
                ).one()
                plugins_enabled = await session.scalar(
                    select(func.count(func.distinct(PluginInstance.plugin_pk))).where(
                        PluginInstance.tenant_id == tenant_id, PluginInstance.enabled.is_(True)
                    )
                )
                instances_total = await session.scalar(
                    select(func.count())
                    .select_from(PluginInstance)
                    .where(PluginInstance.tenant_id == tenant_id)
                )
                by_health = {h.value: 0 for h in Health}
                rows = await session.execute(
                    select(func.coalesce(PluginStatus.health, Health.UNKNOWN.value), func.count())
                    .select_from(PluginInstance)
                    .outerjoin(PluginStatus, PluginStatus.instance_id == PluginInstance.id)
                    .where(PluginInstance.tenant_id == tenant_id, PluginInstance.enabled.is_(True))
                    .group_by(func.coalesce(PluginStatus.health, Health.UNKNOWN.value))
                )
                for health, count in rows:
                    by_health[str(health)] = int(count)
                executed, succeeded = (
                    await session.execute(
                        select(
                            func.count(),
                            func.coalesce(
                                func.sum(case((PluginExecution.status == "success", 1), else_=0)), 0
                            ),
                        ).where(
                            PluginExecution.started_at >= since,
                            PluginExecution.instance_id.in_(
                                select(PluginInstance.id).where(
                                    PluginInstance.tenant_id == tenant_id
                                )
                            ),
                        )
                    )
                ).one()
            summary = StatsSummary(
                plugins_total=int(plugins_total),
                plugins_enabled=int(plugins_enabled or 0),
                plugins_broken=int(plugins_broken),
                instances_total=int(instances_total or 0),
                instances_by_health=by_health,
                series_total=await self._store.count_series(),
                samples_stored=await self._store.count_samples(),
                executions_last_hour=int(executed),
                success_rate_last_hour=(int(succeeded) / int(executed)) if executed else None,
                database="postgresql" if self._db.is_postgres else "sqlite",
                database_size_bytes=await self._db.size_bytes(),
            )
            return summary.model_dump(mode="json")

        return await self._cache.get_or_set_encoded(
            summary_key(tenant_id), self._ttl.dashboard_s, build
        )
