"""``/api/plugins``: the catalog, enabling and configuring, status, metrics and executions.

The hot reads (list, detail, status, latest metrics, summary) answer with the JSON the
cache holds: detail, status and summary send the cached bytes as they are, list and
latest metrics (filtered or trimmed here) encode theirs once with orjson. Their
``response_model`` only documents the shape, since FastAPI passes a returned
``Response`` through as it is. Decoding the cached values into models and validating and
serialising them again took most of those requests' time. The reads also take the
components from the request rather than through a dependency, and the router's
:class:`~unity.deps.ReadRoute` runs them without FastAPI's general dependency solver.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query, Request, Response

from unity.components import Components
from unity.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from unity.core.params import IsoDatetime
from unity.deps import Caller, ComponentsDep, ReadRoute, access
from unity.errors import BadRequestError, problem_responses
from unity.plugins.schemas import (
    CategoryOut,
    EnableRequest,
    ExecutionOut,
    HistoryOut,
    LatestMetricsOut,
    PluginDetail,
    PluginStatusOut,
    PluginSummary,
    StatsSummary,
)
from unity.plugins.sdk import PluginKind

router = APIRouter(
    prefix="/api/plugins",
    tags=["plugins"],
    responses=problem_responses(400, 401, 403, 404, 422, 429),
    route_class=ReadRoute,
)

PluginIdPath = Annotated[
    str, Path(description="The plugin's id.", examples=["system_info"], max_length=64)
]


@router.get("", summary="List plugins", response_model=Page[PluginSummary])
async def list_plugins(
    request: Request,
    caller: Annotated[Caller, access("plugins:read")],
    skip: Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip.")] = 0,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page (max {MAX_LIMIT}).")
    ] = DEFAULT_LIMIT,
    enabled: Annotated[
        bool | None, Query(description="Only enabled (or disabled) plugins.")
    ] = None,
    category: Annotated[str | None, Query(max_length=50, examples=["network"])] = None,
    kind: Annotated[PluginKind | None, Query()] = None,
) -> Response:
    """Every known plugin, built-in or third-party, broken ones included, by id."""
    page = await _components(request).catalog.list_data(
        tenant_id=caller.tenant,
        enabled=enabled,
        category=category,
        kind=kind,
        skip=skip,
        limit=limit,
    )
    return _json(page)


@router.get("/stats/summary", summary="Summary figures", response_model=StatsSummary)
async def stats_summary(
    request: Request, caller: Annotated[Caller, access("plugins:read")]
) -> Response:
    """Plugins, instances by health, stored data and last hour's executions."""
    return _body(await _components(request).collection.summary_json(tenant_id=caller.tenant))


@router.get("/categories/list", summary="Plugin categories")
async def categories(
    c: ComponentsDep, caller: Annotated[Caller, access("plugins:read")]
) -> list[CategoryOut]:
    """Each category with how many plugins it holds and how many are enabled."""
    return await c.catalog.categories(tenant_id=caller.tenant)


@router.get("/{plugin_id}", summary="Plugin details", response_model=PluginDetail)
async def get_plugin(
    request: Request, caller: Annotated[Caller, access("plugins:read")], plugin_id: PluginIdPath
) -> Response:
    """Manifest, config and its JSON Schema, declared metrics, instances with their health."""
    catalog = _components(request).catalog
    return _body(await catalog.detail_json(plugin_id, tenant_id=caller.tenant))


@router.post(
    "/{plugin_id}/enable",
    summary="Enable, disable or configure a plugin",
    responses=problem_responses(409),
)
async def enable_plugin(
    c: ComponentsDep,
    caller: Annotated[Caller, access("plugins:write")],
    plugin_id: PluginIdPath,
    body: EnableRequest,
) -> PluginDetail:
    """Enabling validates ``config`` against the plugin's schema (422 with the failing fields)
    and schedules its default instance at once; disabling unschedules it. No restart needed."""
    await c.catalog.detail(plugin_id, tenant_id=caller.tenant)  # 404 before anything changes
    await c.plugins.set_enabled(
        plugin_id, tenant_id=caller.tenant, enabled=body.enabled, config=body.config
    )
    await c.catalog.invalidate(plugin_id, caller.tenant)
    return await c.catalog.detail(plugin_id, tenant_id=caller.tenant)


