"""Per-key rate limits: a pure ASGI middleware over the ``limits`` library (moving window).

For every HTTP request outside the excluded paths that presents a key
(``Authorization: Bearer …`` or ``X-API-Key``), :class:`RateLimitMiddleware`:

1. refuses with 429 at once when the client address has had too many keys rejected in
   the last minute (brute force), before the key is even looked up;
2. authenticates the key; a rejected key is counted against the client address and the
   request goes on, so that the route answers 401 with its own message;
3. charges the key's per-minute, per-hour and per-day windows and answers 429 when one is
   exhausted, or passes the request on with the rate-limit header fields added.

Requests without a key, WebSocket connections and the excluded paths are not limited.

Windows are moving windows in Redis when a URL is given (shared by every API process),
in memory otherwise. Admission is exact under concurrency: each window's ``hit`` is one
atomic check-and-add (a Lua script in Redis; a critical section without an ``await`` in
memory). The windows are charged shortest first, after a read of all of them, so that a
request refused by one window consumes nothing elsewhere, except when concurrent
requests race for a window's last unit.

In memory, windows live in :class:`MovingWindowMemory`, a storage for ``limits``' own
moving-window strategy that keeps each window's hits in a deque (constant time per hit);
``limits``' ``MemoryStorage`` prepends every hit to a list and starts an expiry task per
hit, which cost a millisecond per request under load.

When Redis is unreachable, key limits fail open: requests pass unlimited (counted in
``stats.failed_open``), a warning is logged once and one line on recovery, and Redis is
tried again after ``retry_interval_s``, not on every request. Failed authentications are
always counted in this process's memory, so brute force stays blocked during an outage.

Header fields follow draft-ietf-httpapi-ratelimit-headers-10 (the structured-field syntax
unchanged since -08): ``RateLimit-Policy: "minute";q=60;w=60, "hour";q=1000;w=3600`` and
``RateLimit: "minute";r=59;t=60, "hour";r=999;t=3600``, where ``t`` is the number of
seconds until the window frees a unit. ``X-RateLimit-Limit``/``-Remaining``/``-Reset``
describe the tightest window, ``-Reset`` as Unix epoch seconds (GitHub's convention).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerHour, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import ConfigurationError, StorageError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from unity.auth.principal import Principal, RateLimits, Unauthorized
from unity.core.clock import Clock, SystemClock
from unity.errors import ConfigError, UnityError, problem

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool

__all__ = [
    "AUTH_ERROR_STATE_KEY",
    "DEFAULT_EXCLUDED_PATHS",
    "PRINCIPAL_STATE_KEY",
    "MovingWindowMemory",
    "RateLimitMiddleware",
    "RateLimitStats",
    "RateLimiter",
    "Verdict",
    "WindowState",
    "presented_key",
]

PRINCIPAL_STATE_KEY = "principal"
"""``scope["state"]`` key (``request.state.principal``) of the authenticated :class:`Principal`."""
AUTH_ERROR_STATE_KEY = "auth_error"
"""``scope["state"]`` key of the :class:`Unauthorized` raised for the presented key."""
DEFAULT_EXCLUDED_PATHS = ("/health", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")

QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
ABNORMAL_USAGE = "https://iana.org/assignments/http-problem-types#abnormal-usage-detected"
FAILED_AUTH_POLICY = "failed-auth"

Backend = Literal["memory", "redis", "redis-unavailable"]
Authenticate = Callable[[str], Awaitable[Principal]]

# (policy name, RateLimits field, window in seconds, limits item class), shortest first:
# the order in which windows are charged.
_WINDOWS: tuple[tuple[str, str, int, type[RateLimitItem]], ...] = (
    ("minute", "per_minute", 60, RateLimitItemPerMinute),
    ("hour", "per_hour", 3600, RateLimitItemPerHour),
    ("day", "per_day", 86400, RateLimitItemPerDay),
)
_NAMESPACE = "unity"


@dataclass(frozen=True, slots=True)
class RateLimitStats:
    """Counters since start (a snapshot; read ``RateLimiter.stats`` again for new values)."""

    allowed: int
    """Requests admitted after their key's windows were checked (or the key has no limits)."""
    limited: int
    """Requests refused with 429 because a window of their key was exhausted."""
    failed_open: int
    """Requests admitted unchecked because the Redis storage was unreachable."""
    auth_failures: int
    """Requests whose key was rejected (counted per client address)."""
    auth_failures_limited: int
    """Requests refused with 429 because their address had too many keys rejected."""
    backend: Backend
    """Where key windows live right now; ``redis-unavailable`` while failing open."""


