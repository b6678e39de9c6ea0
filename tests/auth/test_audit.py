"""The audit log's storage: batched writes, reads, pruning by age, and what the middleware skips."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text

from tests.auth.conftest import wait_until
from tests.fakes import FakeClock
from unity.auth.audit import AuditMiddleware, AuditService
from unity.auth.models import AuditEntry
from unity.core.db import Database
from unity.errors import DatabaseError


async def _stored(database: Database) -> int:
    async with database.session() as session:
        return int(await session.scalar(select(func.count()).select_from(AuditEntry)) or 0)


def _write(audit: AuditService, resource: str, status: int = 200) -> None:
    audit.record(
        method="POST",
        route="/api/things/{thing_id}/enable",
        path=f"/api/things/{resource}/enable",
        status=status,
        key_id=uuid.uuid4(),
        tenant_id="default",
        resource_id=resource,
    )


async def test_records_are_queued_then_written_in_one_batch(
    audit: AuditService, database: Database
) -> None:
    for i in range(25):
        _write(audit, f"r{i}", status=200 if i % 5 else 500)
    assert await _stored(database) == 0  # nothing written on the request path
    await audit.flush()
    assert await _stored(database) == 25
    items, total = await audit.list(outcome="failure", limit=100)
    assert total == 5
    assert {i.resource_id for i in items} == {"r0", "r5", "r10", "r15", "r20"}
    assert all(i.status == 500 for i in items)


async def test_prune_removes_entries_older_than_the_cutoff(
    audit: AuditService, database: Database, clock: FakeClock
) -> None:
    _write(audit, "old")
    clock.advance(86_400 * 10)
    _write(audit, "recent")
    await audit.flush()
    assert await audit.prune(clock.now() - timedelta(days=5)) == 1
    items, total = await audit.list()
    assert total == 1
    assert items[0].resource_id == "recent"


async def test_prune_expired_applies_the_retention_period(
    audit: AuditService, clock: FakeClock
) -> None:
    _write(audit, "a")
    clock.advance(86_400 * 29)
    _write(audit, "b")
    clock.advance(86_400 * 2)  # "a" is 31 days old, "b" 2: retention is 30 days
    await audit.flush()
    assert await audit.prune_expired() == 1
    assert [i.resource_id for i in (await audit.list())[0]] == ["b"]
    assert await audit.prune_expired() == 0


async def test_the_flush_loop_writes_and_stop_writes_the_rest(
    database: Database, clock: FakeClock
) -> None:
    audit = AuditService(database=database, clock=clock, flush_interval_s=0.02)
    await audit.start()
    _write(audit, "first")

    async def written() -> bool:
        return await _stored(database) == 1

    await wait_until(written, "the flush loop to write the audit record")
    _write(audit, "last")
    await audit.stop()
    assert await _stored(database) == 2


async def test_a_full_queue_drops_the_oldest_records_and_counts_them(
    sqlite_database: Database, clock: FakeClock
) -> None:
    audit = AuditService(database=sqlite_database, clock=clock, max_pending=3)
    for i in range(5):
        _write(audit, f"r{i}")
    assert audit.dropped == 2
    items, _ = await audit.list()
    assert sorted(i.resource_id or "" for i in items) == ["r2", "r3", "r4"]


async def test_the_middleware_records_only_api_writes_outside_excluded_paths(
    sqlite_database: Database, clock: FakeClock
) -> None:
    audit = AuditService(database=sqlite_database, clock=clock)
    app = FastAPI()

    @app.post("/api/write")
    async def ingest() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/api/items", status_code=201)
    async def create_item() -> dict[str, str]:
        return {"id": "item-1"}

    @app.post("/login")
    async def outside() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/api/items")
    async def read() -> list[str]:
        return []

    wrapped = AuditMiddleware(app, audit=audit, exclude=["/api/write"])
    transport = httpx.ASGITransport(app=wrapped)
    async with httpx.AsyncClient(transport=transport, base_url="http://unity.test") as client:
        await client.post("/api/write")
        await client.post("/login")
        await client.get("/api/items")
        await client.post("/api/items")
        await client.put("/api/nothing-here")
    items, total = await audit.list()
    assert total == 2
    assert [(i.method, i.route, i.resource_id, i.status) for i in items] == [
        ("PUT", "/api/nothing-here", None, 404),  # unmatched: the path stands in for the route
        ("POST", "/api/items", "item-1", 201),  # the created id comes from the response
    ]


async def test_records_survive_a_failed_write_and_are_written_once_later(
    audit: AuditService, database: Database
) -> None:
    _write(audit, "before")
    async with database.session() as session:
        await session.execute(text("ALTER TABLE audit_log RENAME TO audit_log_away"))
    with pytest.raises(DatabaseError):
        await audit.flush()
    _write(audit, "during")
    async with database.session() as session:
        await session.execute(text("ALTER TABLE audit_log_away RENAME TO audit_log"))
    await audit.flush()
    items, total = await audit.list()
    assert total == 2
    assert [i.resource_id for i in items] == ["during", "before"]
