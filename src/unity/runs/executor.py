"""The run engine: drives each run through the state machine of :mod:`unity.runs.states`.

Every step is a conditional ``UPDATE … WHERE status IN (…)`` committed before its event is
published, so the database is the truth: two callers racing (an approval and the
deadline, a cancel and the end of an apply) cannot both win, and a restart loses nothing.

Work happens in the processes that execute runs (``role`` all or scheduler); other
processes only record decisions, and the executing one picks them up on its next sweep:

* the sweep (every ``check_interval_s``) times out runs whose approval deadline passed
  (by the injected clock, so also those that expired while Unity was down), starts
  ``pending`` and ``approved`` runs nobody works on, and stops local work on runs that
  another process cancelled;
* at start, runs left ``analyzing`` are planned again and runs left ``running`` fail:
  what an interrupted apply changed is unknown, so it is reported, never repeated.

A run never applies a plan that was not approved: ``apply`` checks that the stored
decision approved exactly the stored plan's hash.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import structlog
from sqlalchemy import ColumnElement, select, update

from unity.auth.principal import Forbidden, Principal
from unity.core.clock import Clock, to_ms
from unity.core.db import Database
from unity.core.events import EventBus
from unity.errors import ConflictError, NotFoundError
from unity.metrics.store.abc import SeriesKey
from unity.metrics.writer import BatchWriter, PendingSample
from unity.plugins.registry import PluginRegistry
from unity.plugins.sdk import ActionError, Plan, Result
from unity.runs import states as st
from unity.runs.models import Run, RunLog, Task
from unity.runs.steps import ActionHost, RunScope, action_class, describe

log = structlog.stdlib.get_logger("unity.runs")

Values = dict[str, Any]


class RunEngine:
    """Creates runs and moves them through plan → approval → apply (see the module docstring)."""

    def __init__(
        self,
        *,
        database: Database,
        registry: PluginRegistry,
        bus: EventBus,
        writer: BatchWriter,
        http: httpx.AsyncClient,
        clock: Clock,
        data_dir: Path,
        execute: bool = True,
        check_interval_s: float = 1.0,
        shutdown_grace_s: float = 10.0,
    ) -> None:
        self._db = database
        self._bus = bus
        self._writer = writer
        self._clock = clock
        self.host = ActionHost(registry=registry, http=http, clock=clock, data_dir=data_dir)
        self.execute = execute
        self._interval = check_interval_s
        self._grace = shutdown_grace_s
        # run id -> (phase, task): the work this process does on a run right now.
        self._work: dict[uuid.UUID, tuple[str, asyncio.Task[None]]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False

    # --- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover what a previous process left behind, then sweep periodically (executing only)."""
        if not self.execute:
            return
        await self._recover()
        await self.sweep()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="unity:runs-sweep")

    async def stop(self) -> None:
        """Stop sweeping; give applies ``shutdown_grace_s`` to finish, cancel the rest.

        Nothing is marked on the way out: the next start recovers from the stored state.
        """
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        work = list(self._work.values())
        applying = [task for phase, task in work if phase != "analyze"]
        for phase, task in work:
            if phase == "analyze":
                task.cancel()
        if applying:
            _, late = await asyncio.wait(applying, timeout=self._grace)
            for task in late:
                task.cancel()
        await asyncio.gather(*(task for _, task in work), return_exceptions=True)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except Exception:  # the database may be away; the next sweep tries again
                log.exception("run sweep failed")

    async def _recover(self) -> None:
        async with self._db.session() as session:
            interrupted = list(
                await session.scalars(select(Run.id).where(Run.status == st.RUNNING))
            )
            analyzing = list(
                await session.scalars(select(Run.id).where(Run.status == st.ANALYZING))
            )
        for run_id in analyzing:
            await self._transition(
                run_id, st.PENDING, expect={st.ANALYZING}, note="planning again after a restart"
            )
        for run_id in interrupted:
            error = "interrupted: Unity stopped while the run was being applied"
            run = await self._transition(
                run_id, st.FAILED, expect={st.RUNNING}, values={"error": error}, level="error"
            )
            if run is not None:
                await self._publish("run.failed", run, error=error)

    async def sweep(self) -> None:
        """Time out expired approvals, start runs nobody works on, stop cancelled local work."""
        now = self._clock.now()
        async with self._db.session() as session:
            expired = list(
                await session.scalars(
                    select(Run.id).where(
                        Run.status == st.AWAITING_APPROVAL, Run.approval_deadline <= now
                    )
                )
            )
            waiting = list(
                await session.execute(
                    select(Run.id, Run.status).where(Run.status.in_([st.PENDING, st.APPROVED]))
                )
            )
            cancelled: list[uuid.UUID] = []
            if self._work:
                cancelled = list(
                    await session.scalars(
                        select(Run.id).where(
                            Run.id.in_(list(self._work)), Run.status == st.CANCELLED
                        )
                    )
                )
        for run_id in expired:
            await self._time_out(run_id)
        for run_id, status in waiting:
            if run_id not in self._work:
                if status == st.PENDING:
                    self._spawn(run_id, "analyze", self._analyze(run_id))
                else:
                    self._spawn(run_id, "apply", self._apply(run_id))
        for run_id in cancelled:
            self._stop_local(run_id)

    # --- commands --------------------------------------------------------------------------

    async def create_run(
        self, task_id: uuid.UUID, *, tenant_id: str, principal: Principal | None, trigger: str
    ) -> Run:
        """A new ``pending`` run of the task, planned at once in the background; 404 if unknown."""
        now = self._clock.now()
        async with self._db.session() as session:
            task = await session.scalar(
                select(Task).where(Task.id == task_id, Task.tenant_id == tenant_id)
            )
            if task is None:
                raise NotFoundError(f"unknown task {task_id}")
            run = Run(
                task_id=task.id,
                tenant_id=task.tenant_id,
                action=task.action,
                status=st.PENDING,
                trigger=trigger,
                params=dict(task.params),
                created_by_key_id=principal.key_id if principal else None,
                created_at=now,
                updated_at=now,
            )
            session.add(run)
            task.run_count += 1
            task.last_run_at = now
            task.status = st.TASK_STATUS[st.PENDING]
            task.updated_at = now
            await session.flush()
            session.add(
                RunLog(
                    run_id=run.id,
                    ts=now,
                    level="info",
                    event="created",
                    message=f"run created ({trigger})",
                    data={"key_id": str(principal.key_id) if principal else None},
                )
            )
        await self._publish("run.created", run, action=run.action)
        if self.execute:
            self._spawn(run.id, "analyze", self._analyze(run.id))
        return run

    async def decide(
        self,
        run_id: uuid.UUID,
        *,
        tenant_id: str,
        principal: Principal,
        approved: bool,
        feedback: str | None,
        plan_hash: str | None,
    ) -> Run:
        """Approve or reject the plan a run waits with.

        403 when the task forbids its creator's key to approve; 409 when the run is not
        awaiting approval or ``plan_hash`` is not the current plan's.
        """
        run, task = await self._load(run_id, tenant_id)
        self.check_approver(task, principal)
        if run.status != st.AWAITING_APPROVAL:
            raise ConflictError(
                f"run is {run.status}, not awaiting approval", run_status=run.status
            )
        if plan_hash is not None and plan_hash != run.plan_hash:
            raise ConflictError(
                "the plan changed since it was shown: review the current plan",
                plan_hash=run.plan_hash,
            )
        decision = self._decision(approved, principal, feedback, run.plan_hash, reason="decision")
        target = st.APPROVED if approved else st.REJECTED
        values: Values = {"approval": decision}
        if not approved:
            values["completed_at"] = self._clock.now()
        updated = await self._transition(
            run_id,
            target,
            expect={st.AWAITING_APPROVAL},
            values=values,
            where=[Run.plan_hash == run.plan_hash],
            note=f"{'approved' if approved else 'rejected'} by {principal.name}",
            data={"feedback": feedback},
        )
        if updated is None:
            current, _ = await self._load(run_id, tenant_id)
            raise ConflictError(
                f"run is {current.status}, not awaiting approval", run_status=current.status
            )
        await self._publish(
            "run.approved" if approved else "run.rejected",
            updated,
            feedback=feedback,
            decided_by=str(principal.key_id),
        )
        if approved and self.execute:
            self._spawn(run_id, "apply", self._apply(run_id))
        return updated

    async def cancel(self, run_id: uuid.UUID, *, tenant_id: str, reason: str | None) -> Run:
        """Cancel a run that has not finished (stopping its apply); 409 once it has."""
        run, _ = await self._load(run_id, tenant_id)
        if run.status not in st.CANCELLABLE:
            raise ConflictError(
                f"run is {run.status} and cannot be cancelled", run_status=run.status
            )
        updated = await self._transition(
            run_id,
            st.CANCELLED,
            expect=set(st.CANCELLABLE),
            values={"completed_at": self._clock.now()},
            note=reason or "cancelled",
        )
        if updated is None:
            current, _ = await self._load(run_id, tenant_id)
            raise ConflictError(
                f"run is {current.status} and cannot be cancelled", run_status=current.status
            )
        self._stop_local(run_id)
        await self._publish("run.cancelled", updated, reason=reason)
        return updated

    async def rollback(
        self, run_id: uuid.UUID, *, tenant_id: str, principal: Principal, feedback: str | None
    ) -> Run:
        """Undo a completed run, when its action can; the caller approves it (same rules as a plan)."""
        run, task = await self._load(run_id, tenant_id)
        self.check_approver(task, principal)
        if run.status != st.COMPLETED or run.result is None:
            raise ConflictError(
                f"only a completed run can be rolled back; this one is {run.status}"
            )
        try:
            cls = action_class(self.host.registry, run.action)
        except ActionError as exc:
            raise ConflictError(str(exc)) from exc
        if not cls.supports_rollback():
            raise ConflictError(f"action {run.action} cannot roll back what it did")
        if run.rollback is not None and run.rollback.get("status") == "completed":
            raise ConflictError("this run was rolled back already")
        decision = self._decision(True, principal, feedback, run.plan_hash, reason="decision")
        state = {"status": "running", "approval": decision, "started_at": _iso(self._clock)}
        updated = await self._transition(
            run_id,
            st.RUNNING,
            expect={st.COMPLETED},
            values={"rollback": state, "completed_at": None},
            note=f"rollback approved by {principal.name}",
        )
        if updated is None:
            raise ConflictError("the run changed meanwhile; try again")
        await self._publish(
            "run.progress", updated, step=0, total=None, percent=0.0, message="rolling back"
        )
        if self.execute:
            self._spawn(run_id, "rollback", self._rollback(run_id))
        return updated

    @staticmethod
    def check_approver(task: Task, principal: Principal) -> None:
        """403 when ``principal`` created ``task`` and the task forbids self-approval."""
        if not task.allow_self_approval and task.created_by_key_id == principal.key_id:
            raise Forbidden("this task forbids the key that created it to approve its runs")

    # --- phases ----------------------------------------------------------------------------

    async def _analyze(self, run_id: uuid.UUID) -> None:
        run = await self._transition(run_id, st.ANALYZING, expect={st.PENDING}, note="planning")
        if run is None:
            return
        await self._publish("run.analysis_started", run)
        task = await self._task(run.task_id)
        if task is None:
            return
        scope = _scope(run, task)
        started = self._clock.monotonic()
        try:
            plan = await self.host.plan(run.action, run.params, scope)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever the action raises is the run's error
            await self._fail(run_id, {st.ANALYZING}, f"planning failed: {describe(exc)}")
            return
        planned_ms = (self._clock.monotonic() - started) * 1000
        await self._record_metrics(run, {**plan.metrics, "plan_duration_ms": planned_ms})
        plan_data = plan.model_dump(mode="json")
        digest = plan.digest()
        values: Values = {"plan": plan_data, "plan_hash": digest}
        if plan.empty:
            result = Result(summary="nothing to do: the plan has no steps")
            values |= {"result": result.model_dump(mode="json"), "completed_at": self._clock.now()}
            done = await self._transition(
                run_id, st.COMPLETED, expect={st.ANALYZING}, values=values, note=plan.summary
            )
            if done is not None:
                await self._publish("run.plan_ready", done, plan=plan_data, plan_hash=digest)
                await self._publish("run.completed", done, result=done.result)
            return
        if task.require_approval:
            deadline = self._clock.now() + timedelta(seconds=task.approval_timeout_s)
            values["approval_deadline"] = deadline
            waiting = await self._transition(
                run_id,
                st.AWAITING_APPROVAL,
                expect={st.ANALYZING},
                values=values,
                note=f"plan ready, awaiting approval: {plan.summary}",
                data={"plan_hash": digest, "deadline": deadline.isoformat()},
            )
            if waiting is not None:
                await self._publish("run.plan_ready", waiting, plan=plan_data, plan_hash=digest)
                await self._publish(
                    "run.approval_required", waiting, plan_hash=digest, expires_at=deadline
                )
            return
        values["approval"] = self._decision(True, None, None, digest, reason="not_required")
        approved = await self._transition(
            run_id,
            st.APPROVED,
            expect={st.ANALYZING},
            values=values,
            note=f"plan ready; the task needs no approval: {plan.summary}",
        )
        if approved is None:
            return
        await self._publish("run.plan_ready", approved, plan=plan_data, plan_hash=digest)
        await self._publish("run.approved", approved, feedback=None, decided_by=None)
        current = self._work.get(run_id)
        if current is not None:  # from here on this is an apply: shutdown gives it its grace
            self._work[run_id] = ("apply", current[1])
        await self._apply(run_id)

    async def _apply(self, run_id: uuid.UUID) -> None:
        run = await self._transition(
            run_id,
            st.RUNNING,
            expect={st.APPROVED},
            values={"started_at": self._clock.now()},
            note="applying the plan",
        )
        if run is None:
            return
        task = await self._task(run.task_id)
        if task is None:
            return
        try:
            plan = _approved_plan(run)
        except ActionError as exc:
            await self._fail(run_id, {st.RUNNING}, str(exc))
            return
        total = len(plan.steps)
        await self._publish(
            "run.progress", run, step=0, total=total, percent=0.0, message="applying the plan"
        )
        started = self._clock.monotonic()
        try:
            result = await self.host.apply(
                run.action, run.params, _scope(run, task), plan, self._progress(run)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever the action raises is the run's error
            await self._fail(run_id, {st.RUNNING}, describe(exc))
            return
        duration_ms = (self._clock.monotonic() - started) * 1000
        await self._record_metrics(
            run, {**result.metrics, "duration_ms": duration_ms, "steps": float(total)}
        )
        outcome = result.model_dump(mode="json")
        now = self._clock.now()
        if result.success:
            done = await self._transition(
                run_id,
                st.COMPLETED,
                expect={st.RUNNING},
                values={"result": outcome, "completed_at": now},
                note=result.summary or "completed",
                count=True,
            )
            if done is not None:
                await self._publish("run.completed", done, result=outcome)
            return
        error = result.summary or "the action reported a failure"
        await self._fail(run_id, {st.RUNNING}, error, values={"result": outcome})

    async def _rollback(self, run_id: uuid.UUID) -> None:
        run = await self._run(run_id)
        if run is None or run.status != st.RUNNING or run.rollback is None:
            return
        task = await self._task(run.task_id)
        if task is None:
            return
        state = dict(run.rollback)
        try:
            plan = _approved_plan(run)
            undone = await self.host.rollback(
                run.action,
                run.params,
                _scope(run, task),
                plan,
                Result.model_validate(run.result or {}),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever the action raises is the rollback's error
            error = f"rollback failed: {describe(exc)}"
            state |= {"status": "failed", "error": error, "finished_at": _iso(self._clock)}
            await self._fail(run_id, {st.RUNNING}, error, values={"rollback": state})
            return
        outcome = undone.model_dump(mode="json")
        state |= {"result": outcome, "finished_at": _iso(self._clock)}
        if not undone.success:
            error = f"rollback failed: {undone.summary or 'the action reported a failure'}"
            state |= {"status": "failed", "error": error}
            await self._fail(run_id, {st.RUNNING}, error, values={"rollback": state})
            return
        state["status"] = "completed"
        done = await self._transition(
            run_id,
            st.COMPLETED,
            expect={st.RUNNING},
            values={"rollback": state, "completed_at": self._clock.now()},
            note=f"rolled back: {undone.summary}",
        )
        if done is not None:
            await self._publish("run.completed", done, result={"rollback": outcome})

    async def _time_out(self, run_id: uuid.UUID) -> None:
        run = await self._run(run_id)
        if run is None:
            return
        task = await self._task(run.task_id)
        on_timeout = task.on_timeout if task is not None else "reject"
        approve = on_timeout == "approve"
        values: Values = {
            "approval": self._decision(approve, None, None, run.plan_hash, reason="timeout")
        }
        if not approve:
            values["completed_at"] = self._clock.now()
        timed_out = await self._transition(
            run_id,
            st.TIMED_OUT,
            expect={st.AWAITING_APPROVAL},
            values=values,
            note=f"nobody decided in time; the task says {on_timeout}",
            level="warning",
        )
        if timed_out is None:
            return
        await self._publish("run.timed_out", timed_out, on_timeout=on_timeout)
        if not approve:
            return
        approved = await self._transition(
            run_id, st.APPROVED, expect={st.TIMED_OUT}, note="approved by the timeout policy"
        )
        if approved is None:
            return
        await self._publish("run.approved", approved, feedback=None, decided_by=None)
        if self.execute:
            self._spawn(run_id, "apply", self._apply(run_id))

    # --- helpers ---------------------------------------------------------------------------

    def _progress(self, run: Run) -> Any:
        async def progress(
            step: int, total: int | None, message: str, *, percent: float | None = None
        ) -> None:
            if percent is None and total:
                percent = round(100.0 * min(step, total) / total, 1)
            await self._log(
                run.id,
                "progress",
                message,
                data={"step": step, "total": total, "percent": percent},
            )
            await self._publish(
                "run.progress", run, step=step, total=total, percent=percent, message=message
            )

        return progress

    async def _fail(
        self, run_id: uuid.UUID, expect: set[str], error: str, *, values: Values | None = None
    ) -> None:
        failed = await self._transition(
            run_id,
            st.FAILED,
            expect=expect,
            values={"error": error, "completed_at": self._clock.now(), **(values or {})},
            note=error,
            level="error",
            count=True,
        )
        if failed is not None:
            await self._publish("run.failed", failed, error=error)

    async def _transition(
        self,
        run_id: uuid.UUID,
        target: str,
        *,
        expect: set[str],
        values: Values | None = None,
        where: list[ColumnElement[bool]] | None = None,
        note: str = "",
        data: dict[str, Any] | None = None,
        level: str = "info",
        count: bool = False,
    ) -> Run | None:
        """Move the run to ``target`` if its status is in ``expect``; ``None`` if it was not.

        The status change, its log line and the task's summary commit together.
        ``count`` adds the outcome to the task's success figures.
        """
        st.check_transition(expect, target)
        now = self._clock.now()
        async with self._db.session() as session:
            changed = await session.execute(
                update(Run)
                .where(Run.id == run_id, Run.status.in_(sorted(expect)), *(where or []))
                .values(status=target, updated_at=now, **(values or {}))
                .execution_options(synchronize_session=False)
            )
            if changed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            run = await session.get(Run, run_id)
            assert run is not None
            session.add(
                RunLog(
                    run_id=run_id,
                    ts=now,
                    level=level,
                    event=target,
                    message=note or target,
                    data=data or {},
                )
            )
            task_values: Values = {"status": st.TASK_STATUS[target], "updated_at": now}
            if count and run.rollback is None and target == st.COMPLETED:
                task_values["success_count"] = Task.success_count + 1
            elif count and run.rollback is None and target == st.FAILED:
                task_values["failure_count"] = Task.failure_count + 1
            await session.execute(
                update(Task)
                .where(Task.id == run.task_id)
                .values(**task_values)
                .execution_options(synchronize_session=False)
            )
        return run

    async def _log(
        self, run_id: uuid.UUID, event: str, message: str, *, data: dict[str, Any]
    ) -> None:
        async with self._db.session() as session:
            session.add(
                RunLog(
                    run_id=run_id,
                    ts=self._clock.now(),
                    level="info",
                    event=event,
                    message=message,
                    data=data,
                )
            )

    async def _publish(self, type: str, run: Run, **extra: Any) -> None:
        data = {
            "run_id": str(run.id),
            "task_id": str(run.task_id),
            "tenant_id": run.tenant_id,
            "status": run.status,
            **{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in extra.items()},
        }
        await self._bus.publish(type, data, tenant_id=run.tenant_id)

    async def _record_metrics(self, run: Run, values: dict[str, float]) -> None:
        """Write the run's figures as samples of series whose source is the run."""
        ts = to_ms(self._clock.now())
        samples = [
            PendingSample(
                SeriesKey.of(
                    name,
                    source_kind="run",
                    source_id=str(run.id),
                    plugin_id=run.action,
                    labels={"task_id": str(run.task_id)},
                    unit="ms" if name.endswith("_ms") else None,
                ),
                ts,
                float(value),
            )
            for name, value in sorted(values.items())
        ]
        try:
            await asyncio.shield(await self._writer.submit(samples))
        except asyncio.CancelledError:
            raise
        except Exception:  # figures are worth less than the run: log and carry on
            log.warning("run metrics not stored", run_id=str(run.id), exc_info=True)

    def _decision(
        self,
        approved: bool,
        principal: Principal | None,
        feedback: str | None,
        plan_hash: str | None,
        *,
        reason: str,
    ) -> dict[str, Any]:
        return {
            "approved": approved,
            "automatic": principal is None,
            "reason": reason,
            "key_id": str(principal.key_id) if principal else None,
            "key_name": principal.name if principal else None,
            "tenant_id": principal.tenant_id if principal else None,
            "feedback": feedback,
            "decided_at": _iso(self._clock),
            "plan_hash": plan_hash,
        }

    def _spawn(self, run_id: uuid.UUID, phase: str, work: Coroutine[Any, Any, None]) -> None:
        if self._stopping or run_id in self._work:
            work.close()
            return
        task = asyncio.create_task(self._guard(run_id, work), name=f"unity:run:{run_id}:{phase}")
        self._work[run_id] = (phase, task)

    async def _guard(self, run_id: uuid.UUID, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            pass  # cancelled by a user (already recorded) or by shutdown (recovered at start)
        except Exception:  # the database failed mid-step: the sweep or a restart resumes
            log.exception("run step failed", run_id=str(run_id))
        finally:
            current = self._work.get(run_id)
            if current is not None and current[1] is asyncio.current_task():
                del self._work[run_id]

    def _stop_local(self, run_id: uuid.UUID) -> None:
        current = self._work.get(run_id)
        if current is not None and current[1] is not asyncio.current_task():
            current[1].cancel()

    async def _load(self, run_id: uuid.UUID, tenant_id: str) -> tuple[Run, Task]:
        async with self._db.session() as session:
            row = (
                await session.execute(
                    select(Run, Task)
                    .join(Task, Run.task_id == Task.id)
                    .where(Run.id == run_id, Run.tenant_id == tenant_id)
                )
            ).first()
        if row is None:
            raise NotFoundError(f"unknown run {run_id}")
        return row[0], row[1]

    async def _run(self, run_id: uuid.UUID) -> Run | None:
        async with self._db.session() as session:
            return await session.get(Run, run_id)

    async def _task(self, task_id: uuid.UUID) -> Task | None:
        async with self._db.session() as session:
            return await session.get(Task, task_id)


def _scope(run: Run, task: Task) -> RunScope:
    return RunScope(
        task_id=str(run.task_id),
        run_id=str(run.id),
        tenant_id=run.tenant_id,
        description=task.description,
        max_rounds=task.max_rounds,
        allow_admin_actions=task.created_by_admin,
    )


def _approved_plan(run: Run) -> Plan:
    """The stored plan, if the stored decision approved exactly it; ``ActionError`` otherwise."""
    approval = run.approval or {}
    if run.plan is None or not approval.get("approved"):
        raise ActionError("refusing to apply: the plan was not approved")
    plan = Plan.model_validate(run.plan)
    if not (approval.get("plan_hash") == run.plan_hash == plan.digest()):
        raise ActionError("refusing to apply: the plan is not the one that was approved")
    return plan


def _iso(clock: Clock) -> str:
    return clock.now().isoformat()
