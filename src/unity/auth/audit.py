"""The audit log: every write through the API, who made it and how it ended.

:class:`AuditMiddleware` (pure ASGI) notes each ``POST``/``PUT``/``PATCH``/``DELETE`` under
``/api`` as its response completes: the key and tenant (from the principal the auth
dependency left in ``scope["state"]``), the method, the route template
(``/api/plugins/{plugin_id}/enable``), the path, the resource id, the status and whether
it succeeded (status < 400). :class:`AuditService` queues these records in memory and
writes them in batches, so a request never waits on the log; it also reads the log
(``GET /api/audit``) and prunes it by age.
"""

from __future__ import annotations

import asyncio
import builtins
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import orjson
import structlog
from sqlalchemy import Table, delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from unity.auth.flusher import Flusher
from unity.auth.models import AuditEntry
from unity.auth.principal import Principal
from unity.auth.schemas import AuditEntryOut
from unity.core.clock import Clock
from unity.core.db import Database
from unity.errors import DatabaseError

__all__ = ["WRITE_METHODS", "AuditMiddleware", "AuditRecord", "AuditService"]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_MAX_PATH = 2000
_MAX_CAPTURE = 64 * 1024

log = structlog.stdlib.get_logger("unity.auth.audit")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One write through the API, as the middleware hands it over."""

    ts: datetime
    key_id: uuid.UUID | None
    tenant_id: str | None
    method: str
    route: str
    path: str
    resource_id: str | None
    status: int

    def row(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "key_id": self.key_id,
            "tenant_id": self.tenant_id,
            "method": self.method,
            "route": self.route[:500],
            "path": self.path[:_MAX_PATH],
            "resource_id": self.resource_id[:200] if self.resource_id else None,
            "status": self.status,
            "outcome": "success" if self.status < 400 else "failure",
        }


class AuditService:
    """The audit log: queued in memory by :meth:`record`, written in batches, pruned by age.

    The queue holds at most ``max_pending`` records; past that, the oldest are dropped
    (counted in :attr:`dropped` and logged) rather than slowing requests down.
    """

    def __init__(
        self,
        *,
        database: Database,
        clock: Clock,
        retention_days: int = 90,
        flush_interval_s: float = 1.0,
        max_pending: int = 100_000,
    ) -> None:
        if retention_days < 1 or max_pending < 1:
            raise ValueError("retention_days and max_pending must be >= 1")
        self._db = database
        self._clock = clock
        self.retention = timedelta(days=retention_days)
        self._queue: deque[AuditRecord] = deque()
        self._max_pending = max_pending
        self.dropped = 0
        self._flush_lock = asyncio.Lock()
        self._flusher = Flusher("unity-audit", flush_interval_s, self.flush)

    async def start(self) -> None:
        """Start writing queued records every ``flush_interval_s`` seconds."""
        self._flusher.start()

    async def stop(self) -> None:
        """Stop the flush loop, writing what is queued."""
        await self._flusher.stop()

    def record(
        self,
        *,
        method: str,
        route: str,
        path: str,
        status: int,
        key_id: uuid.UUID | None = None,
        tenant_id: str | None = None,
        resource_id: str | None = None,
    ) -> None:
        """Queue one write for the log, dated now. Never blocks, never touches the database."""
        if len(self._queue) >= self._max_pending:
            self._queue.popleft()
            if self.dropped == 0:
                log.warning("audit queue full; dropping the oldest records")
            self.dropped += 1
        self._queue.append(
            AuditRecord(
                ts=self._clock.now(),
                key_id=key_id,
                tenant_id=tenant_id,
                method=method,
                route=route,
                path=path,
                resource_id=resource_id,
                status=status,
            )
        )

    async def flush(self) -> None:
        """Write queued records in one transaction; on failure they stay queued.

        Raises :class:`DatabaseError` when the database cannot be written.
        """
        async with self._flush_lock:
            if not self._queue:
                return
            batch = builtins.list(self._queue)
            self._queue.clear()
            try:
                async with self._db.session() as session:
                    table = cast("Table", AuditEntry.__table__)
                    await session.execute(table.insert(), [r.row() for r in batch])
            except (SQLAlchemyError, OSError) as exc:
                # Back in front of what arrived meanwhile, still within the bound.
                self._queue.extendleft(reversed(batch))
                while len(self._queue) > self._max_pending:
                    self._queue.popleft()
                    self.dropped += 1
                raise DatabaseError(f"cannot write the audit log: {exc}") from exc

    async def list(
        self,
        *,
        tenant_id: str | None = None,
        key_id: uuid.UUID | None = None,
        method: str | None = None,
        status: int | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        skip: int = 0,
        limit: int = 10,
    ) -> tuple[builtins.list[AuditEntryOut], int]:
        """Matching entries, newest first, and how many match. Queued records are included."""
        await self.flush()
        query = select(AuditEntry)
        if tenant_id is not None:
            query = query.where(AuditEntry.tenant_id == tenant_id)
        if key_id is not None:
            query = query.where(AuditEntry.key_id == key_id)
        if method is not None:
            query = query.where(AuditEntry.method == method.upper())
        if status is not None:
            query = query.where(AuditEntry.status == status)
        if outcome is not None:
            query = query.where(AuditEntry.outcome == outcome)
        if since is not None:
            query = query.where(AuditEntry.ts >= since)
        if until is not None:
            query = query.where(AuditEntry.ts < until)
        async with self._db.session() as session:
            total = await session.scalar(select(func.count()).select_from(query.subquery()))
            rows = await session.scalars(
                query.order_by(AuditEntry.ts.desc(), AuditEntry.id.desc()).offset(skip).limit(limit)
            )
            return [AuditEntryOut.model_validate(r) for r in rows], int(total or 0)

    async def prune(self, older_than: datetime) -> int:
        """Delete entries dated before ``older_than``; returns how many went."""
        async with self._db.session() as session:
            result = await session.execute(
                delete(AuditEntry)
                .where(AuditEntry.ts < older_than)
                .execution_options(synchronize_session=False)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def prune_expired(self) -> int:
        """Delete entries older than the retention period; for the scheduler to call."""
        removed = await self.prune(self._clock.now() - self.retention)
        if removed:
            log.info("pruned the audit log", removed=removed)
        return removed


class AuditMiddleware:
    """Records every write under ``prefix`` in the audit log; pure ASGI, never blocks.

    ``audit`` defaults to ``app.state.components.audit`` of the running application, looked
    up per request (components are built by the lifespan, after the middleware). Paths
    under ``exclude`` (high-volume ingest, say) are not recorded.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        audit: AuditService | None = None,
        prefix: str = "/api",
        exclude: Iterable[str] = (),
    ) -> None:
        self.app = app
        self._audit = audit
        self._prefix = prefix.rstrip("/")
        self._exclude = tuple(exclude)

    def _watched(self, path: str) -> bool:
        if path != self._prefix and not path.startswith(self._prefix + "/"):
            return False
        return not any(path.startswith(p) for p in self._exclude)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in WRITE_METHODS
            or not self._watched(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        audit = self._audit or _components_audit(scope)
        if audit is None:
            await self.app(scope, receive, send)
            return
        # The auth dependency stores the principal here; routes share this very dict.
        state: dict[str, Any] = scope.setdefault("state", {})
        status = 500
        body: bytearray | None = None
        recorded = False

        def finish() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                _record(audit, scope, state, status, body)

        async def send_wrapper(message: Message) -> None:
            nonlocal status, body
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if status == 201 and not scope.get("path_params"):
                    body = bytearray()  # the new resource's id is in the response
            elif message["type"] == "http.response.body":
                if body is not None and len(body) <= _MAX_CAPTURE:
                    body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    finish()  # queued before the client sees the end of the response
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            status = 500
            finish()
            raise
        finally:
            finish()


def _components_audit(scope: Scope) -> AuditService | None:
    components = getattr(getattr(scope.get("app"), "state", None), "components", None)
    audit = getattr(components, "audit", None)
    return audit if isinstance(audit, AuditService) else None


def _record(
    audit: AuditService,
    scope: Scope,
    state: dict[str, Any],
    status: int,
    body: bytearray | None,
) -> None:
    principal = state.get("principal")
    if not isinstance(principal, Principal):
        principal = None
    route = scope.get("route")
    # path_format drops convertors: /api/keys/{key_id}, not /api/keys/{key_id:uuid}
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    audit.record(
        method=scope["method"],
        route=template if isinstance(template, str) else scope["path"],
        path=scope["path"],
        status=status,
        key_id=principal.key_id if principal else None,
        tenant_id=principal.tenant_id if principal else None,
        resource_id=_resource_id(scope, body),
    )


def _resource_id(scope: Scope, body: bytearray | None) -> str | None:
    params: dict[str, Any] = scope.get("path_params") or {}
    if params:
        return str(list(params.values())[-1])  # the innermost: what the write acts on
    if body and len(body) <= _MAX_CAPTURE:
        try:
            created = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if isinstance(created, dict) and isinstance(created.get("id"), str | int):
            return str(created["id"])
    return None
