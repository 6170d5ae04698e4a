"""API key format, issuance and digests (RELIABILITY §4).

A key reads `sk-sluice-<prefix>_<secret>`: the prefix is the public, indexed key id; the secret is
43 base62 characters (256 random bits) followed by a 6-character base62 CRC32 of everything before
it, so malformed and mistyped keys are refused before any Redis or Postgres lookup.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import zlib

import msgspec

from tenants.errors import InvalidKeyError

KEY_SCHEME = "sk-sluice-"
_PREFIX_LEN = 10
_BODY_LEN = 43
_CHECKSUM_LEN = 6
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_KEY_RE = re.compile(rf"^{KEY_SCHEME}([a-z2-7]{{{_PREFIX_LEN}}})_([0-9A-Za-z]{{{_BODY_LEN + _CHECKSUM_LEN}}})$")
MAX_KEY_LENGTH = len(KEY_SCHEME) + _PREFIX_LEN + 1 + _BODY_LEN + _CHECKSUM_LEN


def _base62(value: int, width: int) -> str:
    # Hand-written: ten lines, and no maintained base62 package beats them.
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def _checksum(text: str) -> str:
    return _base62(zlib.crc32(text.encode()), _CHECKSUM_LEN)


class ParsedKey(msgspec.Struct, frozen=True):
    prefix: str
    secret: str


class IssuedKey(msgspec.Struct, frozen=True):
    """A freshly made key: `plaintext` is shown once and never stored."""

    prefix: str
    plaintext: str
    secret: str


def issue_key() -> IssuedKey:
    prefix = base64.b32encode(secrets.token_bytes(10)).decode().lower()[:_PREFIX_LEN]
    body = _base62(int.from_bytes(secrets.token_bytes(32), "big"), _BODY_LEN)
    head = f"{KEY_SCHEME}{prefix}_{body}"
    secret = body + _checksum(head)
    return IssuedKey(prefix=prefix, plaintext=f"{KEY_SCHEME}{prefix}_{secret}", secret=secret)


def parse_key(token: str) -> ParsedKey:
    """Split and checksum-verify a presented key, touching no storage.

    Raises:
        InvalidKeyError: the token is not a well-formed Sluice key.
    """
    if len(token) != MAX_KEY_LENGTH:
        raise InvalidKeyError("malformed")
    match = _KEY_RE.match(token)
    if match is None:
        raise InvalidKeyError("malformed")
    prefix, secret = match.group(1), match.group(2)
    body, checksum = secret[:_BODY_LEN], secret[_BODY_LEN:]
    if not hmac.compare_digest(checksum, _checksum(f"{KEY_SCHEME}{prefix}_{body}")):
        raise InvalidKeyError("checksum")
    return ParsedKey(prefix=prefix, secret=secret)


class KeyHasher:
    """HMAC-SHA256 digests under versioned peppers; the current pepper is the highest version."""

    def __init__(self, peppers: dict[int, bytes]) -> None:
        if not peppers:
            raise ValueError("at least one key pepper is required")
        self._peppers = dict(peppers)
        self.current_version = max(peppers)

    def digest(self, secret: str, version: int | None = None) -> bytes:
        pepper = self._peppers[self.current_version if version is None else version]
        return hmac.new(pepper, secret.encode(), hashlib.sha256).digest()

    def knows(self, version: int) -> bool:
        return version in self._peppers

    def verify(self, secret: str, digest: bytes, version: int) -> bool:
        """Constant-time check; an unknown pepper version still costs one HMAC."""
        pepper_version = version if version in self._peppers else self.current_version
        computed = self.digest(secret, pepper_version)
        return hmac.compare_digest(computed, digest) and version in self._peppers
