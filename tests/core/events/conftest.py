"""Event buses for the contract suite: every test runs on memory and on a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from unity.core.events import EventBus, MemoryEventBus
from unity.core.events.redis import RedisEventBus

NewBus = Callable[..., Awaitable[EventBus]]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.external_service)])
async def new_bus(request: pytest.FixtureRequest) -> AsyncIterator[NewBus]:
    """Builds started buses (``await new_bus(history_size=N)``); all closed afterwards.

    On Redis, every bus built in one test shares the same stream, like processes would.
    """
    url: str | None = request.getfixturevalue("redis_url") if request.param == "redis" else None
    buses: list[EventBus] = []

    async def make(history_size: int = 10_000) -> EventBus:
        bus: EventBus
        if url is None:
            bus = MemoryEventBus(history_size)
        else:
            bus = RedisEventBus(url, history_size=history_size, backoff_max_s=0.5)
        await bus.start()
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()


@pytest.fixture
async def bus(new_bus: NewBus) -> EventBus:
    """A started bus with the default history."""
    return await new_bus()
