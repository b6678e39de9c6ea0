"""Run events over WebSocket: ``/ws/tasks/{task_id}``, ``/ws/runs/{run_id}``, ``/ws/stream``.

Every message about an event has one shape::

    {"event_type": "plan_ready", "task_id": "…", "run_id": "…", "data": {…}, "timestamp": "…", "seq": N}

Run events carry their short name (``SHORT_NAMES``: ``run.completed`` is ``completion``);
``/ws/stream`` also sends the tenant's other events under their dotted name
(``alert.triggered``) with ``task_id`` and ``run_id`` null. ``data`` is the catalog payload.
Beside events: ``heartbeat``, ``lag``, ``resync``, ``error``, ``pong`` and ``subscribed``.

Who sees what: every endpoint needs ``runs:read``; ``/ws/stream`` then sends each other
category only to keys holding that category's read scope (``CATEGORY_SCOPES``). Events
belong to the tenant set on them; the few without one that every tenant shares
(``GLOBAL_EVENTS``: the plugin catalog) reach every tenant, any other event without a
tenant reaches nobody.

One ``StreamHub`` per process holds one bus subscription for all these clients and fans
each event out to the clients whose filter takes it, encoding it once. Each client has a
bounded ``Outbox`` and one sender task, so a slow client only delays itself. ``since``
replays from the bus history; a replay and the live stream meet without gap or duplicate
because a client never sends an event at or below the last ``seq`` it has covered.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson
import structlog
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from unity.auth.principal import Principal
from unity.core.clock import Clock
from unity.core.events import (
    CATEGORIES,
    Event,
    EventBus,
    EventBusUnavailable,
    Lag,
    Resync,
    Subscription,
    SubscriptionClosed,
    check_pattern,
    matches,
)
from unity.live.auth import Authenticate
from unity.live.common import Outbox, dumps, open_session, parse_since
from unity.live.connection import ClientError, parse_command

__all__ = [
    "CATEGORY_SCOPES",
    "GLOBAL_EVENTS",
    "SHORT_NAMES",
    "Audience",
    "StreamClient",
    "StreamHub",
    "encode",
    "router",
    "stream_message",
]

log = structlog.stdlib.get_logger("unity.live")

SCOPE = "runs:read"
"""What a key needs to open any of the three endpoints."""

SHORT_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "run.created": "created",
        "run.analysis_started": "analysis_start",
        "run.plan_ready": "plan_ready",
        "run.approval_required": "approval_required",
        "run.approved": "approved",
        "run.rejected": "rejected",
        "run.progress": "progress",
        "run.completed": "completion",
        "run.failed": "failure",
        "run.cancelled": "cancelled",
        "run.timed_out": "timeout",
    }
)
"""The ``event_type`` of each run event, as clients of the original API know them."""

_DOTTED: dict[str, str] = {short: dotted for dotted, short in SHORT_NAMES.items()}

CATEGORY_SCOPES: Mapping[str, str] = MappingProxyType(
    {
        "run": "runs:read",
        "plugin": "plugins:read",
        "execution": "metrics:read",
        "metrics": "metrics:read",
        "export": "metrics:read",
        "alert": "alerts:read",
        "webhook": "webhooks:read",
        "api_key": "keys:admin",
    }
)
"""The scope a key needs to receive a category's events on ``/ws/stream``."""

GLOBAL_EVENTS = frozenset({"plugin.installed", "plugin.updated", "plugin.uninstalled"})
"""Events about what every tenant shares; published without a tenant, seen by all."""

_REPLAY_PAGE = 500
_SHARED_QUEUE = 10_000

router = APIRouter()


def stream_message(event: Event) -> dict[str, Any]:
    """The message clients receive for ``event``."""
    short = SHORT_NAMES.get(event.type)
    data = event.data
    return {
        "event_type": short or event.type,
        "task_id": data.get("task_id") if short else None,
        "run_id": data.get("run_id") if short else None,
        "data": data,
        "timestamp": event.timestamp.isoformat(),
        "seq": event.seq,
    }


def encode(event: Event) -> str:
    """``stream_message(event)`` as frame text."""
    return orjson.dumps(stream_message(event)).decode()


