"""One signed HTTP request to a webhook endpoint, and what came back.

Headers follow Standard Webhooks: ``webhook-id`` (the delivery's, the same on every
attempt), ``webhook-timestamp`` (this attempt's, Unix seconds), ``webhook-signature``
(``v1,…``, one per valid secret), plus ``content-type: application/json`` and
``user-agent: Unity-Webhooks/<version>``. Redirects are not followed: only a 2xx is a
success. The first 2 KB of the response body are kept for the delivery log.

Requests go through one aiohttp session of their own (kept-alive connections, no proxies
from the environment, a total timeout per attempt): aiohttp costs a fraction of httpx's CPU
per request, which is what bounds deliveries per second on a small machine. Its resolver
checks every address a host name resolves to against the :class:`UrlPolicy` when the
connection is made, so a name that starts pointing at a link-local or metadata address is
refused at the moment it would be reached, not only when the webhook was saved.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from unity import __version__
from unity.core.clock import Clock
from unity.webhooks.signing import signature_header
from unity.webhooks.urls import UnsafeUrl, UrlPolicy

__all__ = ["MAX_RESPONSE_BODY", "AttemptResult", "Sender"]

MAX_RESPONSE_BODY = 2048
USER_AGENT = f"Unity-Webhooks/{__version__}"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """The outcome of one request."""

    started_at: datetime
    success: bool
    status_code: int | None = None
    response_ms: float | None = None
    response_body: str | None = None
    error: str | None = None
    retry_after_s: float | None = None
    """The response's ``Retry-After``, in seconds, when it sent one."""


class _Refused(OSError):
    """A resolved address the policy refuses (an ``OSError``, so aiohttp reports it as DNS)."""


class _CheckingResolver(AbstractResolver):
    """The system resolver, refusing a host when any of its addresses is not allowed."""

    def __init__(self, policy: UrlPolicy) -> None:
        self._policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            try:
                address = ipaddress.ip_address(result["host"].split("%", 1)[0])
                self._policy.check_address(address)
            except (UnsafeUrl, ValueError) as exc:
                raise _Refused(f"{host}: {exc}") from exc
        return results

    async def close(self) -> None:
        await self._inner.close()


class Sender:
    """Signs and posts deliveries through one shared, lazily opened HTTP session."""

    def __init__(
        self, *, clock: Clock, policy: UrlPolicy, timeout_s: float, max_connections: int
    ) -> None:
        self._clock = clock
        self._policy = policy
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the running event loop.
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,  # endpoints often share a host (one n8n, many paths)
            resolver=_CheckingResolver(self._policy),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            headers={"user-agent": USER_AGENT},
            trust_env=False,
        )
        return self._session

    async def aclose(self) -> None:
        """Close the session's connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, url: str, keys: Sequence[bytes], message_id: str, body: bytes
    ) -> AttemptResult:
        """POST ``body`` to ``url``, signed with every key; never raises for the peer's faults."""
        session = self._session or self._open()
        started_at = self._clock.now()
        timestamp = int(started_at.timestamp())
        headers = {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(keys, message_id, timestamp, body),
            "content-type": "application/json",
        }
        start = time.perf_counter()
        try:
            async with session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                chunk = bytearray()
                while len(chunk) < MAX_RESPONSE_BODY:
                    part = await response.content.read(MAX_RESPONSE_BODY - len(chunk))
                    if not part:
                        break
                    chunk += part
                elapsed = (time.perf_counter() - start) * 1000
                status = response.status
                success = 200 <= status < 300
                return AttemptResult(
                    started_at=started_at,
                    success=success,
                    status_code=status,
                    response_ms=round(elapsed, 3),
                    response_body=chunk.decode("utf-8", errors="replace"),
                    error=None if success else _status_error(status),
                    retry_after_s=_retry_after(response.headers.get("retry-after"), started_at),
                )
        except TimeoutError:
            error = f"no answer within {self._timeout_s:g} s"
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, _Refused):
                error = f"refused: {exc.os_error}"
            else:
                error = _describe(exc)
        except aiohttp.ClientError as exc:
            error = _describe(exc)
        return AttemptResult(
            started_at=started_at,
            success=False,
            response_ms=round((time.perf_counter() - start) * 1000, 3),
            error=error,
        )


def _describe(exc: Exception) -> str:
    return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__


def _status_error(status: int) -> str:
    if 300 <= status < 400:
        return f"HTTP {status}: redirects are not followed; point the webhook at the final URL"
    return f"HTTP {status}"


def _retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; ``None`` when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - now).total_seconds())
