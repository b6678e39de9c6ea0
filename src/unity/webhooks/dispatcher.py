"""The webhook dispatcher: bus events into the outbox, outbox rows out to endpoints.

**Into the outbox.** A listener subscribes to every event on the bus and writes one outbox
row per matching active webhook (:meth:`WebhookService.enqueue`), in batches, together with
the bus position it reached (``webhook_cursor``). At start it resubscribes from that
position, so with Redis (whose stream keeps history) events published while Unity was
down or killed still reach the outbox; a queue overflow (``Lag``) resubscribes from the
saved position too. With the in-memory bus, events published but not yet written when the
process is killed are lost: that window is the time between ``publish`` and the next
batch write (milliseconds). Types whose producers write their outbox rows in their own
transaction (``webhook.test``, ``webhook.disabled``) are skipped here.

**Out of the outbox.** Each endpoint is a lane: its pending rows are sent one at a time in
``id`` order, so a receiver sees events in the order they happened, and a failing head
(waiting for its retry) holds back that endpoint only. Lanes of different endpoints run
concurrently (``webhook_concurrency`` at once), so one slow endpoint never delays the
others. A supervisor starts a lane for each endpoint whose head is due, woken by new rows
and otherwise every ``webhook_poll_interval_s``. A process owns a lane through a lease on
the endpoint's row (``lease_owner``/``lease_until``, renewed as it goes), so several
processes sharing PostgreSQL never deliver one endpoint's rows twice or out of order.
Outcomes go to the :class:`Recorder`, which commits many at once; a lane does not wait for
them between windows (it reads the next window after the last row it delivered), only
before it lets go of the endpoint, so a new lane never finds a delivered row still pending.
Because every row is in the database before it is sent, a restart (even ``kill -9``)
resumes where it stopped: an attempt in flight at the kill is repeated with the same
``webhook-id`` (receivers deduplicate on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import func, or_, select, update

from unity.core.clock import Clock
from unity.core.db import Database
from unity.core.events import Event, EventBus, Item, Lag, Resync, Subscription
from unity.errors import NotFoundError
from unity.webhooks.models import Webhook, WebhookDelivery
from unity.webhooks.recorder import DeliveryRef, Recorder
from unity.webhooks.sender import AttemptResult, Sender
from unity.webhooks.service import OutboxEvent, WebhookService
from unity.webhooks.signing import secret_key
from unity.webhooks.urls import UnsafeUrl

__all__ = ["TRANSACTIONAL_TYPES", "WebhookDispatcher"]

log = structlog.stdlib.get_logger("unity.webhooks")

TRANSACTIONAL_TYPES = frozenset({"webhook.test", "webhook.disabled"})
"""Event types whose outbox rows their producer writes itself; the bus listener skips them."""

WINDOW = 100
"""Pending rows a lane reads at a time."""

_LISTEN_BATCH = 1000
_LISTEN_QUEUE = 100_000


@dataclass(frozen=True, slots=True)
class _Target:
    url: str
    keys: tuple[bytes, ...]
    """The signing keys of the endpoint's secrets valid now."""


@dataclass(frozen=True, slots=True)
class _Row:
    id: int
    message_id: str
    body: bytes
    attempts: int
    next_attempt_at: datetime | None


