"""Per-key usage: ``last_used_at``, requests per day and status class, the last 100 requests.

Recording happens on every request, so it only touches memory; :class:`UsageRecorder`
writes what accumulated in one transaction every few seconds (and on stop). A batch that
fails to write is merged back and retried, so a database hiccup loses no counts.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from unity.auth.flusher import Flusher
from unity.auth.models import ApiKey, ApiKeyRequest, ApiKeyUsage
from unity.auth.principal import Principal
from unity.auth.schemas import RecentRequest, UsageDay
from unity.core.clock import Clock
from unity.core.db import Database
from unity.errors import DatabaseError

RECENT_REQUESTS = 100
MAX_PATH = 2000


def status_class(status: int) -> str:
    """``2xx`` … ``5xx`` for an HTTP status (informational ones count as ``2xx``)."""
    return f"{min(max(status // 100, 2), 5)}xx"


@dataclass(slots=True)
class _Request:
    ts: datetime
    method: str
    path: str
    status: int
    duration_ms: float


@dataclass(slots=True)
class _Pending:
    last_used: dict[uuid.UUID, datetime] = field(default_factory=dict)
    counts: Counter[tuple[uuid.UUID, date, str]] = field(default_factory=Counter)
    recent: dict[uuid.UUID, deque[_Request]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.last_used or self.counts or self.recent)

    def keys(self) -> set[uuid.UUID]:
        return set(self.last_used) | {k for k, _, _ in self.counts} | set(self.recent)

    def absorb(self, older: _Pending) -> None:
        """Put a batch that failed to write back, before what arrived since."""
        for key_id, moment in older.last_used.items():
            if key_id not in self.last_used or self.last_used[key_id] < moment:
                self.last_used[key_id] = moment
        self.counts.update(older.counts)
        for key_id, rows in older.recent.items():
            newer = self.recent.get(key_id, ())
            self.recent[key_id] = deque([*rows, *newer], maxlen=RECENT_REQUESTS)


class UsageRecorder:
    """Accumulates key usage in memory and writes it in batches."""

    def __init__(self, *, database: Database, clock: Clock, flush_interval_s: float = 5.0):
        self._db = database
        self._clock = clock
        self._pending = _Pending()
        self._lock = asyncio.Lock()
        self._flusher = Flusher("unity-key-usage", flush_interval_s, self.flush)

    async def start(self) -> None:
        """Start writing every ``flush_interval_s`` seconds."""
        self._flusher.start()

    async def stop(self) -> None:
        """Stop, writing what is pending."""
        await self._flusher.stop()

    def touch(self, key_id: uuid.UUID, moment: datetime) -> None:
        """Note that the key was used at ``moment``."""
        self._pending.last_used[key_id] = moment

    def last_used(self, key_id: uuid.UUID) -> datetime | None:
        """When the key was last used according to what is not written yet."""
        return self._pending.last_used.get(key_id)

    def record(
        self, key_id: uuid.UUID, method: str, path: str, status: int, duration_ms: float
    ) -> None:
        """Count one request made with the key, dated now."""
        now = self._clock.now()
        pending = self._pending
        pending.last_used[key_id] = now
        pending.counts[key_id, now.date(), status_class(status)] += 1
        rows = pending.recent.get(key_id)
        if rows is None:
            rows = pending.recent[key_id] = deque(maxlen=RECENT_REQUESTS)
        rows.append(_Request(now, method, path[:MAX_PATH], status, duration_ms))

    async def flush(self) -> None:
        """Write everything pending in one transaction; on failure keep it for the next try.

        Raises :class:`DatabaseError` when the database cannot be written.
        """
        async with self._lock:
            batch, self._pending = self._pending, _Pending()
            if not batch:
                return
            try:
                async with self._db.session() as session:
                    await self._write(session, batch)
            except (SQLAlchemyError, OSError) as exc:
                self._pending.absorb(batch)
                raise DatabaseError(f"cannot write API key usage: {exc}") from exc

    async def _write(self, session: AsyncSession, batch: _Pending) -> None:
        # A key deleted meanwhile (say by hand) must not fail the whole batch on its foreign key.
        known = set(await session.scalars(select(ApiKey.id).where(ApiKey.id.in_(batch.keys()))))
        keys = cast("Table", ApiKey.__table__)
        if touched := [{"b_id": k, "b_ts": t} for k, t in batch.last_used.items() if k in known]:
            await session.execute(
                update(keys)
                .where(keys.c.id == bindparam("b_id"))
                .where(or_(keys.c.last_used_at.is_(None), keys.c.last_used_at < bindparam("b_ts")))
                .values(last_used_at=bindparam("b_ts")),
                touched,
            )
        if counts := [
            {"key_id": k, "day": d, "status_class": c, "count": n}
            for (k, d, c), n in batch.counts.items()
            if k in known
        ]:
            insert = sqlite_insert if self._db.is_sqlite else pg_insert
            upsert = insert(ApiKeyUsage).values(counts)
            await session.execute(
                upsert.on_conflict_do_update(
                    index_elements=["key_id", "day", "status_class"],
                    set_={"count": ApiKeyUsage.count + upsert.excluded.count},
                )
            )
        written = [k for k in batch.recent if k in known]
        rows: list[dict[str, Any]] = [
            {
                "key_id": key_id,
                "ts": r.ts,
                "method": r.method,
                "path": r.path,
                "status": r.status,
                "duration_ms": r.duration_ms,
            }
            for key_id in written
            for r in batch.recent[key_id]
        ]
        if rows:
            await session.execute(cast("Table", ApiKeyRequest.__table__).insert(), rows)
        for key_id in written:
            await self._keep_newest(session, key_id)

    @staticmethod
    async def _keep_newest(session: AsyncSession, key_id: uuid.UUID) -> None:
        cutoff = await session.scalar(
            select(ApiKeyRequest.id)
            .where(ApiKeyRequest.key_id == key_id)
            .order_by(ApiKeyRequest.id.desc())
            .offset(RECENT_REQUESTS)
            .limit(1)
        )
        if cutoff is not None:
            await session.execute(
                delete(ApiKeyRequest).where(
                    ApiKeyRequest.key_id == key_id, ApiKeyRequest.id <= cutoff
                )
            )

    async def read(
        self, key_id: uuid.UUID, *, days: int
    ) -> tuple[list[UsageDay], list[RecentRequest]]:
        """Counts per UTC day (newest first) over ``days`` days and the last 100 requests.

        Pending usage is written first, so the answer includes the request just made.
        """
        await self.flush()
        since = self._clock.now().date() - timedelta(days=days - 1)
        async with self._db.session() as session:
            counts = await session.execute(
                select(ApiKeyUsage.day, ApiKeyUsage.status_class, ApiKeyUsage.count)
                .where(ApiKeyUsage.key_id == key_id, ApiKeyUsage.day >= since)
                .order_by(ApiKeyUsage.day.desc())
            )
            per_day: dict[date, dict[str, int]] = {}
            for day, klass, count in counts:
                per_day.setdefault(day, {})[klass] = int(count)
            recent = await session.scalars(
                select(ApiKeyRequest)
                .where(ApiKeyRequest.key_id == key_id)
                .order_by(ApiKeyRequest.id.desc())
                .limit(RECENT_REQUESTS)
            )
            latest = [RecentRequest.model_validate(r) for r in recent]
        usage = [
            UsageDay.model_validate({"day": d, "total": sum(c.values()), "by_status": c})
            for d, c in per_day.items()
        ]
        return usage, latest


class UsageMiddleware:
    """Feeds each authenticated request into its key's usage (pure ASGI, memory only).

    The principal is the one the auth dependency or the rate limiter left in the request
    state; unauthenticated requests are not counted against any key.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            principal = state.get("principal")
            keys = getattr(getattr(scope["app"].state, "components", None), "keys", None)
            if isinstance(principal, Principal) and keys is not None:
                keys.record_request(
                    principal,
                    scope["method"],
                    scope["path"],
                    status,
                    (time.perf_counter() - started) * 1000,
                )
