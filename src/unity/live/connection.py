"""One WebSocket client: a bus subscription, a filter, heartbeats and client commands.

Three tasks per client share one send lock: the *pump* turns bus items into messages, the
*reader* answers client commands, the *heartbeat* says "still here". A slow client only
slows its own pump; its bounded subscription drops what it cannot take and tells it with
``{"type": "lag", "dropped": N}``, so other clients and publishers never wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection
from typing import Any

import orjson
import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from unity.core.clock import Clock
from unity.core.events import EventBus, Lag, Resync, Subscription, SubscriptionClosed
from unity.core.events.abc import Event

log = structlog.stdlib.get_logger("unity.live")

#: Maps a bus event to the message a client receives, or ``None`` to skip it.
Encoder = Callable[[Event], bytes | None]


class ClientError(ValueError):
    """A client message that cannot be acted on; answered with ``{"type": "error"}``."""


class LiveConnection:
    """Serves one WebSocket client until it disconnects."""

    def __init__(
        self,
        websocket: WebSocket,
        *,
        bus: EventBus,
        types: Collection[str],
        encode: Encoder,
        clock: Clock,
        heartbeat_s: float,
        queue_size: int,
        heartbeat: Callable[[], dict[str, Any]],
        tenant_id: str,
    ) -> None:
        self._ws = websocket
        self._bus = bus
        self._types = types
        self._encode = encode
        self._clock = clock
        self._heartbeat_s = heartbeat_s
        self._queue_size = queue_size
        self._heartbeat = heartbeat
        self.tenant_id = tenant_id
        self._send_lock = asyncio.Lock()
        self._subscription: Subscription | None = None
        # Filter: include None means every plugin; exclude lists unsubscribed ones.
        self.include: set[str] | None = None
        self.exclude: set[str] = set()

    async def serve(self, since: int | None) -> None:
        """Run until the client goes away; never raises for a client's fault."""
        self._resubscribe(since)
        tasks = [
            asyncio.create_task(self._pump()),
            asyncio.create_task(self._read()),
            asyncio.create_task(self._beat()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                    await task
            if self._subscription is not None:
                self._subscription.close()

    def wants(self, plugin_id: str | None) -> bool:
        """Whether this client's filter lets an event about ``plugin_id`` through."""
        if plugin_id is None:
            return True
        if plugin_id in self.exclude:
            return False
        return self.include is None or plugin_id in self.include

    async def send(self, message: dict[str, Any] | bytes) -> None:
        """Send one message (serialised here unless already bytes)."""
        text = message if isinstance(message, bytes) else orjson.dumps(message)
        async with self._send_lock:
            if self._ws.application_state is WebSocketState.CONNECTED:
                await self._ws.send_text(text.decode())

    def _resubscribe(self, since: int | None) -> None:
        if self._subscription is not None:
            self._subscription.close()
        self._subscription = self._bus.subscribe(
            since=since, maxsize=self._queue_size, types=self._types
        )

    async def _pump(self) -> None:
        while True:
            subscription = self._subscription
            assert subscription is not None
            try:
                item = await subscription.get()
            except SubscriptionClosed:
                if subscription is self._subscription:  # the bus closed: we are done
                    return
                continue  # a resume replaced it
            if isinstance(item, Lag):
                await self.send({"type": "lag", "dropped": item.dropped})
            elif isinstance(item, Resync):
                await self.send({"type": "resync", "since": item.since, "oldest": item.oldest})
            elif item.tenant_id == self.tenant_id and self.wants(item.data.get("plugin_id")):
                encoded = self._encode(item)
                if encoded is not None:
                    await self.send(encoded)

    async def _read(self) -> None:
        while True:
            raw = await self._ws.receive_text()
            try:
                await self._handle(parse_command(raw))
            except ClientError as exc:
                await self.send({"type": "error", "detail": str(exc)})

    async def _handle(self, command: dict[str, Any]) -> None:
        action = command["action"]
        if action == "subscribe":
            ids = plugin_ids(command)
            if ids is None:
                self.include, self.exclude = None, set()
            else:
                self.include = ids if self.include is None else self.include | ids
                self.exclude -= ids
            await self.send({"type": "subscribed", **self._filter_view()})
        elif action == "unsubscribe":
            ids = plugin_ids(command)
            if ids is None:
                self.include, self.exclude = set(), set()
            elif self.include is not None:
                self.include -= ids
            else:
                self.exclude |= ids
            await self.send({"type": "unsubscribed", **self._filter_view()})
        elif action == "resume":
            since = command.get("since")
            if not isinstance(since, int) or isinstance(since, bool) or since < 0:
                raise ClientError("resume needs a non-negative integer 'since'")
            self._resubscribe(since)
        elif action == "ping":
            await self.send({"type": "pong", "timestamp": self._clock.now().isoformat()})
        else:
            raise ClientError(f"unknown action {action!r}")

    def _filter_view(self) -> dict[str, Any]:
        return {
            "plugin_ids": "*" if self.include is None else sorted(self.include),
            "excluded": sorted(self.exclude),
        }

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            await self.send(self._heartbeat())


def parse_command(raw: str) -> dict[str, Any]:
    """A client message as a dict with an ``action``; ``ClientError`` otherwise."""
    try:
        command = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ClientError(f"messages must be JSON: {exc}") from exc
    if not isinstance(command, dict) or not isinstance(command.get("action"), str):
        raise ClientError('messages must be objects with an "action", e.g. {"action": "subscribe"}')
    return command


def plugin_ids(command: dict[str, Any]) -> set[str] | None:
    """The ``plugin_ids`` of a command; ``None`` for all (missing or ``"*"``)."""
    ids = command.get("plugin_ids")
    if ids is None or ids == "*" or ids == ["*"]:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ClientError('"plugin_ids" must be a list of plugin ids or "*"')
    return set(ids)