class WebhookDispatcher:
    """Feeds the outbox from the bus and delivers it; see the module docstring."""

    def __init__(
        self,
        *,
        database: Database,
        bus: EventBus,
        service: WebhookService,
        sender: Sender,
        recorder: Recorder,
        clock: Clock,
        concurrency: int = 64,
        poll_interval_s: float = 1.0,
        lease_s: float = 60.0,
        deliver: bool = True,
        resume: bool = True,
    ) -> None:
        self._db = database
        self._bus = bus
        self._service = service
        self._sender = sender
        self._recorder = recorder
        self._clock = clock
        self._concurrency = concurrency
        self._poll = poll_interval_s
        self._lease = timedelta(seconds=lease_s)
        self._deliver = deliver
        self._resume = resume
        self._owner = uuid.uuid4().hex
        self._wake = asyncio.Event()
        self._stopping = False
        self._lanes: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._subscription: Subscription | None = None
        self._cursor: int | None = None
        service.on_enqueued = self.wake

    # --- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to the bus, resume unfinished work and start delivering."""
        await self._recover_interrupted()
        self._cursor = await self._service.load_cursor()
        # A bus without history across restarts (memory) would only answer Resync.
        since = self._cursor if self._resume else None
        self._subscription = self._bus.subscribe(since=since, maxsize=_LISTEN_QUEUE)
        await self._recorder.start()
        self._tasks.append(asyncio.create_task(self._listen(), name="webhook-listener"))
        if self._deliver:
            self._tasks.append(asyncio.create_task(self._supervise(), name="webhook-supervisor"))

    async def stop(self) -> None:
        """Write what the listener holds, stop the lanes, record their last attempts."""
        self._stopping = True
        if self._subscription is not None:
            self._subscription.close()  # the listener writes what it has, then ends
        self._wake.set()
        lanes = list(self._lanes.values())
        for lane in lanes:
            lane.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, timeout=10)
            except (TimeoutError, asyncio.CancelledError):
                pass
            except Exception:
                log.exception("webhook dispatcher task failed while stopping")
        await self._recorder.stop()
        await self._sender.aclose()
        with contextlib.suppress(Exception):
            async with self._db.session() as session:
                await session.execute(
                    update(Webhook)
                    .where(Webhook.lease_owner == self._owner)
                    .values(lease_owner=None, lease_until=None)
                )

    def wake(self) -> None:
        """New rows may be due: look now rather than at the next poll."""
        self._wake.set()

    async def _recover_interrupted(self) -> None:
        now = self._clock.now()
        async with self._db.session() as session:
            if self._db.is_sqlite:
                # SQLite means one process: leases left by a killed predecessor are void.
                await session.execute(
                    update(Webhook)
                    .where(Webhook.lease_owner.is_not(None))
                    .values(lease_owner=None, lease_until=None)
                )
            # A test delivery whose direct attempt was interrupted joins its endpoint's lane.
            stale = now - self._lease if not self._db.is_sqlite else now
            await session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.status == "pending",
                    WebhookDelivery.next_attempt_at.is_(None),
                    WebhookDelivery.created_at <= stale,
                )
                .values(next_attempt_at=now)
            )

    # --- bus -> outbox -------------------------------------------------------------------------

    async def _listen(self) -> None:
        subscription = self._subscription
        while subscription is not None:
            queue: asyncio.Queue[Item | None] = asyncio.Queue()
            pump = asyncio.create_task(_pump(subscription, queue))
            try:
                resume = await self._consume(queue)
            finally:
                subscription.close()
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
            if not resume or self._stopping:
                return
            log.warning("webhook listener fell behind; resuming from its saved position")
            subscription = self._bus.subscribe(since=self._cursor, maxsize=_LISTEN_QUEUE)
            self._subscription = subscription

    async def _consume(self, queue: asyncio.Queue[Item | None]) -> bool:
        """Write events to the outbox until the stream ends (False) or lags (True)."""
        while True:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < _LISTEN_BATCH:
                batch.append(queue.get_nowait())
            events: list[Event] = []
            outcome: bool | None = None
            for item in batch:
                if item is None:
                    outcome = False
                    break
                if isinstance(item, Event):
                    events.append(item)
                elif isinstance(item, Lag):
                    outcome = True  # what follows is replayed from the saved position
                    break
                elif isinstance(item, Resync):
                    log.warning(
                        "events between the saved position and now are not in the bus history; "
                        "webhooks will not receive them",
                        since=item.since,
                        oldest=item.oldest,
                    )
            if events:
                await self._record(events)
            if outcome is not None:
                return outcome

    async def _record(self, events: list[Event]) -> None:
        wanted = [
            OutboxEvent(e.type, e.data, e.tenant_id, e.timestamp, e.seq)
            for e in events
            if e.type not in TRANSACTIONAL_TYPES
        ]
        last = max(e.seq for e in events)
        delay = 0.1
        while True:
            try:
                async with self._db.session() as session:
                    written = await self._service.enqueue(session, wanted) if wanted else 0
                    await self._service.save_cursor(session, last)
                break
            except Exception:
                if self._stopping:
                    log.exception("cannot write webhook outbox rows at shutdown", count=len(wanted))
                    return
                log.exception("cannot write webhook outbox rows; retrying", count=len(wanted))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._cursor = last
        if written:
            self.wake()

    # --- outbox -> endpoints -------------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                wait = await self._start_due_lanes()
            except Exception:
                log.exception("checking the webhook outbox failed")
                wait = self._poll
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.005))
            # Coalesce wake-ups from a burst of writes into one look at the outbox.
            await asyncio.sleep(0.005)

    async def _start_due_lanes(self) -> float:
        """Start a lane per endpoint whose head is due; seconds until the next head is."""
        now = self._clock.now()
        heads = (
            select(
                WebhookDelivery.webhook_id.label("webhook_id"),
                func.min(WebhookDelivery.id).label("head"),
            )
            .where(WebhookDelivery.status == "pending")
            .group_by(WebhookDelivery.webhook_id)
            .subquery()
        )
        query = (
            select(heads.c.webhook_id, WebhookDelivery.next_attempt_at)
            .join(WebhookDelivery, WebhookDelivery.id == heads.c.head)
            .join(Webhook, Webhook.id == heads.c.webhook_id)
            .where(
                Webhook.active,
                or_(
                    Webhook.lease_owner.is_(None),
                    Webhook.lease_owner == self._owner,
                    Webhook.lease_until < now,
                ),
            )
        )
        async with self._db.sessions() as session:
            rows = (await session.execute(query)).all()
        wait = self._poll
        for webhook_id, next_at in rows:
            if next_at is None:
                continue  # a test call is attempting it right now
            if next_at > now:
                wait = min(wait, (next_at - now).total_seconds())
                continue
            if webhook_id in self._lanes or len(self._lanes) >= self._concurrency:
                continue
            self._lanes[webhook_id] = asyncio.create_task(
                self._lane(webhook_id), name=f"webhook-lane-{webhook_id}"
            )
        return wait

    async def _lane(self, webhook_id: uuid.UUID) -> None:
        try:
            await self._run_lane(webhook_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook delivery lane failed", webhook_id=str(webhook_id))
        finally:
            self._lanes.pop(webhook_id, None)
            if not self._stopping:
                with contextlib.suppress(Exception):
                    await self._release(webhook_id)
                self.wake()

    async def _run_lane(self, webhook_id: uuid.UUID) -> None:
        submitted: list[asyncio.Future[None]] = []
        cancelled = False
        try:
            await self._deliver_lane(webhook_id, submitted)
        except asyncio.CancelledError:
            cancelled = True  # stopping: the recorder writes what it holds when it stops
            raise
        finally:
            if submitted and not cancelled:
                # Before the lane lets go, everything it submitted is committed (outcomes
                # commit in submission order: the last one done means all are); otherwise
                # a new lane would find those rows still pending and send them again.
                await submitted[-1]

    async def _deliver_lane(
        self, webhook_id: uuid.UUID, submitted: list[asyncio.Future[None]]
    ) -> None:
        """Send the endpoint's due rows in order until none is due or one fails."""
        refused: str | None = None
        checked = False
        # Rows up to ``sent`` were delivered and handed to the recorder. The next window
        # starts after them, so reading it need not wait for their outcomes to be committed:
        # the requests and the attempt log overlap.
        sent = 0
        while not self._stopping:
            claim = await self._claim(webhook_id, after=sent)
            if claim is None:
                return
            target, window = claim
            if not window:
                return
            if not checked:
                refused = self._refusal(target.url)
                checked = True
            # A window of slow answers may outlast the lease: claim again (which renews it)
            # well before it runs out.
            renew_at = self._clock.now() + self._lease / 3
            for row in window:
                if row.next_attempt_at is None or row.next_attempt_at > self._clock.now():
                    return
                result = await self._attempt(target, row, refused)
                ref = DeliveryRef(row.id, webhook_id, row.attempts)
                submitted[:] = [self._recorder.submit(ref, result)]
                if not result.success:
                    return  # its retry time is committed before the lane lets go
                sent = row.id
                if self._clock.now() >= renew_at:
                    break

    def _target(self, webhook: Webhook) -> _Target:
        keys = tuple(secret_key(s) for s in self._service.secrets_of(webhook))
        return _Target(webhook.url, keys)

    def _refusal(self, url: str) -> str | None:
        # The URL's form and a literal address; a host name's addresses are checked by the
        # sender's resolver when it connects (no gap for the name to change in between).
        try:
            self._service.policy.check_url(url)
        except UnsafeUrl as exc:
            return f"refused: {exc}"
        return None

    async def _attempt(self, target: _Target, row: _Row, refused: str | None) -> AttemptResult:
        if refused is not None:
            return AttemptResult(started_at=self._clock.now(), success=False, error=refused)
        return await self._sender.send(target.url, target.keys, row.message_id, row.body)

    async def _claim(
        self, webhook_id: uuid.UUID, *, after: int = 0
    ) -> tuple[_Target, list[_Row]] | None:
        """Take (or renew) the endpoint's lease and read its next window of pending rows.

        ``after``: the last row this lane delivered; rows up to it are pending only until
        the recorder commits their outcome.
        """
        now = self._clock.now()
        async with self._db.session() as session:
            taken = await session.execute(
                update(Webhook)
                .where(
                    Webhook.id == webhook_id,
                    Webhook.active,
                    or_(
                        Webhook.lease_owner.is_(None),
                        Webhook.lease_owner == self._owner,
                        Webhook.lease_until < now,
                    ),
                )
                .values(lease_owner=self._owner, lease_until=now + self._lease)
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                return None
            webhook = await session.get(Webhook, webhook_id)
            if webhook is None:
                return None
            target = self._target(webhook)
            rows = await session.execute(
                select(
                    WebhookDelivery.id,
                    WebhookDelivery.message_id,
                    WebhookDelivery.body,
                    WebhookDelivery.attempts,
                    WebhookDelivery.next_attempt_at,
                )
                .where(
                    WebhookDelivery.webhook_id == webhook_id,
                    WebhookDelivery.status == "pending",
                    WebhookDelivery.id > after,
                )
                .order_by(WebhookDelivery.id)
                .limit(WINDOW)
            )
            window = [
                _Row(r.id, r.message_id, r.body.encode(), r.attempts, r.next_attempt_at)
                for r in rows
            ]
        return target, window

    async def _release(self, webhook_id: uuid.UUID) -> None:
        async with self._db.session() as session:
            await session.execute(
                update(Webhook)
                .where(Webhook.id == webhook_id, Webhook.lease_owner == self._owner)
                .values(lease_owner=None, lease_until=None)
                .execution_options(synchronize_session=False)
            )

    # --- direct attempts -----------------------------------------------------------------------

    async def deliver_now(self, delivery_id: int) -> AttemptResult:
        """Attempt a held delivery (the test endpoint's) now and record the outcome.

        A failure leaves it to the endpoint's lane, at the next point of the retry schedule.
        """
        async with self._db.sessions() as session:
            delivery = await session.get(WebhookDelivery, delivery_id)
            if delivery is None:
                raise NotFoundError(f"no delivery {delivery_id}")
            webhook = await session.get(Webhook, delivery.webhook_id)
            if webhook is None:
                raise NotFoundError(f"no webhook {delivery.webhook_id}")
            target = self._target(webhook)
            row = _Row(
                delivery.id,
                delivery.message_id,
                delivery.body.encode(),
                delivery.attempts,
                delivery.next_attempt_at,
            )
        result = await self._attempt(target, row, self._refusal(target.url))
        await self._recorder.submit(DeliveryRef(row.id, webhook.id, row.attempts), result)
        return result

    @property
    def recorded(self) -> int:
        """Attempts recorded since start (successful or not)."""
        return self._recorder.recorded

    @property
    def lanes(self) -> int:
        """Endpoints being delivered to right now."""
        return len(self._lanes)


async def _pump(subscription: Subscription, queue: asyncio.Queue[Item | None]) -> None:
    """Move items from the subscription to the listener's queue; ``None`` when it ends."""
    try:
        async for item in subscription:
            queue.put_nowait(item)
    finally:
        queue.put_nowait(None)
