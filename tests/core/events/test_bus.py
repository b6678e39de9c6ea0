"""The event bus contract, run over the memory bus and the Redis Streams bus."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from tests.core.events.conftest import NewBus
from tests.core.events.support import (
    note,
    publish_notes,
    receive,
    receive_through,
    seqs,
)
from unity.config import Settings
from unity.core.events import (
    Event,
    EventBus,
    Lag,
    MemoryEventBus,
    Resync,
    SubscriptionClosed,
    create_event_bus,
)
from unity.core.events.redis import RedisEventBus


async def test_subscribers_get_every_event_in_order_with_consecutive_seqs(bus: EventBus) -> None:
    first = bus.subscribe()
    second = bus.subscribe()
    published = await publish_notes(bus, 50)
    await bus.publish("run.progress", {"run_id": "r1"}, tenant_id="acme")

    for subscription in (first, second):
        items = await receive(subscription, 51)
        assert seqs(items) == list(range(1, 52))
        events = [i for i in items if isinstance(i, Event)]
        assert [e.data for e in events[:50]] == [note(i) for i in range(50)]
        assert events[50].type == "run.progress"
        assert events[50].tenant_id == "acme"
        assert events[0].tenant_id is None
        assert events[0].timestamp.tzinfo is not None
    assert [e.seq for e in published] == list(range(1, 51))
    assert bus.last_seq == 51
    assert bus.stats["published"] == 51
    assert bus.stats["subscribers"] == 2


async def test_events_carry_what_was_published(bus: EventBus) -> None:
    subscription = bus.subscribe()
    before = datetime.now(UTC)
    data = {
        "plugin_id": "system_info",
        "metrics": {"cpu": 12.5, "disk": [{"labels": {"m": "/"}, "value": 1.0}]},
    }
    published = await bus.publish("metrics.updated", data, tenant_id="default")
    data["plugin_id"] = "changed after publishing"

    (received,) = await receive(subscription, 1)
    assert received == published
    assert isinstance(received, Event)
    assert received.data["plugin_id"] == "system_info"
    assert received.timestamp >= before
    as_dict = received.to_dict()
    assert json.loads(json.dumps(as_dict)) == {
        "seq": published.seq,
        "type": "metrics.updated",
        "data": {
            "plugin_id": "system_info",
            "metrics": {"cpu": 12.5, "disk": [{"labels": {"m": "/"}, "value": 1.0}]},
        },
        "tenant_id": "default",
        "timestamp": received.timestamp.isoformat(),
    }


async def test_concurrent_publishers_get_one_strict_order(bus: EventBus) -> None:
    subscription = bus.subscribe()
    published = await asyncio.gather(*(bus.publish("webhook.test", note(i)) for i in range(100)))
    assert sorted(e.seq for e in published) == list(range(1, 101))
    received = await receive_through(subscription, 100)
    assert seqs(received) == list(range(1, 101))
    by_seq = {e.seq: e.data for e in published}
    assert all(isinstance(e, Event) and e.data == by_seq[e.seq] for e in received)


async def test_since_replays_history_then_live_without_gap_or_duplicate(bus: EventBus) -> None:
    # More than one replay page is retained, and publishing goes on while the
    # subscriber replays, so replay and live overlap.
    await publish_notes(bus, 600)

    underway = asyncio.Event()

    async def keep_publishing() -> None:
        for i in range(200):
            await bus.publish("webhook.test", note(600 + i))
            if i == 20:
                underway.set()
            await asyncio.sleep(0)

    publisher = asyncio.create_task(keep_publishing())
    async with asyncio.timeout(15):
        await underway.wait()
    subscription = bus.subscribe(since=10)
    received = await receive_through(subscription, 800, yield_each=True)
    await publisher

    assert seqs(received) == list(range(11, 801))
    # and it stays live afterwards
    (later,) = await publish_notes(bus, 1, first=800)
    assert seqs(await receive(subscription, 1)) == [later.seq]


async def test_since_at_the_newest_event_delivers_only_new_ones(bus: EventBus) -> None:
    await publish_notes(bus, 5)
    subscription = bus.subscribe(since=5)
    await publish_notes(bus, 2, first=5)
    assert seqs(await receive(subscription, 2)) == [6, 7]


async def test_since_ahead_of_history_asks_for_resync(bus: EventBus) -> None:
    # A client resuming with a position from an earlier history (e.g. before a restart).
    await publish_notes(bus, 3)
    subscription = bus.subscribe(since=500)
    assert await receive(subscription, 1) == [Resync(since=500, oldest=None)]
    await publish_notes(bus, 1, first=3)
    assert seqs(await receive(subscription, 1)) == [4]
    assert await bus.history(500) is None


async def test_trimmed_history_gives_resync_then_live(new_bus: NewBus) -> None:
    # Redis trims whole stream nodes (MAXLEN ~), so publish enough for a trim to happen.
    bus = await new_bus(history_size=10)
    await publish_notes(bus, 350)

    subscription = bus.subscribe(since=0)
    (resync,) = await receive(subscription, 1)
    assert isinstance(resync, Resync)
    assert resync.since == 0
    assert resync.oldest is not None
    assert 2 <= resync.oldest <= 341
    assert await bus.history(0) is None
    assert await bus.history(resync.oldest - 2) is None
    retained = await bus.history(resync.oldest - 1, limit=5)
    assert retained is not None
    assert [e.seq for e in retained] == list(range(resync.oldest, resync.oldest + 5))

    await publish_notes(bus, 1, first=350)
    assert seqs(await receive(subscription, 1)) == [351]


async def test_history_pages_through_retained_events(bus: EventBus) -> None:
    await publish_notes(bus, 20)
    page = await bus.history(5, limit=10)
    assert page is not None
    assert [e.seq for e in page] == list(range(6, 16))
    assert [e.data for e in page] == [note(i) for i in range(5, 15)]
    assert await bus.history(20) == []
    with pytest.raises(ValueError, match="since"):
        await bus.history(-1)


async def test_type_filters_select_names_and_categories(bus: EventBus) -> None:
    runs = bus.subscribe(types=["run.*"])
    mixed = bus.subscribe(types=["metrics.updated", "alert.*"])
    everything = bus.subscribe(types=["*"])
    published = [
        await bus.publish(name, {"n": i})
        for i, name in enumerate(
            [
                "run.created",
                "metrics.updated",
                "alert.triggered",
                "execution.completed",
                "run.plan_ready",
                "alert.resolved",
                "webhook.test",
                "run.completed",
            ]
        )
    ]
    last = published[-1].seq
    run_types = [e.type for e in await receive_through(runs, last) if isinstance(e, Event)]
    assert run_types == ["run.created", "run.plan_ready", "run.completed"]

    # A final event every filter accepts marks the end of what each one received.
    end = await bus.publish("metrics.updated", {"n": "end"})
    mixed_types = [e.type for e in await receive_through(mixed, end.seq) if isinstance(e, Event)]
    assert mixed_types == [
        "metrics.updated",
        "alert.triggered",
        "alert.resolved",
        "metrics.updated",
    ]
    assert len(await receive_through(everything, end.seq)) == 9

    replayed = bus.subscribe(since=0, types=["run.*"])
    replay_types = [e.type for e in await receive(replayed, 3) if isinstance(e, Event)]
    assert replay_types == ["run.created", "run.plan_ready", "run.completed"]


async def test_unknown_types_and_patterns_are_refused(bus: EventBus) -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        await bus.publish("metric.updated", {})
    with pytest.raises(ValueError, match="unknown event type or pattern"):
        bus.subscribe(types=["runs.*"])
    with pytest.raises(TypeError, match="not a str"):
        bus.subscribe(types="run.*")
    with pytest.raises(TypeError):
        await bus.publish("webhook.test", {"when": object()})
    with pytest.raises(ValueError, match="maxsize"):
        bus.subscribe(maxsize=0)
    assert bus.stats["published"] == 0


async def test_slow_subscriber_lags_while_others_and_the_publisher_go_on(bus: EventBus) -> None:
    slow = bus.subscribe(maxsize=5)
    fast = bus.subscribe()
    # All 100 publishes complete although the slow subscriber reads nothing meanwhile.
    await publish_notes(bus, 100)
    assert seqs(await receive_through(fast, 100)) == list(range(1, 101))

    items = await receive(slow, 6)
    assert seqs(items[:5]) == [1, 2, 3, 4, 5]
    assert items[5] == Lag(dropped=95)
    await publish_notes(bus, 2, first=100)
    assert seqs(await receive(slow, 2)) == [101, 102]
    assert bus.stats["dropped"] == 95


async def test_lag_marks_where_events_were_skipped(bus: EventBus) -> None:
    subscription = bus.subscribe(maxsize=2)
    witness = bus.subscribe()
    await publish_notes(bus, 5)
    await receive_through(witness, 5)
    assert seqs(await receive(subscription, 1)) == [1]

    await publish_notes(bus, 1, first=5)
    await receive_through(witness, 6)
    items = await receive(subscription, 3)
    assert seqs(items[:1]) == [2]
    assert items[1] == Lag(dropped=3)
    assert seqs(items[2:]) == [6]


async def test_closing_ends_iteration(bus: EventBus) -> None:
    subscription = bus.subscribe()
    seen: list[int] = []
    three_seen = asyncio.Event()

    async def consume() -> None:
        async for item in subscription:
            assert isinstance(item, Event)
            seen.append(item.seq)
            if len(seen) == 3:
                three_seen.set()

    consumer = asyncio.create_task(consume())
    await publish_notes(bus, 3)
    async with asyncio.timeout(15):
        await three_seen.wait()
    subscription.close()
    async with asyncio.timeout(15):
        await consumer
    assert seen == [1, 2, 3]
    assert bus.stats["subscribers"] == 0
    with pytest.raises(SubscriptionClosed):
        await subscription.get()


async def test_closing_the_bus_ends_every_subscription(bus: EventBus) -> None:
    live = bus.subscribe()
    replaying = bus.subscribe(since=0)
    waiting = asyncio.create_task(live.get())
    await asyncio.sleep(0)

    await bus.close()
    with pytest.raises(SubscriptionClosed):
        async with asyncio.timeout(15):
            await waiting
    assert [item async for item in replaying] == []
    with pytest.raises(RuntimeError, match="closed"):
        await bus.publish("webhook.test", note(0))
    with pytest.raises(RuntimeError, match="closed"):
        bus.subscribe()


async def test_subscription_as_context_manager(bus: EventBus) -> None:
    with bus.subscribe() as subscription:
        assert bus.stats["subscribers"] == 1
    assert subscription.closed
    assert bus.stats["subscribers"] == 0


async def test_create_event_bus_picks_the_backend_from_settings() -> None:
    memory_bus = create_event_bus(Settings())
    assert isinstance(memory_bus, MemoryEventBus)
    # Building connects nothing, so an unreachable URL is fine here.
    redis_bus = create_event_bus(Settings(redis_url="redis://127.0.0.1:1/0"))
    assert isinstance(redis_bus, RedisEventBus)
    await memory_bus.close()
    await redis_bus.close()
