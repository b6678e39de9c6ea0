"""Read models of stored metrics: a plugin's latest values and its history over a range."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, String, and_, cast, func, or_, select

from unity.collection.cache_keys import latest_key
from unity.core.cache import Cache, CacheTTL
from unity.core.clock import Clock, from_ms, to_ms
from unity.core.db import Database
from unity.errors import BadRequestError, NotFoundError
from unity.metrics.models import Series
from unity.metrics.query import downsample, pick_resolution
from unity.metrics.store import MetricStore
from unity.metrics.store.abc import Point, Resolution, SeriesInfo
from unity.plugins.models import PluginInstance
from unity.plugins.schemas import (
    HistoryOut,
    HistoryPoint,
    HistorySeries,
    LatestMetricsOut,
    LatestSample,
)
from unity.runs.models import Run, Task

#: A history request returns at most this many series (ask for a metric name to narrow it).
MAX_HISTORY_SERIES = 200
#: Series of one plugin considered by "latest" (a plugin with more should be filtered).
MAX_LATEST_SERIES = 5_000


class MetricsService:
    """Latest values and range reads of plugin metrics, through the cache."""

    def __init__(self, *, store: MetricStore, cache: Cache, ttl: CacheTTL, clock: Clock) -> None:
        self._store = store
        self._cache = cache
        self._ttl = ttl
        self._clock = clock

    async def latest(
        self,
        plugin_id: str,
        *,
        tenant_id: str,
        instance_ids: list[uuid.UUID],
        limit: int = 100,
    ) -> LatestMetricsOut:
        """The newest value of each series of the tenant's instances of ``plugin_id`` (up to
        ``limit``) and the newest snapshot among them."""
        return LatestMetricsOut.model_validate(
            await self.latest_data(
                plugin_id, tenant_id=tenant_id, instance_ids=instance_ids, limit=limit
            )
        )

    async def latest_data(
        self,
        plugin_id: str,
        *,
        tenant_id: str,
        instance_ids: list[uuid.UUID] | Callable[[], Awaitable[list[uuid.UUID]]],
        limit: int = 100,
    ) -> dict[str, Any]:
        """:meth:`latest` as JSON values, from the cache without building a model.

        ``instance_ids`` may be a coroutine function: it is then called only on a cache miss.
        """

        async def build() -> dict[str, Any]:
            nonlocal instance_ids
            if callable(instance_ids):
                instance_ids = await instance_ids()
            series = await self._series(plugin_id, instance_ids, limit=MAX_LATEST_SERIES)
            latest = await self._store.latest([s.id for s in series])
            samples = [
                LatestSample(
                    metric_name=s.name,
                    labels=s.labels,
                    value=latest[s.id].value,
                    timestamp=from_ms(latest[s.id].ts),
                    unit=s.unit,
                    instance_id=s.source_id,
                )
                for s in series
                if s.id in latest
            ]
            samples.sort(key=lambda x: (x.metric_name, sorted(x.labels.items()), x.instance_id))
            snapshot: tuple[datetime, dict[str, Any]] | None = None
            for instance_id in instance_ids:
                found = await self._store.latest_snapshot(instance_id)
                if found is not None and (snapshot is None or found[0] > snapshot[0]):
                    snapshot = found
            out = LatestMetricsOut(
                plugin_id=plugin_id,
                timestamp=max((s.timestamp for s in samples), default=None),
                metrics=samples,
                snapshot=snapshot[1] if snapshot else None,
                snapshot_timestamp=snapshot[0] if snapshot else None,
            )
            return out.model_dump(mode="json")

        data: dict[str, Any] = await self._cache.get_or_set(
            latest_key(plugin_id, tenant_id), self._ttl.latest_s, build
        )
        if len(data["metrics"]) > limit:
            data["metrics"] = data["metrics"][:limit]
        return data

    async def history(
        self,
        plugin_id: str,
        *,
        instance_ids: list[uuid.UUID],
        metric_name: str | None,
        start: datetime | None,
        end: datetime | None,
        hours: float,
        step_s: float | None = None,
        labels: Mapping[str, str] | None = None,
        instance_id: uuid.UUID | None = None,
        resolution: Resolution | None = None,
    ) -> HistoryOut:
        """Points of a plugin's series over a range, at a resolution fit for the span."""
        end = end or self._clock.now()
        start = start or datetime.fromtimestamp(end.timestamp() - hours * 3600, tz=end.tzinfo)
        if start >= end:
            raise BadRequestError("start must be before end")
        start_ms, end_ms = to_ms(start), to_ms(end)
        picked = resolution or pick_resolution(start_ms, end_ms)
        allowed = [i for i in instance_ids if instance_id is None or i == instance_id]
        series = await self._series(
            plugin_id, allowed, name=metric_name, labels=labels, limit=MAX_HISTORY_SERIES
        )
        out: list[HistorySeries] = []
        for info in series:
            points = await self._store.query(info.id, start_ms, end_ms, picked)
            if step_s is not None:
                points = downsample(points, int(step_s * 1000))
            out.append(_series_out(info, points))
        return HistoryOut(
            plugin_id=plugin_id,
            start=start,
            end=end,
            resolution=picked,
            step_s=step_s,
            series=out,
        )

    async def _series(
        self,
        plugin_id: str,
        instance_ids: list[uuid.UUID],
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int,
    ) -> list[SeriesInfo]:
        """Series of the given instances of ``plugin_id``, at most ``limit`` in all."""
        found: list[SeriesInfo] = []
        for instance_id in instance_ids:
            found += await self._store.find_series(
                source_kind="instance",
                source_id=str(instance_id),
                plugin_id=plugin_id,
                name=name,
                labels=labels,
                limit=limit - len(found),
            )
            if len(found) >= limit:
                break
        return found


