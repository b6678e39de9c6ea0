"""In-process event bus for the embedded (single-process) mode.

``seq`` comes from a counter, history is a ring of the last ``history_size`` events, and
``publish`` fans out to the subscriptions before it returns. It never awaits, so
concurrent publishers are serialized by the event loop itself and the ring, the counter
and every subscriber queue always agree. History lives as long as the process. So that a
restart never reuses numbers a client has seen, Unity starts the counter at the wall
clock in microseconds (``start_seq``): a restarted process numbers above anything its
predecessor published (unless that one averaged over a million events a second), and a
client resuming with an older position gets a ``Resync`` rather than wrong events.
"""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Any

import orjson

from unity.core.clock import Clock
from unity.core.events.abc import Event, EventBus, HistoryPage, Resync


class MemoryEventBus(EventBus):
    """Events in a bounded in-memory ring, delivered within this process."""

    def __init__(
        self, history_size: int = 10_000, *, clock: Clock | None = None, start_seq: int = 0
    ) -> None:
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        if start_seq < 0:
            raise ValueError("start_seq must not be negative")
        super().__init__(clock=clock)
        self._seq = start_seq
        self._history: deque[Event] = deque(maxlen=history_size)

    async def start(self) -> None:
        """Nothing to start: delivery happens inside ``publish``."""
        if self._closed:
            raise RuntimeError("the event bus is closed")

    async def publish(
        self, type: str, data: dict[str, Any], *, tenant_id: str | None = None
    ) -> Event:
        """Publish and deliver at once; see ``EventBus.publish``. Never unavailable."""
        # The encode/decode round trip gives subscribers the same JSON values a Redis
        # bus would (UUIDs and datetimes as strings) and detaches them from the caller's dict.
        payload = orjson.loads(self._encode(type, data))
        self._seq += 1
        event = Event(self._seq, type, payload, tenant_id, self._clock.now())
        self._history.append(event)
        self._published += 1
        self._fan_out(event)
        return event

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the newest event (``start_seq`` before the first)."""
        return self._seq

    async def _release(self) -> None:
        """Keep the history: nothing else holds resources."""

    async def _replay_page(self, after: int, limit: int) -> HistoryPage:
        if after > self._seq:
            return HistoryPage(Resync(since=after, oldest=None), self._seq)
        oldest = self._history[0].seq if self._history else self._seq + 1
        if after + 1 < oldest:
            return HistoryPage(Resync(since=after, oldest=oldest), self._seq)
        # The ring holds consecutive seqs, so the position of after + 1 is arithmetic.
        start = after + 1 - oldest
        return HistoryPage(list(islice(self._history, start, start + limit)), self._seq)
