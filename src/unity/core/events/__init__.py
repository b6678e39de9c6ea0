"""The event bus: one ``EventBus`` interface, an in-memory backend and a Redis Streams backend.

``create_event_bus(settings)`` picks the backend: Redis when ``UNITY_REDIS_URL`` is set,
memory otherwise. ``RedisEventBus`` lives in ``unity.core.events.redis`` and is imported
only when Redis is configured, because the ``redis`` package is an optional extra. The
event types, their categories and payload schemas are in ``unity.core.events.catalog``.
"""

from __future__ import annotations

import time

from unity.config import Settings
from unity.core.events.abc import (
    UNPUBLISHED,
    Event,
    EventBus,
    EventBusUnavailable,
    Item,
    Lag,
    Resync,
    Subscription,
    SubscriptionClosed,
)
from unity.core.events.catalog import CATALOG, CATEGORIES, EventType, check_pattern, matches
from unity.core.events.memory import MemoryEventBus
from unity.errors import ConfigError

__all__ = [
    "CATALOG",
    "CATEGORIES",
    "UNPUBLISHED",
    "Event",
    "EventBus",
    "EventBusUnavailable",
    "EventType",
    "Item",
    "Lag",
    "MemoryEventBus",
    "Resync",
    "Subscription",
    "SubscriptionClosed",
    "check_pattern",
    "create_event_bus",
    "matches",
]


def create_event_bus(settings: Settings, *, history_size: int = 10_000) -> EventBus:
    """A ``RedisEventBus`` when ``settings.redis_url`` is set, else a ``MemoryEventBus``.

    ``history_size`` is how many events are kept for replay (the ring's length, or the
    stream's approximate ``MAXLEN``). Raises ``ConfigError`` when Redis is configured but
    the ``redis`` package is missing. Nothing connects here: call ``start()``.
    """
    if not settings.redis_url:
        # Numbers above any a previous process of this server handed out (see memory.py).
        return MemoryEventBus(history_size, start_seq=time.time_ns() // 1000)
    try:
        # Deferred so that the embedded mode runs without the optional redis extra.
        from unity.core.events.redis import RedisEventBus
    except ImportError as exc:
        raise ConfigError(
            "UNITY_REDIS_URL is set but the redis package is missing: install homelab-unity[redis]"
        ) from exc
    return RedisEventBus(
        settings.redis_url,
        history_size=history_size,
        retry_interval_s=settings.redis_retry_interval_s,
    )