@router.get("/{plugin_id}/status", summary="Plugin health", response_model=PluginStatusOut)
async def plugin_status(
    request: Request, caller: Annotated[Caller, access("plugins:read")], plugin_id: PluginIdPath
) -> Response:
    """Health (the worst of its enabled instances), error counts, last execution, success and error."""
    c = _components(request)
    await c.catalog.ensure_known(plugin_id, tenant_id=caller.tenant)
    return _body(await c.collection.plugin_status_json(plugin_id, tenant_id=caller.tenant))


@router.get("/{plugin_id}/metrics", summary="Latest metrics", response_model=LatestMetricsOut)
async def latest_metrics(
    request: Request,
    caller: Annotated[Caller, access("metrics:read")],
    plugin_id: PluginIdPath,
    limit: Annotated[int, Query(ge=1, le=1000, description="Series to return.")] = 100,
) -> Response:
    """The newest value of each of the plugin's series, and its latest snapshot."""
    c = _components(request)
    await c.catalog.ensure_known(plugin_id, tenant_id=caller.tenant)

    async def instance_ids() -> list[uuid.UUID]:  # only when the latest values are not cached
        detail = await c.catalog.detail_data(plugin_id, tenant_id=caller.tenant)
        return [uuid.UUID(i["id"]) for i in detail["instances"]]

    latest = await c.metrics.latest_data(
        plugin_id, tenant_id=caller.tenant, instance_ids=instance_ids, limit=limit
    )
    return _json(latest)


@router.get("/{plugin_id}/metrics/history", summary="Metric history")
async def metrics_history(
    c: ComponentsDep,
    caller: Annotated[Caller, access("metrics:read")],
    plugin_id: PluginIdPath,
    metric_name: Annotated[str | None, Query(max_length=200, examples=["cpu_percent"])] = None,
    hours: Annotated[
        float, Query(gt=0, le=24 * 366, description="Span ending now (or at end).")
    ] = 24,
    start: Annotated[
        IsoDatetime | None, Query(description="ISO 8601 with timezone; overrides hours.")
    ] = None,
    end: Annotated[
        IsoDatetime | None, Query(description="ISO 8601 with timezone; default now.")
    ] = None,
    step: Annotated[
        float | None, Query(ge=1, le=86_400 * 31, description="Seconds per returned point.")
    ] = None,
    resolution: Annotated[
        Literal["raw", "1m", "1h"] | None,
        Query(description="Force a resolution; by default picked from the span."),
    ] = None,
    label: Annotated[
        list[str] | None,
        Query(description="Label filter `name:value`, repeatable.", examples=[["mount:/"]]),
    ] = None,
    instance_id: Annotated[uuid.UUID | None, Query()] = None,
) -> HistoryOut:
    """Points over a range. Raw samples for short spans, 1-minute or 1-hour rollups for longer
    ones, so a series stays under a few thousand points; ``step`` averages further."""
    detail = await c.catalog.detail(plugin_id, tenant_id=caller.tenant)
    return await c.metrics.history(
        plugin_id,
        instance_ids=[i.id for i in detail.instances],
        metric_name=metric_name,
        start=start,
        end=end,
        hours=hours,
        step_s=step,
        labels=_labels(label or []),
        instance_id=instance_id,
        resolution=resolution,
    )


@router.get("/{plugin_id}/executions", summary="Execution history")
async def executions(
    c: ComponentsDep,
    caller: Annotated[Caller, access("plugins:read")],
    plugin_id: PluginIdPath,
    skip: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    status: Annotated[Literal["success", "failed", "timeout"] | None, Query()] = None,
    instance_id: Annotated[uuid.UUID | None, Query()] = None,
) -> Page[ExecutionOut]:
    """The plugin's executions, newest first."""
    await c.catalog.detail(plugin_id, tenant_id=caller.tenant)
    items, total = await c.collection.executions(
        plugin_id,
        tenant_id=caller.tenant,
        status=status,
        instance_id=instance_id,
        skip=skip,
        limit=limit,
    )
    return Page(items=items, total=total, skip=skip, limit=limit)


def _components(request: Request) -> Components:
    components: Components = request.app.state.components
    return components


def _json(data: Any) -> Response:
    """``data`` (JSON values, as the cache holds them) as an ``application/json`` response."""
    return Response(orjson.dumps(data), media_type="application/json")


def _body(encoded: bytes) -> Response:
    """JSON the cache holds encoded, answered as it is."""
    return Response(encoded, media_type="application/json")


def _labels(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition(":")
        if not sep or not name:
            raise BadRequestError(f"label filter {pair!r} must look like name:value")
        out[name] = value
    return out
