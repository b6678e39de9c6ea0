"""The batch writer: when it flushes, what a future promises, and that no data is lost."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from sqlalchemy.engine import make_url
from structlog.testing import LogCapture

from tests.fakes import FakeClock
from tests.metrics.conftest import key, make_instance
from tests.services import PostgresServer
from unity.core.db import Database
from unity.core.migrations import upgrade
from unity.errors import DatabaseError
from unity.metrics.store import MetricStore, SnapshotWrite, SqliteMetricStore, create_store
from unity.metrics.writer import BatchWriter, PendingSample, WriterStopped

T0 = 1_767_225_600_000
WAIT_S = 20.0  # generous deadline for things that should happen promptly


def samples(count: int, name: str = "cpu", start: int = T0) -> list[PendingSample]:
    return [PendingSample(key(name), start + i * 1000, float(i)) for i in range(count)]


async def eventually(condition: Callable[[], bool], within_s: float = WAIT_S) -> None:
    """Poll ``condition`` until it holds or the deadline passes."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


async def stored(database: Database, name: str = "cpu") -> list[float]:
    """Values stored for ``name``, read through a store of its own (a second reader)."""
    reader = create_store(database)
    try:
        series = await reader.find_series(name=name)
        if not series:
            return []
        return [p.value for p in await reader.query(series[0].id, 0, 2**62)]
    finally:
        await reader.close()


def captured_logger() -> tuple[Any, LogCapture]:
    capture = LogCapture()
    return structlog.wrap_logger(None, processors=[capture]), capture


@pytest.fixture
async def store(sqlite_database: Database) -> AsyncIterator[MetricStore]:
    metric_store = SqliteMetricStore(sqlite_database, lock_timeout_s=0.05)
    yield metric_store
    await metric_store.close()


@pytest.fixture
async def writers() -> AsyncIterator[list[BatchWriter]]:
    """Writers a test creates are stopped afterwards even if it fails half-way."""
    started: list[BatchWriter] = []
    yield started
    for writer in started:
        await writer.stop(timeout_s=5)


async def start(writers: list[BatchWriter], store: MetricStore, **options: Any) -> BatchWriter:
    writer = BatchWriter(store, **options)
    await writer.start()
    writers.append(writer)
    return writer


@contextmanager
def write_lock(database: Database) -> Iterator[None]:
    """Another connection holding SQLite's write lock, as a busy second process would."""
    path = make_url(database.url).database
    assert path is not None
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        yield
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()


async def test_flushes_on_the_interval_below_max_batch(
    store: MetricStore, sqlite_database: Database, writers: list[BatchWriter]
) -> None:
    writer = await start(writers, store, flush_interval_s=0.05, max_batch=10_000)
    future = await writer.submit(samples(3))
    assert await asyncio.wait_for(future, WAIT_S) == 3
    assert await stored(sqlite_database) == [0.0, 1.0, 2.0]
    assert writer.pending == 0
    assert writer.stats["flushes"] == 1


async def test_flushes_as_soon_as_max_batch_is_pending(
    store: MetricStore, sqlite_database: Database, writers: list[BatchWriter]
) -> None:
    # An hour-long interval: only the batch size can trigger these flushes.
    writer = await start(writers, store, flush_interval_s=3600, max_batch=100)
    full = await writer.submit(samples(100, "a"))
    assert await asyncio.wait_for(full, WAIT_S) == 100

    big = await writer.submit(samples(250, "b"))
    await eventually(lambda: writer.pending == 50)  # two chunks of 100 written, 50 wait
    assert not big.done()
    assert len(await stored(sqlite_database, "b")) == 200
    await writer.flush()
    assert big.result() == 250
    assert writer.stats["flushes"] == 4
    assert writer.stats["samples_written"] == 350


async def test_future_resolves_only_once_the_samples_are_committed(
    store: MetricStore, sqlite_database: Database, writers: list[BatchWriter]
) -> None:
    writer = await start(writers, store, flush_interval_s=3600)
    future = await writer.submit(samples(5))
    await asyncio.sleep(0)
    assert not future.done()
    assert await stored(sqlite_database) == []
    assert writer.pending == 5
    await writer.flush()
    assert future.done()
    assert future.result() == 5
    assert len(await stored(sqlite_database)) == 5


async def test_a_caller_giving_up_does_not_drop_its_samples(
    store: MetricStore, sqlite_database: Database, writers: list[BatchWriter]
) -> None:
    writer = await start(writers, store, flush_interval_s=3600)
    future = await writer.submit(samples(4))
    future.cancel()  # e.g. the awaiting request timed out
    await writer.flush()
    assert len(await stored(sqlite_database)) == 4
    assert writer.pending == 0


async def test_stop_writes_everything_accepted(
    store: MetricStore, sqlite_database: Database
) -> None:
    writer = BatchWriter(store, flush_interval_s=3600, max_batch=7)
    await writer.start()
    futures = [await writer.submit(samples(10, f"m{i}")) for i in range(5)]
    await writer.stop()
    assert [f.result() for f in futures] == [10] * 5
    for i in range(5):
        assert len(await stored(sqlite_database, f"m{i}")) == 10
    with pytest.raises(WriterStopped):
        await writer.submit(samples(1))


