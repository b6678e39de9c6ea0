"""The event bus contract: events, subscriptions and what every backend does the same way.

Producers (the scheduler, the alert evaluator, the run executor) call
``EventBus.publish``; consumers (the WebSocket hub, the webhook dispatcher, the alert
evaluator) each hold a ``Subscription``. Every event gets a ``seq``: an integer that
grows by one per event across every process sharing the bus, so a consumer can say
where it stopped (``subscribe(since=seq)``) and get exactly what it missed.

Delivery guarantees, the same for every backend:

* A subscriber sees events in ``seq`` order, each at most once.
* ``subscribe(since=S)`` first replays the retained events with ``seq > S``, then goes on
  with live ones, with no gap and no duplicate between the two. When the history no
  longer holds every event after ``S`` (trimmed, lost, or ``S`` is from another history),
  the subscriber gets a ``Resync`` instead and continues with the events published
  after the bus decided on it (the subscriber rebuilds its state as of then).
* Each subscription has a bounded queue. When it is full, new events are dropped for
  that subscriber only and counted; it then receives ``Lag(dropped=N)`` where the gap is,
  and the stream continues. Publishers and other subscribers never wait for a slow one.
* A gap the backend detects in the live stream (e.g. Redis trimmed past a reader that
  was disconnected) reaches every live subscriber as a ``Resync``.

Failures: ``publish`` never raises because the bus is unavailable. Producers publish
*after* storing their state, and a notification outage must neither fail nor slow them;
the event is dropped, counted in ``stats["errors"]``, logged once per outage, and
returned with ``seq == UNPUBLISHED`` (-1) for callers that want to know. ``history``
raises ``EventBusUnavailable`` (503) when it cannot reach the backend; a subscription
that cannot replay for that reason receives a ``Resync``.

``Event.data`` is shared by every local subscriber of an event: treat it as read-only.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, TypeAlias

import orjson

from unity.core.clock import Clock, SystemClock
from unity.core.events.catalog import CATALOG, check_pattern
from unity.errors import UnityError

UNPUBLISHED = -1
"""The ``seq`` of an event that ``publish`` could not hand to the bus."""


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened, as delivered to subscribers."""

    seq: int
    """Position in the bus; grows by one per event across every process sharing it."""
    type: str
    """Dotted name from the catalog, e.g. ``metrics.updated``."""
    data: dict[str, Any]
    """The payload (JSON-able; its shape is the catalog's payload model)."""
    tenant_id: str | None
    timestamp: datetime
    """When it was published (UTC)."""

    def to_dict(self) -> dict[str, Any]:
        """``{"seq", "type", "data", "tenant_id", "timestamp"}`` with an ISO 8601 timestamp."""
        return {
            "seq": self.seq,
            "type": self.type,
            "data": self.data,
            "tenant_id": self.tenant_id,
            "timestamp": self.timestamp.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Resync:
    """The events after ``since`` cannot all be delivered: rebuild state, then carry on."""

    since: int
    """The last position the subscriber is known to have."""
    oldest: int | None
    """Where the available events resume: the first ``seq`` after ``since`` still held, when known."""


@dataclass(frozen=True, slots=True)
class Lag:
    """This subscriber's queue overflowed and ``dropped`` events were skipped here."""

    dropped: int


Item: TypeAlias = Event | Resync | Lag
"""What a subscription yields."""


class EventBusUnavailable(UnityError):
    """The bus backend (Redis) cannot be reached; raised by ``history``."""

    status_code = 503
    title = "Event bus unavailable"


class SubscriptionClosed(UnityError):
    """``Subscription.get`` was called on, or was waiting in, a closed subscription."""

    title = "Subscription closed"


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One read of a backend's history (the contract between ``EventBus`` and its backends)."""

    events: list[Event] | Resync
    """Consecutive events, or a ``Resync`` when they cannot start right after the position."""
    newest: int
    """The newest ``seq`` the history held at the time of the read (0: none)."""


_REPLAY_PAGE = 500


class Subscription:
    """One consumer's view of the bus: replayed history, then live events, in ``seq`` order.

    Iterate it (``async for item in subscription``) or call ``get``; one task at a time.
    Items are ``Event``, ``Resync`` or ``Lag``. Iteration ends when the subscription or
    its bus is closed. Use it as a context manager to close it on the way out.
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        since: int | None,
        maxsize: int,
        accepts: Callable[[str], bool],
    ) -> None:
        self._bus = bus
        self._maxsize = maxsize
        self._accepts = accepts
        self._closed = False
        # Live items in order; Lag and Resync markers ride between events and do not
        # count against maxsize, so a full queue can still say where its gap is.
        self._items: deque[Item] = deque()
        self._queued = 0
        self._dropped = 0
        self._waiter: asyncio.Future[None] | None = None
        self._getting = False
        # Replay: history is read page by page as the consumer asks, from _cursor on,
        # until it reaches what the bus has delivered live; only then does this
        # subscription join the fan-out.
        self._replaying = since is not None
        self._cursor = since or 0
        self._replayed: deque[Event] = deque()
        self._skip_through = 0

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called (by the consumer or by the bus)."""
        return self._closed

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Item:
        try:
            return await self.get()
        except SubscriptionClosed:
            raise StopAsyncIteration from None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def get(self) -> Item:
        """The next item, waiting for one if needed; raises ``SubscriptionClosed`` once closed.

        Raises ``RuntimeError`` when another task is already inside ``get``.
        """
        if self._getting:
            raise RuntimeError("another task is already reading this subscription")
        self._getting = True
        try:
            return await self._next()
        finally:
            self._getting = False

    async def _next(self) -> Item:
        while True:
            if self._closed:
                raise SubscriptionClosed("the subscription is closed")
            if self._replayed:
                event = self._replayed.popleft()
                self._bus._delivered += 1
                return event
            if self._replaying:
                resync = await self._replay_page()
                if resync is not None:
                    return resync
                continue
            if self._items:
                item = self._items.popleft()
                if isinstance(item, Event):
                    self._queued -= 1
                    if item.seq <= self._skip_through:
                        continue  # already replayed from history
                return item
            if self._dropped:
                lag = Lag(self._dropped)
                self._dropped = 0
                return lag
            await self._wait()

    def close(self) -> None:
        """Stop receiving; a pending or later ``get`` raises ``SubscriptionClosed``."""
        if self._closed:
            return
        self._closed = True
        self._items.clear()
        self._replayed.clear()
        self._bus._detach(self)
        self._wake()

    async def _replay_page(self) -> Resync | None:
        """Fetch the next page of history; go live once it reaches the live position."""
        try:
            page = await self._bus._replay_page(self._cursor, _REPLAY_PAGE)
        except EventBusUnavailable:
            page = HistoryPage(Resync(since=self._cursor, oldest=None), newest=0)
        if self._closed:
            return None
        events = page.events
        if isinstance(events, Resync):
            return self._resync(events, page.newest)
        if events:
            self._cursor = events[-1].seq
            self._replayed.extend(e for e in events if self._accepts(e.type))
        # No await between this comparison and joining the fan-out: every event after
        # _cursor that was not in history will come live, and any at or below it that
        # the live stream still brings (a Redis reader behind XRANGE) is skipped.
        if self._cursor >= self._bus.last_seq:
            self._go_live(skip_through=self._cursor)
        elif not events:
            # History ends below what was delivered live (the backend lost events):
            # no gapless bridge exists.
            return self._resync(Resync(since=self._cursor, oldest=None), page.newest)
        return None

    def _resync(self, resync: Resync, newest: int) -> Resync:
        # After a Resync the subscriber rebuilds its state as of now, so events that
        # were already in the history, but not yet delivered live, are not sent after it.
        self._go_live(skip_through=max(newest, self._bus.last_seq))
        return resync

    def _go_live(self, *, skip_through: int) -> None:
        self._replaying = False
        self._skip_through = skip_through
        self._bus._attach(self)

    def _offer(self, event: Event) -> bool | None:
        """Queue a live event: ``True`` if queued, ``False`` if dropped, ``None`` if filtered out."""
        if not self._accepts(event.type):
            return None
        if self._queued >= self._maxsize:
            self._dropped += 1
            return False
        if self._dropped:
            self._items.append(Lag(self._dropped))
            self._dropped = 0
        self._items.append(event)
        self._queued += 1
        self._wake()
        return True

    def _signal(self, marker: Resync) -> None:
        """Queue a ``Resync``; it subsumes a pending ``Lag`` (both say: events are missing)."""
        self._dropped = 0
        self._items.append(marker)
        self._wake()

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class EventBus(ABC):
    """Publishes catalog events and fans them out to subscriptions; see the module docstring.

    Backends assign ``seq`` and store history (``publish``, ``_replay_page``,
    ``last_seq``); this class holds the subscriptions, their fan-out and the counters.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._subscriptions: set[Subscription] = set()
        self._live: set[Subscription] = set()
        self._closed = False
        self._published = 0
        self._delivered = 0
        self._dropped = 0
        self._errors = 0

    @abstractmethod
    async def start(self) -> None:
        """Begin delivering events to subscribers; never raises because Redis is down."""

    async def close(self) -> None:
        """End every subscription and release connections; the bus must not be used afterwards."""
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            subscription.close()
        await self._release()

    @abstractmethod
    async def publish(
        self, type: str, data: dict[str, Any], *, tenant_id: str | None = None
    ) -> Event:
        """Publish an event and return it with its ``seq``.

        Raises ``ValueError`` for a type not in the catalog, ``TypeError`` when ``data`` is
        not a JSON-able dict, ``RuntimeError`` after ``close``. Never raises because the
        backend is unavailable: the event is then dropped, counted in
        ``stats["errors"]`` and returned with ``seq == UNPUBLISHED``. The payload is not
        validated against the catalog's model (tests do that for every producer).
        """

    def subscribe(
        self,
        *,
        since: int | None = None,
        maxsize: int = 1000,
        types: Collection[str] | None = None,
    ) -> Subscription:
        """A new subscription.

        ``since``: first the retained events with ``seq > since`` (or a ``Resync`` when
        they are not all retained), then live ones; without it, only events published
        from now on. ``maxsize``: how many undelivered events the subscription holds
        before it drops and reports ``Lag``. ``types``: only events matching one of these
        patterns (``"*"``, ``"run.*"``, ``"metrics.updated"``); ``ValueError`` for a
        pattern that matches nothing in the catalog.
        """
        if self._closed:
            raise RuntimeError("the event bus is closed")
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        if since is not None and since < 0:
            raise ValueError("since must be a seq (0 or more)")
        subscription = Subscription(self, since=since, maxsize=maxsize, accepts=_type_filter(types))
        self._subscriptions.add(subscription)
        if since is None:
            self._live.add(subscription)
        return subscription

    async def history(self, since: int, limit: int = 1000) -> list[Event] | None:
        """Up to ``limit`` retained events with ``seq > since``, oldest first.

        ``None`` when the history no longer holds every event after ``since`` (trimmed,
        lost, or ``since`` is ahead of it, e.g. from before a restart of the memory bus).
        Raises ``EventBusUnavailable`` when the backend cannot be reached.
        """
        if since < 0:
            raise ValueError("since must be a seq (0 or more)")
        if limit < 1:
            raise ValueError("limit must be at least 1")
        page = await self._replay_page(since, limit)
        return None if isinstance(page.events, Resync) else page.events

    @property
    @abstractmethod
    def last_seq(self) -> int:
        """The ``seq`` of the newest event delivered to this process's subscribers (0: none)."""

    @property
    def stats(self) -> dict[str, int]:
        """Counters since the bus was built.

        ``published`` events accepted by the backend from this process; ``delivered``
        events handed to local subscribers (one per subscriber); ``dropped`` events lost
        to full subscriber queues; ``subscribers`` open subscriptions; ``errors`` backend
        failures (including events that could not be published).
        """
        return {
            "published": self._published,
            "delivered": self._delivered,
            "dropped": self._dropped,
            "subscribers": len(self._subscriptions),
            "errors": self._errors,
        }

    # --- for backends ----------------------------------------------------------------------

    def _encode(self, type: str, data: dict[str, Any]) -> bytes:
        """Check a publish and encode its payload; the bytes are what subscribers decode."""
        if self._closed:
            raise RuntimeError("the event bus is closed")
        if type not in CATALOG:
            raise ValueError(f"unknown event type {type!r}: add it to unity.core.events.catalog")
        if not isinstance(data, dict):
            raise TypeError(f"event data must be a dict, not {data.__class__.__name__}")
        return orjson.dumps(data)

    def _fan_out(self, event: Event) -> None:
        """Offer ``event`` to every live subscription; never waits."""
        for subscription in self._live:
            queued = subscription._offer(event)
            if queued:
                self._delivered += 1
            elif queued is not None:
                self._dropped += 1

    def _broadcast(self, marker: Resync) -> None:
        """Tell every live subscription that events are missing."""
        for subscription in self._live:
            subscription._signal(marker)

    def _attach(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._live.add(subscription)

    def _detach(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        self._live.discard(subscription)

    @abstractmethod
    async def _replay_page(self, after: int, limit: int) -> HistoryPage:
        """Up to ``limit`` consecutive retained events from ``after + 1``.

        A ``Resync`` when ``after + 1`` is no longer retained or ``after`` is ahead of the
        history; a short list when a gap follows its last event (the next call reports
        the gap). Raises ``EventBusUnavailable`` when the backend cannot be reached.
        """

    @abstractmethod
    async def _release(self) -> None:
        """Release backend resources at ``close`` (after every subscription is closed)."""


def _accept_all(_type: str) -> bool:
    return True


def _type_filter(types: Collection[str] | None) -> Callable[[str], bool]:
    """A fast predicate over event type names for the patterns ``types``."""
    if types is None:
        return _accept_all
    if isinstance(types, str):
        raise TypeError("types must be a collection of patterns, e.g. ['run.*'], not a str")
    patterns = [check_pattern(p) for p in types]
    if "*" in patterns:
        return _accept_all
    exact = frozenset(p for p in patterns if not p.endswith(".*"))
    prefixes = tuple(p[:-1] for p in patterns if p.endswith(".*"))

    def accepts(type: str) -> bool:
        return type in exact or type.startswith(prefixes)

    return accepts
