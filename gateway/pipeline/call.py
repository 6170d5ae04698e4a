"""Stage 7, call upstream (non-streaming): the upstream's body passes through byte for byte."""

from __future__ import annotations

from typing import Final

import msgspec

from gateway.accounting.pricing import TokenUsage
from gateway.accounting.tokens import count_prompt, count_text
from gateway.providers.base import Provider, UpstreamCall, UpstreamProtocolError
from gateway.schema.openai import ChatRequest, CompletionView, Usage, completion_view_decoder

MAX_REPORTED_TOKENS: Final = 2**31 - 1
"""Largest token count taken from an upstream: the ledger's `integer` columns; a larger one would
fail every batch it is written in, and the records queued with it (RELIABILITY T17)."""


def _tokens(value: int) -> int:
    return min(max(0, value), MAX_REPORTED_TOKENS)


def is_utf8(data: bytes) -> bool:
    """Whether bytes the gateway passes on are valid UTF-8 (msgspec checks only the fields it decodes)."""
    if data.isascii():
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def usage_from(usage: Usage) -> TokenUsage:
    """Upstream-reported usage, clamped to sane values (negative or absurd counts are upstream bugs)."""
    details = usage.prompt_tokens_details
    return TokenUsage(
        prompt_tokens=_tokens(usage.prompt_tokens),
        completion_tokens=_tokens(usage.completion_tokens),
        cached_tokens=_tokens(details.cached_tokens or 0) if details else 0,
    )


async def call(provider: Provider, call: UpstreamCall) -> tuple[bytes, TokenUsage, str]:
    """The upstream's body, the usage to charge, and where that usage came from (`upstream`/`counted`)."""
    body = await provider.complete(call)
    if not is_utf8(body):
        raise UpstreamProtocolError("the upstream's answer is not valid UTF-8")
    try:
        view = completion_view_decoder.decode(body)
    except msgspec.MsgspecError:
        raise UpstreamProtocolError("the upstream's answer is not a chat completion") from None
    if view.usage is not None:
        return body, usage_from(view.usage), "upstream"
    return body, _counted(call.request, view), "counted"


def _counted(request: ChatRequest, view: CompletionView) -> TokenUsage:
    text = "".join(choice.message.content or "" for choice in view.choices or () if choice.message)
    return TokenUsage(prompt_tokens=count_prompt(request), completion_tokens=count_text(text))


def completion_text(body: bytes) -> str:
    """The answer's text, for a tenant whose compliance setting allows logging it."""
    try:
        view = completion_view_decoder.decode(body)
    except msgspec.MsgspecError:
        return ""
    return "".join(choice.message.content or "" for choice in view.choices or () if choice.message)