def categories_of(pattern: str) -> frozenset[str]:
    """The categories a (checked) pattern selects."""
    if pattern == "*":
        return CATEGORIES
    return frozenset({pattern.partition(".")[0]})


def parse_event_types(raw: object, allowed: frozenset[str]) -> tuple[str, ...] | None:
    """The patterns of a ``subscribe`` (``None``: every event); ``ClientError`` if unusable.

    Entries are dotted names, ``"<category>.*"``, ``"*"`` or the short run names.
    """
    if raw is None or raw == "*" or raw == ["*"]:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(t, str) for t in raw):
        raise ClientError('"event_types" must be a non-empty list of event types or "*"')
    patterns: list[str] = []
    for name in raw:
        dotted: str = _DOTTED.get(name) or name
        try:
            pattern = check_pattern(dotted)
        except ValueError as exc:
            raise ClientError(str(exc)) from exc
        if not categories_of(pattern) & allowed:
            needs = sorted({CATEGORY_SCOPES[c] for c in categories_of(pattern)})
            raise ClientError(
                f"{name!r} events do not come on this connection"
                f" (this endpoint or key does not cover them; they need {', '.join(needs)})"
            )
        patterns.append(pattern)
    return tuple(dict.fromkeys(patterns))


@dataclass(frozen=True, slots=True)
class Audience:
    """What one connection may and wants to receive, bar its ``subscribe`` filter."""

    tenant_id: str
    categories: frozenset[str]
    task_id: str | None = None
    run_id: str | None = None


