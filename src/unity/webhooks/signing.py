"""Standard Webhooks signatures: secrets, signing, and the verifier Unity ships for receivers.

A secret is ``whsec_`` followed by the base64 of its key bytes (32 random bytes when Unity
makes it). The signature of a delivery is
``v1,<base64 HMAC-SHA256(key, f"{webhook-id}.{webhook-timestamp}.{body}")>``; while a
rotated secret is still honoured, ``webhook-signature`` carries both, separated by a space.

Receivers written in Python can verify with :func:`verify` (standard library only)::

    from unity.webhooks import verify

    payload = verify(secret, request.headers, await request.body())
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets as _secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "SECRET_PREFIX",
    "WebhookVerificationError",
    "generate_secret",
    "secret_key",
    "sign",
    "signature_header",
    "verify",
]

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300
"""How far ``webhook-timestamp`` may be from the receiver's clock (replay protection)."""

_MIN_KEY_BYTES = 24
_MAX_KEY_BYTES = 64


class WebhookVerificationError(Exception):
    """A delivery failed verification: missing headers, a stale timestamp or no valid signature."""


def generate_secret() -> str:
    """A new secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The key bytes of a ``whsec_…`` secret; ``ValueError`` when it is not one.

    The key must be 24 to 64 bytes (the spec asks for 24 at least).
    """
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret is whsec_ followed by base64") from exc
    if not _MIN_KEY_BYTES <= len(key) <= _MAX_KEY_BYTES:
        raise ValueError(
            f"a webhook secret's key must be {_MIN_KEY_BYTES} to {_MAX_KEY_BYTES} bytes"
        )
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 signature>`` of one delivery."""
    digest = hmac.new(key, b"%s.%d.%s" % (message_id.encode(), timestamp, body), hashlib.sha256)
    return "v1," + base64.b64encode(digest.digest()).decode()


def signature_header(keys: Iterable[bytes], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,…`` per key, space-separated."""
    return " ".join(sign(key, message_id, timestamp, body) for key in keys)


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> Any:
    """Check a delivery's signature and timestamp; return its parsed JSON body.

    ``headers`` may use any letter case. Raises :class:`WebhookVerificationError` when a
    ``webhook-*`` header is missing, the timestamp is more than ``tolerance_s`` seconds
    from ``now`` (default: the current time), or no ``v1`` signature matches. Signatures
    are compared in constant time.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id")
    timestamp_text = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (message_id and timestamp_text and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(timestamp_text)
    except ValueError as exc:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from exc
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is too far from the current time")
    raw = body.encode() if isinstance(body, str) else body
    try:
        key = secret_key(secret)
    except ValueError as exc:
        raise WebhookVerificationError(str(exc)) from exc
    expected = sign(key, message_id, timestamp, raw).encode()
    matched = False
    for candidate in signatures.split():
        # Keep comparing after a match: the time taken must not depend on which one matched.
        matched |= hmac.compare_digest(expected, candidate.encode())
    if not matched:
        raise WebhookVerificationError("no matching signature")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise WebhookVerificationError("the body is not JSON") from exc
