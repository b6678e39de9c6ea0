"""The cache: one contract run over memory and Redis, then each backend's own behaviour."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.fakes import FakeClock
from tests.services import RedisServer
from unity.config import Settings
from unity.core.cache import Cache, CacheTTL, MemoryCache, create_cache
from unity.core.cache.redis import RedisCache


@dataclass
class Backend:
    cache: Cache
    outlive: Callable[[str, float], Awaitable[None]]
    """Let the entry ``key`` stored with ``ttl_s`` expire."""


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.external_service)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = FakeClock()

        async def advance(_key: str, ttl_s: float) -> None:
            clock.advance(ttl_s)

        memory = MemoryCache(clock=clock)
        yield Backend(memory, advance)
        await memory.close()
        return

    url: str = request.getfixturevalue("redis_url")
    plain = Redis.from_url(url)

    async def wait_gone(key: str, _ttl_s: float) -> None:
        # Real time is unavoidable for Redis expiry: poll until the server drops the key.
        deadline = time.monotonic() + 2.0
        while await plain.exists("unity:" + key):
            assert time.monotonic() < deadline, f"{key} still in Redis after 2 s"
            await asyncio.sleep(0.02)

    cache = RedisCache(url)
    yield Backend(cache, wait_gone)
    await cache.close()
    await plain.aclose()


@pytest.fixture
async def plain_redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client that talks to Redis directly, to see what the cache really wrote."""
    # One retry lets it reconnect on its own after a test restarts the server.
    client = Redis.from_url(redis_url, retry=Retry(NoBackoff(), 1))
    yield client
    await client.aclose()


async def stored(client: Redis, key: str) -> Any:
    """The value the cache wrote under the raw Redis ``key``."""
    raw = await client.get(key)
    assert raw is not None, f"{key} is not in Redis"
    return orjson.loads(raw)


