"""One signed HTTP request to a webhook endpoint, and what came back.

Headers follow Standard Webhooks: ``webhook-id`` (the delivery's, the same on every
attempt), ``webhook-timestamp`` (this attempt's, Unix seconds), ``webhook-signature``
(``v1,…``, one per valid secret), plus ``content-type: application/json`` and
``user-agent: Unity-Webhooks/<version>``. Redirects are not followed: only a 2xx is a
success. The first 2 KB of the response body are kept for the delivery log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from unity import __version__
from unity.core.clock import Clock
from unity.webhooks.signing import secret_key, signature_header

__all__ = ["MAX_RESPONSE_BODY", "AttemptResult", "Sender", "new_client"]

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


def new_client(timeout_s: float, max_connections: int) -> httpx.AsyncClient:
    """The HTTP client deliveries use: no redirects, no proxies from the environment."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        headers={"user-agent": USER_AGENT},
    )


class Sender:
    """Signs and posts deliveries with one shared client."""

    def __init__(self, client: httpx.AsyncClient, *, clock: Clock, timeout_s: float) -> None:
        self._client = client
        self._clock = clock
        self._timeout_s = timeout_s

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._client.aclose()

    async def send(
        self, url: str, secrets: list[str], message_id: str, body: bytes
    ) -> AttemptResult:
        """POST ``body`` to ``url``, signed with every secret; never raises for the peer's faults."""
        started_at = self._clock.now()
        timestamp = int(started_at.timestamp())
        headers = {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(
                (secret_key(s) for s in secrets), message_id, timestamp, body
            ),
            "content-type": "application/json",
        }
        start = time.perf_counter()
        try:
            async with self._client.stream("POST", url, content=body, headers=headers) as response:
                chunk = bytearray()
                async for part in response.aiter_bytes():
                    chunk += part
                    if len(chunk) >= MAX_RESPONSE_BODY:
                        break
                elapsed = (time.perf_counter() - start) * 1000
                status = response.status_code
                text = bytes(chunk[:MAX_RESPONSE_BODY]).decode("utf-8", errors="replace")
                success = 200 <= status < 300
                return AttemptResult(
                    started_at=started_at,
                    success=success,
                    status_code=status,
                    response_ms=round(elapsed, 3),
                    response_body=text,
                    error=None if success else _status_error(status),
                    retry_after_s=_retry_after(response.headers.get("retry-after"), started_at),
                )
        except httpx.TimeoutException:
            error = f"no answer within {self._timeout_s:g} s"
        except httpx.HTTPError as exc:
            error = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
        return AttemptResult(
            started_at=started_at,
            success=False,
            response_ms=round((time.perf_counter() - start) * 1000, 3),
            error=error,
        )


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
