"""Tasks and runs as the API sees them: create, read, change and delete, per tenant.

State changes of runs (create, decide, cancel, roll back) go through the
:class:`~unity.runs.executor.RunEngine`; this module validates, reads and deletes.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from unity.auth.principal import Forbidden, Principal
from unity.core.clock import Clock
from unity.core.db import Database
from unity.errors import ConflictError, NotFoundError, ValidationFailed
from unity.metrics.store.abc import MetricStore
from unity.plugins.registry import PluginRegistry
from unity.plugins.sdk import Action
from unity.runs import states as st
from unity.runs.executor import RunEngine
from unity.runs.models import Run, RunLog, Task
from unity.runs.schemas import (
    ApprovalOut,
    Decision,
    RunLogOut,
    RunOut,
    TaskCreate,
    TaskOut,
    TaskUpdate,
)

TaskListener = Callable[[], Awaitable[None]]


def task_out(task: Task) -> TaskOut:
    """The API view of a task, with its success rate."""
    finished = task.success_count + task.failure_count
    rate = task.success_count / finished if finished else None
    return TaskOut.model_validate(
        {
            **{c.key: getattr(task, c.key) for c in Task.__table__.columns},
            "success_rate": rate,
        }
    )


def run_out(run: Run) -> RunOut:
    """The API view of a run."""
    return RunOut.model_validate(run)


class TaskService:
    """CRUD of tasks; an action's ``params`` are validated against its model."""

    def __init__(
        self,
        *,
        database: Database,
        registry: PluginRegistry,
        clock: Clock,
        on_change: TaskListener | None = None,
    ) -> None:
        self._db = database
        self._registry = registry
        self._clock = clock
        self.on_change = on_change

    def _check_action(
        self, action: str, params: dict[str, Any], principal: Principal
    ) -> dict[str, Any]:
        """Validated ``params`` of ``action`` as stored; 422 for an unknown or non-action
        plugin or bad params, 403 for an admin-only action without the admin scope."""
        try:
            spec = self._registry.get(action)
        except NotFoundError:
            raise ValidationFailed(
                f"unknown action {action!r}",
                errors=[
                    {"loc": ["body", "action"], "msg": "unknown plugin", "type": "value_error"}
                ],
            ) from None
        if spec.cls is None:
            raise ConflictError(f"action {action} is broken: {spec.error}")
        if not issubclass(spec.cls, Action):
            raise ValidationFailed(
                f"plugin {action!r} is a {spec.cls.kind}, not an action",
                errors=[{"loc": ["body", "action"], "msg": "not an action", "type": "value_error"}],
            )
        if spec.cls.requires_admin and not principal.is_admin:
            raise Forbidden(
                f"tasks using the action {action} need a key with the admin scope",
                missing_scopes=["admin"],
            )
        try:
            validated = spec.cls.params_model.model_validate(params)
        except ValidationError as exc:
            errors = [
                {"loc": ["body", "params", *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors()
            ]
            raise ValidationFailed(f"invalid params for action {action}", errors=errors) from exc
        return validated.model_dump(mode="json", exclude_unset=True)

    async def create(self, body: TaskCreate, *, tenant_id: str, principal: Principal) -> TaskOut:
        params = self._check_action(body.action, body.params, principal)
        now = self._clock.now()
        task = Task(
            tenant_id=tenant_id,
            name=body.name,
            description=body.description,
            action=body.action,
            params=params,
            require_approval=body.require_approval,
            approval_timeout_s=body.approval_timeout_s,
            on_timeout=body.on_timeout,
            allow_self_approval=body.allow_self_approval,
            max_rounds=body.max_rounds,
            schedule=body.schedule,
            enabled=body.enabled,
            status="pending",
            run_count=0,
            success_count=0,
            failure_count=0,
            created_by_key_id=principal.key_id,
            created_by_admin=principal.is_admin,
            created_at=now,
            updated_at=now,
        )
        async with self._db.session() as session:
            session.add(task)
        await self._changed()
        return task_out(task)

    async def list_tasks(
        self, *, tenant_id: str, status: str | None, skip: int, limit: int
    ) -> tuple[list[TaskOut], int]:
        where = [Task.tenant_id == tenant_id]
        if status is not None:
            where.append(Task.status == status)
        async with self._db.session() as session:
            total = await session.scalar(select(func.count()).select_from(Task).where(*where))
            tasks = await session.scalars(
                select(Task)
                .where(*where)
                .order_by(Task.created_at.desc(), Task.id)
                .offset(skip)
                .limit(limit)
            )
            return [task_out(t) for t in tasks], int(total or 0)

    async def get(self, task_id: uuid.UUID, *, tenant_id: str) -> TaskOut:
        async with self._db.session() as session:
            return task_out(await self._task(session, task_id, tenant_id))

    async def update(
        self, task_id: uuid.UUID, body: TaskUpdate, *, tenant_id: str, principal: Principal
    ) -> TaskOut:
        changes = body.model_dump(exclude_unset=True)
        for field in (
            "name",
            "require_approval",
            "approval_timeout_s",
            "on_timeout",
            "allow_self_approval",
            "enabled",
        ):
            if field in changes and changes[field] is None:
                raise ValidationFailed(
                    f"{field} cannot be null",
                    errors=[{"loc": ["body", field], "msg": "may not be null", "type": "none"}],
                )
        async with self._db.session() as session:
            task = await self._task(session, task_id, tenant_id)
            if "action" in changes or "params" in changes:
                action = changes.pop("action", None) or task.action
                params = changes.pop("params", None)
                task.params = self._check_action(
                    action, task.params if params is None else params, principal
                )
                task.action = action
                task.created_by_admin = task.created_by_admin and principal.is_admin
            elif task.created_by_admin and not principal.is_admin:
                # The task may compose admin-only actions; only an admin may retune it.
                self._check_action(task.action, task.params, principal)
            if "schedule" in changes and not changes["schedule"]:
                changes["schedule"] = None
            if "description" in changes and changes["description"] is None:
                changes["description"] = ""
            for field, value in changes.items():
                setattr(task, field, value)
            task.updated_at = self._clock.now()
            out = task_out(task)
        await self._changed()
        return out

    async def delete(self, task_id: uuid.UUID, *, tenant_id: str) -> None:
        """Delete a task with its runs; 409 while one of its runs is unfinished."""
        async with self._db.session() as session:
            task = await self._task(session, task_id, tenant_id)
            active = await session.scalar(
                select(func.count())
                .select_from(Run)
                .where(Run.task_id == task.id, Run.status.not_in(sorted(st.FINISHED)))
            )
            if active:
                raise ConflictError("the task has unfinished runs: cancel them first")
            await session.delete(task)
        await self._changed()

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()

    @staticmethod
    async def _task(session: AsyncSession, task_id: uuid.UUID, tenant_id: str) -> Task:
        task = await session.scalar(
            select(Task).where(Task.id == task_id, Task.tenant_id == tenant_id)
        )
        if task is None:
            raise NotFoundError(f"unknown task {task_id}")
        return task


class RunService:
    """Reads and deletes runs; their state changes go through the engine."""

    def __init__(
        self, *, database: Database, engine: RunEngine, store: MetricStore, clock: Clock
    ) -> None:
        self._db = database
        self.engine = engine
        self._store = store
        self._clock = clock

    async def list_runs(
        self,
        *,
        tenant_id: str,
        task_id: uuid.UUID | None,
        status: str | None,
        skip: int,
        limit: int,
    ) -> tuple[list[RunOut], int]:
        where = [Run.tenant_id == tenant_id]
        if task_id is not None:
            where.append(Run.task_id == task_id)
        if status is not None:
            where.append(Run.status == status)
        async with self._db.session() as session:
            total = await session.scalar(select(func.count()).select_from(Run).where(*where))
            runs = await session.scalars(
                select(Run)
                .where(*where)
                .order_by(Run.created_at.desc(), Run.id)
                .offset(skip)
                .limit(limit)
            )
            return [run_out(r) for r in runs], int(total or 0)

    async def get(self, run_id: uuid.UUID, *, tenant_id: str) -> RunOut:
        async with self._db.session() as session:
            return run_out(await self._run(session, run_id, tenant_id))

    async def delete(self, run_id: uuid.UUID, *, tenant_id: str) -> None:
        """Delete a finished run with its log and metrics; 409 while it is not finished."""
        async with self._db.session() as session:
            run = await self._run(session, run_id, tenant_id)
            if run.status not in st.FINISHED:
                raise ConflictError(
                    f"run is {run.status}: only finished runs can be deleted", run_status=run.status
                )
            await session.delete(run)
        series = await self._store.find_series(
            source_kind="run", source_id=str(run_id), limit=10_000
        )
        await self._store.delete_series([s.id for s in series])

    async def logs(
        self, run_id: uuid.UUID, *, tenant_id: str, skip: int, limit: int
    ) -> tuple[list[RunLogOut], int]:
        async with self._db.session() as session:
            await self._run(session, run_id, tenant_id)
            total = await session.scalar(
                select(func.count()).select_from(RunLog).where(RunLog.run_id == run_id)
            )
            rows = await session.scalars(
                select(RunLog)
                .where(RunLog.run_id == run_id)
                .order_by(RunLog.id)
                .offset(skip)
                .limit(limit)
            )
            return [RunLogOut.model_validate(r) for r in rows], int(total or 0)

    async def approval(
        self, run_id: uuid.UUID, *, tenant_id: str, principal: Principal
    ) -> ApprovalOut:
        """The approval request of a run, its deadline and whether ``principal`` may answer."""
        async with self._db.session() as session:
            run = await self._run(session, run_id, tenant_id)
            task = await session.get(Task, run.task_id)
        assert task is not None  # runs are deleted with their task
        pending = run.status == st.AWAITING_APPROVAL
        reason: str | None = None
        if not principal.has("runs:approve"):
            reason = "this key lacks the runs:approve scope"
        else:
            try:
                self.engine.check_approver(task, principal)
            except Forbidden as exc:
                reason = exc.detail
        if reason is None and not pending:
            reason = f"the run is {run.status}, not awaiting approval"
        left = None
        if pending and run.approval_deadline is not None:
            left = max(0.0, (run.approval_deadline - self._clock.now()).total_seconds())
        return ApprovalOut(
            run_id=run.id,
            status=run.status,
            pending=pending,
            plan=run.plan,
            plan_hash=run.plan_hash,
            deadline=run.approval_deadline,
            seconds_left=left,
            on_timeout=task.on_timeout,
            can_approve=reason is None,
            reason=reason,
            decision=Decision.model_validate(run.approval) if run.approval else None,
        )

    @staticmethod
    async def _run(session: AsyncSession, run_id: uuid.UUID, tenant_id: str) -> Run:
        run = await session.scalar(select(Run).where(Run.id == run_id, Run.tenant_id == tenant_id))
        if run is None:
            raise NotFoundError(f"unknown run {run_id}")
        return run
