"""Auth fixtures: a migrated database (SQLite, and PostgreSQL where marked), a fake clock,
the key, tenant and audit services, and a small app serving the auth routers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.fakes import FakeClock
from unity.auth.audit import AuditService
from unity.auth.service import KeyService, TenantService
from unity.core.db import Database


async def wait_until(
    condition: Callable[[], Awaitable[bool]], what: str, within: float = 10.0
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Events:
    """Collects what a service publishes, in order."""

    published: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def publish(self, event_type: str, data: dict[str, Any]) -> None:
        self.published.append((event_type, data))

    @property
    def types(self) -> list[str]:
        return [t for t, _ in self.published]


@dataclass
class AuthServices:
    """What the auth routers find on ``app.state.components``."""

    keys: KeyService
    tenants: TenantService
    audit: AuditService


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
async def keys(database: Database, clock: FakeClock, events: Events) -> AsyncIterator[KeyService]:
    """A key service whose usage is written only when a test flushes it."""
    service = KeyService(
        database=database, clock=clock, publish=events.publish, flush_interval_s=3600
    )
    yield service
    await service.stop()


@pytest.fixture
def tenants(database: Database, clock: FakeClock) -> TenantService:
    return TenantService(database=database, clock=clock)


@pytest.fixture
async def audit(database: Database, clock: FakeClock) -> AsyncIterator[AuditService]:
    service = AuditService(database=database, clock=clock, retention_days=30, flush_interval_s=3600)
    yield service
    await service.stop()
