"""HTTP(S) uptime check: status, keyword, latency, size and certificate expiry of one URL.

**A down endpoint is a successful measurement.** When the request cannot be completed —
connection refused, DNS failure, timeout, TLS verification failure, too many redirects — the
collection still succeeds: it returns ``http_up 0`` and puts the error in the snapshot. So an
outage is data that charts and alert rules see (``http_up == 0``), while the plugin's own
health (degraded, failing) keeps meaning "Unity could not run this check", not "the site is
down". The same holds for a response with an unexpected status or without the keyword:
``http_up 0``, with ``status_matched`` / ``keyword_matched`` in the snapshot saying why.

Details a user may notice:

* ``http_latency_ms`` is the time from sending the request to the last byte of the body.
* The body is read up to ``MAX_BODY_BYTES``; a larger body is cut there (``body_truncated``
  in the snapshot), ``http_response_bytes`` counts what was read and the keyword (matched
  case-sensitively, as Uptime Kuma does) is looked for in that part.
* ``tls_days_left`` comes from the certificate the server presented on the very connection
  that carried the (final, after redirects) response, read through httpx's
  ``network_stream`` extension: no second handshake, so it cannot disagree with the request
  (another backend behind a load balancer, a proxy in the way). With ``verify_tls`` off an
  expired certificate is still read, and the value goes negative.
* With ``verify_tls`` on the check uses the shared client from the context; with it off, a
  client of its own for the one request (httpx decides verification per client).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from pydantic import Field, HttpUrl, field_validator, model_validator

from unity.plugins.sdk import (
    Collected,
    Collector,
    Context,
    Manifest,
    Metric,
    PluginConfig,
    samples_from,
)

__all__ = ["MAX_BODY_BYTES", "PLUGIN", "HttpCheck", "HttpCheckConfig", "certificate_not_after"]

MAX_BODY_BYTES = 10 * 1024 * 1024
"""Most body bytes one check reads (a check must not download a disk image every minute)."""


class HttpCheckConfig(PluginConfig):
    """What to request and what counts as up."""

    url: HttpUrl = Field(description="The http:// or https:// address to check.")
    method: Literal["GET", "HEAD"] = Field(default="GET", description="HEAD skips the body.")
    expected_status: int | list[int] = Field(
        default=200, description="The status code, or the list of codes, that count as up."
    )
    keyword: str | None = Field(
        default=None, min_length=1, description="Text that must appear in the body (GET only)."
    )
    timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="Seconds for the whole request, body included."
    )
    verify_tls: bool = Field(
        default=True, description="Reject certificates that do not verify (expired, wrong host)."
    )
    follow_redirects: bool = Field(default=True, description="Follow 3xx to the final page.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")

    @field_validator("expected_status")
    @classmethod
    def _status_codes(cls, value: int | list[int]) -> int | list[int]:
        codes = [value] if isinstance(value, int) else value
        if not codes:
            raise ValueError("name at least one status code")
        for code in codes:
            if not 100 <= code <= 599:
                raise ValueError(f"{code} is not an HTTP status code (100-599)")
        return value

    @model_validator(mode="after")
    def _keyword_needs_body(self) -> HttpCheckConfig:
        if self.keyword is not None and self.method == "HEAD":
            raise ValueError("a keyword needs the body: use method GET")
        return self

    @property
    def accepted_statuses(self) -> frozenset[int]:
        """The status codes that count as up."""
        codes = (
            [self.expected_status]
            if isinstance(self.expected_status, int)
            else self.expected_status
        )
        return frozenset(codes)


@dataclass(slots=True)
class Probe:
    """What one check found; the metric ``value_fn``s read it."""

    url: str
    method: str
    error: str | None = None
    status_code: int | None = None
    reason: str | None = None
    final_url: str | None = None
    status_matched: bool = False
    keyword_matched: bool | None = None
    latency_ms: float | None = None
    response_bytes: int | None = None
    body_truncated: bool = False
    tls_not_after: datetime | None = None
    tls_days_left: float | None = None
    tls_error: str | None = None

    @property
    def up(self) -> bool:
        """The request completed, with an expected status and (if asked for) the keyword."""
        return self.error is None and self.status_matched and self.keyword_matched is not False

    def snapshot(self) -> dict[str, Any]:
        """The check's result as the dashboard shows it."""
        return {
            "up": self.up,
            "url": self.url,
            "method": self.method,
            "final_url": self.final_url,
            "status_code": self.status_code,
            "reason": self.reason,
            "status_matched": self.status_matched,
            "keyword_matched": self.keyword_matched,
            "latency_ms": self.latency_ms,
            "response_bytes": self.response_bytes,
            "body_truncated": self.body_truncated,
            "tls_not_after": self.tls_not_after.isoformat() if self.tls_not_after else None,
            "tls_days_left": self.tls_days_left,
            "tls_error": self.tls_error,
            "error": self.error,
        }