class Counter:
    """A factory that counts its calls."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        return self.value


# --- the contract ------------------------------------------------------------------------

JSON_VALUES: list[Any] = [
    {"cpu": 12.5, "mounts": [{"path": "/", "used": 1 << 40}], "ok": True, "note": None},
    [1, "two", 3.0, False, None, [], {}],
    "plain text",
    "ünïcødé ✓ 日本",
    "",
    0,
    -7,
    2**53,
    3.25,
    True,
    False,
]


async def test_every_json_type_round_trips(backend: Backend) -> None:
    for index, value in enumerate(JSON_VALUES):
        await backend.cache.set(f"value:{index}", value, ttl_s=60)
    for index, value in enumerate(JSON_VALUES):
        got = await backend.cache.get(f"value:{index}")
        assert got == value
        assert type(got) is type(value)


async def test_missing_key_reads_as_none(backend: Backend) -> None:
    assert await backend.cache.get("never:set") is None


async def test_entry_expires_after_its_ttl_and_others_stay(backend: Backend) -> None:
    await backend.cache.set("short", "soon gone", ttl_s=0.2)
    await backend.cache.set("long", "still here", ttl_s=60)

    await backend.outlive("short", 0.2)

    assert await backend.cache.get("short") is None
    assert await backend.cache.get("long") == "still here"


async def test_set_again_replaces_value_and_ttl(backend: Backend) -> None:
    await backend.cache.set("key", "old", ttl_s=0.2)
    await backend.cache.set("key", "new", ttl_s=60)
    await backend.cache.set("probe", 1, ttl_s=0.2)

    await backend.outlive("probe", 0.2)

    assert await backend.cache.get("key") == "new"


async def test_zero_ttl_means_not_cached(backend: Backend) -> None:
    await backend.cache.set("key", "cached", ttl_s=60)
    await backend.cache.set("key", "uncached", ttl_s=0)
    assert await backend.cache.get("key") is None

    factory = Counter({"fresh": True})
    assert await backend.cache.get_or_set("computed", 0, factory) == {"fresh": True}
    assert await backend.cache.get_or_set("computed", 0, factory) == {"fresh": True}
    assert factory.calls == 2


async def test_delete_removes_only_the_given_keys(backend: Backend) -> None:
    for key in ("a", "b", "c"):
        await backend.cache.set(key, key, ttl_s=60)

    await backend.cache.delete("a", "b", "not-there")
    await backend.cache.delete()

    assert await backend.cache.get("a") is None
    assert await backend.cache.get("b") is None
    assert await backend.cache.get("c") == "c"


async def test_delete_prefix_invalidates_one_family(backend: Backend) -> None:
    family = ["plugin:system_info:latest", "plugin:system_info:status"]
    others = ["plugin:system_info_extra:latest", "plugin:docker:latest", "dashboard"]
    for key in family + others:
        await backend.cache.set(key, key, ttl_s=60)

    await backend.cache.delete_prefix("plugin:system_info:")

    for key in family:
        assert await backend.cache.get(key) is None
    for key in others:
        assert await backend.cache.get(key) == key


async def test_delete_prefix_treats_glob_characters_literally(backend: Backend) -> None:
    await backend.cache.set("a*:1", 1, ttl_s=60)
    await backend.cache.set("ab:1", 2, ttl_s=60)
    await backend.cache.set("x[1]?:1", 3, ttl_s=60)
    await backend.cache.set("x1z:1", 4, ttl_s=60)
    await backend.cache.set("back\\slash:1", 5, ttl_s=60)
    await backend.cache.set("backslash:1", 6, ttl_s=60)

    await backend.cache.delete_prefix("a*:")
    await backend.cache.delete_prefix("x[1]?:")
    await backend.cache.delete_prefix("back\\s")

    assert [await backend.cache.get(k) for k in ("a*:1", "x[1]?:1", "back\\slash:1")] == [
        None,
        None,
        None,
    ]
    assert [await backend.cache.get(k) for k in ("ab:1", "x1z:1", "backslash:1")] == [2, 4, 6]


async def test_empty_prefix_is_refused_instead_of_clearing_everything(backend: Backend) -> None:
    await backend.cache.set("key", 1, ttl_s=60)

    with pytest.raises(ValueError, match="prefix"):
        await backend.cache.delete_prefix("")

    assert await backend.cache.get("key") == 1


async def test_get_or_set_calls_the_factory_once(backend: Backend) -> None:
    factory = Counter({"rows": [1, 2, 3]})

    first = await backend.cache.get_or_set("dashboard", 60, factory)
    second = await backend.cache.get_or_set("dashboard", 60, factory)

    assert first == second == {"rows": [1, 2, 3]}
    assert factory.calls == 1
    assert await backend.cache.get("dashboard") == {"rows": [1, 2, 3]}


async def test_get_or_set_encoded_answers_the_stored_json_bytes(backend: Backend) -> None:
    value = {"plugin_id": "system_info", "health": "healthy", "errors": 0, "note": "ünï"}
    factory = Counter(value)

    first = await backend.cache.get_or_set_encoded("status", 60, factory)
    second = await backend.cache.get_or_set_encoded("status", 60, factory)

    assert isinstance(first, bytes)
    assert first == second
    assert orjson.loads(first) == value
    assert factory.calls == 1
    # The same entry serves get() and get_or_set() as values.
    assert await backend.cache.get("status") == value
    assert await backend.cache.get_or_set("status", 60, factory) == value
    assert factory.calls == 1


async def test_get_or_set_calls_the_factory_again_after_expiry(backend: Backend) -> None:
    factory = Counter("value")
    await backend.cache.get_or_set("status", 0.2, factory)

    await backend.outlive("status", 0.2)

    await backend.cache.get_or_set("status", 0.2, factory)
    assert factory.calls == 2


async def test_get_or_set_caches_a_none_result(backend: Backend) -> None:
    factory = Counter(None)

    assert await backend.cache.get_or_set("nothing", 60, factory) is None
    assert await backend.cache.get_or_set("nothing", 60, factory) is None
    assert factory.calls == 1


async def test_concurrent_misses_share_one_factory_call(backend: Backend) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def slow_query() -> dict[str, int]:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return {"total": 42}

    callers = [
        asyncio.create_task(backend.cache.get_or_set("expensive", 60, slow_query)) for _ in range(5)
    ]
    await started.wait()
    release.set()

    assert await asyncio.gather(*callers) == [{"total": 42}] * 5
    assert calls == 1


async def test_factory_error_propagates_and_nothing_is_stored(backend: Backend) -> None:
    async def broken() -> Any:
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError, match="database down"):
        await backend.cache.get_or_set("key", 60, broken)

    assert await backend.cache.get_or_set("key", 60, Counter("recovered")) == "recovered"


async def test_returned_values_are_independent_copies(backend: Backend) -> None:
    original = {"items": [1, 2]}
    await backend.cache.set("key", original, ttl_s=60)
    original["items"].append(3)

    first = await backend.cache.get("key")
    assert isinstance(first, dict)
    first["items"].append(99)
    computed = await backend.cache.get_or_set("other", 60, Counter({"items": [1]}))
    computed["items"].append(99)

    assert await backend.cache.get("key") == {"items": [1, 2]}
    assert await backend.cache.get("other") == {"items": [1]}


async def test_unserializable_value_is_rejected(backend: Backend) -> None:
    with pytest.raises(TypeError):
        await backend.cache.set("key", object(), ttl_s=60)
    assert await backend.cache.get("key") is None


async def test_stats_count_hits_and_misses(backend: Backend) -> None:
    cache = backend.cache
    await cache.get("missing")
    await cache.set("present", 1, ttl_s=60)
    await cache.get("present")
    await cache.get_or_set("present", 60, Counter(2))
    await cache.get_or_set("computed", 60, Counter(3))

    stats = cache.stats
    assert (stats.hits, stats.misses, stats.errors) == (2, 2, 0)
    assert stats.backend == ("memory" if isinstance(cache, MemoryCache) else "redis")


# --- memory ------------------------------------------------------------------------------


async def test_memory_evicts_the_least_recently_used_entry() -> None:
    cache = MemoryCache(max_entries=2)
    await cache.set("a", 1, ttl_s=60)
    await cache.set("b", 2, ttl_s=60)
    await cache.get("a")  # "a" is now more recent than "b"

    await cache.set("c", 3, ttl_s=60)

    assert await cache.get("b") is None
    assert await cache.get("a") == 1
    assert await cache.get("c") == 3
    assert len(cache) == 2


async def test_memory_sweep_frees_expired_entries_nobody_reads() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock=clock, sweep_interval_s=60)
    for index in range(100):
        await cache.set(f"short:{index}", index, ttl_s=1)
    await cache.set("long", "kept", ttl_s=3600)

    clock.advance(61)
    await cache.set("trigger", 1, ttl_s=60)

    assert len(cache) == 2
    assert await cache.get("long") == "kept"


# --- redis -------------------------------------------------------------------------------


@pytest.mark.external_service
async def test_redis_entries_are_shared_between_processes(
    redis_url: str, plain_redis: Redis
) -> None:
    writer, reader = RedisCache(redis_url), RedisCache(redis_url)
    try:
        await writer.set("plugin:disk:latest", {"used": 0.5}, ttl_s=30)

        assert await reader.get("plugin:disk:latest") == {"used": 0.5}
        assert await stored(plain_redis, "unity:plugin:disk:latest") == {"used": 0.5}
        assert 0 < await plain_redis.pttl("unity:plugin:disk:latest") <= 30_000

        await reader.delete_prefix("plugin:disk:")
        assert await writer.get("plugin:disk:latest") is None
    finally:
        await writer.close()
        await reader.close()


@pytest.mark.external_service
async def test_redis_delete_prefix_clears_a_large_family(
    redis_url: str, plain_redis: Redis
) -> None:
    async with plain_redis.pipeline(transaction=False) as pipe:
        for index in range(2_500):
            pipe.set(f"unity:series:{index}", b"1")
        pipe.set("unity:seriesX", b"1")
        pipe.set("series:0", b"1")  # outside the namespace
        await pipe.execute()
    cache = RedisCache(redis_url)
    try:
        await cache.delete_prefix("series:")
    finally:
        await cache.close()

    assert sorted([key async for key in plain_redis.scan_iter(count=1000)]) == [
        b"series:0",
        b"unity:seriesX",
    ]


@pytest.mark.external_service
async def test_redis_outage_is_served_from_memory_and_recovery_drops_stale_entries(
    redis_server: RedisServer, plain_redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    cache = RedisCache(redis_server.url, retry_interval_s=5.0, clock=clock)
    caplog.set_level(logging.INFO, logger="unity.core.cache.redis")
    try:
        await cache.set("plugin:a:latest", {"v": 1}, ttl_s=60)
        assert await plain_redis.exists("unity:plugin:a:latest")

        await asyncio.to_thread(redis_server.stop)

        # Callers see a working cache, backed by memory.
        assert await cache.get("plugin:a:latest") is None
        await cache.set("plugin:b:latest", {"v": 2}, ttl_s=60)
        assert await cache.get("plugin:b:latest") == {"v": 2}
        assert await cache.get_or_set("plugin:c:latest", 60, Counter(3)) == 3
        await cache.delete_prefix("plugin:a:")  # an invalidation Redis never sees
        # Redis was tried once, then bypassed: no connect attempt per call.
        assert (cache.stats.errors, cache.stats.backend) == (1, "redis-fallback")

        # Retried after the interval while still down: one more error, still memory.
        clock.advance(5.0)
        assert await cache.get("plugin:b:latest") == {"v": 2}
        assert (cache.stats.errors, cache.stats.backend) == (2, "redis-fallback")

        await asyncio.to_thread(redis_server.start)
        # The test server keeps no data across restarts; put back what a persistent Redis
        # would still hold from before the outage, plus a key of another application.
        await plain_redis.set("unity:plugin:a:latest", orjson.dumps({"v": "stale"}))
        await plain_redis.set("other-app:key", b"keep")

        # Within the retry interval Redis stays bypassed.
        await cache.set("plugin:d:latest", 4, ttl_s=60)
        assert not await plain_redis.exists("unity:plugin:d:latest")

        clock.advance(5.0)
        await cache.set("plugin:e:latest", 5, ttl_s=60)

        assert await stored(plain_redis, "unity:plugin:e:latest") == 5
        assert await cache.get("plugin:a:latest") is None  # stale pre-outage entry is gone
        assert await plain_redis.get("other-app:key") == b"keep"
        assert (cache.stats.errors, cache.stats.backend) == (2, "redis")

        # A second outage starts from an empty memory cache, not from the first outage's
        # entries, which missed every invalidation made while Redis was back.
        await asyncio.to_thread(redis_server.stop)
        assert await cache.get("plugin:b:latest") is None
        assert (cache.stats.errors, cache.stats.backend) == (3, "redis-fallback")
    finally:
        await cache.close()

    transitions = [r.levelno for r in caplog.records if r.name == "unity.core.cache.redis"]
    assert transitions == [logging.WARNING, logging.INFO, logging.WARNING]


async def test_unreachable_redis_never_reaches_callers() -> None:
    with socket.socket() as sock:
        # Bound but not listening: every connection attempt is refused.
        sock.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
        cache = RedisCache(url, retry_interval_s=60)
        factory = Counter({"from": "database"})
        try:
            assert await cache.get_or_set("key", 60, factory) == {"from": "database"}
            assert await cache.get_or_set("key", 60, factory) == {"from": "database"}
            await cache.delete("key")
            assert await cache.get("key") is None
        finally:
            await cache.close()

    assert factory.calls == 1
    assert (cache.stats.errors, cache.stats.backend) == (1, "redis-fallback")


def test_redis_cache_refuses_an_empty_namespace() -> None:
    with pytest.raises(ValueError, match="namespace"):
        RedisCache("redis://127.0.0.1:6379/0", namespace="")


# --- construction from settings ----------------------------------------------------------


async def test_create_cache_uses_memory_without_redis_url() -> None:
    cache = create_cache(Settings(redis_url=None))
    try:
        assert isinstance(cache, MemoryCache)
        assert cache.stats.backend == "memory"
    finally:
        await cache.close()


@pytest.mark.external_service
async def test_create_cache_uses_redis_when_configured(redis_url: str, plain_redis: Redis) -> None:
    cache = create_cache(Settings(redis_url=redis_url))
    try:
        assert isinstance(cache, RedisCache)
        await cache.set("k", "v", ttl_s=60)
        assert await plain_redis.get("unity:k") == b'"v"'
    finally:
        await cache.close()


def test_cache_ttls_come_from_settings() -> None:
    assert CacheTTL.from_settings(Settings()) == CacheTTL(latest_s=300, dashboard_s=60, status_s=30)
    custom = CacheTTL.from_settings(
        Settings(cache_ttl_latest_s=120, cache_ttl_dashboard_s=10, cache_ttl_status_s=0)
    )
    assert (custom.latest_s, custom.dashboard_s, custom.status_s) == (120, 10, 0)
