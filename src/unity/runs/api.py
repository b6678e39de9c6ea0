"""``/api/tasks`` and ``/api/runs``: tasks, their runs, approvals, cancels and rollbacks."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from unity.core.events.catalog import RunStatus
from unity.core.pagination import Page, PageDep
from unity.deps import Caller, ComponentsDep, access
from unity.errors import problem_responses
from unity.runs.schemas import (
    ApprovalOut,
    ApprovalRequest,
    RollbackRequest,
    RunCreate,
    RunLogOut,
    RunOut,
    RunUpdate,
    TaskCreate,
    TaskOut,
    TaskStatus,
    TaskUpdate,
)
from unity.runs.service import run_out

tasks_router = APIRouter(
    prefix="/api/tasks",
    tags=["tasks"],
    responses=problem_responses(400, 401, 403, 404, 422, 429),
)
runs_router = APIRouter(
    prefix="/api/runs",
    tags=["runs"],
    responses=problem_responses(400, 401, 403, 404, 422, 429),
)
routers = (tasks_router, runs_router)


# --- tasks ---------------------------------------------------------------------------------


@tasks_router.post("", status_code=status.HTTP_201_CREATED, include_in_schema=False)
@tasks_router.post(
    "/",
    status_code=status.HTTP_201_CREATED,
    summary="Create a task",
    responses=problem_responses(409),
)
async def create_task(
    c: ComponentsDep, caller: Annotated[Caller, access("runs:write")], body: TaskCreate
) -> TaskOut:
    """A task names an action plugin and its ``params`` (validated against the action's
    ``config_schema``; 422 naming the failing field), its approval policy and an optional
    ``schedule``. Actions that need the admin scope refuse other keys (403)."""
    return await c.tasks.create(body, tenant_id=caller.tenant, principal=caller.principal)


@tasks_router.get("", include_in_schema=False)
@tasks_router.get("/", summary="List tasks")
async def list_tasks(
    c: ComponentsDep,
    caller: Annotated[Caller, access("runs:read")],
    page: PageDep,
    status: Annotated[
        TaskStatus | None, Query(description="Status of each task's latest run, summarized.")
    ] = None,
) -> Page[TaskOut]:
    """The tenant's tasks, newest first."""
    items, total = await c.tasks.list_tasks(
        tenant_id=caller.tenant, status=status, skip=page.skip, limit=page.limit
    )
    return Page(items=items, total=total, skip=page.skip, limit=page.limit)


@tasks_router.get("/{task_id}", summary="Get a task")
async def get_task(
    c: ComponentsDep, caller: Annotated[Caller, access("runs:read")], task_id: uuid.UUID
) -> TaskOut:
    """One task with its success figures."""
    return await c.tasks.get(task_id, tenant_id=caller.tenant)


@tasks_router.patch("/{task_id}", summary="Update a task", responses=problem_responses(409))
async def update_task(
    c: ComponentsDep,
    caller: Annotated[Caller, access("runs:write")],
    task_id: uuid.UUID,
    body: TaskUpdate,
) -> TaskOut:
    """Replace the fields given; runs already created keep the params they started with."""
    return await c.tasks.update(task_id, body, tenant_id=caller.tenant, principal=caller.principal)


@tasks_router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a task",
    responses=problem_responses(409),
)
async def delete_task(
    c: ComponentsDep, caller: Annotated[Caller, access("runs:write")], task_id: uuid.UUID
) -> Response:
    """Delete the task and its finished runs; 409 while a run is unfinished."""
    await c.tasks.delete(task_id, tenant_id=caller.tenant)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- runs ----------------------------------------------------------------------------------


@runs_router.post("", status_code=status.HTTP_201_CREATED, include_in_schema=False)
@runs_router.post("/", status_code=status.HTTP_201_CREATED, summary="Start a run")
async def create_run(
    c: ComponentsDep, caller: Annotated[Caller, access("runs:write")], body: RunCreate
) -> RunOut:
    """Create a run of the task; it starts planning in the background at once (404 for an
    unknown task). Follow it with ``GET /api/runs/{id}`` or the WebSocket streams."""
    run = await c.engine.create_run(
        body.task_id, tenant_id=caller.tenant, principal=caller.principal, trigger="manual"
    )
    return run_out(run)


