"""The adapter for upstreams that speak Anthropic's Messages API: the chat call translated out and back.

The transport is an `HttpTransport` (`gateway.providers.http_transport`) — pooled session, `connect_s`/
`first_byte_s`/`idle_s` deadlines, bounded reads and SSE lines, statuses and transport failures as
`UpstreamError`s — so this module adds only the endpoint (`{base_url}/messages`), Anthropic's headers and the
translation in `gateway.adapters.chat_over_anthropic`. A stream ends normally only at Anthropic's `message_stop`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Final

import msgspec

from gateway.adapters.chat_over_anthropic import (
    AnthropicStreamError,
    ChunksFromEvents,
    to_chat_completion,
    to_messages,
)
from gateway.adapters.messages_over_chat import TranslationError
from gateway.providers.base import (
    UpstreamCall,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamStreamBrokenError,
)
from gateway.providers.http_transport import HttpTransport
from gateway.schema.openai import JsonObject, encoder, json_object_decoder
from gateway.settings import HttpDeployment

ANTHROPIC_VERSION: Final = "2023-06-01"
"""The `anthropic-version` header: the Messages API version the translation is written against."""
DEFAULT_MAX_TOKENS: Final = 4096
"""Completion limit sent when the client set none (Anthropic requires one)."""


class AnthropicProvider:
    """A `Provider` for one Anthropic Messages deployment (`base_url` like `https://api.anthropic.com/v1`)."""

    def __init__(
        self, deployment: HttpDeployment, api_key: str | None, *, default_max_tokens: int = DEFAULT_MAX_TOKENS
    ) -> None:
        self._config = deployment
        self._url = deployment.base_url.rstrip("/") + "/messages"
        headers = {"Content-Type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        self._transport = HttpTransport(deployment, headers)
        self._default_max_tokens = default_max_tokens

    @property
    def deployment(self) -> str:
        return self._config.name

    @property
    def kind(self) -> str:
        return "anthropic"

    @property
    def model(self) -> str:
        return self._config.model

    async def embed(self, payload: JsonObject) -> bytes:
        raise UpstreamStatusError(
            f"Deployment `{self.deployment}` speaks Anthropic's Messages API, which has no embeddings.", status=400
        )

    async def complete(self, call: UpstreamCall) -> bytes:
        body = self._messages_request(call)
        body.pop("stream", None)
        async with self._transport.post(self._url, body, accept="application/json") as resp:
            raw = await self._transport.read_json(resp)
        message = _decoded(raw)
        if message.get("type") != "message":
            raise UpstreamProtocolError("upstream body is not an Anthropic `message`")
        model = message.get("model")
        completion = to_chat_completion(
            message, model=model if isinstance(model, str) else self.model, created=int(time.time())
        )
        return encoder.encode(completion)

    async def stream(self, call: UpstreamCall) -> AsyncIterator[bytes]:
        body = self._messages_request(call)
        body["stream"] = True
        async with self._transport.post(self._url, body, accept="text/event-stream") as resp:
            chunks = ChunksFromEvents(model=self.model, created=int(time.time()))
            # No `[DONE]` in Anthropic streams: reading stops here, at `message_stop`.
            payloads = self._transport.events(resp, last_event="message_stop")
            async with contextlib.aclosing(payloads):
                async for payload in payloads:
                    for chunk in _translated(chunks, payload):
                        yield encoder.encode(chunk)
                    if chunks.done:
                        return

    async def aclose(self) -> None:
        await self._transport.aclose()

    def _messages_request(self, call: UpstreamCall) -> JsonObject:
        """The Messages body for the chat call; `model` is the deployment's."""
        try:
            return to_messages(call.payload, self.model, self._default_max_tokens)
        except TranslationError as exc:
            # Refused as Anthropic would refuse it: the client sees a 400 naming the field.
            raise UpstreamStatusError(
                f"deployment `{self.deployment}` cannot take `{exc.param}`: {exc.message}", status=400
            ) from None


def _decoded(raw: bytes) -> JsonObject:
    try:
        return json_object_decoder.decode(raw)
    except msgspec.MsgspecError as exc:
        raise UpstreamProtocolError(f"upstream body is not a JSON object: {exc}") from None


def _translated(chunks: ChunksFromEvents, payload: bytes) -> list[JsonObject]:
    try:
        return chunks.feed(_decoded(payload))
    except AnthropicStreamError as exc:
        raise UpstreamStreamBrokenError(exc.message or exc.error_type) from None
