"""Webhook endpoints, the outbox they are fed from, their deliveries and figures (no HTTP here).

Every method takes the tenant it acts on; another tenant's webhook is a 404, exactly like a
missing one. Outbox rows are written by :meth:`WebhookService.enqueue`, which takes the
caller's session so a producer can record its change and the deliveries it causes in one
transaction (the webhook test and ``webhook.disabled`` do); events that reach webhooks
through the bus are written by the dispatcher in batches with the same method.

Events without a tenant (system-wide: plugins installed, …) go to the ``default`` tenant's
webhooks.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import orjson
from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from unity.auth.models import Tenant
from unity.auth.principal import DEFAULT_TENANT
from unity.core.clock import Clock
from unity.core.db import Database
from unity.core.events.catalog import matches
from unity.errors import BadRequestError, NotFoundError, ValidationFailed
from unity.webhooks.crypto import SecretBox
from unity.webhooks.models import Webhook, WebhookAttempt, WebhookCursor, WebhookDelivery
from unity.webhooks.schemas import (
    AttemptOut,
    DeliveryOut,
    SecretRotated,
    StatsOut,
    WebhookCreate,
    WebhookOut,
    WebhookUpdate,
)
from unity.webhooks.signing import generate_secret
from unity.webhooks.urls import UnsafeUrl, UrlPolicy

if TYPE_CHECKING:
    from sqlalchemy import Table

__all__ = ["OutboxEvent", "WebhookService", "body_of", "new_message_id"]

P95_WINDOW = 1000
"""Attempts the p95 response time is computed over (the newest)."""


def new_message_id() -> str:
    """A ``webhook-id``: ``msg_`` and 32 hex digits, unique for the delivery's whole life."""
    return f"msg_{uuid.uuid4().hex}"


