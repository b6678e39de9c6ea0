"""The cache contract every backend fulfils, its statistics and the named TTLs.

Values are JSON-able (dict, list, str, int, float, bool, None) and are stored as
orjson-encoded bytes by every backend, so a caller that mutates a returned dict never
changes what the cache holds, whichever backend is in use.

A TTL of zero or less means "expires at once": ``set`` then removes the key and
``get_or_set`` calls its factory every time, which lets a user switch caching of a
family off by setting its TTL to 0.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from unity.config import Settings

Backend = Literal["memory", "redis", "redis-fallback"]


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was built (a snapshot; read ``Cache.stats`` again for new values)."""

    hits: int
    misses: int
    errors: int
    """Backend failures that were absorbed (Redis unreachable, timed out, refused a command)."""
    backend: Backend
    """What serves requests right now; ``redis-fallback`` while Redis is bypassed."""


@dataclass(frozen=True, slots=True)
class CacheTTL:
    """How long each family of cached values lives, in seconds."""

    latest_s: float = 300.0
    """Latest metric values of a plugin instance."""
    dashboard_s: float = 60.0
    """Aggregated dashboard payloads."""
    status_s: float = 30.0
    """Plugin status and health."""

    @classmethod
    def from_settings(cls, settings: Settings) -> CacheTTL:
        """The TTLs configured in ``settings`` (``cache_ttl_*_s``)."""
        return cls(
            latest_s=float(settings.cache_ttl_latest_s),
            dashboard_s=float(settings.cache_ttl_dashboard_s),
            status_s=float(settings.cache_ttl_status_s),
        )


def encode(value: Any) -> bytes:
    """``value`` as stored bytes; raises ``TypeError`` when it is not JSON-able."""
    return orjson.dumps(value)


def decode(raw: bytes) -> Any:
    """The value stored as ``raw``."""
    return orjson.loads(raw)


class Cache(ABC):
    """A key-value cache with a TTL per entry.

    Backends implement the raw byte operations (``_load``, ``_store``, ``_remove``,
    ``_remove_prefix``); this class does encoding, statistics and the single-flight
    logic of ``get_or_set``. Backend failures never reach callers: a backend either
    absorbs them (counting them in ``stats.errors``) or, for a programming error such as
    an unserializable value, raises ``TypeError``.
    """

    def __init__(self) -> None:
        self._hits = 0
        self._misses = 0
        self._errors = 0
        # Callers computing the same missing key wait for the first one instead of
        # all running the (usually expensive) factory at once.
        self._key_locks: dict[str, _KeyLock] = {}

    async def get(self, key: str) -> Any | None:
        """The value stored under ``key``, or ``None`` when it is missing or expired."""
        raw = await self._load(key)
        if raw is None:
            self._misses += 1
            return None
        self._hits += 1
        return decode(raw)

    async def set(self, key: str, value: Any, ttl_s: float) -> None:
        """Store ``value`` under ``key`` for ``ttl_s`` seconds; raises ``TypeError`` if not JSON-able."""
        await self._put(key, encode(value), ttl_s)

    async def get_or_set(
        self, key: str, ttl_s: float, factory: Callable[[], Awaitable[Any]]
    ) -> Any:
        """The cached value of ``key``; on a miss, await ``factory()``, store its result and return it.

        A stored ``None`` is a hit (the factory is not called again). Concurrent callers
        missing the same key in this process share one factory call. An exception from
        ``factory`` propagates and nothing is stored.
        """
        return decode(await self.get_or_set_encoded(key, ttl_s, factory))

    async def get_or_set_encoded(
        self, key: str, ttl_s: float, factory: Callable[[], Awaitable[Any]]
    ) -> bytes:
        """:meth:`get_or_set`, answering the stored JSON bytes rather than their value.

        For a caller that sends the value on as JSON unchanged (a hot read answering it as
        the response body): no decoding here and no encoding there.
        """
        raw = await self._load(key)
        if raw is not None:
            self._hits += 1
            return raw
        entry = self._key_locks.setdefault(key, _KeyLock())
        entry.users += 1
        try:
            async with entry.lock:
                # Look again: a caller ahead of us may have filled the key since our first
                # look. Only misses pay for this second look, and they run the factory anyway.
                raw = await self._load(key)
                if raw is not None:
                    self._hits += 1
                    return raw
                self._misses += 1
                raw = encode(await factory())
                await self._put(key, raw, ttl_s)
                # What a later get() would return, not the factory's own object.
                return raw
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._key_locks[key]

    async def delete(self, *keys: str) -> None:
        """Remove ``keys``; missing keys are ignored."""
        if keys:
            await self._remove(keys)

    async def delete_prefix(self, prefix: str) -> None:
        """Remove every key starting with ``prefix`` (e.g. ``"plugin:system_info:"``)."""
        if not prefix:
            raise ValueError("delete_prefix needs a non-empty prefix")
        await self._remove_prefix(prefix)

    async def _put(self, key: str, raw: bytes, ttl_s: float) -> None:
        if ttl_s <= 0:
            await self._remove((key,))
        else:
            await self._store(key, raw, ttl_s)

    @abstractmethod
    async def close(self) -> None:
        """Release connections; the cache must not be used afterwards."""

    @property
    def stats(self) -> CacheStats:
        """Hit, miss and error counters and the backend in use."""
        return CacheStats(
            hits=self._hits, misses=self._misses, errors=self._errors, backend=self._backend()
        )

    @abstractmethod
    def _backend(self) -> Backend:
        """The backend serving requests right now."""

    @abstractmethod
    async def _load(self, key: str) -> bytes | None:
        """The stored bytes of ``key``, ``None`` when missing or expired."""

    @abstractmethod
    async def _store(self, key: str, raw: bytes, ttl_s: float) -> None:
        """Store ``raw`` under ``key`` for ``ttl_s`` (> 0) seconds."""

    @abstractmethod
    async def _remove(self, keys: tuple[str, ...]) -> None:
        """Remove ``keys`` (at least one)."""

    @abstractmethod
    async def _remove_prefix(self, prefix: str) -> None:
        """Remove every key starting with ``prefix`` (non-empty)."""


class _KeyLock:
    """A per-key lock and the number of ``get_or_set`` calls using it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0
