"""Signatures match the reference ``standardwebhooks`` library; Unity's verifier refuses forgeries."""

from __future__ import annotations

import base64
import ipaddress
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks import Webhook as StandardWebhook

from unity.errors import ConfigError
from unity.webhooks import WebhookVerificationError, generate_secret, verify
from unity.webhooks.crypto import load_secret_box
from unity.webhooks.signing import secret_key, sign, signature_header
from unity.webhooks.urls import UnsafeUrl, UrlPolicy

BODY = b'{"type":"webhook.test","timestamp":"2026-01-01T00:00:00+00:00","data":{}}'


def headers(secret: str, *, at: int | None = None, message_id: str = "msg_1") -> dict[str, str]:
    ts = int(time.time()) if at is None else at
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret_key(secret), message_id, ts, BODY),
    }


def test_generated_secrets_are_32_random_bytes_in_whsec_form() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert generate_secret() != secret


def test_the_reference_library_signs_exactly_like_unity() -> None:
    secret = generate_secret()
    ts = int(time.time())
    ours = sign(secret_key(secret), "msg_abc", ts, BODY)
    theirs = StandardWebhook(secret).sign("msg_abc", datetime.fromtimestamp(ts, UTC), BODY.decode())
    assert ours == theirs
    assert StandardWebhook(secret).verify(BODY, headers(secret, at=ts, message_id="msg_abc"))


def test_unitys_verifier_accepts_good_deliveries_and_refuses_the_rest() -> None:
    secret, other = generate_secret(), generate_secret()
    assert verify(secret, headers(secret), BODY)["type"] == "webhook.test"
    upper = {k.upper(): v for k, v in headers(secret).items()}
    assert verify(secret, upper, BODY.decode())["data"] == {}
    with pytest.raises(WebhookVerificationError, match="no matching"):
        verify(other, headers(secret), BODY)
    with pytest.raises(WebhookVerificationError, match="no matching"):
        verify(secret, headers(secret), BODY.replace(b"{}", b'{"x":1}'))
    with pytest.raises(WebhookVerificationError, match="too far"):
        verify(secret, headers(secret, at=int(time.time()) - 3600), BODY)
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify(secret, {"webhook-id": "msg_1"}, BODY)
    # during a rotation both signatures travel; either secret verifies
    ts = int(time.time())
    both = {
        "webhook-id": "msg_2",
        "webhook-timestamp": str(ts),
        "webhook-signature": signature_header(
            [secret_key(other), secret_key(secret)], "msg_2", ts, BODY
        ),
    }
    assert verify(secret, both, BODY)
    assert verify(other, both, BODY)


@pytest.mark.parametrize(
    "bad", ["secret", "whsec_!!!", "whsec_" + base64.b64encode(b"x" * 8).decode()]
)
def test_malformed_secrets_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="webhook secret"):
        secret_key(bad)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://metadata.google.internal/",
        "http://0.0.0.0:8000/",
        "http:///nohost",
    ],
)
def test_link_local_and_metadata_targets_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        UrlPolicy().check_url(url)


def test_allow_and_deny_networks() -> None:
    policy = UrlPolicy()
    for url in ("http://127.0.0.1:8123/hook", "https://192.168.1.10/x", "https://example.net/"):
        assert policy.check_url(url) == url
    narrow = UrlPolicy.from_settings(allow=["192.168.1.0/24"], deny=["192.168.1.66/32"])
    narrow.check_url("http://192.168.1.10/")
    with pytest.raises(UnsafeUrl, match="deny"):
        narrow.check_url("http://192.168.1.66/")
    with pytest.raises(UnsafeUrl, match="allow"):
        narrow.check_url("http://10.0.0.1/")
    # A name's resolved addresses (checked by the sender's resolver when it connects).
    with pytest.raises(UnsafeUrl, match="allow"):
        narrow.check_address(ipaddress.ip_address("127.0.0.1"))
    with pytest.raises(UnsafeUrl, match="link-local"):
        policy.check_address(ipaddress.ip_address("::ffff:169.254.169.254"))
    policy.check_address(ipaddress.ip_address("::1"))


def test_secrets_are_encrypted_with_the_data_dirs_key(tmp_path: Path) -> None:
    box = load_secret_box(tmp_path)
    token = box.encrypt("whsec_abc")
    assert "whsec_abc" not in token
    assert load_secret_box(tmp_path).decrypt(token) == "whsec_abc"  # the same key file
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        load_secret_box(tmp_path / "elsewhere").decrypt(token)
    with pytest.raises(ConfigError, match="Fernet"):
        load_secret_box(tmp_path, key="not-a-key")