class StreamClient:
    """One WebSocket client of the run streams, served until it goes away."""

    def __init__(self, websocket: WebSocket, *, hub: StreamHub, audience: Audience) -> None:
        self._ws = websocket
        self._hub = hub
        self.audience = audience
        self.outbox = Outbox(hub.queue_size)
        self.patterns: tuple[str, ...] | None = None
        # The highest seq this client has sent or deliberately passed over; anything at
        # or below it is never sent (again), which is what joins a replay to live events.
        self.through = hub.bus.last_seq
        self._resume: int | None = None
        self._closing = False

    def accepts(self, event: Event) -> bool:
        """Whether ``event`` is for this client (tenant, scopes, task or run, filter)."""
        audience = self.audience
        if event.tenant_id != audience.tenant_id and not (
            event.tenant_id is None and event.type in GLOBAL_EVENTS
        ):
            return False
        if event.type.partition(".")[0] not in audience.categories:
            return False
        if audience.run_id is not None and event.data.get("run_id") != audience.run_id:
            return False
        if audience.task_id is not None and event.data.get("task_id") != audience.task_id:
            return False
        return self.patterns is None or any(matches(p, event.type) for p in self.patterns)

    def resume(self, since: int, *, keep_earlier: bool = False) -> None:
        """Replay from ``since`` before sending anything else (``keep_earlier``: unless an
        earlier position is already pending)."""
        if keep_earlier and self._resume is not None:
            since = min(since, self._resume)
        self._resume = since
        self.outbox.interrupt()

    def shutdown(self) -> None:
        """Close the connection (1001) at the next opportunity."""
        self._closing = True
        self.outbox.interrupt()

    async def serve(self) -> None:
        """Send and receive until the client or the hub ends the connection."""
        tasks = [asyncio.create_task(self._send()), asyncio.create_task(self._read())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                # OSError: uvicorn's ClientDisconnected, a send to a peer that left
                with contextlib.suppress(
                    asyncio.CancelledError, WebSocketDisconnect, RuntimeError, OSError
                ):
                    await task

    def reply(self, message: dict[str, Any]) -> None:
        """Queue a control message (never dropped)."""
        self.outbox.put_control(dumps(message))

    async def _send(self) -> None:
        while not self._closing:
            if self._resume is not None:
                since, self._resume = self._resume, None
                await self._replay(since)
                continue
            item = await self.outbox.get()
            if item is None:
                continue
            if item.seq is not None:
                if item.seq <= self.through:
                    continue
                self.through = item.seq
            await self._ws.send_text(item.text)
        if self._ws.application_state is WebSocketState.CONNECTED:
            await self._ws.close(code=1001, reason="Unity is shutting down")

    async def _replay(self, since: int) -> None:
        """Send the retained events after ``since`` that this client accepts, or ``resync``."""
        bus = self._hub.bus
        # Every queued event is at or below last_seq (nothing awaits in between): the
        # replay covers them, and whatever comes live from here is newer.
        self.outbox.discard_events()
        target = bus.last_seq
        self.through = since
        cursor = since
        while True:
            try:
                events = await bus.history(cursor, _REPLAY_PAGE)
            except EventBusUnavailable:
                events = None
            if events is None:
                await self._resync(since)
                return
            for event in events:
                if self._resume is not None or self._closing:
                    return  # superseded
                if event.seq <= self.through:
                    continue
                self.through = event.seq
                if self.accepts(event):
                    await self._ws.send_text(encode(event))
            if events:
                cursor = events[-1].seq
            if cursor >= target:
                return
            if not events:  # history ends below what was already delivered live
                await self._resync(since)
                return

    async def _resync(self, since: int) -> None:
        # What is queued is older than the point the client restarts from.
        self.outbox.discard_events()
        self.through = self._hub.bus.last_seq
        await self._ws.send_text(dumps({"type": "resync", "since": since, "oldest": None}))

    async def _read(self) -> None:
        while True:
            message = await self._ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None:
                raw = (message.get("bytes") or b"").decode(errors="replace")
            try:
                self._handle(parse_command(raw))
            except ClientError as exc:
                self.reply({"type": "error", "detail": str(exc)})

    def _handle(self, command: dict[str, Any]) -> None:
        action = command["action"]
        if action == "subscribe":
            self.patterns = parse_event_types(command.get("event_types"), self.audience.categories)
            self.reply(
                {
                    "type": "subscribed",
                    "event_types": "*" if self.patterns is None else list(self.patterns),
                }
            )
        elif action == "resume":
            try:
                self.resume(parse_since(command.get("since")))
            except ValueError as exc:
                raise ClientError(str(exc)) from exc
        elif action == "ping":
            self.reply({"type": "pong", "timestamp": self._hub.clock.now().isoformat()})
        else:
            raise ClientError(f"unknown action {action!r}")


class StreamHub:
    """The run streams of this process: one bus subscription, fanned out to every client."""

    def __init__(
        self,
        *,
        bus: EventBus,
        clock: Clock,
        heartbeat_s: float,
        queue_size: int,
        authenticate: Authenticate,
        shared_queue_size: int = _SHARED_QUEUE,
    ) -> None:
        self.bus = bus
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        self.queue_size = queue_size
        self.authenticate = authenticate
        self._shared_queue_size = shared_queue_size
        self._clients: set[StreamClient] = set()
        # Who may want an event, so fan-out does not test every client.
        self._by_tenant: dict[str, set[StreamClient]] = {}
        self._by_run: dict[str, set[StreamClient]] = {}
        self._by_task: dict[str, set[StreamClient]] = {}
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def clients(self) -> int:
        """Connected clients of the three endpoints."""
        return len(self._clients)

    async def start(self) -> None:
        """Subscribe to the bus and start fanning out and heartbeats."""
        self._subscription = self.bus.subscribe(maxsize=self._shared_queue_size)
        self._tasks = [
            asyncio.create_task(self._pump(self._subscription), name="unity-streams-pump"),
            asyncio.create_task(self._beat(), name="unity-streams-heartbeat"),
        ]

    async def stop(self) -> None:
        """Close every client (1001) and the subscription."""
        for client in self._clients:
            client.shutdown()
        if self._subscription is not None:
            self._subscription.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def serve(self, client: StreamClient, *, since: int | None) -> None:
        """Serve ``client`` until it disconnects, replaying from ``since`` first."""
        self._add(client)
        if since is not None:
            client.resume(since)
        try:
            await client.serve()
        finally:
            self._remove(client)

    def heartbeat(self) -> dict[str, Any]:
        """The heartbeat message as of now."""
        return {
            "type": "heartbeat",
            "timestamp": self.clock.now().isoformat(),
            "active_connections": self.clients,
        }

    def _index(self, client: StreamClient) -> tuple[dict[str, set[StreamClient]], str]:
        audience = client.audience
        if audience.run_id is not None:
            return self._by_run, audience.run_id
        if audience.task_id is not None:
            return self._by_task, audience.task_id
        return self._by_tenant, audience.tenant_id

    def _add(self, client: StreamClient) -> None:
        self._clients.add(client)
        index, key = self._index(client)
        index.setdefault(key, set()).add(client)

    def _remove(self, client: StreamClient) -> None:
        self._clients.discard(client)
        index, key = self._index(client)
        members = index.get(key)
        if members is not None:
            members.discard(client)
            if not members:
                del index[key]

    def _candidates(self, event: Event) -> list[StreamClient]:
        if event.tenant_id is None:
            return list(self._clients) if event.type in GLOBAL_EVENTS else []
        found = list(self._by_tenant.get(event.tenant_id, ()))
        if event.type in SHORT_NAMES:
            for index, key in ((self._by_run, "run_id"), (self._by_task, "task_id")):
                value = event.data.get(key)
                if isinstance(value, str):
                    found.extend(index.get(value, ()))
        return found

    def fan_out(self, event: Event) -> None:
        """Queue ``event`` for every client that takes it, encoded once."""
        text: str | None = None
        for client in self._candidates(event):
            if client.accepts(event):
                if text is None:
                    text = encode(event)
                client.outbox.put_event(event.seq, text)

    async def _pump(self, subscription: Subscription) -> None:
        while True:
            try:
                item = await subscription.get()
            except SubscriptionClosed:
                return
            if isinstance(item, Event):
                self.fan_out(item)
            elif isinstance(item, Lag):
                # This process fell behind the bus (not one client): each client gets what
                # it missed from the history, filtered as usual, or a resync.
                log.warning("run streams fell behind the event bus", dropped=item.dropped)
                for client in self._clients:
                    client.resume(client.through, keep_earlier=True)
            elif isinstance(item, Resync):
                for client in self._clients:
                    client.reply({"type": "resync", "since": client.through, "oldest": item.oldest})

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if self._clients:
                text = dumps(self.heartbeat())
                for client in self._clients:
                    client.outbox.put_control(text, kind="heartbeat")


async def _serve(
    websocket: WebSocket, *, task_id: str | None = None, run_id: str | None = None
) -> None:
    hub: StreamHub = websocket.app.state.components.streams
    session = await open_session(websocket, hub.authenticate, SCOPE)
    if session is None:
        return
    everything = task_id is None and run_id is None
    categories = _readable(session.principal) if everything else frozenset({"run"})
    client = StreamClient(
        websocket,
        hub=hub,
        audience=Audience(session.tenant_id, categories, task_id=task_id, run_id=run_id),
    )
    since: int | None = None
    params = websocket.query_params
    if "since" in params:
        try:
            since = parse_since(params["since"])
        except ValueError as exc:
            client.reply({"type": "error", "detail": str(exc)})
    if "event_types" in params:
        try:
            client.patterns = parse_event_types(params["event_types"].split(","), categories)
        except ClientError as exc:
            client.reply({"type": "error", "detail": str(exc)})
    await hub.serve(client, since=since)


def _canonical(id: str) -> str:
    # Run and task ids are UUIDs, published in lower case: accept any spelling of one.
    try:
        return str(uuid.UUID(id))
    except ValueError:
        return id


def _readable(principal: Principal) -> frozenset[str]:
    return frozenset(c for c, scope in CATEGORY_SCOPES.items() if principal.has(scope))


@router.websocket("/ws/tasks/{task_id}")
async def ws_task(websocket: WebSocket, task_id: str) -> None:
    """Events of every run of one task (``runs:read``)."""
    await _serve(websocket, task_id=_canonical(task_id))


@router.websocket("/ws/runs/{run_id}")
async def ws_run(websocket: WebSocket, run_id: str) -> None:
    """Events of one run (``runs:read``)."""
    await _serve(websocket, run_id=_canonical(run_id))


@router.websocket("/ws/stream")
async def ws_stream(websocket: WebSocket) -> None:
    """Every event of the key's tenant: runs (``runs:read``, needed to connect) and each
    other category the key has the read scope for."""
    await _serve(websocket)
