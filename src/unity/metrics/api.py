"""``/api/metrics``: every series the tenant may read, and summaries of task and run metrics.

Series come from plugin instances (``source_kind`` instance) and from task runs
(``source_kind`` run: duration_ms, steps and what the action reported).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query

from unity.core.pagination import Page, PageDep
from unity.deps import Caller, ComponentsDep, access
from unity.errors import problem_responses
from unity.metrics.service import SeriesDetail, SeriesOut, SummaryOut

router = APIRouter(
    prefix="/api/metrics",
    tags=["metrics"],
    responses=problem_responses(400, 401, 403, 404, 422, 429),
)


@router.get("", include_in_schema=False)
@router.get("/", summary="List metric series")
async def list_series(
    c: ComponentsDep,
    caller: Annotated[Caller, access("metrics:read")],
    page: PageDep,
    plugin_id: Annotated[str | None, Query(max_length=64, examples=["file_cleanup"])] = None,
    task_id: Annotated[uuid.UUID | None, Query(description="Series of this task's runs.")] = None,
    run_id: Annotated[uuid.UUID | None, Query(description="Series of this run.")] = None,
    name: Annotated[
        str | None, Query(max_length=200, description="Metric name.", examples=["duration_ms"])
    ] = None,
) -> Page[SeriesOut]:
    """The tenant's series with their latest value, by id."""
    items, total = await c.series.list_series(
        tenant_id=caller.tenant,
        plugin_id=plugin_id,
        task_id=task_id,
        run_id=run_id,
        name=name,
        skip=page.skip,
        limit=page.limit,
    )
    return Page(items=items, total=total, skip=page.skip, limit=page.limit)


@router.get("/task/{task_id}/summary", summary="Metrics of a task's runs")
async def task_summary(
    c: ComponentsDep, caller: Annotated[Caller, access("metrics:read")], task_id: uuid.UUID
) -> SummaryOut:
    """Per metric over every run of the task: min, max, avg, last and count."""
    return await c.series.summary(tenant_id=caller.tenant, task_id=task_id)


@router.get("/run/{run_id}/summary", summary="Metrics of a run")
async def run_summary(
    c: ComponentsDep, caller: Annotated[Caller, access("metrics:read")], run_id: uuid.UUID
) -> SummaryOut:
    """Per metric of the run: min, max, avg, last and count."""
    return await c.series.summary(tenant_id=caller.tenant, run_id=run_id)


@router.get("/{metric_id}", summary="One metric series")
async def get_series(
    c: ComponentsDep,
    caller: Annotated[Caller, access("metrics:read")],
    metric_id: Annotated[int, Path(ge=1, le=2**62, description="The series id.")],
) -> SeriesDetail:
    """The series, its latest value and the min, max, avg, last and count of its samples."""
    return await c.series.get(metric_id, tenant_id=caller.tenant)