@dataclass(frozen=True, slots=True)
class WindowState:
    """One quota policy as seen by one request."""

    name: str
    quota: int
    window_s: int
    remaining: int
    reset_at: float
    """Unix time at which the window frees a unit."""

    def reset_in(self, now: float) -> int:
        """Whole seconds from ``now`` until the window frees a unit (never negative)."""
        return max(0, math.ceil(self.reset_at - now))


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a request may proceed, and the windows to report in its response."""

    allowed: bool
    windows: tuple[WindowState, ...] = ()
    """Empty when nothing was checked (no limits, or failing open)."""
    violated: tuple[str, ...] = ()

    def retry_after(self, now: float) -> int:
        """Seconds until every violated window frees a unit (at least 1)."""
        waits = [w.reset_in(now) for w in self.windows if w.name in self.violated]
        return max([1, *waits])

    def headers(self, now: float) -> list[tuple[str, str]]:
        """``X-RateLimit-*``, ``RateLimit-Policy``, ``RateLimit`` (and ``Retry-After`` if refused)."""
        if not self.windows:
            return []
        tightest = min(self.windows, key=lambda w: (w.remaining, -w.reset_at))
        headers = [
            ("X-RateLimit-Limit", str(tightest.quota)),
            ("X-RateLimit-Remaining", str(tightest.remaining)),
            ("X-RateLimit-Reset", str(math.ceil(tightest.reset_at))),
            (
                "RateLimit-Policy",
                ", ".join(f'"{w.name}";q={w.quota};w={w.window_s}' for w in self.windows),
            ),
            (
                "RateLimit",
                ", ".join(f'"{w.name}";r={w.remaining};t={w.reset_in(now)}' for w in self.windows),
            ),
        ]
        if not self.allowed:
            headers.append(("Retry-After", str(self.retry_after(now))))
        return headers

    def raw_headers(self, now: float) -> list[tuple[bytes, bytes]]:
        """:meth:`headers` as ASGI header pairs (lowercase names, Latin-1 bytes).

        Built directly rather than from :meth:`headers`: it runs on every limited response.
        """
        if not self.allowed:
            return [
                (n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in self.headers(now)
            ]
        if not self.windows:
            return []
        tightest = min(self.windows, key=lambda w: (w.remaining, -w.reset_at))
        policy = ", ".join([f'"{w.name}";q={w.quota};w={w.window_s}' for w in self.windows])
        state = ", ".join([f'"{w.name}";r={w.remaining};t={w.reset_in(now)}' for w in self.windows])
        return [
            (b"x-ratelimit-limit", b"%d" % tightest.quota),
            (b"x-ratelimit-remaining", b"%d" % tightest.remaining),
            (b"x-ratelimit-reset", b"%d" % math.ceil(tightest.reset_at)),
            (b"ratelimit-policy", policy.encode("latin-1")),
            (b"ratelimit", state.encode("latin-1")),
        ]


class _Window:
    """The hits of one key within its window, oldest first."""

    __slots__ = ("expiry", "hits")

    def __init__(self, expiry: int) -> None:
        self.expiry = expiry
        self.hits: deque[float] = deque()

    def prune(self, now: float) -> None:
        cutoff = now - self.expiry
        hits = self.hits
        while hits and hits[0] <= cutoff:
            hits.popleft()


class MovingWindowMemory(MemoryStorage):
    """In-process storage for ``limits``' moving-window strategy, in constant time per hit.

    Each key (one window of one identity) keeps the times of its hits in a deque, oldest
    first: a hit appends, a read drops what left the window. A window never holds more
    than its limit, so memory is bounded by the limits in use; keys idle for longer than
    their window are swept at most once a minute. No operation awaits anything, so each is
    atomic on the event loop. Only the moving-window methods are provided.
    """

    SWEEP_INTERVAL_S = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._windows: dict[str, _Window] = {}
        self._next_sweep = time.time() + self.SWEEP_INTERVAL_S

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Add ``amount`` hits at once if the window then holds at most ``limit``."""
        return self.add(key, limit, expiry, amount, time.time())

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """The time of the oldest hit in the window (now when empty) and how many it holds."""
        return self.window(key, time.time())

    def add(self, key: str, limit: int, expiry: int, amount: int, now: float) -> bool:
        """:meth:`acquire_entry` without the coroutine, at ``now`` (Unix time)."""
        if amount > limit:
            return False
        window = self._window(key, expiry, now)
        if len(window.hits) + amount > limit:
            return False
        window.hits.extend([now] * amount)
        return True

    def window(self, key: str, now: float) -> tuple[float, int]:
        """:meth:`get_moving_window` without the coroutine, at ``now`` (Unix time)."""
        window = self._windows.get(key)
        if window is None:
            return now, 0
        window.prune(now)
        hits = window.hits
        return (hits[0], len(hits)) if hits else (now, 0)

    async def clear(self, key: str) -> None:
        """Forget the hits of ``key``."""
        self._windows.pop(key, None)
        await super().clear(key)

    async def reset(self) -> int | None:
        """Forget every window."""
        self._windows.clear()
        return await super().reset()

    def _window(self, key: str, expiry: int, now: float) -> _Window:
        if now >= self._next_sweep:
            self._sweep(now)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(expiry)
        else:
            window.prune(now)
        return window

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self.SWEEP_INTERVAL_S
        idle = [k for k, w in self._windows.items() if not w.hits or w.hits[-1] <= now - w.expiry]
        for key in idle:
            del self._windows[key]