def _series_out(info: SeriesInfo, points: list[Point]) -> HistorySeries:
    return HistorySeries(
        metric_name=info.name,
        labels=info.labels,
        unit=info.unit,
        instance_id=info.source_id,
        points=[
            HistoryPoint(ts=from_ms(p.ts), value=p.value, min=p.min, max=p.max, count=p.count)
            if p.sum is not None
            else HistoryPoint(ts=from_ms(p.ts), value=p.value)
            for p in points
        ],
    )


# --- every stored series, tenant-scoped (/api/metrics) ------------------------------------


class LatestValue(BaseModel):
    """The newest sample of a series."""

    ts: datetime
    value: float


class SeriesOut(BaseModel):
    """A stored series and its newest value."""

    id: int
    name: str
    source_kind: str = Field(description="instance (a plugin instance) or run (a task run).")
    source_id: str
    plugin_id: str | None
    labels: dict[str, str]
    unit: str | None
    latest: LatestValue | None


class Aggregate(BaseModel):
    """min, max, avg, last and count of a metric's samples."""

    count: int
    min: float
    max: float
    avg: float
    last: float | None
    last_ts: datetime | None


class SeriesDetail(SeriesOut):
    """A series with the aggregates of all its samples."""

    summary: Aggregate | None


class MetricSummary(Aggregate):
    """One metric's aggregates over the series of a task or run."""

    name: str
    unit: str | None
    series: int = Field(description="How many series (runs) contributed.")


class SummaryOut(BaseModel):
    """Per-metric aggregates of a task's runs or of one run."""

    source: Literal["task", "run"]
    id: uuid.UUID
    metrics: list[MetricSummary]


def _uuid_text(column: Any, *, sqlite: bool) -> ColumnElement[str]:
    """A UUID column as ``str(uuid)`` text, the form series keep in ``source_id``."""
    if not sqlite:
        return cast(column, String)
    # SQLite stores UUIDs as 32 hex digits; rebuild the dashed form so the index on
    # (source_kind, source_id) still serves the lookup.
    parts = [func.substr(column, start, length) for start, length in _UUID_PARTS]
    text_: ColumnElement[str] = parts[0]
    for part in parts[1:]:
        text_ = text_.concat("-").concat(part)
    return text_


_UUID_PARTS = ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))


