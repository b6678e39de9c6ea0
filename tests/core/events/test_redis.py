"""What only the Redis bus does: several processes on one stream, outages, gaps in the stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from tests.core.events.support import (
    DEADLINE_S,
    note,
    publish_notes,
    receive,
    receive_through,
    seqs,
)
from tests.services import RedisServer
from unity.core.events import UNPUBLISHED, Event, EventBusUnavailable, Resync
from unity.core.events.redis import Entry, RedisEventBus

pytestmark = pytest.mark.external_service

NewRedisBus = Callable[..., Awaitable[RedisEventBus]]


@pytest.fixture
async def make_bus(redis_url: str) -> AsyncIterator[NewRedisBus]:
    """Builds started Redis buses on the test's Redis, each standing for one Unity process."""
    buses: list[RedisEventBus] = []

    async def make(
        url: str | None = None, bus_class: type[RedisEventBus] = RedisEventBus
    ) -> RedisEventBus:
        bus = bus_class(url or redis_url, backoff_max_s=0.5)
        await bus.start()
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client, to write into the stream what another process (or damage) would."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def stream_fields(data: dict[str, Any]) -> dict[Any, Any]:
    """An entry in the stream format documented in ``unity.core.events.redis``."""
    return {"type": "webhook.test", "data": orjson.dumps(data), "ts": datetime.now(UTC).isoformat()}


async def publish_until_accepted(bus: RedisEventBus, data: dict[str, Any]) -> Event:
    """Publish ``data`` again and again until the bus accepts it (Redis is back)."""
    async with asyncio.timeout(DEADLINE_S):
        while True:
            event = await bus.publish("webhook.test", data)
            if event.seq != UNPUBLISHED:
                return event
            await asyncio.sleep(0.05)


async def test_an_event_published_by_one_process_reaches_the_others(make_bus: NewRedisBus) -> None:
    a = await make_bus()
    b = await make_bus()
    on_a = a.subscribe()
    on_b = b.subscribe()

    published = await a.publish("metrics.updated", {"plugin_id": "system_info"}, tenant_id="t1")
    (seen_by_b,) = await receive(on_b, 1)
    (seen_by_a,) = await receive(on_a, 1)
    assert seen_by_b == published
    assert seen_by_a == published
    assert b.last_seq == published.seq


async def test_concurrent_publishers_in_two_processes_share_one_order(
    make_bus: NewRedisBus,
) -> None:
    a = await make_bus()
    b = await make_bus()
    on_a = a.subscribe()
    on_b = b.subscribe()

    published = await asyncio.gather(
        *(
            (a if i % 2 else b).publish("webhook.test", note(i), tenant_id=f"t{i % 2}")
            for i in range(200)
        )
    )
    assert sorted(e.seq for e in published) == list(range(1, 201))
    seen_by_a = await receive_through(on_a, 200)
    seen_by_b = await receive_through(on_b, 200)
    assert seqs(seen_by_a) == list(range(1, 201))
    assert seen_by_a == seen_by_b
    assert seen_by_a == sorted(published, key=lambda e: e.seq)


async def test_reader_reconnects_after_a_redis_restart(
    make_bus: NewRedisBus, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="unity.core.events.redis")
    bus = await make_bus()
    subscription = bus.subscribe()
    before = await bus.publish("webhook.test", note(0))
    assert seqs(await receive(subscription, 1)) == [before.seq]

    await asyncio.to_thread(redis_server.stop)
    # Publishing during the outage neither raises nor waits: the event is dropped and counted.
    for i in range(3):
        dropped = await bus.publish("webhook.test", note(100 + i))
        assert dropped.seq == UNPUBLISHED
        assert dropped.data == note(100 + i)
    assert bus.stats["errors"] >= 1
    with pytest.raises(EventBusUnavailable):
        await bus.history(0)
    resuming = bus.subscribe(since=0)
    assert await receive(resuming, 1) == [Resync(since=0, oldest=None)]

    await asyncio.to_thread(redis_server.start)
    after = await publish_until_accepted(bus, note(1))
    # The restarted Redis lost the stream, but seq goes on from where this process was.
    assert after.seq > before.seq
    assert await receive_through(subscription, after.seq) == [after]
    later = await bus.publish("webhook.test", note(2))
    assert await receive(subscription, 1) == [later]
    assert await receive(resuming, 2) == [after, later]

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    recoveries = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "unavailable" in warnings[0].getMessage()
    assert len(recoveries) == 1


