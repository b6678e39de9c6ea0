"""The secret format: recognisable, high-entropy, checksummed, hashed at rest."""

from __future__ import annotations

import hashlib
import math
import re

import pytest

from unity.auth.keys import ALPHABET, BODY_LENGTH, generate, hash_secret, looks_valid, same_hash

SHAPE = re.compile(r"^unity_[0-9A-Za-z]{49}$")


def test_a_generated_secret_has_the_documented_shape_and_validates() -> None:
    secret, prefix = generate()
    assert SHAPE.match(secret)
    assert looks_valid(secret)
    assert prefix == secret[:14]
    assert prefix.startswith("unity_")


def test_secrets_carry_at_least_256_bits_of_randomness() -> None:
    assert BODY_LENGTH * math.log2(len(ALPHABET)) >= 256
    secrets = {generate()[0] for _ in range(200)}
    assert len(secrets) == 200
    # every base62 character shows up somewhere across the bodies: nothing is fixed
    assert set("".join(s[6:-6] for s in secrets)) == set(ALPHABET)


@pytest.mark.parametrize("position", [6, 20, 48, 54])
def test_a_single_changed_character_fails_the_checksum(position: int) -> None:
    secret, _ = generate()
    replacement = "A" if secret[position] != "A" else "B"
    typo = secret[:position] + replacement + secret[position + 1 :]
    assert not looks_valid(typo)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "unity_",
        "not-a-key",
        "Bearer unity_abc",
        "unity_" + "a" * 49,  # right shape, wrong checksum
        "UNITY_" + "a" * 49,
        "unity_" + "a" * 48 + "é",
        "unity_" + "a" * 60,
    ],
)
def test_garbage_is_rejected_without_a_lookup(garbage: str) -> None:
    assert not looks_valid(garbage)


def test_another_products_prefix_is_rejected() -> None:
    secret, _ = generate()
    assert not looks_valid("ghp_" + secret[6:])
    assert not looks_valid(secret + "x")


def test_the_stored_hash_is_sha256_and_reveals_nothing() -> None:
    secret, _ = generate()
    digest = hash_secret(secret)
    assert digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret[6:] not in digest
    assert same_hash(digest, hash_secret(secret))
    assert not same_hash(digest, hash_secret(generate()[0]))
    assert not same_hash(digest, None)