class SeriesService:
    """Every series a tenant may read: its plugin instances' and its task runs'."""

    def __init__(self, *, database: Database, store: MetricStore) -> None:
        self._db = database
        self._store = store

    def _scope(
        self,
        tenant_id: str,
        *,
        task_id: uuid.UUID | None = None,
        run_id: uuid.UUID | None = None,
    ) -> ColumnElement[bool]:
        sqlite = self._db.is_sqlite
        runs = select(_uuid_text(Run.id, sqlite=sqlite)).where(Run.tenant_id == tenant_id)
        if task_id is not None:
            runs = runs.where(Run.task_id == task_id)
        if run_id is not None:
            runs = runs.where(Run.id == run_id)
        of_runs = and_(Series.source_kind == "run", Series.source_id.in_(runs))
        if task_id is not None or run_id is not None:
            return of_runs
        instances = select(_uuid_text(PluginInstance.id, sqlite=sqlite)).where(
            PluginInstance.tenant_id == tenant_id
        )
        of_instances = and_(Series.source_kind == "instance", Series.source_id.in_(instances))
        return or_(of_instances, of_runs)

    async def list_series(
        self,
        *,
        tenant_id: str,
        plugin_id: str | None = None,
        task_id: uuid.UUID | None = None,
        run_id: uuid.UUID | None = None,
        name: str | None = None,
        skip: int = 0,
        limit: int = 10,
    ) -> tuple[list[SeriesOut], int]:
        """The tenant's series matching the filters, by id, with their newest values."""
        where = [self._scope(tenant_id, task_id=task_id, run_id=run_id)]
        if plugin_id is not None:
            where.append(Series.plugin_id == plugin_id)
        if name is not None:
            where.append(Series.name == name)
        async with self._db.session() as session:
            total = await session.scalar(select(func.count()).select_from(Series).where(*where))
            rows = list(
                await session.scalars(
                    select(Series).where(*where).order_by(Series.id).offset(skip).limit(limit)
                )
            )
        latest = await self._store.latest([row.id for row in rows])
        return [_stored_series(row, latest.get(row.id)) for row in rows], int(total or 0)

    async def get(self, series_id: int, *, tenant_id: str) -> SeriesDetail:
        """One series with its newest value and aggregates; 404 outside the tenant."""
        async with self._db.session() as session:
            row = await session.scalar(
                select(Series).where(Series.id == series_id, self._scope(tenant_id))
            )
        if row is None:
            raise NotFoundError(f"unknown metric {series_id}")
        latest = (await self._store.latest([row.id])).get(row.id)
        summary = (await self._store.summarize([row.id])).get(row.id)
        aggregate = None
        if summary is not None:
            aggregate = Aggregate(
                count=summary.count,
                min=summary.min,
                max=summary.max,
                avg=summary.sum / summary.count if summary.count else 0.0,
                last=latest.value if latest else None,
                last_ts=from_ms(latest.ts) if latest else None,
            )
        return SeriesDetail(**_stored_series(row, latest).model_dump(), summary=aggregate)

    async def summary(
        self, *, tenant_id: str, task_id: uuid.UUID | None = None, run_id: uuid.UUID | None = None
    ) -> SummaryOut:
        """Per metric name: aggregates over the series of a task's runs, or of one run.

        404 when the task or run is not the tenant's.
        """
        async with self._db.session() as session:
            if run_id is not None:
                exists = await session.scalar(
                    select(Run.id).where(Run.id == run_id, Run.tenant_id == tenant_id)
                )
            else:
                exists = await session.scalar(
                    select(Task.id).where(Task.id == task_id, Task.tenant_id == tenant_id)
                )
            if exists is None:
                what = f"run {run_id}" if run_id is not None else f"task {task_id}"
                raise NotFoundError(f"unknown {what}")
            rows = list(
                await session.scalars(
                    select(Series)
                    .where(self._scope(tenant_id, task_id=task_id, run_id=run_id))
                    .order_by(Series.name, Series.id)
                )
            )
        ids = [row.id for row in rows]
        sums = await self._store.summarize(ids)
        latest = await self._store.latest(ids)
        metrics: list[MetricSummary] = []
        for name, group in itertools.groupby(rows, key=lambda row: row.name):
            members = [row for row in group if row.id in sums]
            if not members:
                continue
            count = sum(sums[row.id].count for row in members)
            newest = max(
                (latest[row.id] for row in members if row.id in latest),
                key=lambda point: point.ts,
                default=None,
            )
            metrics.append(
                MetricSummary(
                    name=name,
                    unit=members[0].unit,
                    series=len(members),
                    count=count,
                    min=min(sums[row.id].min for row in members),
                    max=max(sums[row.id].max for row in members),
                    avg=sum(sums[row.id].sum for row in members) / count if count else 0.0,
                    last=newest.value if newest else None,
                    last_ts=from_ms(newest.ts) if newest else None,
                )
            )
        source: Literal["task", "run"] = "run" if run_id is not None else "task"
        identifier = run_id if run_id is not None else task_id
        assert identifier is not None
        return SummaryOut(source=source, id=identifier, metrics=metrics)


def _stored_series(row: Series, latest: Point | None) -> SeriesOut:
    return SeriesOut(
        id=row.id,
        name=row.name,
        source_kind=row.source_kind,
        source_id=row.source_id,
        plugin_id=row.plugin_id,
        labels=dict(row.labels or {}),
        unit=row.unit,
        latest=LatestValue(ts=from_ms(latest.ts), value=latest.value) if latest else None,
    )
