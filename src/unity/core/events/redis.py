"""Event bus on a Redis stream, shared by every Unity process using the same Redis.

Stream format (``unity:events`` by default), one entry per event::

    XADD unity:events MAXLEN ~ <history_size> <seq>-0 type <name> data <json> ts <iso> [tenant <id>]

How ``seq`` stays one strictly increasing sequence across processes: a Lua script
(atomic in Redis) reads the id of the stream's newest entry, adds one, and ``XADD``s with
that explicit id ``<seq>-0``. Stream order is therefore ``seq`` order, consecutive events
have consecutive ids, and a jump in ids means events are gone (trimmed or lost). No
separate counter key exists that could disagree with the stream. The publisher also
passes the highest ``seq`` it knows as a floor, so a Redis restart that lost the stream
does not hand out numbers clients have already seen. The limit of that: a process that
knew less than the others when the data was lost (its reader was behind, or it started
after the loss) can publish numbers the others already passed, and they skip those events.

Delivery: each process runs one reader task doing ``XREAD BLOCK`` from the last id it
delivered and fans out to its local subscriptions, including the events it published
itself, so every process delivers the same events in the same order. When the reader
sees ids jump it sends a ``Resync`` first. When Redis fails, the reader reconnects with
capped exponential backoff (jittered, 0.1 s doubling to 5 s by default) and resumes from
its last id; one warning is logged when Redis becomes unusable and one line when it is
back. ``publish`` during an outage drops the event as ``EventBus.publish`` documents.
While the reader is disconnected too, publishes after a failed one skip Redis for
``retry_interval_s`` or until the reader reconnects, so a dead Redis costs producers
nothing; while the reader is connected, every publish tries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from unity.core.clock import Clock
from unity.core.events.abc import (
    UNPUBLISHED,
    Event,
    EventBus,
    EventBusUnavailable,
    HistoryPage,
    Resync,
)

log = logging.getLogger(__name__)

# Socket errors normally arrive wrapped in redis' ConnectionError; OSError covers the rest.
_FAILURES = (RedisError, OSError)
_READ_COUNT = 1000

# KEYS[1] stream; ARGV[1] floor (highest seq the caller knows), ARGV[2] MAXLEN,
# ARGV[3..] field/value pairs. Returns the seq given to the new entry.
_PUBLISH = """
local seq = tonumber(ARGV[1])
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if top[1] then
  local last = tonumber(string.match(top[1][1], '^(%d+)'))
  if last > seq then seq = last end
