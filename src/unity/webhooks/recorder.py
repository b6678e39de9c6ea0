"""Records delivery attempts in batches, and applies what they mean for the endpoint.

Each attempt becomes a ``webhook_attempts`` row and moves its delivery on: ``success``;
``pending`` again at the next point of the retry schedule (with jitter, never before the
response's ``Retry-After``); ``exhausted`` after the last; ``failed`` on a 410, which also
disables the endpoint. An endpoint failing for longer than the failure window is disabled
too. Disabling writes ``webhook.disabled`` outbox rows for the tenant's other webhooks in the
same transaction, then publishes the event on the bus for everyone else.

Attempts are written like the metric batch writer writes samples: many per transaction,
so a busy dispatcher costs the database a few commits a second, not one per request. A
caller that needs its attempt stored before going on awaits the future it gets.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import structlog
from sqlalchemy import bindparam, insert, select, update

from unity.core.clock import Clock
from unity.core.db import Database
from unity.core.events import EventBus
from unity.webhooks.models import Webhook, WebhookAttempt, WebhookDelivery
from unity.webhooks.sender import AttemptResult
from unity.webhooks.service import OutboxEvent, WebhookService

if TYPE_CHECKING:
    from sqlalchemy import Table

__all__ = ["DeliveryRef", "Recorder"]

log = structlog.stdlib.get_logger("unity.webhooks")

MAX_RETRY_AFTER_S = 86400.0
"""A receiver's ``Retry-After`` is honoured up to a day."""

JITTER = 0.1
"""Retry delays vary by up to ±10 %, so endpoints that failed together do not retry together."""


# Core statements run with many parameter sets (executemany): cheaper per row than the
# ORM's bulk paths, which matters at thousands of attempts a second.
_INSERT_ATTEMPTS = insert(cast("Table", WebhookAttempt.__table__))
_deliveries = cast("Table", WebhookDelivery.__table__)
_UPDATE_DELIVERIES = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("b_id"))
    .values(
        {
            column: bindparam(f"b_{column}")
            for column in (
                "status",
                "attempts",
                "next_attempt_at",
                "last_attempt_at",
                "last_status_code",
                "last_error",
                "completed_at",
            )
        }
    )
)


@dataclass(frozen=True, slots=True)
class DeliveryRef:
    """What the recorder needs to know about the delivery an attempt was for."""

    id: int
    webhook_id: uuid.UUID
    attempts: int
    """Attempts made before this one."""


@dataclass(slots=True)
class _Outcome:
    ref: DeliveryRef
    result: AttemptResult
    status: str
    next_attempt_at: datetime | None
    disable_reason: str | None
    future: asyncio.Future[None]


