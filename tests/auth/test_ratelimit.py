"""Per-key rate limiting: 429s, header fields, exact admission, exclusions, brute force, Redis outages.

The key service is replaced by a dict of known secrets; windows live in memory or in the
suite's private Redis, which one test stops and starts again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse

from tests.fakes import FakeClock
from tests.services import RedisServer, free_port
from unity.auth.principal import Principal, RateLimits, Unauthorized
from unity.auth.ratelimit import RateLimiter, RateLimitMiddleware
from unity.errors import ConfigError, DatabaseError

QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
ABNORMAL_USAGE = "https://iana.org/assignments/http-problem-types#abnormal-usage-detected"


class Keys:
    """Stands in for the key service: known secrets map to principals, anything else is refused."""

    def __init__(self, **limits: RateLimits) -> None:
        self.principals = {
            f"unity_{name}": Principal(
                key_id=uuid.uuid4(),
                name=name,
                tenant_id="default",
                scopes=frozenset({"metrics:read"}),
                limits=value,
            )
            for name, value in limits.items()
        }
        self.calls = 0

    async def authenticate(self, secret: str) -> Principal:
        self.calls += 1
        try:
            return self.principals[secret]
        except KeyError:
            raise Unauthorized("unknown API key") from None


def make_app(limiter: RateLimiter, keys: Keys) -> FastAPI:
    app = FastAPI()

    @app.get("/api/whoami")
    async def whoami(request: Request) -> JSONResponse:
        principal = getattr(request.state, "principal", None)
        if principal is None:
            error = getattr(request.state, "auth_error", None)
            detail = error.detail if isinstance(error, Unauthorized) else "no API key"
            return JSONResponse({"detail": detail}, status_code=401)
        return JSONResponse({"name": principal.name})

    @app.get("/api/public")
    async def public() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.websocket("/ws/echo")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    app.add_middleware(RateLimitMiddleware, limiter=limiter, authenticate=keys.authenticate)
    return app


@asynccontextmanager
async def open_limiter(**options: Any) -> AsyncIterator[RateLimiter]:
    limiter = RateLimiter(**options)
    try:
        yield limiter
    finally:
        await limiter.aclose()


@asynccontextmanager
async def in_process(
    app: FastAPI, client: tuple[str, int] = ("192.0.2.10", 50000)
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://unity.test") as http:
        yield http


@asynccontextmanager
async def live(app: FastAPI) -> AsyncIterator[int]:
    """``app`` served by uvicorn on a free loopback port; yields the port."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="off", ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server exited during start-up")
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