async def test_snapshot_travels_with_its_samples(
    store: MetricStore, sqlite_database: Database, writers: list[BatchWriter]
) -> None:
    instance = await make_instance(sqlite_database)
    writer = await start(writers, store, flush_interval_s=3600)
    when = datetime(2026, 1, 1, tzinfo=UTC)
    future = await writer.submit(samples(2), SnapshotWrite(instance, "p", when, {"ok": True}))
    only_snapshot = await writer.submit([], SnapshotWrite(instance, "p", when, {"ok": False}))
    await writer.flush()
    assert (future.result(), only_snapshot.result()) == (2, 0)
    assert await store.latest_snapshot(instance) == (when, {"ok": False})


async def test_submit_waits_while_the_buffer_is_full(
    store: MetricStore, sqlite_database: Database, writers: list[BatchWriter]
) -> None:
    writer = await start(writers, store, flush_interval_s=3600, max_batch=1000, max_pending=10)
    first = await writer.submit(samples(10, "a"))
    blocked = asyncio.create_task(writer.submit(samples(5, "b")))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not blocked.done()  # waiting for room, not growing the buffer
    assert writer.pending == 10
    await writer.flush()
    second = await asyncio.wait_for(blocked, WAIT_S)
    assert first.result() == 10
    assert writer.pending == 5
    await writer.flush()
    assert second.result() == 5


async def test_lag_is_the_age_of_the_oldest_pending_sample(
    store: MetricStore, writers: list[BatchWriter]
) -> None:
    clock = FakeClock()
    writer = await start(writers, store, flush_interval_s=3600, clock=clock)
    assert writer.lag_s == 0.0
    await writer.submit(samples(1, "a"))
    clock.advance(4)
    await writer.submit(samples(1, "b"))
    clock.advance(1)
    assert writer.lag_s == 5.0
    await writer.flush()
    assert writer.lag_s == 0.0


async def test_database_outage_keeps_the_data_and_recovers(
    store: MetricStore, sqlite_database: Database, writers: list[BatchWriter]
) -> None:
    log, capture = captured_logger()
    writer = await start(writers, store, flush_interval_s=0.01, retry_backoff_s=0.01, log=log)
    with write_lock(sqlite_database):
        future = await writer.submit(samples(20))
        await eventually(lambda: writer.stats["failures"] >= 3)
        assert writer.stats["failing"] is True
        assert not future.done()
        assert writer.pending == 20
    assert await asyncio.wait_for(future, WAIT_S) == 20
    assert await stored(sqlite_database) == [float(i) for i in range(20)]
    assert writer.stats["failing"] is False
    events = [e["event"] for e in capture.entries]
    assert events.count("metric writes failing; keeping samples and retrying") == 1
    assert events.count("metric writes recovered") == 1


async def test_stop_gives_up_only_after_its_timeout(
    store: MetricStore, sqlite_database: Database
) -> None:
    log, capture = captured_logger()
    writer = BatchWriter(store, flush_interval_s=0.01, retry_backoff_s=0.01, log=log)
    await writer.start()
    with write_lock(sqlite_database):
        future = await writer.submit(samples(3))
        await writer.stop(timeout_s=0.3)
    with pytest.raises(DatabaseError):
        future.result()
    assert any(e["event"] == "batch writer stopped with unwritten samples" for e in capture.entries)


async def test_an_unwritable_batch_fails_its_callers_but_not_later_data(
    store: MetricStore, sqlite_database: Database, writers: list[BatchWriter]
) -> None:
    log, _ = captured_logger()
    writer = await start(writers, store, flush_interval_s=3600, log=log)
    bad = await writer.submit([PendingSample(key("bad"), 2**70, 1.0)])  # beyond a 64-bit ts
    await writer.flush()
    with pytest.raises(OverflowError):
        bad.result()
    good = await writer.submit(samples(2))
    await writer.flush()
    assert good.result() == 2
    assert writer.stats["rejected"] == 1
    assert len(await stored(sqlite_database)) == 2


async def test_deleted_series_are_created_again(
    store: MetricStore, sqlite_database: Database, writers: list[BatchWriter]
) -> None:
    writer = await start(writers, store, flush_interval_s=3600)
    await writer.submit(samples(2))
    await writer.flush()
    (series,) = await store.find_series(name="cpu")
    await store.delete_series([series.id])
    await writer.submit(samples(3, start=T0 + 60_000))
    await writer.flush()
    assert await stored(sqlite_database) == [0.0, 1.0, 2.0]


async def test_options_are_validated(store: MetricStore) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        BatchWriter(store, max_batch=0)


@pytest.mark.external_service
async def test_postgres_restart_loses_nothing(
    postgres_server: PostgresServer, postgres_url: str, writers: list[BatchWriter]
) -> None:
    database = Database(postgres_url)
    await upgrade(database)
    pg_store = create_store(database)
    log, capture = captured_logger()
    writer = await start(writers, pg_store, flush_interval_s=0.01, retry_backoff_s=0.05, log=log)
    try:
        first = await writer.submit(samples(5, start=T0))
        assert await asyncio.wait_for(first, WAIT_S) == 5
        # The suite's server runs with synchronous_commit=off: make what exists durable
        # before killing it, so the restart loses only what the writer still holds.
        postgres_server.psql("CHECKPOINT")
        postgres_server.stop()
        try:
            second = await writer.submit(samples(5, start=T0 + 10_000))
            await eventually(lambda: writer.stats["failures"] >= 2)
            assert not second.done()
        finally:
            postgres_server.start()
        assert await asyncio.wait_for(second, WAIT_S) == 5
        assert len(await stored(database)) == 10
        events = [e["event"] for e in capture.entries]
        assert events.count("metric writes recovered") == 1
    finally:
        await writer.stop(timeout_s=5)
        await pg_store.close()
        await database.dispose()