_ADMITTED = Verdict(allowed=True)
"""Admitted with nothing checked (no limits, failing open, no failed authentication)."""


class RateLimiter:
    """Moving-window limits per API key and per client address for failed authentication.

    Nothing connects at construction: the Redis client connects on first use, so one can
    be built before the event loop runs. ``aclose()`` releases the connections.
    """

    def __init__(
        self,
        *,
        storage_url: str | None = None,
        failed_auth_per_minute: int = 20,
        default_limits: RateLimits | None = None,
        retry_interval_s: float = 5.0,
        socket_timeout_s: float = 1.0,
        clock: Clock | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        """``storage_url``: ``redis://…`` (or ``rediss://``, ``unix://``) for shared windows,
        ``None`` for this process's memory. ``default_limits`` fill the windows a key leaves
        unset (``None``). ``retry_interval_s``: how long an unreachable Redis is bypassed.

        Raises ``ConfigError`` when Redis is asked for but the ``redis`` package is missing.
        """
        if failed_auth_per_minute < 1:
            raise ValueError("failed_auth_per_minute must be at least 1")
        self._default_limits = default_limits or RateLimits()
        self._retry_interval_s = retry_interval_s
        # limits reads the wall clock itself; ours only paces the Redis retries.
        self._clock: Clock = clock or SystemClock()
        self._log = log or logging.getLogger(__name__)
        self._storage, self._redis_pool = _open_storage(storage_url, socket_timeout_s)
        base = self._storage.base_exceptions
        self._failures: tuple[type[BaseException], ...] = (
            StorageError,
            OSError,
            *(base if isinstance(base, tuple) else (base,)),
        )
        self._limiter = MovingWindowRateLimiter(self._storage)
        # (limits of a key) -> its windows as limits items, built once per distinct limits.
        self._items: dict[RateLimits, tuple[tuple[str, int, RateLimitItem], ...]] = {}
        # In memory, windows are read and charged without the strategy's coroutines; the
        # storage keys of a (key, its limits) are built once.
        self._memory = self._storage if isinstance(self._storage, MovingWindowMemory) else None
        self._memory_keys: dict[tuple[uuid.UUID, RateLimits], tuple[str, ...]] = {}
        # Addresses with a rejected key in the last minute: only those are checked against
        # the failed-authentication window (its storage holds nothing for the others).
        self._failing: dict[str, float] = {}
        # Failed authentication stays in memory so that an outage of Redis never lifts it.
        self._auth_storage = MovingWindowMemory()
        self._auth_limiter = MovingWindowRateLimiter(self._auth_storage)
        self._auth_item = RateLimitItemPerMinute(failed_auth_per_minute, namespace=_NAMESPACE)
        self._degraded = False
        self._retry_at = 0.0
        self._allowed = 0
        self._limited = 0
        self._failed_open = 0
        self._auth_failures = 0
        self._auth_failures_limited = 0

    @property
    def stats(self) -> RateLimitStats:
        """Admission counters and the backend in use."""
        backend: Backend = "memory"
        if self._redis_pool is not None:
            backend = "redis-unavailable" if self._degraded else "redis"
        return RateLimitStats(
            allowed=self._allowed,
            limited=self._limited,
            failed_open=self._failed_open,
            auth_failures=self._auth_failures,
            auth_failures_limited=self._auth_failures_limited,
            backend=backend,
        )

    def limits_for(self, principal: Principal) -> RateLimits:
        """The limits applied to ``principal``: its own, with unset windows from the defaults."""
        return self._with_defaults(principal.limits)

    def _with_defaults(self, own: RateLimits) -> RateLimits:
        """``own`` limits with the windows they leave unset taken from the defaults."""
        default = self._default_limits
        return RateLimits(
            per_minute=own.per_minute if own.per_minute is not None else default.per_minute,
            per_hour=own.per_hour if own.per_hour is not None else default.per_hour,
            per_day=own.per_day if own.per_day is not None else default.per_day,
        )

    async def acquire(self, principal: Principal) -> Verdict:
        """Charge one request to ``principal``'s windows; refused when one is exhausted.

        Never raises for a storage failure: an unreachable Redis admits the request unchecked.
        """
        items = self._items_for(principal.limits)
        if not items:
            self._allowed += 1
            return _ADMITTED
        if self._memory is not None:
            return self._acquire_in_memory(self._memory, principal, items)
        if not self._storage_usable():
            self._failed_open += 1
            return _ADMITTED
        identity = str(principal.key_id)
        try:
            # One read of every window first, so that an exhausted one refuses the request
            # without charging the others.
            stats = await asyncio.gather(
                *(self._limiter.get_window_stats(item, identity) for _, _, item in items)
            )
            violated = [
                name for (name, _, _), s in zip(items, stats, strict=True) if s.remaining < 1
            ]
            if not violated:
                for name, _, item in items:
                    if not await self._limiter.hit(item, identity):
                        violated = [name]  # a concurrent request took the last unit
                        break
        except self._failures as exc:
            self._storage_failed(exc)
            self._failed_open += 1
            return _ADMITTED
        self._storage_recovered()
        return self._verdict(
            items, [(s.reset_time, s.remaining) for s in stats], violated, time.time()
        )

    def _acquire_in_memory(
        self,
        memory: MovingWindowMemory,
        principal: Principal,
        items: tuple[tuple[str, int, RateLimitItem], ...],
    ) -> Verdict:
        """:meth:`acquire` against memory: the same reads and charges, with nothing awaited."""
        cache_key = (principal.key_id, principal.limits)
        keys = self._memory_keys.get(cache_key)
        if keys is None:
            if len(self._memory_keys) >= 10_000:
                self._memory_keys.clear()
            identity = str(principal.key_id)
            keys = self._memory_keys[cache_key] = tuple(
                item.key_for(identity) for _, _, item in items
            )
        now = time.time()
        stats: list[tuple[float, int]] = []
        violated: list[str] = []
        for (name, window_s, item), key in zip(items, keys, strict=True):
            start, count = memory.window(key, now)
            stats.append((start + window_s, item.amount - count))
            if count >= item.amount:
                violated.append(name)
        if not violated:
            for (_, window_s, item), key in zip(items, keys, strict=True):
                memory.add(key, item.amount, window_s, 1, now)
        return self._verdict(items, stats, violated, now)

    def _verdict(
        self,
        items: tuple[tuple[str, int, RateLimitItem], ...],
        stats: list[tuple[float, int]],
        violated: list[str],
        now: float,
    ) -> Verdict:
        """The verdict from each window's (reset time, remaining) as read before charging."""
        charged = 0 if violated else 1
        windows = tuple(
            WindowState(
                name=name,
                quota=item.amount,
                window_s=window_s,
                remaining=0 if name in violated else max(0, remaining - charged),
                # An empty window starts with this request.
                reset_at=reset_at if remaining < item.amount else now + window_s,
            )
            for (name, window_s, item), (reset_at, remaining) in zip(items, stats, strict=True)
        )
        if violated:
            self._limited += 1
            return Verdict(allowed=False, windows=windows, violated=tuple(violated))
        self._allowed += 1
        return Verdict(allowed=True, windows=windows)

    def _items_for(self, own: RateLimits) -> tuple[tuple[str, int, RateLimitItem], ...]:
        items = self._items.get(own)
        if items is None:
            if len(self._items) >= 1024:  # keys with distinct limits are few; stay bounded
                self._items.clear()
            limits = self._with_defaults(own)
            items = self._items[own] = tuple(
                (name, window_s, cls(amount, namespace=_NAMESPACE))
                for name, field, window_s, cls in _WINDOWS
                if (amount := getattr(limits, field)) is not None
            )
        return items

    async def check_failed_auth(self, client: str) -> Verdict:
        """Whether ``client`` (an address) may still present keys; refused after too many failures."""
        last = self._failing.get(client)
        if last is None:
            return _ADMITTED
        if time.time() - last > 60:
            del self._failing[client]
            return _ADMITTED
        item = self._auth_item
        if await self._auth_limiter.test(item, client):
            return _ADMITTED
        stats = await self._auth_limiter.get_window_stats(item, client)
        self._auth_failures_limited += 1
        window = WindowState(
            name=FAILED_AUTH_POLICY,
            quota=item.amount,
            window_s=60,
            remaining=0,
            reset_at=stats.reset_time,
        )
        return Verdict(allowed=False, windows=(window,), violated=(FAILED_AUTH_POLICY,))

    async def record_failed_auth(self, client: str) -> None:
        """Count a rejected key against ``client`` (an address)."""
        self._auth_failures += 1
        if len(self._failing) >= 100_000:  # an address flood: forget the stale ones
            cutoff = time.time() - 60
            self._failing = {c: t for c, t in self._failing.items() if t > cutoff}
        self._failing[client] = time.time()
        await self._auth_limiter.hit(self._auth_item, client)

    async def aclose(self) -> None:
        """Close the Redis connections and drop the in-memory windows."""
        if self._redis_pool is not None:
            await self._redis_pool.aclose()
        for storage in (self._storage, self._auth_storage):
            if isinstance(storage, MemoryStorage):
                await storage.reset()
                # The storage's expiry sweep is a task of the running loop; do not leave it behind.
                if storage.timer is not None and not storage.timer.done():
                    storage.timer.cancel()

    def _storage_usable(self) -> bool:
        """Whether to ask the storage now: always, except within the retry interval of a failure."""
        if not self._degraded:
            return True
        now = self._clock.monotonic()
        if now < self._retry_at:
            return False
        # Push the next attempt out before awaiting, so that requests arriving while this
        # one probes Redis fail open instead of all probing at once.
        self._retry_at = now + self._retry_interval_s
        return True

    def _storage_failed(self, exc: BaseException) -> None:
        self._retry_at = self._clock.monotonic() + self._retry_interval_s
        if not self._degraded:
            self._degraded = True
            self._log.warning(
                "Rate-limit storage unavailable (%s: %s); API keys are not limited until it "
                "is back, retrying every %g s; failed authentications stay limited",
                type(exc).__name__,
                exc,
                self._retry_interval_s,
            )

    def _storage_recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            self._log.info("Rate-limit storage reachable again; API keys are limited again")


class RateLimitMiddleware:
    """ASGI middleware applying a :class:`RateLimiter` to requests that present an API key.

    On success the :class:`Principal` is left in ``scope["state"]["principal"]``
    (``request.state.principal``), and a rejected key's :class:`Unauthorized` in
    ``scope["state"]["auth_error"]``, so the route's dependency need not authenticate again.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: RateLimiter,
        authenticate: Authenticate,
        exclude_paths: Collection[str] = DEFAULT_EXCLUDED_PATHS,
    ) -> None:
        """``authenticate(secret)`` returns the key's principal or raises ``Unauthorized``.
        ``exclude_paths`` are matched exactly against the request path."""
        self.app = app
        self._limiter = limiter
        self._authenticate = authenticate
        self._excluded = frozenset(exclude_paths)

    @property
    def stats(self) -> RateLimitStats:
        """The limiter's counters."""
        return self._limiter.stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._excluded:
            await self.app(scope, receive, send)
            return
        secret = _presented_key(scope["headers"])
        if secret is None:
            await self.app(scope, receive, send)
            return
        client = _client_address(scope)
        verdict = await self._limiter.check_failed_auth(client)
        if not verdict.allowed:
            await _refuse(
                verdict,
                scope,
                receive,
                send,
                problem_type=ABNORMAL_USAGE,
                title="Abnormal Usage Detected",
                detail="Too many requests with an invalid API key from this address.",
            )
            return
        state = scope.setdefault("state", {})
        try:
            principal = await self._authenticate(secret)
        except Unauthorized as exc:
            await self._limiter.record_failed_auth(client)
            state[AUTH_ERROR_STATE_KEY] = exc
            await self.app(scope, receive, send)
            return
        except UnityError:
            # The key store itself failed (e.g. the database is down): the route's own
            # authentication reports it.
            await self.app(scope, receive, send)
            return
        state[PRINCIPAL_STATE_KEY] = principal
        verdict = await self._limiter.acquire(principal)
        if not verdict.allowed:
            await _refuse(
                verdict,
                scope,
                receive,
                send,
                problem_type=QUOTA_EXCEEDED,
                title="Quota Exceeded",
                detail=f"Rate limit of this API key exceeded ({', '.join(verdict.violated)}).",
            )
            return
        if not verdict.windows:
            await self.app(scope, receive, send)
            return
        headers = verdict.raw_headers(time.time())

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def presented_key(headers: Headers) -> str | None:
    """The API key a request presents: ``Authorization: Bearer <key>``, else ``X-API-Key``."""
    return _key_of(headers.get("authorization"), headers.get("x-api-key"))


def _presented_key(raw: Iterable[tuple[bytes, bytes]]) -> str | None:
    """:func:`presented_key` over ASGI header pairs (names lowercase), without building
    :class:`Headers`: it runs on every request."""
    authorization: bytes | None = None
    api_key: bytes | None = None
    for name, value in raw:
        if name == b"authorization":
            if authorization is None:
                authorization = value
        elif name == b"x-api-key" and api_key is None:
            api_key = value
    return _key_of(
        None if authorization is None else authorization.decode("latin-1"),
        None if api_key is None else api_key.decode("latin-1"),
    )


def _key_of(authorization: str | None, api_key: str | None) -> str | None:
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    key = (api_key or "").strip()
    return key or None


def _client_address(scope: Scope) -> str:
    # Behind a reverse proxy this is the proxy, unless uvicorn trusts it
    # (FORWARDED_ALLOW_IPS) and puts the client's address from X-Forwarded-For here.
    client: Sequence[object] | None = scope.get("client")
    return str(client[0]) if client else "unknown"


async def _refuse(
    verdict: Verdict,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    problem_type: str,
    title: str,
    detail: str,
) -> None:
    now = time.time()
    response = problem(
        429,
        title,
        f"{detail} Retry in {verdict.retry_after(now)} s.",
        type=problem_type,
        **{"violated-policies": list(verdict.violated)},
    )
    for name, value in verdict.headers(now):
        response.headers.append(name, value)
    await response(scope, receive, send)


def _open_storage(
    url: str | None, socket_timeout_s: float
) -> tuple[Storage, ConnectionPool | None]:
    """The storage for key windows, and the Redis connection pool to close after use."""
    if url is None:
        return MovingWindowMemory(), None
    uri = _limits_uri(url)
    try:
        # Deferred: the redis package is an optional extra, needed only for shared windows.
        from redis.asyncio import ConnectionPool
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        pool = ConnectionPool.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            # One immediate retry replaces a pooled connection that a Redis restart closed;
            # redis-py's default backoff would hold every request for seconds in an outage.
            retry=Retry(NoBackoff(), 1),
        )
        storage = RedisStorage(
            uri,
            implementation="redispy",
            wrap_exceptions=True,
            key_prefix=f"{_NAMESPACE}:ratelimit",
            connection_pool=pool,  # type: ignore[arg-type]
        )
    except (ImportError, ConfigurationError) as exc:
        raise ConfigError(
            "UNITY_REDIS_URL is set but the redis package is missing: install homelab-unity[redis]"
        ) from exc
    return storage, pool


def _limits_uri(url: str) -> str:
    """``url`` (as redis-py spells it) in the ``async+`` schemes ``limits`` selects storages by."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"not a Redis URL for rate limiting: {url!r}")
    return f"async+{'redis+unix' if scheme == 'unix' else scheme}://{rest}"
