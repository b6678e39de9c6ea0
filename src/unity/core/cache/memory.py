"""In-process cache: a TTL per entry and LRU eviction, for the embedded (single-process) mode.

Expired entries are dropped lazily (a read of an expired key removes it) and by a sweep
that runs on write at most once per ``sweep_interval_s``. No background task is needed:
``max_entries`` already bounds memory, and expired entries that nobody reads drift to
the least-recently-used end, so they are the first evicted when the cache is full. The
sweep only frees their memory sooner when the cache is far from full.
"""

from __future__ import annotations

from collections import OrderedDict

from unity.core.cache.abc import Backend, Cache
from unity.core.clock import Clock, SystemClock


class MemoryCache(Cache):
    """A dict of encoded values with expiry times, in least-recently-used order."""

    def __init__(
        self,
        max_entries: int = 10_000,
        clock: Clock | None = None,
        *,
        sweep_interval_s: float = 60.0,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        super().__init__()
        self._max_entries = max_entries
        self._clock: Clock = clock or SystemClock()
        self._sweep_interval_s = sweep_interval_s
        # key -> (encoded value, monotonic expiry); the first item is the least recently used.
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._next_sweep = self._clock.monotonic() + sweep_interval_s

    def __len__(self) -> int:
        """Entries held, including expired ones not dropped yet."""
        return len(self._entries)

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()

    async def close(self) -> None:
        """Drop every entry."""
        self.clear()

    def _backend(self) -> Backend:
        return "memory"

    async def _load(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        raw, expires_at = entry
        if expires_at <= self._clock.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return raw

    async def _store(self, key: str, raw: bytes, ttl_s: float) -> None:
        now = self._clock.monotonic()
        if now >= self._next_sweep:
            self._sweep(now)
        self._entries[key] = (raw, now + ttl_s)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def _remove(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            self._entries.pop(key, None)

    async def _remove_prefix(self, prefix: str) -> None:
        for key in [k for k in self._entries if k.startswith(prefix)]:
            del self._entries[key]

    def _sweep(self, now: float) -> None:
        for key in [k for k, (_, expires_at) in self._entries.items() if expires_at <= now]:
            del self._entries[key]
        self._next_sweep = now + self._sweep_interval_s
