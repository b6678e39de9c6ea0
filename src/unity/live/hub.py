"""The WebSocket hub: counts clients, encodes bus events once for all of them.

``/ws/metrics`` keeps the message shapes users of the original API know::

    {"type": "metrics_update", "plugin_id", "instance_id", "metrics", "timestamp", "seq"}
    {"type": "execution_complete", "plugin_id", "instance_id", "execution": {...}, "timestamp", "seq"}
    {"type": "heartbeat", "timestamp", "active_connections"}

An event is serialised once, however many clients receive it (a small cache keyed by
``seq``), and the hub writes it to every direct client from its own task (see
:mod:`unity.live.connection`): fan-out costs one socket write per client, not a
``json.dumps``, a queue and a task wake-up per client. The event's WebSocket frame is
built once too, and written as it is to every client whose connection allows it
(:mod:`unity.live.frames`); the others go through the ASGI send.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket

from unity.core.clock import Clock
from unity.core.events import EventBus, Lag, Subscription, SubscriptionClosed
from unity.core.events.abc import Event
from unity.live.auth import Authenticate
from unity.live.common import open_session, parse_since
from unity.live.connection import LiveConnection
from unity.live.frames import text_frame

METRIC_EVENTS = ("metrics.updated", "execution.completed", "execution.failed")
_ENCODED_CACHE = 512
#: Events the hub's own subscription holds while it is busy writing (then it drops and
#: tells every direct client it lagged). Writes never wait, so this is rarely reached.
_HUB_QUEUE = 10_000

router = APIRouter()


class LiveHub:
    """Shared state of every live connection of this process."""

    def __init__(
        self,
        *,
        bus: EventBus,
        clock: Clock,
        heartbeat_s: float,
        queue_size: int,
        authenticate: Authenticate,
    ) -> None:
        self.bus = bus
        self.authenticate = authenticate
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        self.queue_size = queue_size
        self.clients = 0
        #: Direct deliveries written as the prebuilt frame, and the others (the ASGI send,
        #: or none when the client was already gone).
        self.frames_written = 0
        self.sends = 0
        self._encoded: OrderedDict[int, str | None] = OrderedDict()
        # Direct clients by tenant; the pump task runs while there are clients.
        self._direct: dict[str, set[LiveConnection]] = {}
        self._pump: asyncio.Task[None] | None = None

    def heartbeat(self) -> dict[str, Any]:
        return {
            "type": "heartbeat",
            "timestamp": self.clock.now().isoformat(),
            "active_connections": self.clients,
        }

    def encode_metrics(self, event: Event) -> str | None:
        """The ``/ws/metrics`` message of ``event``, serialised once per event."""
        if event.seq in self._encoded:
            return self._encoded[event.seq]
        message = metrics_message(event)
        encoded = orjson.dumps(message).decode() if message is not None else None
        self._encoded[event.seq] = encoded
        if len(self._encoded) > _ENCODED_CACHE:
            self._encoded.popitem(last=False)
        return encoded

    async def serve(self, connection: LiveConnection, since: int | None) -> None:
        """Serve ``connection`` until it ends: direct delivery unless it asked for ``since``."""
        self.clients += 1
        if since is None:
            self._ensure_pump()
            self._direct.setdefault(connection.tenant_id, set()).add(connection)
        try:
            await connection.serve(since)
        finally:
            self.clients -= 1
            direct = self._direct.get(connection.tenant_id)
            if direct is not None:
                direct.discard(connection)
                if not direct:
                    del self._direct[connection.tenant_id]

    def _ensure_pump(self) -> None:
        if self._pump is None or self._pump.done():
            # Subscribed here, not in the task: no event published from now on is missed.
            subscription = self.bus.subscribe(maxsize=_HUB_QUEUE, types=METRIC_EVENTS)
            self._pump = asyncio.get_running_loop().create_task(self._fan_out(subscription))

    async def _fan_out(self, subscription: Subscription) -> None:
        """Write each metrics event to every direct client that wants it, until no client is
        left or the bus closes."""
        with subscription:
            while self._direct:
                try:
                    item = await subscription.get()
                except SubscriptionClosed:
                    for clients in list(self._direct.values()):
                        for connection in list(clients):
                            connection.hub_closed()
                    return
                if isinstance(item, Event):
                    audience = self._direct.get(item.tenant_id or "")
                    if not audience:
                        continue
                    text = self.encode_metrics(item)
                    if text is None:
                        continue
                    frame = text_frame(text)
                    plugin_id = item.data.get("plugin_id")
                    written = sent = 0
                    for connection in list(audience):
                        if not connection.direct:
                            audience.discard(connection)  # it has a subscription of its own now
                        elif connection.wants(plugin_id):
                            if connection.deliver(item.seq, text, frame):
                                written += 1
                            else:
                                sent += 1
                    self.frames_written += written
                    self.sends += sent
                else:
                    for clients in list(self._direct.values()):
                        for connection in list(clients):
                            if isinstance(item, Lag):
                                connection.lag(item.dropped)
                            else:
                                connection.resync(item)


def metrics_message(event: Event) -> dict[str, Any] | None:
    """Map a bus event to its ``/ws/metrics`` message."""
    data = event.data
    if event.type == "metrics.updated":
        return {
            "type": "metrics_update",
            "plugin_id": data.get("plugin_id"),
            "instance_id": data.get("instance_id"),
            "metrics": data.get("metrics", {}),
            "timestamp": data.get("timestamp") or event.timestamp.isoformat(),
            "seq": event.seq,
        }
    if event.type in ("execution.completed", "execution.failed"):
        return {
            "type": "execution_complete",
            "plugin_id": data.get("plugin_id"),
            "instance_id": data.get("instance_id"),
            "execution": data.get("execution", {}),
            "timestamp": event.timestamp.isoformat(),
            "seq": event.seq,
        }
    return None


@router.websocket("/ws/metrics")
async def ws_metrics(websocket: WebSocket) -> None:
    """Live metrics of the key's tenant: ``?since=SEQ`` replays what a reconnecting client
    missed. Needs ``metrics:read`` (``?token=`` or a first ``{"action": "auth"}`` message).

    Client messages: ``{"action": "subscribe" | "unsubscribe", "plugin_ids": [...]}``,
    ``{"action": "resume", "since": N}``, ``{"action": "ping"}``.
    """
    hub: LiveHub = websocket.app.state.components.hub
    session = await open_session(websocket, hub.authenticate, "metrics:read")
    if session is None:
        return
    since: int | None = None
    raw_since = websocket.query_params.get("since")
    connection = LiveConnection(
        websocket,
        bus=hub.bus,
        types=METRIC_EVENTS,
        encode=hub.encode_metrics,
        clock=hub.clock,
        heartbeat_s=hub.heartbeat_s,
        queue_size=hub.queue_size,
        heartbeat=hub.heartbeat,
        tenant_id=session.tenant_id,
    )
    if raw_since is not None:
        try:
            since = parse_since(raw_since)
        except ValueError as exc:
            await connection.send({"type": "error", "detail": str(exc)})
    await hub.serve(connection, since)
