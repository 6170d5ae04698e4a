"""Cache keys: the canonical, tenant-scoped key of a chat request, prompt fingerprints, and every Redis key name.

A request key is `{t:<tenant>}:<digest>`: the tenant sits in a Redis Cluster hash tag, so all of a tenant's
entries, its index and its fill locks share one slot (one Lua script can trim them atomically), and the digest
covers the tenant too, so two tenants' keys can neither collide nor be matched by one `SCAN` pattern.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, NewType

import msgspec

RequestKey = NewType("RequestKey", str)
"""`{t:<tenant>}:<digest>`, from `request_key`; the store adds its prefix."""

PREFIX = "sluice:cache"

KEY_VERSION = 1
"""Part of every digest: bump it when the canonical encoding changes, so old entries are simply never read."""

IGNORED_FIELDS = frozenset(
    {
        "model",  # replaced by the `model` argument: the name the client called, whatever the body says
        "stream",  # transport only: a hit is replayed as SSE when the client streams
        "stream_options",  # `include_usage` / `include_obfuscation` shape the stream, not the answer
        "user",  # end-user id for abuse tracking and quotas; answers are shared within a tenant
        "safety_identifier",  # successor of `user`
        "metadata",  # tags stored with the completion upstream
        "store",  # whether the provider keeps a copy
        "service_tier",  # latency and price class, not content
        "prompt_cache_key",  # hints for the provider's own prompt cache
        "prompt_cache_retention",
    }
)
"""Top-level request fields that do not change the answer; every other field, known or not, is in the key."""

_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DIGEST_BYTES = 16  # 128 bits: a collision is out of reach for any number of entries a Redis can hold
_FLOAT_AS_INT_LIMIT = 2**53  # beyond it floats are not exact integers, and an int would grow without bound
_MARKUP = "#>*_~` "  # leading Markdown decoration (headings, quotes, emphasis, code); not `-`/`+`: signs

_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder()


def tenant_scope(tenant_id: str) -> str:
    """`{t:<tenant>}`, refusing ids that could break out of the hash tag or widen a `SCAN` pattern."""
    if not _TENANT_ID.fullmatch(tenant_id):
        raise ValueError(f"tenant id {tenant_id!r} is not usable in a cache key (letters, digits, `._-`, ≤ 128)")
    return f"{{t:{tenant_id}}}"


def request_key(tenant_id: str, model: str, body: bytes | Mapping[str, Any]) -> RequestKey:
    """The exact-match key of a chat-completions request: `tenant_id`, the model name the client called,
    and every answer-changing field of `body` (raw JSON or decoded), canonically encoded.

    Canonical: keys sorted, top-level `null`s dropped (they mean "provider default"), integral numbers
    written as integers (`0` and `0.0` agree), fields of `IGNORED_FIELDS` left out.
    """
    scope = tenant_scope(tenant_id)
    decoded = _decoder.decode(body) if isinstance(body, bytes) else body
    if not isinstance(decoded, Mapping):
        raise ValueError("a chat-completions body is a JSON object")
    canonical = {
        name: _canonical(value) for name, value in decoded.items() if name not in IGNORED_FIELDS and value is not None
    }
    material = _encoder.encode([KEY_VERSION, "request", tenant_id, model, canonical])
    return RequestKey(f"{scope}:{_digest(material)}")


def prompt_fingerprint(messages: Sequence[Mapping[str, Any]]) -> str:
    """A digest that near-identical prompts share, for the routing-decision cache.

    Near-identical: the same roles in the same order and, per message, the same text once Unicode-normalised
    (NFKC), case-folded, whitespace-collapsed, with leading Markdown decoration and trailing punctuation,
    symbols and whitespace removed. Text parts of a message are joined, so a string and a one-part list agree.
    Everything that is not text (images, audio, tool calls, tool results' ids) must match exactly.
    """
    normalised: list[list[Any]] = []
    for message in messages:
        texts: list[str] = []
        rest: list[Any] = []
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                else:
                    rest.append(_canonical(part))
        for name in ("name", "tool_calls", "tool_call_id", "function_call"):
            if message.get(name) is not None:
                rest.append([name, _canonical(message[name])])
        normalised.append([message.get("role"), _normalise_text(" ".join(texts)), rest])
    return _digest(_encoder.encode([KEY_VERSION, "prompt", normalised]))


def tenant_of(key: RequestKey) -> str:
    """The tenant a request key belongs to (the store checks it against the tenant it is told)."""
    scope, _, _ = key.rpartition(":")
    return scope[3:-1]


def _digest(material: bytes) -> str:
    return hashlib.blake2b(material, digest_size=_DIGEST_BYTES).hexdigest()


def _canonical(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        return int(value) if value.is_integer() and abs(value) < _FLOAT_AS_INT_LIMIT else value
    if kind is dict or isinstance(value, Mapping):
        return {name: _canonical(item) for name, item in value.items()}
    if kind is list or kind is tuple:
        return [_canonical(item) for item in value]
    return value


def _normalise_text(text: str) -> str:
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    text = text.lstrip(_MARKUP)
    end = len(text)
    while end and (text[end - 1].isspace() or unicodedata.category(text[end - 1])[0] in "PS"):
        end -= 1
    return text[:end]


class KeySpace:
    """Every Redis key the cache uses, under one prefix (`sluice:cache` unless a test or deployment says).

    A bounded set (answers, escalations) is an index, the sorted set `<prefix>:{t:T}:<kind>`, whose members
    name entries `<index>:<member>`; `put.lua` relies on that naming to evict.
    Answers: index `<prefix>:{t:T}:r`, entries `<prefix>:{t:T}:r:<digest>`.
    Escalations: index `<prefix>:{t:T}:esc`, entries `<prefix>:{t:T}:esc:<digest of route and fingerprint>`.
    Fill locks: `<prefix>:{t:T}:fill:<digest>`.
    """

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix

    def answer_index(self, tenant_id: str) -> str:
        return f"{self.prefix}:{tenant_scope(tenant_id)}:r"

    def answer(self, key: RequestKey) -> str:
        scope, _, digest = key.rpartition(":")
        return f"{self.prefix}:{scope}:r:{digest}"

    def fill_lock(self, key: RequestKey) -> str:
        scope, _, digest = key.rpartition(":")
        return f"{self.prefix}:{scope}:fill:{digest}"

    def escalation_index(self, tenant_id: str) -> str:
        return f"{self.prefix}:{tenant_scope(tenant_id)}:esc"

    def escalation(self, tenant_id: str, route: str, fingerprint: str) -> str:
        return f"{self.escalation_index(tenant_id)}:{self.escalation_member(route, fingerprint)}"

    @staticmethod
    def escalation_member(route: str, fingerprint: str) -> str:
        return _digest(_encoder.encode([KEY_VERSION, "escalation", route, fingerprint]))

    @staticmethod
    def digest_of(key: RequestKey) -> str:
        return key.rpartition(":")[2]
