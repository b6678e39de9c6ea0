"""Redis cache for scale-out deployments, shared by every process, with a memory fallback.

When Redis fails (unreachable, timed out, refusing commands) the call is served by an
in-process ``MemoryCache`` instead and no error reaches the caller. Redis is then
bypassed for ``retry_interval_s``, so a dead Redis costs one failed attempt per interval
rather than a connect timeout per call. The first call after the interval tries Redis
again; if it answers, the namespace is cleared in Redis before anything is read from it,
because invalidations made during the outage only reached the fallback and the entries
they targeted would otherwise be served stale. The fallback is cleared too, so the next
outage does not start from entries that missed invalidations made while Redis was up.

One warning is logged when Redis becomes unusable and one line when it is back.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from unity.core.cache.abc import Backend, Cache
from unity.core.cache.memory import MemoryCache
from unity.core.clock import Clock, SystemClock

log = logging.getLogger(__name__)

T = TypeVar("T")

# Socket errors normally arrive wrapped in redis' ConnectionError; OSError covers the rest.
_FAILURES = (RedisError, OSError)
_SCAN_COUNT = 1000
_UNLINK_BATCH = 500
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class RedisCache(Cache):
    """Entries in Redis under ``namespace`` (a key prefix), a ``MemoryCache`` while Redis is down."""

    def __init__(
        self,
        url: str,
        namespace: str = "unity:",
        retry_interval_s: float = 5.0,
        fallback: MemoryCache | None = None,
        *,
        clock: Clock | None = None,
        socket_timeout_s: float = 1.0,
    ) -> None:
        if not namespace:
            # Recovery deletes the whole namespace; an empty one would wipe a shared database.
            raise ValueError("RedisCache needs a non-empty namespace")
        super().__init__()
        self._namespace = namespace
        self._retry_interval_s = retry_interval_s
        self._clock: Clock = clock or SystemClock()
        self._fallback = fallback if fallback is not None else MemoryCache(clock=self._clock)
        self._redis: Redis = Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            # One immediate retry replaces a pooled connection that a Redis restart closed,
            # rather than taking it for an outage; more retries would only slow each failure.
            retry=Retry(NoBackoff(), 1),
        )
        self._degraded = False
        self._retry_at = 0.0

    async def close(self) -> None:
        """Close the Redis connections and drop the fallback's entries."""
        await self._redis.aclose()
        await self._fallback.close()

    def _backend(self) -> Backend:
        return "redis-fallback" if self._degraded else "redis"

    async def _load(self, key: str) -> bytes | None:
        async def from_redis() -> bytes | None:
            raw = await self._redis.get(self._namespace + key)
            # The client does not decode responses, so this is bytes; str only satisfies typing.
            return raw.encode() if isinstance(raw, str) else raw

        return await self._call(from_redis, lambda: self._fallback._load(key))

    async def _store(self, key: str, raw: bytes, ttl_s: float) -> None:
        async def to_redis() -> None:
            # PX keeps sub-second TTLs; a positive TTL below 1 ms still gets 1 ms.
            await self._redis.set(self._namespace + key, raw, px=max(1, round(ttl_s * 1000)))

        await self._call(to_redis, lambda: self._fallback._store(key, raw, ttl_s))

    async def _remove(self, keys: tuple[str, ...]) -> None:
        async def from_redis() -> None:
            await self._redis.unlink(*(self._namespace + key for key in keys))

        await self._call(from_redis, lambda: self._fallback._remove(keys))

    async def _remove_prefix(self, prefix: str) -> None:
        async def from_redis() -> None:
            await self._unlink_prefix(self._namespace + prefix)

        await self._call(from_redis, lambda: self._fallback._remove_prefix(prefix))

    async def _call(
        self,
        redis_op: Callable[[], Awaitable[T]],
        fallback_op: Callable[[], Awaitable[T]],
    ) -> T:
        """Run ``redis_op``, or ``fallback_op`` when Redis is bypassed or fails."""
        if await self._redis_usable():
            try:
                return await redis_op()
            except _FAILURES as exc:
                self._failed(exc)
        return await fallback_op()

    async def _redis_usable(self) -> bool:
        """Whether to try Redis now; after an outage, clears stale state first."""
        if not self._degraded:
            return True
        if self._clock.monotonic() < self._retry_at:
            return False
        # Push the next attempt out before awaiting, so calls arriving while this one
        # talks to Redis use the fallback instead of all probing (and clearing) at once.
        self._retry_at = self._clock.monotonic() + self._retry_interval_s
        try:
            cleared = await self._unlink_prefix(self._namespace)
        except _FAILURES as exc:
            self._failed(exc)
            return False
        self._fallback.clear()
        self._degraded = False
        log.info("Redis cache reachable again; cleared %d possibly stale entries", cleared)
        return True

    def _failed(self, exc: BaseException) -> None:
        self._errors += 1
        self._retry_at = self._clock.monotonic() + self._retry_interval_s
        if not self._degraded:
            self._degraded = True
            log.warning(
                "Redis cache unavailable (%s: %s); serving from memory, retrying every %g s",
                type(exc).__name__,
                exc,
                self._retry_interval_s,
            )

    async def _unlink_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix`` with SCAN + UNLINK; returns how many."""
        removed = 0
        async for batch in _batches(
            self._redis.scan_iter(match=_glob_escape(prefix) + "*", count=_SCAN_COUNT),
            _UNLINK_BATCH,
        ):
            removed += await self._redis.unlink(*batch)
        return removed


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


async def _batches(items: AsyncIterator[bytes], size: int) -> AsyncIterator[list[bytes]]:
    batch: list[bytes] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
