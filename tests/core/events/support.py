"""Helpers for the event bus tests: publishing batches and reading with a hang guard."""

from __future__ import annotations

import asyncio

from unity.core.events import Event, EventBus, Item, Subscription

# Only a guard against a hung test: nothing asserts how fast events arrive.
DEADLINE_S = 15.0


def note(i: int) -> dict[str, str]:
    """A ``webhook.test`` payload numbered ``i``."""
    return {"webhook_id": "hook-1", "message": f"note {i}"}


async def publish_notes(bus: EventBus, count: int, *, first: int = 0) -> list[Event]:
    """Publish ``count`` ``webhook.test`` events one after another."""
    return [await bus.publish("webhook.test", note(first + i)) for i in range(count)]


async def receive(subscription: Subscription, count: int) -> list[Item]:
    """The next ``count`` items."""
    async with asyncio.timeout(DEADLINE_S):
        return [await subscription.get() for _ in range(count)]


async def receive_through(
    subscription: Subscription, seq: int, *, yield_each: bool = False
) -> list[Item]:
    """Items up to and including the event ``seq``.

    ``yield_each`` hands control to other tasks after every item, so that concurrent
    publishers interleave with a replay that would otherwise never suspend (memory bus).
    """
    items: list[Item] = []
    async with asyncio.timeout(DEADLINE_S):
        while True:
            item = await subscription.get()
            items.append(item)
            if isinstance(item, Event) and item.seq >= seq:
                return items
            if yield_each:
                await asyncio.sleep(0)


def seqs(items: list[Item]) -> list[int]:
    """The seqs of the events among ``items`` (fails on anything that is not an Event)."""
    assert all(isinstance(i, Event) for i in items), [i for i in items if not isinstance(i, Event)]
    return [i.seq for i in items if isinstance(i, Event)]