class Recorder:
    """Batches attempt outcomes into transactions; see the module docstring."""

    def __init__(
        self,
        *,
        database: Database,
        service: WebhookService,
        bus: EventBus | None,
        clock: Clock,
        retry_schedule_s: Sequence[float],
        disable_after_s: float,
        flush_interval_s: float = 0.01,
        max_batch: int = 1000,
    ) -> None:
        if not retry_schedule_s:
            raise ValueError("the retry schedule needs at least one entry")
        self._db = database
        self._service = service
        self._bus = bus
        self._clock = clock
        self._schedule = list(retry_schedule_s)
        self._disable_after = timedelta(seconds=disable_after_s)
        self._interval = flush_interval_s
        self._max_batch = max_batch
        self._pending: list[_Outcome] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.recorded = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-recorder")

    async def stop(self) -> None:
        """Write everything submitted so far, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    def submit(self, ref: DeliveryRef, result: AttemptResult) -> asyncio.Future[None]:
        """Queue an attempt's outcome; the future resolves once it is committed."""
        if self._closing:
            raise RuntimeError("the recorder is stopped")
        status, next_at, reason = self._judge(ref, result)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Outcome(ref, result, status, next_at, reason, future))
        self._wakeup.set()
        return future

    def _judge(
        self, ref: DeliveryRef, result: AttemptResult
    ) -> tuple[str, datetime | None, str | None]:
        """The delivery's new status, next attempt time and (410) a reason to disable."""
        if result.success:
            return "success", None, None
        if result.status_code == 410:
            return "failed", None, "the endpoint answered 410 Gone"
        made = ref.attempts + 1
        if made >= len(self._schedule):
            return "exhausted", None, None
        delay = self._schedule[made] * random.uniform(1 - JITTER, 1 + JITTER)
        if result.retry_after_s is not None:
            delay = max(delay, min(result.retry_after_s, MAX_RETRY_AFTER_S))
        return "pending", self._clock.now() + timedelta(seconds=delay), None

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._closing and len(self._pending) < self._max_batch:
                # Let a few more outcomes join this transaction.
                await asyncio.sleep(self._interval)
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: len(batch)]
                await self._write_until_done(batch)
            if self._closing:
                return

    async def _write_until_done(self, batch: list[_Outcome]) -> None:
        delay = 0.1
        while True:
            try:
                disabled = await self._write(batch)
            except Exception as exc:
                if self._closing:
                    for outcome in batch:
                        if not outcome.future.done():
                            outcome.future.set_exception(exc)
                    log.exception("cannot record webhook attempts at shutdown", count=len(batch))
                    return
                log.exception("cannot record webhook attempts; retrying", count=len(batch))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            break
        self.recorded += len(batch)
        for outcome in batch:
            if not outcome.future.done():
                outcome.future.set_result(None)
        for event in disabled:
            await self._announce(event)
        if disabled:
            self._service.notify()

    async def _write(self, batch: list[_Outcome]) -> list[OutboxEvent]:
        now = self._clock.now()
        attempts: list[dict[str, Any]] = []
        deliveries: list[dict[str, Any]] = []
        last: dict[uuid.UUID, _Outcome] = {}
        for outcome in batch:
            result = outcome.result
            attempts.append(
                {
                    "delivery_id": outcome.ref.id,
                    "webhook_id": outcome.ref.webhook_id,
                    "attempt": outcome.ref.attempts + 1,
                    "started_at": result.started_at,
                    "success": result.success,
                    "status_code": result.status_code,
                    "response_ms": result.response_ms,
                    "response_body": result.response_body,
                    "error": result.error,
                }
            )
            done = outcome.status != "pending"
            deliveries.append(
                {
                    "b_id": outcome.ref.id,
                    "b_status": outcome.status,
                    "b_attempts": outcome.ref.attempts + 1,
                    "b_next_attempt_at": outcome.next_attempt_at,
                    "b_last_attempt_at": result.started_at,
                    "b_last_status_code": result.status_code,
                    "b_last_error": result.error,
                    "b_completed_at": now if done else None,
                }
            )
            last[outcome.ref.webhook_id] = outcome
        disabled: list[OutboxEvent] = []
        async with self._db.session() as session:
            await session.execute(_INSERT_ATTEMPTS, attempts)
            await session.execute(_UPDATE_DELIVERIES, deliveries)
            succeeded = [w for w, o in last.items() if o.result.success]
            if succeeded:
                await session.execute(
                    update(Webhook)
                    .where(Webhook.id.in_(succeeded), Webhook.failing_since.is_not(None))
                    .values(failing_since=None)
                )
            for webhook_id, outcome in last.items():
                if outcome.result.success:
                    continue
                reason = outcome.disable_reason or await self._failing_too_long(
                    session, webhook_id, outcome.result.started_at, now
                )
                if reason is not None:
                    event = await self._disable(session, webhook_id, reason, now)
                    if event is not None:
                        disabled.append(event)
        return disabled

    async def _failing_too_long(
        self, session: Any, webhook_id: uuid.UUID, failed_at: datetime, now: datetime
    ) -> str | None:
        await session.execute(
            update(Webhook)
            .where(Webhook.id == webhook_id, Webhook.failing_since.is_(None))
            .values(failing_since=failed_at)
        )
        since = await session.scalar(select(Webhook.failing_since).where(Webhook.id == webhook_id))
        if since is None or now - since < self._disable_after:
            return None
        hours = self._disable_after.total_seconds() / 3600
        return f"every delivery failed for {hours:g} hours (since {since.isoformat()})"

    async def _disable(
        self, session: Any, webhook_id: uuid.UUID, reason: str, now: datetime
    ) -> OutboxEvent | None:
        result = await session.execute(
            update(Webhook)
            .where(Webhook.id == webhook_id, Webhook.active)
            .values(active=False, disabled_reason=reason, disabled_at=now, updated_at=now)
        )
        if result.rowcount != 1:
            return None  # already disabled (or deleted)
        row = await session.get(Webhook, webhook_id)
        event = OutboxEvent(
            "webhook.disabled",
            {
                "webhook_id": str(row.id),
                "name": row.name,
                "url": row.url,
                "tenant_id": row.tenant_id,
                "reason": reason,
            },
            row.tenant_id,
            now,
        )
        # The tenant's other webhooks hear of it in the same transaction as the change.
        await self._service.enqueue(session, [event], exclude=row.id)
        log.warning("webhook disabled", webhook_id=str(row.id), url=row.url, reason=reason)
        return event

    async def _announce(self, event: OutboxEvent) -> None:
        if self._bus is None:
            return
        try:
            await self._bus.publish(event.type, event.data, tenant_id=event.tenant_id)
        except Exception:  # the change is committed; a broken bus must not undo it
            log.exception("publishing webhook.disabled failed")
