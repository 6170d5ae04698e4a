"""What a prompt shows about itself: the text the routers read, its visible features and its hashed words.

The simulator's visible difficulty and the pre-call scorer read the same features, so the scorer can learn
exactly the visible part of the difficulty and nothing of the hidden part (DESIGN §5).
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections.abc import Sequence
from typing import Final

import msgspec

from gateway.schema.openai import Message

VISIBLE_FEATURES: Final = ("length", "code", "math", "steps")
"""Names of `visible_features`' values, in order (stored in the scorer artifact's feature spec)."""

_CODE: Final = re.compile(
    r"```|\bdef \w+\(|\bclass \w+|\bfunction\b|\breturn\b|\bimport \w+|[{};]"
    r"|\b(?:python|javascript|typescript|sql|regex|bash|rust|golang|java)\b",
    re.IGNORECASE,
)
_MATH: Final = re.compile(
    r"\d\s*[-+*/^=<>]\s*\d|\b(?:integral|derivative|prove|proof|equation|probability|matrix|theorem|solve"
    r"|polynomial|eigenvalues?|modulo|factorial|logarithm)\b",
    re.IGNORECASE,
)
_STEPS: Final = re.compile(
    r"\bstep by step\b|\bfirst\b|\bthen\b|\bfinally\b|\bafter that\b|\bnext\b|^\s*\d+[.)]\s",
    re.IGNORECASE | re.MULTILINE,
)
_MAX_STEPS: Final = 4
_WORDS: Final = re.compile(r"[a-z0-9_]+|[^\sa-z0-9_]")
"""Lower-case words, and every other non-space character on its own (code and math symbols carry signal)."""


class VisibleFeatures(msgspec.Struct, frozen=True):
    length: float
    """log2(1 + whitespace-separated words)."""
    code: float
    """1 when the prompt contains code or names a programming language, else 0."""
    math: float
    """1 when it contains arithmetic between numbers or a mathematical term, else 0."""
    steps: float
    """Multi-step cues ("first", "then", "step by step", numbered lines), at most 4."""

    def values(self) -> tuple[float, float, float, float]:
        return (self.length, self.code, self.math, self.steps)


def prompt_text(messages: Sequence[Message]) -> str:
    """The text of every message (string content and text parts), one message per line: what routers read."""
    parts: list[str] = []
    for message in messages:
        if isinstance(message.content, str):
            parts.append(message.content)
        elif message.content is not None:
            parts.extend(part.text for part in message.content if part.text)
    return "\n".join(parts)


def visible_features(text: str) -> VisibleFeatures:
    return VisibleFeatures(
        length=math.log2(1 + len(text.split())),
        code=1.0 if _CODE.search(text) else 0.0,
        math=1.0 if _MATH.search(text) else 0.0,
        steps=float(min(_MAX_STEPS, sum(1 for _ in _STEPS.finditer(text)))),
    )


def hashed_words(text: str, buckets: int) -> dict[int, float]:
    """Unigrams and bigrams hashed (CRC-32, stable across processes) into `buckets`; each present one counts 1.

    Values are scaled by 1/sqrt(distinct features) so a long prompt does not outweigh the visible features.
    """
    words = _WORDS.findall(text.lower())
    indices = {zlib.crc32(word.encode()) % buckets for word in words}
    indices.update(zlib.crc32(f"{a} {b}".encode()) % buckets for a, b in itertools.pairwise(words))
    if not indices:
        return {}
    value = 1 / math.sqrt(len(indices))
    return dict.fromkeys(sorted(indices), value)  # sorted: the same sums in the same order, wherever computed


DEFAULT_BUCKETS = 4096
"""Word hash buckets of the features a request keeps for training (`sluice router train`'s default)."""


class KeptFeatures(msgspec.Struct, array_like=True, frozen=True):
    """What a confidence-routed request keeps of its prompt for training: never text, only the scorer's inputs."""

    buckets: int
    visible: tuple[float, float, float, float]
    words: list[int]
    """Hashed unigram and bigram indices (each counts 1/sqrt(len), as `hashed_words` weighs them)."""

    def as_words(self) -> dict[int, float]:
        return dict.fromkeys(self.words, 1 / math.sqrt(len(self.words))) if self.words else {}


_kept_encoder = msgspec.msgpack.Encoder()
_kept_decoder = msgspec.msgpack.Decoder(KeptFeatures)


def keep_features(text: str, buckets: int = DEFAULT_BUCKETS) -> bytes:
    """The prompt's features as stored with its usage record (a few hundred bytes of msgpack)."""
    words = sorted(hashed_words(text, buckets))
    return _kept_encoder.encode(KeptFeatures(buckets=buckets, visible=visible_features(text).values(), words=words))


def kept_features(blob: bytes) -> KeptFeatures:
    return _kept_decoder.decode(blob)
