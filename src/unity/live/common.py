"""Pieces every live endpoint needs: opening an authenticated session, ``since``, an outbox.

``/ws/metrics`` (:mod:`unity.live.hub`) and ``/ws/tasks``, ``/ws/runs``, ``/ws/stream``
(:mod:`unity.live.streams`) use them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import orjson
from starlette.websockets import WebSocket

from unity.auth.principal import Principal
from unity.live.auth import Authenticate, authenticate_websocket, close_forbidden, tenant_of


@dataclass(frozen=True, slots=True)
class Session:
    """An authenticated client: its key and the tenant whose events it receives."""

    principal: Principal
    tenant_id: str


async def open_session(
    websocket: WebSocket, authenticate: Authenticate, scope: str
) -> Session | None:
    """Accept and authenticate ``websocket`` for ``scope`` and its tenant (``?tenant=`` for
    admin keys); ``None`` once it has been closed with 4401 or 4403."""
    principal = await authenticate_websocket(websocket, authenticate, scope)
    if principal is None:
        return None
    tenant = tenant_of(websocket, principal)
    if tenant is None:
        await close_forbidden(websocket, "only an admin key can watch another tenant")
        return None
    return Session(principal, tenant)


_MAX_SEQ = 2**63 - 1  # Redis stream ids and BIGINT columns stop here


def parse_since(raw: object) -> int:
    """A ``since`` position (query string or message value); ``ValueError`` with the reason."""
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 19:
        raw = int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= _MAX_SEQ:
        return raw
    raise ValueError("since must be a non-negative integer (the seq of the last event you have)")


def dumps(message: dict[str, object]) -> str:
    """A message as the text of one WebSocket frame."""
    return orjson.dumps(message).decode()


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One frame waiting in an ``Outbox``: an event (with its ``seq``) or a control message."""

    text: str
    seq: int | None = None
    kind: str | None = None
    """For control messages: what it is, so that a newer one of the kind can replace it."""


class Outbox:
    """The frames waiting for one slow or fast client, bounded for events.

    Events count against ``maxsize``; when the box is full, new events are dropped and
    counted, and ``{"type": "lag", "dropped": N}`` takes their place in the order, so the
    client learns where its gap is. Control messages (replies, heartbeats, resync) are
    never dropped; ``put_control(kind=...)`` keeps at most one pending message of a kind,
    so heartbeats do not pile up behind a stuck client. Single consumer.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._maxsize = maxsize
        self._items: deque[Outgoing] = deque()
        self._events = 0
        self._dropped = 0
        self._kinds: set[str] = set()
        self._waiter: asyncio.Future[None] | None = None
        self._interrupted = False

    def put_event(self, seq: int, text: str) -> bool:
        """Queue an event; ``False`` when the box is full and it was dropped."""
        if self._events >= self._maxsize:
            self._dropped += 1
            return False
        self._flush_lag()
        self._items.append(Outgoing(text, seq))
        self._events += 1
        self._wake()
        return True

    def put_control(self, text: str, *, kind: str | None = None) -> None:
        """Queue a control message; with ``kind``, replacing a pending one of that kind."""
        if kind is not None and kind in self._kinds:
            self._items = deque(i for i in self._items if i.kind != kind)
        self._flush_lag()
        self._items.append(Outgoing(text, kind=kind))
        if kind is not None:
            self._kinds.add(kind)
        self._wake()

    def discard_events(self) -> None:
        """Forget the queued events and the drop count (a replay is about to cover them)."""
        self._items = deque(i for i in self._items if i.seq is None)
        self._events = 0
        self._dropped = 0

    def interrupt(self) -> None:
        """Make the pending (or next) ``get`` return ``None`` once."""
        self._interrupted = True
        self._wake()

    async def get(self) -> Outgoing | None:
        """The next frame, waiting for one; ``None`` after ``interrupt``."""
        while True:
            if self._interrupted:
                self._interrupted = False
                return None
            if self._items:
                item = self._items.popleft()
                if item.seq is not None:
                    self._events -= 1
                elif item.kind is not None:
                    self._kinds.discard(item.kind)
                return item
            if self._dropped:
                self._flush_lag()
                continue
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _flush_lag(self) -> None:
        if self._dropped:
            self._items.append(Outgoing(dumps({"type": "lag", "dropped": self._dropped})))
            self._dropped = 0

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
