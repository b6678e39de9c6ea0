"""The cache: one ``Cache`` interface, an in-memory backend and a Redis backend with fallback.

``create_cache(settings)`` picks the backend: Redis when ``UNITY_REDIS_URL`` is set,
memory otherwise. ``RedisCache`` lives in ``unity.core.cache.redis`` and is imported only
when Redis is configured, because the ``redis`` package is an optional extra.
"""

from __future__ import annotations

from unity.config import Settings
from unity.core.cache.abc import Backend, Cache, CacheStats, CacheTTL
from unity.core.cache.memory import MemoryCache
from unity.errors import ConfigError

__all__ = ["Backend", "Cache", "CacheStats", "CacheTTL", "MemoryCache", "create_cache"]


def create_cache(settings: Settings) -> Cache:
    """A ``RedisCache`` when ``settings.redis_url`` is set, else a ``MemoryCache``.

    Raises ``ConfigError`` when Redis is configured but the ``redis`` package is missing.
    Nothing connects here: the Redis client connects on first use.
    """
    if not settings.redis_url:
        return MemoryCache()
    try:
        # Deferred so that the embedded mode runs without the optional redis extra.
        from unity.core.cache.redis import RedisCache
    except ImportError as exc:
        raise ConfigError(
            "UNITY_REDIS_URL is set but the redis package is missing: install homelab-unity[redis]"
        ) from exc
    return RedisCache(settings.redis_url, retry_interval_s=settings.redis_retry_interval_s)