UP_METRIC = Metric(
    "http_up",
    unit="bool",
    description="1 when the request completed with an expected status and the keyword",
    value_fn=lambda p: 1.0 if p.up else 0.0,
)
MEASURED_METRICS: tuple[Metric, ...] = (
    Metric(
        "http_status_code",
        description="Status code of the final response",
        value_fn=lambda p: p.status_code,
    ),
    Metric(
        "http_latency_ms",
        unit="ms",
        description="Time from sending the request to the last byte of the body",
        value_fn=lambda p: p.latency_ms,
    ),
    Metric(
        "http_response_bytes",
        unit="bytes",
        description="Size of the (decoded) response body",
        value_fn=lambda p: p.response_bytes,
    ),
    Metric(
        "tls_days_left",
        unit="days",
        description="Days until the server certificate expires (https only)",
        value_fn=lambda p: p.tls_days_left,
    ),
)
METRICS = (UP_METRIC, *MEASURED_METRICS)


def _der_element(data: bytes, offset: int) -> tuple[int, int, int]:
    """Tag, start and end of the value of the DER element at ``offset``."""
    tag = data[offset]
    length = data[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    end = offset + length
    if end > len(data):
        raise ValueError("DER element runs past the end of the certificate")
    return tag, offset, end


def certificate_not_after(der: bytes) -> datetime:
    """The ``notAfter`` of an X.509 certificate in DER form.

    The standard library only decodes certificates it has verified, and a check with
    ``verify_tls`` off still wants the expiry; the path to ``validity`` is fixed by RFC 5280,
    so walking it needs no ASN.1 library. Raises ``ValueError`` on a malformed certificate.
    """
    try:
        _, certificate, _ = _der_element(der, 0)
        _, tbs, _ = _der_element(der, certificate)
        tag, _, end = _der_element(der, tbs)
        position = end if tag == 0xA0 else tbs  # [0] EXPLICIT version is optional
        for _ in ("serialNumber", "signature", "issuer"):
            _, _, position = _der_element(der, position)
        _, validity, _ = _der_element(der, position)
        _, _, not_before_end = _der_element(der, validity)
        tag, start, end = _der_element(der, not_before_end)
    except IndexError as exc:
        raise ValueError("certificate is truncated") from exc
    text = der[start:end].decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ; RFC 5280: YY >= 50 is 19YY
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError(f"unexpected time tag 0x{tag:02x} in certificate validity")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)


def _text(body: bytes | bytearray, charset: str | None) -> str:
    """The body as text in its declared charset; UTF-8 when none is declared or it is bogus."""
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def _peer_certificate(response: httpx.Response) -> bytes | None:
    """The DER certificate of the TLS connection that carried ``response``, if any."""
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    ssl_object = stream.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der: bytes | None = ssl_object.getpeercert(binary_form=True)
    return der


