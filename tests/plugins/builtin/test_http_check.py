"""The HTTP check against real local sites over HTTP and HTTPS."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import trustme
from cryptography import x509
from pydantic import ValidationError

from unity.plugins.builtin import http_check
from unity.plugins.builtin.http_check import MAX_BODY_BYTES, HttpCheckConfig, certificate_not_after
from unity.plugins.sdk import Collected, Context

MakeContext = Callable[..., Context[Any]]


def values(collected: Collected) -> dict[str, float]:
    assert all(sample.problem() is None for sample in collected.samples)
    return {sample.name: sample.value for sample in collected.samples}


async def check(
    make_context: MakeContext, http: httpx.AsyncClient | None = None, **config: Any
) -> Collected:
    plugin = http_check.PLUGIN()
    return await plugin.collect(make_context(HttpCheckConfig(**config), "http_check", http))


async def test_a_healthy_page_is_up_with_status_latency_and_size(
    site, make_context, assert_declared
) -> None:
    collected = await check(make_context, url=site.url("/ok"), keyword="Hello from")

    assert_declared(http_check.PLUGIN, collected)

    measured = values(collected)
    assert measured["http_up"] == 1
    assert measured["http_status_code"] == 200
    assert measured["http_latency_ms"] > 0
    assert measured["http_response_bytes"] == len(
        b"<html><body>Hello from the Unity test site</body></html>"
    )
    assert "tls_days_left" not in measured  # plain HTTP has no certificate
    assert collected.snapshot is not None
    assert collected.snapshot["status_code"] == 200
    assert collected.snapshot["reason"] == "OK"
    assert collected.snapshot["status_matched"] is True
    assert collected.snapshot["keyword_matched"] is True
    assert collected.snapshot["error"] is None


async def test_an_unexpected_status_is_down_but_still_measured(site, make_context) -> None:
    collected = await check(make_context, url=site.url("/error"))

    measured = values(collected)
    assert measured["http_up"] == 0
    assert measured["http_status_code"] == 500
    assert "http_latency_ms" in measured
    assert collected.snapshot is not None
    assert collected.snapshot["status_matched"] is False
    assert collected.snapshot["reason"] == "Internal Server Error"


async def test_expected_status_may_list_several_codes(site, make_context) -> None:
    collected = await check(make_context, url=site.url("/error"), expected_status=[200, 500])

    assert values(collected)["http_up"] == 1


async def test_a_missing_keyword_is_down(site, make_context) -> None:
    collected = await check(make_context, url=site.url("/ok"), keyword="Goodbye")

    assert values(collected)["http_up"] == 0
    assert collected.snapshot is not None
    assert collected.snapshot["status_matched"] is True
    assert collected.snapshot["keyword_matched"] is False


async def test_redirects_are_followed_to_the_final_page(site, make_context) -> None:
    collected = await check(make_context, url=site.url("/redirect"), keyword="Hello")

    assert values(collected)["http_up"] == 1
    assert collected.snapshot is not None
    assert collected.snapshot["final_url"] == site.url("/ok")


async def test_redirects_can_be_checked_as_they_are(site, make_context) -> None:
    down = await check(make_context, url=site.url("/redirect"), follow_redirects=False)
    up = await check(
        make_context, url=site.url("/redirect"), follow_redirects=False, expected_status=302
    )

    assert values(down)["http_up"] == 0
    assert values(down)["http_status_code"] == 302
    assert values(up)["http_up"] == 1


async def test_configured_headers_are_sent(site, make_context) -> None:
    collected = await check(
        make_context,
        url=site.url("/echo-header"),
        headers={"X-Check": "unity-42"},
        keyword="unity-42",
    )

    assert values(collected)["http_up"] == 1


async def test_head_requests_need_no_body(site, make_context) -> None:
    collected = await check(make_context, url=site.url("/ok"), method="HEAD")

    measured = values(collected)
    assert measured["http_up"] == 1
    assert measured["http_response_bytes"] == 0


async def test_a_huge_body_is_read_only_up_to_the_limit(site, make_context) -> None:
    collected = await check(make_context, url=site.url("/large"), keyword="not there")

    assert values(collected)["http_response_bytes"] == MAX_BODY_BYTES
    assert collected.snapshot is not None
    assert collected.snapshot["body_truncated"] is True
    assert collected.snapshot["keyword_matched"] is False


async def test_a_closed_port_is_a_successful_measurement_of_down(closed_port, make_context) -> None:
    collected = await check(make_context, url=f"http://127.0.0.1:{closed_port}/")

    assert values(collected) == {"http_up": 0}
    assert collected.snapshot is not None
    assert collected.snapshot["error"] == "cannot connect: Connection refused"
    assert collected.snapshot["status_code"] is None


async def test_a_server_that_never_answers_times_out_as_down(silent_port, make_context) -> None:
    collected = await check(make_context, url=f"http://127.0.0.1:{silent_port}/", timeout_s=0.3)

    assert values(collected) == {"http_up": 0}
    assert collected.snapshot is not None
    assert collected.snapshot["error"] == "timed out after 0.3 s"


def trusting(ca: trustme.CA) -> httpx.AsyncClient:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return httpx.AsyncClient(verify=context)


def not_after_of(cert: trustme.LeafCert) -> datetime:
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).not_valid_after_utc


@pytest.mark.parametrize(
    "lifetime",
    [timedelta(days=30), timedelta(days=365 * 45)],  # UTCTime, then GeneralizedTime (>= 2050)
    ids=["30-days", "past-2050"],
)
async def test_tls_days_left_matches_the_certificate(
    tls_site, ca, make_context, assert_declared, lifetime
) -> None:
    site = tls_site(datetime.now(UTC) + lifetime)
    expected = not_after_of(site.cert)

    async with trusting(ca) as client:
        collected = await check(make_context, client, url=site.url("/ok"))

    assert_declared(http_check.PLUGIN, collected)
    measured = values(collected)
    assert measured["http_up"] == 1
    expected_days = (expected - datetime.now(UTC)).total_seconds() / 86_400
    assert measured["tls_days_left"] == pytest.approx(expected_days, abs=1 / 1440)
    assert collected.snapshot is not None
    assert collected.snapshot["tls_not_after"] == expected.isoformat()


async def test_an_untrusted_certificate_is_down_when_verifying(tls_site, make_context) -> None:
    site = tls_site(datetime.now(UTC) + timedelta(days=30))

    collected = await check(make_context, url=site.url("/ok"))  # client without the test CA

    assert values(collected) == {"http_up": 0}
    assert collected.snapshot is not None
    assert "certificate verify failed" in collected.snapshot["error"]


async def test_without_verification_the_expiry_is_still_reported(tls_site, make_context) -> None:
    site = tls_site(datetime.now(UTC) + timedelta(days=30))

    collected = await check(make_context, url=site.url("/ok"), verify_tls=False)

    measured = values(collected)
    assert measured["http_up"] == 1
    assert measured["tls_days_left"] == pytest.approx(30, abs=0.01)


async def test_an_expired_certificate_has_negative_days_left(tls_site, ca, make_context) -> None:
    site = tls_site(datetime.now(UTC) - timedelta(days=3))

    async with trusting(ca) as client:
        verified = await check(make_context, client, url=site.url("/ok"))
    unverified = await check(make_context, url=site.url("/ok"), verify_tls=False)

    assert values(verified) == {"http_up": 0}
    assert verified.snapshot is not None
    assert "certificate has expired" in verified.snapshot["error"]
    assert values(unverified)["tls_days_left"] == pytest.approx(-3, abs=0.01)


def test_certificate_not_after_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="certificate"):
        certificate_not_after(b"\x30\x82\x01")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"method": "HEAD", "keyword": "x"}, "keyword needs the body"),
        ({"expected_status": 700}, "not an HTTP status code"),
        ({"expected_status": []}, "at least one status code"),
        ({"url": "ftp://example.com/"}, "URL scheme should be 'http' or 'https'"),
    ],
)
def test_bad_configs_are_rejected(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        HttpCheckConfig(**{"url": "http://example.com/", **config})