end
seq = seq + 1
local args = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], string.format('%d-0', seq)}
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
redis.call(unpack(args))
return seq
"""

Entry = tuple[bytes, dict[bytes, bytes]]


class RedisEventBus(EventBus):
    """Events in a Redis stream; ``seq`` is the entry id, shared by every process."""

    def __init__(
        self,
        url: str,
        *,
        stream_key: str = "unity:events",
        history_size: int = 10_000,
        clock: Clock | None = None,
        retry_interval_s: float = 5.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        block_s: float = 5.0,
        socket_timeout_s: float = 3.0,
    ) -> None:
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        super().__init__(clock=clock)
        self._key = stream_key
        self._history_size = history_size
        self._retry_interval_s = retry_interval_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._block_ms = max(1, round(block_s * 1000))
        self._redis: Redis = Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            # One immediate retry replaces a pooled connection that a Redis restart closed.
            # Not on timeouts: the script may have run, and a retry would publish twice.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        # The reader holds a connection in XREAD BLOCK, so it gets its own client; it
        # reconnects on its own schedule, so the client must not retry.
        self._reader_redis: Redis = Redis.from_url(
            url,
            socket_timeout=block_s + socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._publish_script = self._redis.register_script(_PUBLISH)
        self._reader: asyncio.Task[None] | None = None
        self._last_seq = 0
        self._positioned = False
        self._max_published = 0
        self._reader_ok = True
        self._publish_ok = True
        self._publish_retry_at = 0.0

    async def start(self) -> None:
        """Start the reader at the newest entry; with Redis down, it keeps trying in the background."""
        if self._closed:
            raise RuntimeError("the event bus is closed")
        if self._reader is not None:
            return
        # Positioning before returning means an event published after start() returns
        # is delivered; if Redis is down, the reader positions itself when it connects.
        with contextlib.suppress(*_FAILURES):
            await self._position()
        self._reader = asyncio.create_task(self._read_forever(), name="unity-event-bus-reader")

    async def publish(
        self, type: str, data: dict[str, Any], *, tenant_id: str | None = None
    ) -> Event:
        """Append the event to the stream; see ``EventBus.publish`` for the outage behaviour.

        Local subscribers receive it through the reader, like everyone else's events.
        """
        raw = self._encode(type, data)
        timestamp = self._clock.now()
        if self._redis_known_down():
            self._errors += 1
            return Event(UNPUBLISHED, type, orjson.loads(raw), tenant_id, timestamp)
        fields: list[bytes | str] = [b"type", type, b"data", raw, b"ts", timestamp.isoformat()]
        if tenant_id is not None:
            fields += [b"tenant", tenant_id]
        floor = max(self._last_seq, self._max_published)
        try:
            seq = int(
                await self._publish_script(
                    keys=[self._key], args=[floor, self._history_size, *fields]
                )
            )
        except _FAILURES as exc:
            self._publish_retry_at = self._clock.monotonic() + self._retry_interval_s
            self._errors += 1
            self._set_health(exc, publish_ok=False)
            return Event(UNPUBLISHED, type, orjson.loads(raw), tenant_id, timestamp)
        if not self._publish_ok:
            self._set_health(None, publish_ok=True)
        self._max_published = max(self._max_published, seq)
        self._published += 1
        return Event(seq, type, orjson.loads(raw), tenant_id, timestamp)

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the newest event this process's reader has delivered."""
        return self._last_seq

    def _redis_known_down(self) -> bool:
        """Whether to drop a publish without trying: both paths failed, the last publish recently.

        While the reader is fine, a failed publish (a timeout, a refused command) does not
        stop the next one from trying.
        """
        return (
            not self._reader_ok
            and not self._publish_ok
            and self._clock.monotonic() < self._publish_retry_at
        )

    async def _release(self) -> None:
        reader = self._reader
        if reader is not None:
            # Python 3.11's asyncio.wait_for (which redis-py awaits around socket writes)
            # loses a cancellation that lands just as the write completes, so cancel until
            # the reader has really stopped; _read_forever also checks _closed per round.
            while not reader.done():
                reader.cancel()
                await asyncio.wait({reader}, timeout=0.1)
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await self._reader_redis.aclose()
        await self._redis.aclose()

    # --- reading -----------------------------------------------------------------------------

    async def _position(self) -> None:
        """Start reading after the newest entry (or where this process already was)."""
        newest = await self._redis.xrevrange(self._key, max="+", min="-", count=1)
        if newest:
            self._last_seq = max(self._last_seq, _seq(newest[0][0]))
        self._positioned = True

    async def _read_forever(self) -> None:
        delay = self._backoff_initial_s
        while not self._closed:
            try:
                if not self._reader_ok:
                    # Probe first: the blocking read below may not return for block_s.
                    await self._reader_redis.ping()
                    # Redis answers again: producers may try it at once rather than after
                    # their retry interval (a publish that still fails says so again).
                    self._publish_retry_at = 0.0
                    self._set_health(None, reader_ok=True, publish_ok=True)
                if not self._positioned:
                    await self._position()
                response = await self._reader_redis.xread(
                    {self._key: f"{self._last_seq}-0"}, count=_READ_COUNT, block=self._block_ms
                )
                self._dispatch(_entries(response))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._errors += 1
                if self._reader_ok:
                    if not isinstance(exc, _FAILURES):
                        # A bug, but the reader must outlive it: log it, back off, go on.
                        log.exception("event bus reader failed unexpectedly")
                    self._set_health(exc, reader_ok=False)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self._backoff_max_s)
            else:
                delay = self._backoff_initial_s

    def _dispatch(self, entries: Iterable[Entry]) -> None:
        for entry_id, fields in entries:
            seq = _seq(entry_id)
            if seq <= self._last_seq:
                continue
            if seq > self._last_seq + 1:
                self._broadcast(Resync(since=self._last_seq, oldest=seq))
            self._last_seq = seq
            event = self._decode(seq, fields)
            if event is not None:
                self._fan_out(event)

    def _set_health(
        self,
        exc: BaseException | None,
        *,
        reader_ok: bool | None = None,
        publish_ok: bool | None = None,
    ) -> None:
        """Record the state of the read and publish paths; log once per outage and recovery."""
        usable_before = self._reader_ok and self._publish_ok
        if reader_ok is not None:
            self._reader_ok = reader_ok
        if publish_ok is not None:
            self._publish_ok = publish_ok
        usable = self._reader_ok and self._publish_ok
        if usable_before and not usable:
            log.warning(
                "Redis event bus unavailable (%s: %s); events are dropped until it is back, "
                "reconnecting with backoff up to %g s",
                type(exc).__name__,
                exc,
                self._backoff_max_s,
            )
        elif usable and not usable_before:
            log.info("Redis event bus reachable again; delivering from seq %d", self._last_seq + 1)

    # --- history -----------------------------------------------------------------------------

    async def _replay_page(self, after: int, limit: int) -> HistoryPage:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xrange(self._key, min=f"({after}-0", max="+", count=limit)
                pipe.xrevrange(self._key, max="+", min="-", count=1)
                page, newest = await pipe.execute()
        except _FAILURES as exc:
            self._errors += 1
            raise EventBusUnavailable(f"cannot read the event history from Redis: {exc}") from exc
        newest_seq = _seq(newest[0][0]) if newest else 0
        if after > newest_seq:
            return HistoryPage(Resync(since=after, oldest=None), newest_seq)
        if page and _seq(page[0][0]) != after + 1:
            return HistoryPage(Resync(since=after, oldest=_seq(page[0][0])), newest_seq)
        events: list[Event] = []
        expected = after + 1
        for entry_id, fields in page:
            seq = _seq(entry_id)
            if seq != expected:
                break  # a gap: stop before it, the next page reports it
            expected += 1
            event = self._decode(seq, fields)
            if event is not None:
                events.append(event)
        return HistoryPage(events, newest_seq)

    def _decode(self, seq: int, fields: dict[bytes, bytes]) -> Event | None:
        """The event stored in an entry; ``None`` (logged, counted) for a malformed entry."""
        try:
            tenant = fields.get(b"tenant")
            return Event(
                seq=seq,
                type=fields[b"type"].decode(),
                data=orjson.loads(fields[b"data"]),
                tenant_id=tenant.decode() if tenant is not None else None,
                timestamp=datetime.fromisoformat(fields[b"ts"].decode()),
            )
        except (KeyError, ValueError) as exc:
            self._errors += 1
            log.warning("skipping malformed event %d in %s: %r", seq, self._key, exc)
            return None


def _seq(entry_id: bytes | str | None) -> int:
    """The seq of a stream entry id ``<seq>-0``."""
    if entry_id is None:
        raise ValueError("stream entry without an id")
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.partition("-")[0])


def _entries(response: Any) -> list[Entry]:
    """The entries of an XREAD reply for one stream."""
    if not response:
        return []
    if isinstance(response, dict):  # RESP3: {stream: [[entry, ...]]}
        return [entry for wrapped in response.values() for entry in wrapped[0]]
    return [entry for _name, entries in response for entry in entries]  # RESP2
