"""With Redis, the dispatcher resumes from its saved bus position after a restart.

Unity (its real components, on Redis) stops; another process's bus publishes while it is
down; Unity starts again on the same database and Redis. Every event published meanwhile
reaches the webhook once, in order. When the stream was trimmed past the saved position,
the listener gets a ``Resync``: the events published while Unity was down are not
delivered (docs/webhooks.md: "as long as the stream still holds them"), and delivery goes
on with the events published after the restart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
from redis.asyncio import Redis

from tests.collection.plugins import make_registry
from tests.webhooks.conftest import Receiver, key_event, wait_until
from unity.components import Components, build_components, close_components
from unity.config import Settings
from unity.core.events.redis import RedisEventBus
from unity.webhooks.schemas import WebhookCreate

pytestmark = pytest.mark.external_service


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str) -> Settings:
    """Unity on the test's Redis, with its database kept across restarts."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "redis_url": redis_url,
        "autoenable_plugins": [],
        "stale_check_interval_s": 3600,
        "webhook_retry_schedule_s": [0] + [0.05] * 20,
        "webhook_poll_interval_s": 0.05,
    }
    if request.param == "postgres":
        values["database_url"] = request.getfixturevalue("postgres_url")
    return Settings(**values)


@asynccontextmanager
async def unity(settings: Settings) -> AsyncIterator[Components]:
    """Unity's components started as ``unity serve`` starts them; stopped on the way out."""
    components = await build_components(settings, registry=make_registry(), with_scheduler=False)
    try:
        yield components
    finally:
        await close_components(components)


@asynccontextmanager
async def other_process(settings: Settings, **options: Any) -> AsyncIterator[RedisEventBus]:
    """The event bus of another Unity process sharing the Redis stream."""
    assert settings.redis_url is not None
    bus = RedisEventBus(settings.redis_url, backoff_max_s=0.5, **options)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


async def publish(bus: RedisEventBus, names: list[str]) -> list[int]:
    seqs = []
    for name in names:
        event = await bus.publish("api_key.created", key_event(name), tenant_id="default")
        assert event.seq > 0
        seqs.append(event.seq)
    return seqs


def names_received(receiver: Receiver) -> list[str]:
    return [b["data"]["name"] for b in receiver.bodies()]


def assert_each_message_once(receiver: Receiver) -> None:
    ids = Counter(r.headers["webhook-id"] for r in receiver.received())
    assert [i for i, n in ids.items() if n > 1] == []


async def start_with_webhook(settings: Settings, receiver: Receiver) -> list[str]:
    """First run: create the webhook, deliver a few events, stop cleanly; their names."""
    before = ["before-0", "before-1", "before-2"]
    async with unity(settings) as components:
        # The start published the admin key's api_key.created: let the listener pass it
        # before the webhook exists, so that only this test's events reach the receiver.
        started = await components.bus.history(0)
        assert started

        async def listener_passed_start() -> bool:
            return (await components.webhooks.load_cursor() or 0) >= started[-1].seq

        await wait_until(listener_passed_start, "the listener to pass the start's events")
        await components.webhooks.create(
            "default", WebhookCreate(name="rx", url=receiver.url(), events=["api_key.*"])
        )
        seqs = await publish_from(components, before)
        await wait_until(lambda: len(receiver.received()) >= 3, "the first deliveries")
        assert names_received(receiver) == before

        async def cursor_saved() -> bool:
            return await components.webhooks.load_cursor() == seqs[-1]

        await wait_until(cursor_saved, "the listener to save its position")
    return before


async def publish_from(components: Components, names: list[str]) -> list[int]:
    seqs = []
    for name in names:
        event = await components.bus.publish(
            "api_key.created", key_event(name), tenant_id="default"
        )
        seqs.append(event.seq)
    return seqs


async def test_events_published_while_unity_was_down_are_delivered_once_in_order(
    settings: Settings, receiver: Receiver
) -> None:
    before = await start_with_webhook(settings, receiver)

    while_down = [f"down-{i}" for i in range(25)]
    async with other_process(settings) as bus:
        down_seqs = await publish(bus, while_down)

    async with unity(settings) as components:
        await wait_until(
            lambda: len(receiver.received()) >= len(before) + len(while_down),
            "the events published while Unity was down",
            within=20,
        )
        after = await publish_from(components, ["after-0"])
        await wait_until(lambda: "after-0" in names_received(receiver), "a live event")

        async def cursor_saved() -> bool:
            return await components.webhooks.load_cursor() == after[-1]

        await wait_until(cursor_saved, "the listener to save its position")

    assert names_received(receiver) == [*before, *while_down, "after-0"]
    assert_each_message_once(receiver)
    assert down_seqs == list(range(down_seqs[0], down_seqs[0] + len(while_down)))


async def test_a_stream_trimmed_past_the_saved_position_resyncs(
    settings: Settings, receiver: Receiver
) -> None:
    before = await start_with_webhook(settings, receiver)

    # MAXLEN ~ trims whole stream nodes (100 entries each by default): publish well past one.
    while_down = [f"down-{i}" for i in range(300)]
    async with other_process(settings, history_size=10) as bus:
        down_seqs = await publish(bus, while_down)
    assert settings.redis_url is not None
    async with Redis.from_url(settings.redis_url) as redis:
        oldest = await redis.xrange("unity:events", count=1)
    assert oldest
    entry_id = oldest[0][0]
    assert isinstance(entry_id, bytes)
    oldest_seq = int(entry_id.decode().partition("-")[0])
    assert oldest_seq > down_seqs[0], "the stream must have lost the first events published"

    with structlog.testing.capture_logs() as logs:
        async with unity(settings) as components:

            def resynced() -> bool:
                return any("not in the bus history" in entry["event"] for entry in logs)

            # Events published before the listener decides on the Resync are skipped with
            # the rest; the ones after it are delivered.
            await wait_until(resynced, "the listener to report the gap")
            after = await publish_from(components, ["after-0", "after-1"])
            await wait_until(
                lambda: "after-1" in names_received(receiver), "the events published after restart"
            )

            async def cursor_saved() -> bool:
                return await components.webhooks.load_cursor() == after[-1]

            await wait_until(cursor_saved, "the listener to save its position")

    gap = [entry for entry in logs if "not in the bus history" in entry["event"]]
    assert [(e["log_level"], e["since"], e["oldest"]) for e in gap] == [
        ("warning", down_seqs[0] - 1, oldest_seq)
    ]
    # The listener rebuilt from "now": nothing between the saved position and the restart,
    # not even the events the stream still held, and every event after it, once, in order.
    assert names_received(receiver) == [*before, "after-0", "after-1"]
    assert_each_message_once(receiver)