def body_of(event_type: str, timestamp: datetime, data: dict[str, Any]) -> str:
    """The delivery body, ``{"type", "timestamp", "data"}``, serialized once for every attempt."""
    return orjson.dumps({"type": event_type, "timestamp": timestamp, "data": data}).decode()


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An event to write to the outbox: what the bus delivered, or what a producer records."""

    type: str
    data: dict[str, Any]
    tenant_id: str | None
    timestamp: datetime
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Subscriber:
    """The parts of an active webhook that decide which events it gets."""

    id: uuid.UUID
    tenant_id: str
    events: tuple[str, ...]

    def wants(self, event_type: str) -> bool:
        return any(matches(pattern, event_type) for pattern in self.events)


class WebhookService:
    """Endpoints (CRUD, secrets), the outbox, deliveries, retries and stats."""

    def __init__(
        self,
        *,
        database: Database,
        clock: Clock,
        box: SecretBox,
        policy: UrlPolicy,
        rotation_grace_s: float = 86400,
    ) -> None:
        self._db = database
        self._clock = clock
        self._box = box
        self._policy = policy
        self._grace = timedelta(seconds=rotation_grace_s)
        self.on_enqueued: Callable[[], None] | None = None
        """Called after rows became due (the dispatcher's wake-up)."""

    @property
    def policy(self) -> UrlPolicy:
        return self._policy

    @property
    def box(self) -> SecretBox:
        return self._box

    # --- endpoints ---------------------------------------------------------------------------

    def _check_url(self, url: str) -> str:
        try:
            return self._policy.check_url(url)
        except UnsafeUrl as exc:
            raise ValidationFailed(str(exc), errors=_field_error("url", str(exc))) from exc

    async def create(self, tenant_id: str, body: WebhookCreate) -> tuple[WebhookOut, str]:
        """A new webhook and its secret (the given one, or a generated ``whsec_…``)."""
        url = self._check_url(body.url)
        secret = body.secret or generate_secret()
        now = self._clock.now()
        row = Webhook(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            name=body.name,
            description=body.description,
            url=url,
            events=list(body.events),
            active=body.active,
            secret_encrypted=self._box.encrypt(secret),
            created_at=now,
            updated_at=now,
        )
        async with self._db.session() as session:
            if not await _tenant_exists(session, tenant_id):
                raise NotFoundError(f"no tenant {tenant_id!r}")
            session.add(row)
        return _out(row), secret

    async def list_webhooks(
        self, tenant_id: str, *, skip: int, limit: int, active: bool | None = None
    ) -> tuple[list[WebhookOut], int]:
        """The tenant's webhooks, newest first."""
        query = select(Webhook).where(Webhook.tenant_id == tenant_id)
        if active is not None:
            query = query.where(Webhook.active == active)
        async with self._db.sessions() as session:
            total = await session.scalar(select(func.count()).select_from(query.subquery()))
            rows = await session.scalars(
                query.order_by(Webhook.created_at.desc(), Webhook.id).offset(skip).limit(limit)
            )
            return [_out(r) for r in rows], int(total or 0)

    async def get(self, webhook_id: uuid.UUID, tenant_id: str) -> WebhookOut:
        async with self._db.sessions() as session:
            return _out(await _webhook(session, webhook_id, tenant_id))

    async def update(
        self, webhook_id: uuid.UUID, tenant_id: str, body: WebhookUpdate
    ) -> WebhookOut:
        """Change the fields given; ``active=true`` clears a disablement and resumes delivery."""
        changes = body.model_dump(exclude_unset=True)
        for field in ("name", "url", "events", "active"):
            if field in changes and changes[field] is None:
                raise ValidationFailed(
                    f"{field} cannot be null", errors=_field_error(field, "may not be null")
                )
        if "url" in changes:
            self._check_url(changes["url"])
        async with self._db.session() as session:
            row = await _webhook(session, webhook_id, tenant_id)
            for field, value in changes.items():
                setattr(row, field, value)
            if changes.get("active"):
                row.disabled_reason = None
                row.disabled_at = None
                row.failing_since = None
            row.updated_at = self._clock.now()
            out = _out(row)
        if changes.get("active"):
            self._wake()
        return out

    async def delete(self, webhook_id: uuid.UUID, tenant_id: str) -> None:
        """Remove the webhook with its deliveries and attempts."""
        async with self._db.session() as session:
            row = await _webhook(session, webhook_id, tenant_id)
            await session.execute(delete(WebhookAttempt).where(WebhookAttempt.webhook_id == row.id))
            await session.execute(
                delete(WebhookDelivery).where(WebhookDelivery.webhook_id == row.id)
            )
            await session.delete(row)

    async def rotate_secret(
        self, webhook_id: uuid.UUID, tenant_id: str, secret: str | None = None
    ) -> SecretRotated:
        """A new secret; deliveries are signed with both for the grace period (24 h)."""
        new = secret or generate_secret()
        now = self._clock.now()
        async with self._db.session() as session:
            row = await _webhook(session, webhook_id, tenant_id)
            row.previous_secret_encrypted = row.secret_encrypted
            row.previous_secret_expires_at = now + self._grace
            row.secret_encrypted = self._box.encrypt(new)
            row.updated_at = now
        return SecretRotated(secret=new, previous_secret_expires_at=now + self._grace)

    def secrets_of(self, row: Webhook) -> list[str]:
        """The secrets a delivery to ``row`` is signed with now: current, then previous."""
        out = [self._box.decrypt(row.secret_encrypted)]
        expires = row.previous_secret_expires_at
        if row.previous_secret_encrypted and expires is not None and expires > self._clock.now():
            out.append(self._box.decrypt(row.previous_secret_encrypted))
        return out

    # --- the outbox ----------------------------------------------------------------------------

    async def subscribers(self, session: AsyncSession) -> list[Subscriber]:
        """Every active webhook with what it subscribes to."""
        rows = await session.execute(
            select(Webhook.id, Webhook.tenant_id, Webhook.events).where(Webhook.active)
        )
        return [Subscriber(r.id, r.tenant_id, tuple(r.events)) for r in rows]

    async def enqueue(
        self,
        session: AsyncSession,
        events: Sequence[OutboxEvent],
        *,
        only: uuid.UUID | None = None,
        exclude: uuid.UUID | None = None,
        subscribers: Iterable[Subscriber] | None = None,
    ) -> int:
        """Write outbox rows for ``events`` in ``session`` (the caller's transaction).

        One row per event and active webhook of the event's tenant that subscribes to its
        type (``only``: just that webhook; ``exclude``: all but it). An event with a bus
        ``seq`` is written at most once per webhook, whoever writes it (two processes
        reading one Redis stream). Returns how many rows were offered. Waking the
        dispatcher after the commit is the caller's business (:meth:`notify`).
        """
        if subscribers is None:
            subscribers = await self.subscribers(session)
        targets = [s for s in subscribers if s.id != exclude and (only is None or s.id == only)]
        now = self._clock.now()
        rows: list[dict[str, Any]] = []
        for event in events:
            tenant = event.tenant_id or DEFAULT_TENANT
            body: str | None = None
            for target in targets:
                if target.tenant_id != tenant or not target.wants(event.type):
                    continue
                body = body or body_of(event.type, event.timestamp, event.data)
                rows.append(
                    {
                        "message_id": new_message_id(),
                        "webhook_id": target.id,
                        "tenant_id": tenant,
                        "event_type": event.type,
                        "event_seq": event.seq,
                        "body": body,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                    }
                )
        if rows:
            # The table, not the entity: a Core executemany skips the ORM's bulk-insert work.
            table = cast("Table", WebhookDelivery.__table__)
            insert = (postgresql.insert if self._db.is_postgres else sqlite.insert)(table)
            await session.execute(insert.on_conflict_do_nothing(), rows)
        return len(rows)

    async def save_cursor(self, session: AsyncSession, seq: int) -> None:
        """Record that every bus event up to ``seq`` is in the outbox."""
        now = self._clock.now()
        insert = (postgresql.insert if self._db.is_postgres else sqlite.insert)(WebhookCursor)
        await session.execute(
            insert.values(name="bus", last_seq=seq, updated_at=now).on_conflict_do_update(
                index_elements=[WebhookCursor.name], set_={"last_seq": seq, "updated_at": now}
            )
        )

    async def load_cursor(self) -> int | None:
        """The bus position saved by :meth:`save_cursor`, if any."""
        async with self._db.sessions() as session:
            value = await session.scalar(
                select(WebhookCursor.last_seq).where(WebhookCursor.name == "bus")
            )
            return None if value is None else int(value)

    def notify(self) -> None:
        """Tell the dispatcher that rows became due (after the transaction committed)."""
        self._wake()

    async def create_test_delivery(self, webhook_id: uuid.UUID, tenant_id: str) -> int:
        """A ``webhook.test`` outbox row for this webhook only, held for a direct attempt."""
        async with self._db.session() as session:
            row = await _webhook(session, webhook_id, tenant_id)
            event = OutboxEvent(
                "webhook.test",
                {
                    "webhook_id": str(row.id),
                    "message": f"Test delivery to {row.name} requested through the API.",
                },
                tenant_id,
                self._clock.now(),
            )
            # Held (no next_attempt_at): the dispatcher leaves it to the caller's direct attempt.
            delivery = WebhookDelivery(
                message_id=new_message_id(),
                webhook_id=row.id,
                tenant_id=tenant_id,
                event_type=event.type,
                body=body_of(event.type, event.timestamp, event.data),
                status="pending",
                attempts=0,
                next_attempt_at=None,
                created_at=event.timestamp,
            )
            session.add(delivery)
            await session.flush()
            return delivery.id

    # --- deliveries ----------------------------------------------------------------------------

    async def deliveries(
        self,
        webhook_id: uuid.UUID,
        tenant_id: str,
        *,
        status: str | None = None,
        event_type: str | None = None,
        skip: int = 0,
        limit: int = 10,
    ) -> tuple[list[DeliveryOut], int]:
        """The webhook's deliveries, newest first, each with its attempts."""
        query: Select[WebhookDelivery] = select(WebhookDelivery).where(
            WebhookDelivery.webhook_id == webhook_id
        )
        if status is not None:
            query = query.where(WebhookDelivery.status == status)
        if event_type is not None:
            if event_type.endswith(".*"):
                query = query.where(WebhookDelivery.event_type.startswith(event_type[:-1]))
            elif event_type != "*":
                query = query.where(WebhookDelivery.event_type == event_type)
        async with self._db.sessions() as session:
            await _webhook(session, webhook_id, tenant_id)
            total = await session.scalar(select(func.count()).select_from(query.subquery()))
            rows = list(
                await session.scalars(
                    query.order_by(WebhookDelivery.id.desc()).offset(skip).limit(limit)
                )
            )
            return await _deliveries_out(session, rows), int(total or 0)

    async def delivery(
        self, webhook_id: uuid.UUID, tenant_id: str, delivery_id: int
    ) -> DeliveryOut:
        async with self._db.sessions() as session:
            await _webhook(session, webhook_id, tenant_id)
            row = await _delivery(session, webhook_id, delivery_id)
            (out,) = await _deliveries_out(session, [row])
            return out

    async def delivery_by_id(self, delivery_id: int) -> DeliveryOut:
        """A delivery by id alone (internal: the test endpoint reads back its own row)."""
        async with self._db.sessions() as session:
            row = await session.get(WebhookDelivery, delivery_id)
            if row is None:
                raise NotFoundError(f"no delivery {delivery_id}")
            (out,) = await _deliveries_out(session, [row])
            return out

    async def retry(self, webhook_id: uuid.UUID, tenant_id: str, delivery_id: int) -> DeliveryOut:
        """Queue a delivery again, now, with a fresh retry schedule and the same ``webhook-id``.

        A delivery being attempted by a test call right now is a 409.
        """
        now = self._clock.now()
        async with self._db.session() as session:
            await _webhook(session, webhook_id, tenant_id)
            row = await _delivery(session, webhook_id, delivery_id)
            if row.status == "pending" and row.next_attempt_at is None:
                raise BadRequestError("this delivery is being attempted right now")
            if row.status != "pending":
                row.attempts = 0
            row.status = "pending"
            row.next_attempt_at = now
            row.completed_at = None
        self._wake()
        return await self.delivery(webhook_id, tenant_id, delivery_id)

    async def recover(self, webhook_id: uuid.UUID, tenant_id: str, since: datetime) -> int:
        """Queue again every exhausted or failed delivery created at or after ``since``."""
        if since > self._clock.now():
            raise BadRequestError("since is in the future")
        async with self._db.session() as session:
            await _webhook(session, webhook_id, tenant_id)
            result = await session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.webhook_id == webhook_id,
                    WebhookDelivery.status.in_(("exhausted", "failed")),
                    WebhookDelivery.created_at >= since,
                )
                .values(
                    status="pending",
                    attempts=0,
                    next_attempt_at=self._clock.now(),
                    completed_at=None,
                )
            )
            count = int(result.rowcount)  # type: ignore[attr-defined]
        if count:
            self._wake()
        return count

    async def stats(self, webhook_id: uuid.UUID, tenant_id: str) -> StatsOut:
        """Deliveries by status; attempts, success rate and response times."""
        async with self._db.sessions() as session:
            await _webhook(session, webhook_id, tenant_id)
            by_status = {s: 0 for s in ("pending", "success", "exhausted", "failed")}
            for status, count in await session.execute(
                select(WebhookDelivery.status, func.count())
                .where(WebhookDelivery.webhook_id == webhook_id)
                .group_by(WebhookDelivery.status)
            ):
                by_status[status] = int(count)
            attempts = WebhookAttempt.webhook_id == webhook_id
            totals = (
                await session.execute(
                    select(
                        func.count(),
                        func.count().filter(WebhookAttempt.success),
                        func.avg(WebhookAttempt.response_ms),
                        func.max(WebhookAttempt.started_at).filter(WebhookAttempt.success),
                    ).where(attempts)
                )
            ).one()
            last_failure = (
                await session.execute(
                    select(
                        WebhookAttempt.started_at,
                        WebhookAttempt.error,
                        WebhookAttempt.status_code,
                    )
                    .where(attempts, ~WebhookAttempt.success)
                    .order_by(WebhookAttempt.id.desc())
                    .limit(1)
                )
            ).first()
            times = sorted(
                float(v)
                for v in await session.scalars(
                    select(WebhookAttempt.response_ms)
                    .where(attempts, WebhookAttempt.response_ms.is_not(None))
                    .order_by(WebhookAttempt.id.desc())
                    .limit(P95_WINDOW)
                )
                if v is not None
            )
        count, successes = int(totals[0]), int(totals[1])
        failure_error = None
        if last_failure is not None:
            failure_error = last_failure.error or f"HTTP {last_failure.status_code}"
        return StatsOut(
            deliveries=sum(by_status.values()),
            by_status=by_status,
            attempts=count,
            success_rate=successes / count if count else None,
            avg_response_ms=None if totals[2] is None else round(float(totals[2]), 3),
            p95_response_ms=_p95(times),
            last_success_at=_aware(totals[3]),
            last_failure_at=None if last_failure is None else last_failure.started_at,
            last_failure_error=failure_error,
        )

    def _wake(self) -> None:
        if self.on_enqueued is not None:
            self.on_enqueued()


