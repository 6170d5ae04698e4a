"""Key format, checksum and peppered digests (RELIABILITY §4, T28): pure code, no storage."""

from __future__ import annotations

import hashlib
import hmac
import re
import zlib

import pytest

from gateway.settings import Settings
from tenants.errors import InvalidKeyError
from tenants.keys import KeyHasher, issue_key, parse_key

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
SEPARATOR_AT = len("sk-sluice-") + len(issue_key().prefix)
TYPO_POSITIONS = [i for i in range(len("sk-sluice-"), len(issue_key().plaintext)) if i != SEPARATOR_AT]
KEY_FORMAT = re.compile(r"sk-sluice-(?P<prefix>[a-z2-7]{8,12})_(?P<body>[0-9A-Za-z]{43})(?P<checksum>[0-9A-Za-z]{6})")
OLD_PEPPER, NEW_PEPPER = b"old-pepper-for-tests", b"new-pepper-for-tests"


def base62_value(text: str) -> int:
    value = 0
    for char in text:
        value = value * 62 + BASE62.index(char)
    return value


def with_char_replaced(key: str, index: int) -> str:
    """`key` with one character swapped for another of the same alphabet: a one-character typo."""
    alphabet = BASE32 if index < SEPARATOR_AT else BASE62
    replacement = alphabet[(alphabet.index(key[index]) + 1) % len(alphabet)]
    return key[:index] + replacement + key[index + 1 :]


def test_issued_key_reads_scheme_prefix_underscore_secret() -> None:
    issued = issue_key()
    match = KEY_FORMAT.fullmatch(issued.plaintext)
    assert match is not None, issued.plaintext
    assert match["prefix"] == issued.prefix
    assert issued.secret == match["body"] + match["checksum"]


def test_issued_key_ends_in_a_base62_crc32_of_everything_before_it() -> None:
    issued = issue_key()
    head, checksum = issued.plaintext[:-6], issued.plaintext[-6:]
    assert base62_value(checksum) == zlib.crc32(head.encode())


def test_issued_key_secret_body_carries_256_random_bits() -> None:
    bodies = [issue_key().secret[:43] for _ in range(200)]
    assert len(set(bodies)) == len(bodies)
    assert all(base62_value(body) < 2**256 for body in bodies)
    # 200 uniform 256-bit values: the top bit is set in some and clear in others (p of failure ≈ 2^-199).
    top_bits = {base62_value(body) >> 255 for body in bodies}
    assert top_bits == {0, 1}


def test_issued_keys_have_distinct_prefixes() -> None:
    prefixes = [issue_key().prefix for _ in range(500)]
    assert len(set(prefixes)) == len(prefixes)


def test_parse_key_returns_prefix_and_secret_of_an_issued_key() -> None:
    issued = issue_key()
    parsed = parse_key(issued.plaintext)
    assert (parsed.prefix, parsed.secret) == (issued.prefix, issued.secret)


@pytest.mark.parametrize("index", TYPO_POSITIONS, ids=lambda i: f"char{i}")
def test_parse_key_rejects_a_one_character_typo_by_checksum(index: int) -> None:
    plaintext = issue_key().plaintext
    with pytest.raises(InvalidKeyError) as raised:
        parse_key(with_char_replaced(plaintext, index))
    assert raised.value.reason == "checksum"


MALFORMED = {
    "empty": "",
    "other-scheme": "sk-proj-" + "a" * 61,
    "truncated": issue_key().plaintext[:-1],
    "extended": issue_key().plaintext + "a",
    "no-separator": issue_key().plaintext.replace("_", "a"),
    "upper-prefix": "sk-sluice-" + issue_key().plaintext[10:20].upper() + issue_key().plaintext[20:],
    "non-base62-secret": issue_key().plaintext[:-7] + "-" + issue_key().plaintext[-6:],
    "sql-injection": "sk-sluice-x'--_y",
    "or-1-equals-1": "' OR '1'='1",
    "unicode": "sk-sluice-ａｂｃｄｅｆｇｈｉｊ_" + "é" * 49,
    "8-kib": "sk-sluice-" + "a" * 8192,
    "nul": issue_key().plaintext[:-1] + "\x00",
}


@pytest.mark.parametrize("token", MALFORMED.values(), ids=MALFORMED.keys())
def test_parse_key_rejects_a_malformed_token(token: str) -> None:
    with pytest.raises(InvalidKeyError) as raised:
        parse_key(token)
    assert raised.value.reason == "malformed"


def test_key_hasher_digest_is_hmac_sha256_of_the_secret_under_the_pepper() -> None:
    secret = issue_key().secret
    expected = hmac.new(OLD_PEPPER, secret.encode(), hashlib.sha256).digest()
    assert KeyHasher({1: OLD_PEPPER}).digest(secret) == expected


def test_key_hasher_digests_with_the_highest_pepper_version() -> None:
    secret = issue_key().secret
    hasher = KeyHasher({1: OLD_PEPPER, 2: NEW_PEPPER})
    assert hasher.current_version == 2
    assert hasher.digest(secret) == hmac.new(NEW_PEPPER, secret.encode(), hashlib.sha256).digest()


def test_key_hasher_after_pepper_rotation_still_verifies_a_key_digested_under_the_old_version() -> None:
    secret = issue_key().secret
    old_digest = KeyHasher({1: OLD_PEPPER}).digest(secret)
    rotated = KeyHasher({1: OLD_PEPPER, 2: NEW_PEPPER})
    assert rotated.verify(secret, old_digest, 1)


def test_key_hasher_refuses_a_digest_checked_under_the_wrong_pepper_version() -> None:
    secret = issue_key().secret
    old_digest = KeyHasher({1: OLD_PEPPER}).digest(secret)
    assert not KeyHasher({1: OLD_PEPPER, 2: NEW_PEPPER}).verify(secret, old_digest, 2)


def test_key_hasher_refuses_a_key_whose_pepper_version_was_retired() -> None:
    secret = issue_key().secret
    old_digest = KeyHasher({1: OLD_PEPPER}).digest(secret)
    assert not KeyHasher({2: NEW_PEPPER}).verify(secret, old_digest, 1)


def test_key_hasher_refuses_a_wrong_secret() -> None:
    hasher = KeyHasher({1: OLD_PEPPER})
    digest = hasher.digest(issue_key().secret)
    assert not hasher.verify(issue_key().secret, digest, 1)


def test_versioned_pepper_setting_feeds_the_hasher_every_version_with_the_highest_current() -> None:
    settings = Settings(key_pepper="1:old-pepper-for-tests,2:new-pepper-for-tests")
    hasher = KeyHasher(settings.peppers())
    secret = issue_key().secret
    assert hasher.current_version == 2
    assert hasher.verify(secret, hmac.new(OLD_PEPPER, secret.encode(), hashlib.sha256).digest(), 1)