def _root_os_error(exc: BaseException) -> OSError | None:
    """The innermost ``OSError`` behind ``exc``: the one that says what went wrong."""
    found: OSError | None = None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            found = current
        current = current.__cause__ or current.__context__
    return found


def describe(exc: httpx.HTTPError) -> str:
    """A short, human reason for a failed request."""
    # httpx often says only "All connection attempts failed"; the OSError below it says why.
    root = _root_os_error(exc)
    if isinstance(root, ssl.SSLCertVerificationError):
        detail = f"TLS certificate verify failed: {root.verify_message}"
    elif isinstance(root, ssl.SSLError):
        detail = f"TLS error: {root.reason or root}"
    elif root is not None and root.errno is not None and root.errno > 0:
        detail = os.strerror(root.errno)
    elif root is not None and root.strerror:
        detail = root.strerror  # resolver errors carry negative codes os.strerror does not know
    else:
        detail = str(exc) or type(exc).__name__
    return f"cannot connect: {detail}" if isinstance(exc, httpx.ConnectError) else detail


class HttpCheck(Collector[HttpCheckConfig]):
    """Requests one URL and reports whether it answered as expected, how fast, and TLS expiry."""

    manifest = Manifest(
        id="http_check",
        name="HTTP check",
        version="1.0.0",
        category="network",
        description="Status, keyword, latency, size and TLS certificate expiry of an "
        "HTTP(S) endpoint.",
        permissions=("network",),
    )
    metrics = METRICS

    async def collect(self, ctx: Context[HttpCheckConfig]) -> Collected:
        """Request the URL once. Never fails for a down endpoint: that is ``http_up 0``."""
        config = ctx.config
        probe = Probe(url=str(config.url), method=config.method)
        try:
            async with asyncio.timeout(config.timeout_s):
                if config.verify_tls:
                    await self._request(ctx, ctx.http, probe)
                else:
                    async with httpx.AsyncClient(verify=False) as client:
                        await self._request(ctx, client, probe)
        except (TimeoutError, httpx.TimeoutException):
            # Whichever fires first, the whole-check deadline or an httpx phase timeout.
            probe.error = f"timed out after {config.timeout_s:g} s"
        except httpx.HTTPError as exc:
            probe.error = describe(exc)
        # A request that failed half-way (say, reset mid-body) measured nothing worth a series.
        metrics = METRICS if probe.error is None else (UP_METRIC,)
        return Collected(samples=samples_from(metrics, probe), snapshot=probe.snapshot())

    async def _request(
        self, ctx: Context[HttpCheckConfig], client: httpx.AsyncClient, probe: Probe
    ) -> None:
        config = ctx.config
        started = ctx.clock.monotonic()
        async with client.stream(
            config.method,
            probe.url,
            headers=config.headers,
            timeout=config.timeout_s,
            follow_redirects=config.follow_redirects,
        ) as response:
            probe.status_code = response.status_code
            probe.reason = response.reason_phrase
            probe.final_url = str(response.url)
            probe.status_matched = response.status_code in config.accepted_statuses
            if response.url.scheme == "https":
                self._read_certificate(ctx, response, probe)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    probe.body_truncated = True
                    del body[MAX_BODY_BYTES:]
                    break
            probe.latency_ms = (ctx.clock.monotonic() - started) * 1000.0
            probe.response_bytes = len(body)
            if config.keyword is not None:
                probe.keyword_matched = config.keyword in _text(body, response.charset_encoding)

    @staticmethod
    def _read_certificate(
        ctx: Context[HttpCheckConfig], response: httpx.Response, probe: Probe
    ) -> None:
        der = _peer_certificate(response)
        if der is None:
            probe.tls_error = "the connection exposed no TLS certificate"
            return
        try:
            probe.tls_not_after = certificate_not_after(der)
        except ValueError as exc:
            probe.tls_error = f"unreadable certificate: {exc}"
            return
        probe.tls_days_left = (probe.tls_not_after - ctx.clock.now()).total_seconds() / 86_400


PLUGIN = HttpCheck
