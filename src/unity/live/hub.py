"""The WebSocket hub: counts clients, encodes bus events once for all of them.

``/ws/metrics`` keeps the message shapes users of the original API know::

    {"type": "metrics_update", "plugin_id", "instance_id", "metrics", "timestamp", "seq"}
    {"type": "execution_complete", "plugin_id", "instance_id", "execution": {...}, "timestamp", "seq"}
    {"type": "heartbeat", "timestamp", "active_connections"}

An event is serialised once, however many clients receive it (a small cache keyed by
``seq``): fan-out cost is a send per client, not a ``json.dumps`` per client.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket

from unity.core.clock import Clock
from unity.core.events import EventBus
from unity.core.events.abc import Event
from unity.live.auth import Authenticate, authenticate_websocket, close_forbidden, tenant_of
from unity.live.connection import LiveConnection

METRIC_EVENTS = ("metrics.updated", "execution.completed", "execution.failed")
_ENCODED_CACHE = 512

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
        self._encoded: OrderedDict[int, bytes | None] = OrderedDict()

    def heartbeat(self) -> dict[str, Any]:
        return {
            "type": "heartbeat",
            "timestamp": self.clock.now().isoformat(),
            "active_connections": self.clients,
        }

    def encode_metrics(self, event: Event) -> bytes | None:
        """The ``/ws/metrics`` message of ``event``, serialised once per event."""
        if event.seq in self._encoded:
            return self._encoded[event.seq]
        message = metrics_message(event)
        encoded = orjson.dumps(message) if message is not None else None
        self._encoded[event.seq] = encoded
        if len(self._encoded) > _ENCODED_CACHE:
            self._encoded.popitem(last=False)
        return encoded


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
    principal = await authenticate_websocket(websocket, hub.authenticate, "metrics:read")
    if principal is None:
        return
    tenant = tenant_of(websocket, principal)
    if tenant is None:
        await close_forbidden(websocket, "only an admin key can watch another tenant")
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
        tenant_id=tenant,
    )
    if raw_since is not None:
        if raw_since.isdigit():
            since = int(raw_since)
        else:
            await connection.send(
                {"type": "error", "detail": "since must be a non-negative integer"}
            )
    hub.clients += 1
    try:
        await connection.serve(since)
    finally:
        hub.clients -= 1
