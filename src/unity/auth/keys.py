"""The format of API key secrets.

A secret reads ``unity_<body><checksum>``: ``body`` is 43 random base62 characters
(256 bits from :mod:`secrets`), ``checksum`` the CRC32 of ``unity_<body>`` as 6 base62
characters. The checksum lets Unity (and secret scanners) reject a mistyped or made-up
key without a database lookup; it adds no secrecy. Only the SHA-256 of a secret is
stored, next to its visible ``prefix`` (``unity_`` and the first 8 body characters).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib

__all__ = [
    "KEY_PREFIX",
    "SECRET_LENGTH",
    "generate",
    "hash_secret",
    "looks_valid",
    "prefix_of",
    "same_hash",
]

KEY_PREFIX = "unity_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LENGTH = 43  # 62**43 > 2**256: at least 256 bits of entropy
CHECKSUM_LENGTH = 6  # 62**6 > 2**32: any CRC32 fits
VISIBLE_LENGTH = 8
SECRET_LENGTH = len(KEY_PREFIX) + BODY_LENGTH + CHECKSUM_LENGTH
_ALPHABET_SET = frozenset(ALPHABET)


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))


def _checksum(head: str) -> str:
    return _base62(zlib.crc32(head.encode("ascii")), CHECKSUM_LENGTH)


def generate() -> tuple[str, str]:
    """A new random secret and its visible prefix: ``(secret, prefix)``."""
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    head = KEY_PREFIX + body
    secret = head + _checksum(head)
    return secret, prefix_of(secret)


def prefix_of(secret: str) -> str:
    """The part of a secret that may be shown and stored in clear: ``unity_`` + 8 characters."""
    return secret[: len(KEY_PREFIX) + VISIBLE_LENGTH]


def hash_secret(secret: str) -> str:
    """SHA-256 of the secret, hex: what the database stores and looks keys up by."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def same_hash(a: str, b: str | None) -> bool:
    """Compare two secret hashes in constant time (``False`` when ``b`` is missing)."""
    return b is not None and hmac.compare_digest(a.encode("ascii"), b.encode("ascii"))


def looks_valid(secret: str) -> bool:
    """Whether ``secret`` has the shape of a Unity key and its checksum matches.

    Cheap and local: garbage and typos are turned away before any lookup.
    """
    if len(secret) != SECRET_LENGTH or not secret.startswith(KEY_PREFIX):
        return False
    rest = secret[len(KEY_PREFIX) :]
    if not _ALPHABET_SET.issuperset(rest):
        return False
    head, checksum = secret[:-CHECKSUM_LENGTH], secret[-CHECKSUM_LENGTH:]
    return hmac.compare_digest(checksum, _checksum(head))