# --- helpers -----------------------------------------------------------------------------------


def _field_error(field: str, message: str) -> list[dict[str, Any]]:
    return [{"loc": ["body", field], "msg": message, "type": "value_error"}]


async def _tenant_exists(session: AsyncSession, tenant_id: str) -> bool:
    return await session.get(Tenant, tenant_id) is not None


async def _webhook(session: AsyncSession, webhook_id: uuid.UUID, tenant_id: str) -> Webhook:
    row = await session.get(Webhook, webhook_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFoundError(f"no webhook {webhook_id}")
    return row


async def _delivery(
    session: AsyncSession, webhook_id: uuid.UUID, delivery_id: int
) -> WebhookDelivery:
    row = await session.get(WebhookDelivery, delivery_id)
    if row is None or row.webhook_id != webhook_id:
        raise NotFoundError(f"no delivery {delivery_id} for webhook {webhook_id}")
    return row


async def _deliveries_out(
    session: AsyncSession, rows: Sequence[WebhookDelivery]
) -> list[DeliveryOut]:
    attempts: dict[int, list[AttemptOut]] = {row.id: [] for row in rows}
    if rows:
        for attempt in await session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(attempts)))
            .order_by(WebhookAttempt.id)
        ):
            attempts[attempt.delivery_id].append(
                AttemptOut.model_validate(attempt, from_attributes=True)
            )
    return [
        DeliveryOut(
            id=row.id,
            message_id=row.message_id,
            webhook_id=row.webhook_id,
            event_type=row.event_type,
            status=row.status,
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at,
            created_at=row.created_at,
            last_attempt_at=row.last_attempt_at,
            last_status_code=row.last_status_code,
            last_error=row.last_error,
            completed_at=row.completed_at,
            payload=orjson.loads(row.body),
            attempt_log=attempts[row.id],
        )
        for row in rows
    ]


def _out(row: Webhook) -> WebhookOut:
    return WebhookOut.model_validate(row, from_attributes=True)


def _p95(sorted_values: list[float]) -> float | None:
    if not sorted_values:
        return None
    index = max(0, min(len(sorted_values) - 1, round(0.95 * len(sorted_values) + 0.5) - 1))
    return round(sorted_values[index], 3)


def _aware(value: datetime | None) -> datetime | None:
    # Aggregates bypass the column type: SQLite hands back a naive string-parsed datetime.
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
