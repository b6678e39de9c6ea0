"""One WebSocket client: direct delivery from the hub, a fallback subscription, commands.

A client starts *direct*: the hub (:class:`unity.live.hub.LiveHub`) writes each event,
encoded once for everyone, straight to its socket from the hub's own task. No task of
the client wakes up per event, which is most of the cost of fan-out to thousands of
clients; when the client's connection allows it, the write is the event's frame, built
once by the hub, put straight on the transport (:mod:`unity.live.frames`). A write
completes at once unless the client's transport is backed up (the
server paused it); then the write goes on in a task of its own, and the client falls
back to a live bus subscription of its own, served by its *pump* task: first the events
published meanwhile that the hub had not written to it yet (read back from the bus
history, at most a queue's worth), then the subscription's. Its bounded queue drops what
a slow client cannot take and tells it with ``{"type": "lag", "dropped": N}``, so other
clients and publishers never wait for it. A client that connects with ``since=`` (or
resumes) uses a subscription from the start, since it needs history first.

Two more tasks per client: the *reader* answers client commands, the *heartbeat* says
"still here". Their messages, and the pump's, go through :meth:`LiveConnection.send`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Coroutine
from typing import Any

import orjson
import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from unity.core.clock import Clock
from unity.core.events import (
    EventBus,
    EventBusUnavailable,
    Lag,
    Resync,
    Subscription,
    SubscriptionClosed,
)
from unity.core.events.abc import Event
from unity.live.common import parse_since
from unity.live.frames import FrameWriter

log = structlog.stdlib.get_logger("unity.live")

#: Maps a bus event to the text a client receives, or ``None`` to skip it.
Encoder = Callable[[Event], str | None]

#: What a closed or failing socket raises on send.
_GONE = (WebSocketDisconnect, RuntimeError, OSError)


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
        # Writes the hub's prebuilt frames when the server's connection allows it.
        self._frames = FrameWriter.of(websocket)
        self._send_lock = asyncio.Lock()
        self._subscription: Subscription | None = None
        # Set when the connection leaves direct delivery (a subscription exists) or the hub
        # stops delivering; the pump waits for it.
        self._fallen_back = asyncio.Event()
        # A direct write that could not complete at once, finishing in its own task.
        self._unfinished: asyncio.Task[None] | None = None
        # The last event written directly, and the events (after, through] the hub had not
        # written yet when the client fell back to its subscription.
        self._last_seq = 0
        self._gap: tuple[int, int] | None = None
        self._gone = False
        # Filter: include None means every plugin; exclude lists unsubscribed ones.
        self.include: set[str] | None = None
        self.exclude: set[str] = set()

    @property
    def direct(self) -> bool:
        """Whether the hub delivers to this client (no subscription of its own)."""
        return self._subscription is None and not self._fallen_back.is_set()

    async def serve(self, since: int | None) -> None:
        """Run until the client goes away; never raises for a client's fault.

        Without ``since`` the client is delivered to directly (the hub must call
        :meth:`deliver`); with it, through a subscription replaying from ``since``.
        """
        if since is not None:
            self._resubscribe(since)
        tasks = [
            asyncio.create_task(self._pump()),
            asyncio.create_task(self._read()),
            asyncio.create_task(self._beat()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._gone = True
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, *_GONE):
                    await task
            if self._unfinished is not None:
                self._unfinished.cancel()
                with contextlib.suppress(asyncio.CancelledError, *_GONE):
                    await self._unfinished
            if self._subscription is not None:
                self._subscription.close()

    def wants(self, plugin_id: str | None) -> bool:
        """Whether this client's filter lets an event about ``plugin_id`` through."""
        if plugin_id is None:
            return True
        if plugin_id in self.exclude:
            return False
        return self.include is None or plugin_id in self.include

    def deliver(self, seq: int, text: str, frame: bytes) -> bool:
        """Write one event (``seq``, encoded as ``text``, ``frame`` its WebSocket text frame)
        now, from the hub's task; ``True`` when ``frame`` went straight to the transport.

        Never waits: when the write cannot complete at once, it finishes in a task and the
        client falls back to a subscription that resumes after ``seq``. Only for direct
        clients, after the hub has checked tenant and filter.
        """
        if self._gone or self._ws.application_state is not WebSocketState.CONNECTED:
            return False
        try:
            if self._frames is not None and self._frames.write(frame):
                self._last_seq = seq
                return True
            unfinished = start_eagerly(self._ws.send({"type": "websocket.send", "text": text}))
        except _GONE:
            self._gone = True  # the reader sees the disconnect and ends the connection
            return False
        except Exception:
            # One client's failure must not stop the hub's fan-out to everyone else.
            log.warning("live delivery failed; closing the connection", exc_info=True)
            self._gone = True
            self._fallen_back.set()  # no subscription: the pump ends, and the connection
            return False
        self._last_seq = seq
        if unfinished is not None:
            self._unfinished = unfinished
            self._fall_back()
        return False

    def lag(self, dropped: int) -> None:
        """Tell a direct client that the hub itself missed ``dropped`` events."""
        self._reply({"type": "lag", "dropped": dropped})

    def resync(self, item: Resync) -> None:
        """Tell a direct client that events are missing (a gap in the bus)."""
        self._reply({"type": "resync", "since": item.since, "oldest": item.oldest})

    def hub_closed(self) -> None:
        """The hub stops delivering (the bus closed): end this connection."""
        self._fallen_back.set()

    async def send(self, message: dict[str, Any] | str) -> None:
        """Send one message (serialised here unless already text), one send at a time."""
        text = message if isinstance(message, str) else orjson.dumps(message).decode()
        async with self._send_lock:
            if self._ws.application_state is WebSocketState.CONNECTED:
                await self._ws.send_text(text)

    def _reply(self, message: dict[str, Any]) -> None:
        if not self.direct:
            return
        text = orjson.dumps(message).decode()
        with contextlib.suppress(*_GONE):
            unfinished = start_eagerly(self._ws.send({"type": "websocket.send", "text": text}))
            if unfinished is not None:
                self._unfinished = unfinished
                self._fall_back()

    def _fall_back(self) -> None:
        """Leave direct delivery for a live subscription; the pump first sends the gap."""
        self._gap = (self._last_seq, self._bus.last_seq)
        self._resubscribe(None)

    def _resubscribe(self, since: int | None) -> None:
        if self._subscription is not None:
            self._subscription.close()
        self._subscription = self._bus.subscribe(
            since=since, maxsize=self._queue_size, types=self._types
        )
        self._fallen_back.set()

    async def _pump(self) -> None:
        await self._fallen_back.wait()
        if self._unfinished is not None:
            # The write that made us fall back goes out before anything after it.
            await self._unfinished
            self._unfinished = None
        if self._gap is not None:
            await self._send_gap(*self._gap)
            self._gap = None
        while True:
            subscription = self._subscription
            if subscription is None:  # the hub closed while this client was direct
                return
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

    async def _send_gap(self, after: int, through: int) -> None:
        """Send this client's events in ``(after, through]``, read back from the history, as
        a subscription would: in order, at most a queue's worth, then ``lag`` for the rest."""
        if through <= after:
            return
        try:
            events = await self._bus.history(after, limit=min(through - after, 10_000))
        except EventBusUnavailable:
            events = None
        if events is None:
            await self.send({"type": "resync", "since": after, "oldest": None})
            return
        texts = [
            text
            for event in events
            if event.seq <= through
            and event.tenant_id == self.tenant_id
            and self.wants(event.data.get("plugin_id"))
            and (text := self._encode(event)) is not None
        ]
        for text in texts[: self._queue_size]:
            await self.send(text)
        if len(texts) > self._queue_size:
            await self.send({"type": "lag", "dropped": len(texts) - self._queue_size})

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
            try:
                since = parse_since(command.get("since"))
            except ValueError as exc:
                raise ClientError("resume needs a non-negative integer 'since'") from exc
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


def start_eagerly(coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coroutine`` now, up to where it first has to wait.

    Returns ``None`` when it completed (raising what it raised), else a task that carries
    it on from there: what Python 3.12's eager tasks do. A WebSocket send through
    uvicorn waits only while the client's transport is paused, so to thousands of
    clients almost every send completes here, with no task and no loop iteration each.
    """
    try:
        waiting_on = coroutine.send(None)
    except StopIteration:
        return None
    except BaseException:
        coroutine.close()
        raise
    return asyncio.get_running_loop().create_task(_carry_on(coroutine, waiting_on))


async def _carry_on(coroutine: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    """Drive ``coroutine`` (suspended on ``waiting_on``) to its end, as a task would."""
    while True:
        error: BaseException | None = None
        try:
            if isinstance(waiting_on, asyncio.Future):
                await asyncio.wait((waiting_on,))
            else:  # a bare yield: give the loop one turn
                await asyncio.sleep(0)
        except BaseException as exc:  # cancelled: raise it where the coroutine waits
            error = exc
        try:
            waiting_on = coroutine.send(None) if error is None else coroutine.throw(error)
        except StopIteration:
            return


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
