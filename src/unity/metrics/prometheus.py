"""``GET /metrics``: Prometheus text exposition of Unity's own counters and every plugin
metric's latest value.

Figures are gathered asynchronously, then rendered with prometheus-client's exposition
code (``generate_latest``) through a one-shot registry, so the format is the library's.

Plugin metrics keep their names and labels and gain ``plugin`` and ``instance`` labels; a
sample label of the same name is renamed ``exported_plugin``/``exported_instance``, as
Prometheus does on a clash.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Annotated

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select

from unity.auth.ratelimit import RateLimiter
from unity.deps import Caller, ComponentsDep, access
from unity.errors import problem_responses
from unity.metrics.store.abc import SeriesInfo
from unity.plugins.models import Plugin, PluginInstance

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Series exported per scrape; beyond this, narrow what plugins collect.
MAX_EXPORTED_SERIES = 50_000

router = APIRouter(tags=["system"])


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE: {}}, "description": "Text exposition format."},
        **problem_responses(401, 403, 429),
    },
)
async def metrics(
    request: Request, c: ComponentsDep, caller: Annotated[Caller, access("metrics:read")]
) -> Response:
    """Unity's own counters and the latest value of every plugin metric of the key's tenant.

    Prometheus sends the key with ``authorization: {type: Bearer, credentials: <key>}`` in
    its scrape config.
    """
    families = [
        *_unity_families(c),
        *_rate_limit_families(request.app.state.rate_limiter),
        *await _plugin_families(c, caller.tenant),
    ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE)


def _unity_families(c: ComponentsDep) -> list[Metric]:
    executions = CounterMetricFamily(
        "unity_executions", "Plugin executions since start, by outcome.", labels=["status"]
    )
    for status, count in sorted(c.pipeline.stats.executions.items()):
        executions.add_metric([status], count)
    failures = CounterMetricFamily(
        "unity_execution_failures", "Executions that failed or timed out since start."
    )
    stats = c.pipeline.stats.executions
    failures.add_metric([], stats["failed"] + stats["timeout"])
    writer = c.writer.stats
    samples = CounterMetricFamily("unity_samples_written", "Samples committed by the batch writer.")
    samples.add_metric([], float(writer.get("samples_written", 0)))
    flushes = CounterMetricFamily("unity_writer_flushes", "Batch-writer flushes.")
    flushes.add_metric([], float(writer.get("flushes", 0)))
    write_failures = CounterMetricFamily(
        "unity_writer_failures", "Failed batch-writer flushes (retried)."
    )
    write_failures.add_metric([], float(writer.get("failures", 0)))
    lag = GaugeMetricFamily(
        "unity_writer_lag_seconds", "Age of the oldest sample waiting to be written."
    )
    lag.add_metric([], c.writer.lag_s)
    pending = GaugeMetricFamily("unity_writer_pending_samples", "Samples waiting to be written.")
    pending.add_metric([], c.writer.pending)
    cache = c.cache.stats
    cache_requests = CounterMetricFamily(
        "unity_cache_requests", "Cache lookups by result.", labels=["result", "backend"]
    )
    cache_requests.add_metric(["hit", cache.backend], cache.hits)
    cache_requests.add_metric(["miss", cache.backend], cache.misses)
    cache_errors = CounterMetricFamily("unity_cache_errors", "Cache backend errors (fell back).")
    cache_errors.add_metric([], cache.errors)
    clients = GaugeMetricFamily(
        "unity_websocket_clients", "Connected WebSocket clients.", labels=["endpoint"]
    )
    clients.add_metric(["metrics"], c.hub.clients)
    clients.add_metric(["streams"], c.streams.clients)
    bus_stats = c.bus.stats
    events = CounterMetricFamily("unity_events_published", "Events published on the bus.")
    events.add_metric([], bus_stats.get("published", 0))
    dropped = CounterMetricFamily(
        "unity_events_dropped", "Events dropped for slow subscribers (they were told: lag)."
    )
    dropped.add_metric([], bus_stats.get("dropped", 0))
    families: list[Metric] = [
        executions,
        failures,
        samples,
        flushes,
        write_failures,
        lag,
        pending,
        cache_requests,
        cache_errors,
        clients,
        events,
        dropped,
    ]
    if c.scheduler is not None:
        overlaps = CounterMetricFamily(
            "unity_scheduler_skipped_overlaps",
            "Scheduled runs skipped because one was still running.",
        )
        overlaps.add_metric([], c.scheduler.skipped_overlaps)
        families.append(overlaps)
    return families


def _rate_limit_families(limiter: RateLimiter) -> list[Metric]:
    stats = limiter.stats
    requests = CounterMetricFamily(
        "unity_rate_limit_requests", "API requests seen by the rate limiter.", labels=["outcome"]
    )
    requests.add_metric(["allowed"], stats.allowed)
    requests.add_metric(["limited"], stats.limited)
    requests.add_metric(["failed_open"], stats.failed_open)
    failures = CounterMetricFamily("unity_auth_failures", "Requests with a wrong API key.")
    failures.add_metric([], stats.auth_failures)
    blocked = CounterMetricFamily(
        "unity_auth_failures_limited", "Requests refused for too many wrong keys from one address."
    )
    blocked.add_metric([], stats.auth_failures_limited)
    return [requests, failures, blocked]


async def _plugin_families(c: ComponentsDep, tenant_id: str) -> list[Metric]:
    async with c.database.session() as session:
        rows = await session.execute(
            select(PluginInstance.id, PluginInstance.name, Plugin.plugin_id)
            .join(Plugin, PluginInstance.plugin_pk == Plugin.id)
            .where(PluginInstance.tenant_id == tenant_id)
        )
        names = {str(i): (name, plugin_id) for i, name, plugin_id in rows}
    series: list[SeriesInfo] = []
    for instance_id in names:
        series += await c.store.find_series(
            source_kind="instance", source_id=instance_id, limit=MAX_EXPORTED_SERIES - len(series)
        )
        if len(series) >= MAX_EXPORTED_SERIES:
            break
    if not series:
        return []
    latest = await c.store.latest([s.id for s in series])
    families: list[Metric] = []
    grouped: dict[str, list[tuple[dict[str, str], float, float]]] = {}
    for s in series:
        point = latest.get(s.id)
        if point is None:
            continue
        instance_name, plugin_id = names.get(s.source_id, (s.source_id, s.plugin_id or ""))
        labels = {
            (f"exported_{k}" if k in ("plugin", "instance") else k): v for k, v in s.labels.items()
        }
        labels["plugin"] = plugin_id
        labels["instance"] = instance_name
        grouped.setdefault(s.name, []).append((labels, point.value, point.ts / 1000))
    for name, entries in grouped.items():
        keys = sorted({k for labels, _, _ in entries for k in labels})
        family = GaugeMetricFamily(name, f"{name} (latest value collected by Unity)", labels=keys)
        for labels, value, ts in entries:
            family.add_metric([labels.get(k, "") for k in keys], value, timestamp=ts)
        families.append(family)
    return families