async def test_a_gap_in_the_stream_reaches_subscribers_as_resync(
    make_bus: NewRedisBus, raw_redis: Redis
) -> None:
    bus = await make_bus()
    subscription = bus.subscribe()
    await publish_notes(bus, 3)
    assert seqs(await receive(subscription, 3)) == [1, 2, 3]

    # As if other processes had published 4..10 and Redis had trimmed 4..9 before this
    # process's reader got to them (it was disconnected, or far behind).
    await raw_redis.xadd("unity:events", stream_fields(note(10)), id="10-0")
    resync, event = await receive(subscription, 2)
    assert resync == Resync(since=3, oldest=10)
    assert isinstance(event, Event)
    assert (event.seq, event.data) == (10, note(10))
    assert await bus.history(3) is None
    assert await bus.history(9) == [event]
    assert (await bus.publish("webhook.test", note(11))).seq == 11


async def test_a_malformed_entry_is_skipped(make_bus: NewRedisBus, raw_redis: Redis) -> None:
    bus = await make_bus()
    subscription = bus.subscribe()
    await publish_notes(bus, 3)
    await raw_redis.xadd("unity:events", {"junk": "1"}, id="4-0")
    (fifth,) = await publish_notes(bus, 1, first=4)

    assert seqs(await receive(subscription, 4)) == [1, 2, 3, 5]
    assert fifth.seq == 5
    history = await bus.history(0)
    assert history is not None
    assert [e.seq for e in history] == [1, 2, 3, 5]
    assert bus.stats["errors"] >= 1


class HeldBackBus(RedisEventBus):
    """A bus whose reader can be held back, as if its process were busy elsewhere."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held: list[Entry] | None = None
        self.holding = 0
        self.held_all = asyncio.Event()

    def hold(self, count: int) -> None:
        self.held, self.holding = [], count
        self.held_all.clear()

    def release(self) -> None:
        held, self.held = self.held or [], None
        super()._dispatch(held)

    def _dispatch(self, entries: Iterable[Entry]) -> None:
        if self.held is None:
            super()._dispatch(entries)
            return
        self.held.extend(entries)
        if len(self.held) >= self.holding:
            self.held_all.set()


async def test_replay_ahead_of_a_lagging_reader_delivers_each_event_once(
    make_bus: NewRedisBus,
) -> None:
    bus = await make_bus(bus_class=HeldBackBus)
    assert isinstance(bus, HeldBackBus)
    witness = bus.subscribe()
    await publish_notes(bus, 5)
    await receive_through(witness, 5)

    bus.hold(10)
    await publish_notes(bus, 10, first=5)
    async with asyncio.timeout(DEADLINE_S):
        await bus.held_all.wait()
    assert bus.last_seq == 5

    # History in Redis already holds 6..15, which this process has not delivered live yet.
    subscription = bus.subscribe(since=2)
    assert seqs(await receive(subscription, 13)) == list(range(3, 16))
    bus.release()
    await publish_notes(bus, 1, first=15)
    assert seqs(await receive(subscription, 1)) == [16]
    assert seqs(await receive_through(witness, 16)) == list(range(6, 17))


async def test_both_redis_protocols(make_bus: NewRedisBus, redis_url: str) -> None:
    for protocol in (2, 3):
        bus = await make_bus(f"{redis_url}?protocol={protocol}")
        subscription = bus.subscribe()
        published = await bus.publish("webhook.test", note(protocol))
        assert await receive(subscription, 1) == [published]
        assert await bus.history(published.seq - 1) == [published]