@runs_router.get("", include_in_schema=False)
@runs_router.get("/", summary="List runs")
async def list_runs(
    c: ComponentsDep,
    caller: Annotated[Caller, access("runs:read")],
    page: PageDep,
    task_id: Annotated[uuid.UUID | None, Query()] = None,
    status: Annotated[RunStatus | None, Query()] = None,
) -> Page[RunOut]:
    """The tenant's runs, newest first."""
    items, total = await c.runs.list_runs(
        tenant_id=caller.tenant, task_id=task_id, status=status, skip=page.skip, limit=page.limit
    )
    return Page(items=items, total=total, skip=page.skip, limit=page.limit)


@runs_router.get("/{run_id}", summary="Get a run")
async def get_run(
    c: ComponentsDep, caller: Annotated[Caller, access("runs:read")], run_id: uuid.UUID
) -> RunOut:
    """Status, plan and its hash, the decision, the result or error."""
    return await c.runs.get(run_id, tenant_id=caller.tenant)


@runs_router.patch("/{run_id}", summary="Change a run", responses=problem_responses(409))
async def update_run(
    c: ComponentsDep,
    caller: Annotated[Caller, access("runs:write")],
    run_id: uuid.UUID,
    body: RunUpdate,
) -> RunOut:
    """The one change a client can make is ``{"status": "cancelled"}`` (409 once finished)."""
    run = await c.engine.cancel(run_id, tenant_id=caller.tenant, reason="cancelled through the API")
    return run_out(run)


@runs_router.delete(
    "/{run_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a run",
    responses=problem_responses(409),
)
async def delete_run(
    c: ComponentsDep, caller: Annotated[Caller, access("runs:write")], run_id: uuid.UUID
) -> Response:
    """Delete a finished run with its log and metrics; 409 while it is not finished."""
    await c.runs.delete(run_id, tenant_id=caller.tenant)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@runs_router.post(
    "/{run_id}/approve", summary="Approve or reject a plan", responses=problem_responses(409)
)
async def approve_run(
    c: ComponentsDep,
    caller: Annotated[Caller, access("runs:approve")],
    run_id: uuid.UUID,
    body: ApprovalRequest,
) -> RunOut:
    """Decide on the plan the run waits with. 409 when the run is not awaiting approval, or
    when ``plan_hash`` is given and is not the current plan's. The decision records the
    key, its tenant, the feedback, the time and the plan hash approved."""
    run = await c.engine.decide(
        run_id,
        tenant_id=caller.tenant,
        principal=caller.principal,
        approved=body.approved,
        feedback=body.feedback,
        plan_hash=body.plan_hash,
    )
    return run_out(run)


@runs_router.post("/{run_id}/cancel", summary="Cancel a run", responses=problem_responses(409))
async def cancel_run(
    c: ComponentsDep, caller: Annotated[Caller, access("runs:write")], run_id: uuid.UUID
) -> RunOut:
    """Stop a run that has not finished (its apply is interrupted); 409 once it has."""
    run = await c.engine.cancel(run_id, tenant_id=caller.tenant, reason="cancelled through the API")
    return run_out(run)


@runs_router.post(
    "/{run_id}/rollback",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Roll back a completed run",
    responses=problem_responses(409),
)
async def rollback_run(
    c: ComponentsDep,
    caller: Annotated[Caller, access("runs:approve")],
    run_id: uuid.UUID,
    body: RollbackRequest,
) -> RunOut:
    """Undo what a completed run changed, when its action supports it (409 otherwise).
    Calling this approves the rollback, under the same rules as approving a plan; it then
    runs in the background and reports progress like any step."""
    run = await c.engine.rollback(
        run_id, tenant_id=caller.tenant, principal=caller.principal, feedback=body.feedback
    )
    return run_out(run)


@runs_router.get("/{run_id}/logs", summary="Run log")
async def run_logs(
    c: ComponentsDep,
    caller: Annotated[Caller, access("runs:read")],
    run_id: uuid.UUID,
    page: PageDep,
) -> Page[RunLogOut]:
    """State changes and progress steps of the run, oldest first."""
    items, total = await c.runs.logs(
        run_id, tenant_id=caller.tenant, skip=page.skip, limit=page.limit
    )
    return Page(items=items, total=total, skip=page.skip, limit=page.limit)


@runs_router.get("/{run_id}/approval", summary="Pending approval")
async def run_approval(
    c: ComponentsDep, caller: Annotated[Caller, access("runs:read")], run_id: uuid.UUID
) -> ApprovalOut:
    """The approval request: the plan and its hash, the deadline, what happens on timeout,
    and whether the calling key may answer it (and why not)."""
    return await c.runs.approval(run_id, tenant_id=caller.tenant, principal=caller.principal)
