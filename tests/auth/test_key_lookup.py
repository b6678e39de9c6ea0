"""Key lookups under load: requests missing the key cache together share one query."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from tests.fakes import FakeClock
from unity.auth.keys import generate
from unity.auth.principal import Unauthorized
from unity.auth.service import KeyService
from unity.core.db import Database


@contextmanager
def key_queries(database: Database) -> Iterator[list[str]]:
    """The statements reading ``api_keys`` that run inside the block."""
    seen: list[str] = []

    def note(*args: Any) -> None:
        statement = str(args[2])
        if statement.lstrip().upper().startswith("SELECT") and "api_keys" in statement:
            seen.append(statement)

    engine = database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


async def test_concurrent_requests_missing_the_cache_share_one_lookup(
    keys: KeyService, database: Database, clock: FakeClock
) -> None:
    key, secret = await keys.create(tenant_id="default", name="ci", scopes=["plugins:read"])
    cold = KeyService(database=database, clock=clock)  # another process: nothing cached
    with key_queries(database) as seen:
        principals = await asyncio.gather(*(cold.authenticate(secret) for _ in range(20)))
    assert {p.key_id for p in principals} == {key.id}
    assert len(seen) == 1
    clock.advance(5)  # the cache entry expired: again one lookup for everyone
    with key_queries(database) as seen:
        await asyncio.gather(*(cold.authenticate(secret) for _ in range(20)))
    assert len(seen) == 1


async def test_a_refusal_reaches_every_caller_sharing_the_lookup(
    database: Database, clock: FakeClock
) -> None:
    unknown, _ = generate()  # well formed, never stored
    cold = KeyService(database=database, clock=clock)
    with key_queries(database) as seen:
        results = await asyncio.gather(
            *(cold.authenticate(unknown) for _ in range(5)), return_exceptions=True
        )
    assert len(seen) == 1
    assert all(isinstance(r, Unauthorized) and r.detail == "unknown API key" for r in results)


async def test_a_caller_that_goes_away_does_not_cancel_the_lookup_of_the_others(
    keys: KeyService, database: Database, clock: FakeClock
) -> None:
    key, secret = await keys.create(tenant_id="default", name="ci", scopes=["plugins:read"])
    cold = KeyService(database=database, clock=clock)
    leaving = asyncio.create_task(cold.authenticate(secret))
    staying = asyncio.create_task(cold.authenticate(secret))
    await asyncio.sleep(0)  # both are waiting for the same lookup
    leaving.cancel()
    assert (await staying).key_id == key.id
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_a_lookup_after_a_revocation_does_not_join_one_started_before(
    keys: KeyService, database: Database, clock: FakeClock
) -> None:
    key, secret = await keys.create(tenant_id="default", name="ci", scopes=["plugins:read"])
    clock.advance(5)  # nothing cached: the next call looks the key up
    before = asyncio.create_task(keys.authenticate(secret))
    await asyncio.sleep(0)  # its lookup is in flight
    await keys.revoke(key.id, "default")
    with pytest.raises(Unauthorized, match="revoked"):
        await keys.authenticate(secret)
    await asyncio.gather(before, return_exceptions=True)
