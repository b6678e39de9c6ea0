"""Read models of stored metrics: a plugin's latest values and its history over a range."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from unity.collection.cache_keys import latest_key
from unity.core.cache import Cache, CacheTTL
from unity.core.clock import Clock, from_ms, to_ms
from unity.errors import BadRequestError
from unity.metrics.query import downsample, pick_resolution
from unity.metrics.store import MetricStore
from unity.metrics.store.abc import Point, Resolution, SeriesInfo
from unity.plugins.schemas import (
    HistoryOut,
    HistoryPoint,
    HistorySeries,
    LatestMetricsOut,
    LatestSample,
)

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

        async def build() -> dict[str, Any]:
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

        data = await self._cache.get_or_set(
            latest_key(plugin_id, tenant_id), self._ttl.latest_s, build
        )
        result = LatestMetricsOut.model_validate(data)
        result.metrics = result.metrics[:limit]
        return result

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