def key(name: str) -> dict[str, str]:
    return {"X-API-Key": f"unity_{name}"}


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.external_service)])
def storage_url(request: pytest.FixtureRequest) -> str | None:
    """Where key windows live: this process's memory, or the suite's private Redis."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


async def test_requests_over_the_limit_get_429_problem_with_retry_after(
    storage_url: str | None,
) -> None:
    keys = Keys(a=RateLimits(per_minute=3))
    async with (
        open_limiter(storage_url=storage_url) as limiter,
        in_process(make_app(limiter, keys)) as http,
    ):
        statuses = [(await http.get("/api/whoami", headers=key("a"))).status_code for _ in range(3)]
        refused = await http.get("/api/whoami", headers=key("a"))

    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    body = refused.json()
    assert body["status"] == 429
    assert body["type"] == QUOTA_EXCEEDED
    assert body["violated-policies"] == ["minute"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert re.fullmatch(r'"minute";r=0;t=\d+', refused.headers["ratelimit"])
    assert limiter.stats.limited == 1
    assert limiter.stats.allowed == 3


async def test_allowed_responses_carry_rate_limit_fields(storage_url: str | None) -> None:
    keys = Keys(a=RateLimits(per_minute=60, per_hour=1000))
    async with (
        open_limiter(storage_url=storage_url) as limiter,
        in_process(make_app(limiter, keys)) as http,
    ):
        before = time.time()
        first = await http.get("/api/whoami", headers=key("a"))
        second = await http.get("/api/whoami", headers={"Authorization": "Bearer unity_a"})

    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit"] == "60"
    assert first.headers["x-ratelimit-remaining"] == "59"
    assert before + 59 <= int(first.headers["x-ratelimit-reset"]) <= time.time() + 61
    assert first.headers["ratelimit-policy"] == '"minute";q=60;w=60, "hour";q=1000;w=3600'
    fields = re.fullmatch(
        r'"minute";r=59;t=(\d+), "hour";r=999;t=(\d+)', first.headers["ratelimit"]
    )
    assert fields is not None
    assert 59 <= int(fields[1]) <= 60
    assert 3599 <= int(fields[2]) <= 3600
    assert "retry-after" not in first.headers
    assert second.headers["x-ratelimit-remaining"] == "58"


async def test_the_tightest_window_is_reported_and_a_refusal_charges_no_other_window() -> None:
    keys = Keys(a=RateLimits(per_minute=5, per_hour=2))
    async with open_limiter() as limiter, in_process(make_app(limiter, keys)) as http:
        first = await http.get("/api/whoami", headers=key("a"))
        await http.get("/api/whoami", headers=key("a"))
        refusals = [await http.get("/api/whoami", headers=key("a")) for _ in range(3)]

    # The hour allows fewer requests than the minute, so it is the window reported.
    assert first.headers["x-ratelimit-limit"] == "2"
    assert first.headers["x-ratelimit-remaining"] == "1"
    assert [r.status_code for r in refusals] == [429, 429, 429]
    assert refusals[-1].json()["violated-policies"] == ["hour"]
    # Refused requests did not use up the minute window.
    assert re.match(r'"minute";r=3;t=\d+, "hour";r=0;t=\d+$', refusals[-1].headers["ratelimit"])


async def test_exactly_the_limit_is_admitted_among_concurrent_requests(
    storage_url: str | None,
) -> None:
    keys = Keys(a=RateLimits(per_minute=50))
    async with (
        open_limiter(storage_url=storage_url) as limiter,
        live(make_app(limiter, keys)) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
    ):
        responses = await asyncio.gather(
            *(http.get("/api/whoami", headers=key("a")) for _ in range(100))
        )

    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 50
    assert statuses.count(429) == 50


async def test_one_key_exhausting_its_limit_leaves_another_unaffected(
    storage_url: str | None,
) -> None:
    keys = Keys(a=RateLimits(per_minute=2), b=RateLimits(per_minute=2))
    async with (
        open_limiter(storage_url=storage_url) as limiter,
        in_process(make_app(limiter, keys)) as http,
    ):
        a = [(await http.get("/api/whoami", headers=key("a"))).status_code for _ in range(3)]
        b = await http.get("/api/whoami", headers=key("b"))

    assert a == [200, 200, 429]
    assert b.status_code == 200
    assert b.json() == {"name": "b"}
    assert b.headers["x-ratelimit-remaining"] == "1"


async def test_excluded_paths_and_websockets_are_never_limited() -> None:
    keys = Keys(a=RateLimits(per_minute=1))
    async with (
        open_limiter() as limiter,
        live(make_app(limiter, keys)) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        assert (await http.get("/api/whoami", headers=key("a"))).status_code == 200
        assert (await http.get("/api/whoami", headers=key("a"))).status_code == 429
        health = [await http.get("/health", headers=key("a")) for _ in range(3)]
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/ws/echo", additional_headers=key("a")
        ) as ws:
            await ws.send("hello")
            echoed = await ws.recv()

    assert [r.status_code for r in health] == [200, 200, 200]
    assert all("x-ratelimit-limit" not in r.headers for r in health)
    assert echoed == "hello"


async def test_requests_without_a_key_pass_unlimited() -> None:
    keys = Keys(a=RateLimits(per_minute=1))
    async with open_limiter() as limiter, in_process(make_app(limiter, keys)) as http:
        responses = [await http.get("/api/public") for _ in range(5)]

    assert [r.status_code for r in responses] == [200] * 5
    assert all("ratelimit" not in r.headers for r in responses)
    assert keys.calls == 0


async def test_the_route_receives_the_principal_without_authenticating_again() -> None:
    keys = Keys(a=RateLimits(per_minute=10))
    async with open_limiter() as limiter, in_process(make_app(limiter, keys)) as http:
        ok = await http.get("/api/whoami", headers=key("a"))
        bad = await http.get("/api/whoami", headers=key("nobody"))

    assert ok.json() == {"name": "a"}
    assert bad.status_code == 401
    assert bad.json() == {"detail": "unknown API key"}
    assert keys.calls == 2


async def test_default_limits_apply_to_windows_a_key_leaves_unset() -> None:
    keys = Keys(a=RateLimits(per_hour=100), unlimited=RateLimits())
    async with (
        open_limiter(default_limits=RateLimits(per_minute=2)) as limiter,
        in_process(make_app(limiter, keys)) as http,
    ):
        a = [(await http.get("/api/whoami", headers=key("a"))).status_code for _ in range(3)]
    async with open_limiter() as limiter, in_process(make_app(limiter, keys)) as http:
        free = [await http.get("/api/whoami", headers=key("unlimited")) for _ in range(5)]

    assert a == [200, 200, 429]
    assert [r.status_code for r in free] == [200] * 5
    assert all("ratelimit" not in r.headers for r in free)


async def test_repeated_invalid_keys_block_the_address_before_authentication() -> None:
    keys = Keys(a=RateLimits(per_minute=100))
    async with open_limiter(failed_auth_per_minute=3) as limiter:
        app = make_app(limiter, keys)
        async with in_process(app, client=("198.51.100.7", 4000)) as attacker:
            guesses = [
                await attacker.get("/api/whoami", headers=key(f"guess{i}")) for i in range(5)
            ]
            valid_from_same_address = await attacker.get("/api/whoami", headers=key("a"))
            lookups = keys.calls
        async with in_process(app, client=("203.0.113.9", 4000)) as neighbour:
            elsewhere = await neighbour.get("/api/whoami", headers=key("a"))

    assert [g.status_code for g in guesses] == [401, 401, 401, 429, 429]
    blocked = guesses[-1]
    assert blocked.headers["content-type"] == "application/problem+json"
    assert blocked.json()["type"] == ABNORMAL_USAGE
    assert blocked.json()["violated-policies"] == ["failed-auth"]
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
    assert blocked.headers["ratelimit-policy"] == '"failed-auth";q=3;w=60'
    # Blocked before the key is even looked up, valid or not.
    assert valid_from_same_address.status_code == 429
    assert lookups == 3
    assert elsewhere.status_code == 200
    assert limiter.stats.auth_failures == 3
    assert limiter.stats.auth_failures_limited == 3


async def test_a_failing_key_store_neither_refuses_nor_blocks_the_address() -> None:
    async def broken_store(secret: str) -> Principal:
        raise DatabaseError("database is unreachable")

    async with open_limiter(failed_auth_per_minute=2) as limiter:
        app = FastAPI()

        @app.get("/api/whoami")
        async def whoami(request: Request) -> JSONResponse:
            # What the route's own authentication does when the key store is down.
            return JSONResponse({"detail": "database is unreachable"}, status_code=503)

        app.add_middleware(RateLimitMiddleware, limiter=limiter, authenticate=broken_store)
        async with in_process(app) as http:
            responses = [await http.get("/api/whoami", headers=key("a")) for _ in range(4)]

    assert [r.status_code for r in responses] == [503] * 4
    assert limiter.stats.auth_failures == 0


@pytest.mark.external_service
async def test_a_redis_outage_fails_open_but_keeps_brute_force_blocked(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="unity.auth.ratelimit")
    clock = FakeClock()
    keys = Keys(a=RateLimits(per_minute=3))
    async with open_limiter(
        storage_url=redis_server.url, failed_auth_per_minute=2, retry_interval_s=5.0, clock=clock
    ) as limiter:
        app = make_app(limiter, keys)
        async with in_process(app) as http:
            assert (await http.get("/api/whoami", headers=key("a"))).status_code == 200

            await asyncio.to_thread(redis_server.stop)
            during = [await http.get("/api/whoami", headers=key("a")) for _ in range(5)]
            outage = limiter.stats
            async with in_process(app, client=("198.51.100.7", 4000)) as attacker:
                guesses = [
                    await attacker.get("/api/whoami", headers=key(f"guess{i}")) for i in range(3)
                ]

            await asyncio.to_thread(redis_server.start)
            # Within the retry interval Redis is not asked again, even though it is back.
            still_open = await http.get("/api/whoami", headers=key("a"))
            clock.advance(5.0)
            after = [await http.get("/api/whoami", headers=key("a")) for _ in range(4)]
            recovered = limiter.stats

    assert [r.status_code for r in during] == [200] * 5
    assert all("ratelimit" not in r.headers for r in during)
    assert outage.failed_open == 5
    assert outage.backend == "redis-unavailable"
    assert [g.status_code for g in guesses] == [401, 401, 429]
    assert still_open.status_code == 200
    assert "ratelimit" not in still_open.headers
    # The restarted Redis (no persistence) starts the minute afresh: three more, then 429.
    assert [r.status_code for r in after] == [200, 200, 200, 429]
    assert after[0].headers["x-ratelimit-remaining"] == "2"
    assert recovered.backend == "redis"
    assert recovered.failed_open == 6
    messages = [r.getMessage() for r in caplog.records if r.name == "unity.auth.ratelimit"]
    assert sum("unavailable" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1


def test_a_storage_url_that_is_not_redis_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="not a Redis URL"):
        RateLimiter(storage_url="memcached://127.0.0.1:11211")
